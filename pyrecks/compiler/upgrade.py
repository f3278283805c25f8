"""Rewrite Python 2 kernels (the seed's era) as Python 3: ``pyrecksc upgrade``.

A small tokenizer of its own (Python 3's ``tokenize`` and ``ast`` cannot read Python 2, and
``lib2to3`` is gone in 3.13) drives these rewrites, none of which touches string literals or
comments:

- ``print x, y`` / ``print >>f, x`` / ``print x,`` -> ``print(x, y)`` / ``print(x, file=f)``
  / ``print(x, end=" ")``;
- ``except E, e:`` -> ``except E as e:``; ``<>`` -> ``!=``; `` `x` `` -> ``repr(x)``;
- ``d.has_key(k)`` -> ``k in d``; ``.iteritems() / .itervalues() / .iterkeys()`` ->
  ``.items() / .values() / .keys()``; ``xrange``, ``unicode``, ``basestring``, ``unichr``,
  ``raw_input``, ``long`` -> their Python 3 names; ``10L`` -> ``10``; ``0777`` -> ``0o777``;
- tab indentation -> four spaces a level (tabs count as in Python 2: to the next multiple
  of 8);
- a literal ``\\n`` typed on a shell line (``SET k "def f(x):\\n ..."`` stores backslash-n)
  is turned back into line breaks.

What cannot be rewritten safely is *flagged*, not guessed: ``/`` between integers floors in
Python 2 (``7 / 2 == 3``) and gives a float in Python 3, so every ``/`` whose operands are
not visibly floats is reported (use ``//`` for Python 2's result), unless the kernel has
``from __future__ import division``.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field

__all__ = [
    "Flag",
    "Upgrade",
    "escaped_newlines_hint",
    "looks_like_python2",
    "undo_shell_escapes",
    "upgrade_source",
]


@dataclass(frozen=True)
class Flag:
    """Something the upgrade left for a person to decide (``line``/``col`` are 1-based)."""

    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.col}: {self.code} {self.message}"


@dataclass
class Upgrade:
    name: str
    original: str
    source: str
    flags: list[Flag] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.source != self.original

    @property
    def ok(self) -> bool:
        """Whether the result is valid Python 3."""
        return not any(f.code == "PY300" for f in self.flags)

    def diff(self, fromfile: str | None = None, tofile: str | None = None) -> str:
        return "".join(
            difflib.unified_diff(
                _lines(self.original),
                _lines(self.source),
                fromfile=fromfile or f"{self.name} (Python 2)",
                tofile=tofile or f"{self.name} (Python 3)",
            )
        )


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


# --------------------------------------------------------------------------------------
# Shell escapes
# --------------------------------------------------------------------------------------

_SHELL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def escaped_newlines_hint(value: str | bytes, name: str | bytes = "the kernel") -> str | None:
    """Why a kernel value with ``\\n`` but no line break fails, and how to store it; else None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    body = value.strip()
    if "\\n" not in body or "\n" in body:
        return None
    if not re.match(r"(def|import|from|class|@)\b", body):
        return None
    return (
        f"{name} holds the two characters backslash-n where line breaks belong: a shell "
        "line (or redis-cli's command-line arguments) keeps \\n as typed. Store the source "
        "with real line breaks: 'pyrecksc compile FILE.py', or at the prompt of "
        "'pyrecks redis-cli' (inside double quotes \\n is a line break there), or repair the "
        f"stored value with 'pyrecksc upgrade --stored {name} --write'"
    )


def undo_shell_escapes(value: str) -> str:
    """``def f(x):\\n\\treturn ''`` as typed -> the source redis-cli's prompt would store.

    The escapes are redis-cli's inside double quotes (``\\n \\t \\r \\" \\\\``), applied
    everywhere, as if the same line had been typed at redis-cli's prompt.
    """
    return re.sub(r"\\([ntr\"\\])", lambda m: _SHELL_ESCAPES[m.group(1)], value)


# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------

_PREFIX = re.compile(r"(?i)(?:[urb]|ur|br|rb)?(?='''|\"\"\"|'|\")")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(
    r"(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
    r"|\d+(?:[eE][+-]?\d+)?)[lLjJ]?"
)
# Longest first, so that "<>" and "**=" win over "<" and "**".
_OPS = sorted(
    (
        "<>",
        "**=",
        "//=",
        ">>=",
        "<<=",
        "!=",
        "==",
        "<=",
        ">=",
        "**",
        "//",
        ">>",
        "<<",
        "+=",
        "-=",
        "*=",
        "/=",
        "%=",
        "&=",
        "|=",
        "^=",
        "->",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        ";",
        ".",
        "=",
        "+",
        "-",
        "*",
        "/",
        "%",
        "&",
        "|",
        "^",
        "~",
        "<",
        ">",
        "@",
        "`",
    ),
    key=len,
    reverse=True,
)


