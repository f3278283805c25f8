"""Hypothesis strategies for return-string instructions, shared by the property tests.

They generate only *valid* instructions in canonical form (HSET flattened, effect keys
non-empty, key references only as whole call arguments), which is exactly the set for which
``parse(render(t)) == t`` is promised.
"""

from __future__ import annotations

import keyword
from typing import Any

from hypothesis import strategies as st

from pyrecks.compiler.effects import ALLOWED_COMMANDS, Role
from pyrecks.compiler.instructions import (
    Call,
    Effect,
    FanOut,
    Finish,
    FrozenDict,
    Halt,
    KeyRef,
    Transition,
)

# Characters that stress quoting: quotes, backslashes, @, control characters, non-BMP.
_TRICKY = st.sampled_from(list("\"'\\@\n\r\t\x00\x7f\u2028\xa0é世😀 ,()[]{}:->#%"))
texts = st.text(st.one_of(st.characters(), _TRICKY), max_size=20)
names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
    st.sampled_from(["café", "函数", "_x", "set", "SET", "returns", "print"]),
).filter(lambda n: not keyword.iskeyword(n))
key_names = texts.filter(lambda s: s != "" and not s.startswith("@"))

ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 10**100]))
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(texts, ints, floats, st.booleans(), st.none())
dict_keys = st.one_of(texts, ints, floats, st.booleans(), st.none())


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(dict_keys, children, max_size=4).map(FrozenDict),
    )


values = st.recursive(scalars, _containers, max_leaves=12)
call_args = st.lists(st.one_of(values, key_names.map(KeyRef)), max_size=5).map(tuple)
calls = st.builds(Call, names, call_args)

_ROLE_VALUES: dict[Role, st.SearchStrategy[Any]] = {
    Role.KEY: texts.filter(bool),
    Role.FIELD: st.one_of(texts, ints, floats),
    Role.VALUE: values,
    Role.INT: ints,
    Role.NUMBER: st.one_of(ints, floats),
    Role.MAP: st.dictionaries(st.one_of(texts, ints), values, min_size=1, max_size=3).map(
        FrozenDict
    ),
}


@st.composite
def effects(draw: st.DrawFn) -> Effect:
    spec = ALLOWED_COMMANDS[draw(st.sampled_from(sorted(ALLOWED_COMMANDS)))]
    roles = list(spec.fixed)
    if spec.repeat:
        roles += list(spec.repeat) * draw(st.integers(1, 3))
    return Effect(spec.name, tuple(draw(_ROLE_VALUES[r]) for r in roles))


targets = st.one_of(
    calls,
    st.builds(FanOut, st.lists(calls, min_size=1, max_size=4).map(tuple), calls),
    st.builds(Finish, values),
    st.just(Halt()),
)
transitions = st.builds(Transition, targets, st.lists(effects(), max_size=5).map(tuple))
