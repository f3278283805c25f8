"""Turn a return string into a :class:`~pyrecks.compiler.instructions.Transition`.

The language is defined by ``grammar/return_string.lark`` and taught in
``docs/return-strings.md``.  This module is the only place that reads return-string text;
the VM gets typed, immutable instruction objects and never re-parses.

Why it is built the way it is:

* **Lark LALR with an embedded transformer.**  The transformer's callbacks run as the
  parser reduces, building instruction objects directly — no parse tree is materialised.
  The parser object is built once per :class:`Limits` (lazily, under a lock) and shared by
  all threads; callbacks keep no per-parse state, so sharing is safe.  Lark's on-disk
  ``cache=True`` is deliberately not used: it unpickles a file from the shared temp
  directory, and the one-off build costs only tens of milliseconds.
* **A hand-written fast path.**  ``parse`` runs once per chain step and must cost far less
  than a Redis round trip, but Lark needs tens of microseconds even for
  ``func1("say hi")``.  :func:`_fast_parse` recognises the very common shapes — one call
  with simple scalar arguments and an optional ``SET`` clause of simple pairs — with two
  regular expressions, and returns ``None`` for anything else (escapes, nesting, other
  commands, any error), which then goes to Lark.  A hypothesis test proves both paths
  agree.
* **A small LRU cache** in front of both: instructions are immutable, so identical strings
  (a loop kernel returning the same call) can share one result.  Only short texts are
  cached, so the cache's memory stays bounded.
* **Errors.**  Every failure is a :class:`~pyrecks.errors.ReturnStringError` with a 1-based
  line and column, the expected tokens in words, the text, and a message that says how to
  fix it (:func:`_explain` maps the common mistakes — unquoted words, unbalanced brackets,
  ``%s`` left-overs, nested calls — to advice).  Nothing else escapes :func:`parse`.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

import pyrecks
from pyrecks.compiler.effects import ALLOWED_COMMANDS, EffectError, allowed_text, make_effect
from pyrecks.compiler.instructions import (
    HALT,
    Call,
    Effect,
    FanOut,
    Finish,
    FrozenDict,
    Halt,
    KeyRef,
    Transition,
    Value,
)
from pyrecks.errors import ReturnStringError

GRAMMAR_FILE = "return_string.lark"

__all__ = ["GRAMMAR_FILE", "Limits", "grammar_path", "parse", "parse_value"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one return string; exceeding one is a :class:`ReturnStringError`.

    ``max_depth`` counts nested brackets ``( [ {`` in the text, a call's own parentheses
    included: ``f([1])`` has depth 2.  The defaults are generous for real kernels and keep
    a hostile or buggy string from costing unbounded time or memory.
    """

    max_length: int = 1_000_000
    max_args: int = 256
    max_depth: int = 32
    max_branches: int = 256
    max_effects: int = 10_000
    #: Values (list items, dict entries, arguments) in the whole text: each costs the
    #: parser ~20 µs, and a 1 MB text of ``1,1,1,…`` would otherwise cost the VM seconds.
    max_values: int = 50_000


DEFAULT_LIMITS = Limits()

#: Texts up to this many characters are cached; longer ones are parsed every time.
CACHE_MAX_TEXT = 2048
CACHE_SIZE = 2048


# --------------------------------------------------------------------------- grammar file


def grammar_path() -> Path:
    """Where ``return_string.lark`` is: ``grammar/`` of a checkout, or inside the wheel.

    A checkout or editable install has the file at the repository root; a wheel ships it
    as ``pyrecks/_grammar/`` (pyproject's force-include).
    """
    package = Path(pyrecks.__file__).resolve().parent
    candidates = (package.parent / "grammar" / GRAMMAR_FILE, package / "_grammar" / GRAMMAR_FILE)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise RuntimeError(
        f"the return-string grammar {GRAMMAR_FILE} is missing (looked in: {tried}); "
        "reinstall pyrecks (pip install --force-reinstall pyrecks) or, in a checkout, "
        "restore grammar/"
    )


# --------------------------------------------------------------------------- positions