@dataclass
class Tok:
    kind: str  # name number string comment op ws cont nl err
    text: str
    line: int
    col: int


def tokenize(source: str) -> list[Tok]:
    toks: list[Tok] = []
    i, line, col = 0, 1, 1
    n = len(source)

    def add(kind: str, text: str) -> None:
        nonlocal i, line, col
        toks.append(Tok(kind, text, line, col))
        i += len(text)
        newlines = text.count("\n")
        if newlines:
            line += newlines
            col = len(text) - text.rfind("\n")
        else:
            col += len(text)

    while i < n:
        c = source[i]
        if c == "\n":
            add("nl", "\n")
        elif c in " \t\f\r":
            j = i
            while j < n and source[j] in " \t\f\r":
                j += 1
            add("ws", source[i:j])
        elif c == "\\" and source.startswith("\n", i + 1):
            add("cont", "\\\n")
        elif c == "#":
            j = source.find("\n", i)
            add("comment", source[i : n if j < 0 else j])
        elif (m := _PREFIX.match(source, i)) is not None and (c in "'\"" or m.end() > i):
            start = m.end()
            quote = source[start : start + 3]
            if quote not in ("'''", '"""'):
                quote = source[start]
            j = start + len(quote)
            while j < n:
                if source[j] == "\\":
                    j += 2
                    continue
                if source.startswith(quote, j):
                    j += len(quote)
                    break
                if len(quote) == 1 and source[j] == "\n":
                    break  # unterminated: leave the rest to the final syntax check
                j += 1
            add("string", source[i:j])
        elif c.isdigit() or (c == "." and i + 1 < n and source[i + 1].isdigit()):
            m2 = _NUMBER.match(source, i)
            add("number", m2.group() if m2 else c)
        elif (m3 := _NAME.match(source, i)) is not None:
            add("name", m3.group())
        else:
            for op in _OPS:
                if source.startswith(op, i):
                    add("op", op)
                    break
            else:
                add("err", c)
    return toks


_SIGNIFICANT = ("name", "number", "string", "op", "err")
_COMPOUND = {
    "if",
    "elif",
    "else",
    "for",
    "while",
    "try",
    "except",
    "finally",
    "with",
    "def",
    "class",
}
_OPEN = {"(": ")", "[": "]", "{": "}"}
_RENAMES = {
    "xrange": "range",
    "unicode": "str",
    "basestring": "str",
    "unichr": "chr",
    "raw_input": "input",
    "long": "int",
}
_METHODS = {"iteritems": "items", "itervalues": "values", "iterkeys": "keys"}


