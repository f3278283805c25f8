"""No false positives: ordinary pure kernels pass lint *and* run unchanged behind the guards.

Each row is a kernel ``k`` as authors write them — string and number work, ``json``, ``re``,
``math``, ``datetime``, ``collections``, ``itertools``, ``functools``, dataclasses and classes
of their own (with ``_private`` fields), comprehensions, generators, ``match`` on values,
helpers, the seed's kernels in Python 3 — with the arguments it is called with and the result
it must end the chain with.  A row passes when

* the checker reports no error (warnings such as PK405 are allowed), and
* ``compile_kernel`` (check + guard rewrite + compile) followed by an exec in a
  ``Sandbox.namespace`` gives an entry function that returns ``done(expected)`` (or the
  expected return string, for rows that chain on).
"""

from __future__ import annotations

import random
import textwrap
import uuid
from typing import Any

import pytest

from pyrecks.compiler.checker import check
from pyrecks.compiler.compiler import compile_kernel
from pyrecks.compiler.policy import Policy
from pyrecks.kernel import branch, call, done, fanout, key
from pyrecks.vm.sandbox import Sandbox

Row = tuple[str, str, tuple[Any, ...], Any]


class Raw(str):
    """An expected return string compared as is (rows that chain on or halt)."""


ROWS: list[Row] = []


def row(name: str, source: str, args: tuple[Any, ...], expected: Any) -> None:
    """Add a kernel; ``expected`` is the chain's result (compared with ``done(expected)``), or
    a :class:`Raw` return string."""
    ROWS.append((name, textwrap.dedent(source).lstrip("\n"), args, expected))


D = "from pyrecks.kernel import done\n"

# -- strings ---------------------------------------------------------------------------------
row("upper lower title", D + """
def k(s: str) -> str:
    return done([s.upper(), s.lower(), s.title(), s.casefold()])
""", ("Hello World",), ["HELLO WORLD", "hello world", "Hello World", "hello world"])
row("split and join", D + """
def k(s: str) -> str:
    words = s.split()
    return done("-".join(reversed(words)))
""", ("a b c",), "c-b-a")
row("strip replace count", D + """
def k(s: str) -> str:
    t = s.strip().replace("a", "o")
    return done([t, t.count("o"), s.lstrip(), s.rstrip()])
""", ("  banana ",), ["bonono", 3, "banana ", "  banana"])
row("find index partition", D + """
def k(s: str) -> str:
    head, sep, tail = s.partition("=")
    return done([s.find("="), s.index("v"), head, sep, tail, s.rpartition("x")[2]])
""", ("key=value",), [3, 4, "key", "=", "value", "key=value"])
row("startswith endswith", D + """
def k(s: str) -> str:
    return done([s.startswith("ab"), s.endswith(("x", "z")), s.startswith("b", 1)])
""", ("abz",), [True, True, True])
row("f-string format specs", D + """
def k(x: float, n: int) -> str:
    return done(f"{x:.2f}|{n:>4}|{n:04d}|{x:e}|{n:,}|{n!r}")
""", (3.14159, 1234), "3.14|1234|1234|3.141590e+00|1,234|1234")
row("str.format positional and keyword", D + """
def k(a: str, b: int) -> str:
    return done("{0}-{1:03d}-{name}".format(a, b, name=a.upper()))
""", ("x", 7), "x-007-X")
row("str.format attribute and index fields", D + """
from dataclasses import dataclass

@dataclass
class Item:
    name: str
    qty: int

def k(name: str) -> str:
    it = Item(name, 2)
    return done("{0.name} x{0.qty} {1[0]} {c.real}".format(it, [5], c=3))
""", ("pen",), "pen x2 5 3")
row("format_map", D + """
def k(d: dict) -> str:
    return done("{a}/{b}".format_map(d))
""", ({"a": 1, "b": "z"},), "1/z")
row("percent formatting", D + """
def k(name: str, n: int) -> str:
    return done("%s has %d items (%.1f%%)" % (name, n, n * 12.5))
""", ("box", 4), "box has 4 items (50.0%)")
row("zfill center ljust", D + """
def k(s: str) -> str:
    return done([s.zfill(6), s.center(7, "*"), s.ljust(5, "."), s.rjust(5)])
""", ("42",), ["000042", "***42**", "42...", "   42"])
row("translate maketrans", D + """
FROM, TO = "abc", "xyz"

def k(s: str) -> str:
    table = str.maketrans(FROM, TO)
    return done(s.translate(table))
""", ("aabbcc",), "xxyyzz")
row("encode decode", D + """
def k(s: str) -> str:
    b = s.encode("utf-8")
    return done([len(b), b.decode("utf-8"), b.hex()])
""", ("é",), [2, "é", "c3a9"])
row("slicing and reversing", D + """
def k(s: str) -> str:
    return done([s[::-1], s[1:3], s[-2:], s[::2]])
""", ("abcdef",), ["fedcba", "bc", "ef", "ace"])
row("character classes", D + """
def k(s: str) -> str:
    return done([c for c in s if c.isdigit()] + [s.isalpha(), s.isalnum(), s.isspace()])
""", ("a1b2",), ["1", "2", False, True, False])
row("splitlines and textwrap", D + """
import textwrap

def k(s: str) -> str:
    lines = s.splitlines()
    return done([len(lines), textwrap.shorten(s.replace("\\n", " "), 12), textwrap.dedent("  a\\n  b")])
""", ("one two\nthree four",), [2, "one [...]", "a\nb"])
row("string constants and capwords", D + """
import string

def k(s: str) -> str:
    letters = sum(1 for c in s if c in string.ascii_letters)
    return done([letters, string.capwords(s), string.digits[:3]])
""", ("hello big world 42",), [13, "Hello Big World 42", "012"])
row("string.Template", D + """
import string

GREETING = string.Template("Hi $name, you owe $$${amount}")

def k(name: str, amount: int) -> str:
    return done(GREETING.substitute(name=name, amount=amount))
""", ("Ann", 5), "Hi Ann, you owe $5")
row("unicodedata", D + """
import unicodedata

def k(s: str) -> str:
    return done([unicodedata.name(s[0]), unicodedata.normalize("NFD", s) != s, unicodedata.category(s[0])])
""", ("é",), ["LATIN SMALL LETTER E WITH ACUTE", True, "Ll"])

