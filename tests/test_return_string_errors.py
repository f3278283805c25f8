"""Invalid return strings fail with one exception type that says where, what and how to fix."""

from __future__ import annotations

import pytest

from pyrecks.compiler.effects import ALLOWED_COMMANDS
from pyrecks.compiler.parser import Limits, parse, parse_value
from pyrecks.errors import ReturnStringError


def error(text: str, limits: Limits | None = None) -> ReturnStringError:
    with pytest.raises(ReturnStringError) as info:
        parse(text, limits)
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("func1(say hi)", 1, 7, 'unquoted text \'say\': a string value needs quotes, e.g. "say hi"'),
        ('func1("x"', 1, 10, "'(' opened at line 1, column 6 is never closed; add ')'"),
        ("f(1))", 1, 5, "')' closes nothing"),
        ("f(1]", 1, 4, "']' does not match '(' opened at line 1, column 2"),
        ("hello", 1, 6, "to call kernel 'hello' write hello(...)"),
        ("f(%s)", 1, 3, "'%s' looks like a %-format placeholder"),
        ("f({x})", 1, 4, "str.format/f-string placeholder"),
        ('f("x" "y")', 1, 7, "missing ','"),
        ("f(1) g(2)", 1, 6, "only one call per return string"),
        ('f() SET ("k", 1)', 1, 9, "effect items go in square brackets"),
        ('print "x"', 1, 7, 'missing parentheses: write print("x")'),
        ("f(g(1))", 1, 3, "calls cannot be nested"),
        ("f(x=1)", 1, 3, "keyword arguments"),
        ("f(true)", 1, 3, "write True"),
        ("f(null)", 1, 3, "write None"),
        ("f(nan)", 1, 3, "NaN and infinity are not allowed"),
        ("f(1,,2)", 1, 5, "a value is missing"),
        ('f("abc)', 1, 3, "unterminated string"),
        ('f("a\nb")', 1, 3, "unterminated string"),
        ("f(@key)", 1, 3, 'must be quoted: write "@key"'),
        ("f(1) # note", 1, 6, "comments are not part of"),
        ("f(1); g(2)", 1, 5, "one instruction"),
        ("a.b(1)", 1, 2, "cannot contain '.'"),
        ("f(1 + 2)", 1, 5, "expressions are not evaluated"),
        ("[f(1)]", 1, 7, "a fan-out needs a join"),
        ("5", 1, 1, "to end the chain with this value write: return 5"),
        ("'f(1)'", 1, 1, "remove the outer quotes"),
        ("f(return 1)", 1, 3, "'return' can only start"),
        ("f(007)", 1, 3, "leading zeros are not allowed"),
        ("f(1e999)", 1, 3, "out of range"),
        ('f("\\q")', 1, 4, "unknown escape \\q"),
        ('f("ab\\x4g")', 1, 6, "malformed escape: write \\xNN"),
        ('f("\\UFFFFFFFF")', 1, 4, "beyond the last Unicode code point"),
        ("if(1)", 1, 1, "'if' cannot be a kernel name"),
        ("f(1)\n  g(2)", 2, 3, "only one call"),
        ("f(\n  1,\n  oops\n)", 3, 3, "unquoted text 'oops'"),
        ("return", 1, 7, "'return' needs a value"),
        ("f(1) SET", 1, 9, "unexpected end of text; expected '['"),
    ],
)
def test_common_mistakes_get_positioned_advice(
    text: str, line: int, column: int, fragment: str
) -> None:
    exc = error(text)
    assert (exc.line, exc.column) == (line, column), exc
    assert fragment in exc.message
    assert exc.text == text


def test_expected_tokens_are_listed_in_words() -> None:
    exc = error("f(")
    assert {"a string", "a number", "')'", "'['", "'{'", "'('", "'True'"} <= exc.expected
    assert "a name" not in exc.expected  # merged LALR lookaheads are filtered out


def test_expected_after_a_call_is_an_effect_clause_or_the_end() -> None:
    exc = error('f("a") "b"')
    assert exc.expected == {"a name", "end of text"}


def test_caret_is_drawn_under_the_fault() -> None:
    exc = error("func1(say hi)")
    assert exc.context() == "func1(say hi)\n      ^"
    assert str(exc).endswith("(line 1, column 7)")


def test_caret_points_into_the_right_line_of_a_multi_line_text() -> None:
    exc = error('f(1)\nSET [("k",)]')
    assert exc.line == 2
    assert exc.context().splitlines() == ['SET [("k",)]', "^"]


# --- effects whitelist ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["FLUSHALL", "CONFIG", "EVAL", "KEYS", "SHUTDOWN", "flushdb"])
def test_commands_outside_the_whitelist_are_rejected_at_the_command(command: str) -> None:
    exc = error(f'f(1) {command} ["x"]')
    assert (exc.line, exc.column) == (1, 6)
    assert "is not an allowed effect command" in exc.message
    for allowed in ALLOWED_COMMANDS:
        assert allowed in exc.message