class _Rewriter:
    def __init__(self, source: str) -> None:
        self.toks = tokenize(source)
        self.flags: list[Flag] = []
        self.changes: set[str] = set()
        code = " ".join(t.text for t in self.toks if t.kind == "name")
        self.future_print = bool(re.search(r"from __future__ import .*print_function", source))
        self.future_division = "division" in code and bool(
            re.search(r"from\s+__future__\s+import[^\n]*\bdivision\b", source)
        )

    # -- navigation helpers ----------------------------------------------------------
    def sig(self, i: int, step: int = 1) -> int:
        """Index of the next significant token from ``i`` (inclusive) in direction ``step``."""
        while 0 <= i < len(self.toks) and self.toks[i].kind not in _SIGNIFICANT:
            i += step
        return i

    def text(self, i: int) -> str:
        return self.toks[i].text if 0 <= i < len(self.toks) else ""

    def match(self, i: int) -> int:
        """Index of the bracket closing the one at ``i`` (or the last token)."""
        depth = 0
        for j in range(i, len(self.toks)):
            t = self.toks[j]
            if t.kind == "op" and t.text in _OPEN:
                depth += 1
            elif t.kind == "op" and t.text in ")]}":
                depth -= 1
                if depth == 0:
                    return j
        return len(self.toks) - 1

    def flag(self, tok: Tok, code: str, message: str) -> None:
        self.flags.append(Flag(tok.line, tok.col, code, message))

    # -- statements ------------------------------------------------------------------
    def statement_starts(self) -> list[int]:
        starts: list[int] = []
        depth = 0
        at_start = True
        header: str | None = None
        for i, t in enumerate(self.toks):
            if t.kind in ("ws", "cont", "comment"):
                continue
            if t.kind == "nl":
                if depth == 0:
                    at_start, header = True, None
                continue
            if at_start:
                starts.append(i)
                at_start = False
                header = t.text if t.kind == "name" and t.text in _COMPOUND else None
                if t.kind == "op" and t.text in _OPEN:
                    depth += 1
                continue
            if t.kind == "op":
                if t.text in _OPEN:
                    depth += 1
                elif t.text in ")]}":
                    depth = max(0, depth - 1)
                elif depth == 0 and t.text == ";":
                    at_start = True
                elif depth == 0 and t.text == ":" and header is not None:
                    at_start, header = True, None
        return starts

    def statement_end(self, i: int) -> int:
        """Index one past the statement starting at ``i`` (its trailing space excluded)."""
        depth = 0
        j = i
        last = i
        while j < len(self.toks):
            t = self.toks[j]
            if t.kind == "op" and t.text in _OPEN:
                depth += 1
            elif t.kind == "op" and t.text in ")]}":
                depth -= 1
            elif depth <= 0 and (t.kind in ("nl", "comment") or (t.kind, t.text) == ("op", ";")):
                break
            if t.kind in _SIGNIFICANT:
                last = j
            j += 1
        return last + 1

    def split_top(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Ranges of the depth-0 comma-separated parts of tokens[lo:hi]."""
        parts, depth, start = [], 0, lo
        for j in range(lo, hi):
            t = self.toks[j]
            if t.kind == "op" and t.text in _OPEN:
                depth += 1
            elif t.kind == "op" and t.text in ")]}":
                depth -= 1
            elif depth == 0 and (t.kind, t.text) == ("op", ","):
                parts.append((start, j))
                start = j + 1
        parts.append((start, hi))
        return parts

    def render(self, lo: int, hi: int) -> str:
        return "".join(t.text for t in self.toks[lo:hi]).strip()

    def replace(self, lo: int, hi: int, text: str) -> None:
        """Put ``text`` in place of tokens[lo:hi] (kept as one token, positions of ``lo``)."""
        first = self.toks[lo]
        self.toks[lo:hi] = [Tok("new", text, first.line, first.col)]

    # -- rewrites --------------------------------------------------------------------
    def rewrite_prints(self) -> None:
        for i in reversed(self.statement_starts()):
            t = self.toks[i]
            if t.kind != "name" or t.text != "print" or self.future_print:
                continue
            nxt = self.sig(i + 1)
            end = self.statement_end(i)
            if self.text(nxt) in ("=", ".") or (
                nxt < len(self.toks) and nxt >= end and self.text(nxt) in ("(",)
            ):
                continue
            if self.text(nxt) == "(" and self.match(nxt) + 1 == end:
                if len(self.split_top(nxt + 1, self.match(nxt))) > 1:
                    self.flag(
                        t,
                        "PY202",
                        "Python 2 prints this parenthesised list as a tuple, "
                        "('a', 'b'); Python 3's print(a, b) prints a b",
                    )
                continue
            lo = i + 1
            file_part = ""
            if self.text(nxt) == ">>":
                parts = self.split_top(nxt + 1, end)
                file_part = "file=" + self.render(*parts[0])
                lo = parts[1][0] if len(parts) > 1 else end
            args = [p for p in self.split_top(lo, end)] if lo < end else []
            end_part = ""
            if args and not self.render(*args[-1]):
                args = args[:-1]
                end_part = 'end=" "'
            rendered = [self.render(a, b) for a, b in args]
            rendered = [r for r in rendered if r]
            rendered += [x for x in (end_part, file_part) if x]
            self.replace(i, end, f"print({', '.join(rendered)})")
            self.changes.add("print statement -> print()")

    def rewrite_excepts(self) -> None:
        for i in reversed(self.statement_starts()):
            if (self.toks[i].kind, self.toks[i].text) != ("name", "except"):
                continue
            end = self.statement_end(i)
            colon = next(
                (
                    j
                    for j in range(i, end)
                    if (self.toks[j].kind, self.toks[j].text) == ("op", ":")
                    and self._depth_between(i, j) == 0
                ),
                None,
            )
            if colon is None:
                continue
            parts = self.split_top(i + 1, colon)
            if len(parts) == 2 and _NAME.fullmatch(self.render(*parts[1]) or "-"):
                comma = parts[0][1]
                self.replace(comma, parts[1][1], f" as {self.render(*parts[1])}")
                self.changes.add("except E, e -> except E as e")

    def _depth_between(self, lo: int, hi: int) -> int:
        depth = 0
        for t in self.toks[lo:hi]:
            if t.kind == "op" and t.text in _OPEN:
                depth += 1
            elif t.kind == "op" and t.text in ")]}":
                depth -= 1
        return depth

    def rewrite_has_key(self) -> None:
        i = len(self.toks) - 1
        while i >= 0:
            t = self.toks[i]
            if not (t.kind == "name" and t.text == "has_key"):
                i -= 1
                continue
            dot = self.sig(i - 1, -1)
            paren = self.sig(i + 1)
            if self.text(dot) != "." or self.text(paren) != "(":
                i -= 1
                continue
            close = self.match(paren)
            start = self._primary_start(dot - 1)
            receiver = self.render(start, dot)
            arg = self.render(paren + 1, close)
            if _needs_parens(arg):
                arg = f"({arg})"
            if _needs_parens(receiver):
                receiver = f"({receiver})"
            expr = f"{arg} in {receiver}"
            before = self.text(self.sig(start - 1, -1))
            after = self.text(self.sig(close + 1))
            loose_before = {
                "",
                "if",
                "elif",
                "while",
                "return",
                "=",
                "(",
                ",",
                "and",
                "or",
                "not",
                "assert",
                "[",
                ":",
            }
            loose_after = {"", ":", ")", ",", "and", "or", "]", "\n", ";", "else", "if"}
            if before not in loose_before or after not in loose_after:
                expr = f"({expr})"
            self.replace(start, close + 1, expr)
            self.changes.add("d.has_key(k) -> k in d")
            i = start - 1

    def _primary_start(self, j: int) -> int:
        """Start of the primary expression ending at token ``j`` (names, dots, calls, [])."""
        j = self.sig(j, -1)
        start = j
        while j >= 0:
            t = self.toks[j]
            if t.kind == "op" and t.text in ")]":
                depth = 0
                while j >= 0:
                    tt = self.toks[j]
                    if tt.kind == "op" and tt.text in ")]}":
                        depth += 1
                    elif tt.kind == "op" and tt.text in "([{":
                        depth -= 1
                        if depth == 0:
                            break
                    j -= 1
                start = j
                prev = self.sig(j - 1, -1)
                if (prev >= 0 and self.toks[prev].kind in ("name", "string")) or self.text(
                    prev
                ) in (")", "]"):
                    j = prev
                    continue
                return start
            if t.kind in ("name", "string", "number", "new"):
                start = j
                prev = self.sig(j - 1, -1)
                if self.text(prev) == ".":
                    j = self.sig(prev - 1, -1)
                    continue
                return start
            return start
        return start

    def rewrite_tokens(self) -> None:
        toks = self.toks
        for i, t in enumerate(toks):
            if t.kind == "op" and t.text == "<>":
                t.text, t.kind = "!=", "new"
                self.changes.add("<> -> !=")
            elif t.kind == "name" and t.text in _RENAMES:
                prev = self.text(self.sig(i - 1, -1))
                nxt = self.text(self.sig(i + 1))
                if prev not in (".", "def", "class", "import") and nxt != "=":
                    self.changes.add(f"{t.text} -> {_RENAMES[t.text]}")
                    t.text = _RENAMES[t.text]
            elif t.kind == "name" and t.text in _METHODS:
                if self.text(self.sig(i - 1, -1)) == ".":
                    self.changes.add(f".{t.text}() -> .{_METHODS[t.text]}()")
                    t.text = _METHODS[t.text]
            elif t.kind == "number":
                text = t.text
                if text[-1] in "lL":
                    text = text[:-1]
                if re.fullmatch(r"0[0-7]+", text):
                    text = "0o" + text[1:]
                if text != t.text:
                    self.changes.add("Python 2 number literal")
                    t.text = text
            elif t.kind == "string":
                m = _PREFIX.match(t.text)
                if m and "u" in m.group().lower() and "r" in m.group().lower():
                    t.text = t.text[1:]
        # backticks, pairwise
        ticks = [i for i, t in enumerate(toks) if t.kind == "op" and t.text == "`"]
        for a, b in zip(ticks[0::2], ticks[1::2], strict=False):
            toks[a].text, toks[a].kind = "repr(", "new"
            toks[b].text, toks[b].kind = ")", "new"
            self.changes.add("`x` -> repr(x)")

    def flag_divisions(self) -> None:
        if self.future_division:
            return
        for i, t in enumerate(self.toks):
            if t.kind != "op" or t.text not in ("/", "/="):
                continue
            left = self.toks[self.sig(i - 1, -1)] if i else None
            right_i = self.sig(i + 1)
            right = self.toks[right_i] if right_i < len(self.toks) else None
            if any(
                x is not None and x.kind == "number" and _is_float(x.text) for x in (left, right)
            ):
                continue
            if right is not None and right.text == "float":
                continue
            self.flag(
                t,
                "PY201",
                f"'{t.text}' floors when both sides are integers in Python 2 (7 / 2 == 3) but "
                "not in Python 3 (3.5): if they can be integers, write '//' to keep Python 2's "
                "result; if a float was meant, leave it",
            )

    def reindent(self) -> None:
        """Tabs in indentation -> 4 spaces a level (Python 2 put tab stops every 8 columns)."""
        if not any(
            t.kind == "ws" and "\t" in t.text and (i == 0 or self.toks[i - 1].kind == "nl")
            for i, t in enumerate(self.toks)
        ):
            return
        stack = [0]
        depth = 0
        line_start = True
        for i, t in enumerate(self.toks):
            if t.kind == "nl":
                line_start = True
                continue
            if not line_start:
                if t.kind == "op" and t.text in _OPEN:
                    depth += 1
                elif t.kind == "op" and t.text in ")]}":
                    depth -= 1
                elif t.kind == "new":
                    depth += t.text.count("(") - t.text.count(")")
                continue
            line_start = False
            if t.kind != "ws":
                if depth == 0 and t.kind not in ("comment",):
                    stack = [0]
                continue
            nxt = self.toks[i + 1] if i + 1 < len(self.toks) else None
            if depth > 0 or nxt is None or nxt.kind in ("nl", "comment"):
                t.text = t.text.expandtabs(8)
                line_start = False
                continue
            if i > 0 and self.toks[i - 1].kind == "cont":
                t.text = t.text.expandtabs(8)
                continue
            width = len(t.text.expandtabs(8))
            if width > stack[-1]:
                stack.append(width)
            else:
                while len(stack) > 1 and stack[-1] > width:
                    stack.pop()
            t.text = "    " * (len(stack) - 1)
            self.changes.add("tab indentation -> 4 spaces")

    def result(self) -> str:
        return "".join(t.text for t in self.toks)


def _is_float(text: str) -> bool:
    return not text.lower().startswith("0x") and any(c in text for c in ".eEjJ")


def _needs_parens(expr: str) -> bool:
    masked = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expr)
    depth = 0
    for tok in re.findall(r"[A-Za-z_]\w*|[()\[\]{}]|[^\sA-Za-z_\w()\[\]{}]+", masked):
        if tok in "([{":
            depth += 1
        elif tok in ")]}":
            depth -= 1
        elif depth == 0 and (
            tok in ("or", "and", "not", "in", "is", "if", "lambda", "else")
            or re.fullmatch(r"[<>=!]=?|<>|\||&|\^", tok)
        ):
            return True
    return False


_NOT_PY2 = ("tab indentation -> 4 spaces", "backslash-n typed on a shell line -> line breaks")


def looks_like_python2(source: str) -> bool:
    """Whether the upgrade would rewrite Python 2 constructs here (tabs alone do not count)."""
    try:
        result = upgrade_source(source)
    except Exception:  # a hint must never break the command showing it
        return False
    return any(change not in _NOT_PY2 for change in result.changes)


def upgrade_source(source: str, name: str = "kernel") -> Upgrade:
    """Rewrite one kernel's Python 2 source; never raises on odd input."""
    text = source
    changes: list[str] = []
    if escaped_newlines_hint(text) is not None:
        text = undo_shell_escapes(text)
        changes.append("backslash-n typed on a shell line -> line breaks")
    rw = _Rewriter(text)
    rw.rewrite_tokens()
    rw.rewrite_has_key()
    rw.rewrite_excepts()
    rw.rewrite_prints()
    rw.reindent()
    rw.flag_divisions()
    new = rw.result()
    flags = sorted(rw.flags, key=lambda f: (f.line, f.col))
    try:
        ast.parse(new)
    except SyntaxError as exc:
        flags.append(
            Flag(
                exc.lineno or 1,
                exc.offset or 1,
                "PY300",
                f"still not valid Python 3 after the upgrade: {exc.msg}; fix this by hand",
            )
        )
    return Upgrade(name, source, new, flags, changes + sorted(rw.changes))