class _Fault(Exception):
    """Raised inside callbacks; :func:`parse` adds the text and makes a ReturnStringError."""

    def __init__(self, message: str, line: int, column: int,
                 expected: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.expected = expected


def _line_col(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of character index ``pos`` (may be ``len(text)``)."""
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _fault_at(text: str, pos: int, message: str,
              expected: frozenset[str] = frozenset()) -> _Fault:
    line, col = _line_col(text, pos)
    return _Fault(message, line, col, expected)


def _tok_fault(tok: Token, message: str) -> _Fault:
    return _Fault(message, tok.line or 1, tok.column or 1)


# Strings and brackets, to check nesting depth and find unbalanced brackets without a
# full parse.  A quote that starts no complete string is reported by the lexer anyway.
_BRACKETS = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[()\[\]{}]""")
_OPEN = {"(": ")", "[": "]", "{": "}"}
_COMMAS = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|,""")
#: The largest integer the language reads: what Python still converts to decimal text.
_MAX_INT_BITS = 14_000


def _brackets(text: str) -> Iterator[tuple[str, int]]:
    for m in _BRACKETS.finditer(text):
        ch = m.group()
        if len(ch) == 1:
            yield ch, m.start()


def _check_values(text: str, limit: int) -> None:
    """Refuse texts with more than ``limit`` values before Lark spends time on them.

    Commas outside string literals bound the number of values from above (one more than
    the commas of a bracket); counting them is a C-speed scan.
    """
    if text.count(",") < limit:
        return
    commas = 0
    for m in _COMMAS.finditer(text):
        if m.group() == ",":
            commas += 1
            if commas >= limit:
                raise _fault_at(
                    text, m.start(),
                    f"more than {limit:,} values (Limits.max_values); store big values under "
                    "a key (with a SET effect) and pass \"@key\" instead",
                )


def _check_depth(text: str, limit: int) -> None:
    # Cheap gate first: a text with few opening brackets cannot be too deep.
    if len(text) <= limit or text.count("(") + text.count("[") + text.count("{") <= limit:
        return
    depth = 0
    for ch, pos in _brackets(text):
        if ch in _OPEN:
            depth += 1
            if depth > limit:
                raise _fault_at(
                    text, pos,
                    f"brackets are nested more than {limit} deep (Limits.max_depth); "
                    "flatten the value, or store it under a key and pass \"@key\"",
                )
        else:
            depth = max(depth - 1, 0)


def _bracket_problem(text: str) -> tuple[str, int] | None:
    """The first bracket mismatch as (message, position), or None when all balance."""
    stack: list[tuple[str, int]] = []
    for ch, pos in _brackets(text):
        if ch in _OPEN:
            stack.append((ch, pos))
        elif not stack:
            return f"unbalanced brackets: {ch!r} closes nothing; remove it", pos
        else:
            opener, at = stack.pop()
            if _OPEN[opener] != ch:
                line, col = _line_col(text, at)
                return (
                    f"unbalanced brackets: {ch!r} does not match {opener!r} opened at "
                    f"line {line}, column {col}; close it with {_OPEN[opener]!r}",
                    pos,
                )
    if stack:
        opener, at = stack[-1]
        line, col = _line_col(text, at)
        end = len(text.rstrip())
        return (
            f"unbalanced brackets: {opener!r} opened at line {line}, column {col} is never "
            f"closed; add {_OPEN[opener]!r}",
            end,
        )
    return None


# --------------------------------------------------------------------------- strings

_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.S)
_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"',
    "a": "\a", "b": "\b", "f": "\f", "v": "\v",
}
_HEX_HINT = {"x": "\\xNN (2 hex digits)", "u": "\\uNNNN (4 hex digits)",
             "U": "\\UNNNNNNNN (8 hex digits)"}


class _BadEscape(Exception):
    """A malformed escape at ``offset`` characters into a string's body."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def _escape(m: re.Match[str]) -> str:
    hexa = m.group(1) or m.group(2) or m.group(3)
    if hexa:
        code = int(hexa, 16)
        if code > 0x10FFFF:
            raise _BadEscape(f"escape {m.group()} is beyond the last Unicode code point "
                             "\\U0010ffff", m.start())
        return chr(code)
    ch = m.group(4)
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch]
    if ch in _HEX_HINT:
        raise _BadEscape(f"malformed escape: write {_HEX_HINT[ch]}", m.start())
    raise _BadEscape(
        f"unknown escape \\{ch}; the escapes are \\n \\t \\r \\\\ \\\" \\' \\a \\b \\f \\v "
        "\\xNN \\uNNNN \\UNNNNNNNN — write \\\\ for a backslash",
        m.start(),
    )


