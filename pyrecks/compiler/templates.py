"""Return strings built from templates: their literal pieces, and a sample filling.

A kernel that builds its return string with ``%``-formatting, ``str.format`` or an f-string
(``'func1("%s")' % x``) is injection-prone (PK602), and its template may not even parse once
filled (PK604).  These helpers take the template apart into literal pieces and placeholders
and fill each placeholder with a sample value that is valid where it stands (inside quotes,
as a kernel name, or as a value), so the grammar can judge the result.  The checker and the
chain-graph extractor (:mod:`pyrecks.compiler.graph`) use them.
"""

from __future__ import annotations

import _string
import ast
import re
import string
from collections.abc import Iterator

Pieces = list[tuple[str, bool | None]]

_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])"
)


def quote_state(text: str, state: str | None) -> str | None:
    """Track whether we are inside a quoted string after reading ``text``."""
    escaped = False
    for ch in text:
        if state is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == state:
                state = None
        elif ch in "\"'":
            state = ch
    return state


def sample(state: str | None, following: str, numeric: bool) -> str:
    """A sample value for a placeholder, valid in its context of the template."""
    if state is not None:
        return "1" if numeric else "x"
    if following.lstrip().startswith("("):
        return "f"  # the placeholder names the next kernel
    return "1" if numeric else '"x"'


def fill(pieces: list[tuple[str, bool | None]]) -> str:
    """Join literal pieces and placeholders (``(text, None)`` literal, ``(_, numeric)``)."""
    out: list[str] = []
    state: str | None = None
    for index, (text, numeric) in enumerate(pieces):
        if numeric is None:
            out.append(text)
            state = quote_state(text, state)
        else:
            following = next((t for t, n in pieces[index + 1 :] if n is None), "")
            out.append(sample(state, following, numeric))
    return "".join(out)


def template_pieces(value: ast.expr) -> Pieces | None:
    """Literal pieces and placeholders of a %-format, f-string or str.format template.

    ``(text, None)`` is literal text, ``("", numeric)`` a placeholder (``numeric`` when its
    conversion or spec formats a number); ``None`` when ``value`` is no template.
    """
    if (
        isinstance(value, ast.BinOp)
        and isinstance(value.op, ast.Mod)
        and isinstance(value.left, ast.Constant)
        and isinstance(value.left.value, str)
    ):
        template = value.left.value
        pieces: Pieces = []
        pos = 0
        for match in _PERCENT_SPEC.finditer(template):
            pieces.append((template[pos : match.start()], None))
            if match.group(1) == "%":
                pieces.append(("%", None))
            else:
                pieces.append(("", match.group(1) not in "rsac"))
            pos = match.end()
        pieces.append((template[pos:], None))
        return pieces
    if isinstance(value, ast.JoinedStr):
        pieces = []
        for part in value.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                pieces.append((part.value, None))
            else:
                spec = getattr(part, "format_spec", None)
                numeric = spec is not None and isinstance(spec, ast.JoinedStr) and any(
                    isinstance(v, ast.Constant) and str(v.value)[-1:] in "dfeg%"
                    for v in spec.values
                )
                pieces.append(("", numeric))
        return pieces
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "format"
        and isinstance(value.func.value, ast.Constant)
        and isinstance(value.func.value.value, str)
    ):
        try:
            parsed = list(string.Formatter().parse(value.func.value.value))
        except ValueError:
            return None
        pieces = []
        for literal, field_name, spec, _conv in parsed:
            pieces.append((literal, None))
            if field_name is not None:
                pieces.append(("", bool(spec) and (spec or "")[-1:] in "dfeg%"))
        return pieces
    return None


# -- str.format templates: which fields read attributes ------------------------------------


def format_fields(template: str) -> Iterator[str]:
    """Every replacement field of a ``str.format`` template, nested specs included."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return
    for _literal, field_name, spec, _conv in parsed:
        if field_name:
            yield field_name
        if spec:
            yield from format_fields(spec)


def field_accesses(template: str) -> Iterator[tuple[str, bool, str]]:
    """``(field, is_attribute, key)`` for every ``.name`` and ``[key]`` a template reads.

    ``"{0.real} {d[k]}"`` yields ``("0.real", True, "real")`` and ``("d[k]", False, "k")``.
    The checker judges the attribute names (PK304); the run-time format guard resolves any
    template with accesses through the attribute guard.  One parser for both, so they agree.
    """
    for field_name in format_fields(template):
        try:
            _first, rest = _string.formatter_field_name_split(field_name)
            parts = list(rest)
        except ValueError:
            continue
        for is_attr, key in parts:
            yield field_name, bool(is_attr), str(key)


def folded_text(node: ast.expr) -> str | None:
    """``"{0.__glo" + "bals__}"``: the text a concatenation of string literals builds."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = folded_text(node.left)
        right = folded_text(node.right) if left is not None else None
        return left + right if left is not None and right is not None else None
    return None
