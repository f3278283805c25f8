"""The outbox scripts (Redis Cluster's effects across slots) against a real Redis.

They run here on one server with a sharded keyspace — what a cluster VM uses — so each
script is checked by itself, quickly: every key it touches is declared (MONITOR, as in
tests/test_chainstore.py), a delivery applies at most once, the check mode writes nothing,
and a delivered step leaves the outbox.  tests/test_cluster.py runs them on a real cluster.
"""

from __future__ import annotations

import redis

from pyrecks.keys import Keyspace
from pyrecks.vm.chainstore import ChainStore, Commit, Fence, unpack_effects
from pyrecks.vm.outbox import by_slot
from tests.test_chainstore import NOW, touched

KS = Keyspace(shards=4)


def _running(store: ChainStore, r: redis.Redis, chain: str) -> None:
    store.create(chain, "f()", NOW, enqueue=True).run()
    r.hset(KS.chain(chain), mapping={"status": "running", "owner": "vm", "epoch": "1"})


def test_commit_records_owed_effects_and_applies_none(r: redis.Redis) -> None:
    store = ChainStore(r, KS)
    _running(store, r, "c1")
    effects = [[b"INCRBY", b"n:1", b"2"], [b"SET", b"{u}x", b"v"]]
    commit = Commit(Fence("vm", "1", "0"), NOW, ["step", "1"], [], effects)
    invocation = store.commit("c1", commit)
    keys = touched(r, lambda: invocation.run())
    assert keys <= set(invocation.keys)
    assert r.get("n:1") is None and r.get("{u}x") is None  # owed, not applied
    assert r.hget(KS.chain("c1"), "owed_step") == b"1"
    assert unpack_effects(r.hget(KS.chain("c1"), "owed")) == effects
    assert r.smembers(KS.for_chain("c1").outbox) == {b"c1"}


def test_apply_delivers_once_and_check_writes_nothing(r: redis.Redis) -> None:
    store = ChainStore(r, KS)
    group = [[b"INCRBY", b"n:2", b"5"], [b"HSET", b"n:2h", b"f", b"v"]]
    marker = f"{KS.applied('n:2')}c2:3"
    check = store.apply(marker, group, "check")
    assert check.run().status == "ok"
    assert r.get("n:2") is None and not r.exists(marker)
    apply = store.apply(marker, group, "apply")
    assert touched(r, lambda: apply.run()) <= set(apply.keys)
    assert apply.run().status == "applied"  # a second delivery changes nothing
    assert r.get("n:2") == b"5" and r.hget("n:2h", "f") == b"v"
    assert 0 < r.ttl(marker) <= store.retention


def test_apply_refuses_what_commit_refuses(r: redis.Redis) -> None:
    store = ChainStore(r, KS)
    r.hset("n:3", "f", "v")
    reply = store.apply(f"{KS.applied('n:3')}c3:1", [[b"INCRBY", b"n:3", b"1"]], "check").run()
    assert reply.status == "rejected" and "needs a string" in reply.text(0)
    internal = store.apply(f"{KS.applied('x')}c3:1", [[b"SET", b"pyrecks:x", b"1"]], "check")
    assert internal.run().status == "rejected"


def test_delivered_clears_only_the_step_it_names_and_wakes_waiters_at_the_end(
    r: redis.Redis,
) -> None:
    store = ChainStore(r, KS)
    _running(store, r, "c4")
    fields = ["step", "1", "status", "done"]
    commit = Commit(Fence("vm", "1", "0"), NOW, fields, [], [[b"SET", b"k4", b"1"]])
    commit.done = "None"
    assert store.commit("c4", commit).run().ok
    ended = KS.ended("c4")
    first = r.xrange(ended)
    stale = store.delivered("c4", "0")
    assert touched(r, lambda: stale.run()) <= set(stale.keys)
    assert r.hexists(KS.chain("c4"), "owed")  # another step's delivery: kept
    store.delivered("c4", "1").run()
    assert not r.hexists(KS.chain("c4"), "owed")
    assert r.smembers(KS.for_chain("c4").outbox) == set()
    assert len(r.xrange(ended)) == 1 and r.xrange(ended) != first  # a fresh end entry


def test_effects_are_grouped_by_slot_in_first_seen_order() -> None:
    effects = [[b"SET", b"{a}1", b"x"], [b"SET", b"b", b"y"], [b"SET", b"{a}2", b"z"]]
    assert by_slot(effects) == [[effects[0], effects[2]], [effects[1]]]


def test_the_next_commit_clears_a_delivered_step(r: redis.Redis) -> None:
    store = ChainStore(r, KS)
    _running(store, r, "c5")
    owing = Commit(Fence("vm", "1", "0"), NOW, ["step", "1"], [], [[b"SET", b"k5", b"1"]])
    assert store.commit("c5", owing).run().ok
    pure = Commit(Fence("vm", "1", "1"), NOW, ["step", "2"], [], delivered="1")
    assert store.commit("c5", pure).run().ok
    assert not r.hexists(KS.chain("c5"), "owed")
    assert r.smembers(KS.for_chain("c5").outbox) == set()
