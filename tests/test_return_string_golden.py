"""Golden cases in tests/golden/return_strings/*.txt: input -> canonical text or error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pyrecks.compiler.parser import parse
from pyrecks.compiler.render import render
from pyrecks.errors import ReturnStringError

GOLDEN = Path(__file__).parent / "golden" / "return_strings"


@dataclass
class Case:
    file: str
    lineno: int
    text: str
    expect: str  # "=> canonical" or "!! line:col fragment"


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(GOLDEN.glob("*.txt")):
        if path.name == "README.txt":
            continue
        block: list[str] = []
        start = 0
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not block and (not line.strip() or line.startswith("#")):
                continue
            if line.startswith(("=>", "!!")):
                if not block:
                    raise ValueError(f"{path.name}:{n}: expectation without an input")
                cases.append(Case(path.name, start, "\n".join(block), line))
                block = []
            else:
                if not block:
                    start = n
                block.append(line)
        if block:
            raise ValueError(f"{path.name}:{start}: input without an expectation")
    return cases


CASES = load_cases()


def test_golden_files_hold_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.lineno}" for c in CASES])
def test_golden_case(case: Case) -> None:
    if case.expect.startswith("=>"):
        expected = case.expect[2:].strip()
        assert render(parse(case.text)) == expected
        return
    where, _, fragment = case.expect[2:].strip().partition(" ")
    line, column = (int(x) for x in where.split(":"))
    with pytest.raises(ReturnStringError) as info:
        parse(case.text)
    exc = info.value
    assert (exc.line, exc.column) == (line, column), exc
    assert fragment in exc.message, exc.message