# -- numbers -----------------------------------------------------------------------------------
row("arithmetic and divmod", D + """
def k(a: int, b: int) -> str:
    q, r = divmod(a, b)
    return done([a + b, a - b, a * b, a // b, a % b, q, r, a ** 2, -a, abs(-b)])
""", (17, 5), [22, 12, 85, 3, 2, 3, 2, 289, -17, 5])
row("round min max sum", D + """
def k(xs: list) -> str:
    return done([round(sum(xs) / len(xs), 2), min(xs), max(xs), sorted(xs, reverse=True)])
""", ([3, 1, 2.5],), [2.17, 1, 3, [3, 2.5, 1]])
row("int parsing bases", D + """
def k(s: str) -> str:
    return done([int(s, 16), int("0b101", 0), hex(255), bin(5), oct(8), int("  12 ")])
""", ("ff",), [255, 5, "0xff", "0b101", "0o10", 12])
row("pow with modulus", D + """
def k(b: int, e: int, m: int) -> str:
    return done([pow(b, e, m), pow(2, 100) % 7])
""", (3, 200, 13), [pow(3, 200, 13), pow(2, 100) % 7])
row("math functions", D + """
import math

def k(x: float) -> str:
    return done([math.sqrt(x), math.floor(2.7), math.ceil(2.1), math.gcd(12, 18), round(math.pi, 3), math.isclose(0.1 + 0.2, 0.3)])
""", (16.0,), [4.0, 2, 3, 6, 3.142, True])
row("math comb factorial log", D + """
import math

def k(n: int) -> str:
    return done([math.comb(n, 2), math.factorial(5), math.log2(8), math.prod([1, 2, 3]), math.hypot(3, 4)])
""", (5,), [10, 120, 3.0, 6, 5.0])
row("fractions", D + """
from fractions import Fraction

def k(a: int, b: int) -> str:
    f = Fraction(a, b) + Fraction(1, 3)
    return done([str(f), f.numerator, f.denominator, float(Fraction(1, 4))])
""", (1, 6), ["1/2", 1, 2, 0.25])
row("decimal localcontext", D + """
import decimal
from decimal import Decimal

def k(a: str, b: str) -> str:
    with decimal.localcontext() as ctx:
        ctx.prec = 4
        q = Decimal(a) / Decimal(b)
    return done([str(q), str(Decimal("1.10") + Decimal("2.205")), str(Decimal("2.675").quantize(Decimal("0.01"), rounding=decimal.ROUND_HALF_UP))])
""", ("1", "3"), ["0.3333", "3.305", "2.68"])
row("cmath", D + """
import cmath

def k(x: float) -> str:
    z = cmath.sqrt(-x)
    return done([z.imag, abs(complex(3, 4)), round(cmath.phase(1j), 4)])
""", (4.0,), [2.0, 5.0, 1.5708])
row("statistics", D + """
import statistics

def k(xs: list) -> str:
    return done([statistics.mean(xs), statistics.median(xs), statistics.mode(xs), round(statistics.pstdev(xs), 3)])
""", ([1, 2, 2, 3, 4],), [2.4, 2, 2, 1.02])
row("float rounding and checks", D + """
def k(x: float) -> str:
    return done([x.is_integer(), (2.5).as_integer_ratio(), float("inf") > x, int(x)])
""", (3.0,), [True, [5, 2], True, 3])
row("integer methods", D + """
def k(n: int) -> str:
    return done([n.bit_length(), n.to_bytes(2, "big").hex(), int.from_bytes(b"\\x01\\x00", "big")])
""", (300,), [9, "012c", 256])

