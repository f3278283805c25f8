"""Write instructions and values back as canonical return-string text.

The inverse of :mod:`pyrecks.compiler.parser`: for every valid instruction ``t``,
``parse(render(t)) == t`` (a hypothesis test checks it).  The canonical form uses double
quotes, ``", "`` separators, upper-case commands and one ``COMMAND [...]`` clause per run of
the same command, so two equal instructions always render to the same text — handy for
logs, golden files and ``pyrecksc parse``.

This module is imported by kernels inside the sandbox (through :mod:`pyrecks.kernel`), so it
depends on the standard library and the instruction model only — never on Lark, Redis or
click.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pyrecks.compiler.instructions import (
    Call,
    Effect,
    FanOut,
    Finish,
    Halt,
    KeyRef,
    Transition,
    Value,
)
from pyrecks.errors import RenderError

__all__ = ["quote", "render", "render_call", "render_effects", "render_value"]

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def quote(text: str) -> str:
    """``text`` as a double-quoted string literal (Python escapes; printable Unicode kept).

    A literal that starts with ``@`` gets one more ``@`` so that it is not read as a key
    reference: ``"@home"`` renders as ``"@@home"``.
    """
    if text[:1] == "@":
        text = "@" + text
    return f'"{_body(text)}"'


def _body(text: str) -> str:
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(map(_escape_char, text))


def _key(ref: KeyRef) -> str:
    key = ref.key
    if not isinstance(key, str) or not key:
        raise RenderError(f"a key reference needs a non-empty key name, got {key!r}")
    if key[0] == "@":
        raise RenderError(
            f"key {key!r} starts with '@' and cannot be referenced: \"@@...\" means a literal "
            "string; rename the key"
        )
    return f'"@{_body(key)}"'


def _number(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(
                f"{value!r} cannot be written in a return string (NaN and infinity are not "
                "numbers of the language); use None or a string"
            )
        return repr(value)
    try:
        return str(value)
    except ValueError:  # more digits than Python will convert
        raise RenderError("integer has too many digits for a return string; pass it by key "
                          "or as a string") from None


def render_value(value: Value) -> str:
    """One value as text.  Lists and tuples render as ``[...]``, mappings as ``{...}``.

    Raises :class:`~pyrecks.errors.RenderError` for what the language cannot hold (sets,
    bytes, NaN, other objects) and for a :class:`KeyRef` here: key references are only
    allowed as whole call arguments (:func:`render_call`).
    """
    return _value(value, 0)


_MAX_DEPTH = 100


def _value(value: Any, depth: int) -> str:
    kind = type(value)
    if kind is str:
        return quote(value)
    if kind is bool or value is None:
        return repr(value)
    if kind is int or kind is float:
        return _number(value)
    if depth > _MAX_DEPTH:
        raise RenderError("value is nested too deeply (or contains itself)")
    if isinstance(value, KeyRef):
        raise RenderError(
            f'a key reference ("@{value.key}") can only be a whole argument of a call, not '
            "part of a value, an effect or a result"
        )
    if isinstance(value, str):
        return quote(str(value))
    if isinstance(value, bool):
        return repr(bool(value))
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, depth + 1) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if k is not None and not isinstance(k, str | int | float):
                raise RenderError(
                    f"dict key {k!r} is a {type(k).__name__}; keys must be strings, numbers, "
                    "booleans or None"
                )
            items.append(f"{_value(k, depth + 1)}: {_value(v, depth + 1)}")
        return "{" + ", ".join(items) + "}"
    hint = " (use a list)" if isinstance(value, set | frozenset) else ""
    if isinstance(value, bytes | bytearray):
        hint = " (decode it to a str first)"
    raise RenderError(f"a {type(value).__name__} cannot be written in a return string{hint}")


def _arg(value: Any) -> str:
    if isinstance(value, KeyRef):
        return _key(value)
    return _value(value, 0)


def render_call(call: Call) -> str:
    """``name(arg, ...)``; a :class:`KeyRef` argument renders as ``"@key"``."""
    name = call.name
    if not isinstance(name, str) or not name.isidentifier():
        raise RenderError(f"{name!r} is not a valid kernel name (a Python identifier)")
    return f"{name}(" + ", ".join(map(_arg, call.args)) + ")"


def _item(effect: Effect) -> str:
    args = effect.args
    if len(args) == 1:
        return _value(args[0], 0)
    return "(" + ", ".join(_value(a, 0) for a in args) + ")"


def render_effects(effects: tuple[Effect, ...]) -> str:
    """Effect clauses, one ``COMMAND [item, ...]`` per run of consecutive equal commands."""
    clauses: list[str] = []
    i = 0
    while i < len(effects):
        command = effects[i].command
        j = i
        while j < len(effects) and effects[j].command == command:
            j += 1
        items = ", ".join(_item(e) for e in effects[i:j])
        clauses.append(f"{command.upper()} [{items}]")
        i = j
    return " ".join(clauses)


def _target(then: Any) -> str:
    if isinstance(then, Call):
        return render_call(then)
    if isinstance(then, FanOut):
        if not then.branches:
            raise RenderError("a fan-out needs at least one branch")
        branches = ", ".join(render_call(b) for b in then.branches)
        return f"[{branches}] -> {render_call(then.join)}"
    if isinstance(then, Finish):
        return "return " + _value(then.value, 0)
    if isinstance(then, Halt):
        return ""
    raise RenderError(f"not an instruction: {then!r}")


def render(t: Transition) -> str:
    """The canonical return string for ``t``.

    Halt renders as the empty string (what a seed kernel returns); halt with effects as the
    effect clauses alone.
    """
    target = _target(t.then)
    if not t.effects:
        return target
    effects = render_effects(t.effects)
    return f"{target} {effects}" if target else effects
