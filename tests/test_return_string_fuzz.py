"""Any text either parses or raises ReturnStringError — never another exception, never a hang."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from return_string_strategies import transitions

from pyrecks.compiler.instructions import Transition
from pyrecks.compiler.parser import parse, parse_value
from pyrecks.compiler.render import render
from pyrecks.errors import ReturnStringError

_SYNTAX = [*list("()[]{},:'\"\\@-> \n\t%=#;.+0123456789eEx_"), "return", "SET", "DEL", "True", "None", "->", "\\u", "\\x", "@@", "FLUSHALL", "é", "\x00"]
FUZZ = settings(max_examples=500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> None:
    """The promise: a Transition or a well-formed ReturnStringError."""
    try:
        result = parse(text)
    except ReturnStringError as exc:
        assert exc.text == text
        assert exc.message
        lines = text.splitlines() or [""]
        assert 1 <= exc.line <= max(len(lines), 1) + 1
        assert exc.column >= 1
        assert "^" in exc.context()
        assert isinstance(exc.expected, frozenset)
    else:
        assert isinstance(result, Transition)


@FUZZ
@given(st.text(max_size=80))
def test_arbitrary_unicode_text_parses_or_raises_return_string_error(text: str) -> None:
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(_SYNTAX), max_size=40).map("".join))
def test_soup_of_syntax_tokens_parses_or_raises_return_string_error(text: str) -> None:
    check(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = render(draw(transitions))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        piece = draw(st.sampled_from(_SYNTAX))
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "replace":
            text = text[:i] + piece + text[i + 1:]
        else:
            text = text[:i]
    return text


@FUZZ
@given(mutated())
def test_mutations_of_valid_strings_parse_or_raise_return_string_error(text: str) -> None:
    check(text)


@FUZZ
@given(st.text(max_size=40))
def test_parse_value_of_arbitrary_text_parses_or_raises(text: str) -> None:
    with contextlib.suppress(ReturnStringError):
        parse_value(text)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 200_000,
        "[" * 200_000,
        "f(" + "[" * 50_000 + "]" * 50_000 + ")",
        "f(" + "1," * 100_000 + ")",
        '"' * 100_000,
        "\\" * 100_000,
        "f(" + '"' + "x" * 900_000 + '")',
        "f(" + "9" * 200_000 + ")",
        "f() DEL [" + '"a",' * 20_000 + "]",
        "x" * 1_000_001,
    ],
)
def test_pathological_inputs_fail_fast_with_return_string_error(text: str) -> None:
    started = time.perf_counter()
    with contextlib.suppress(ReturnStringError):
        parse(text)
    assert time.perf_counter() - started < 5.0
