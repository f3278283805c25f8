"""Every escape we know of, refused by each layer *alone*: the checker, and the guards.

Each row is one kernel ``k`` that tries to break out of purity (or out of the sandbox), the
lint code (and line) the checker refuses it with, and what stops it at run time when the
checker is switched off: the kernel is rewritten and compiled with
:func:`~pyrecks.vm.sandbox.compile_guarded` (no checker), executed in a
:meth:`~pyrecks.vm.sandbox.Sandbox.namespace`, and ``k()`` is called.  The run-time column
names the exception and a fragment of its message; "rewrite" rows are refused before the
kernel runs at all, by the guard rewriter.

The same table is in docs/kernels.md ("Escapes and the layers that stop them");
``test_docs_list_every_escape`` keeps the two equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyrecks.compiler.checker import check
from pyrecks.compiler.policy import Policy
from pyrecks.vm.sandbox import Sandbox, SandboxViolation, compile_guarded


@dataclass(frozen=True)
class Escape:
    name: str
    source: str
    code: str  # the lint code that refuses it
    line: int  # ... on this line
    guard: type[BaseException] | tuple[type[BaseException], ...]  # raised with the checker off
    says: str  # ... with this in its message


def _e(name: str, source: str, code: str, line: int, guard: object, says: str) -> Escape:
    return Escape(name, source.lstrip("\n"), code, line, guard, says)  # type: ignore[arg-type]


V = SandboxViolation

ESCAPES: list[Escape] = [
    # -- the list ---------------------------------------------------------------------
    _e("type of a guarded attrgetter", """
import operator
def k():
    A = type(operator.attrgetter("real"))
    return A("__globals__")(k)
""", "PK204", 3, V, "may not hold"),
    _e("functools.update_wrapper copies __globals__", """
import functools, random
def _h():
    pass
def k():
    functools.update_wrapper(_h, random.Random.seed, assigned=(), updated=("__globals__",))
    return ''
""", "PK303", 5, AttributeError, "update_wrapper"),
    _e("typing ForwardRef._evaluate", """
import typing
def k():
    return typing.get_args(typing.List["1"])[0]._evaluate(None, None, frozenset())
""", "PK303", 3, AttributeError, "get_args"),
    _e("ForwardRef reached without get_args", """
import typing
def k():
    ref = typing.List["1"]
    return ref._inst
""", "PK309", 4, V, "private attribute"),
    _e("str.format reached through getattr", """
import random
def k():
    return getattr("{0.__globals__[_os].environ}", "format")(random.randint)
""", "PK203", 3, V, "__globals__"),
    _e("match class pattern reads __class__", """
def k():
    match k:
        case object(__class__=t):
            return t
""", "PK308", 3, V, "class pattern"),
    _e("ABC registration", """
import collections.abc
def k():
    collections.abc.Mapping.register(str)
    return ''
""", "PK307", 3, V, "ABC registration"),
    _e("type aliased, three arguments", """
def k():
    t = type
    return t("X", (object,), {})
""", "PK204", 3, V, "three arguments"),
    _e("BaseException aliased in except", """
_B = BaseException
def k():
    try:
        raise KeyboardInterrupt
    except _B:
        return ''
""", "PK520", 5, KeyboardInterrupt, ""),
    _e("__del__ runs outside any deadline", """
class C:
    def __del__(self):
        pass
def k():
    return ''
""", "PK532", 2, V, "__del__"),
    _e("writing a module attribute through an alias", """
import json
def k():
    m = json
    m.dumps = len
    return ''
""", "PK306", 3, V, "read-only"),
    _e("gc", """
import gc
def k():
    return str(gc.get_objects())
""", "PK101", 1, ImportError, "gc"),
    _e("reading pyrecks.kernel.call.__code__", """
from pyrecks.kernel import call
def k():
    return str(call.__code__)
""", "PK301", 3, V, "__code__"),
    _e("replacing pyrecks.kernel.call.__code__", """
from pyrecks.kernel import call
def _f():
    return ''
def k():
    call.__code__ = _f.__code__
    return ''
""", "PK301", 5, V, "__code__"),
    _e("module-level list keeps state across chains", """
SEEN = []
def k():
    SEEN.append(1)
    return ''
""", "PK403", 1, V, "PK403"),
    _e("module-level catastrophic regex", """
import re
_X = re.match(r"(a+)+$", "a" * 40 + "b")
def k():
    return ''
""", "PK502", 2, V, "PK502"),
    _e("module-level huge allocation", """
_X = bytearray(2 * 10**9)
def k():
    return ''
