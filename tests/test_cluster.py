"""pyrecks on a real Redis Cluster: 3 masters and 3 replicas that the fixture starts itself.

Every chain's kernel adds to counters whose keys spread over every master (so every step's
effects go through the outbox, see pyrecks/vm/outbox.py); whatever happens — a VM killed,
a slot moved, a master killed and its replica promoted — each chain must end and each
counter must equal exactly its expected value.  Then every CLI command, against the URL of
one node.  The tests share one cluster (forming it is the slow part); the failover test goes
last because it changes the topology.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from pyrecks.api import Pyrecks, connect
from pyrecks.testing.cluster import RedisClusterServer
from pyrecks.vm.records import ChainStatus
from tests.processes import VMProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
TICK = """
import time
def tick(p: str, i: int, left: int):
    time.sleep(0.002)
    if left == 0:
        return 'return %d' % i
    return 'tick("%s", %d, %d) INCRBY [("%s:c:%d", 1), ("%s:total", 1)]' % (
        p, i, left - 1, p, i, p)
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(masters=3, replicas=1) as formed:
        yield formed


@pytest.fixture(scope="module")
def px(cluster: RedisClusterServer) -> Pyrecks:
    handle = connect(cluster.url)
    handle.r.set("tick", textwrap.dedent(TICK).lstrip("\n"))  # the seed's way: a plain SET
    return handle


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.02)


def _start(px: Pyrecks, prefix: str, chains: int, steps: int = STEPS) -> list[str]:
    return [px.start(f'tick("{prefix}", {i}, {steps})') for i in range(chains)]


def _progress_past(px: Pyrecks, chain: str, step: int) -> None:
    _wait_until(lambda: px.status(chain).step >= step, 60, f"{chain} reaching step {step}")


def _unfinished(px: Pyrecks, chains: list[str]) -> int:
    return sum(not px.status(c).status.finished for c in chains)


def _check_exact(px: Pyrecks, prefix: str, chains: list[str], steps: int = STEPS) -> None:
    infos = [px.wait(c, timeout=60) for c in chains]
    assert [i.status for i in infos] == [ChainStatus.DONE] * len(chains)
    assert [px.result(c) for c in chains] == list(range(len(chains)))
    counts = [px.r.get(f"{prefix}:c:{i}") for i in range(len(chains))]
    assert [int(c or 0) for c in counts] == [steps] * len(chains)
    assert int(px.r.get(f"{prefix}:total") or 0) == steps * len(chains)
    # Every owed effect was delivered: no outbox entry is left behind.
    for shard in px.keyspace.every_shard():
        assert px.r.scard(shard.outbox) == 0


def test_effects_on_every_master_apply_exactly_once(
    cluster: RedisClusterServer, px: Pyrecks
) -> None:
    assert isinstance(px.r, redis.RedisCluster) and px.keyspace.sharded
    chains = _start(px, "spread", 24)
    with px.local_vm(echo=False, isolation="thread", threads=8):
        _check_exact(px, "spread", chains)
        # A raw XADD to any shard's starts stream starts a chain (no pyrecks client).
        last = px.keyspace.for_shard(px.keyspace.shards - 1)
        px.r.xadd(last.starts, {"call": 'tick("raw", 7, 2)', "id": "raw-start"})
        _wait_until(lambda: px.r.exists(px.keyspace.chain("raw-start")), 30, "the raw start")
        assert px.wait("raw-start", timeout=30).status is ChainStatus.DONE
    assert int(px.r.get("raw:c:7") or 0) == 2
    masters = {cluster.node_for_slot(px.r.keyslot(f"spread:c:{i}")).port for i in range(24)}
    assert masters == {m.port for m in cluster.masters_now()}


FAN = {
    "fan": """
def fan(p: str):
    branches = ", ".join('br(%d, "@%s:seed")' % (i, p) for i in range(3))
    return '[%s] -> total("@%s:b") SET [("%s:seed", 5)]' % (branches, p, p)
""",
    "br": """
def br(i: int, seed: int):
    return 'return %d INCRBY [("fan:b", 1)]' % (seed + i)
""",
    "total": """
def total(results: list[int], b: int):
    return 'return %d' % (sum(results) + 100 * b)
""",
}


def test_a_steps_remote_effects_land_before_every_step_after_it(px: Pyrecks) -> None:
    """The fan-out step's SET before the branches read it, the branches' INCRBYs before
    the join reads them, the last step's effects before wait() returns."""
    for name, source in FAN.items():
        px.store_kernel(name, source.lstrip("\n"))
    chains = [px.start('fan("fan")') for _ in range(4)]
    with px.local_vm(echo=False, isolation="thread", threads=8):
        infos = [px.wait(c, timeout=30) for c in chains]
        assert [i.status for i in infos] == [ChainStatus.DONE] * 4
        # Each join saw its own three branches' effects, and every earlier chain's.
        results = sorted(px.result(c) for c in chains)
        assert all(r >= 5 + 6 + 7 + 300 for r in results)
        assert int(px.r.get("fan:b") or 0) == 12


