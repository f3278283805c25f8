"""Kernels that must pass the checker without a single error: false positives matter.

Each row is something ordinary kernel authors write.  The kernel is named after the row's
``name`` argument (``k`` unless stated), and a row passes when ``check`` reports no error.
"""

from __future__ import annotations

import pytest

from pyrecks.compiler.checker import check
from pyrecks.compiler.policy import Policy

BENIGN: list[tuple[str, str]] = [
    ("seed shape with helper", '''
import time

def k(x):
    y = _utility_function(x)
    return ''

def _utility_function(x):
    return x + "3"
'''),
    ("comprehensions", '''
def k(words):
    counts = {w: len(w) for w in words}
    evens = [n for n in range(10) if n % 2 == 0]
    uniq = {w.lower() for w in words}
    total = sum(n * n for n in evens)
    return ''
'''),
    ("nested functions and closures", '''
def k(x):
    def inner(y):
        return y * 2
    acc = []
    def push(v):
        acc.append(v)
    push(inner(x))
    return ''
'''),
    ("math json re", '''
import json
import math
import re

WORD = re.compile(r"\\w+")

def k(text: str) -> str:
    words = WORD.findall(text)
    data = json.dumps({"n": len(words), "root": math.sqrt(len(words))})
    return ''
'''),
    ("annotations", '''
from typing import Any, Optional

def k(items: list[str], weights: dict[str, int], extra: Optional[Any] = None,
      *rest: int, flag: bool = False, **opts: str) -> str:
    return ''
'''),
    ("docstring and constants", '''
"""Kernel doc."""

LIMIT = 10
NAMES = ("a", "b")
STOP = frozenset({"the", "a"})
RATIO = 1 / 3
PYRECKS_TIMEOUT = 2.5
PYRECKS_RETRIES = 3

def k(x):
    """Entry doc."""
    return ''
'''),
    ("f-strings without quotes", '''
def k(x: int):
    label = f"value {x:>5} of {LIMIT}"
    print(f"k got {x}")
    return ''

LIMIT = 3
'''),
    ("pyrecks.kernel helpers", '''
from pyrecks.kernel import call, done

def k(x):
    if x:
        return call("next_kernel", x, 3)
    return done({"x": x})
'''),
    ("return string literals", '''
def k(x):
    if x == 1:
        return 'func0("start ...")'
    if x == 2:
        return 'return {"a": [1, 2]}'
    if x == 3:
        return '[f(1), g("2")] -> join()'
    if x == 4:
        return 'f("@doc:1") SET [("k", "v")]'
    return ''
'''),
    ("return None and bare return in helpers", '''
def _h(x):
    if x:
        return
    return None

def k(x):
    _h(x)
    return ''
'''),
    ("shadowing builtins with locals", '''
from re import compile

def k(input, vars=None):
    open = input.strip()
    pattern = compile(r"x")
    return ''
'''),
    ("plain class and dataclass", '''
from dataclasses import dataclass, field

@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list = field(default_factory=list)

class Acc:
    """Doc."""
    def __init__(self):
        self.items = []
        super().__init__()
    def add(self, v):
        self.items.append(v)
    def __repr__(self):
        return f"Acc({self.items!r})"

def k(x):
    acc = Acc()
    acc.add(Point(1, 2))
    return ''
'''),
    ("getattr with literal names", '''
def k(x):
    a = getattr(x, "real", 0)
    b = hasattr(x, "imag")
    return ''
'''),
    ("operator attrgetter literal", '''
import operator
from operator import itemgetter

def k(rows):
    rows = sorted(rows, key=operator.attrgetter("name"))
    rows = sorted(rows, key=itemgetter(0))
    return ''
'''),
    ("format templates", '''
def k(x):
    a = "{0} and {1[0]} and {name}".format(x, [x], name=x)
    b = "{x.real:>4}".format(x=3)
    return ''
'''),
    ("exceptions", '''
def k(x):
    try:
        v = int(x)
    except (ValueError, TypeError) as exc:
        raise RuntimeError(f"bad {x}") from exc
    try:
        pass
    except BaseException:
        raise
    try:
        pass
    finally:
        v = 0
    return ''
'''),
    ("local mutation of copies", '''
DEFAULTS = ("a", "b")

def k(x):
    items = list(DEFAULTS)
    items.append(x)
    seen = {}
    seen[x] = 1
    return ''
'''),
    ("generators and lambdas", '''
def _pairs(xs):
    for a, b in zip(xs, xs[1:]):
        yield a, b

def k(xs):
    double = lambda v: v * 2
    out = [double(a) for a, _ in _pairs(xs)]
    return ''
'''),
    ("seeded rng", '''
import random

def k(seed: int):
    rng = random.Random(seed)
    v = rng.randint(1, 6)
    return ''
'''),
    ("collections", '''
from collections import Counter, defaultdict, deque
import collections.abc

def k(words):
    c = Counter(words)
    d = defaultdict(int)
    q = deque(words)
    ok = isinstance(words, collections.abc.Sequence)
    return ''
'''),
    ("main guard for local runs", '''
def k(x):
    return ''

if __name__ == "__main__":
    print(k("hello"))
'''),
    ("type name in message", '''
def k(x):
    if not isinstance(x, str):
        raise TypeError(f"expected str, got {type(x).__name__}")
    return ''
'''),
    ("walrus match and with", '''
import decimal

def k(x):
    if (n := len(x)) > 3:
        pass
    match x:
        case [first, *rest]:
            pass
        case {"a": value, **others}:
            pass
        case _:
            pass
    with decimal.localcontext() as ctx:
        ctx.prec = 5
    return ''
'''),
    ("unicode source", '''
def k(x):
    grüße = "héllo"
    return ''
'''),
    ("helpers returning call-like text", '''
import json

def _next(value):
    return "wc_count(" + json.dumps(value) + ")"

def k(x):
    return _next(x)
'''),
    # PK306: modules used as module.attribute, and names that only look like modules
    ("modules used as module.attribute", '''
import json, math, operator
import collections.abc
import datetime as dt

def k(x):
    y = json.dumps(x)
    z = math.pi * math.sqrt(2)
    m = isinstance(x, collections.abc.Mapping)
    d = dt.date(2020, 1, 1)
    s = operator.add(1, 2)
    get = operator.attrgetter("real")
    return json.dumps([y, z, m, str(d), s, get(3)])
'''),
    ("parameter and local shadow a module", '''
import json

def _helper(json):
    return json["a"]

def k(x, math=None):
    json = {"a": x}
    return _helper(json) if math is None else ''
'''),
    ("class from a module passed around", '''
from collections import Counter, OrderedDict

def _count(factory, items):
    return factory(items)

def k(x):
    kinds = [Counter, OrderedDict]
    c = _count(Counter, x)
    return '' if kinds and c else ''
'''),
    ("comprehension variable shadows a module", '''
import json

def k(xs):
    return json.dumps([json + 1 for json in xs])
'''),
    ("module attribute in a class and a lambda", '''
import math

class Circle:
    def __init__(self, r):
        self.area = math.pi * r * r

def k(x):
    f = lambda r: math.floor(r)
    return '' if f(Circle(x).area) else ''
'''),
]