""", "PK502", 1, V, "PK502"),
    _e("instantiating a class at module level", """
class C:
    pass
_X = C()
def k():
    return ''
""", "PK502", 3, V, "PK502"),
    _e("global write", """
X = 1
def k():
    global X
    X = 2
    return ''
""", "PK401", 3, V, "global"),
    _e("nonlocal write", """
def k():
    n = 0
    def inc():
        nonlocal n
        n += 1
    inc()
    return ''
""", "PK401", 4, V, "nonlocal"),
    _e("mutable default argument keeps state", """
def k(seen=[]):
    seen.append(1)
    return ''
""", "PK406", 1, V, "PK406"),
    _e("mutable class attribute keeps state", """
class C:
    items = []
def k():
    C.items.append(1)
    return ''
""", "PK403", 2, V, "PK403"),
    _e("__init_subclass__ hook", """
class C:
    def __init_subclass__(cls):
        pass
def k():
    return ''
""", "PK532", 2, V, "__init_subclass__"),
    _e("metaclass keyword", """
class M(type):
    pass
class C(metaclass=M):
    pass
def k():
    return ''
""", "PK530", 3, V, "metaclass"),
    _e("type passed to map builds a class", """
def k():
    return str(list(map(type, ["X"], [(object,)], [{}])))
""", "PK204", 2, V, "three arguments"),
    _e("type of type", """
def k():
    return type(type(1))("X", (), {})
""", "PK204", 2, V, "may not hold"),
    _e("str.format unbound with a built-up template", """
import random
def k():
    return str.format("{0.__glo" + "bals__}", random.randint)
""", "PK304", 3, V, "__globals__"),
    _e("bound format of a str subclass", """
import random
class S(str):
    pass
def k():
    return S("{0.__globals__}").format(random.randint)
""", "PK304", 5, V, "__globals__"),
    _e("private attribute of a library object", """
import random
def k():
    return str(random.Random(1)._randbelow(10))
""", "PK309", 3, V, "private attribute"),
    _e("private attribute of a library base class", """
import random
class R(random.Random):
    def f(self):
        return self._randbelow(3)
def k():
    return str(R(1).f())
""", "PK309", 4, V, "private attribute"),
    _e("re-initialising a shared library object", """
import uuid
def k():
    uuid.UUID.__init__(uuid.NAMESPACE_DNS, int=0)
    return ''
""", "PK301", 3, V, "__init__"),
    _e("setattr on a library class", """
import json
def k():
    setattr(json.JSONEncoder, "item_separator", ";")
    return ''
""", "PK404", 3, V, "only set attributes"),
    # -- escapes kept as tests before this table (tests/test_vm_escapes.py, test_vm_sandbox.py)
    _e("private helper through a module alias", """
import dataclasses
def k():
    m = dataclasses
    return str(m._create_fn("f", ["p"], ["return 1"]))
""", "PK306", 3, V, "private attribute"),
    _e("private helper through a list", """
import dataclasses
def k():
    m = [dataclasses]
    return str(m[0]._create_fn)
""", "PK306", 3, V, "private attribute"),
    _e("attrgetter with a built-up dunder", """
import operator, random
def k():
    m = operator
    g = m.attrgetter("__glob" + "als__")
    return str(g(random.randint))
""", "PK306", 3, V, "__globals__"),
    _e("format template built at run time", """
import random
def k():
    t = "{0.__glo" + "bals__[_os].environ[PATH]}"
    return t.format(random.randint)
""", "PK304", 3, V, "__globals__"),
    _e("writing a class shared by every kernel", """
import json
def k():
    e = json.JSONEncoder
    e.item_separator = ";"
    return ''
""", "PK404", 4, V, "only set attributes"),
    _e("subclass walk", """
def k():
    return str(().__class__.__bases__[0].__subclasses__())
""", "PK301", 2, V, "__class__"),
    _e("computed getattr", """
def k():
    return str(getattr((), "__cl" + "ass__"))
""", "PK203", 2, V, "__class__"),
    _e("open", """
def k():
    return open("/etc/passwd").read()
""", "PK201", 2, NameError, "open"),
    _e("import os", """
import os
def k():
    return ''
""", "PK101", 1, ImportError, "os"),
    _e("json.codecs", """
import json
def k():
    return json.codecs.open("/etc/passwd").read()
""", "PK303", 3, AttributeError, "codecs"),
    _e("eval", """
def k():
    return eval("1")
""", "PK201", 2, NameError, "eval"),
    _e("generator frame walk", """
def k():
    g = (x for x in [1])
    return str(g.gi_frame.f_back)
