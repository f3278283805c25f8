"""Who holds a chain: entries a VM acknowledges, and owners Redis remembers but VMs forgot."""

from __future__ import annotations

import threading

import redis

from pyrecks.api import Pyrecks
from pyrecks.keys import Keyspace
from pyrecks.vm.chainrun import ChainRun, RedisAccess, Roster
from pyrecks.vm.chainstore import GROUP, ChainStore
from pyrecks.vm.config import VMConfig
from pyrecks.vm.consumer import StreamConsumer
from pyrecks.vm.machine import VM
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

KS = Keyspace()


def test_a_zombie_vm_does_not_acknowledge_an_entry_taken_over_from_it(r: redis.Redis) -> None:
    """VM A read a start, was stopped past its lease, and B took the entry over.  When A
    wakes its claim says "skip"; its ack must leave B's pending entry alone, or the chain
    would be stranded for good when B dies (issue 11, why 2)."""
    store = ChainStore(r, KS)
    consumer = StreamConsumer(
        store,
        RedisAccess(r, threading.Event(), lambda *line, **fields: None),
        VMConfig(name="vm-a", echo=False),
        Roster(),
        started=0.0,
    )
    consumer.ensure_group()
    entry = r.xadd(KS.starts, {"chain": "c"}).decode()
    r.xreadgroup(GROUP, "vm-a", {KS.starts: ">"})
    r.xautoclaim(KS.starts, GROUP, "vm-b", min_idle_time=0, start_id="0-0")
    consumer.ack(KS.starts, entry)
    pending = r.xpending_range(KS.starts, GROUP, "-", "+", 10)
    assert [(p["message_id"].decode(), p["consumer"].decode()) for p in pending] == [
        (entry, "vm-b")
    ]


def test_a_vm_gives_back_within_a_heartbeat_a_chain_redis_says_it_owns(
    r: redis.Redis,
) -> None:
    """After Redis lost the last second of its AOF, a living VM is the recorded owner of a
    chain it does not run: every takeover answered "alive" and the chain waited for that
    VM's restart (issue 11, why 4)."""
    raw_kernel(r, "inc", "def inc(n: int):\n    return 'return %d' % (n + 1)\n")
    px = Pyrecks(r)
    store = ChainStore(r, KS)
    fast = {"echo": False, "threads": 1, "isolation": "thread"}
    with px.local_vm(name="forgetful", lease=1.5, **fast) as owner:
        # What Redis remembers: the chain runs under "forgetful", and its start entry is
        # pending under a consumer that will never come back (read in one transaction with
        # the add, so that no living VM reads it first).
        store.create("c", "inc(1)", "1.0", enqueue=False).run()
        r.hset(KS.chain("c"), mapping={"status": "running", "owner": "forgetful", "epoch": "1"})
        pipe = r.pipeline(transaction=True)
        pipe.xadd(KS.starts, {"chain": "c"})
        pipe.xreadgroup(GROUP, "ghost", {KS.starts: ">"})
        pipe.execute()
        with px.local_vm(name="helper", lease=0.5, **fast):
            info = px.wait("c", timeout=20)
        assert owner.consumer.asked == ["c"]
    assert info.status is ChainStatus.DONE
    assert px.result("c") == 2