def _decode_body(body: str) -> str:
    """A string literal's body (between the quotes) with Python's escapes decoded."""
    return _ESCAPE.sub(_escape, body) if "\\" in body else body


def _decode_escapes(tok: Token) -> str:
    """The value of a string token, as a positioned _Fault if an escape is malformed."""
    try:
        return _decode_body(tok[1:-1])
    except _BadEscape as exc:
        raise _Fault(exc.message, tok.line or 1, (tok.column or 1) + 1 + exc.offset) from None


class _At:
    """A ``"@key"`` string while parsing: becomes a KeyRef only as a whole call argument."""

    __slots__ = ("key", "token")

    def __init__(self, key: str, token: Token) -> None:
        self.key = key
        self.token = token


def _misplaced_at(at: _At) -> _Fault:
    return _tok_fault(
        at.token,
        f'a "@{at.key}" key reference is only allowed as a whole argument of a call; '
        f'for the literal string "@{at.key}" write "@@{at.key}"',
    )


def _at_string(value: str, tok: Token) -> str | _At:
    """Apply the ``@`` rules to a decoded string literal."""
    if value[1:2] == "@":
        return value[1:]
    if len(value) == 1:
        raise _tok_fault(tok, 'empty key name: "@" must be followed by the key, as in '
                              '"@mykey"; write "@@" for the literal string "@"')
    return _At(value[1:], tok)


def _call_args(args: tuple[Any, ...]) -> tuple[Value, ...]:
    if _At in map(type, args):
        return tuple(KeyRef(a.key) if type(a) is _At else a for a in args)
    return args


# --------------------------------------------------------------------------- transformer


@dataclass(frozen=True, slots=True)
class _Clause:
    """One ``COMMAND [...]`` clause while parsing, with its position for limit errors."""

    token: Token
    effects: tuple[Effect, ...]


