"""Prometheus metrics: ``pyrecks vm --metrics-port N`` scraped over HTTP (a real VM process and
a real Redis), per-VM registries, and the queue depth read on the heartbeat."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from pyrecks.api import Pyrecks
from pyrecks.observe.metrics import Metrics
from pyrecks.testing.server import free_port
from pyrecks.vm.chainstore import GROUP
from pyrecks.vm.machine import VM, VMConfig
from pyrecks.vm.records import ChainStatus
from tests.processes import VMProcess
from tests.vm_helpers import raw_kernel

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        return parse(reply.read().decode())


def scrape_when(port: int, ready: Any, timeout: float = 30.0) -> Samples:
    """Scrape until ``ready(samples)`` (the heartbeat refreshes some values every lease/3)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples = scrape(port)
        except OSError:  # not listening yet
            samples = {}
        if samples and ready(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got ready: {sorted(samples)[:20]}")
        time.sleep(0.1)


def store_kernels(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "hop",
        "def hop(n: int):\n    if n == 0:\n        return 'return 0'\n    return 'hop(%d)' % (n - 1)\n",
    )
    raw_kernel(r, "split", "def split():\n    return '[leaf(1), leaf(2), leaf(3)] -> total()'\n")
    raw_kernel(r, "leaf", "def leaf(n: int):\n    return 'return %d' % n\n")
    raw_kernel(
        r,
        "total",
        "def total(results: list):\n    return 'SET [(\"m:total\", %d)]' % sum(results)\n",
    )
    raw_kernel(r, "boom", "def boom():\n    return 1 // 0\n")


def test_a_vm_serves_metrics_of_steps_chains_commits_queue_cells_and_redis(
    redis_url: str, r: redis.Redis
) -> None:
    store_kernels(r)
    px = Pyrecks(r)
    port = free_port()
    vm = VMProcess(redis_url, "vm-metrics", extra=("--metrics-port", str(port)))
    try:
        chains = [px.start("hop(3)"), px.start("split"), px.start("boom")]
        infos = [px.wait(chain, timeout=60) for chain in chains]
        assert [i.status for i in infos] == [
            ChainStatus.DONE,
            ChainStatus.DONE,
            ChainStatus.FAILED,
        ]
        assert r.get("m:total") == b"6"

        def settled(samples: Samples) -> bool:
            # After every chain left the VM, and a heartbeat since the last of them.
            return (
                value(samples, "pyrecks_stream_length", stream="pyrecks:starts") >= 3
                and value(samples, "pyrecks_chains_running") == 0
                and value(samples, "pyrecks_chains_failed_total", kernel="boom", error_kind="kernel_error") == 1
                and value(samples, "pyrecks_queue_pending", stream="pyrecks:starts") == 0
                and value(samples, "pyrecks_queue_pending", stream="pyrecks:resume") == 0
            )

        samples = scrape_when(port, settled)
    finally:
        vm.interrupt()

    def steps(kernel: str, outcome: str = "ok") -> float:
        return value(samples, "pyrecks_steps_total", kernel=kernel, outcome=outcome)

    # Steps by kernel and outcome, and their durations.
    assert steps("hop") == 4
    assert steps("split") == 1 and steps("leaf") == 3 and steps("total") == 1
    assert steps("boom", "kernel_error") == 1
    assert value(samples, "pyrecks_step_duration_seconds_count", kernel="hop") == 4
    assert value(samples, "pyrecks_step_duration_seconds_sum", kernel="hop") > 0
    assert value(samples, "pyrecks_step_duration_seconds_bucket", kernel="hop", le="+Inf") == 4
    # Chains: started (branches are chains too), finished, failed with their error kind.
    for kernel, started in (("hop", 1), ("split", 1), ("leaf", 3), ("boom", 1)):
        assert value(samples, "pyrecks_chains_started_total", kernel=kernel) == started
    assert value(samples, "pyrecks_chains_finished_total", kernel="hop") == 1
    assert value(samples, "pyrecks_chains_finished_total", kernel="leaf") == 3
    assert value(samples, "pyrecks_chains_finished_total", kernel="total") == 1
    assert value(samples, "pyrecks_chains_failed_total", kernel="boom", error_kind="kernel_error") == 1
    assert value(samples, "pyrecks_fanouts_total", kernel="split") == 1
    assert value(samples, "pyrecks_chains_running") == 0
    # Commits: every chain committed at least its end or its failure.
    assert value(samples, "pyrecks_commit_batch_size_count") >= 3
    assert value(samples, "pyrecks_commit_batch_size_sum") >= value(
        samples, "pyrecks_commit_batch_size_count"
    )
    # The queue and Redis, read on the heartbeat.
    assert value(samples, "pyrecks_stream_length", stream="pyrecks:starts") >= 3
    assert value(samples, "pyrecks_queue_lag", stream="pyrecks:starts") == 0
    assert value(samples, "pyrecks_redis_round_trip_seconds") > 0
    assert value(samples, "pyrecks_heartbeats_total") >= 1
    # The jail: one cell per kernel (five kernels), idle between steps.
    assert value(samples, "pyrecks_jail_cells_started_total") >= 5
    live = value(samples, "pyrecks_jail_cells", state="live")
    assert live == value(samples, "pyrecks_jail_cells_started_total") - value(
        samples, "pyrecks_jail_cells_retired_total"
    )
    assert 1 <= value(samples, "pyrecks_jail_cells", state="idle") <= live
    # Which VM this is, and the process it runs in.
    info = [k for k in samples if k[0] == "pyrecks_vm_info"]
    assert len(info) == 1 and ("vm", "vm-metrics") in info[0][1]
    assert value(samples, "process_cpu_seconds_total") > 0


def test_metrics_port_already_taken_is_refused_with_the_fix(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "pyrecks", "vm", "--quiet", "--metrics-port", str(port)],
            env={**os.environ, "REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "--metrics-port" in done.stderr


def test_queue_depth_counts_starts_no_vm_has_read(r: redis.Redis) -> None:
    px = Pyrecks(r)
    ks = px.keyspace
    for stream in (ks.resumes, ks.starts):
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(3):
        px.start(f"hop({i})")
    r.xreadgroup(GROUP, "someone", {ks.starts: ">"}, count=1)  # one read, not acknowledged
    metrics = Metrics("vm-q")
    metrics.heartbeat(r, (ks.resumes, ks.starts), GROUP)
    samples = parse(metrics.exposition())
    assert value(samples, "pyrecks_queue_lag", stream=ks.starts) == 2
    assert value(samples, "pyrecks_queue_pending", stream=ks.starts) == 1
    assert value(samples, "pyrecks_stream_length", stream=ks.starts) == 3
    assert value(samples, "pyrecks_queue_lag", stream=ks.resumes) == 0
    assert value(samples, "pyrecks_redis_round_trip_seconds") > 0


def test_several_vms_in_one_process_keep_their_own_metrics(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "hop",
        "def hop(n: int):\n    if n == 0:\n        return 'return 0'\n    return 'hop(%d)' % (n - 1)\n",
    )
    px = Pyrecks(r)
    meters = [Metrics(f"vm-{i}", "thread") for i in range(2)]
    machines = [
        VM(r, px.keyspace, VMConfig(name=f"vm-{i}", echo=False, isolation="thread", threads=2))
        .observe(meters[i])
        .start()
        for i in range(2)
    ]
    try:
        chains = [px.start("hop(4)") for _ in range(8)]
        assert all(px.wait(c, timeout=60).status is ChainStatus.DONE for c in chains)
    finally:
        for machine in machines:
            machine.stop()
    scraped = [parse(m.exposition()) for m in meters]
    names = [next(k for k in s if k[0] == "pyrecks_vm_info")[1] for s in scraped]
    assert ("vm", "vm-0") in names[0] and ("vm", "vm-1") in names[1]
    per_vm = [value(s, "pyrecks_steps_total", kernel="hop", outcome="ok") for s in scraped]
    assert sum(per_vm) == 8 * 5
    started = [value(s, "pyrecks_chains_started_total", kernel="hop") for s in scraped]
    assert sum(started) == 8
    # No process-wide registry is touched: the default one has no pyrecks metric.
    from prometheus_client import REGISTRY

    assert not [m for m in REGISTRY.collect() if m.name.startswith("pyrecks")]


def test_an_observer_that_raises_never_fails_a_chain(r: redis.Redis) -> None:
    from pyrecks.observe import Observer

    class Broken(Observer):
        def step_started(self, run: Any) -> None:
            raise RuntimeError("observer bug")

        def fanout_trace(self, run: Any) -> str:
            raise RuntimeError("observer bug")

    raw_kernel(r, "fan", "def fan():\n    return '[leaf(1), leaf(2)] -> sum_of()'\n")
    raw_kernel(r, "leaf", "def leaf(n: int):\n    return 'return %d' % n\n")
    raw_kernel(r, "sum_of", "def sum_of(results: list):\n    return 'return %d' % sum(results)\n")
    px = Pyrecks(r)
    metrics = Metrics("vm-b", "thread")
    machine = VM(r, px.keyspace, VMConfig(name="vm-b", echo=False, isolation="thread"))
    machine.observe(Broken(), metrics).start()
    try:
        chain = px.start("fan")
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE
    finally:
        machine.stop()
    assert px.result(chain) == 3
    # The other subscriber still saw every step.
    samples = parse(metrics.exposition())
    assert value(samples, "pyrecks_steps_total", kernel="leaf", outcome="ok") == 2