# -- json -------------------------------------------------------------------------------------
row("json round trip", D + """
import json

def k(s: str) -> str:
    data = json.loads(s)
    data["n"] += 1
    return done(json.dumps(data, sort_keys=True))
""", ('{"n": 1, "a": [1, 2]}',), '{"a": [1, 2], "n": 2}')
row("json nested and indent", D + """
import json

def k(n: int) -> str:
    return done(json.dumps({"xs": list(range(n))}, indent=1).count("\\n"))
""", (2,), 5)
row("json default str", D + """
import json
import datetime

def k(y: int) -> str:
    return done(json.dumps({"d": datetime.date(y, 1, 2)}, default=str))
""", (2024,), '{"d": "2024-01-02"}')
row("json object_hook", D + """
import json

def k(s: str) -> str:
    data = json.loads(s, object_hook=lambda d: {key.upper(): v for key, v in d.items()})
    return done(data)
""", ('{"a": {"b": 1}}',), {"A": {"B": 1}})
row("json decode error", D + """
import json

def k(s: str) -> str:
    try:
        json.loads(s)
    except json.JSONDecodeError as exc:
        return done([exc.lineno, exc.colno, type(exc).__name__])
    return done(None)
""", ("{bad",), [1, 2, "JSONDecodeError"])
row("json separators and ensure_ascii", D + """
import json

def k(s: str) -> str:
    return done(json.dumps([s, 1], separators=(",", ":"), ensure_ascii=False))
""", ("é",), '["é",1]')

# -- re -----------------------------------------------------------------------------------------
row("re findall module-level pattern", D + """
import re

WORD = re.compile(r"[^\\W\\d_]+")

def k(text: str) -> str:
    return done([w.lower() for w in WORD.findall(text)])
""", ("The 2 Foxes!",), ["the", "foxes"])
row("re sub with callback", D + """
import re

def k(text: str) -> str:
    return done(re.sub(r"\\d+", lambda m: str(int(m.group()) * 2), text))
""", ("a1b22",), "a2b44")
row("re named groups", D + """
import re

DATE = re.compile(r"(?P<y>\\d{4})-(?P<m>\\d\\d)")

def k(s: str) -> str:
    m = DATE.search(s)
    return done([m.group("y"), m["m"], m.groupdict(), m.span()])
""", ("on 2024-05",), ["2024", "05", {"y": "2024", "m": "05"}, [3, 10]])
row("re split fullmatch escape", D + """
import re

def k(s: str) -> str:
    return done([re.split(r"[,;]\\s*", s), bool(re.fullmatch(r"[a-z,; ]+", s)), re.escape("a.b")])
""", ("a, b;c",), [["a", "b", "c"], True, "a\\.b"])
row("re finditer and flags", D + """
import re

def k(s: str) -> str:
    return done([m.start() for m in re.finditer("a", s, re.IGNORECASE)])
""", ("AbaA",), [0, 2, 3])
row("re subn and verbose", D + """
import re

NUM = re.compile(r'''
    \\d+      # digits
''', re.VERBOSE)

def k(s: str) -> str:
    return done(list(NUM.subn("#", s)))
""", ("a1b2",), ["a#b#", 2])

# -- datetime -----------------------------------------------------------------------------------
row("datetime fromisoformat and timedelta", D + """
import datetime

def k(s: str) -> str:
    t = datetime.datetime.fromisoformat(s) + datetime.timedelta(days=1, hours=2)
    return done(t.isoformat())
""", ("2024-02-28T23:00:00",), "2024-03-01T01:00:00")
row("date weekday and strftime", D + """
from datetime import date

def k(y: int, m: int, d: int) -> str:
    day = date(y, m, d)
    return done([day.weekday(), day.strftime("%Y/%m/%d"), day.isocalendar()[1]])
""", (2024, 1, 1), [0, "2024/01/01", 1])
row("timezone arithmetic", D + """
from datetime import datetime, timedelta, timezone

def k(ts: int) -> str:
    t = datetime.fromtimestamp(ts, tz=timezone.utc)
    local = t.astimezone(timezone(timedelta(hours=2)))
    return done([t.hour, local.hour, local.utcoffset().total_seconds()])
""", (0,), [0, 2, 7200.0])
row("date ranges", D + """
from datetime import date, timedelta

def k(n: int) -> str:
    start = date(2024, 12, 30)
    return done([(start + timedelta(days=i)).isoformat() for i in range(n)])
""", (3,), ["2024-12-30", "2024-12-31", "2025-01-01"])
row("timedelta totals", D + """
from datetime import timedelta

def k(h: int) -> str:
    d = timedelta(hours=h, minutes=30)
    return done([d.total_seconds(), d.days, d.seconds, str(d)])
""", (25,), [91800.0, 1, 5400, "1 day, 1:30:00"])
row("strptime", D + """
from datetime import datetime

def k(s: str) -> str:
    t = datetime.strptime(s, "%d/%m/%Y %H:%M")
    return done([t.year, t.month, t.minute, t.replace(year=2000).year])
""", ("05/06/2023 14:45",), [2023, 6, 45, 2000])