@v_args(inline=True)
class _Build(Transformer[Token, Any]):
    """Callbacks named after the grammar's rules; each builds its instruction or value."""

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits

    # --- top level
    def start(self, *children: Any) -> Transition:
        if not children:
            return HALT
        first = children[0]
        if type(first) is _Clause:
            target: Any = Halt()
            clauses = children
        else:
            target, clauses = first, children[1:]
        if not clauses:
            return Transition(target)
        effects: list[Effect] = []
        for clause in clauses:
            effects.extend(clause.effects)
            if len(effects) > self.limits.max_effects:
                raise _tok_fault(
                    clause.token,
                    f"more than {self.limits.max_effects} effects (Limits.max_effects); "
                    "write fewer, bigger values (e.g. one HSET with many fields)",
                )
        return Transition(target, tuple(effects))

    def value_text(self, value: Any) -> Value:
        return KeyRef(value.key) if type(value) is _At else value

    def halt(self, tok: Token) -> Halt:
        if len(tok) > 2:
            raise _tok_fault(
                tok,
                "the whole return string is a quoted string: remove the outer quotes "
                "(a kernel returns func1(\"x\"), not '\"func1(...)\"'); only an empty "
                "string '' means halt; to end with a value write: return \"...\"",
            )
        return Halt()

    def finish(self, value: Any) -> Finish:
        if type(value) is _At:
            raise _misplaced_at(value)
        return Finish(value)

    def call(self, name: Token, *args: Any) -> Call:
        if keyword.iskeyword(name) or not name.isidentifier():
            raise _tok_fault(
                name, f"{str(name)!r} cannot be a kernel name: a kernel name is a Python "
                      "identifier that is not a keyword",
            )
        if len(args) > self.limits.max_args:
            raise _tok_fault(
                name, f"call to {name} has {len(args)} arguments; the limit is "
                      f"{self.limits.max_args} (Limits.max_args); pass a list instead",
            )
        return Call(str(name), _call_args(args))

    def fan_open(self, tok: Token) -> Token:
        return tok

    def fanout(self, open_tok: Token, *calls: Call) -> FanOut:
        if len(calls) - 1 > self.limits.max_branches:
            raise _tok_fault(
                open_tok, f"fan-out has {len(calls) - 1} branches; the limit is "
                          f"{self.limits.max_branches} (Limits.max_branches)",
            )
        return FanOut(calls[:-1], calls[-1])

    def effect(self, name: Token, *items: Any) -> _Clause:
        command = name.upper()
        if command not in ALLOWED_COMMANDS:
            raise _tok_fault(
                name, f"{str(name)!r} is not an allowed effect command; allowed: "
                      f"{allowed_text()}",
            )
        effects = []
        for i, item in enumerate(items, 1):
            if type(item) is _At:
                raise _misplaced_at(item)
            args = item if type(item) is tuple else (item,)
            try:
                effects.append(make_effect(command, args))
            except EffectError as exc:
                where = f"item {i}: " if len(items) > 1 else ""
                raise _tok_fault(name, f"{where}{exc}") from None
        return _Clause(name, tuple(effects))

    # --- values
    def list_value(self, *items: Any) -> tuple[Value, ...]:
        return self.tuple_value(*items)

    def tuple_value(self, *items: Any) -> tuple[Value, ...]:
        if _At in map(type, items):
            raise _misplaced_at(next(i for i in items if type(i) is _At))
        return items

    def empty_tuple(self) -> tuple[Value, ...]:
        return ()

    def pair(self, key: Any, value: Any) -> tuple[Any, Any]:
        if type(key) is _At:
            raise _misplaced_at(key)
        if type(value) is _At:
            raise _misplaced_at(value)
        return key, value

    def dict_value(self, *pairs: tuple[Any, Any]) -> FrozenDict:
        return FrozenDict(dict(pairs))

    def string(self, tok: Token) -> str | _At:
        value = _decode_escapes(tok)
        if value[:1] == "@":
            return _at_string(value, tok)
        return value

    def integer(self, tok: Token) -> int:
        try:
            value = int(tok, 0)
        except ValueError:
            pass
        else:
            # 0x… literals reach sizes that decimal text cannot (and that could then
            # never be rendered back, in a record or a log line).
            if value.bit_length() <= _MAX_INT_BITS:
                return value
        digits = tok.lstrip("+-")
        if digits[:1] == "0" and digits[1:2].isdigit() and digits.strip("0_"):
            raise _tok_fault(
                tok, f"leading zeros are not allowed in a decimal integer ({tok}); "
                     f"write {int(digits.replace('_', '')) if len(digits) < 4000 else 'it'}"
                     " without them, or use 0o for octal",
            ) from None
        raise _tok_fault(tok, f"integer literal {tok[:20]}... is too long "
                              "(more than 4300 digits); pass big data by key") from None

    def float_value(self, tok: Token) -> float:
        value = float(tok)
        if not math.isfinite(value):
            raise _tok_fault(tok, f"float literal {tok[:20]} is out of range "
                                  "(infinity and NaN are not allowed)")
        return value

    def true(self) -> bool:
        return True

    def false(self) -> bool:
        return False

    def none(self) -> None:
        return None


# --------------------------------------------------------------------------- error advice

_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "INT": "a number",
    "FLOAT": "a number",
    "$END": "end of text",
}
#: Order in which expected tokens are listed (most useful first); others follow sorted.
_WORD_ORDER = ["a string", "a number", "'True'", "'False'", "'None'", "'['", "'('", "'{'",
               "a name", "'return'", "')'", "']'", "'}'", "','", "':'", "'->'", "end of text"]
_VALUE_START = frozenset({"STRING", "INT", "FLOAT", "TRUE", "FALSE", "NONE", "LSQB", "LPAR",
                          "LBRACE"})
_HOW_TO_START = (
    "a return string is a call name(args...), a fan-out [f(...), g(...)] -> join(...), "
    "'return <value>' to end with a result, or '' (empty) to halt"
)
_USE_HELPER = (
    "; build return strings with pyrecks.kernel.call(...) instead of %-formatting or "
    "f-strings, so values are quoted and escaped for you"
)


def _sort_words(words: frozenset[str]) -> list[str]:
    order = {w: i for i, w in enumerate(_WORD_ORDER)}
    return sorted(words, key=lambda w: (order.get(w, len(order)), w))


def _words_text(words: frozenset[str]) -> str:
    items = _sort_words(words)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


