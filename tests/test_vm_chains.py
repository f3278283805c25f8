"""Hot patch, concurrency, and atomic steps under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

SPIN_V1 = """
def spin(gate: str, n: int):
    # Version 1 never ends on its own: it re-reads the gate key forever.
    return 'spin("@gate", %d)' % (n + 1)
"""

SPIN_V2 = """
def spin(gate: str, n: int):
    return 'return %r' % ("patched at step %d" % n)
"""


def test_hot_patch_takes_effect_at_the_next_step_of_a_running_chain(r: redis.Redis) -> None:
    raw_kernel(r, "spin", SPIN_V1)
    r.set("gate", "closed")
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        chain = px.start('spin("@gate", 0)')
        for entry in px.logs(chain, follow=True):
            if entry.step >= 3:
                break  # the chain is running version 1
        raw_kernel(r, "spin", SPIN_V2)  # the seed's way: plain SET, no restart
        info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.DONE
    result = px.result(chain)
    assert result.startswith("patched at step ")
    assert int(result.rsplit(" ", 1)[1]) >= 3


def test_two_hundred_concurrent_chains_complete(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "hop",
        "def hop(i: int, left: int):\n"
        "    if left == 0:\n"
        "        return 'return %d INCRBY [(\"total\", %d)]' % (i, i)\n"
        "    return 'hop(%d, %d)' % (i, left - 1)\n",
    )
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=16):
        chains = [px.start(f"hop({i}, 5)") for i in range(200)]
        infos = [px.wait(c, timeout=120) for c in chains]
    assert all(i.status is ChainStatus.DONE for i in infos)
    assert [px.result(c) for c in chains] == list(range(200))
    assert int(r.get("total") or 0) == sum(range(200))
    assert all(i.step == 6 for i in infos)


def test_killing_the_vm_between_steps_leaves_no_half_applied_step(
    r: redis.Redis, redis_url: str
) -> None:
    # Each step increments a counter and records its step number, atomically with the
    # checkpoint: after kill -9 the counter must equal the committed step count exactly.
    raw_kernel(
        r,
        "count",
        "def count(n: int):\n"
        '    return \'count(%d) INCRBY [("counter", 1)] SET [("last", %d)]\' % (n + 1, n)\n',
    )
    px = Pyrecks(r)
    chain = px.start("count(0)")
    env = {**os.environ, "REDIS_URL": redis_url}
    vm = subprocess.Popen(
        [sys.executable, "-m", "pyrecks", "vm", "--threads", "2", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for entry in px.logs(chain, follow=True):
            if entry.step >= 50:
                break
    finally:
        vm.send_signal(signal.SIGKILL)
        vm.wait()
    info = px.status(chain)
    assert info.status is ChainStatus.RUNNING  # its VM died mid-chain
    assert info.step >= 50
    assert int(r.get("counter") or 0) == info.step
    assert int(r.get("last") or -1) == info.step - 1
    assert info.call == f"count({info.step})"


LOOP_V1 = "def loop(n: int):\n    return 'loop(%d)' % (n + 1)\n"
LOOP_V2 = "def loop(n: int):\n    return 'return %d' % n\n"


def test_hot_patch_reaches_a_chain_whose_steps_never_ask_redis(r: redis.Redis) -> None:
    # No @key inputs and no effects: the VM learns of the patch only from Redis'
    # invalidation message (client tracking), not from a per-step round trip.
    raw_kernel(r, "loop", LOOP_V1)
    px = Pyrecks(r)
    with px.local_vm(echo=False) as vm:
        chain = px.start("loop(0)")
        for entry in px.logs(chain, follow=True):
            if entry.step >= 3:
                break
        assert vm.watch.enabled
        assert vm.watch.trusted("loop") is not None  # steps are skipping the digest check
        raw_kernel(r, "loop", LOOP_V2)
        info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.DONE
    assert px.result(chain) >= 3


def test_hot_patch_by_hset_of_the_source_alone_reaches_running_chains(r: redis.Redis) -> None:
    """docs/kernels.md allows ``HSET name source …``: the record keeps its old digest, so
    freshness must compare the source too, or VMs keep running the old code (issue 11,
    why 6)."""
    px = Pyrecks(r)
    px.store_kernel("loop", LOOP_V1)
    with px.local_vm(echo=False) as vm:
        chain = px.start("loop(0)")
        for entry in px.logs(chain, follow=True):
            if entry.step >= 3:
                break
        assert vm.watch.trusted("loop") is not None
        r.hset("loop", "source", LOOP_V2)
        info = px.wait(chain, timeout=30)
        assert info.status is ChainStatus.DONE
        # A chain started afterwards on the same VM runs the new source at once.
        assert px.wait(px.start("loop(7)"), timeout=30).status is ChainStatus.DONE
    assert px.result(chain) >= 3


def test_pure_steps_are_checkpointed_in_batches_and_still_fully_logged(r: redis.Redis) -> None:
    raw_kernel(r, "count_down", "def count_down(n: int):\n    print(n)\n    return 'count_down(%d)' % (n - 1) if n else 'return 0'\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False, checkpoint_steps=10, checkpoint_ms=60_000):
        info = px.wait(px.start("count_down(25)"), timeout=30)
    assert info.status is ChainStatus.DONE
    assert info.step == 26
    entries = list(px.logs(info.id))
    assert [e.text for e in entries if e.kind == "out"] == [str(n) for n in range(25, -1, -1)]
    assert [e.step for e in entries if e.kind == "step"] == list(range(1, 27))


def test_drained_chains_resume_before_newer_starts(r: redis.Redis) -> None:
    """A chain handed back by a drain used to go to the back of the starts stream and wait
    behind every start queued meanwhile (72 s behind 800 starts; issue 11, why 10)."""
    raw_kernel(
        r,
        "spin",
        "import time\ndef spin(n: int):\n    time.sleep(0.02)\n"
        "    return 'spin(%d)' % (n - 1) if n else 'return 0'\n",
    )
    raw_kernel(r, "quick", "def quick(n: int):\n    return 'return %d' % n\n")
    px = Pyrecks(r)
    fast = {"echo": False, "threads": 1, "isolation": "thread"}
    first = px.vm(name="drained", **fast).start()
    drained = px.start("spin(30)")
    for entry in px.logs(drained, follow=True):
        if entry.step >= 2:
            break
    newer = [px.start(f"quick({i})") for i in range(20)]  # queued while it runs
    first.stop()
    assert px.status(drained).status is ChainStatus.QUEUED
    with px.local_vm(name="successor", **fast):
        infos = [px.wait(c, timeout=30) for c in [drained, *newer]]
    assert all(i.status is ChainStatus.DONE for i in infos)
    finished = infos[0].finished or 0.0
    assert all((i.started or 0.0) >= finished for i in infos[1:])
