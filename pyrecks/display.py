"""Text from Redis, made safe to show in a terminal: the one table of what is escaped.

Whatever pyrecks prints that it did not write itself — a kernel's output or error, a
traceback, a result, a chain id chosen by whoever ``XADD``-ed a start, a kernel name, a
stored source — may hold control characters.  Printed raw, ``ESC [2J`` clears the
operator's screen, ``ESC ]0;…BEL`` retitles the window, ``ESC ]8;;url`` plants a link, a
carriage return overwrites a line and a bidi override (U+202E) makes text read backwards:
a kernel could forge what looks like another chain's line.  Every such character is shown
as an escape (``\\x1b``, ``\\u202e``) instead.  JSON output is made safe by the same rule
(:func:`json_safe`): ``json.dumps`` already escapes C0, but with ``ensure_ascii=False`` it
leaves the C1 range (``\\x9b`` is a one-byte CSI) and bidi controls as they are.
"""

from __future__ import annotations

#: C0 (but tab and newline), DEL and C1 controls, and the Unicode bidi overrides/isolates.
_CONTROLS = [
    *(c for c in range(0x20) if c not in (0x09, 0x0A)),
    *range(0x7F, 0xA0),
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
#: For :func:`shown`: each control as a visible escape.
TERMINAL_ESCAPES: dict[int, str] = {
    c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS
}
#: For :func:`one_line`: newlines too (a printed line may not become two).
LINE_ESCAPES: dict[int, str] = {**TERMINAL_ESCAPES, 0x0A: "\\x0a"}
#: For :func:`json_safe`: what ``json.dumps(ensure_ascii=False)`` leaves raw, as JSON escapes.
_JSON_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in _CONTROLS if c >= 0x7F}


def shown(text: str) -> str:
    """``text`` for a terminal: controls escaped, newlines and tabs kept (a traceback)."""
    return text.translate(TERMINAL_ESCAPES)


def one_line(text: str) -> str:
    """``text`` for one line of a terminal: newlines escaped too (a printed line)."""
    return text.translate(LINE_ESCAPES)


def json_safe(encoded: str) -> str:
    """A JSON document from ``json.dumps(..., ensure_ascii=False)`` with the controls it
    leaves raw written as ``\\uXXXX`` escapes (the same JSON value, safe in a terminal)."""
    return encoded.translate(_JSON_ESCAPES)
