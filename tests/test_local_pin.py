"""``pyrecks run --local``: the chain is served by its own VM, and never stranded by it.

A local run pins its chain to the VM it starts in-process (``Pyrecks.start(local=True)``
and ``Pyrecks.local_vm``): no other VM sharing the Redis runs a step of it, or of its
fan-out branches, while that VM beats; once the local VM is gone, any VM finishes it.
Which VM ran a step is told by what each VM echoed: every kernel prints its step.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import redis

from pyrecks.api import Pyrecks
from pyrecks.keys import Keyspace
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

KS = Keyspace()
FAST = {"threads": 2, "isolation": "thread", "lease": 1.0}

# Step k of n prints itself and counts itself once (INCRBY its own key); step 1 fans out
# into two branches that do the same, joined by the next step.
PSTEP = """
import time
def pstep(k: int, n: int, ms: int):
    time.sleep(ms / 1000)
    print('step %d' % k)
    if k == n:
        return 'return %d INCRBY [("pin:%d", 1)]' % (k, k)
    if k == 1:
        return '[pleaf(0, %d), pleaf(1, %d)] -> pjoin(%d, %d, %d) INCRBY [("pin:1", 1)]' % (
            ms, ms, k + 1, n, ms)
    return 'pstep(%d, %d, %d) INCRBY [("pin:%d", 1)]' % (k + 1, n, ms, k)
"""
PLEAF = """
def pleaf(j: int, ms: int):
    print('leaf %d' % j)
    return 'return %d INCRBY [("pin:leaf%d", 1)]' % (j, j)
"""
PJOIN = """
def pjoin(results: list, k: int, n: int, ms: int):
    print('join %s' % sorted(results))
    return 'pstep(%d, %d, %d) INCRBY [("pin:join", 1)]' % (k, n, ms)
"""


def _kernels(r: redis.Redis) -> None:
    raw_kernel(r, "pstep", PSTEP.lstrip())
    raw_kernel(r, "pleaf", PLEAF.lstrip())
    raw_kernel(r, "pjoin", PJOIN.lstrip())


def _counters(r: redis.Redis, n: int) -> dict[str, int]:
    keys = [f"pin:{k}" for k in range(n + 1)] + ["pin:leaf0", "pin:leaf1", "pin:join"]
    return {k: int(v or 0) for k, v in zip(keys, r.mget(keys), strict=True)}


def _ran(lines: list[str], chain: str) -> list[str]:
    """The kernel lines a VM echoed for ``chain`` and its branches."""
    return [line for line in lines if line.startswith((f"[{chain} ", f"[{chain}."))]


def test_a_local_run_is_served_by_its_own_vm_only(r: redis.Redis) -> None:
    _kernels(r)
    px = Pyrecks(r)
    other_said: list[str] = []
    local_said: list[str] = []
    with Pyrecks(r).local_vm(name="other", echo_to=other_said.append, **FAST):
        # As `pyrecks run --local` does: the start first, then the local VM — the other
        # VM is idle and reading all along.
        chain = px.start("pstep(0, 4, 50)", local=True)
        unpinned = px.start("pleaf(5, 0)")  # any VM may run this one
        with px.local_vm(echo_to=local_said.append, **FAST) as local:
            # Another entry naming the chain reaches the shared stream (a copy, as a drain
            # or a give-back would leave): the other VM must hand it over, not run it.
            r.xadd(KS.starts, {"chain": chain})
            info = px.wait(chain, timeout=30)
            assert px.wait(unpinned, timeout=30).status is ChainStatus.DONE
        assert local.name == px.local_name
    assert info.status is ChainStatus.DONE and px.result(chain) == 4
    assert _ran(other_said, chain) == []
    ran = [line.split("] ", 1)[1] for line in _ran(local_said, chain)]
    assert sorted(ran) == sorted(
        ["step 0", "step 1", "leaf 0", "leaf 1", "join [0, 1]", "step 2", "step 3", "step 4"]
    )
    assert set(_counters(r, 4).values()) == {1}
    # The local VM stopped: its pins lapsed with it, and its stream went.
    assert not r.exists(KS.pinned(px.local_name)) and not r.smembers(KS.pins)


def test_a_local_start_whose_vm_never_came_is_run_by_another_vm(r: redis.Redis) -> None:
    """The local process died between the start and its VM: the pin lapses a lease later."""
    _kernels(r)
    px = Pyrecks(r)
    chain = px.start("pstep(0, 2, 0)", local=True)
    with Pyrecks(r).local_vm(name="other", echo=False, **FAST):
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    assert set(_counters(r, 2).values()) == {1}


LOCAL_RUN = """
import sys
import redis
from pyrecks.api import Pyrecks

px = Pyrecks(redis.Redis.from_url(sys.argv[1]))
chain = px.start("pstep(0, 8, 300)", chain_id="p", local=True)
with px.local_vm(threads=2, isolation="thread", lease=1.0, echo=False):
    px.wait(chain)
"""


def test_a_pinned_chain_whose_local_vm_is_killed_is_finished_by_another_vm(
    r: redis.Redis, redis_url: str
) -> None:
    _kernels(r)
    local = subprocess.Popen([sys.executable, "-c", LOCAL_RUN, redis_url])
    try:
        deadline = time.monotonic() + 30
        while int(r.hget(KS.chain("p"), "step") or 0) < 3:  # past the fan-out and join
            assert time.monotonic() < deadline, "the local run did not get going"
            assert local.poll() is None, "the local run exited"
            time.sleep(0.05)  # polling the record is how we see the local VM progress
        pinned = r.hget(KS.chain("p"), "pin")
    finally:
        local.send_signal(signal.SIGKILL)
        local.wait()
    said: list[str] = []
    with Pyrecks(r).local_vm(name="rescuer", echo_to=said.append, **FAST):
        info = Pyrecks(r).wait("p", timeout=60)
    assert info.status is ChainStatus.DONE and Pyrecks(r).result("p") == 8
    assert pinned and pinned != b"rescuer"
    assert _ran(said, "p")  # the rescuer ran the steps the killed VM had not committed
    assert set(_counters(r, 8).values()) == {1}  # every effect exactly once
