"""Every construct of the return-string language parses to the documented instructions."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrecks.compiler import parser as parser_module
from pyrecks.compiler.instructions import (
    HALT,
    Call,
    Effect,
    FanOut,
    Finish,
    FrozenDict,
    KeyRef,
    Transition,
)
from pyrecks.compiler.parser import DEFAULT_LIMITS, Limits, grammar_path, parse, parse_value
from pyrecks.errors import ReturnStringError


def call(name: str, *args: object) -> Transition:
    return Transition(Call(name, args))


# --- the seed's examples --------------------------------------------------------------


def test_seed_func1_call_with_one_string() -> None:
    assert parse('func1("say hi to func1 with x3")') == call("func1", "say hi to func1 with x3")


def test_seed_func2_call_with_one_string() -> None:
    assert parse('func2("say hi to func2 with ...")') == call("func2", "say hi to func2 with ...")


def test_seed_empty_quotes_halt() -> None:
    assert parse("''") == HALT


def test_seed_set_clause_with_tuples() -> None:
    t = parse('next_func_to_call("a", "b", "c") SET [("k1","v1"), ("k2", "v2")]')
    assert t == Transition(
        Call("next_func_to_call", ("a", "b", "c")),
        (Effect("SET", ("k1", "v1")), Effect("SET", ("k2", "v2"))),
    )


def test_brief_set_example_with_an_integer_value() -> None:
    t = parse('func1("x") SET [("k1", "v1"), ("k2", 3)]')
    assert t.effects == (Effect("SET", ("k1", "v1")), Effect("SET", ("k2", 3)))


# --- halt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "''", '""', " '' ", "\u3000"])
def test_empty_whitespace_and_empty_quotes_all_halt(text: str) -> None:
    assert parse(text) == HALT


def test_effects_alone_apply_then_halt() -> None:
    assert parse('DEL ["a"]') == Transition(HALT.then, (Effect("DEL", ("a",)),))
    assert parse("'' DEL [\"a\"]") == parse('DEL ["a"]')


# --- calls and values ---------------------------------------------------------------------


def test_call_without_arguments_and_with_trailing_comma() -> None:
    assert parse("f()") == call("f")
    assert parse("f(1, 2,)") == call("f", 1, 2)


def test_names_are_python_identifiers_including_unicode() -> None:
    assert parse("café(1)") == call("café", 1)
    assert parse("_private_2(1)") == call("_private_2", 1)
    assert parse("returns(1)") == call("returns", 1)  # a keyword prefix is still a name


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("'single'", "single"),
        ('"double"', "double"),
        (r'"a\nb\tc\\d\"e\'f"', "a\nb\tc\\d\"e'f"),
        (r'"\x41\u00e9\U0001F600"', "Aé😀"),
        (r'"\a\b\f\v\r"', "\a\b\f\v\r"),
        ('"日本語"', "日本語"),
        ("0", 0),
        ("-17", -17),
        ("+5", 5),
        ("1_000_000", 1_000_000),
        ("0x1F", 31),
        ("0o17", 15),
        ("0b101", 5),
        ("-0x10", -16),
        ("1.5", 1.5),
        ("-2.5e-3", -2.5e-3),
        ("1e10", 1e10),
        (".5", 0.5),
        ("5.", 5.0),
        ("1_0.2_5", 10.25),
        ("1E+16", 1e16),
        ("True", True),
        ("False", False),
        ("None", None),
        ("[]", ()),
        ("[1, [2, 3]]", (1, (2, 3))),
        ("()", ()),
        ("(1,)", (1,)),
        ("(1, 'a')", (1, "a")),
        ("(1)", 1),
        ("{}", FrozenDict()),
        ('{"a": 1, 2: [3], 1.5: None, None: True, False: {}}',
         FrozenDict({"a": 1, 2: (3,), 1.5: None, None: True, False: FrozenDict()})),
        ('"@@home"', "@home"),
        ('"@@"', "@"),
        ('"@@@x"', "@@x"),
    ],
)
def test_values_parse_like_python_literals(text: str, value: object) -> None:
    got = parse(f"f({text})").then
    assert isinstance(got, Call)
    assert got.args == (value,)
    assert repr(got.args) == repr((value,))  # same types, not merely equal


def test_lists_and_dicts_become_tuples_and_frozendicts() -> None:
    value = parse_value('[{"a": [1]}]')
    assert isinstance(value, tuple)
    assert isinstance(value[0], FrozenDict)
    assert isinstance(value[0]["a"], tuple)


def test_duplicate_dict_keys_keep_the_last_value_as_in_python() -> None:
    assert parse_value('{"a": 1, "a": 2}') == FrozenDict({"a": 2})


def test_whitespace_and_newlines_between_tokens_are_insignificant() -> None:
    assert parse('\n  f (\n "a" ,\n\t1 )\n SET\n[ ( "k" , 2 ) ]\n') == parse('f("a", 1) SET [("k", 2)]')


# --- key references --------------------------------------------------------------------------


def test_at_key_argument_is_a_key_reference() -> None:
    assert parse('next("@key")') == call("next", KeyRef("key"))
    assert parse("f('@a b', 1)") == call("f", KeyRef("a b"), 1)


def test_double_at_is_the_escape_for_a_literal_at_string() -> None:
    assert parse('f("@@key")') == call("f", "@key")


def test_key_references_work_in_fanout_branches_and_join() -> None:
    t = parse('[f("@a"), g("@b")] -> j("@c")')
    assert t.then == FanOut((Call("f", (KeyRef("a"),)), Call("g", (KeyRef("b"),))),
                            Call("j", (KeyRef("c"),)))


def test_parse_value_gives_a_key_reference_for_a_whole_at_string() -> None:
    assert parse_value('"@k"') == KeyRef("k")
    assert parse_value('"@@k"') == "@k"


# --- effects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "effects"),
    [
        ('DEL ["a", "b"]', [("DEL", ("a",)), ("DEL", ("b",))]),
        ('del ["a"]', [("DEL", ("a",))]),
        ('INCRBY [("c", -2)]', [("INCRBY", ("c", -2))]),
        ('INCRBYFLOAT [("c", 1.5), ("d", 2)]', [("INCRBYFLOAT", ("c", 1.5)),
                                                ("INCRBYFLOAT", ("d", 2))]),
        ('HSET [("h", "f", "v", "g", 1)]', [("HSET", ("h", "f", "v", "g", 1))]),
        ('HSET [("h", {"f": "v", "g": 1})]', [("HSET", ("h", "f", "v", "g", 1))]),
        ('HDEL [("h", "f", "g")]', [("HDEL", ("h", "f", "g"))]),
        ('RPUSH [("l", 1, [2, 3])]', [("RPUSH", ("l", 1, (2, 3)))]),
        ('LPUSH [("l", "x")]', [("LPUSH", ("l", "x"))]),
        ('SADD [("s", "a", "b")]', [("SADD", ("s", "a", "b"))]),
        ('SREM [("s", "a")]', [("SREM", ("s", "a"))]),
        ('ZADD [("z", 1, "a", 2.5, "b")]', [("ZADD", ("z", 1, "a", 2.5, "b"))]),
        ('ZINCRBY [("z", 3, "a")]', [("ZINCRBY", ("z", 3, "a"))]),
        ('XADD [("s", {"f": 1, "g": [1]})]', [("XADD", ("s", FrozenDict({"f": 1, "g": (1,)})))]),
        ('EXPIRE [("k", 60)]', [("EXPIRE", ("k", 60))]),
        ('PEXPIRE [("k", 1500)]', [("PEXPIRE", ("k", 1500))]),
        ('SET [("k", {"structured": [1, None]})]',
         [("SET", ("k", FrozenDict({"structured": (1, None)})))]),
        ("SET []", []),
    ],
)
def test_each_whitelisted_command_parses_to_one_effect_per_item(
    clause: str, effects: list[tuple[str, tuple[object, ...]]]
) -> None:
    t = parse(f"f() {clause}")
    assert t.effects == tuple(Effect(c, a) for c, a in effects)


def test_several_clauses_keep_their_order() -> None:
    t = parse('f() SET [("a", 1)] DEL ["b"] SET [("c", 2)]')
    assert [e.command for e in t.effects] == ["SET", "DEL", "SET"]


def test_effects_may_follow_return_and_fanout() -> None:
    assert parse('return 1 DEL ["k"]') == Transition(Finish(1), (Effect("DEL", ("k",)),))
    t = parse('[f()] -> j() SET [("k", 1)]')
    assert isinstance(t.then, FanOut)
    assert t.effects == (Effect("SET", ("k", 1)),)


# --- fan-out and return --------------------------------------------------------------------


def test_fanout_with_one_or_many_branches_and_trailing_comma() -> None:
    assert parse("[f()] -> j()").then == FanOut((Call("f"),), Call("j"))
    t = parse('[f("a"), g(1),] -> merge("x")')
    assert t.then == FanOut((Call("f", ("a",)), Call("g", (1,))), Call("merge", ("x",)))


@pytest.mark.parametrize(
    ("text", "value"),
    [("return 1", 1), ("return None", None), ('return "done"', "done"),
     ("return [1, {'a': 2}]", (1, FrozenDict({"a": 2}))), ("return(1)", 1),
     ('return "@@x"', "@x")],
)
def test_return_ends_with_a_value(text: str, value: object) -> None:
    assert parse(text) == Transition(Finish(value))


# --- machinery: grammar file, cache, fast path, threads ----------------------------------------


def test_grammar_file_is_found_in_the_checkout() -> None:
    path = grammar_path()
    assert path.name == "return_string.lark"
    assert "start:" in path.read_text()


def test_repeated_strings_are_served_from_the_cache() -> None:
    text = 'cached_kernel("same every time")'
    assert parse(text) is parse(text)


def test_custom_limits_get_their_own_parser() -> None:
    assert parse("f(1, 2)", Limits(max_args=2)) == call("f", 1, 2)
    with pytest.raises(ReturnStringError):
        parse("f(1, 2, 3)", Limits(max_args=2))


def test_parse_is_safe_from_many_threads() -> None:
    texts = [f'k{i}("v{i}") SET [("x{i}", {i})]' for i in range(200)]
    results: dict[int, list[Transition]] = {}

    def work(n: int) -> None:
        results[n] = [parse(t) for t in texts]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    expected = [Transition(Call(f"k{i}", (f"v{i}",)), (Effect("SET", (f"x{i}", i)),))
                for i in range(200)]
    assert all(r == expected for r in results.values())


def test_simple_shapes_take_the_fast_path() -> None:
    for text in ['func1("say hi")', "f(1, -2, 3.5, True, None, 'x')",
                 'f("@k") set [("a", "b"), ("c", 1)]', 'f("esc\\"aped\\n")',
                 '[f("a"), g(1)] -> merge("x")', "[f()] -> j() SET [('k', 1)]"]:
        assert parser_module._fast_parse(text, DEFAULT_LIMITS) is not None


# Building blocks near the fast path's boundary: mostly valid scalars (so the fast path
# really answers), plus pieces it must refuse (escapes it cannot judge, errors, nesting).
_FP_GOOD = st.sampled_from(
    ['"a"', "'b'", '"@k"', '"@@k"', '""', '"a\'b"', "'a\"b'", '"\\n"', "0", "-0", "+7", "12",
     "1.5", "-0.0", "True", "False", "None", '"a\\nb"', '"\\u00e9"', '"\\"\\\\"', '"g(1)"',
     '"]"', '"x\\\'y"']
)
_FP_ODD = st.sampled_from(
    ['"@"', "007", "1e5", "1.", "Truex", "[1]", "x", "9" * 400 + ".5", "0x1", '"\\q"',
     "'\\x4'", '"\\@k"', '"\\U00110000"']
)
_SPACES = ["", " ", "  ", "\n", "\t"]


@st.composite
def near_fast_calls(draw: st.DrawFn, wild: bool) -> str:
    pieces = st.one_of(_FP_GOOD, _FP_ODD) if wild else _FP_GOOD
    spaces = st.sampled_from([*_SPACES, "\u00a0", "\x0b"] if wild else _SPACES)
    sp = lambda: draw(spaces)  # noqa: E731
    names = ["f", "func1", "set", "_k9", "if", "None", "é"] if wild else ["f", "func1", "_k9"]
    name = draw(st.sampled_from(names))
    args = draw(st.lists(pieces, max_size=4))
    text = f"{sp()}{name}{sp()}({sp()}" + f"{sp()},{sp()}".join(args)
    return text + draw(st.sampled_from(["", ","])) + f"{sp()}){sp()}"


@st.composite
def near_fast_texts(draw: st.DrawFn) -> str:
    """Texts shaped like the fast path's; one in three also has pieces it must refuse."""
    wild = draw(st.integers(0, 2)) == 0
    pieces = st.one_of(_FP_GOOD, _FP_ODD) if wild else _FP_GOOD
    sp = lambda: draw(st.sampled_from(_SPACES))  # noqa: E731
    if draw(st.booleans()):
        text = draw(near_fast_calls(wild))
    else:
        branches = draw(st.lists(near_fast_calls(wild), min_size=int(not wild), max_size=3))
        comma = draw(st.sampled_from(["", ","]))
        arrow = draw(st.sampled_from(["- >", "=>", "->"] if wild else ["->"]))
        text = f"{sp()}[{','.join(branches)}{comma}]{sp()}{arrow}{draw(near_fast_calls(wild))}"
    if draw(st.booleans()):
        keys = pieces if wild else st.sampled_from(['"k"', "'k2'", '"a\\nb"', '"@@k"'])
        pairs = draw(st.lists(st.tuples(keys, pieces), min_size=int(not wild), max_size=3))
        cmds = ["SET", "set", "SeT", "DEL", "SETX"] if wild else ["SET", "set", "SeT"]
        cmd = draw(st.sampled_from(cmds))
        items = ", ".join(f"({k},{sp()}{v}{draw(st.sampled_from(['', ',']))})" for k, v in pairs)
        text += f"{cmd}{sp()}[{sp()}{items}{sp()}]{sp()}"
    return text


@settings(max_examples=600, deadline=None)
@given(near_fast_texts())
def test_fast_path_agrees_exactly_with_the_lark_path(text: str) -> None:
    engine = parser_module._engine(None)
    fast = parser_module._fast_parse(text, DEFAULT_LIMITS)
    try:
        slow: Transition | None = engine.run(text, "start")
    except ReturnStringError:
        slow = None
    if fast is not None:
        assert slow is not None, f"fast path accepted a string Lark rejects: {text!r}"
        assert repr(fast) == repr(slow)