# -- collections -----------------------------------------------------------------------------
row("Counter most_common", D + """
from collections import Counter

def k(words: list) -> str:
    c = Counter(words)
    c.update(["z"])
    return done([c.most_common(1), c["z"], sum(c.values())])
""", (["a", "b", "a"],), [[["a", 2]], 1, 4])
row("defaultdict grouping", D + """
from collections import defaultdict

def k(pairs: list) -> str:
    groups = defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return done(dict(groups))
""", ([["a", 1], ["b", 2], ["a", 3]],), {"a": [1, 3], "b": [2]})
row("OrderedDict move_to_end", D + """
from collections import OrderedDict

def k(keys: list) -> str:
    d = OrderedDict((key, i) for i, key in enumerate(keys))
    d.move_to_end(keys[0])
    return done(list(d))
""", (["x", "y", "z"],), ["y", "z", "x"])
row("deque rotate and maxlen", D + """
from collections import deque

def k(xs: list) -> str:
    d = deque(xs, maxlen=3)
    d.rotate(1)
    d.appendleft(0)
    return done(list(d))
""", ([1, 2, 3, 4],), [0, 4, 2])
row("namedtuple at module level", D + """
import collections

Point = collections.namedtuple("Point", ["x", "y"])

def k(x: int, y: int) -> str:
    p = Point(x, y)
    return done([p._asdict(), p._replace(x=0).x, Point._fields, p.x + p.y])
""", (1, 2), [{"x": 1, "y": 2}, 0, ["x", "y"], 3])
row("ChainMap", D + """
from collections import ChainMap

DEFAULTS = (("color", "red"), ("size", 1))

def k(user: dict) -> str:
    merged = ChainMap(user, dict(DEFAULTS))
    return done([merged["color"], merged["size"], sorted(merged)])
""", ({"color": "blue"},), ["blue", 1, ["color", "size"]])
row("Counter arithmetic", D + """
from collections import Counter

def k(a: str, b: str) -> str:
    return done(dict(Counter(a) - Counter(b)))
""", ("aabc", "ab"), {"a": 1, "c": 1})
row("collections.abc isinstance", D + """
import collections.abc

def k(x: list) -> str:
    return done([isinstance(x, collections.abc.Sequence), isinstance({}, collections.abc.Mapping), isinstance(x, collections.abc.Hashable)])
""", ([1],), [True, True, False])

# -- itertools ----------------------------------------------------------------------------------
row("groupby", D + """
import itertools

def k(s: str) -> str:
    return done([[key, len(list(group))] for key, group in itertools.groupby(s)])
""", ("aabccc",), [["a", 2], ["b", 1], ["c", 3]])
row("chain and islice", D + """
from itertools import chain, count, islice

def k(n: int) -> str:
    return done(list(islice(chain([0], count(10, 5)), n)))
""", (4,), [0, 10, 15, 20])
row("combinations permutations product", D + """
import itertools

def k(xs: list) -> str:
    return done([len(list(itertools.combinations(xs, 2))), len(list(itertools.permutations(xs))), list(itertools.product("ab", repeat=1))])
""", ([1, 2, 3],), [3, 6, [["a"], ["b"]]])
row("accumulate and pairwise", D + """
from itertools import accumulate, pairwise

def k(xs: list) -> str:
    return done([list(accumulate(xs)), [b - a for a, b in pairwise(xs)]])
""", ([1, 2, 4],), [[1, 3, 7], [1, 2]])
row("zip_longest starmap", D + """
import itertools
import operator

def k(a: list, b: list) -> str:
    pairs = list(itertools.zip_longest(a, b, fillvalue=0))
    return done(list(itertools.starmap(operator.add, pairs)))
""", ([1, 2, 3], [10]), [11, 2, 3])
row("takewhile dropwhile", D + """
from itertools import dropwhile, takewhile

def k(xs: list) -> str:
    return done([list(takewhile(lambda v: v < 3, xs)), list(dropwhile(lambda v: v < 3, xs))])
""", ([1, 2, 3, 1],), [[1, 2], [3, 1]])

# -- functools ----------------------------------------------------------------------------------
row("reduce and partial", D + """
from functools import partial, reduce
import operator

def k(xs: list) -> str:
    times10 = partial(operator.mul, 10)
    return done([reduce(operator.add, xs, 0), times10(3)])
""", ([1, 2, 3],), [6, 30])
row("lru_cache inside the call", D + """
import functools

def k(n: int) -> str:
    @functools.lru_cache(maxsize=None)
    def fib(i):
        return i if i < 2 else fib(i - 1) + fib(i - 2)
    return done(fib(n))
""", (30,), 832040)
row("cmp_to_key", D + """
import functools

def _cmp(a, b):
    return (len(a) > len(b)) - (len(a) < len(b))

def k(words: list) -> str:
    return done(sorted(words, key=functools.cmp_to_key(_cmp)))
""", (["ccc", "a", "bb"],), ["a", "bb", "ccc"])
row("total_ordering class", D + """
import functools

@functools.total_ordering
class Version:
    def __init__(self, text):
        self._parts = tuple(int(p) for p in text.split("."))
    def __eq__(self, other):
        return self._parts == other._parts
    def __lt__(self, other):
        return self._parts < other._parts

def k(a: str, b: str) -> str:
    return done([Version(a) >= Version(b), max(Version(a), Version(b))._parts])
""", ("1.10", "1.9"), [True, [1, 10]])
row("cached_property", D + """
from functools import cached_property

class Doc:
    def __init__(self, text):
        self.text = text
    @cached_property
    def words(self):
        return self.text.split()

def k(s: str) -> str:
    d = Doc(s)
    return done([len(d.words), d.words[0]])
""", ("a b c",), [3, "a"])

