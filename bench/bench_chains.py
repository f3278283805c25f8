"""Benchmark: what a chain step costs, next to its floors measured in the same run.

    python -m bench.bench_chains [--quick] [--json PATH|-] [--repeat N] [--only relay,...]
                                 [--steps N] [--threads 8,16,64] [--waiter wait|poll]
                                 [--isolation thread,jail] [--cold N]

Issue 6 asks that a chain step cost little more than the work it cannot avoid; issue 9 puts
every kernel in a jailed cell and asks what that costs.  Absolute times swing with the
machine and its load, so every workload is reported beside a *floor* measured in the same
process, against the same private ``redis-server`` (started here), and the targets are
ratios to those floors.  Every workload runs once per isolation mode (``--isolation``,
default ``thread,jail``), the modes taking turns workload by workload, against the same
floors.

Workloads (each run checks that the chain ended ``done`` with the right result, the right
step count and, with effects, the right value in its key — a failed chain is an error,
never a fast number):

* ``relay`` — one chain of ``--steps`` (200) steps of ``relay(s, left)``, which returns
  ``call("relay", s + "x", left - 1)`` and ``done(len(s))`` at the end; no effects.
  Reported per step: the client's wall time from ``start()`` to ``wait()`` returning, and
  the VM's own time from the chain record's ``started`` to ``finished`` (no queueing, no
  waiter).  Each run is paired with a *watched* relay (issue 12): the same chain waited for as
  ``pyrecks run --wait`` waits — ``Pyrecks.wait`` following the log with ``on_entry`` for
  what kernels print — so watched / unwatched (median of the per-run ratios, VM clock)
  says what watching costs the chain.  The waiter shares the VM's process (as with ``run
  --local``), the worst case: a waiter in another process shares no interpreter lock.
* ``relay+effect`` — the same with ``relay_fx``, whose every step also ``SET``s one key.
* ``fan-in`` — 64 chains of 100 ``relay_fx`` steps started at once on one VM process,
  reported as steps per second (all steps / wall time from the first ``start()`` to the
  last chain finishing).  Tried with a few worker-thread counts; the best is reported.
  Each VM first runs a short fan-in, so that in jail mode its cells (one per concurrent
  step of a kernel) are forked before the clock starts.
* ``cold`` — on a warm VM, a kernel it has never seen (new name and source, so a new
  digest: in jail mode a new cell is forked, confined and loaded) runs a one-step chain;
  reported in ms, VM clock (``started`` -> ``finished``) and start -> wait, median over
  ``--cold`` (9) kernels; beside it the same kernel's second one-step chain (warm).

Each relay and fan-in run also records the CPU time per step of this process (the VM's
threads and the client), of the VM's cells (``/proc/<pid>/schedstat``) and of
``redis-server`` (``INFO cpu``): on a shared machine wall times swing with the load (a
process that is woken up waits for a core), CPU time per step much less.

Floors:

* ``python`` — the same kernel function called in a plain Python loop (no VM, no Redis);
* ``round trip`` — redis-py, one pipelined transaction per step:
  ``MULTI; SET k v; HSET chain step n; EXEC`` — a write plus a checkpoint, the least a
  durable step with an effect can do over the network; measured before and after the
  workloads, the lower median is the floor (the stricter one); each relay run is also
  paired with the same floor measured just before it (the relay ratios use that);
* ``round trip x64`` — that floor from 64 threads at once, in operations per second,
  measured just before each fan-in run (the paired fan-in ratio) — one pool of 64
  connections for the whole run.

Targets, thread mode (issue 6): relay <= 0.5 x round trip; relay+effect <= 1.2 x round trip;
fan-in >= 15,000 steps/s.  Jail mode (issue 9): relay <= 0.6 x; relay+effect <= 1.2 x;
fan-in >= 1 x the round trip x64 floor; a cold kernel's first step <= 20 ms.

The VM runs in this process (``Pyrecks.local_vm``); the kernels are stored once and every
VM runs a warm-up chain of both relay kernels before it is timed, so loading and checking
a kernel (in jail mode: forking its cell) is not part of the relay and fan-in numbers — the
``cold`` workload measures exactly that.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.common import (
    Stats,
    Summary,
    environment,
    print_table,
    ratios,
    stats_from_batches,
    summarize,
    write_json,
)
from pyrecks.api import Pyrecks
from pyrecks.compiler.compiler import compile_kernel
from pyrecks.compiler.policy import Policy
from pyrecks.testing import RedisServer
from pyrecks.vm.records import ChainStatus
from pyrecks.vm.sandbox import Sandbox

RELAY_SOURCE = '''\
from pyrecks.kernel import call, done


def relay(s: str, left: int):
    """Pass a growing string on; end with its length."""
    if left == 0:
        return done(len(s))
    return call("relay", s + "x", left - 1)
'''

RELAY_FX_SOURCE = '''\
from pyrecks.kernel import call, done


def relay_fx(key: str, s: str, left: int):
    """relay, and every step also SETs the chain's own key to the string so far."""
    if left == 0:
        return done(len(s), set={key: s})
    return call("relay_fx", key, s + "x", left - 1, set={key: s})
'''

#: A kernel the VM has never seen: ``{name}`` is fresh each time, so is its digest.
COLD_SOURCE = '''\
from pyrecks.kernel import done