HOT = """
import time
def hot(left: int):
    time.sleep(0.005)
    if left == 0:
        return ''
    return 'hot(%d) INCRBY [("hot:VERSION", 1)]' % (left - 1)
"""


def test_a_hot_patch_reaches_running_chains_on_a_cluster(px: Pyrecks) -> None:
    """Kernel tracking watches every master: a new source is used from the next step."""
    px.store_kernel("hot", HOT.replace("VERSION", "v1").lstrip("\n"))
    chain = px.start("hot(300)")
    with px.local_vm(echo=False, isolation="thread", threads=2) as machine:
        _progress_past(px, chain, 3)
        assert machine.watch.trusted(px.keyspace.kernel("hot"))  # known without asking
        px.store_kernel("hot", HOT.replace("VERSION", "v2").lstrip("\n"))
        patched = int(px.r.get("hot:v1") or 0)
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE
    v1, v2 = int(px.r.get("hot:v1") or 0), int(px.r.get("hot:v2") or 0)
    assert v1 + v2 == 300 and v2 > 0
    assert v1 <= patched + 2  # the steps running as the patch landed, at most


def test_a_doomed_effect_fails_the_step_before_any_effect_applies(px: Pyrecks) -> None:
    px.r.hset("doomed:h", "f", "v")  # INCRBY on a hash cannot apply
    px.r.set(
        "doomed",
        "def doomed():\n    return 'INCRBY [(\"doomed:ok\", 1), (\"doomed:h\", 1)]'\n",
    )
    chain = px.start("doomed")
    with px.local_vm(echo=False, isolation="thread", threads=2):
        info = px.wait(chain, timeout=30)
    assert info.status is ChainStatus.FAILED and info.error_kind == "effect"
    assert "doomed:h" in (info.error or "")
    assert px.r.get("doomed:ok") is None  # checked in every slot before the commit


def test_inputs_in_other_slots_are_fenced_as_on_one_redis(px: Pyrecks) -> None:
    """On a cluster each @key is read by READ in its own slot: the same refusals as PREPARE
    (pyrecks keys, kernels) must hold there too."""
    px.r.set("peek", "def peek(x):\n    return 'return ' + repr(str(x)[:100])\n")
    px.r.set("open:doc", "readable")
    ks = px.keyspace
    victim = px.start('peek("secret")')
    with px.local_vm(echo=False, isolation="thread", threads=2):
        assert px.wait(victim, timeout=30).status is ChainStatus.DONE
        refused = [
            px.wait(px.start(f'peek("@{key}")'), timeout=30)
            for key in (ks.chain(victim), ks.results(victim), "tick")
        ]
        allowed = px.wait(px.start('peek("@open:doc")'), timeout=30)
    for info in refused:
        assert info.status is ChainStatus.FAILED and info.error_kind == "input", info.error
        assert "secret" not in repr(info.raw)
    assert allowed.status is ChainStatus.DONE and px.result(allowed.id) == "readable"


def test_a_killed_vm_process_loses_no_chain_and_applies_effects_once(
    cluster: RedisClusterServer, px: Pyrecks
) -> None:
    chains = _start(px, "kill", 40, steps=10)
    extra = ("--isolation", "thread")
    a = VMProcess(cluster.url, "cl-a", threads=4, lease=1.0, extra=extra)
    b = VMProcess(cluster.url, "cl-b", threads=4, lease=1.0, extra=extra)
    try:
        _wait_until(lambda: any(v.alive for v in px.vms() if v.name == "cl-a"), 30, "cl-a up")
        _progress_past(px, chains[0], 2)
        assert _unfinished(px, chains) > 0
        a.kill()  # mid-run: its chains are taken over after its lease
        _check_exact(px, "kill", chains, steps=10)
    finally:
        a.kill()
        b.kill()


def test_a_slot_migrated_while_chains_run(cluster: RedisClusterServer, px: Pyrecks) -> None:
    chains = _start(px, "move", 32, steps=20)
    with px.local_vm(echo=False, isolation="thread", threads=4):
        _progress_past(px, chains[0], 1)
        assert _unfinished(px, chains) > 0  # the slots move under running chains
        # The slot of the first chain's shard (its record, log, streams) and of a counter.
        shard_key = px.keyspace.chain(chains[0])
        for key in (shard_key, "move:total"):
            slot = px.r.keyslot(key)
            source = cluster.node_for_slot(slot)
            target = next(m for m in cluster.masters_now() if m is not source)
            cluster.migrate_slot(slot, target)
            assert cluster.node_for_slot(slot) is target
        _check_exact(px, "move", chains, steps=20)