""", "PK302", 3, V, "gi_frame"),
    _e("__builtins__ dictionary", """
def k():
    return __builtins__["open"]("/etc/passwd").read()
""", "PK202", 2, V, "__builtins__"),
    _e("methodcaller with a built-up dunder", """
import operator
def k():
    return str(operator.methodcaller("_" + "_reduce__")(1))
""", "PK203", 3, V, "__reduce__"),
    _e("shadowing a guard", """
def k():
    _pyrecks_write = lambda o, n: o
    return ''
""", "PK202", 2, V, "reserved"),
    # -- found attacking the guards alone (checker off) -------------------------------------
    _e("ABC registration through a typing alias", """
import typing
def k():
    typing.Mapping.register(str)
    return ''
""", "PK307", 3, V, "ABC registration"),
    _e("namedtuple field defaults keep state", """
import collections
P = collections.namedtuple("P", "a b", defaults=(1,))
def k():
    P._field_defaults.setdefault("x", []).append(1)
    return ''
""", "PK402", 4, AttributeError, "mappingproxy"),
    _e("attribute of an enum member keeps state", """
import enum
class Color(enum.Enum):
    RED = 1
def k():
    Color.RED.seen = [1]
    return ''
""", "PK402", 5, V, "enumeration member"),
    _e("__exit__ returning True swallows the timeout", """
class C:
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return True
def k():
    with C():
        raise KeyboardInterrupt
    return ''
""", "PK521", 5, KeyboardInterrupt, ""),
    _e("return in finally swallows the timeout", """
def k():
    try:
        raise KeyboardInterrupt
    finally:
        return ''
""", "PK521", 5, V, "finally"),
    _e("break in finally swallows the timeout", """
def k():
    while True:
        try:
            raise KeyboardInterrupt
        finally:
            break
    return ''
""", "PK521", 6, V, "finally"),
    _e("copy follows __reduce__ into a module proxy", """
import copy, json
def _get():
    return json
class C:
    def __reduce__(self):
        return (_get, (), {"dumps": len})
def k():
    copy.copy(C())
    return ''
""", "PK532", 5, V, "__reduce__"),
    _e("dataclass rewrites a library class", """
import dataclasses, json
def k():
    dataclasses.dataclass(json.JSONEncoder)
    return ''
""", "PK404", 3, V, "dataclasses.dataclass"),
    _e("dataclass field names become source code", """
import dataclasses
def k(cmd):
    @dataclasses.dataclass(init=False, repr=False)
    class D:
        __annotations__ = {"__class__,int(__import__('os').popen(self.c).read())": int}
    d = D()
    d.c = cmd
    return str(d == d)
""", "PK533", 5, V, "__annotations__"),
    _e("a class body picks the module dataclasses runs code in", """
import dataclasses
def k():
    @dataclasses.dataclass
    class D:
        __module__ = "builtins"
        x: int
    return str(D(1))
""", "PK533", 5, V, "__module__"),
    _e("a class body forges dataclass fields", """
import dataclasses
def k():
    class B:
        __dataclass_fields__ = {}
    @dataclasses.dataclass
    class D(B):
        x: int
    return str(D(1))
""", "PK533", 4, V, "__dataclass_fields__"),
    _e("annotations written item by item", """
import dataclasses
def k():
    class D:
        __annotations__["a,b"] = int
    return str(dataclasses.dataclass(D))
""", "PK202", 4, V, "__annotations__"),
    _e("total_ordering adds methods to a library class", """
import functools, collections
def k():
    functools.total_ordering(collections.UserList)
    return ''
""", "PK404", 3, V, "functools.total_ordering"),
    _e("dataclass changes a module-level class at run time", """
import dataclasses
class C:
    x: int
def k():
    dataclasses.dataclass(C)
    return ''
""", "PK404", 5, V, "shared"),
    _e("yield in try/finally: cleanup at finalization swallows", """
def g():
    try:
        yield 1
    finally:
        raise KeyboardInterrupt
def k():
    x = g()
    next(x)
    x = None
    return ''
""", "PK521", 3, V, "yield"),
    _e("a library class's shared dict", """
import textwrap
def k():
    textwrap.TextWrapper.unicode_whitespace_trans[ord("a")] = "Q"
    return ''
""", "PK404", 3, TypeError, "does not support item assignment"),
    _e("raise in finally replaces the timeout", """
def k():
    try:
        try:
            raise KeyboardInterrupt
        finally:
            raise ValueError("replaced")
    except ValueError:
        pass
    return ''
