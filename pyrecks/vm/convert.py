"""Turning call arguments into the types a kernel's entry function declares.

Arguments arrive either as literals of the return-string language (already typed) or as
the contents of Redis keys (``"@key"``: bytes for a string key, a dict for a hash, a list
for a list or set, a member->score dict for a sorted set).  A parameter's annotation —
stored as source text in the kernel's signature — says what the kernel wants:

* ``str`` (or no annotation) — bytes are decoded as UTF-8;
* ``bytes`` — raw bytes;
* ``int`` / ``float`` / ``bool`` — parsed from text, with a clear error if they don't parse;
* ``list[...]`` / ``dict[...]`` / ``tuple[...]`` / ``set[...]`` — a Redis string holding a
  structured value is decoded as msgpack (what effects write), else as JSON; element types
  such as ``list[int]`` are converted one level deep.

Anything else (``Any``, a class name, a union) is passed through unchanged.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import msgpack

from pyrecks.errors import PyrecksError


class ArgumentError(PyrecksError):
    """An argument cannot be converted to its parameter's declared type."""


@dataclass(frozen=True)
class RedisValue:
    """The content of a Redis key named by an ``@key`` argument."""

    key: str
    type: str
    data: Any


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _decode(raw: Any) -> Any:
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    if isinstance(raw, list):
        return [_decode(v) for v in raw]
    if isinstance(raw, dict):
        return {_decode(k): _decode(v) for k, v in raw.items()}
    return raw


def redis_to_python(value: RedisValue) -> Any:
    """The natural Python form of a key's content, before any annotation applies."""
    data = value.data
    if value.type == "string":
        return _decode(data)
    if value.type == "hash":
        pairs = list(data)
        return {_decode(pairs[i]): _decode(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    if value.type in ("list", "set"):
        items = [_decode(v) for v in data]
        return sorted(items) if value.type == "set" else items
    if value.type == "zset":
        pairs = list(data)
        return {_decode(pairs[i]): float(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    raise ArgumentError(f"key {value.key!r} holds a {value.type}, which kernels cannot read")


def _structured(raw: bytes | str, key: str, want: str) -> Any:
    if isinstance(raw, bytes):
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except (
            ValueError,
            TypeError,  # a map keyed by a list: {[1]: 1} is valid msgpack, not a dict
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
        ):
            pass
        raw = raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except ValueError:
        raise ArgumentError(
            f"key {key!r} should hold a {want} (msgpack or JSON) but holds {raw[:60]!r}"
        ) from None


@functools.lru_cache(maxsize=1024)
def _base(annotation: str) -> tuple[str, str]:
    """``'list[int]'`` -> ``('list', 'int')``; ``'typing.List[str]'`` -> ``('list', 'str')``."""
    text = annotation.replace(" ", "")
    head, _, inner = text.partition("[")
    head = head.rsplit(".", 1)[-1].lower()
    return head, inner[:-1] if inner.endswith("]") else inner


def _scalar(value: Any, want: str, where: str) -> Any:
    if want == "str":
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return str(value)
        raise ArgumentError(f"{where} must be a str, got {type(value).__name__}")
    if want == "bytes":
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        raise ArgumentError(f"{where} must be bytes, got {type(value).__name__}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        if want == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float):
                return bool(value)
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(text)
        if want == "int":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(value)
        if want == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{where} must be {want}, got {value!r}") from None
    return value


_SCALARS = {"str", "bytes", "int", "float", "bool"}
_CONTAINERS = {"list", "dict", "tuple", "set", "frozenset", "sequence", "mapping"}


def convert(value: Any, annotation: str | None, where: str) -> Any:
    """Convert one argument (literal or :class:`RedisValue`) for a parameter."""
    head, inner = _base(annotation) if annotation else ("", "")
    if isinstance(value, RedisValue):
        if head in _CONTAINERS and value.type == "string":
            value = _structured(value.data, value.key, head)
        elif head in ("bytes",) and value.type == "string":
            return value.data
        else:
            value = redis_to_python(value)
    if head in _SCALARS:
        return _scalar(value, head, where)
    if head in ("list", "tuple", "set", "frozenset", "sequence"):
        if isinstance(value, dict) or not isinstance(value, list | tuple | set | frozenset):
            raise ArgumentError(f"{where} must be a {head}, got {type(value).__name__}")
        items = list(value)
        elem = inner.split(",")[0] if inner else ""
        elem_head = _base(elem)[0] if elem else ""
        if elem_head in _SCALARS:
            items = [_scalar(v, elem_head, f"{where}[{i}]") for i, v in enumerate(items)]
        if head == "tuple":
            return tuple(items)
        if head in ("set", "frozenset"):
            return set(items) if head == "set" else frozenset(items)
        return items
    if head in ("dict", "mapping"):
        if not isinstance(value, dict):
            raise ArgumentError(f"{where} must be a dict, got {type(value).__name__}")
        return value
    return value
