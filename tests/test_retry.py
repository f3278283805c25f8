"""Retry policies, the failed list, ``pyrecks retry`` after a hot patch, and ``pyrecks vms``."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

FAST = {"echo": False, "retry_backoff": 0.01}


def _setup(r: redis.Redis) -> Pyrecks:
    raw_kernel(
        r,
        "prep",
        "def prep(n: int):\n    return 'flaky(%d) INCRBY [(\"prepared\", 1)]' % n\n",
    )
    raw_kernel(
        r,
        "flaky",
        "PYRECKS_RETRIES = 2\ndef flaky(n: int):\n    print('trying', n)\n    return str(n // 0)\n",
    )
    return Pyrecks(r)


def test_a_retry_policy_reruns_the_step_then_fails_with_the_reason(r: redis.Redis) -> None:
    px = _setup(r)
    with px.local_vm(**FAST):
        info = px.wait(px.start("prep(1)"), timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "kernel_error"
    assert info.attempts == 3  # the first try and two retries
    entries = list(px.logs(info.id))
    assert [e.kind for e in entries].count("retry") == 2
    assert [e.text for e in entries if e.kind == "out"] == ["trying 1"] * 3
    assert [c.id for c in px.failed()] == [info.id]


def test_retry_resumes_a_failed_chain_at_the_failed_step_after_a_hot_patch(
    r: redis.Redis,
) -> None:
    px = _setup(r)
    with px.local_vm(**FAST):
        chain = px.start("prep(20)")
        assert px.wait(chain, timeout=30).status is ChainStatus.FAILED
        raw_kernel(r, "flaky", "def flaky(n: int):\n    return 'return %d' % (n * 2)\n")
        assert px.retry(chain) is True
        info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.DONE
    assert px.result(chain) == 40
    assert r.get("prepared") == b"1"  # the step before the failure was not re-run
    assert px.failed() == []
    assert px.retry(chain) is False  # only failed chains can be retried


def test_a_failed_branch_is_retried_through_its_parent(r: redis.Redis) -> None:
    raw_kernel(r, "fan", "def fan():\n    return '[part(1), part(0)] -> total()'\n")
    raw_kernel(r, "part", "def part(n: int):\n    return 'return %d' % (10 // n)\n")
    raw_kernel(r, "total", "def total(parts: list):\n    return 'return %d' % sum(parts)\n")
    px = Pyrecks(r)
    with px.local_vm(**FAST):
        chain = px.start("fan")
        failed = px.wait(chain, timeout=30)
        assert failed.error_kind == "branch"
        raw_kernel(r, "part", "def part(n: int):\n    return 'return %d' % (n + 100)\n")
        assert px.retry(chain) is True
        info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.DONE
    assert px.result(chain) == 10 + 100  # branch 0 kept its result; branch 1 re-ran


def test_pyrecks_retry_and_vms_commands(r: redis.Redis, redis_url: str) -> None:
    px = _setup(r)
    with px.local_vm(name="retry-vm", threads=3, **FAST):
        chain = px.start("prep(3)")
        px.wait(chain, timeout=30)
        env = {**os.environ, "REDIS_URL": redis_url}
        listed = subprocess.run(
            [sys.executable, "-m", "pyrecks", "vms"], capture_output=True, text=True, env=env
        )
        assert "retry-vm" in listed.stdout and "running" in listed.stdout
        raw_kernel(r, "flaky", "def flaky(n: int):\n    return ''\n")
        retried = subprocess.run(
            [sys.executable, "-m", "pyrecks", "retry", chain],
            capture_output=True,
            text=True,
            env=env,
        )
        assert retried.returncode == 0, retried.stderr
        assert "queued again at step 1" in retried.stdout
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    again = subprocess.run(
        [sys.executable, "-m", "pyrecks", "retry", chain], capture_output=True, text=True, env=env
    )
    assert again.returncode == 1 and "not failed" in again.stderr
    states = {v.name: v.state for v in px.vms()}
    assert states["retry-vm"] == "stopped"


def test_retrying_a_chain_started_with_an_invalid_call_fails_it_again_cleanly(
    r: redis.Redis,
) -> None:
    """A raw XADD with a call that does not parse makes a failed ``bad_call`` chain; retrying
    it used to wedge it (the VM crashed rendering its placeholder call and the chain stayed
    ``running``, logging a traceback every 2 s).  Issue 11, item 3."""
    px = Pyrecks(r)
    r.xadd("pyrecks:starts", {"call": "not valid(", "id": "badcall"})
    with px.local_vm(echo=False, threads=1):
        first = px.wait("badcall", timeout=30, missing_ok=True)
        assert first.status is ChainStatus.FAILED and first.error_kind == "bad_call"
        assert px.retry("badcall")
        again = px.wait("badcall", timeout=30)
    assert again.status is ChainStatus.FAILED, again
    assert again.error_kind == "return_string"
    assert "stored call is invalid" in (again.error or "")
    assert again.call == "not valid("


def test_a_retry_backoff_holds_no_worker_thread(r: redis.Redis) -> None:
    """Two always-failing kernels with long backoffs used to sleep on a 2-thread VM's
    threads and starve every other chain (issue 11, why 9)."""
    raw_kernel(r, "doomed", "PYRECKS_RETRIES = 100\ndef doomed(n: int):\n    return str(n // 0)\n")
    raw_kernel(r, "quick", "def quick(n: int):\n    return 'return %d' % n\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=2, retry_backoff=60.0, isolation="thread"):
        doomed = [px.start(f"doomed({i})") for i in range(2)]
        for chain in doomed:  # both have failed once and wait out their first backoff
            for entry in px.logs(chain, follow=True):
                if entry.kind == "retry":
                    break
        assert px.wait(px.start("quick(7)"), timeout=20).status is ChainStatus.DONE
    # The drain handed the waiting chains back at their step, attempts and all.
    for chain in doomed:
        info = px.status(chain)
        assert info.status is ChainStatus.QUEUED and info.step == 0
