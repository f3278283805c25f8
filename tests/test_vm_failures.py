"""Every failure kind is recorded with its reason, and the VM keeps serving other chains."""

from __future__ import annotations

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

KERNELS = {
    "healthy": "def healthy(n: int):\n    return 'return %d' % (n + 1)\n",
    "crash": "def crash(x):\n    y = 1\n    return _helper(x)\n\ndef _helper(x):\n    return x / 0\n",
    "spin": "PYRECKS_TIMEOUT = 0.3\ndef spin():\n    n = 0\n    while True:\n        n += 1\n",
    "sleepy": "import time\nPYRECKS_TIMEOUT = 0.2\ndef sleepy():\n    time.sleep(30)\n    return ''\n",
    "garbled": "def garbled():\n    return ''.join(['next(', 'unquoted words'])\n",
    "lintbad": "def lintbad():\n    return 'next(unquoted words'\n",
    "notastring": "def notastring():\n    return len('ab') * 21\n",
    "needs_two": "def needs_two(a, b):\n    return ''\n",
    "typed_int": "def typed_int(n: int):\n    return ''\n",
    "sneaky": 'def sneaky():\n    return \'SET [("healthy", "def healthy(n): return 1")]\'\n',
    "internal": "def internal():\n    return 'DEL [\"pyrecks:chains\"]'\n",
    "evil": "import os\ndef evil():\n    return os.system('true')\n",
}

CASES = [
    ("crash(1)", "kernel_error", "ZeroDivisionError"),
    ("spin()", "timeout", "time limit of 0.3s"),
    ("sleepy()", "timeout", "time limit of 0.2s"),
    ("missing_kernel(1)", "missing_kernel", "'missing_kernel' does not exist"),
    ('healthy("@no_such_key")', "missing_key", "'no_such_key' does not exist"),
    ("garbled()", "return_string", "invalid string"),
    ("notastring()", "bad_return", "returned a int"),
    ("needs_two(1)", "arguments", "takes 2 argument(s)"),
    ('typed_int("abc")', "arguments", "must be int"),
    ("sneaky()", "effect", "kernel record"),
    ("internal()", "effect", "belong to pyrecks"),
    ("evil()", "lint", "os"),
    ("lintbad()", "lint", "PK601"),
]


@pytest.fixture
def px(r: redis.Redis) -> Pyrecks:
    client = Pyrecks(r)
    for name, source in KERNELS.items():
        raw_kernel(r, name, source)
    # 'healthy' must be a registered kernel for the 'sneaky' effect to be refused.
    client.store_kernel("healthy", KERNELS["healthy"])
    return client


def test_every_failure_kind_is_recorded_and_other_chains_still_complete(px: Pyrecks) -> None:
    with px.local_vm(echo=False, threads=4, timeout_grace=1.0):
        failing = {call: px.start(call) for call, _, _ in CASES}
        healthy = [px.start(f"healthy({i})") for i in range(10)]
        for call, kind, words in CASES:
            info = px.wait(failing[call], timeout=30)
            assert info.status is ChainStatus.FAILED, call
            assert info.error_kind == kind, (call, info.error)
            assert words in (info.error or ""), (call, info.error)
        for i, chain in enumerate(healthy):
            assert px.wait(chain, timeout=30).status is ChainStatus.DONE
            assert px.result(chain) == i + 1


def test_kernel_tracebacks_use_kernel_line_numbers_and_source(px: Pyrecks) -> None:
    with px.local_vm(echo=False):
        info = px.wait(px.start("crash(1)"), timeout=30)
    tb = info.traceback or ""
    assert 'File "<kernel crash>", line 3, in crash' in tb
    assert 'File "<kernel crash>", line 6, in _helper' in tb
    assert "return x / 0" in tb
    assert "pyrecks/vm" not in tb  # VM frames are not the user's business


def test_a_failure_is_in_the_chain_log(px: Pyrecks) -> None:
    with px.local_vm(echo=False):
        chain = px.start("garbled()")
        px.wait(chain, timeout=30)
    errors = [e for e in px.logs(chain) if e.kind == "error"]
    assert len(errors) == 1
    assert "^" in errors[0].text  # the caret under the fault


def test_a_failed_chain_runs_again_after_the_kernel_is_fixed(px: Pyrecks, r: redis.Redis) -> None:
    with px.local_vm(echo=False):
        first = px.wait(px.start("crash(1)"), timeout=30)
        assert first.status is ChainStatus.FAILED
        raw_kernel(r, "crash", "def crash(x):\n    return 'return %r' % (x * 2)\n")
        second = px.wait(px.start("crash(1)"), timeout=30)
    assert second.status is ChainStatus.DONE
    assert px.result(second.id) == 2


def test_cancel_stops_a_running_chain(px: Pyrecks, r: redis.Redis) -> None:
    raw_kernel(r, "forever", "def forever(n: int):\n    return 'forever(%d)' % (n + 1)\n")
    with px.local_vm(echo=False):
        chain = px.start("forever(0)")
        for entry in px.logs(chain, follow=True):
            if entry.step >= 5:
                break
        assert px.cancel(chain) is True
        info = px.wait(chain, timeout=30)
    # The VM has stopped: no step was committed after the cancel.
    assert info.status is ChainStatus.CANCELLED
    assert px.status(chain).step == info.step
    assert px.cancel(chain) is False  # it had already ended


def test_an_unexpected_error_inside_pyrecks_fails_the_chain_instead_of_wedging_it(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception escaping a step used to leave the chain 'running' under a live owner,
    re-run every lease for ever.  Simulated here with a converter that breaks."""
    from pyrecks.vm import step

    def broken(value: object, annotation: object, where: str) -> object:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(step, "convert", broken)
    raw_kernel(r, "takes", "def takes(x: int):\n    return 'return 1'\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=1):
        info = px.wait(px.start("takes(1)"), timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "crashed"
    assert "pyrecks could not run this step (TypeError: unhashable type: 'list')" in (
        info.error or ""
    )


def test_a_mistyped_kernel_name_gets_a_suggestion(r: redis.Redis) -> None:
    px = Pyrecks(r)
    raw_kernel(r, "func1", "def func1(x: str):\n    return 'fucn1(%r)' % x\n")
    with px.local_vm(echo=False, threads=1):
        info = px.wait(px.start('func1("hi")'), timeout=30)  # func1 is promoted (listed)
    assert info.status is ChainStatus.FAILED and info.error_kind == "missing_kernel"
    assert "(did you mean func1?)" in (info.error or "")


def test_a_kernel_typed_with_literal_backslash_n_is_explained(r: redis.Redis) -> None:
    """The seed's `SET func0 "def func0(x):\\n  ..."` typed on a shell line stores backslash-n."""
    r.set("func0", "def func0(x):\\n    return ''")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=1):
        info = px.wait(px.start('func0("hi")'), timeout=30)
    assert info.status is ChainStatus.FAILED and info.error_kind == "lint"
    assert "backslash-n where line breaks belong" in (info.error or "")