""", "PK521", 6, KeyboardInterrupt, ""),
    _e("re-initialising a shared typing alias through super", """
import typing
def k():
    super(type(typing.List), typing.List).__init__(dict)
    return ''
""", "PK301", 3, V, "__init__"),
    _e("library __init__ read through a kernel subclass", """
import uuid
class K(uuid.UUID):
    pass
def k():
    K.__init__(uuid.NAMESPACE_DNS, int=0)
    return ''
""", "PK301", 5, V, "__init__"),
    _e("annotation runs code at load time", """
import re
def f(x: re.match(r"(a+)+$", "a" * 40 + "b")) -> None:
    pass
def k():
    return ''
""", "PK502", 2, V, "PK502"),
    _e("enum functional API installs __del__", """
import enum
def _d(self):
    pass
def k():
    E = enum.Enum("E", [("A", 1), ("__del__", _d)])
    return ''
""", "PK532", 5, V, "__del__"),
    _e("getattr with a str subclass that hides its characters", """
import random
class S(str):
    def __getitem__(self, i):
        return "x"
    def startswith(self, *a):
        return False
    def endswith(self, *a):
        return False
def k():
    return str(getattr(random.randint, S("__globals__"))["_os"])
""", "PK203", 10, V, "__globals__"),
    _e("format template in a str subclass that hides its fields", """
import random
class S(str):
    def __contains__(self, x):
        return False
def k():
    return S("{0.__globals__[_os]}").format(random.randint)
""", "PK304", 6, V, "__globals__"),
    _e("attrgetter with a str subclass that splits to a harmless name", """
import operator, random
class S(str):
    def split(self, *a):
        return ["real"]
def k():
    return str(operator.attrgetter(S("__globals__"))(random.randint))
""", "PK203", 6, V, "__globals__"),
]


def _run_without_checker(source: str) -> object:
    namespace = Sandbox.from_policy(Policy()).namespace("k")
    exec(compile_guarded("k", source, "<kernel k>"), namespace)
    return namespace["k"]()  # type: ignore[operator]


@pytest.mark.parametrize("escape", ESCAPES, ids=[e.name for e in ESCAPES])
def test_the_checker_alone_refuses_it_with_code_line_and_column(escape: Escape) -> None:
    findings = check(escape.source, "k", Policy())
    hits = [f for f in findings if f.code == escape.code and f.line == escape.line and f.is_error]
    assert hits, f"expected {escape.code} on line {escape.line}; got " + "; ".join(
        map(str, findings)
    )
    assert all(f.column >= 1 and len(f.message) > 40 for f in hits)


@pytest.mark.parametrize("escape", ESCAPES, ids=[e.name for e in ESCAPES])
def test_the_guards_alone_stop_it_with_the_checker_off(escape: Escape) -> None:
    with pytest.raises(escape.guard) as info:
        _run_without_checker(escape.source)
    assert escape.says in str(info.value), str(info.value)


def test_the_guards_pass_what_the_escapes_are_made_of() -> None:
    """The same building blocks, used purely, run: the guards refuse the escape, not the idiom."""
    source = '''
import operator, random, collections.abc
class P:
    def __init__(self, x):
        self._x = x
    def get(self):
        return self._x
def k():
    t = type(P(1))
    g = operator.attrgetter("real")
    fmt = getattr("{0} {1.real}", "upper")()
    try:
        raise ValueError("x")
    except BaseException as e:
        caught = type(e).__name__
    return (
        t.__name__, g(3), fmt, caught, isinstance({}, collections.abc.Mapping),
        "{0._x}".format(P(2)), random.Random(1).randint(1, 1),
    )
'''
    assert _run_without_checker(source) == ("P", 3, "{0} {1.REAL}", "ValueError", True, "2", 1)


def test_docs_list_every_escape() -> None:
    """docs/kernels.md's escape table has one row per escape here, with the same lint code."""
    text = (Path(__file__).parent.parent / "docs" / "kernels.md").read_text(encoding="utf-8")
    section = text.split("### Escapes and the layers that stop them", 1)[1].split("\n## ", 1)[0]
    rows = {}
    stopped_by = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"PK\d{3}", cells[1]):
            rows[cells[0]] = cells[1]
            stopped_by[cells[0]] = cells[3]
    assert rows == {e.name: e.code for e in ESCAPES}
    for escape in ESCAPES:  # "the rewriter refuses" exactly when compiling fails
        try:
            compile_guarded("k", escape.source, "<kernel k>")
            refused_early = False
        except SandboxViolation:
            refused_early = True
        assert ("rewriter" in stopped_by[escape.name]) == refused_early, escape.name