class _Advisor:
    """Turns Lark's syntax errors into messages that say what is wrong and how to fix it."""

    def __init__(self, lark: Lark) -> None:
        self.words: dict[str, str] = {}
        for term in lark.terminals:
            pattern = term.pattern
            if term.name in _TERMINAL_WORDS:
                self.words[term.name] = _TERMINAL_WORDS[term.name]
            elif pattern.type == "str":
                self.words[term.name] = f"'{pattern.value}'"
            else:  # pragma: no cover - every regexp terminal is named above
                self.words[term.name] = term.name.lower()
        self.words["$END"] = "end of text"

    def expected(self, names: Any) -> frozenset[str]:
        return frozenset(self.words.get(n, n) for n in names or ())

    def explain(self, exc: UnexpectedInput, text: str) -> ReturnStringError:
        if isinstance(exc, UnexpectedToken):
            return self._token(exc, text)
        if isinstance(exc, UnexpectedCharacters):
            return self._character(exc, text)
        return _error(text, 1, 1, f"syntax error: {exc}")  # pragma: no cover - LALR only

    def _character(self, exc: UnexpectedCharacters, text: str) -> ReturnStringError:
        pos = exc.pos_in_stream or 0
        expected = self.expected(exc.allowed)
        ch = text[pos]
        after = text[pos:pos + 3]
        if ch in "\"'":
            msg = (f"unterminated string: no closing {ch} on this line; close it "
                   "(inside a string, write \\n for a newline and \\\\ for a backslash)")
        elif ch == "%":
            msg = (f"{after[:2]!r} looks like a %-format placeholder that was never filled"
                   + _USE_HELPER)
        elif ch == "=":
            msg = "keyword arguments (name=value) are not supported; pass arguments by position"
        elif ch == "@":
            msg = 'a key reference must be quoted: write "@key"'
        elif ch == "#":
            msg = "comments are not part of the return-string language; remove them"
        elif ch == ";":
            msg = ("';' is not allowed: a return string holds one instruction; to run several "
                   "kernels use a fan-out [f(...), g(...)] -> join(...)")
        elif ch == "." and pos > 0 and (text[pos - 1].isalnum() or text[pos - 1] == "_"):
            msg = "a name cannot contain '.': kernel names are plain identifiers"
        elif ch in "+-*/":
            msg = (f"unexpected {ch!r}: expressions are not evaluated; compute the value in "
                   "the kernel and pass the result")
        elif ch == "\\":
            msg = "a backslash is only allowed inside a string, as an escape"
        else:
            msg = f"unexpected character {ch!r}"
            if expected:
                msg += f"; expected {_words_text(expected)}"
        line, col = _line_col(text, pos)
        return _error(text, line, col, msg, expected)

    def _token(self, exc: UnexpectedToken, text: str) -> ReturnStringError:
        tok: Token = exc.token
        names = self._accepted(exc)
        expected = self.expected(names)
        at_end = tok.type == "$END"
        pos = len(text.rstrip()) if at_end else (tok.start_pos or 0)
        advice = self._advice(tok, names, text, pos, at_end)
        if isinstance(advice, tuple):
            msg, pos = advice
        elif advice is not None:
            msg = advice
        else:
            what = "end of text" if at_end else self._describe(tok)
            msg = f"unexpected {what}; expected {_words_text(expected)}"
        line, col = _line_col(text, pos)
        return _error(text, line, col, msg, expected)

    @staticmethod
    def _accepted(exc: UnexpectedToken) -> frozenset[str]:
        """The terminals that really fit at the fault.

        LALR states are merged, so ``exc.expected`` can list tokens that would fail one
        reduction later; the interactive parser replays each candidate (without callbacks)
        and keeps the ones that are accepted.
        """
        names = frozenset(exc.expected or ())
        ip = exc.interactive_parser
        if ip is None:
            return names
        try:
            accepted = frozenset(ip.accepts())
        except Exception:  # pragma: no cover - best effort, fall back to the LALR set
            return names
        return accepted or names

    def _describe(self, tok: Token) -> str:
        if tok.type == "NAME":
            return f"name {str(tok)!r}"
        if tok.type == "STRING":
            return f"string {tok if len(tok) <= 30 else tok[:27] + '...'}"
        if tok.type in ("INT", "FLOAT"):
            return f"number {tok}"
        return self.words.get(tok.type, repr(str(tok)))

    def _advice(self, tok: Token, names: frozenset[str], text: str, pos: int,
                at_end: bool) -> str | tuple[str, int] | None:
        """A specific message for a well-known mistake, or None for the generic one.

        A (message, position) pair moves the caret, e.g. to the start of a second call.
        """
        end = tok.end_pos if tok.end_pos is not None else pos
        rest = text[end:].lstrip()
        nxt = rest[:1]
        before = text[:pos].rstrip()
        start_of_text = not before
        if at_end or tok.type in ("RPAR", "RSQB", "RBRACE"):
            problem = _bracket_problem(text)
            if problem is not None:
                msg, _ = problem
                return msg
            if at_end and "'->'" in self.expected(names):
                return "a fan-out needs a join: [f(...), g(...)] -> join_kernel(...)"
            if at_end and before == "return":
                return "'return' needs a value: return <value> (return None for no result)"
            if at_end and names & {"LPAR", "LSQB"} and before and start_of_word(before):
                word = before.split()[-1]
                return (f"a bare name is not a return string: to call kernel {word!r} write "
                        f"{word}(...) with its arguments; " + _HOW_TO_START)
            if at_end:
                return None
        if tok.type == "NAME" and names & _VALUE_START:
            low = tok.lower()
            if nxt == "(":
                return ("calls cannot be nested: an argument must be a value; call "
                        f"{tok}(...) as the next step, or compute its value in this kernel")
            if nxt == "=":
                return ("keyword arguments (name=value) are not supported; pass arguments "
                        "by position")
            if low in ("true", "false", "none", "null", "nil"):
                fix = {"true": "True", "false": "False"}.get(low, "None")
                return f"unknown name {str(tok)!r}: write {fix}"
            if low in ("nan", "inf", "infinity"):
                return "NaN and infinity are not allowed as numbers"
            if before.endswith("{") and nxt == "}":
                return (f"{{{tok}}} looks like a str.format/f-string placeholder that was "
                        "never filled" + _USE_HELPER)
            words = re.split(r"[,)\]}]", text[pos:], maxsplit=1)[0].strip()
            if not words or '"' in words or "'" in words or len(words) > 40:
                words = str(tok)
            return (f"unquoted text {str(tok)!r}: a string value needs quotes, e.g. "
                    f"\"{words}\"" + _USE_HELPER)
        if tok.type == "STRING" and names & {"LPAR", "LSQB"} and before:
            word = before.split()[-1]
            return f'missing parentheses: write {word}({tok}) (Python 3 call syntax)'
        if tok.type == "LPAR" and names == {"LSQB"}:
            word = before.split()[-1] if before else ""
            if word.upper() in ALLOWED_COMMANDS:
                return (f"effect items go in square brackets: {word.upper()} "
                        "[(arg, ...), ...]")
            return ("only one call per return string: to run several kernels use a fan-out "
                    "[f(...), g(...)] -> join(...); after a call only effect clauses "
                    "COMMAND [...] may follow", len(before) - len(word))
        if tok.type == "RETURN" and not start_of_text:
            return "'return' can only start the return string: return <value>"
        if (tok.type in _VALUE_START or tok.type == "NAME") and names & {"COMMA"} and \
                names & {"RPAR", "RSQB", "RBRACE"}:
            return f"missing ',' before {self._describe(tok)}"
        if start_of_text and tok.type in _VALUE_START - {"LSQB"}:
            shown = text.strip() if len(text.strip()) <= 40 else "<value>"
            return _HOW_TO_START + f"; to end the chain with this value write: return {shown}"
        if tok.type == "COMMA" and names & _VALUE_START:
            return "unexpected ',': a value is missing (an extra or leading comma?)"
        return None