def {name}(n: int):
    """One step, at once: what a brand-new kernel's first step costs beyond its work."""
    return done(n)
'''

WORKLOADS = ("relay", "relay+effect", "fan-in", "cold")
ISOLATIONS = ("thread", "jail")
#: What ``--isolation`` accepts (``process`` is measured too, it just has no targets).
KNOWN_ISOLATIONS = ("thread", "process", "jail")


@dataclass(frozen=True)
class Targets:
    """One isolation mode's targets: ratios to the round-trip floors, a rate, a latency."""

    issue: int
    relay: float
    relay_effect: float
    #: fan-in in steps/s (issue 6) ...
    fan_in_rate: float | None = None
    #: ... or as a multiple of the paired round trip x64 floor (issue 9).
    fan_in_x64: float | None = None
    #: a cold kernel's first step, VM clock, ms.
    cold_ms: float | None = None


TARGETS = {
    "thread": Targets(issue=6, relay=0.5, relay_effect=1.2, fan_in_rate=15_000.0),
    "jail": Targets(issue=9, relay=0.6, relay_effect=1.2, fan_in_x64=1.0, cold_ms=20.0),
}
#: Issue 6's targets under their old names (thread mode).
TARGET_RELAY = TARGETS["thread"].relay
TARGET_RELAY_EFFECT = TARGETS["thread"].relay_effect
TARGET_FAN_IN = 15_000.0


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; the defaults are the issues', the smoke test shrinks them."""

    steps: int = 200
    fan_chains: int = 64
    fan_steps: int = 100
    fan_threads: tuple[int, ...] = (8, 16, 64)
    repeat: int = 5
    relay_threads: int = 8
    timeout: float = 300.0
    only: tuple[str, ...] = WORKLOADS
    #: How the relay workloads wait for their chain: "wait" (Pyrecks.wait) or "poll".
    waiter: str = "wait"
    #: Isolation modes to measure, in the order they take turns.
    isolations: tuple[str, ...] = ISOLATIONS
    #: Brand-new kernels timed by the ``cold`` workload (per isolation mode).
    cold_kernels: int = 9
    #: VMConfig.block_ms of every VM: how long its idle reader blocks, hence how long a
    #: ``stop()`` takes (~2x this); new chains wake it at once, so no timing depends on it.
    block_ms: int = 500

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run (~30 s for both modes): 2 repeats, fan-in at 64 threads, 5 cold kernels."""
        return cls(repeat=2, fan_threads=(64,), cold_kernels=5)


class ChainCheckFailed(AssertionError):
    """A benchmarked chain did not end as it must: its timing would be meaningless."""


@dataclass
class CpuTimes:
    """CPU time per step (us) of each process taking part, one sample per run.

    Wall times on a shared machine swing with its load (a process that is woken up waits
    for a core); CPU time per step is far steadier and says what each side costs.
    """

    #: this process: the VM's threads and the benchmark's client (start, wait, checks)
    process: list[float] = field(default_factory=list)
    #: the VM's cells (jail mode), read from /proc/<pid>/schedstat
    cells: list[float] = field(default_factory=list)
    #: redis-server (INFO cpu)
    redis: list[float] = field(default_factory=list)

    def add(self, per_step: tuple[float, float, float]) -> None:
        self.process.append(per_step[0])
        self.cells.append(per_step[1])
        self.redis.append(per_step[2])

    def as_json(self) -> dict[str, Any]:
        if not self.process:
            return {}
        return {"process": summarize(self.process).as_dict(),
                "cells": summarize(self.cells).as_dict(),
                "redis": summarize(self.redis).as_dict()}


class CpuMeter:
    """CPU used so far by this process, by the VM's live cells and by redis-server."""

    def __init__(self, vm: Any, client: redis.Redis) -> None:
        self.vm = vm
        self.client = client

    def _cells(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for pid in getattr(self.vm.executor, "cell_pids", []):
            try:
                with open(f"/proc/{pid}/schedstat") as f:
                    out[pid] = int(f.read().split()[0])  # ns on a CPU
            except (OSError, ValueError, IndexError):
                pass
        return out

    def sample(self) -> tuple[float, dict[int, int], float]:
        info: Any = self.client.info("cpu")
        return (time.process_time(), self._cells(),
                float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))

    @staticmethod
    def per_step(before: tuple[float, dict[int, int], float],
                 after: tuple[float, dict[int, int], float],
                 steps: int) -> tuple[float, float, float]:
        """(process, cells, redis) us per step; a cell born in between counts from 0."""
        cells_ns = sum(ns - before[1].get(pid, 0) for pid, ns in after[1].items())
        return ((after[0] - before[0]) / steps * 1e6, cells_ns / steps / 1e3,
                (after[2] - before[2]) / steps * 1e6)


@dataclass
class ChainTimes:
    """Per-step times of one workload over its runs (microseconds)."""

    wall_us: list[float] = field(default_factory=list)
    vm_us: list[float] = field(default_factory=list)
    #: The round-trip floor measured just before each run (same length as wall_us).
    floor_us: list[float] = field(default_factory=list)
    #: CPU per step during each run (see CpuMeter).
    cpu: CpuTimes = field(default_factory=lambda: CpuTimes())
    #: The same chain followed like ``run --follow``, run just after each of the above.
    watched_wall_us: list[float] = field(default_factory=list)
    watched_vm_us: list[float] = field(default_factory=list)

    def ratio(self) -> Summary:
        """Per-run ratio wall / paired floor: robust to load that drifts during the run."""
        return ratios(self.wall_us, self.floor_us)

    def watched_ratio(self) -> Summary:
        """Per-run ratio watched / unwatched, VM clock: what following costs the chain."""
        return ratios(self.watched_vm_us, self.vm_us)

    def vm_ratio(self) -> Summary:
        return ratios(self.vm_us, self.floor_us)

    def as_json(self) -> dict[str, Any]:
        return {
            "wall_us_per_step": summarize(self.wall_us).as_dict(),
            "vm_us_per_step": summarize(self.vm_us).as_dict(),
            "paired_floor_us_per_step": summarize(self.floor_us).as_dict(),
            "ratio_to_paired_floor": self.ratio().as_dict(),
            "vm_ratio_to_paired_floor": self.vm_ratio().as_dict(),
            "cpu_us_per_step": self.cpu.as_json(),
            **({"watched": {
                "wall_us_per_step": summarize(self.watched_wall_us).as_dict(),
                "vm_us_per_step": summarize(self.watched_vm_us).as_dict(),
                "vm_ratio_to_unwatched": self.watched_ratio().as_dict(),
                "samples_vm_us": self.watched_vm_us,
            }} if self.watched_vm_us else {}),
            "samples_wall_us": self.wall_us,
            "samples_vm_us": self.vm_us,
            "samples_floor_us": self.floor_us,
        }


@dataclass
class FanIn:
    """Steps per second of the fan-in workload for one worker-thread count."""

    threads: int
    steps_per_s: list[float] = field(default_factory=list)
    vm_steps_per_s: list[float] = field(default_factory=list)
    #: The round trip x64 floor (ops/s) measured just before each run.
    floor_ops_per_s: list[float] = field(default_factory=list)
    cpu: CpuTimes = field(default_factory=lambda: CpuTimes())

    def ratio(self) -> Summary:
        """Per-run ratio steps/s / paired x64 floor ops/s (1.0 = as fast as raw redis-py)."""
        return ratios(self.steps_per_s, self.floor_ops_per_s)

    def as_json(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "steps_per_s": summarize(self.steps_per_s).as_dict(),
            "vm_steps_per_s": summarize(self.vm_steps_per_s).as_dict(),
            "paired_floor_ops_per_s": summarize(self.floor_ops_per_s).as_dict(),
            "ratio_to_paired_floor": self.ratio().as_dict(),
            "cpu_us_per_step": self.cpu.as_json(),
            "samples": self.steps_per_s,
            "samples_floor": self.floor_ops_per_s,
        }


@dataclass
class ColdStart:
    """One-step chains of brand-new kernels on a warm VM (ms), and each kernel run again."""

    wall_ms: list[float] = field(default_factory=list)
    vm_ms: list[float] = field(default_factory=list)
    warm_wall_ms: list[float] = field(default_factory=list)
    warm_vm_ms: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "first_step_vm_ms": summarize(self.vm_ms).as_dict(),
            "first_step_wall_ms": summarize(self.wall_ms).as_dict(),
            "warm_step_vm_ms": summarize(self.warm_vm_ms).as_dict(),
            "warm_step_wall_ms": summarize(self.warm_wall_ms).as_dict(),
            "samples_vm_ms": self.vm_ms,
            "samples_wall_ms": self.wall_ms,
        }


@dataclass
class ModeResult:
    """Every workload of one isolation mode."""

    isolation: str
    relay: ChainTimes | None = None
    relay_effect: ChainTimes | None = None
    fan_in: list[FanIn] = field(default_factory=list)
    cold: ColdStart | None = None

    @property
    def best_fan_in(self) -> FanIn | None:
        if not self.fan_in:
            return None
        return max(self.fan_in, key=lambda f: summarize(f.steps_per_s).median)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.relay:
            out["relay"] = self.relay.as_json()
        if self.relay_effect:
            out["relay_effect"] = self.relay_effect.as_json()
        best = self.best_fan_in
        if best is not None:
            out["fan_in"] = {
                "by_threads": [f.as_json() for f in self.fan_in],
                "best_threads": best.threads,
                "steps_per_s": summarize(best.steps_per_s).as_dict(),
                "ratio_to_paired_floor": best.ratio().as_dict(),
            }
        if self.cold:
            out["cold_first_step"] = self.cold.as_json()
        return out


# -- floors ---------------------------------------------------------------------------------


def load_kernel_function(source: str, name: str) -> Callable[..., str]:
    """The kernel's entry function, executed in the VM's own sandbox namespace.

    Same code object path as the VM in thread mode (minus Redis and the step machinery), so
    the Python floor is the kernel itself and nothing else.
    """
    policy = Policy()
    sandbox = Sandbox(policy.allowed_modules, policy.forbidden_builtins,
                      policy.forbidden_attributes)
    namespace = sandbox.namespace(name)
    exec(compile_kernel(name, source, policy).code, namespace)
    fn: Callable[..., str] = namespace[name]
    return fn


def python_floor(steps: int, repeat: int) -> Stats:
    """Per-step time of ``relay`` called in a plain loop, following the chain by hand."""
    relay = load_kernel_function(RELAY_SOURCE, "relay")

    def one_chain() -> None:
        s, left = "", steps - 1
        while True:
            out = relay(s, left)
            if left == 0:
                break
            s, left = s + "x", left - 1
        if out != f"return {steps - 1}":
            raise ChainCheckFailed(f"python floor: relay ended with {out!r}")

    one_chain()  # warm-up
    batches = []
    for _ in range(repeat):
        start = time.perf_counter()
        one_chain()
        batches.append(time.perf_counter() - start)
    return stats_from_batches(batches, steps)


def _checkpoint_step(client: redis.Redis, key: str, chain_key: str, n: int) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.set(key, "x" * n)
    pipe.hset(chain_key, "step", n)
    pipe.execute()


def round_trip_floor(client: redis.Redis, steps: int, repeat: int, *,
                     warmup: bool = True) -> Stats:
    """Per-step time of one pipelined ``MULTI; SET; HSET; EXEC`` (a write + a checkpoint)."""
    key, chain_key = "bench:floor:k", "bench:floor:chain"
    for n in range(steps if warmup else 0):  # warm-up: connection made, pages touched
        _checkpoint_step(client, key, chain_key, n)
    batches = []
    for _ in range(repeat):
        start = time.perf_counter()
        for n in range(steps):
            _checkpoint_step(client, key, chain_key, n)
        batches.append(time.perf_counter() - start)
    return stats_from_batches(batches, steps)


class ConcurrentFloor:
    """The round-trip floor from ``threads`` threads at once, in operations per second.

    Each thread has its own connection (as each VM worker does) and its own keys; a
    barrier starts them together and the clock stops when the last one is done.  The
    connections are made (and used once, untimed) when this is built, so that each
    :meth:`rate` can be taken right before a fan-in run without a warm-up.
    """

    def __init__(self, url: str, threads: int, steps: int) -> None:
        self.threads = threads
        self.steps = steps
        self.clients = [redis.Redis.from_url(url) for _ in range(threads)]
        self.rate()  # warm-up: connections made, keys created

    def rate(self) -> float:
        barrier = threading.Barrier(self.threads + 1)

        def worker(i: int) -> None:
            barrier.wait()
            for n in range(self.steps):
                _checkpoint_step(self.clients[i], f"bench:floor:k{i}", f"bench:floor:c{i}", n)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(self.threads)]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        return self.threads * self.steps / (time.perf_counter() - start)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def concurrent_floor(url: str, threads: int, steps: int, repeat: int) -> Summary:
    """``repeat`` runs of :class:`ConcurrentFloor` (after a warm-up run)."""
    floor = ConcurrentFloor(url, threads, steps)
    try:
        return summarize([floor.rate() for _ in range(repeat)])
    finally:
        floor.close()


# -- chains ---------------------------------------------------------------------------------


def store_kernels(px: Pyrecks) -> None:
    """Check, compile and store both kernels once (as ``pyrecksc compile`` would)."""
    px.store_kernel("relay", RELAY_SOURCE)
    px.store_kernel("relay_fx", RELAY_FX_SOURCE)


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _start_relay(px: Pyrecks, steps: int, effect: bool) -> tuple[str, str | None]:
    """Start one relay chain of exactly ``steps`` kernel calls; return (chain id, its key)."""
    if effect:
        key = f"k:bench:{_tag()}"
        return px.start(f'relay_fx("{key}", "", {steps - 1})'), key
    return px.start(f'relay("", {steps - 1})'), None


def _check_done(px: Pyrecks, chain: str, steps: int, key: str | None, timeout: float,
                result: Any = None) -> Any:
    """Wait for the chain and insist it ended right; return its ChainInfo.

    The result must be ``result``, by default ``steps - 1`` (what the relays return).
    """
    expected = steps - 1 if result is None else result
    info = px.wait(chain, timeout=timeout)
    if info.status is not ChainStatus.DONE:
        raise ChainCheckFailed(
            f"chain {chain} ended {info.status.value}: {info.error_kind}: {info.error}"
        )
    if info.step != steps:
        raise ChainCheckFailed(f"chain {chain} ran {info.step} steps, expected {steps}")
    got = px.result(chain)
    if got != expected:
        raise ChainCheckFailed(f"chain {chain} returned {got!r}, expected {expected!r}")
    if key is not None:
        value = px.r.get(key)
        if value != b"x" * (steps - 1):
            raise ChainCheckFailed(f"chain {chain} left {key} = {value!r:.40}")
    return info


def _poll_until_finished(px: Pyrecks, chain: str, timeout: float) -> None:
    """Wait by polling the record every 10 ms: no client work per step (see ``--waiter``)."""
    deadline = time.monotonic() + timeout
    while not px.status(chain).status.finished:
        if time.monotonic() > deadline:
            raise TimeoutError(f"chain {chain} did not finish within {timeout}s")
        time.sleep(0.01)


def _follow(entry: Any) -> None:
    """What ``run --wait``/``--follow`` do with each entry, minus the terminal."""
    entry.format()


#: What ``run --wait`` shows (pyrecks.watching.WAIT_KINDS).
WAIT_KINDS = ("out", "error", "retry", "dropped")


def run_chain(px: Pyrecks, steps: int, effect: bool, timeout: float,
              waiter: str = "wait") -> tuple[float, float]:
    """One timed chain; (wall us/step from start() to wait(), VM us/step started->finished).

    ``Pyrecks.wait`` blocks on the chain's end stream; ``waiter="poll"`` polls the record
    every 10 ms instead (its wall time is then only good to ~10 ms; read the VM-side
    number); ``waiter="follow"`` follows the log as ``pyrecks run --follow`` does (every
    entry), ``waiter="watch"`` as ``pyrecks run --wait`` does (what kernels print).
    """
    t0 = time.perf_counter()
    chain, key = _start_relay(px, steps, effect)
    if waiter == "poll":
        _poll_until_finished(px, chain, timeout)
    elif waiter in ("follow", "watch"):
        kinds = WAIT_KINDS if waiter == "watch" else None
        px.wait(chain, timeout=timeout, on_entry=_follow, kinds=kinds)
    else:
        px.wait(chain, timeout=timeout)
    wall = time.perf_counter() - t0
    info = _check_done(px, chain, steps, key, timeout)
    assert info.started is not None and info.finished is not None
    return wall / steps * 1e6, (info.finished - info.started) / steps * 1e6


@contextmanager
def vm_client(px: Pyrecks, threads: int) -> Iterator[Pyrecks]:
    """``px``'s deployment on a connection pool of the VM's own, closed afterwards.

    The VM gets its own pool, as a VM process would: the client's ``start``/``wait`` never
    queue behind it.  Its cap is 2 x threads + 16: each worker thread keeps a connection
    and also checks one out of the pool for claims, acks and log writes, so a 64-thread
    jail VM was seen using 123 connections — more than redis-py's default cap of 100.
    """
    pool = px.r.connection_pool
    own = redis.ConnectionPool(connection_class=pool.connection_class,
                               max_connections=2 * threads + 16, **pool.connection_kwargs)
    client = redis.Redis(connection_pool=own)
    try:
        yield Pyrecks(client, px.keyspace)
    finally:
        client.close()
        own.disconnect()


@contextmanager
def warm_vm(px: Pyrecks, threads: int, timeout: float, isolation: str = "jail",
            block_ms: int = 500) -> Iterator[Any]:
    """A VM in this process, warmed up: both kernels loaded (in jail mode: their cells
    forked), threads and connections made."""
    with vm_client(px, threads) as own, own.local_vm(
        threads=threads, echo=False, isolation=isolation, block_ms=block_ms
    ) as vm:
        run_chain(px, 10, False, timeout)
        run_chain(px, 10, True, timeout)
        yield vm


def measure_relay(px: Pyrecks, sizes: Sizes, effect: bool,
                  isolation: str = "jail") -> ChainTimes:
    """Each run is paired with a fresh round-trip floor taken just before it.

    On a shared 2-core machine the load drifts over a minute; a ratio of two numbers
    taken seconds apart is far steadier than either number alone.
    """
    times = ChainTimes()
    with warm_vm(px, sizes.relay_threads, sizes.timeout, isolation, sizes.block_ms) as machine:
        meter = CpuMeter(machine, px.r)
        for _ in range(sizes.repeat):
            floor = round_trip_floor(px.r, sizes.steps, 1, warmup=False)
            before = meter.sample()
            wall, vm = run_chain(px, sizes.steps, effect, sizes.timeout, sizes.waiter)
            times.cpu.add(meter.per_step(before, meter.sample(), sizes.steps))
            times.floor_us.append(floor.median_us)
            times.wall_us.append(wall)
            times.vm_us.append(vm)
            if not effect:  # the same chain, watched: what following it costs
                wall, vm = run_chain(px, sizes.steps, effect, sizes.timeout, "watch")
                times.watched_wall_us.append(wall)
                times.watched_vm_us.append(vm)
    return times


def run_fan_in(px: Pyrecks, chains: int, steps: int, timeout: float) -> tuple[float, float]:
    """All chains at once; (steps/s by the client's clock, steps/s by the VM's records)."""
    t0 = time.perf_counter()
    started = [_start_relay(px, steps, True) for _ in range(chains)]
    infos = [px.wait(chain, timeout=timeout) for chain, _key in started]
    wall = time.perf_counter() - t0
    infos = [_check_done(px, chain, steps, key, timeout) for chain, key in started]
    first = min(i.started for i in infos if i.started is not None)
    last = max(i.finished for i in infos if i.finished is not None)
    total = chains * steps
    return total / wall, total / (last - first)


def measure_fan_in(px: Pyrecks, sizes: Sizes, floor: ConcurrentFloor,
                   isolation: str = "jail") -> list[FanIn]:
    """Each run is paired with the x64 floor (``floor.rate()``) taken just before it.

    The VM is warmed up with a short fan-in first (every chain, 3 steps), so every worker
    thread has its connection and, in jail mode, every cell the run needs is forked (a
    ``relay_fx`` cell serves one step at a time: up to one per worker thread); starting a
    cell is what the ``cold`` workload measures.
    """
    out = []
    for threads in sizes.fan_threads:
        result = FanIn(threads)
        with warm_vm(px, threads, sizes.timeout, isolation, sizes.block_ms) as machine:
            run_fan_in(px, sizes.fan_chains, min(3, sizes.fan_steps), sizes.timeout)
            meter = CpuMeter(machine, px.r)
            for _ in range(sizes.repeat):
                result.floor_ops_per_s.append(floor.rate())
                before = meter.sample()
                wall_rate, vm_rate = run_fan_in(px, sizes.fan_chains, sizes.fan_steps,
                                                sizes.timeout)
                result.cpu.add(meter.per_step(before, meter.sample(),
                                              sizes.fan_chains * sizes.fan_steps))
                result.steps_per_s.append(wall_rate)
                result.vm_steps_per_s.append(vm_rate)
        out.append(result)
    return out


def _one_step_chain(px: Pyrecks, name: str, n: int, timeout: float) -> tuple[float, float]:
    """A chain of one ``name(n)`` step; (ms start -> wait, ms VM started -> finished)."""
    t0 = time.perf_counter()
    chain = px.start(f"{name}({n})")
    px.wait(chain, timeout=timeout)
    wall = time.perf_counter() - t0
    info = _check_done(px, chain, 1, None, timeout, result=n)
    assert info.started is not None and info.finished is not None
    return wall * 1e3, (info.finished - info.started) * 1e3


def measure_cold(px: Pyrecks, sizes: Sizes, isolation: str = "jail") -> ColdStart:
    """On one warm VM: each new kernel's first one-step chain, then its second.

    The kernel is stored (checked, compiled) before the clock starts: what is timed is the
    VM meeting a digest it has never run — loading the record and, in jail mode, forking,
    confining and loading a cell — plus one step and its commit.
    """
    cold = ColdStart()
    with warm_vm(px, sizes.relay_threads, sizes.timeout, isolation, sizes.block_ms):
        for n in range(sizes.cold_kernels):
            name = f"cold_{_tag()}"
            px.store_kernel(name, COLD_SOURCE.format(name=name))
            wall, vm = _one_step_chain(px, name, n, sizes.timeout)
            cold.wall_ms.append(wall)
            cold.vm_ms.append(vm)
            wall, vm = _one_step_chain(px, name, n + 1, sizes.timeout)
            cold.warm_wall_ms.append(wall)
            cold.warm_vm_ms.append(vm)
    return cold


# -- the whole run --------------------------------------------------------------------------


def _target(isolation: str, name: str, value: float, target: str, met: bool,
            issue: int, **extra: Any) -> dict[str, Any]:
    return {"isolation": isolation, "name": name, "value": value, "target": target,
            "met": met, "issue": issue, **extra}


@dataclass
class Report:
    """Everything one run measured, with the ratios the targets are stated in."""

    sizes: Sizes
    python: Stats
    round_trip: Stats
    round_trip_after: Stats
    modes: list[ModeResult]
    #: os.getloadavg() around the run: the machine may be shared, say how busy it was.
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()

    @property
    def floor_us(self) -> float:
        return min(self.round_trip.median_us, self.round_trip_after.median_us)

    @property
    def round_trip_x64(self) -> Summary | None:
        """Every x64 floor sample of the run (each taken just before a fan-in run)."""
        samples = [x for m in self.modes for f in m.fan_in for x in f.floor_ops_per_s]
        return summarize(samples) if samples else None

    def mode(self, isolation: str) -> ModeResult:
        return next(m for m in self.modes if m.isolation == isolation)

    def targets(self) -> list[dict[str, Any]]:
        """Every target of every measured mode, grouped by target (modes side by side)."""
        rows: list[tuple[int, dict[str, Any]]] = []
        for m in self.modes:
            goal = TARGETS.get(m.isolation)
            if goal is None:
                continue
            iso, issue = m.isolation, goal.issue
            if m.relay:
                ratio = m.relay.ratio().median
                rows.append((0, _target(iso, "relay / round trip", ratio,
                                        f"<= {goal.relay}", ratio <= goal.relay, issue)))
            if m.relay_effect:
                ratio = m.relay_effect.ratio().median
                rows.append((1, _target(iso, "relay+effect / round trip", ratio,
                                        f"<= {goal.relay_effect}",
                                        ratio <= goal.relay_effect, issue)))
            best = m.best_fan_in
            if best is not None:
                rate = summarize(best.steps_per_s).median
                name = f"fan-in steps/s ({best.threads} threads)"
                if goal.fan_in_rate is not None:
                    rows.append((2, _target(iso, name, rate, f">= {goal.fan_in_rate:,.0f}",
                                            rate >= goal.fan_in_rate, issue)))
                if goal.fan_in_x64 is not None:
                    # the thread count that came closest to its own paired floor
                    closest = max(m.fan_in, key=lambda f: f.ratio().median)
                    ratio = closest.ratio().median
                    rows.append((3, _target(
                        iso, f"fan-in / round trip x{self.sizes.fan_chains} "
                        f"({closest.threads} threads)", ratio, f">= {goal.fan_in_x64}",
                        ratio >= goal.fan_in_x64, issue,
                        steps_per_s=summarize(closest.steps_per_s).median)))
            if m.cold and goal.cold_ms is not None:
                ms = summarize(m.cold.vm_ms).median
                rows.append((4, _target(iso, "cold kernel first step ms (VM clock)", ms,
                                        f"<= {goal.cold_ms:g}", ms <= goal.cold_ms, issue)))
        return [t for _, t in sorted(rows, key=lambda r: r[0])]

    def as_json(self) -> dict[str, Any]:
        s = self.sizes
        report: dict[str, Any] = {
            "environment": {**environment(), "cpus": os.cpu_count(),
                            "loadavg_before": list(self.load_before),
                            "loadavg_after": list(self.load_after)},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sizes": {"steps": s.steps, "fan_chains": s.fan_chains,
                      "fan_steps": s.fan_steps, "fan_threads": list(s.fan_threads),
                      "repeat": s.repeat, "relay_threads": s.relay_threads,
                      "waiter": s.waiter, "isolations": list(s.isolations),
                      "cold_kernels": s.cold_kernels, "only": list(s.only)},
            "floors": {
                "python_us_per_step": self.python.as_dict(),
                "round_trip_us_per_step": self.round_trip.as_dict(),
                "round_trip_after_us_per_step": self.round_trip_after.as_dict(),
                "round_trip_floor_us": self.floor_us,
            },
            # workloads[isolation][workload]
            "workloads": {m.isolation: m.as_json() for m in self.modes},
            "targets": self.targets(),
        }
        x64 = self.round_trip_x64
        if x64 is not None:
            report["floors"]["round_trip_concurrent_ops_per_s"] = {
                **x64.as_dict(), "threads": s.fan_chains}
        return report

    def floor_rows(self) -> list[list[object]]:
        floor = self.floor_us
        rows: list[list[object]] = []

        def st(name: str, s: Stats) -> None:
            rows.append([name, f"{s.median_us:,.1f}", f"{s.min_us:,.1f}-{s.max_us:,.1f}",
                         "us/step", f"{s.median_us / floor:.2f}"])

        st("python call of relay", self.python)
        st("round trip MULTI SET HSET EXEC", self.round_trip)
        st("round trip (after workloads)", self.round_trip_after)
        x64 = self.round_trip_x64
        if x64 is not None:
            rows.append([f"round trip x{self.sizes.fan_chains} threads (every fan-in run)",
                         f"{x64.median:,.0f}", x64.spread(0), "ops/s", ""])
        return rows

    def _mode_rows(self, m: ModeResult) -> dict[str, tuple[str, Summary, float | None, int]]:
        """name -> (unit, summary, x floor or None, digits) for one mode's measurements."""
        out: dict[str, tuple[str, Summary, float | None, int]] = {}
        for label, times in (("relay", m.relay), ("relay+effect", m.relay_effect)):
            if times:
                out[f"{label}: paired floor"] = ("us/step", summarize(times.floor_us), 1.0, 1)
                out[f"{label} (start -> wait)"] = ("us/step", summarize(times.wall_us),
                                                   times.ratio().median, 1)
                out[f"{label} (VM started -> finished)"] = (
                    "us/step", summarize(times.vm_us), times.vm_ratio().median, 1)
                if times.watched_vm_us:
                    # "x floor" here: watched / unwatched, median of per-run ratios
                    out[f"{label} watched, x unwatched (start -> wait)"] = (
                        "us/step", summarize(times.watched_wall_us),
                        ratios(times.watched_wall_us, times.wall_us).median, 1)
                    out[f"{label} watched, x unwatched (VM clock)"] = (
                        "us/step", summarize(times.watched_vm_us),
                        times.watched_ratio().median, 1)
                self._cpu_rows(out, label, times.cpu)
        size, x = f"{self.sizes.fan_chains}x{self.sizes.fan_steps}", self.sizes.fan_chains
        for f in m.fan_in:
            out[f"fan-in {size}, {f.threads} thr: paired x{x} floor"] = (
                "ops/s", summarize(f.floor_ops_per_s), 1.0, 0)
            out[f"fan-in {size}, {f.threads} threads"] = (
                "steps/s", summarize(f.steps_per_s), f.ratio().median, 0)
            out[f"fan-in {f.threads} threads (VM clock)"] = (
                "steps/s", summarize(f.vm_steps_per_s), None, 0)
            self._cpu_rows(out, f"fan-in {f.threads} thr", f.cpu)
        if m.cold:
            c = m.cold
            out["cold kernel, first step (VM clock)"] = ("ms", summarize(c.vm_ms), None, 2)
            out["cold kernel, first step (start -> wait)"] = ("ms", summarize(c.wall_ms),
                                                              None, 2)
            out["same kernel, 2nd chain (VM clock)"] = ("ms", summarize(c.warm_vm_ms), None, 2)
            out["same kernel, 2nd chain (start -> wait)"] = ("ms", summarize(c.warm_wall_ms),
                                                             None, 2)
        return out

    @staticmethod
    def _cpu_rows(out: dict[str, tuple[str, Summary, float | None, int]], label: str,
                  cpu: CpuTimes) -> None:
        if not cpu.process:
            return
        for name, samples in (("this process", cpu.process), ("cells", cpu.cells),
                              ("redis-server", cpu.redis)):
            out[f"{label} CPU: {name}"] = ("us/step", summarize(samples), None, 1)

    def workload_rows(self) -> list[list[object]]:
        """One row per measurement, one (median, min-max, x floor) group per isolation mode.

        "x floor": relays against the round-trip floor taken just before each run (median
        of the per-run ratios), fan-in against the x64 floor taken just before each run.
        """
        per_mode = [self._mode_rows(m) for m in self.modes]
        rows: list[list[object]] = []
        for name in dict.fromkeys(n for d in per_mode for n in d):
            unit = next(d[name][0] for d in per_mode if name in d)
            line: list[object] = [name, unit]
            for d in per_mode:
                if name not in d:
                    line += ["-", "-", "-"]
                    continue
                _, s, ratio, digits = d[name]
                line += [f"{s.median:,.{digits}f}", s.spread(digits),
                         "" if ratio is None else f"{ratio:.2f}"]
            rows.append(line)
        return rows

    def rows(self) -> list[list[object]]:
        """Both tables' rows, for callers that want one list (floors first)."""
        return self.floor_rows() + self.workload_rows()

    def print(self) -> None:
        print_table(["floor", "median", "min-max", "unit", "x floor"], self.floor_rows())
        print()
        headers = ["workload", "unit"]
        for m in self.modes:
            headers += [m.isolation, "min-max", "x floor"]
        print_table(headers, self.workload_rows())
        load = ", ".join(f"{x:.2f}" for x in self.load_before + self.load_after)
        print(f"\nround-trip floor = {self.floor_us:.1f} us/step (lower of before/after); "
              "relay ratios use the floor taken just before each run, fan-in ratios the "
              f"x{self.sizes.fan_chains} floor taken just before each run")
        print(f"load average (1/5/15 min) before, after: {load}")
        for t in self.targets():
            if t["name"].startswith("fan-in steps/s"):
                value = f"{t['value']:,.0f}"
            elif t["name"].startswith("cold"):
                value = f"{t['value']:.1f} ms"
            else:
                value = f"{t['value']:.2f}x"
            print(f"  {t['isolation']:<7} {t['name']:<42} {value:>10}  target "
                  f"{t['target']:<9} {'met' if t['met'] else 'MISSED':<6}  (issue {t['issue']})")


def run(sizes: Sizes, url: str | None = None) -> Report:
    """Measure everything; on ``url`` if given (tests), else on a private redis-server.

    The isolation modes take turns workload by workload (relay in every mode, then
    relay+effect in every mode, ...), so that they see the same load as nearly as can be.
    """
    server = None
    if url is None:
        server = RedisServer().start()
        url = server.url
    client = redis.Redis.from_url(url)
    load_before = os.getloadavg()
    x64: ConcurrentFloor | None = None
    try:
        px = Pyrecks(client)
        store_kernels(px)
        python = python_floor(sizes.steps, max(sizes.repeat, 3))
        rt = round_trip_floor(client, sizes.steps, max(sizes.repeat, 3))
        modes = [ModeResult(iso) for iso in sizes.isolations]
        if "relay" in sizes.only:
            for m in modes:
                m.relay = measure_relay(px, sizes, False, m.isolation)
        if "relay+effect" in sizes.only:
            for m in modes:
                m.relay_effect = measure_relay(px, sizes, True, m.isolation)
        if "fan-in" in sizes.only:
            x64 = ConcurrentFloor(url, sizes.fan_chains, sizes.fan_steps)
            for m in modes:
                m.fan_in = measure_fan_in(px, sizes, x64, m.isolation)
        if "cold" in sizes.only:
            for m in modes:
                m.cold = measure_cold(px, sizes, m.isolation)
        rt_after = round_trip_floor(client, sizes.steps, max(sizes.repeat, 3))
        return Report(sizes, python, rt, rt_after, modes, load_before, os.getloadavg())
    finally:
        if x64 is not None:
            x64.close()
        client.close()
        if server is not None:
            server.close()


def _parse_list(known: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; pick from {known}")
        return names

    return parse


_parse_only = _parse_list(WORKLOADS, "workload(s)")
_parse_isolations = _parse_list(KNOWN_ISOLATIONS, "isolation mode(s)")


def parse_args(argv: Sequence[str] | None = None) -> tuple[Sizes, str | None]:
    """The command line as (sizes, JSON path or None)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 repeats, one fan-in thread count, 5 cold kernels "
                        "(~30 s for thread and jail)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--repeat", type=int, help="timed runs per workload (default 5)")
    parser.add_argument("--steps", type=int, help="steps of the relay chains (default 200)")
    parser.add_argument("--threads", type=lambda t: tuple(int(x) for x in t.split(",")),
                        help="fan-in worker-thread counts to try, e.g. 16,64")
    parser.add_argument("--only", type=_parse_only,
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--isolation", type=_parse_isolations,
                        help="comma-separated isolation modes to measure, in turn (default "
                        f"{','.join(ISOLATIONS)}; also: process)")
    parser.add_argument("--cold", type=int, metavar="N",
                        help="brand-new kernels timed by the cold workload (default 9)")
    parser.add_argument("--waiter", choices=("wait", "poll", "watch", "follow"),
                        help="relay workloads: Pyrecks.wait (default), poll every 10 ms "
                        "(no client wake-up in the VM's process), or follow the log as "
                        "run --wait (watch) or run --follow (follow) do")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    overrides: dict[str, Any] = {}
    for option, name in (("repeat", "repeat"), ("steps", "steps"), ("threads", "fan_threads"),
                         ("only", "only"), ("isolation", "isolations"),
                         ("cold", "cold_kernels"), ("waiter", "waiter")):
        value = getattr(args, option)
        if value:
            overrides[name] = value
    return dataclasses.replace(sizes, **overrides), args.json


def main(argv: Sequence[str] | None = None) -> int:
    sizes, json_path = parse_args(argv)
    report = run(sizes)
    report.print()
    if json_path:
        write_json(report.as_json(), json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
