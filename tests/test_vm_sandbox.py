"""Escapes tried at run time, through kernels that never met the checker.

The VM runs the checker on raw ``SET`` kernels, so the first group shows those are refused.
The second group exercises the run-time guards directly (code executed in a sandbox
namespace without any static check), since the sandbox must hold even if the checker
missed something.
"""

from __future__ import annotations

import hashlib
import marshal
import sys
import time
import types
from typing import Any

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.compiler.policy import Policy
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.records import ChainStatus
from pyrecks.vm.sandbox import Sandbox, SandboxViolation, compile_guarded
from tests.vm_helpers import raw_kernel

RAW_ESCAPES = {
    "subclasses": "def k():\n    return str(().__class__.__bases__[0].__subclasses__())\n",
    "computed_getattr": "def k():\n    return getattr((), '__cl' + 'ass__')\n",
    "open_file": "def k():\n    return open('/etc/passwd').read()\n",
    "import_os": "import os\ndef k():\n    return ''\n",
    "json_codecs": "import json\ndef k():\n    return json.codecs.open('/etc/passwd').read()\n",
    "eval": "def k():\n    return eval('1')\n",
    "frame_walk": "def k():\n    g = (x for x in [1])\n    return str(g.gi_frame.f_back)\n",
    "builtins_dict": "def k():\n    return __builtins__['open']('/etc/passwd').read()\n",
    "global_state": "X = []\ndef k():\n    global X\n    X = 1\n    return ''\n",
    "dataclass_field_code": (
        "import dataclasses\n"
        "def k():\n"
        "    @dataclasses.dataclass(init=False, repr=False)\n"
        "    class D:\n"
        "        __annotations__ = {\"__class__,open('/etc/passwd').read()\": int}\n"
        "    d = D()\n"
        "    return str(d == d)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(RAW_ESCAPES))
def test_raw_set_escape_attempts_fail_the_chain_with_a_lint_reason(
    r: redis.Redis, name: str
) -> None:
    raw_kernel(r, "k", RAW_ESCAPES[name])
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start("k()"), timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "lint", info.error
    assert r.type("k") == b"string"  # a refused kernel is never cached as compiled


@pytest.fixture
def sandbox() -> Sandbox:
    policy = Policy()
    return Sandbox(policy.allowed_modules, policy.forbidden_builtins, policy.forbidden_attributes)


def _run(sandbox: Sandbox, source: str) -> dict[str, object]:
    namespace = sandbox.namespace("t")
    exec(compile(source, "<kernel t>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    "source, error",
    [
        ("import os", ImportError),
        ("import subprocess", ImportError),
        ("from json import codecs", ImportError),
        ("from datetime import sys", ImportError),
        ("import json\nx = json.codecs", AttributeError),
        ("import datetime\nx = datetime.sys", AttributeError),
        ("from . import x", ImportError),
        ("open('/etc/passwd')", NameError),
        ("eval('1')", NameError),
        ("exec('x = 1')", NameError),
        ("compile('1', 'f', 'eval')", NameError),
        ("globals()", NameError),
        ("vars()", NameError),
        ("breakpoint()", NameError),
        ("getattr((), '__cl' + 'ass__')", SandboxViolation),
        ("hasattr(lambda: 0, '__globals__')", SandboxViolation),
        ("g = (i for i in [1])\ngetattr(g, 'gi_frame')", SandboxViolation),
        ("import string\nstring.Formatter", AttributeError),
        ("import typing\ntyping.get_type_hints", AttributeError),
    ],
)
def test_runtime_guards_hold_without_the_checker(
    sandbox: Sandbox, source: str, error: type[BaseException]
) -> None:
    with pytest.raises(error):
        _run(sandbox, source)


def _run_guarded(sandbox: Sandbox, source: str) -> dict[str, object]:
    namespace = sandbox.namespace("t")
    exec(compile_guarded("t", source, "<kernel t>"), namespace)
    return namespace


@pytest.mark.parametrize(
    "source",
    [
        "import json\nm = json\nm.dumps = len",  # a module is read-only
        "import json\nm = json\ndel m.dumps",
        "import dataclasses\nm = dataclasses\nm._create_fn",  # private names are absent
        "import random\nm = random\nm._os",
        "import json\nc = json.JSONEncoder\nc.item_separator = ';'",  # shared class
        "import random\nt = '{0.__glo' + 'bals__}'\nt.format(random.randint)",
        "import random\nstr.format('{0._' + '_globals__}', random.randint)",
        "import random\nt = '{0.__glo' + 'bals__}'\nf = t.format\nf(random.randint)",
        "import operator, random\nm = operator\nm.attrgetter('__glob' + 'als__')",
        "import operator\noperator.methodcaller('_' + '_reduce__')",
        "_pyrecks_writable = lambda o: o",  # the guards cannot be shadowed
    ],
)
def test_compiled_in_guards_hold_without_the_checker(sandbox: Sandbox, source: str) -> None:
    with pytest.raises((SandboxViolation, AttributeError)):
        _run_guarded(sandbox, source)


def test_allowed_modules_work_inside_the_sandbox(sandbox: Sandbox) -> None:
    ns = _run(
        sandbox,
        "import math, json, re\nfrom collections import Counter\nimport collections.abc\n"
        "x = (math.sqrt(16), json.dumps([1]), re.sub('a', 'b', 'aa'), Counter('aab')['a'],\n"
        "     collections.abc.Mapping is not None)",
    )
    assert ns["x"] == (4.0, "[1]", "bb", 2, True)


def test_sandboxed_sleep_is_interruptible_by_the_watchdog(r: redis.Redis) -> None:
    raw_kernel(r, "nap", "import time\nPYRECKS_TIMEOUT = 0.2\ndef nap():\n    time.sleep(60)\n")
    px = Pyrecks(r)
    began = time.monotonic()
    with px.local_vm(echo=False, timeout_grace=5.0):
        info = px.wait(px.start("nap()"), timeout=30)
    assert info.error_kind == "timeout"
    # Interrupted by KernelTimeout well before the 5 s grace would abandon the thread.
    assert time.monotonic() - began < 5.0


STUBBORN = (
    "import time\n"
    "def stubborn():\n"
    "    end = time.monotonic() + 2.0\n"
    "    while time.monotonic() < end:\n"
    "        try:\n"
    "            while time.monotonic() < end:\n"
    "                pass\n"
    "        except BaseException:\n"
    "            pass\n"
    '    return \'SET [("late", "1")]\'\n'
)


def _install_unchecked(r: redis.Redis, vm: Any, code: types.CodeType) -> None:
    """Put ``stubborn`` straight into the VM's cache with ``code``, without the checker.

    The Redis record names the same source (so its digest matches the cache) but says it
    was never compiled, so nothing else is consulted.
    """
    digest = hashlib.sha256(STUBBORN.encode()).hexdigest()
    vm.loader._remember(
        LoadedKernel("stubborn", digest, (), 0.2, None, STUBBORN, marshal.dumps(code))
    )
    r.hset("stubborn", mapping={"source": STUBBORN, "digest": digest, "compiled": "1"})


def test_the_guards_keep_except_base_exception_from_swallowing_the_timeout(
    r: redis.Redis,
) -> None:
    """With the checker off, ``except BaseException: pass`` catches ``Exception`` only.

    The guard rewriter turns the clause into ``except _pyrecks_catch(BaseException):``, so
    the VM's timeout goes through it and the step ends on time (it is not abandoned).
    """
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=1, timeout_grace=5.0, isolation="thread") as vm:
        _install_unchecked(r, vm, compile_guarded("stubborn", STUBBORN, "<kernel stubborn>"))
        began = time.monotonic()
        stuck = px.wait(px.start("stubborn()"), timeout=30)
    assert stuck.error_kind == "timeout", stuck.error
    assert "abandoned" not in (stuck.error or "")
    assert time.monotonic() - began < 1.5
    assert r.get("late") is None


def test_a_kernel_that_swallows_the_timeout_is_abandoned_and_the_vm_lives_on(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crafted bytecode *without* the guards ignores KernelTimeout for 2 s, then returns.

    The VM must have given up on it by then (grace 0.5 s) and must drop its late return
    value; the single worker thread is replaced.
    """
    if sys.version_info >= (3, 13):
        # CPython 3.13 lets an asynchronous exception escape the kernel's own try/except
        # (reproduced without pyrecks), so the kernel would stop instead of swallowing it.
        # Withholding the exception gives the same stubborn kernel: the abandon path is
        # what this test is about.
        import pyrecks.vm.watchdog

        monkeypatch.setattr(pyrecks.vm.watchdog, "_raise_in_thread", lambda _tid: None)
    raw_kernel(r, "fine", "def fine():\n    return 'return 7'\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=1, timeout_grace=0.5, isolation="thread") as vm:
        _install_unchecked(r, vm, compile(STUBBORN, "<kernel stubborn>", "exec"))
        stuck = px.wait(px.start("stubborn()"), timeout=30)
        after = px.wait(px.start("fine()"), timeout=30)
    assert stuck.status is ChainStatus.FAILED
    assert stuck.error_kind == "timeout"
    assert "abandoned" in (stuck.error or "")
    assert after.status is ChainStatus.DONE  # the single worker was replaced
    assert r.get("late") is None  # the abandoned step's effects never landed


def test_the_kernels_dataclass_refuses_field_names_that_are_code() -> None:
    """The run-time half of PK533: ``dataclasses`` pastes field names into source it runs,
    so the kernels' ``dataclass`` checks them where it reads them, inherited ones too."""
    from pyrecks.vm.guards import _plain_field_names

    class Forged:
        pass

    Forged.__annotations__ = {"a,__import__('os')": int}
    with pytest.raises(SandboxViolation, match="not a plain identifier"):
        _plain_field_names(Forged)

    class Base:
        __dataclass_fields__ = {"class": None}  # a keyword: never a field of a real dataclass

    class Child(Base):
        x: int

    with pytest.raises(SandboxViolation, match="'class'"):
        _plain_field_names(Child)

    class Plain:
        x: int
        y: str

    _plain_field_names(Plain)  # ordinary fields pass
