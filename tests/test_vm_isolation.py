"""``isolation="process"``: kernels run in worker processes with hard time and memory limits.

Real Redis, real worker processes.  Each test checks what threads cannot do — kill a kernel
stuck in C code, bound its memory, survive a dead worker, use two cores — and that the VM
keeps serving chains afterwards.  Synchronisation is by events and chain status, never sleeps.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.isolation import ProcessExecutor
from pyrecks.vm.machine import VM
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

KERNELS = {
    "iso_start": (
        "def iso_start(n: int, label: str, tags: list, price: float):\n"
        "    print('start', n + 1, label.upper(), len(tags), price * 2)\n"
        "    return 'iso_next(%d, \"@iso_hash\")' % (n * 10)\n"
    ),
    "iso_next": (
        "def iso_next(n: int, record: dict):\n"
        "    print('next got', record['name'])\n"
        "    return 'return %d' % (n + int(record['count']))\n"
    ),
    "healthy": "def healthy(n: int):\n    return 'return %d' % (n + 1)\n",
    # Catastrophic backtracking: one C call that never checks for signals or async
    # exceptions, holding the GIL for ~2**40 steps.  A thread watchdog cannot stop it.
    "stuck": (
        "import re\n"
        "PYRECKS_TIMEOUT = 1\n"
        "def stuck():\n"
        "    print('about to backtrack')\n"
        "    m = re.match('(a+)+$', 'a' * 40 + 'b')\n"
        "    return 'return %r' % (m is None)\n"
    ),
    "hog_once": "def hog_once():\n    x = [0] * 10**10\n    return 'return %d' % len(x)\n",
    "hog_grow": (
        "def hog_grow():\n    chunks = []\n    while True:\n        chunks.append(b'x' * 10**7)\n"
    ),
    "waiter": (
        "import time\n"
        "PYRECKS_TIMEOUT = 60\n"
        "def waiter():\n"
        "    print('waiting')\n"
        "    time.sleep(55)\n"
        "    return ''\n"
    ),
    "fan": "def fan():\n    return '[burn(0), burn(1)] -> gather()'\n",
    "burn": (
        "import time\n"
        "def burn(i: int):\n"
        "    end = time.monotonic() + 1.0\n"
        "    n = 0\n"
        "    while time.monotonic() < end:\n"
        "        n += 1\n"
        "    return 'return %d' % i\n"
    ),
    "gather": "def gather(results: list):\n    return 'return %d' % sum(results)\n",
}


@pytest.fixture
def px(r: redis.Redis) -> Pyrecks:
    for name, source in KERNELS.items():
        raw_kernel(r, name, source)
    r.hset("iso_hash", mapping={"name": "widget", "count": "7"})
    return Pyrecks(r)


@pytest.fixture
def vm(px: Pyrecks) -> Iterator[VM]:
    with px.local_vm(echo=False, threads=2, isolation="process", memory_limit_mb=256) as m:
        assert isinstance(m.executor, ProcessExecutor)
        yield m
    # VM.stop closed the executor: every worker process is gone (killed and reaped).
    assert m.executor.worker_pids == []
    for pid in m.executor.started_pids:
        _assert_gone(pid)


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _executor(vm: VM) -> ProcessExecutor:
    assert isinstance(vm.executor, ProcessExecutor)
    return vm.executor


def _assert_still_serving(px: Pyrecks) -> None:
    chain = px.start("healthy(41)")
    assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    assert px.result(chain) == 42


def test_a_chain_runs_in_worker_processes_with_typed_args_output_and_hot_patch(
    px: Pyrecks, vm: VM
) -> None:
    chain = px.start('iso_start("4", "abc", [1, 2, 3], "1.25")')
    info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.DONE, info.error
    assert px.result(chain) == 47
    printed = [e.text for e in px.logs(chain) if e.kind == "out"]
    assert printed == ["start 5 ABC 3 2.5", "next got widget"]

    executor = _executor(vm)
    steps = [s for s in executor.history if s.kernel in ("iso_start", "iso_next")]
    assert [s.outcome for s in steps] == ["ok", "ok"]
    assert all(s.pid != os.getpid() and s.pid in executor.started_pids for s in steps)

    # Hot patch: a new source is a new digest, which the worker compiles on first use.
    raw_kernel(px.r, "iso_next", "def iso_next(n: int, record: dict):\n    return 'return -1'\n")
    chain = px.start('iso_start(4, "abc", [], 0.5)')
    assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    assert px.result(chain) == -1


def test_a_kernel_stuck_in_c_code_is_killed_at_its_time_limit(px: Pyrecks, vm: VM) -> None:
    executor = _executor(vm)
    chain = px.start("stuck()")
    info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "timeout", info.error
    assert "time limit of 1s (worker process killed)" in (info.error or "")
    # The line printed before the kernel got stuck still reached the chain log.
    assert [e.text for e in px.logs(chain) if e.kind == "out"] == ["about to backtrack"]

    (record,) = [s for s in executor.history if s.kernel == "stuck"]
    assert record.outcome == "timeout"
    assert 1.0 <= record.ended - record.started < 3.0
    assert record.pid not in executor.worker_pids  # killed, reaped and replaced
    _assert_gone(record.pid)
    _assert_still_serving(px)


@pytest.mark.parametrize("kernel", ["hog_once", "hog_grow"])
def test_a_kernel_allocating_without_bound_fails_and_the_vm_lives_on(
    px: Pyrecks, vm: VM, kernel: str
) -> None:
    executor = _executor(vm)
    info = px.wait(px.start(f"{kernel}()"), timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind in ("memory", "crashed"), info.error
    if info.error_kind == "memory":
        assert "memory limit of 256 MB" in (info.error or "")
    (record,) = [s for s in executor.history if s.kernel == kernel]
    assert record.pid not in executor.worker_pids  # a worker that ran out is replaced
    _assert_still_serving(px)


def test_a_worker_killed_from_outside_fails_its_step_as_crashed(px: Pyrecks) -> None:
    started = threading.Event()

    def echo(line: str) -> None:
        if line.endswith(" waiting"):
            started.set()

    with px.local_vm(threads=1, isolation="process", echo_to=echo) as vm:
        executor = _executor(vm)
        chain = px.start("waiter()")
        assert started.wait(30), "the kernel never printed"
        # One VM thread, one step running: the only live worker is the one running it.
        (pid,) = executor.worker_pids
        os.kill(pid, signal.SIGKILL)
        info = px.wait(chain, timeout=30)
        assert info.status is ChainStatus.FAILED
        assert info.error_kind == "crashed", info.error
        assert "worker process died with signal 9 (SIGKILL)" in (info.error or "")
        assert pid not in executor.worker_pids
        _assert_still_serving(px)


def test_cpu_bound_fan_out_branches_run_in_parallel_on_two_processes(px: Pyrecks, vm: VM) -> None:
    executor = _executor(vm)
    executor.warm(2)  # so that neither branch waits for a worker to start
    assert len(executor.worker_pids) == 2
    began = time.monotonic()
    chain = px.start("fan()")
    info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.DONE, info.error
    assert px.result(chain) == 1
    a, b = [s for s in executor.history if s.kernel == "burn"]
    assert a.pid != b.pid
    assert a.started < b.ended and b.started < a.ended  # they overlapped in time
    assert time.monotonic() - began < 30
