"""Encoding parsed effects into the exact Redis commands the commit script runs.

Values are turned into bytes here, in Python, so the Lua side never guesses: text is
UTF-8, integers are decimal, floats use ``repr`` (round-trips exactly), booleans are
``1``/``0``, ``None`` is the empty string, and structured values (lists, dicts) are
msgpack — which is also what a kernel reading the key back with a ``list``/``dict``
annotation decodes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from pyrecks.compiler.effects import ALLOWED_COMMANDS
from pyrecks.compiler.instructions import Effect, thaw
from pyrecks.errors import PyrecksError

#: The Redis type each effect needs its key to hold (or not exist); ``any`` = no check.
KEY_TYPES: dict[str, str] = {
    "SET": "any",
    "DEL": "any",
    "EXPIRE": "any",
    "PEXPIRE": "any",
    "INCRBY": "string",
    "INCRBYFLOAT": "string",
    "HSET": "hash",
    "HDEL": "hash",
    "RPUSH": "list",
    "LPUSH": "list",
    "SADD": "set",
    "SREM": "set",
    "ZADD": "zset",
    "ZINCRBY": "zset",
    "XADD": "stream",
}


if set(KEY_TYPES) != set(ALLOWED_COMMANDS):  # one whitelist: the grammar's
    raise ImportError(
        f"pyrecks.vm.effects.KEY_TYPES {sorted(KEY_TYPES)} does not match the effect "
        f"whitelist {sorted(ALLOWED_COMMANDS)}"
    )


class EffectRejected(PyrecksError):
    """An effect may not be applied (protected key, pattern policy, wrong type)."""


def encode_value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    if value is None:
        return b""
    return msgpack.packb(thaw(value), use_bin_type=True)


def _flatten_pairs(items: Sequence[Any]) -> list[bytes]:
    out: list[bytes] = []
    for item in items:
        if isinstance(item, Mapping):
            for k, v in item.items():
                out += [encode_value(k), encode_value(v)]
        else:
            out.append(encode_value(item))
    return out


def encode_effect(effect: Effect) -> list[bytes]:
    """``Effect("HSET", ("h", {"a": 1}))`` -> ``[b"HSET", b"h", b"a", b"1"]``."""
    command = effect.command.upper()
    if command not in KEY_TYPES:
        raise EffectRejected(f"effect {command} is not an allowed Redis write")
    key, *rest = effect.args
    head = [command.encode(), encode_value(key)]
    if command == "XADD":
        return [*head, b"*", *_flatten_pairs(rest)]
    if command == "HSET":
        return head + _flatten_pairs(rest)
    return head + [encode_value(v) for v in rest]


def check_patterns(effects: Sequence[Effect], patterns: Sequence[str]) -> None:
    """Refuse effects on keys outside the deployment's allowed key patterns (if any)."""
    if not patterns:
        return
    for effect in effects:
        key = str(effect.args[0])
        if not any(fnmatch.fnmatchcase(key, p) for p in patterns):
            raise EffectRejected(
                f"{effect.command} {key}: key does not match the allowed effect key "
                f"patterns {list(patterns)} (policy effect_key_patterns)"
            )