# -- dataclasses and the kernel's own classes ------------------------------------------------
row("dataclass with default_factory", D + """
from dataclasses import dataclass, field

@dataclass
class Basket:
    owner: str
    items: list = field(default_factory=list)
    def add(self, item):
        self.items.append(item)
        return self

def k(owner: str) -> str:
    b = Basket(owner).add("x").add("y")
    return done([b.owner, b.items])
""", ("ann",), ["ann", ["x", "y"]])
row("frozen dataclass and replace", D + """
import dataclasses

@dataclasses.dataclass(frozen=True)
class P:
    x: int
    y: int = 0

def k(x: int) -> str:
    p = dataclasses.replace(P(x), y=5)
    return done([dataclasses.asdict(p), dataclasses.astuple(p), [f.name for f in dataclasses.fields(p)]])
""", (1,), [{"x": 1, "y": 5}, [1, 5], ["x", "y"]])
row("dataclass with a private field", D + """
from dataclasses import dataclass, field

@dataclass
class Meter:
    name: str
    _total: int = 0
    _log: list = field(default_factory=list)
    def add(self, n):
        self._total += n
        self._log.append(n)
        return self._total

def k(xs: list) -> str:
    m = Meter("m")
    for x in xs:
        m.add(x)
    return done([m._total, m._log])
""", ([2, 3],), [5, [2, 3]])
row("class with private attributes and a property", D + """
class Account:
    def __init__(self, owner):
        self._owner = owner
        self._balance = 0
    @property
    def balance(self):
        return self._balance
    def deposit(self, n):
        self._balance += n
        return self

def k(n: int) -> str:
    a = Account("x").deposit(n).deposit(1)
    return done([a.balance, a._owner])
""", (4,), [5, "x"])
row("name-mangled attributes", D + """
class Secret:
    def __init__(self, v):
        self.__v = v
    def reveal(self):
        return self.__v * 2

def k(v: int) -> str:
    return done(Secret(v).reveal())
""", (21,), 42)
row("inheritance and super", D + """
class Shape:
    def __init__(self, name):
        self.name = name
    def describe(self):
        return f"{self.name} of area {self.area()}"

class Square(Shape):
    def __init__(self, side):
        super().__init__("square")
        self.side = side
    def area(self):
        return self.side ** 2

def k(side: int) -> str:
    return done(Square(side).describe())
""", (3,), "square of area 9")
row("classmethod and staticmethod", D + """
class Temp:
    def __init__(self, c):
        self.c = c
    @classmethod
    def from_f(cls, f):
        return cls(Temp.to_c(f))
    @staticmethod
    def to_c(f):
        return (f - 32) * 5 / 9

def k(f: float) -> str:
    return done(Temp.from_f(f).c)
""", (212.0,), 100.0)
row("dunder methods defined by the kernel", D + """
class Vec:
    __slots__ = ("x", "y")
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __add__(self, other):
        return Vec(self.x + other.x, self.y + other.y)
    def __eq__(self, other):
        return (self.x, self.y) == (other.x, other.y)
    __hash__ = None
    def __repr__(self):
        return f"Vec({self.x}, {self.y})"
    def __len__(self):
        return 2
    def __iter__(self):
        yield self.x
        yield self.y

def k(a: int, b: int) -> str:
    v = Vec(a, b) + Vec(1, 1)
    return done([repr(v), len(v), list(v), v == Vec(a + 1, b + 1)])
""", (1, 2), ["Vec(2, 3)", 2, [2, 3], True])
row("enum classes", D + """
import enum

class Color(enum.Enum):
    RED = 1
    GREEN = enum.auto()

class Flag(enum.IntFlag):
    A = 1
    B = 2

def k(name: str) -> str:
    c = Color[name]
    return done([c.value, c.name, Color(2).name, int(Flag.A | Flag.B), [m.name for m in Color]])
""", ("RED",), [1, "RED", "GREEN", 3, ["RED", "GREEN"]])
row("typing NamedTuple class", D + """
from typing import NamedTuple

class Pair(NamedTuple):
    left: int
    right: int = 0

def k(a: int) -> str:
    p = Pair(a)
    return done([p.left, p.right, p._asdict(), list(p)])
""", (3,), [3, 0, {"left": 3, "right": 0}, [3, 0]])
row("exception classes of the kernel", D + """
class TooBig(ValueError):
    def __init__(self, n):
        super().__init__(f"{n} is too big")
        self.n = n

def _check(n):
    if n > 10:
        raise TooBig(n)
    return n

def k(n: int) -> str:
    try:
        _check(n)
    except TooBig as exc:
        return done([str(exc), exc.n, exc.args])
    return done(None)
""", (11,), ["11 is too big", 11, ["11 is too big"]])
row("class constants and class-level tuples", D + """
class Rules:
    LIMITS = (1, 5, 10)
    NAMES = frozenset({"a", "b"})
    SCALE = 2.5
    def pick(self, n):
        return [x * self.SCALE for x in self.LIMITS if x <= n]

def k(n: int) -> str:
    return done([Rules().pick(n), "a" in Rules.NAMES])
""", (5,), [[2.5, 12.5], True])
row("private helpers inside classes", D + """
class Parser:
    def parse(self, text):
        return [self._token(t) for t in text.split()]
    def _token(self, t):
        return int(t) if t.isdigit() else t
    @staticmethod
    def _unused():
        return None

def k(s: str) -> str:
    return done(Parser().parse(s))
""", ("a 1 b 22",), ["a", 1, "b", 22])
row("type of own objects", D + """
class Box:
    def __init__(self, v):
        self.v = v
    def copy(self):
        return type(self)(self.v)

def k(v: int) -> str:
    b = Box(v).copy()
    return done([type(b).__name__, isinstance(b, Box), type(v) is int, isinstance(Box, type)])
""", (3,), ["Box", True, True, True])

