"""The renderer writes canonical text that parses back to the very same instructions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from return_string_strategies import transitions, values

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
from pyrecks.compiler.parser import parse, parse_value
from pyrecks.compiler.render import quote, render, render_call, render_value
from pyrecks.errors import RenderError


@settings(max_examples=400, deadline=None)
@given(transitions)
def test_parse_of_render_gives_back_every_instruction(t: Transition) -> None:
    text = render(t)
    back = parse(text)
    assert back == t
    assert repr(back) == repr(t)  # same types too: 1 vs 1.0 vs True
    assert render(back) == text  # canonical: rendering is a fixed point


@settings(max_examples=300, deadline=None)
@given(values)
def test_parse_value_of_render_value_round_trips(v: object) -> None:
    assert repr(parse_value(render_value(v))) == repr(v)


def test_canonical_form_uses_double_quotes_and_comma_space() -> None:
    assert render(parse("f( 'a' ,1,  [2,3],{'k':None} )")) == 'f("a", 1, [2, 3], {"k": None})'


def test_one_clause_per_run_of_the_same_command() -> None:
    t = Transition(
        Call("f"),
        (
            Effect("SET", ("a", 1)),
            Effect("SET", ("b", 2)),
            Effect("DEL", ("c",)),
            Effect("SET", ("d", 3)),
        ),
    )
    assert render(t) == 'f() SET [("a", 1), ("b", 2)] DEL ["c"] SET [("d", 3)]'


def test_halt_renders_as_the_empty_string_and_halt_with_effects_as_clauses_alone() -> None:
    assert render(HALT) == ""
    assert render(Transition(Halt(), (Effect("DEL", ("k",)),))) == 'DEL ["k"]'


def test_fanout_and_finish_render_in_their_documented_syntax() -> None:
    fan = FanOut((Call("f", ("a",)), Call("g", (1,))), Call("merge", ("x",)))
    assert render(Transition(fan)) == '[f("a"), g(1)] -> merge("x")'
    assert render(Transition(Finish(FrozenDict({"n": (1, 2)})))) == 'return {"n": [1, 2]}'


def test_literal_strings_starting_with_at_are_escaped_and_keyrefs_are_not() -> None:
    assert quote("@home") == '"@@home"'
    assert quote("@") == '"@@"'
    assert render_call(Call("f", (KeyRef("home"), "@home"))) == 'f("@home", "@@home")'
    assert parse(render_call(Call("f", ("@@x",)))).then == Call("f", ("@@x",))


def test_escapes_cover_quotes_backslashes_and_control_characters() -> None:
    assert quote('a"b\\c\nd\te\x00f\u2028😀é') == '"a\\"b\\\\c\\nd\\te\\x00f\\u2028😀é"'


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, {1, 2}, b"bytes", object(), (KeyRef("k"),), {(1,): 2}],
)
def test_values_the_language_cannot_hold_raise_render_error(bad: object) -> None:
    with pytest.raises(RenderError):
        render_value(bad)


def test_key_references_outside_call_arguments_cannot_be_rendered() -> None:
    with pytest.raises(RenderError, match="whole argument of a call"):
        render(Transition(Finish(KeyRef("k"))))
    with pytest.raises(RenderError, match="starts with '@'"):
        render_call(Call("f", (KeyRef("@x"),)))
    with pytest.raises(RenderError, match="non-empty"):
        render_call(Call("f", (KeyRef(""),)))


def test_invalid_kernel_names_cannot_be_rendered() -> None:
    with pytest.raises(RenderError):
        render_call(Call("not a name"))
