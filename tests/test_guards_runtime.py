"""The guard rewriter and the run-time guards, one promise at a time (no checker involved).

tests/test_guards_escapes.py shows each escape stopped; these tests pin down what the guards
do to ordinary code: what is rewritten and what stays plain, how ``type``, ``except``,
``format`` and the end-of-module check behave, and that ``compile_kernel`` stores exactly
the code ``compile_guarded`` produces.
"""

from __future__ import annotations

import ast
import decimal
import random
from typing import Any

import pytest

from pyrecks.compiler.compiler import compile_kernel
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.rewriter import rewrite
from pyrecks.vm import guards
from pyrecks.vm.sandbox import KernelTimeout, Sandbox, SandboxViolation, compile_guarded
from tests.test_checker_benign_table import ROWS


def _module(source: str) -> dict[str, Any]:
    namespace = Sandbox.from_policy(Policy()).namespace("k")
    exec(compile_guarded("k", source, "<kernel k>"), namespace)
    return namespace


def _rewritten(source: str) -> str:
    return ast.unparse(rewrite(ast.parse(source), "k"))


@pytest.mark.parametrize(("name", "source"), [(r[0], r[1]) for r in ROWS[:40]])
def test_compile_kernel_stores_the_code_compile_guarded_makes(name: str, source: str) -> None:
    """One rewrite: what the VM runs is the same whether or not the checker ran first."""
    assert compile_kernel("k", source, Policy()).code == compile_guarded("k", source, "<kernel k>")


def test_plain_names_stay_plain_and_the_rest_is_guarded() -> None:
    text = _rewritten(
        "import json\n"
        "class C:\n"
        "    def f(self):\n"
        "        self._x = self.__y\n"
        "        return self.total, json.dumps(1), '{0}'.format(self), self.g()\n"
        "def k(x):\n"
        "    try:\n"
        "        return x.real\n"
        "    except BaseException:\n"
        "        raise\n"
    )
    assert "_pyrecks_write(self, '_x')._x" in text
    assert "_pyrecks_getattr(self, '_C__y')" in text  # mangled like the interpreter does
    assert "self.total" in text and "json.dumps(1)" in text and "x.real" in text
    assert "_pyrecks_method('{0}', 'format')(self)" in text
    assert "self.g()" in text  # a plain method name: judged when the kernel was compiled
    assert "except _pyrecks_catch(BaseException):" in text
    assert text.rstrip().endswith("_pyrecks_module_done()")


def test_every_link_of_an_attribute_chain_is_judged() -> None:
    ns = _module("def k(g):\n    return g.gi_frame.f_back\n")
    with pytest.raises(SandboxViolation, match="gi_frame"):
        ns["k"](i for i in [1])
    text = _rewritten("def k(a):\n    return a._b.c._d\n")
    assert "_pyrecks_getattr(_pyrecks_getattr(a, '_b').c, '_d')" in text


def test_calls_of_kernel_functions_imports_and_builtins_are_not_guarded() -> None:
    text = _rewritten(
        "from pyrecks.kernel import call\n"
        "def _h(x):\n    return x\n"
        "def k(s):\n    f = _h\n    return call('k', _h(len(s)), f(1))\n"
    )
    assert "call('k', _h(len(s)), _pyrecks_call(f)(1))" in text


def test_the_kernels_type_is_type_for_everything_but_making_classes() -> None:
    ns = _module(
        "class P:\n    pass\n"
        "def k():\n"
        "    return (type(3) is int, isinstance(int, type), issubclass(P, object),\n"
        "            type(P()) is P, str(type[int]), isinstance(3, type))\n"
    )
    assert ns["k"]() == (True, True, True, True, "type[int]", False)
    ns = _module("def k(n):\n    return type(*n)\n")
    for args in [("X", (), {}), (int,), (guards.operator.attrgetter("x"),)]:
        with pytest.raises(SandboxViolation):
            ns["k"](args)


def test_except_base_exception_catches_exceptions_but_not_the_vm_signals() -> None:
    ns = _module(
        "E = (ValueError, SystemExit)\n"
        "def k(exc):\n"
        "    try:\n"
        "        raise exc\n"
        "    except BaseException:\n"
        "        return 'caught'\n"
        "def j(exc):\n"
        "    try:\n"
        "        raise exc\n"
        "    except E:\n"
        "        return 'caught'\n"
        "def b(exc):\n"
        "    try:\n"
        "        raise exc\n"
        "    except:\n"
        "        return 'caught'\n"
    )
    for fn in ("k", "j", "b"):
        assert ns[fn](ValueError("x")) == "caught"
        for signal in (KernelTimeout, SystemExit, KeyboardInterrupt):
            with pytest.raises(signal):
                ns[fn](signal())