def start_of_word(before: str) -> bool:
    """True when ``before`` is exactly one bare identifier (a lone word like ``hello``)."""
    return before.isidentifier() and not keyword.iskeyword(before)


def _error(text: str, line: int, column: int, message: str,
           expected: frozenset[str] = frozenset()) -> ReturnStringError:
    return ReturnStringError(message, text=text, line=line, column=column, expected=expected)


# --------------------------------------------------------------------------- fast path

# "Unrolled" string patterns (runs of plain characters between escapes): same language as
# the grammar's STRING, several times faster than an alternation per character.
_FP_STR = r""""[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*'"""
_FP_SCALAR = rf"(?:{_FP_STR}|[+-]?(?:[1-9][0-9]*|0)(?:\.[0-9]+)?|True|False|None)"
_W = r"[ \t\r\n]*"
_FP_ARGS = rf"(?:{_FP_SCALAR}{_W},{_W})*(?:{_FP_SCALAR}{_W})?"
_FP_CALL = rf"([A-Za-z_][A-Za-z0-9_]*){_W}\({_W}({_FP_ARGS})\)"
_FP_PAIR = rf"\({_W}(?:{_FP_STR}){_W},{_W}{_FP_SCALAR}{_W},?{_W}\)"
_FP_SET = rf"(?:[Ss][Ee][Tt]{_W}\[{_W}((?:{_FP_PAIR}{_W},{_W})*{_FP_PAIR}{_W},?){_W}\]{_W})?"
# One call, or a fan-out of calls, then an optional SET clause.
_FAST = re.compile(rf"{_W}{_FP_CALL}{_W}{_FP_SET}")
_FAST_FAN = re.compile(
    rf"{_W}\[{_W}((?:{_FP_CALL}{_W},{_W})*{_FP_CALL}{_W},?){_W}\]{_W}->{_W}{_FP_CALL}{_W}"
    rf"{_FP_SET}"
)
_FP_ONE_CALL = re.compile(_FP_CALL)
_FP_TOKEN = re.compile(_FP_SCALAR)


