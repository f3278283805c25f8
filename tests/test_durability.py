"""Fault tests: real VM processes, real Redis, kill -9, zombies and Redis restarts.

Every chain's kernel applies counting effects; whatever dies when, each chain must end and
each counter must equal exactly its expected value (effects apply once per step).
"""

from __future__ import annotations

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.processes import VMProcess, vms, wait_for_expiry
from tests.vm_helpers import raw_kernel

pytestmark = pytest.mark.slow

STEPS = 8
TICK = """
import time
def tick(i: int, left: int):
    time.sleep(0.003)
    if left == 0:
        return 'return %d' % i
    return 'tick(%d, %d) INCRBY [("c:%d", 1), ("total", 1)]' % (i, left - 1, i)
"""


def _start(r: redis.Redis, chains: int) -> tuple[Pyrecks, list[str]]:
    raw_kernel(r, "tick", TICK)
    px = Pyrecks(r)
    return px, [px.start(f"tick({i}, {STEPS})") for i in range(chains)]


def _progress_past(px: Pyrecks, chain: str, step: int) -> None:
    for entry in px.logs(chain, follow=True):
        if entry.step >= step:
            return


def _check_exact(r: redis.Redis, px: Pyrecks, chains: list[str]) -> None:
    infos = [px.wait(c, timeout=120) for c in chains]
    assert [i.status for i in infos] == [ChainStatus.DONE] * len(chains)
    assert [px.result(c) for c in chains] == list(range(len(chains)))
    counts = r.mget([f"c:{i}" for i in range(len(chains))])
    assert [int(c or 0) for c in counts] == [STEPS] * len(chains)
    assert int(r.get("total") or 0) == STEPS * len(chains)


def test_a_killed_vm_and_a_zombie_vm_lose_no_chain_and_apply_effects_once(
    r: redis.Redis, redis_url: str
) -> None:
    px, chains = _start(r, 300)
    with vms(redis_url, 3, threads=4, lease=1.0) as (a, b, c):
        _progress_past(px, chains[0], 2)
        a.kill()  # mid-run: its chains are taken over after its lease
        b.pause()  # a zombie: presumed dead once its heartbeat key expires …
        wait_for_expiry(r, "pyrecks:vm:vm-1")
        wait_for_expiry(r, "pyrecks:vm:vm-0")
        _progress_past(px, chains[-1], 1)
        b.resume()  # … comes back and must not commit its stale steps
        _check_exact(r, px, chains)
    assert c.process.poll() is None or c.process.returncode is not None


def test_a_vm_restarted_under_the_same_name_resumes_its_chains(
    r: redis.Redis, redis_url: str
) -> None:
    px, chains = _start(r, 40)
    first = VMProcess(redis_url, "steady", threads=4, lease=30.0)
    try:
        _progress_past(px, chains[0], 2)
        first.kill()
    finally:
        first.kill()
    # A long lease: nobody else may take over, but the same name resumes at once.
    again = VMProcess(redis_url, "steady", threads=4, lease=30.0)
    try:
        _check_exact(r, px, chains)
    finally:
        again.kill()


def test_redis_restart_mid_run_with_aof_loses_no_chain(redis_factory) -> None:  # type: ignore[no-untyped-def]
    server = redis_factory(appendonly=True)
    r = server.client()
    px, chains = _start(r, 150)
    with vms(server.url, 2, threads=4, lease=2.0):
        _progress_past(px, chains[0], 2)
        server.kill()  # kill -9 Redis; appendfsync always keeps every acknowledged write
        server.start()
        r = server.client()
        px = Pyrecks(r)
        _check_exact(r, px, chains)


def test_graceful_drain_hands_chains_back_and_another_vm_finishes_them(
    r: redis.Redis, redis_url: str
) -> None:
    px, chains = _start(r, 60)
    first = VMProcess(redis_url, "drainer", threads=4, lease=30.0)
    try:
        _progress_past(px, chains[0], 2)
        first.interrupt()  # Ctrl-C
    finally:
        first.kill()
    assert first.process.returncode == 0
    with vms(redis_url, 1, threads=4, lease=30.0):
        _check_exact(r, px, chains)


def test_sigterm_drains_like_ctrl_c(r: redis.Redis, redis_url: str) -> None:
    import signal

    px, chains = _start(r, 30)
    first = VMProcess(redis_url, "terminated", threads=4, lease=30.0)
    try:
        _progress_past(px, chains[0], 2)
        first.process.send_signal(signal.SIGTERM)
        first.process.wait(timeout=60)
    finally:
        first.kill()
    assert first.process.returncode == 0
    # Handed back, not orphaned: another VM finishes them at once (no lease to wait out).
    with vms(redis_url, 1, threads=4, lease=30.0):
        _check_exact(r, px, chains)


