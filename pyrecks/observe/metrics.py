"""Prometheus metrics of one VM (``pyrecks vm --metrics-port N``; docs/observability.md).

Each VM has its own :class:`~prometheus_client.CollectorRegistry` — never the process-wide
default — so several VMs in one process (tests, ``Pyrecks.local_vm``) keep apart.  The hot
path stays cheap: a step is tallied in plain dictionaries of the thread that ran it (no
lock, about a microsecond) and summed only when Prometheus scrapes; everything that needs
Redis (queue depth, round-trip time) is read on the heartbeat, never per step.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pyrecks import __version__
from pyrecks.compiler.instructions import Call, FanOut
from pyrecks.observe import Observer, RunView

#: Step durations run from ~50 us (a pure step in a warm thread sandbox) to the 30 s
#: default time limit and beyond.
STEP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Commits per round trip: 1 when few chains run (pipelined), up to the group commit's 256.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics(Observer):
    """The metrics of one VM, in a registry of their own (see the table in the docs)."""

    def __init__(
        self,
        vm: str = "",
        isolation: str = "",
        *,
        registry: CollectorRegistry | None = None,
        process: bool = False,
    ) -> None:
        self.registry = reg = registry if registry is not None else CollectorRegistry()
        if process:  # what the default registry has: process CPU/memory/fds, GC, platform
            from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                reg.register(collector)
        self.info = Info("pyrecks_vm", "This VM: name, isolation, pyrecks version.", registry=reg)
        self.info.info({"vm": vm, "isolation": isolation, "version": __version__})
        # Steps and their durations are the hot path: tallied per thread without locks, and
        # read by a collector at scrape time (see _StepTally).
        self._tallies: dict[int, _StepTally] = {}
        reg.register(_StepCollector(self._tallies))
        self.started = Counter(
            "pyrecks_chains_started",
            "Chains (fan-out branches included) whose first step began here, by kernel.",
            ["kernel"],
            registry=reg,
        )
        self.finished = Counter(
            "pyrecks_chains_finished",
            "Chains that ended done here, by the kernel of their last step.",
            ["kernel"],
            registry=reg,
        )
        self.failed = Counter(
            "pyrecks_chains_failed",
            "Chains whose failure this VM recorded, by failing kernel and error kind.",
            ["kernel", "error_kind"],
            registry=reg,
        )
        self.fanouts = Counter(
            "pyrecks_fanouts",
            "Fan-out steps committed here, by kernel.",
            ["kernel"],
            registry=reg,
        )
        self._running: set[str] = set()
        self.running = Gauge("pyrecks_chains_running", "Chains this VM runs now.", registry=reg)
        self.running.set_function(lambda: len(self._running))
        self.batches = Histogram(
            "pyrecks_commit_batch_size",
            "Fenced scripts (step commits, failures, hand-backs) sent per Redis round trip.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.lag = Gauge(
            "pyrecks_queue_lag",
            "Entries of the stream no VM has read yet (the consumer group's lag), on the "
            "last heartbeat.",
            ["stream"],
            registry=reg,
        )
        self.pending = Gauge(
            "pyrecks_queue_pending",
            "Entries read by some VM and not yet acknowledged (chains running or "
            "waiting to be taken over), on the last heartbeat.",
            ["stream"],
            registry=reg,
        )
        self.length = Gauge(
            "pyrecks_stream_length",
            "Entries in the stream (XLEN), on the last heartbeat.",
            ["stream"],
            registry=reg,
        )
        self.rtt = Gauge(
            "pyrecks_redis_round_trip_seconds",
            "Time of one PING to Redis, measured on the last heartbeat.",
            registry=reg,
        )
        self.heartbeats = Counter(
            "pyrecks_heartbeats", "Heartbeats this VM completed.", registry=reg
        )
        self._cells_started = 0
        self._cells_retired = 0
        self.cells_started = Counter(
            "pyrecks_jail_cells_started", "Jail cells forked.", registry=reg
        )
        self.cells_retired = Counter(
            "pyrecks_jail_cells_retired",
            "Jail cells killed: past their deadline or memory, crashed, evicted, idle too long.",
            registry=reg,
        )
        self.cell_count = Gauge(
            "pyrecks_jail_cells",
            "Jail cells now: live (busy or idle) and idle (stopped, waiting for a step).",
            ["state"],
            registry=reg,
        )
        self.cell_count.labels("live").set_function(
            lambda: self._cells_started - self._cells_retired
        )
        self._idle = self.cell_count.labels("idle")
        self._idle.set(0)
        # Steps in progress: chain id -> (start, kernel).  One step per chain at a time.
        self._open: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()  # the cell counts are bumped from several threads
        self._server: Any = None
        self._server_thread: threading.Thread | None = None

    # -- serving ----------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: any free port); the port."""
        self._server, self._server_thread = start_http_server(port, host, self.registry)
        return int(self._server.server_port)

    def exposition(self) -> str:
        """The metrics as Prometheus' text format (what a scrape returns)."""
        return generate_latest(self.registry).decode("utf-8")

    def vm_stopped(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- steps ------------------------------------------------------------------------------

    def step_started(self, run: RunView) -> None:
        kernel = run.call.name
        self._open[run.id] = (time.perf_counter(), kernel)
        if run.step == 0 and run.attempts == 0 and run.epoch == "1":
            self.started.labels(kernel).inc()

    def step_finished(self, run: RunView, outcome: str, transition: Any = None) -> None:
        opened = self._open.pop(run.id, None)
        if opened is None:
            return
        started, kernel = opened
        elapsed = time.perf_counter() - started
        tally = self._tallies.get(threading.get_ident())
        if tally is None:
            tally = self._tallies.setdefault(threading.get_ident(), _StepTally())
        key = (kernel, outcome)
        tally.steps[key] = tally.steps.get(key, 0) + 1
        counts = tally.durations.get(kernel)
        if counts is None:
            counts = tally.durations[kernel] = [0] * (len(STEP_BUCKETS) + 1)
            tally.seconds[kernel] = 0.0
        counts[bisect_left(STEP_BUCKETS, elapsed)] += 1
        tally.seconds[kernel] += elapsed
        if transition is not None:
            then = transition.then
            if isinstance(then, FanOut):
                self.fanouts.labels(kernel).inc()
            elif not isinstance(then, Call):
                self.finished.labels(kernel).inc()

    # -- chains -----------------------------------------------------------------------------

    def chain_claimed(self, run: RunView, trace: str, trace_join: str) -> None:
        self._running.add(run.id)

    def chain_failed(self, run: RunView, kind: str) -> None:
        # A step still open failed with the chain (a kernel that ignored its time limit).
        self.step_finished(run, kind)
        self.failed.labels(run.call.name, kind).inc()

    def chain_left(self, run: RunView) -> None:
        self.step_finished(run, "interrupted")  # only if a step was still open
        self._running.discard(run.id)

    # -- around them ----------------------------------------------------------------------

    def commit_batch(self, size: int) -> None:
        self.batches.observe(size)

    def heartbeat(self, r: Any, streams: Sequence[str], group: str) -> None:
        started = time.perf_counter()
        r.ping()
        self.rtt.set(time.perf_counter() - started)
        pipe = r.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        replies = pipe.execute(raise_on_error=False)
        for i, stream in enumerate(streams):
            length, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, int):
                self.length.labels(stream).set(length)
            for g in groups if isinstance(groups, list) else []:
                if _text(g.get("name")) != group:
                    continue
                self.pending.labels(stream).set(int(g.get("pending") or 0))
                lag = g.get("lag")
                if lag is not None:  # nil when Redis cannot tell (entries were deleted)
                    self.lag.labels(stream).set(int(lag))
        self.heartbeats.inc()

    def cell_started(self) -> None:
        with self._lock:
            self._cells_started += 1
        self.cells_started.inc()

    def cells(self, idle: int, retired: int = 0) -> None:
        self._idle.set(idle)
        if retired:
            with self._lock:
                self._cells_retired += retired
            self.cells_retired.inc(retired)


