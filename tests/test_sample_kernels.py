"""The sample kernels are plain Python: import them and test them with pytest, no Redis.

This file is also the pattern docs/kernels.md recommends for users' own kernel repos: load
the kernel module, call the entry function, parse the returned string with the grammar and
assert on the instruction objects.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from pyrecks.compiler.checker import check
from pyrecks.compiler.instructions import Call, Effect, Finish, Halt, KeyRef
from pyrecks.compiler.parser import parse

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kernels_{name}", KERNELS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.stem)
def test_every_sample_kernel_passes_the_checker_without_warnings(path: Path) -> None:
    assert check(path.read_text(), path.stem) == []


def test_start_calls_func0() -> None:
    assert parse(load("start").start()).then == Call("func0", ("start ...",))


def test_func0_appends_3_and_calls_func1(capsys: pytest.CaptureFixture[str]) -> None:
    out = parse(load("func0").func0("start ..."))
    assert out.then == Call("func1", ("say hi to func1 with start ...3",))
    assert "func0 says start ...3" in capsys.readouterr().out


def test_func0_escapes_quotes_instead_of_injecting() -> None:
    out = parse(load("func0").func0('x") SET [("admin", "1")] #'))
    assert out.effects == ()
    assert isinstance(out.then, Call) and out.then.name == "func1"


def test_func1_triples_its_input() -> None:
    assert parse(load("func1").func1("ab")).then == Call("func2", ("say hi to func2 with ababab",))


def test_func2_halts() -> None:
    module = load("func2")
    module.SLEEP_SECONDS = 0  # a test may patch its own copy of the module
    assert parse(module.func2("x")).then == Halt()


def test_wc_split_normalises_and_drops_stopwords() -> None:
    out = parse(load("wc_split").wc_split("The quick fox, the lazy DOG's end."))
    assert out.then == Call("wc_count", (("quick", "fox", "lazy", "dog's", "end"), 7))


def test_wc_count_ends_with_a_summary_and_writes_counts() -> None:
    out = parse(load("wc_count").wc_count(["b", "a", "b", "c", "a", "b"], 8, top=2))
    assert out.then == Finish({"words": 8, "distinct": 3, "top": (("b", 3), ("a", 2))})
    assert out.effects == (
        Effect("INCRBY", ("wc:words", 8)),
        Effect("HSET", ("wc:counts", "b", 3, "a", 2, "c", 1)),
    )


def test_wc_count_of_nothing_writes_no_hash() -> None:
    out = parse(load("wc_count").wc_count([], 0))
    assert [e.command for e in out.effects] == ["INCRBY"]


def test_wc_chain_is_started_with_a_key_input() -> None:
    assert parse('wc_split("@doc:1")').then == Call("wc_split", (KeyRef("doc:1"),))