def test_format_reads_fields_through_the_attribute_guard() -> None:
    ns = _module(
        "class P:\n"
        "    def __init__(self):\n"
        "        self._x = 1\n"
        "def k(t, v):\n"
        "    return t.format(v), '{v.real}'.format_map({'v': 2}), str.format(t, v)\n"
    )
    assert ns["k"]("{0._x}", ns["P"]()) == ("1", "2", "1")
    assert ns["k"]("{0.real:>3}", 5) == ("  5", "2", "  5")
    with pytest.raises(SandboxViolation, match="__class__"):
        ns["k"]("{0.__class__}", 1)
    with pytest.raises(SandboxViolation, match="private"):
        ns["k"]("{0._randbelow}", random.Random())


def test_private_names_are_the_kernels_own_on_its_instances_and_classes() -> None:
    ns = _module(
        "import collections\n"
        "P = collections.namedtuple('P', 'a b')\n"
        "class C:\n"
        "    _LIMIT = 3\n"
        "    def __init__(self):\n"
        "        self._n = 1\n"
        "    def _twice(self):\n"
        "        return self._n * 2\n"
        "def k():\n"
        "    c = C()\n"
        "    c._fresh = 5\n"
        "    return c._twice(), C._LIMIT, c._fresh, P(1, 2)._asdict()['b'], getattr(c, '_n')\n"
    )
    assert ns["k"]() == (2, 3, 5, 2, 1)


def test_writes_go_only_to_the_kernels_own_instances() -> None:
    ns = _module(
        "import decimal\n"
        "class C:\n    pass\n"
        "def k(target):\n"
        "    c = C()\n"
        "    c.x = 1\n"
        "    setattr(c, 'y', 2)\n"
        "    with decimal.localcontext() as ctx:\n"
        "        ctx.prec = 5\n"
        "    target.z = 3\n"
    )
    for target in (ns["C"], ns["k"], decimal.Context(), Policy()):
        with pytest.raises(SandboxViolation):
            ns["k"](target)


def test_the_end_of_module_guard_refuses_state_the_body_left_behind() -> None:
    """With the rewriter's purity refusals bypassed (code compiled without them), the guard at
    the end of the module still sees the state: here a list built by a module-level loop."""
    tree = ast.parse("X = []\nfor i in range(3):\n    X.append(i)\ndef k():\n    return ''\n")
    tree.body.append(ast.parse("_pyrecks_module_done()").body[0])
    namespace = Sandbox.from_policy(Policy()).namespace("k")
    with pytest.raises(SandboxViolation, match="'X' holds a list"):
        exec(compile(tree, "<kernel k>", "exec"), namespace)


@pytest.mark.parametrize(
    "value",
    [1, "s", b"b", (1, ("a", frozenset({2}))), None, decimal.Decimal("1"), range(3), int, len],
)
def test_immutable_module_values_pass_the_end_of_module_guard(value: object) -> None:
    guards.module_done({"X": value})


@pytest.mark.parametrize(
    "value", [[1], {1: 2}, {1}, bytearray(b"x"), (1, [2]), object.__new__(Policy)]
)
def test_mutable_module_values_fail_the_end_of_module_guard(value: object) -> None:
    with pytest.raises(SandboxViolation):
        guards.module_done({"X": value})


def test_the_interpreters_own_lazy_imports_still_work() -> None:
    ns = _module(
        "import datetime, time\n"
        "def k():\n"
        "    return datetime.datetime.strptime('2020', '%Y').year, time.strptime('1', '%d').tm_mday\n"
    )
    assert ns["k"]() == (2020, 1)


@pytest.mark.parametrize(
    "source",
    [
        "import json as _pyrecks_call\ndef k():\n    return ''\n",
        "def k(_pyrecks_x):\n    return ''\n",
        "from json import __doc__\ndef k():\n    return ''\n",
        "class C:\n    __del__ = print\ndef k():\n    return ''\n",
        "class C:\n    __match_args__ = ('__dict__',)\ndef k():\n    return ''\n",
        "def k(x):\n    match x:\n        case str(format=f):\n            return f\n",
        "import random\ndef k(x):\n    match x:\n        case random._os:\n            return ''\n",
    ],
)
def test_the_rewriter_refuses_what_the_text_shows(source: str) -> None:
    with pytest.raises(SandboxViolation):
        compile_guarded("k", source, "<kernel k>")


# -- found attacking the guards alone (no checker row: the text does not show them) ---------


def test_re_caches_exact_strings_never_a_kernels_str_subclass() -> None:
    """``re`` caches patterns process-wide and ``Pattern.pattern`` hands the cached object
    back: a kernel's ``str`` subclass there would carry attributes from call to call."""
    namespace = _module(
        """
import re
class S(str):
    pass
def k():
    s = S("zz-pattern")
    s.box = [1]
    return type(re.compile(s).pattern).__name__, type(re.match(s, "zz-pattern").re.pattern).__name__
"""
    )
    assert namespace["k"]() == ("str", "str")