class _StepTally:
    """One thread's counts: steps by (kernel, outcome); per kernel, durations by bucket
    (``le`` bound, the last one +Inf) and their sum.  Only its own thread writes it."""

    __slots__ = ("durations", "seconds", "steps")

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], int] = {}
        self.durations: dict[str, list[int]] = {}
        self.seconds: dict[str, float] = {}


class _StepCollector(Collector):
    """``pyrecks_steps_total`` and ``pyrecks_step_duration_seconds``, summed over threads."""

    def __init__(self, tallies: dict[int, _StepTally]) -> None:
        self._tallies = tallies

    def describe(self) -> list[Metric]:
        return list(self._families({}, {}, {}))

    def collect(self) -> Iterable[Metric]:
        steps: dict[tuple[str, str], int] = {}
        counts: dict[str, list[int]] = {}
        seconds: dict[str, float] = {}
        for tally in list(self._tallies.values()):
            # dict.copy() runs under the GIL: a consistent snapshot of a thread's tally.
            for key, n in tally.steps.copy().items():
                steps[key] = steps.get(key, 0) + n
            for kernel, c in tally.durations.copy().items():
                total = counts.setdefault(kernel, [0] * len(c))
                for i, n in enumerate(list(c)):
                    total[i] += n
            for kernel, sec in tally.seconds.copy().items():
                seconds[kernel] = seconds.get(kernel, 0.0) + sec
        return self._families(steps, counts, seconds)

    @staticmethod
    def _families(
        steps: dict[tuple[str, str], int], counts: dict[str, list[int]], seconds: dict[str, float]
    ) -> list[Metric]:
        step_family = CounterMetricFamily(
            "pyrecks_steps",
            "Steps run, by kernel and outcome (ok, an error_kind, or interrupted).",
            labels=["kernel", "outcome"],
        )
        for (kernel, outcome), n in sorted(steps.items()):
            step_family.add_metric([kernel, outcome], n)
        durations = HistogramMetricFamily(
            "pyrecks_step_duration_seconds",
            "Time of a step from its start to its commit (or failure), by kernel.",
            labels=["kernel"],
        )
        bounds = [*(floatToGoString(b) for b in STEP_BUCKETS), "+Inf"]
        for kernel, c in sorted(counts.items()):
            cumulative = list(accumulate(c))
            durations.add_metric(
                [kernel], list(zip(bounds, cumulative, strict=True)), seconds.get(kernel, 0.0)
            )
        return [step_family, durations]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


__all__ = ["Metrics"]