# -- comprehensions, generators, helpers -----------------------------------------------------
row("nested comprehensions", D + """
def k(n: int) -> str:
    grid = [[r * c for c in range(n)] for r in range(n)]
    flat = [x for row in grid for x in row if x]
    return done([grid[-1], flat])
""", (3,), [[0, 2, 4], [1, 2, 2, 4]])
row("dict and set comprehensions", D + """
def k(words: list) -> str:
    lengths = {w: len(w) for w in words}
    initials = {w[0] for w in words}
    return done([lengths, sorted(initials)])
""", (["ab", "c", "ad"],), [{"ab": 2, "c": 1, "ad": 2}, ["a", "c"]])
row("generator helper", D + """
def _chunks(xs, size):
    for i in range(0, len(xs), size):
        yield xs[i:i + size]

def k(xs: list) -> str:
    return done(list(_chunks(xs, 2)))
""", ([1, 2, 3, 4, 5],), [[1, 2], [3, 4], [5]])
row("generator expression and any all", D + """
def k(xs: list) -> str:
    return done([sum(x * x for x in xs), any(x > 2 for x in xs), all(x > 0 for x in xs)])
""", ([1, 2, 3],), [14, True, True])
row("walrus in a comprehension", D + """
def k(xs: list) -> str:
    return done([y for x in xs if (y := x * 2) > 2])
""", ([1, 2, 3],), [4, 6])
row("zip enumerate sorted with key", D + """
import operator

def k(names: list, scores: list) -> str:
    ranked = sorted(zip(names, scores), key=operator.itemgetter(1), reverse=True)
    return done([[i, name] for i, (name, _) in enumerate(ranked, 1)])
""", (["a", "b"], [1, 2]), [[1, "b"], [2, "a"]])
row("attrgetter and methodcaller with literal names", D + """
import operator
from dataclasses import dataclass

@dataclass
class U:
    name: str
    age: int

def k(xs: list) -> str:
    people = [U(n, a) for n, a in xs]
    oldest = max(people, key=operator.attrgetter("age"))
    shout = operator.methodcaller("upper")
    return done([oldest.name, shout(oldest.name), [p.name for p in sorted(people, key=operator.attrgetter("name"))]])
""", ([["bo", 3], ["al", 5]],), ["al", "AL", ["al", "bo"]])
row("closures without nonlocal", D + """
def _make_adder(n):
    def add(x):
        return x + n
    return add

def k(n: int) -> str:
    adders = [_make_adder(i) for i in range(3)]
    return done([f(n) for f in adders])
""", (10,), [10, 11, 12])
row("recursion", D + """
def _flatten(x):
    if isinstance(x, list):
        return [y for item in x for y in _flatten(item)]
    return [x]

def k(x: list) -> str:
    return done(_flatten(x))
""", ([1, [2, [3, [4]]]],), [1, 2, 3, 4])
row("try else finally", D + """
def k(s: str) -> str:
    log = []
    try:
        n = int(s)
    except ValueError:
        log.append("bad")
        n = 0
    else:
        log.append("ok")
    finally:
        log.append("end")
    return done([n, log])
""", ("7",), [7, ["ok", "end"]])
row("getattr and hasattr with literal names", D + """
def k(x: int) -> str:
    return done([getattr(x, "real"), hasattr(x, "imag"), getattr(x, "nope", "default")])
""", (5,), [5, True, "default"])
row("lambda sort keys and map filter", D + """
def k(words: list) -> str:
    longest_first = sorted(words, key=lambda w: (-len(w), w))
    return done([longest_first, list(map(str.upper, filter(None, words)))])
""", (["b", "", "aa"],), [["aa", "b", ""], ["B", "AA"]])
row("local mutation of copies of constants", D + """
DEFAULTS = ("a", "b")
LIMITS = frozenset({1, 2})

def k(x: str) -> str:
    items = list(DEFAULTS)
    items.append(x)
    allowed = set(LIMITS)
    allowed.add(3)
    return done([items, sorted(allowed)])
""", ("c",), [["a", "b", "c"], [1, 2, 3]])