def _pyrecks(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrecks", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "REDIS_URL": url},
        cwd=ROOT,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cli_chains(px: Pyrecks) -> dict[str, str]:
    """A done chain and a failed one (the cancel case starts its queued chain itself)."""
    px.r.set("boom", "def boom():\n    return 1 // 0\n")
    done, failed = px.start('tick("cli", 0, 2)'), px.start("boom")
    with px.local_vm(echo=False, isolation="thread", threads=2):
        px.wait(done, timeout=30)
        px.wait(failed, timeout=30)
    return {"done": done, "failed": failed, "queued": ""}


CLI_CASES: list[tuple[tuple[str, ...], str]] = [
    (("run", "--local", "--wait", 'tick("cli", 2, 1)'), ""),
    (("status", "{done}"), "done"),
    (("ls", "--limit", "500"), "{done}"),
    (("logs", "{done}"), "->"),
    (("tree", "{done}"), "tick"),
    (("vms",), ""),
    (("cancel", "{queued}"), ""),
    (("retry", "{failed}"), ""),
]


@pytest.mark.parametrize(("args", "shows"), CLI_CASES, ids=[c[0][0] for c in CLI_CASES])
def test_every_cli_command_works_against_a_cluster_node(
    cluster: RedisClusterServer,
    px: Pyrecks,
    cli_chains: dict[str, str],
    args: tuple[str, ...],
    shows: str,
) -> None:
    if args[0] == "cancel":  # queued now: the VM of "run --local" would have run it
        cli_chains["queued"] = px.start('tick("cli", 1, 1)')
    result = _pyrecks(cluster.url, *(a.format(**cli_chains) for a in args))
    assert result.returncode == 0, result.stderr
    assert shows.format(**cli_chains) in result.stdout
    if args[0] == "cancel":
        assert px.status(cli_chains["queued"]).status is ChainStatus.CANCELLED
    if args[0] == "retry":
        assert px.status(cli_chains["failed"]).status is ChainStatus.QUEUED
    if args[0] == "run":
        assert int(px.r.get("cli:c:2") or 0) == 1


def test_the_acl_roles_work_on_a_cluster(cluster: RedisClusterServer, px: Pyrecks) -> None:
    """The users ``pyrecks acl vm|client`` describes, on every node (ACLs are per node):
    the client starts and waits, the VM runs the chain and applies its effects."""
    from pyrecks.acl import setuser

    for node in cluster.live_nodes():
        for role in ("vm", "client"):
            node.client().execute_command(*shlex.split(setuser(role, f"px-{role}", "pw")))
    vm_px = connect(cluster.url.replace("redis://", "redis://px-vm:pw@"))
    client = connect(cluster.url.replace("redis://", "redis://px-client:pw@"))
    assert isinstance(client.r, redis.RedisCluster) and client.keyspace.sharded
    chain = client.start('tick("acl", 0, 2)')
    with vm_px.local_vm(echo=False, isolation="thread", threads=2) as vm:
        assert client.wait(chain, timeout=30).status is ChainStatus.DONE
        assert vm.watch.enabled  # tracking on every master under the VM role
    assert client.result(chain) == 0 and int(px.r.get("acl:c:0") or 0) == 2
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.r.get("acl:c:0")  # the client role reads no user data on a cluster either


def test_the_web_views_chain_list_reads_every_shard(
    px: Pyrecks, cli_chains: dict[str, str]
) -> None:
    from pyrecks.ui import queries

    page = queries.list_chains(px, per_page=500)
    ids = [c.id for c in page.chains]
    assert cli_chains["done"] in ids and "raw-start" in ids
    shards = {px.keyspace.shard_of(i) for i in ids}
    assert len(shards) > 1  # the list merges the indexes of several shards …
    created = [c.created for c in page.chains]
    assert created == sorted(created, reverse=True)  # … newest first


def test_a_master_killed_and_its_replica_promoted(
    cluster: RedisClusterServer, px: Pyrecks
) -> None:
    chains = _start(px, "failover", 32, steps=20)
    with px.local_vm(echo=False, isolation="thread", threads=4):
        _progress_past(px, chains[0], 1)
        assert _unfinished(px, chains) > 0  # the master dies under running chains
        victim = cluster.node_for_slot(px.r.keyslot(px.keyspace.chain(chains[0])))
        promoted = cluster.kill_master_and_wait_for_failover(victim)
        assert cluster.node_for_slot(px.r.keyslot(px.keyspace.chain(chains[0]))) is promoted
        _check_exact(px, "failover", chains, steps=20)


def test_quick_chaos_soak_on_a_cluster_with_every_fault_kind() -> None:
    """bench/chaos.py's mixed phase on a cluster of its own: VMs killed and stopped past
    their lease, SCRIPT FLUSH storms, masters killed and failed over, all at once."""
    from bench.chaos import Options, Phase, format_notes, format_table

    opts = Options(vms=2, chains=60, duration=8.0, interval=1.5, lease=1.0, threads=4,
                   recovery=20.0, verbose=False, cluster=True)
    row = Phase("mixed", opts, seed=13).run()
    report = f"\n{format_table([row])}\n{format_notes([row])}"
    assert row.count > 0 and row.chains == opts.chains, report
    assert (row.lost, row.duplicated, row.failed, row.stuck) == (0, 0, 0, 0), report
    assert row.starts_lost == 0 and row.vm_errors == 0, report
