"""Kernels build correctly escaped return strings with pyrecks.kernel, with eager errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrecks.compiler.instructions import (
    HALT,
    Call,
    Effect,
    FanOut,
    Finish,
    FrozenDict,
    Halt,
    KeyRef,
    Transition,
)
from pyrecks.compiler.parser import parse
from pyrecks.errors import RenderError
from pyrecks.kernel import branch, call, done, fanout, halt, key


def test_call_renders_the_seed_style_string() -> None:
    assert call("func1", "say hi to func1 with x3") == 'func1("say hi to func1 with x3")'


def test_call_with_set_renders_a_set_clause() -> None:
    text = call("func1", "x", set={"k": [1, 2], "n": 3})
    assert text == 'func1("x") SET [("k", [1, 2]), ("n", 3)]'
    assert parse(text).effects == (Effect("SET", ("k", (1, 2))), Effect("SET", ("n", 3)))


def test_set_accepts_pairs_and_comes_before_other_effects() -> None:
    text = call("f", set=[("a", 1)], effects=[("INCRBY", "c", 1), ("HSET", "h", "f", "v")])
    assert parse(text).effects == (
        Effect("SET", ("a", 1)), Effect("INCRBY", ("c", 1)), Effect("HSET", ("h", "f", "v"))
    )


def test_effects_accept_any_whitelisted_command_in_any_case() -> None:
    text = call("f", effects=[("del", "k"), ("xadd", "s", {"f": 1}), ("HSET", "h", {"a": 1})])
    assert parse(text).effects == (
        Effect("DEL", ("k",)), Effect("XADD", ("s", FrozenDict({"f": 1}))),
        Effect("HSET", ("h", "a", 1)),
    )


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_any_string_argument_survives_the_round_trip(value: str) -> None:
    assert parse(call("echo", value)).then == Call("echo", (value,))


def test_injection_attempt_stays_a_plain_string() -> None:
    evil = 'x") SET [("admin", "1")] DEL ["y'
    t = parse(call("f", evil))
    assert t == Transition(Call("f", (evil,)))


def test_key_marker_renders_as_a_key_reference_and_at_literals_are_escaped() -> None:
    text = call("report", key("totals"), "@home")
    assert text == 'report("@totals", "@@home")'
    assert parse(text).then == Call("report", (KeyRef("totals"), "@home"))


def test_done_halt_and_fanout() -> None:
    assert parse(done({"total": 3})) == Transition(Finish(FrozenDict({"total": 3})))
    assert done() == "return None"
    assert halt() == ""
    assert parse(halt()) == HALT
    assert parse(halt(set={"s": "ok"})) == Transition(Halt(), (Effect("SET", ("s", "ok")),))
    text = fanout([branch("f", "a"), "g"], join=branch("merge", "x"), effects=[("DEL", "t")])
    assert text == '[f("a"), g()] -> merge("x") DEL ["t"]'
    assert parse(text).then == FanOut((Call("f", ("a",)), Call("g")), Call("merge", ("x",)))
    assert fanout(["a"], join="j") == "[a()] -> j()"


def test_branch_accepts_key_references() -> None:
    assert fanout([branch("f", key("in"))], "j") == '[f("@in")] -> j()'


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: call("f", effects=[("FLUSHALL",)]), "not an allowed effect command"),
        (lambda: call("f", effects=[("SET", "k")]), "SET takes exactly 2 arguments"),
        (lambda: call("f", effects=["SET"]), "each effect is a tuple"),
        (lambda: call("f", effects=[(1, "k")]), "must be a string"),
        (lambda: call("f", set={"": 1}), "must not be empty"),
        (lambda: call("f", set=[("k",)]), "(key, value) pairs"),
        (lambda: call("f", float("nan")), "NaN"),
        (lambda: call("f", {1, 2}), "use a list"),
        (lambda: call("f", [key("k")]), "whole argument of a call"),
        (lambda: call("f", set={"k": key("x")}), "cannot be used in an effect"),
        (lambda: call("not valid"), "not a valid kernel name"),
        (lambda: call("return"), "not a valid kernel name"),
        (lambda: done(key("k")), "whole argument of a call"),
        (lambda: key(""), "non-empty"),
        (lambda: key("@x"), "starts with '@'"),
        (lambda: fanout([], "j"), "at least one branch"),
    ],
)
def test_mistakes_raise_render_error_at_the_kernel_line(build, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RenderError, match=None) as info:
        build()
    assert fragment in str(info.value)


def test_importing_the_helper_pulls_in_no_lark_redis_or_click() -> None:
    code = (
        "import sys, pyrecks.kernel\n"
        "bad = [m for m in ('lark', 'redis', 'click', 'msgpack') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