MIXED = """
def mixed(i: int, n: int):
    # Pure steps, with an effect every fifth step: a crash re-runs the pure steps after
    # the last checkpoint, and the effects must still land exactly once.
    if n == 0:
        return 'return %d' % i
    if n % 5 == 0:
        return 'mixed(%d, %d) INCRBY [("m:%d", 1)]' % (i, n - 1, i)
    return 'mixed(%d, %d)' % (i, n - 1)
"""


def test_pure_steps_skipped_by_checkpointing_are_rerun_after_a_crash(
    r: redis.Redis, redis_url: str
) -> None:
    raw_kernel(r, "mixed", MIXED)
    px = Pyrecks(r)
    chains = [px.start(f"mixed({i}, 400)") for i in range(20)]
    first = VMProcess(redis_url, "mixer", threads=4, lease=30.0)
    try:
        _progress_past(px, chains[0], 30)
        first.kill()
    finally:
        first.kill()
    again = VMProcess(redis_url, "mixer", threads=4, lease=30.0)
    try:
        infos = [px.wait(c, timeout=120) for c in chains]
    finally:
        again.kill()
    assert all(i.status is ChainStatus.DONE for i in infos)
    assert [int(v or 0) for v in r.mget([f"m:{i}" for i in range(20)])] == [80] * 20


def _wait_for_first_beat(r: redis.Redis, name: str) -> None:
    """Block until VM ``name`` wrote its record in ``pyrecks:vms`` (keyspace events)."""
    r.config_set("notify-keyspace-events", "Kh")
    pubsub = r.pubsub()
    pubsub.subscribe("__keyspace@0__:pyrecks:vms")
    try:
        for _ in range(120):
            if r.hexists("pyrecks:vms", name):
                return
            pubsub.get_message(timeout=0.5)
        raise TimeoutError(f"VM {name} never beat")
    finally:
        pubsub.close()


def _blocked_readers(r: redis.Redis) -> int:
    return sum(1 for c in r.client_list() if c.get("cmd") == "xreadgroup" and "b" in c["flags"])


def test_a_zombie_woken_with_a_start_in_hand_does_not_strand_its_chain(
    r: redis.Redis, redis_url: str
) -> None:
    """VM A is stopped while blocked in XREADGROUP and the read hands it a start; VM B takes
    the entry over after A's lease; A wakes, its claim says "skip", and A used to XACK B's
    pending entry — when B then died nothing was pending and the chain stayed stranded
    (issue 11, why 2)."""
    from pyrecks.keys import Keyspace
    from pyrecks.vm.chainstore import GROUP

    ks = Keyspace()
    raw_kernel(
        r,
        "spin",
        "import time\ndef spin(n: int):\n    time.sleep(0.05)\n"
        "    return 'spin(%d)' % (n - 1) if n else 'return 0'\n",
    )
    px = Pyrecks(r)
    zombie = VMProcess(redis_url, "zombie", threads=1, lease=1.0)
    rescuer = None
    try:
        _wait_for_first_beat(r, "zombie")
        for _ in range(200):  # stop A while Redis holds its read blocked (block_ms 500)
            zombie.pause()
            if _blocked_readers(r):
                chain = px.start("spin(60)")
                break
            zombie.resume()
            px.r.ping()
        else:
            pytest.fail("the VM never blocked in XREADGROUP")
        (held,) = r.xpending_range(ks.starts, GROUP, "-", "+", 10)
        assert held["consumer"] == b"zombie"  # delivered to the stopped VM
        rescuer = VMProcess(redis_url, "rescuer", threads=1, lease=1.0)
        wait_for_expiry(r, ks.vm("zombie"))
        _progress_past(px, chain, 2)  # the rescuer took the entry over and runs the chain
        assert px.status(chain).owner == "rescuer"
        zombie.resume()  # wakes with the start in hand: claim says skip; it must not ack
        _progress_past(px, chain, px.status(chain).step + 2)
        assert [p["consumer"] for p in r.xpending_range(ks.starts, GROUP, "-", "+", 10)] == [
            b"rescuer"
        ]
        rescuer.kill()  # … and the zombie, alive again, must take the chain over
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE
    finally:
        zombie.resume()
        zombie.kill()
        if rescuer is not None:
            rescuer.kill()
