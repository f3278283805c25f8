"""One rule for "this string holds kernel NAME's source", in Python and in Lua.

The store refuses to overwrite such a key without ``--force`` and the effect guard (a Redis
script) refuses effects on it; both must agree, so the Lua expression the scripts use is run
here, in a real Redis, over the same values as :func:`looks_like_kernel`.
"""

from __future__ import annotations

import pytest
import redis

from pyrecks.compiler.store import LUA_LOOKS_LIKE_KERNEL, looks_like_kernel

CASES = [
    ("def k(x):\n    return ''\n", "k"),
    ("import json\n\ndef k(x):\n    return ''\n", "k"),
    ("  def k (x): pass", "k"),
    ("\tdef\tk(x): pass", "k"),
    ("def kk(x): pass", "k"),
    ("x = 'def k('", "k"),
    ("# def k(\n", "k"),
    ("hello", "k"),
    ("def a.b(x): pass", "a.b"),
    ("def a-b(x): pass", "a-b"),
    ("def ab(x): pass", "a.b"),
    ("", "k"),
]


@pytest.mark.parametrize(("value", "name"), CASES)
def test_lua_and_python_agree_on_what_a_kernel_source_is(
    r: redis.Redis, value: str, name: str
) -> None:
    script = f"local value, name = ARGV[1], ARGV[2]\nif {LUA_LOOKS_LIKE_KERNEL} then return 1 end\nreturn 0"
    assert bool(r.eval(script, 0, value, name)) == looks_like_kernel(value, name)