def test_a_start_delivered_again_after_redis_forgot_our_claim_is_not_acknowledged_away(
    r: redis.Redis,
) -> None:
    """The power-loss stranding (tests/test_chaos_smoke.py): VM x claimed a chain through a
    copy of its start on the resume stream; Redis then lost its last second — the copy, its
    delivery and the claim — so the chain is queued and its original start is delivered
    again, to x, which still runs the chain.  x used to acknowledge that start as a stale
    duplicate; its commit was then fenced and nothing named the chain any more."""
    raw_kernel(r, "inc", "def inc(n: int):\n    return 'return %d' % (n + 1)\n")
    px = Pyrecks(r)
    store = ChainStore(r, KS)
    vm = VM(r, KS, VMConfig(name="x", echo=False, threads=1, isolation="thread"))
    try:
        vm.consumer.ensure_group()
        store.create("c", "inc(1)", "1.0", enqueue=False).run()
        copy = r.xadd(KS.resumes, {"chain": "c"}).decode()
        r.xreadgroup(GROUP, "x", {KS.resumes: ">"})
        run = vm.committer.claim("c", copy, False, KS.resumes)
        assert isinstance(run, ChainRun)
        # The power loss: the copy, its delivery and the claim are gone.
        r.xack(KS.resumes, GROUP, copy)
        r.xdel(KS.resumes, copy)
        r.hset(KS.chain("c"), mapping={"status": "queued", "owner": "", "epoch": "0"})
        start = r.xadd(KS.starts, {"chain": "c"}).decode()
        r.xreadgroup(GROUP, "x", {KS.starts: ">"})
        vm._handle_entry(KS.starts, start, {"chain": "c"}, False)  # x runs c already
        vm._drive(run)  # x's commit is fenced: Redis has the chain queued
    finally:
        vm.executor.close()
    # Nothing stranded: the start went back to the queue at once, for any VM.
    assert r.xpending(KS.starts, GROUP)["pending"] == 0
    assert [f[b"chain"] for _id, f in r.xrange(KS.resumes)] == [b"c"]
    with px.local_vm(name="y", threads=1, isolation="thread", echo=False):
        assert px.wait("c", timeout=20).status is ChainStatus.DONE
    assert px.result("c") == 2


def test_a_vm_takes_up_entries_it_holds_but_forgot_within_a_heartbeat(r: redis.Redis) -> None:
    """After a power loss a VM can hold entries of chains it no longer runs (it finished
    them in the lost second: the ack is gone, and Redis has them running under it).  They
    used to wait a lease for a takeover, which then asked this VM; the heartbeat takes them
    up itself once they sit idle for two beats (entries of running chains never do)."""
    consumer = StreamConsumer(
        ChainStore(r, KS),
        RedisAccess(r, threading.Event(), lambda *line, **fields: None),
        VMConfig(name="vm-a", echo=False, lease=3.0),
        Roster(),
        started=0.0,
    )
    consumer.ensure_group()
    forgotten = r.xadd(KS.starts, {"chain": "old"}).decode()
    just_read = r.xadd(KS.starts, {"chain": "new"}).decode()
    r.xreadgroup(GROUP, "vm-a", {KS.starts: ">"})
    r.xclaim(KS.starts, GROUP, "vm-a", 0, [forgotten], idle=2500)  # two beats and more
    consumer.beat()
    assert consumer.leftovers() == [(KS.starts, forgotten, {"chain": "old"}, True)]
    assert just_read != forgotten


def test_a_start_of_a_chain_running_elsewhere_goes_to_its_owner_not_away(
    r: redis.Redis,
) -> None:
    """Redis forgot x's delivery of a start (power loss) and delivered it again, to y, while
    x runs the chain that start began.  y's claim finds the chain running; y used to
    acknowledge the entry — x's only one — and once Redis also lost x's last commits the
    chain was left running under a living owner with no entry: stranded for good."""
    store = ChainStore(r, KS)
    x = VM(r, KS, VMConfig(name="x", echo=False, threads=1, isolation="thread"))
    y = VM(r, KS, VMConfig(name="y", echo=False, threads=1, isolation="thread"))
    try:
        x.consumer.ensure_group()
        store.create("c", "inc(1)", "1.0", enqueue=False).run()
        start = r.xadd(KS.starts, {"chain": "c"}).decode()
        r.xreadgroup(GROUP, "x", {KS.starts: ">"})
        assert isinstance(x.committer.claim("c", start, False, KS.starts), ChainRun)
        r.xclaim(KS.starts, GROUP, "y", 0, [start])  # delivered again, to y
        y._handle_entry(KS.starts, start, {"chain": "c"}, False)
    finally:
        x.executor.close()
        y.executor.close()
    pending = r.xpending_range(KS.starts, GROUP, "-", "+", 10)
    assert [(p["message_id"].decode(), p["consumer"].decode()) for p in pending] == [
        (start, "x")
    ]
