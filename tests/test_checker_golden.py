"""Golden kernels in tests/golden/checker/*.txt: each kernel with its findings marked inline.

See tests/golden/checker/README.txt for the format.  The checker must report exactly the
marked codes on the marked lines; kernels with no error marked must also compile with the
guards and load in a sandbox (so the two layers agree about what is fine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyrecks.compiler.checker import check
from pyrecks.compiler.policy import Policy
from pyrecks.vm.sandbox import Sandbox, compile_guarded

GOLDEN = Path(__file__).parent / "golden" / "checker"
MARK = re.compile(r"#!\s*((?:~?PK\d{3}\s*)+)$")


@dataclass(frozen=True)
class Chunk:
    file: str
    lineno: int
    title: str
    source: str
    expected: frozenset[tuple[int, str, str]]  # (line, code, severity)


def load_chunks() -> list[Chunk]:
    chunks: list[Chunk] = []
    for path in sorted(GOLDEN.glob("*.txt")):
        if path.name == "README.txt":
            continue
        title, start, lines = "", 0, []
        for n, line in enumerate([*path.read_text(encoding="utf-8").splitlines(), "=== end"], 1):
            if line.startswith("=== "):
                if title:
                    chunks.append(_chunk(path.name, start, title, lines))
                title, start, lines = line[4:].strip(), n, []
            else:
                lines.append(line)
    return chunks


def _chunk(file: str, start: int, title: str, lines: list[str]) -> Chunk:
    while lines and not lines[-1].strip():
        lines.pop()
    expected = set()
    for number, line in enumerate(lines, 1):
        match = MARK.search(line)
        if match:
            for code in match.group(1).split():
                severity = "warning" if code.startswith("~") else "error"
                expected.add((number, code.lstrip("~"), severity))
    return Chunk(file, start, title, "\n".join(lines) + "\n", frozenset(expected))


CHUNKS = load_chunks()


def test_the_golden_files_hold_cases() -> None:
    assert len(CHUNKS) >= 25


@pytest.mark.parametrize("chunk", CHUNKS, ids=[f"{c.file}:{c.lineno}" for c in CHUNKS])
def test_golden_kernel_gets_exactly_the_marked_findings(chunk: Chunk) -> None:
    findings = check(chunk.source, "k", Policy())
    got = {(f.line, f.code, f.severity) for f in findings}
    assert got == chunk.expected, f"{chunk.title}: " + "; ".join(map(str, findings))
    if not any(severity == "error" for _line, _code, severity in chunk.expected):
        namespace = Sandbox.from_policy(Policy()).namespace("k")
        exec(compile_guarded("k", chunk.source, "<kernel k>"), namespace)
        assert callable(namespace["k"])