def _fast_scalar(tok: str) -> Any:
    first = tok[0]
    if first == '"' or first == "'":
        value = _decode_body(tok[1:-1])
        if value[:1] == "@":
            if value[1:2] == "@":
                return value[1:]
            if len(value) == 1:
                raise ValueError("empty key")
            return KeyRef(value[1:])
        return value
    if first == "T":
        return True
    if first == "F":
        return False
    if first == "N":
        return None
    if "." in tok:
        number = float(tok)
        if not math.isfinite(number):
            raise ValueError("out of range")
        return number
    return int(tok)


def _fast_values(tokens: list[str]) -> list[Any]:
    # Plain strings are by far the most common argument: convert them inline.
    return [
        t[1:-1]
        if (t[0] == '"' or t[0] == "'") and t[1:2] != "@" and "\\" not in t
        else _fast_scalar(t)
        for t in tokens
    ]


def _fast_call(name: str, args_text: str, limits: Limits) -> Call | None:
    if name in _KEYWORDS:
        return None
    args = tuple(_fast_values(_FP_TOKEN.findall(args_text))) if args_text else ()
    if len(args) > limits.max_args:
        return None
    return Call(name, args)


def _fast_set(set_text: str, limits: Limits) -> tuple[Effect, ...] | None:
    values = _fast_values(_FP_TOKEN.findall(set_text))
    if len(values) // 2 > limits.max_effects:
        return None
    effects = []
    for i in range(0, len(values), 2):
        k, v = values[i], values[i + 1]
        if type(k) is not str or not k or type(v) is KeyRef:
            return None
        effects.append(Effect("SET", (k, v)))
    return tuple(effects)


def _fast_parse(text: str, limits: Limits) -> Transition | None:
    """The result for the common simple shapes, or None to let Lark decide.

    The shapes: one call, or a fan-out of calls, whose arguments are plain scalars
    (strings, decimal ints and floats, True/False/None), with an optional ``SET`` clause of
    (string, scalar) pairs.  Must return exactly what the Lark path returns, or None (never
    a wrong answer and never an error: any doubt falls back).
    ``tests/test_return_string_parse.py`` checks the agreement with hypothesis.
    """
    if limits.max_depth < 2:
        return None
    try:
        m = _FAST.fullmatch(text)
        if m is not None:
            name, args_text, set_text = m.groups()
            then: Call | FanOut | None = _fast_call(name, args_text, limits)
        else:
            m = _FAST_FAN.fullmatch(text)
            if m is None:
                return None
            groups = m.groups()
            set_text = groups[-1]
            join = _fast_call(groups[-3], groups[-2], limits)
            calls = [_fast_call(c.group(1), c.group(2), limits)
                     for c in _FP_ONE_CALL.finditer(groups[0])]
            if join is None or None in calls or len(calls) > limits.max_branches:
                return None
            then = FanOut(tuple(calls), join)  # type: ignore[arg-type]
        if then is None:
            return None
        if set_text is None:
            return Transition(then)
        effects = _fast_set(set_text, limits)
        return None if effects is None else Transition(then, effects)
    except (ValueError, IndexError, _BadEscape):
        return None


