"""Housekeeping: what a VM trims and prunes under the retention knobs (issue 11, why 10)."""

from __future__ import annotations

import json
import threading
import time

import redis

from pyrecks.keys import Keyspace
from pyrecks.vm.chainrun import RedisAccess, Roster
from pyrecks.vm.chainstore import GROUP, ChainStore
from pyrecks.vm.config import VMConfig
from pyrecks.vm.consumer import StreamConsumer

KS = Keyspace()


def _consumer(r: redis.Redis, **config: object) -> StreamConsumer:
    settings = VMConfig(name="vm-a", echo=False, **config)  # type: ignore[arg-type]
    access = RedisAccess(r, threading.Event(), lambda *line, **fields: None)
    consumer = StreamConsumer(ChainStore(r, KS), access, settings, Roster(), started=0.0)
    consumer.ensure_group()
    return consumer


def test_the_starts_stream_keeps_only_what_is_pending_undelivered_or_recent(
    r: redis.Redis,
) -> None:
    consumer = _consumer(r, stream_retention=60.0)
    # Entries from long ago (ids are milliseconds since the epoch): past the retention.
    ids = [r.xadd(KS.starts, {"chain": f"c{i}"}, id=f"{i + 1}-0").decode() for i in range(3)]
    r.xreadgroup(GROUP, "dead-vm", {KS.starts: ">"})
    r.xack(KS.starts, GROUP, ids[0], ids[1])
    undelivered = r.xadd(KS.starts, {"chain": "c3"}, id="4-0").decode()
    assert consumer.housekeep()["entries"] == 2
    assert [e[0].decode() for e in r.xrange(KS.starts)] == [ids[2], undelivered]
    # The pending entry is still there for a takeover.
    taken = r.xautoclaim(KS.starts, GROUP, "vm-b", min_idle_time=0, start_id="0-0")
    assert [e[0].decode() for e in taken[1]] == [ids[2]]


def test_recent_acknowledged_entries_are_kept_for_the_stream_retention(
    r: redis.Redis,
) -> None:
    consumer = _consumer(r, stream_retention=3600.0)
    entry = r.xadd(KS.starts, {"chain": "c"}).decode()
    r.xreadgroup(GROUP, "vm-b", {KS.starts: ">"})
    r.xack(KS.starts, GROUP, entry)
    assert consumer.housekeep()["entries"] == 0
    assert r.xlen(KS.starts) == 1


def test_dead_vms_and_expired_chain_ids_are_pruned(r: redis.Redis) -> None:
    consumer = _consumer(r, retention=100)
    r.xgroup_createconsumer(KS.starts, GROUP, "gone-vm")
    r.xgroup_createconsumer(KS.starts, GROUP, "live-vm")
    r.set(KS.vm("live-vm"), "{}")
    r.xadd(KS.starts, {"chain": "held"})
    r.xreadgroup(GROUP, "holding-vm", {KS.starts: ">"})  # dead, but still holds an entry
    now = time.time()
    r.hset(
        KS.vms,
        mapping={"old-vm": json.dumps({"beat": now - 1000}), "new-vm": json.dumps({"beat": now})},
    )
    r.zadd(KS.chains, {"expired": now - 1000, "kept": now - 1000, "recent": now})
    r.hset(KS.chain("kept"), "status", "running")
    r.zadd(KS.failed, {"expired-failure": now - 1000})
    done = consumer.housekeep()
    assert (done["consumers"], done["vms"], done["ids"]) == (1, 1, 2)
    names = {c["name"].decode() for c in r.xinfo_consumers(KS.starts, GROUP)}
    assert names == {"live-vm", "holding-vm"}
    assert set(r.hkeys(KS.vms)) == {b"new-vm"}
    assert r.zrange(KS.chains, 0, -1) == [b"kept", b"recent"]
    assert r.zcard(KS.failed) == 0
