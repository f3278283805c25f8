"""What a checker pass produces: findings and the analysis the compiler reuses.

Below every other piece of the compiler's front end (checker, purity rules, Python 2
heuristics), so that none of them imports the checker back.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Literal

from pyrecks.errors import LintError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One rule violation: ``path:line:column: CODE message``."""

    code: str
    severity: Severity
    message: str
    line: int
    column: int

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_error(self, text: str = "") -> LintError:
        """The finding as an exception; ``text`` (the kernel source) enables caret drawing."""
        return LintError(self.code, self.message, text=text, line=self.line, column=self.column)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "line": self.line,
            "column": self.column,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            code=str(data["code"]),
            severity="error" if data.get("severity") == "error" else "warning",
            message=str(data["message"]),
            line=int(data["line"]),
            column=int(data["column"]),
        )

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.code} {self.message}"


@dataclass
class Analysis:
    """Everything one checker pass learned: findings plus what the compiler reuses."""

    findings: list[Finding]
    tree: ast.Module | None = None
    entry: ast.FunctionDef | None = None
    timeout: float | None = None
    retries: int | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]
