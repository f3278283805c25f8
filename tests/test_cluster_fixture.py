"""The local Redis Cluster that cluster tests and benchmarks stand on.

Checked against its promises: six nodes formed without redis-cli, keys spread over every
master, a slot moved with its keys while a client keeps reading (ASK, then MOVED), and a
killed master replaced by its replica with acknowledged writes intact.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyrecks.testing.cluster import RedisClusterServer


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(masters=3, replicas=1) as formed:
        yield formed


@pytest.mark.slow
def test_cluster_forms_moves_a_slot_and_fails_over(cluster: RedisClusterServer) -> None:
    rc = cluster.client()
    keys = [f"k{i}" for i in range(300)]
    for i, key in enumerate(keys):
        rc.set(key, i)
    owners = {cluster.node_for_slot(rc.keyslot(k)).port for k in keys}
    assert owners == {m.port for m in cluster.masters_now()} and len(owners) == 3

    slot = rc.keyslot("k1")
    source = cluster.node_for_slot(slot)
    target = next(m for m in cluster.masters_now() if m is not source)
    cluster.migrate_slot(slot, target)
    assert cluster.node_for_slot(slot) is target
    assert rc.get("k1") == b"1"  # the client followed MOVED to the new owner

    victim = cluster.node_for_slot(rc.keyslot("k2"))
    direct = victim.client()  # WAIT counts this connection's own writes
    direct.set("k2", "acknowledged")
    # WAIT: the write reached the replica, so it must survive the failover.
    assert direct.execute_command("WAIT", 1, 5000) == 1
    promoted = cluster.kill_master_and_wait_for_failover(victim)
    assert promoted is not victim and cluster.node_for_slot(rc.keyslot("k2")) is promoted
    fresh = cluster.client()
    assert fresh.get("k2") == b"acknowledged"
    assert [int(fresh.get(k)) for k in keys[3:50]] == list(range(3, 50))