@pytest.mark.parametrize(
    "source", [pytest.param(src, id=name) for name, src in BENIGN]
)
def test_benign_kernel_has_no_errors(source: str) -> None:
    findings = check(source, "k", Policy())
    errors = [str(f) for f in findings if f.is_error]
    assert errors == []


def test_warnings_do_not_block() -> None:
    source = "import random\nimport time\n\ndef k(x):\n    return 'f(\"%s\")' % time.time()\n"
    findings = check(source, "k")
    assert findings and all(not f.is_error for f in findings)
    assert {f.code for f in findings} == {"PK405", "PK602"}


def test_module_level_mutable_container_is_an_error() -> None:
    """It used to be a warning; three chains then returned 1, 2, 3 from ``SEEN.append``."""
    findings = check("WEIGHTS = {'a': 1}\n\ndef k(x):\n    return ''\n", "k")
    assert [(f.code, f.severity, f.line, f.column) for f in findings] == [
        ("PK403", "error", 1, 11)
    ]


def test_nondeterminism_warnings_can_be_turned_off() -> None:
    source = "import random\n\ndef k(x):\n    y = random.random()\n    return ''\n"
    assert check(source, "k")
    assert not check(source, "k", Policy(warn_nondeterminism=False))


@pytest.mark.parametrize(
    "call",
    [
        "time.time()",
        "datetime.datetime.now()",
        "datetime.date.today()",
        "uuid.uuid4()",
        "random.choice([1, 2])",
        "random.Random()",
        "hash('x')",
    ],
)
def test_nondeterministic_calls_warn(call: str) -> None:
    source = f"import time, datetime, uuid, random\n\ndef k(x):\n    y = {call}\n    return ''\n"
    findings = check(source, "k")
    assert [(f.code, f.severity, f.line) for f in findings] == [("PK405", "warning", 4)]


def test_from_import_nondeterminism_is_resolved() -> None:
    source = "from datetime import datetime as dt\n\ndef k(x):\n    y = dt.now()\n    return ''\n"
    assert [f.code for f in check(source, "k")] == ["PK405"]


def test_injection_prone_return_strings_warn_and_are_grammar_checked() -> None:
    seed = 'def k(x):\n    return \'func1("say hi to func1 with %s")\' % x\n'
    assert [(f.code, f.severity) for f in check(seed, "k")] == [("PK602", "warning")]
    fstring = 'def k(x):\n    return f\'func1("{x}")\'\n'
    assert [f.code for f in check(fstring, "k")] == ["PK602"]
    broken = 'def k(x):\n    return \'func1("%s"\' % x\n'
    codes = sorted(f.code for f in check(broken, "k"))
    assert codes == ["PK602", "PK604"]