def test_cached_property_has_no_shared_lock() -> None:
    """3.11's ``cached_property.lock`` is one RLock per decorated method, shared by every
    call: ``C.v.lock.acquire()`` would block the next call inside C code."""
    namespace = _module(
        """
import functools
class C:
    @functools.cached_property
    def v(self):
        return [1]
def k():
    c = C()
    assert c.v is c.v
    return C.v.lock
"""
    )
    with pytest.raises(AttributeError, match="lock"):
        namespace["k"]()


def test_typing_final_and_overload_change_nothing() -> None:
    import typing

    namespace = _module(
        """
import typing
@typing.final
def f():
    return 1
@typing.overload
def g(x: int) -> int: ...
def g(x):
    return x
def k():
    return f(), g(2)
"""
    )
    assert namespace["k"]() == (1, 2)
    assert not hasattr(namespace["f"], "__final__")
    assert not typing.get_overloads(namespace["g"])


def test_with_keeps_suppressing_ordinary_exceptions() -> None:
    namespace = _module(
        """
class Quiet:
    def __enter__(self):
        return "in"
    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, ValueError)
def k():
    with Quiet() as got:
        raise ValueError("dropped")
    return got
"""
    )
    assert namespace["k"]() == "in"


def test_timeout_is_not_suppressed_by_a_kernels_exit() -> None:
    namespace = _module(
        """
class Quiet:
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return True
def k(signal):
    with Quiet():
        raise signal
    return "swallowed"
"""
    )
    with pytest.raises(KernelTimeout):
        namespace["k"](KernelTimeout)


def test_break_in_a_loop_inside_finally_is_fine() -> None:
    namespace = _module(
        """
def k():
    out = []
    try:
        out.append(1)
    finally:
        for i in range(3):
            if i:
                break
            out.append(i)
    return out
"""
    )
    assert namespace["k"]() == [1, 0]


def test_nested_namedtuple_defaults_are_frozen_and_inner_dataclasses_work() -> None:
    namespace = _module(
        """
import collections, dataclasses
class A:
    P = collections.namedtuple("P", "a b", defaults=(1,))
def k():
    @dataclasses.dataclass
    class D:
        x: int = 0
    return D(3).x, A.P(0).b, dict(A.P._field_defaults)
"""
    )
    assert namespace["k"]() == (3, 1, {"b": 1})
    with pytest.raises(TypeError):
        namespace["A"].P._field_defaults["b"] = 2


def test_enum_members_are_read_only_but_kernel_instances_are_not() -> None:
    namespace = _module(
        """
import enum
class Color(enum.Enum):
    RED = 1
class Box:
    pass
def k():
    b = Box()
    b.x = Color.RED.value
    return b.x
"""
    )
    assert namespace["k"]() == 1


def test_a_kernels_exit_that_raises_does_not_replace_the_timeout() -> None:
    namespace = _module(
        """
class Loud:
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        raise ValueError("replaced")
def k(signal):
    try:
        with Loud():
            raise signal
    except ValueError:
        return "swallowed"
    return "swallowed"
"""
    )
    with pytest.raises(KernelTimeout):
        namespace["k"](KernelTimeout)
    assert namespace["k"](KeyError) == "swallowed"  # ordinary exceptions are replaced as usual


def test_finally_runs_and_ordinary_exceptions_replace_as_usual() -> None:
    namespace = _module(
        """
def k():
    out = []
    try:
        try:
            raise KeyError("a")
        finally:
            out.append("cleanup")
            raise ValueError("b")
    except ValueError as e:
        out.append(str(e))
    return out
"""
    )
    assert namespace["k"]() == ["cleanup", "b"]


def test_typing_caches_never_keep_a_kernels_object() -> None:
    """``typing.Literal[o]`` is cached process-wide by its argument: ``o`` would be handed
    back (and its ``__repr__`` run with the old ``self``) to the next call."""
    namespace = _module(
        """
import typing
class O:
    def __eq__(self, other):
        return isinstance(other, O)
    def __hash__(self):
        return 1
    def __init__(self):
        self.n = 0
    def __repr__(self):
        self.n += 1
        return str(self.n)
def k():
    return repr(typing.Literal[O()]), repr(typing.List[O()]), typing.List[int] is typing.List[int]
"""
    )
    assert namespace["k"]() == ("typing.Literal[1]", "typing.List[1]", True)
    assert namespace["k"]() == ("typing.Literal[1]", "typing.List[1]", True)


def test_print_hands_the_vm_exact_strings_only() -> None:
    """The VM reads printed lines after the step (outside its time limit): no kernel object
    (a ``str`` subclass with its own ``splitlines``) may travel with them."""
    from pyrecks.vm.sandbox import OutputBuffer, set_current_output

    namespace = _module(
        """
class S(str):
    def __str__(self):
        return self
    def splitlines(self):
        return [self, self]
def k():
    print(S("once"), 1, sep=S(" "), end=S("\\n"))
    return ''
"""
    )
    buffer = OutputBuffer()
    set_current_output(buffer)
    try:
        namespace["k"]()
    finally:
        set_current_output(None)
    assert buffer.lines == ["once 1"]
    assert all(type(line) is str for line in buffer.lines)