@pytest.mark.parametrize(
    ("clause", "fragment"),
    [
        ('SET [("k",)]', "SET takes exactly 2 arguments, got 1; usage: SET key value"),
        ('SET ["k"]', "SET takes exactly 2 arguments, got 1"),
        ('SET [(1, "v")]', "the key must be a string, not int 1"),
        ('SET [("", "v")]', "the key must not be empty"),
        ('DEL [("a", "b")]', "DEL takes exactly 1 argument, got 2"),
        ('INCRBY [("c", 1.5)]', "expected an integer, not float 1.5"),
        ('INCRBY [("c", True)]', "expected an integer, not bool True"),
        ('INCRBYFLOAT [("c", "1")]', "expected a number"),
        ('HSET [("h", "f")]', "HSET takes at least 3 arguments (1 + a multiple of 2), got 2"),
        ('HSET [("h", {})]', "at least one field"),
        ('HSET [("h", [1], "v")]', "a field name must be a string or a number"),
        ('ZADD [("z", "a", 1)]', "expected a number, not str 'a'"),
        ('XADD [("s", [1])]', "expected a non-empty dict"),
        ('XADD [("s", {None: 1})]', "a field name must be a string or a number"),
        ('EXPIRE [("k", "10")]', "expected an integer"),
        ('SET [("a", 1), ("b",)]', "item 2: SET takes exactly 2 arguments"),
    ],
)
def test_effect_arguments_are_checked_against_the_command(clause: str, fragment: str) -> None:
    exc = error(f"f() {clause}")
    assert fragment in exc.message
    assert exc.column == 5


# --- @ rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ('f(["@k"])', 4),
        ('f({"a": "@k"})', 9),
        ('f({"@k": 1})', 4),
        ('f(("@k", 1))', 4),
        ('return "@k"', 8),
        ('f() SET [("@k", 1)]', 11),
        ('f() SET [("k", "@v")]', 16),
        ('f() DEL ["@k"]', 10),
    ],
)
def test_key_references_are_only_allowed_as_whole_call_arguments(text: str, column: int) -> None:
    exc = error(text)
    assert exc.column == column
    assert '"@@k"' in exc.message or '"@@v"' in exc.message


def test_a_lone_at_is_an_empty_key_name() -> None:
    exc = error('f("@")')
    assert "empty key name" in exc.message
    assert '"@@"' in exc.message


# --- limits ----------------------------------------------------------------------------------


def test_length_limit() -> None:
    exc = error('f("' + "x" * 100 + '")', Limits(max_length=50))
    assert "limit is 50 (Limits.max_length)" in exc.message
    assert exc.column == 51


def test_argument_limit_points_at_the_call() -> None:
    exc = error("ok(1) SET [('k', 1)]", Limits(max_args=0))
    assert "limit is 0 (Limits.max_args)" in exc.message
    exc = error("g(" + ", ".join(["1"] * 257) + ")")
    assert "257 arguments; the limit is 256" in exc.message
    assert (exc.line, exc.column) == (1, 1)


def test_depth_limit_points_at_the_first_bracket_too_deep() -> None:
    exc = error("f(" + "[" * 40 + "]" * 40 + ")")
    assert "nested more than 32 deep (Limits.max_depth)" in exc.message
    assert exc.column == 34
    assert parse("f(" + "[" * 31 + "]" * 31 + ")")  # exactly at the limit is fine


def test_brackets_inside_strings_do_not_count_towards_depth() -> None:
    assert parse('f("' + "[" * 100 + '")')


def test_branch_limit_points_at_the_fanout() -> None:
    exc = error("[" + ", ".join(["f()"] * 3) + "] -> j()", Limits(max_branches=2))
    assert "3 branches; the limit is 2" in exc.message
    assert exc.column == 1


def test_effect_limit_counts_across_clauses() -> None:
    exc = error('f() DEL ["a", "b"] DEL ["c"]', Limits(max_effects=2))
    assert "more than 2 effects" in exc.message
    assert exc.column == 20


def test_huge_integers_are_an_error_not_a_crash() -> None:
    exc = error("f(" + "9" * 5000 + ")")
    assert "too long" in exc.message


# --- what is not text ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 42, b"f(1)", ["f(1)"]])
def test_non_string_input_is_a_return_string_error(value: object) -> None:
    with pytest.raises(ReturnStringError, match="must be a str"):
        parse(value)  # type: ignore[arg-type]


def test_none_gets_a_hint_about_the_missing_return() -> None:
    with pytest.raises(ReturnStringError, match="return '' to halt"):
        parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "f(1)", "1 2", '"@"', "[1, '@k']"])
def test_parse_value_rejects_what_is_not_exactly_one_value(text: str) -> None:
    with pytest.raises(ReturnStringError):
        parse_value(text)


# --- what would cost the VM unbounded time ------------------------------------------------------


def test_too_many_values_are_refused_before_the_parser_spends_time_on_them() -> None:
    many = "return [" + ", ".join(["1"] * 11) + "]"
    assert parse(many, Limits(max_values=10_000)).then.value == (1,) * 11  # type: ignore[union-attr]
    with pytest.raises(ReturnStringError, match=r"more than 10 values \(Limits.max_values\)"):
        parse(many, Limits(max_values=10))
    # Commas inside strings are text, not values.
    assert parse('return ["a,b,c,d,e,f,g,h,i,j,k,l"]', Limits(max_values=2))


def test_a_hex_integer_too_big_to_render_is_refused() -> None:
    with pytest.raises(ReturnStringError, match="too long"):
        parse("return 0x" + "f" * 5000)
    assert parse("return 0xff").then.value == 255  # type: ignore[union-attr]