# -- match on values -----------------------------------------------------------------------------
row("match literals and guards", D + """
def k(x: int) -> str:
    match x:
        case 0:
            r = "zero"
        case n if n < 0:
            r = "negative"
        case 1 | 2:
            r = "small"
        case _:
            r = "big"
    return done(r)
""", (2,), "small")
row("match sequences", D + """
def k(cmd: list) -> str:
    match cmd:
        case ["go", direction]:
            return done(f"going {direction}")
        case ["pick", *items]:
            return done(items)
        case []:
            return done("nothing")
    return done("?")
""", (["pick", "a", "b"],), ["a", "b"])
row("match mappings", D + """
def k(event: dict) -> str:
    match event:
        case {"type": "click", "pos": [x, y]}:
            return done(x + y)
        case {"type": t, **rest}:
            return done([t, rest])
    return done(None)
""", ({"type": "key", "code": 13},), ["key", {"code": 13}])
row("match builtin class patterns", D + """
def k(v: object) -> str:
    match v:
        case bool(b):
            return done(["bool", b])
        case int(n) | float(n):
            return done(["number", n])
        case str() as s:
            return done(["str", s])
    return done(None)
""", (2.5,), ["number", 2.5])
row("match own classes by keyword and position", D + """
from dataclasses import dataclass

@dataclass
class Point:
    x: int
    y: int

def k(x: int, y: int) -> str:
    match Point(x, y):
        case Point(x=0, y=0):
            return done("origin")
        case Point(0, yy):
            return done(["on y", yy])
        case Point(x=xx):
            return done(["x", xx])
    return done(None)
""", (0, 4), ["on y", 4])
row("match enum values", D + """
import enum

class Op(enum.Enum):
    ADD = "+"
    SUB = "-"

def k(op: str, a: int, b: int) -> str:
    match Op(op):
        case Op.ADD:
            return done(a + b)
        case Op.SUB:
            return done(a - b)
    return done(None)
""", ("-", 5, 3), 2)

# -- other allowed modules ------------------------------------------------------------------------
row("heapq", D + """
import heapq

def k(xs: list) -> str:
    h = []
    for x in xs:
        heapq.heappush(h, x)
    return done([heapq.heappop(h), heapq.nsmallest(2, xs), heapq.nlargest(1, xs)])
""", ([5, 1, 3],), [1, [1, 3], [5]])
row("bisect", D + """
import bisect

def k(xs: list, x: int) -> str:
    xs = sorted(xs)
    bisect.insort(xs, x)
    return done([xs, bisect.bisect_left(xs, x)])
""", ([3, 1], 2), [[1, 2, 3], 1])
row("hashlib digests", D + """
import hashlib

def k(s: str) -> str:
    return done([hashlib.sha256(s.encode()).hexdigest()[:12], hashlib.md5(b"x").hexdigest()[:6], hashlib.new("sha1", b"").hexdigest()[:4]])
""", ("abc",), ["ba7816bf8f01", "9dd4e4", "da39"])
row("base64 and binascii", D + """
import base64
import binascii

def k(s: str) -> str:
    enc = base64.b64encode(s.encode()).decode()
    return done([enc, base64.b64decode(enc).decode(), binascii.hexlify(b"hi").decode(), base64.urlsafe_b64encode(b"\\xff").decode()])
""", ("hi",), ["aGk=", "hi", "6869", "_w=="])
row("zlib", D + """
import zlib

def k(s: str) -> str:
    data = s.encode() * 10
    packed = zlib.compress(data)
    return done([zlib.crc32(b"abc"), zlib.decompress(packed) == data, len(packed) < len(data)])
""", ("hello",), [891568578, True, True])
row("uuid from names", D + """
import uuid

def k(name: str) -> str:
    u = uuid.uuid5(uuid.NAMESPACE_DNS, name)
    return done([str(u), u.version, str(uuid.UUID(int=1))[-4:]])
""", ("example.org",), [str(uuid.uuid5(uuid.NAMESPACE_DNS, "example.org")), 5, "0001"])
row("copy and deepcopy", D + """
import copy

def k(x: list) -> str:
    shallow = copy.copy(x)
    deep = copy.deepcopy(x)
    deep[0].append(9)
    return done([x, shallow is not x, deep])
""", ([[1]],), [[[1]], True, [[1, 9]]])
row("random with a seed", D + """
import random

def k(seed: int) -> str:
    rng = random.Random(seed)
    return done([rng.randint(1, 100), rng.choice("abc"), len(rng.sample(range(10), 3))])
""", (42,), [random.Random(42).randint(1, 100), random.Random(42).choice("abc") and "a", 3])
row("typing annotations", D + """
from typing import Any, Callable, Optional, Union

Handler = Callable[[int], int]
MaybeInt = Optional[int]

def _apply(f: Handler, x: MaybeInt = None) -> Union[int, str]:
    return f(x or 0)

def k(x: int, extra: dict[str, Any] | None = None) -> str:
    return done(_apply(lambda v: v + 1, x))
""", (4,), 5)
row("time module formatting of given times", D + """
import time

def k(ts: int) -> str:
    t = time.gmtime(ts)
    return done([t.tm_year, time.strftime("%H:%M", t)])
""", (3600,), [1970, "01:00"])