_KEYWORDS = frozenset(keyword.kwlist)


# --------------------------------------------------------------------------- engine


class _Engine:
    """One Lark parser, fast path and cache for one :class:`Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lark = Lark(
            grammar_path().read_text(encoding="utf-8"),
            parser="lalr",
            lexer="contextual",
            start=["start", "value_text"],
            transformer=_Build(limits),
            maybe_placeholders=False,
            propagate_positions=False,
        )
        self.advisor = _Advisor(self.lark)
        self.cached: Callable[[str], Transition] = functools.lru_cache(CACHE_SIZE)(
            self.parse_uncached
        )

    def parse(self, text: str) -> Transition:
        if len(text) <= CACHE_MAX_TEXT:
            return self.cached(text)
        return self.parse_uncached(text)

    def parse_uncached(self, text: str) -> Transition:
        self.check_length(text)
        try:
            _check_values(text, self.limits.max_values)
        except _Fault as f:
            raise _error(text, f.line, f.column, f.message, f.expected) from None
        fast = _fast_parse(text, self.limits)
        if fast is not None:
            return fast
        return self.run(text, "start")

    def check_length(self, text: str) -> None:
        if len(text) > self.limits.max_length:
            line, col = _line_col(text, self.limits.max_length)
            raise _error(
                text, line, col,
                f"the text is {len(text):,} characters long; the limit is "
                f"{self.limits.max_length:,} (Limits.max_length); store big values under a "
                "key (with a SET effect) and pass \"@key\" instead",
            )

    def run(self, text: str, start: str) -> Any:
        """Parse with Lark; every failure becomes a ReturnStringError."""
        self.check_length(text)
        if start == "start" and not text.strip():
            return HALT
        try:
            _check_depth(text, self.limits.max_depth)
            return self.lark.parse(text, start=start)
        except _Fault as f:
            raise _error(text, f.line, f.column, f.message, f.expected) from None
        except UnexpectedInput as exc:
            raise self.advisor.explain(exc, text) from None
        except ReturnStringError:
            raise
        except Exception as exc:  # never let anything else reach the VM
            raise _error(
                text, 1, 1,
                f"internal parser error ({type(exc).__name__}: {exc}); please report this "
                "return string as a pyrecks bug",
            ) from None


_engines: dict[Limits, _Engine] = {}
_engines_lock = threading.Lock()


def _engine(limits: Limits | None) -> _Engine:
    limits = limits or DEFAULT_LIMITS
    engine = _engines.get(limits)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(limits)
            if engine is None:
                engine = _engines[limits] = _Engine(limits)
    return engine


def _not_text(text: object) -> ReturnStringError:
    hint = " (a kernel that ends without 'return' returns None; return '' to halt)" \
        if text is None else ""
    return _error(
        repr(text)[:200], 1, 1,
        f"a return string must be a str, not {type(text).__name__}{hint}",
    )


def parse(text: str, limits: Limits | None = None) -> Transition:
    """Parse one return string into the instructions it stands for.

    Raises :class:`~pyrecks.errors.ReturnStringError` — and nothing else — when the text is
    not valid or exceeds ``limits`` (default :class:`Limits`).  The result may be shared
    with other callers (it is immutable and cached).
    """
    if type(text) is not str:
        if not isinstance(text, str):
            raise _not_text(text)
        text = str(text)
    try:
        return _engine(limits).parse(text)
    except ReturnStringError:
        raise
    except Exception as exc:  # pragma: no cover - defensive, see _Engine.run
        raise _error(text, 1, 1, f"internal parser error ({type(exc).__name__}: {exc}); "
                                 "please report this return string as a pyrecks bug") from None


def parse_value(text: str, limits: Limits | None = None) -> Value:
    """Parse one value of the language (``"x"``, ``[1, 2]``, ``{"a": None}``, ...).

    Lists come back as tuples and dicts as FrozenDicts, as in instructions.  A whole-text
    ``"@key"`` gives a :class:`~pyrecks.compiler.instructions.KeyRef` (as it would as a call
    argument); nested ones are errors.  Raises ReturnStringError for anything else.
    """
    if not isinstance(text, str):
        raise _not_text(text)
    if not text.strip():
        raise _error(text, 1, 1, "empty text: expected a value", frozenset({"a value"}))
    return _engine(limits).run(str(text), "value_text")
