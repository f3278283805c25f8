"""compile_kernel: signature, digest, magic, marshal round trip, kernel-relative tracebacks."""

from __future__ import annotations

import hashlib
import importlib.util
import traceback

import pytest

from pyrecks.compiler.compiler import (
    MAGIC,
    Param,
    compile_kernel,
    load_code,
    signature_from_json,
    signature_to_json,
)
from pyrecks.compiler.policy import Policy
from pyrecks.errors import KernelRejected
from pyrecks.vm.sandbox import Sandbox

SOURCE = '''\
"""A typed kernel."""
PYRECKS_TIMEOUT = 1.5
PYRECKS_RETRIES = 2

def wc(text: str, /, words: list[str], limit: int = 3, *rest, sep: str = " ", flag, **kw):
    return ''

def boom(x):
    return 1 / x
'''


def test_signature_records_names_annotations_kinds_and_defaults() -> None:
    kernel = compile_kernel("wc", SOURCE)
    assert kernel.signature == (
        Param("text", "str", "positional_only", False),
        Param("words", "list[str]", "positional_or_keyword", False),
        Param("limit", "int", "positional_or_keyword", True),
        Param("rest", None, "var_positional", False),
        Param("sep", "str", "keyword_only", True),
        Param("flag", None, "keyword_only", False),
        Param("kw", None, "var_keyword", False),
    )
    assert signature_from_json(signature_to_json(kernel.signature)) == kernel.signature


def test_digest_magic_and_config() -> None:
    kernel = compile_kernel("wc", SOURCE)
    assert kernel.digest == hashlib.sha256(SOURCE.encode()).hexdigest()
    assert kernel.magic == importlib.util.MAGIC_NUMBER.hex() == MAGIC
    assert (kernel.timeout, kernel.retries) == (1.5, 2)
    assert compile_kernel("boom", SOURCE).name == "boom"


def test_marshal_round_trip_gives_a_runnable_module() -> None:
    kernel = compile_kernel("wc", SOURCE)
    code = load_code(kernel.bytecode, kernel.magic)
    assert code is not None
    assert code == kernel.code  # code objects compare by value
    namespace = Sandbox.from_policy(Policy()).namespace("wc")
    exec(code, namespace)
    assert namespace["PYRECKS_TIMEOUT"] == 1.5


def test_load_code_refuses_other_pythons_and_garbage() -> None:
    kernel = compile_kernel("wc", SOURCE)
    assert load_code(kernel.bytecode, "00000000") is None
    assert load_code(b"not marshal", MAGIC) is None
    assert load_code(b"", MAGIC) is None


def test_tracebacks_name_the_kernel_and_its_lines() -> None:
    kernel = compile_kernel("boom", SOURCE)
    namespace = Sandbox.from_policy(Policy()).namespace("boom")
    exec(kernel.code, namespace)
    with pytest.raises(ZeroDivisionError) as info:
        namespace["boom"](0)  # type: ignore[operator]
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].filename == "<kernel boom>"
    assert frames[-1].lineno == 9


def test_rejection_lists_every_error_with_positions() -> None:
    bad = "import os\n\ndef k(x):\n    open('f')\n    return eval('1')\n"
    with pytest.raises(KernelRejected) as info:
        compile_kernel("k", bad)
    found = [(e.code, e.line) for e in info.value.findings]
    assert found == [("PK101", 1), ("PK201", 4), ("PK201", 5)]
    assert "^" in info.value.findings[0].context()


def test_warnings_travel_with_the_compiled_kernel() -> None:
    kernel = compile_kernel("k", "import time\n\ndef k(x):\n    t = time.time()\n    return ''\n")
    assert [f.code for f in kernel.warnings] == ["PK405"]