# -- the seed's kernels and chaining kernels, in Python 3 ---------------------------------------
row("seed func0 with helper", """
from pyrecks.kernel import call

def k(x):
    y = _utility_function(x)
    return call("func1", y)

def _utility_function(x):
    return x + "3"
""", ("say hi",), Raw(call("func1", "say hi3")))
row("seed func1 prints and chains", """
from pyrecks.kernel import call

def k(x):
    print("func1 got", x)
    return call("func2", x.upper(), len(x))
""", ("hey",), Raw(call("func2", "HEY", 3)))
row("seed func2 halts", """
def k(x):
    print(x)
    return ''
""", ("bye",), Raw(""))
row("literal return strings", """
def k(x: int):
    if x == 1:
        return 'func0("start")'
    if x == 2:
        return 'return {"a": [1, 2]}'
    return ''
""", (2,), Raw('return {"a": [1, 2]}'))
row("effects with SET and INCRBY", """
from pyrecks.kernel import call

def k(n: int) -> str:
    return call("next_step", n + 1, set={"last": n}, effects=[("INCRBY", "hits", 1)])
""", (1,), Raw(call("next_step", 2, set={"last": 1}, effects=[("INCRBY", "hits", 1)])))
row("fan-out and join", """
from pyrecks.kernel import branch, fanout

def k(parts: list) -> str:
    return fanout([branch("work", p) for p in parts], join=branch("merge", len(parts)))
""", (["a", "b"],), Raw(fanout([branch("work", p) for p in ["a", "b"]], join=branch("merge", 2))))
row("key references", """
from pyrecks.kernel import call, key

def k(name: str) -> str:
    return call("report", key(name), "@literal")
""", ("totals",), Raw(call("report", key("totals"), "@literal")))
row("word count split", """
import re

from pyrecks.kernel import call

WORD = re.compile(r"[^\\W\\d_]+")

def k(text: str, min_length: int = 1) -> str:
    words = [w.lower() for w in WORD.findall(text) if len(w) >= min_length]
    return call("wc_count", words, len(words))
""", ("The fox, the dog", 3), Raw(call("wc_count", ["the", "fox", "the", "dog"], 4)))
row("word count summary with effects", """
from collections import Counter

from pyrecks.kernel import done

def k(words: list, total: int) -> str:
    counts = Counter(words)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:2]
    return done({"words": total, "top": [[w, n] for w, n in top]}, effects=[("INCRBY", "wc:words", total)])
""", (["a", "b", "a"], 3), Raw(done({"words": 3, "top": [["a", 2], ["b", 1]]}, effects=[("INCRBY", "wc:words", 3)])))
row("if __name__ main block", D + """
def k(x: int) -> str:
    return done(x * 2)

if __name__ == "__main__":
    print(k(2))
""", (4,), 8)
row("settings and docstring", '''
"""Doubles its input."""
from pyrecks.kernel import done

PYRECKS_TIMEOUT = 2.5
PYRECKS_RETRIES = 1
SCALE = 2

def k(x: int) -> str:
    """Entry."""
    return done(x * SCALE)
''', (21,), 42)


def _expected(value: Any) -> str:
    return str(value) if isinstance(value, Raw) else done(value)


def test_the_table_has_at_least_a_hundred_kernels() -> None:
    assert len(ROWS) >= 100
    assert len({name for name, *_ in ROWS}) == len(ROWS)


@pytest.mark.parametrize(("name", "source", "args", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_benign_kernel_passes_lint_and_runs_behind_the_guards(
    name: str, source: str, args: tuple[Any, ...], expected: Any
) -> None:
    errors = [f for f in check(source, "k", Policy()) if f.is_error]
    assert not errors, "; ".join(map(str, errors))
    kernel = compile_kernel("k", source, Policy())
    namespace = Sandbox.from_policy(Policy()).namespace("k")
    exec(kernel.code, namespace)
    result = namespace["k"](*args)  # type: ignore[operator]
    assert result == _expected(expected)
