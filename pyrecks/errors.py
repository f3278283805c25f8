"""The exception hierarchy shared by every part of pyrecks.

Every error a user can cause derives from :class:`PyrecksError`, so applications can catch
one type.  Errors about a piece of text the user wrote (a kernel's source, a return string)
derive from :class:`SourceError` and carry the position of the fault, so that every layer —
CLI, VM chain record, linter JSON — can point at the exact spot with the same caret drawing.
"""

from __future__ import annotations


class PyrecksError(Exception):
    """Base class of every error pyrecks raises on purpose."""


class SourceError(PyrecksError):
    """An error located in a text the user wrote.

    ``line`` and ``column`` are 1-based, like the ones editors and Python's own
    ``SyntaxError`` show.  ``text`` is the whole offending text, kept so that
    :meth:`context` can draw the faulty line with a caret under the fault.
    """

    def __init__(self, message: str, *, text: str = "", line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.line = line
        self.column = column

    def context(self, span: int = 40) -> str:
        """Return the faulty line (clipped to ``span`` characters around the fault) and a caret."""
        lines = self.text.splitlines() or [""]
        src = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        col = max(self.column - 1, 0)
        start = max(col - span, 0)
        end = col + span
        prefix = "..." if start > 0 else ""
        suffix = "..." if end < len(src) else ""
        shown = prefix + src[start:end] + suffix
        caret = " " * (len(prefix) + col - start) + "^"
        return f"{shown}\n{caret}"

    def __str__(self) -> str:
        return f"{self.message} (line {self.line}, column {self.column})"


class ReturnStringError(SourceError):
    """A kernel's return string (or a call given on the command line) is not valid.

    ``expected`` lists the token kinds the grammar would have accepted at the fault, empty
    when the fault is not a syntax error (a limit, a forbidden command, …).
    """

    def __init__(
        self,
        message: str,
        *,
        text: str = "",
        line: int = 1,
        column: int = 1,
        expected: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message, text=text, line=line, column=column)
        self.expected = expected


class RenderError(PyrecksError):
    """A value cannot be written in the return-string language (e.g. a NaN or a set)."""


class LintError(SourceError):
    """A kernel breaks one of the checker's rules; ``code`` names the rule (e.g. ``PK101``)."""

    def __init__(
        self, code: str, message: str, *, text: str = "", line: int = 1, column: int = 1
    ) -> None:
        super().__init__(message, text=text, line=line, column=column)
        self.code = code

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.code} {self.message}"


class KernelRejected(PyrecksError):
    """A kernel (or a batch of kernels) failed the checker; ``findings`` holds every error."""

    def __init__(self, message: str, findings: list[LintError]) -> None:
        super().__init__(message)
        self.findings = findings


class KernelNotFound(PyrecksError):
    """No kernel record or seed-style source exists under the requested name."""


class ChainNotFound(PyrecksError):
    """No chain record exists with the requested id (it may have expired)."""


class RedisUnavailable(PyrecksError):
    """Redis could not be reached; the message says where we tried and how to fix it."""
