"""Benchmark: what a chain step costs, next to its floors measured in the same run.

    python -m bench.bench_chains [--quick] [--json PATH|-] [--repeat N] [--only relay,...]
                                 [--steps N] [--threads 8,16,64] [--waiter wait|poll]

Issue 6 asks that a chain step cost little more than the work it cannot avoid.  Absolute
times swing with the machine and its load, so every workload is reported beside a *floor*
measured in the same process, against the same private ``redis-server`` (started here),
and the targets are ratios to those floors:

Workloads (each run checks that the chain ended ``done`` with the right result, the right
step count and, with effects, the right value in its key — a failed chain is an error,
never a fast number):

* ``relay`` — one chain of ``--steps`` (200) steps of ``relay(s, left)``, which returns
  ``call("relay", s + "x", left - 1)`` and ``done(len(s))`` at the end; no effects.
  Reported per step: the client's wall time from ``start()`` to ``wait()`` returning, and
  the VM's own time from the chain record's ``started`` to ``finished`` (no queueing, no
  waiter).
* ``relay+effect`` — the same with ``relay_fx``, whose every step also ``SET``s one key.
* ``fan-in`` — 64 chains of 100 ``relay_fx`` steps started at once on one VM process,
  reported as steps per second (all steps / wall time from the first ``start()`` to the
  last chain finishing).  Tried with a few worker-thread counts; the best is reported.

Floors:

* ``python`` — the same kernel function called in a plain Python loop (no VM, no Redis);
* ``round trip`` — redis-py, one pipelined transaction per step:
  ``MULTI; SET k v; HSET chain step n; EXEC`` — a write plus a checkpoint, the least a
  durable step with an effect can do over the network; measured before and after the
  workloads, the lower median is the floor (the stricter one);
* ``round trip x64`` — that floor from 64 threads at once, in operations per second.

Targets (issue 6): relay <= 0.5 x round trip; relay+effect <= 1.2 x round trip;
fan-in >= 15,000 steps/s.

The VM runs in this process (``Pyrecks.local_vm``); the kernels are stored once and every
VM runs a warm-up chain before it is timed, so loading and checking a kernel (once per
process) is not part of the numbers.
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

#: Targets from issue 6, as ratios to the round-trip floor (and a rate for fan-in).
TARGET_RELAY = 0.5
TARGET_RELAY_EFFECT = 1.2
TARGET_FAN_IN = 15_000.0

WORKLOADS = ("relay", "relay+effect", "fan-in")


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; the defaults are the issue's, the smoke test shrinks them."""

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

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run (~20 s): full-size workloads, 2 repeats, fan-in at 64 threads only."""
        return cls(repeat=2, fan_threads=(64,))


class ChainCheckFailed(AssertionError):
    """A benchmarked chain did not end as it must: its timing would be meaningless."""


@dataclass
class ChainTimes:
    """Per-step times of one workload over its runs (microseconds)."""

    wall_us: list[float] = field(default_factory=list)
    vm_us: list[float] = field(default_factory=list)
    #: The round-trip floor measured just before each run (same length as wall_us).
    floor_us: list[float] = field(default_factory=list)

    def ratio(self) -> Summary:
        """Per-run ratio wall / paired floor: robust to load that drifts during the run."""
        return summarize([w / f for w, f in zip(self.wall_us, self.floor_us, strict=True)])

    def as_json(self) -> dict[str, Any]:
        return {
            "wall_us_per_step": summarize(self.wall_us).as_dict(),
            "vm_us_per_step": summarize(self.vm_us).as_dict(),
            "paired_floor_us_per_step": summarize(self.floor_us).as_dict(),
            "ratio_to_paired_floor": self.ratio().as_dict(),
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

    def as_json(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "steps_per_s": summarize(self.steps_per_s).as_dict(),
            "vm_steps_per_s": summarize(self.vm_steps_per_s).as_dict(),
            "samples": self.steps_per_s,
        }


# -- floors ---------------------------------------------------------------------------------


def load_kernel_function(source: str, name: str) -> Callable[..., str]:
    """The kernel's entry function, executed in the VM's own sandbox namespace.

    Same code object path as the VM (minus Redis and the step machinery), so the Python
    floor is the kernel itself and nothing else.
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


def concurrent_floor(url: str, threads: int, steps: int, repeat: int) -> Summary:
    """Operations per second of the round-trip floor from ``threads`` threads at once.

    Each thread has its own connection (as each VM worker does) and its own keys; a
    barrier starts them together and the clock stops when the last one is done.
    """
    clients = [redis.Redis.from_url(url) for _ in range(threads)]
    try:
        rates = []
        for run in range(repeat + 1):  # run 0 is a warm-up
            barrier = threading.Barrier(threads + 1)

            def worker(i: int, barrier: threading.Barrier) -> None:
                barrier.wait()
                for n in range(steps):
                    _checkpoint_step(clients[i], f"bench:floor:k{i}", f"bench:floor:c{i}", n)

            pool = [threading.Thread(target=worker, args=(i, barrier)) for i in range(threads)]
            for t in pool:
                t.start()
            barrier.wait()
            start = time.perf_counter()
            for t in pool:
                t.join()
            elapsed = time.perf_counter() - start
            if run:
                rates.append(threads * steps / elapsed)
        return summarize(rates)
    finally:
        for c in clients:
            c.close()


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


def _check_done(px: Pyrecks, chain: str, steps: int, key: str | None, timeout: float) -> Any:
    """Wait for the chain and insist it ended right; return its ChainInfo."""
    info = px.wait(chain, timeout=timeout)
    if info.status is not ChainStatus.DONE:
        raise ChainCheckFailed(
            f"chain {chain} ended {info.status.value}: {info.error_kind}: {info.error}"
        )
    if info.step != steps:
        raise ChainCheckFailed(f"chain {chain} ran {info.step} steps, expected {steps}")
    result = px.result(chain)
    if result != steps - 1:
        raise ChainCheckFailed(f"chain {chain} returned {result!r}, expected {steps - 1}")
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


def run_chain(px: Pyrecks, steps: int, effect: bool, timeout: float,
              waiter: str = "wait") -> tuple[float, float]:
    """One timed chain; (wall us/step from start() to wait(), VM us/step started->finished).

    ``Pyrecks.wait`` follows the chain's log, so it wakes on every step (one XREAD and
    one HGETALL) — in this process, competing with the VM for the GIL.  That is what a
    caller of ``wait`` pays, hence the default; ``waiter="poll"`` shows the VM without it
    (its wall time is then only good to ~10 ms; read the VM-side number).
    """
    t0 = time.perf_counter()
    chain, key = _start_relay(px, steps, effect)
    if waiter == "poll":
        _poll_until_finished(px, chain, timeout)
    else:
        px.wait(chain, timeout=timeout)
    wall = time.perf_counter() - t0
    info = _check_done(px, chain, steps, key, timeout)
    assert info.started is not None and info.finished is not None
    return wall / steps * 1e6, (info.finished - info.started) / steps * 1e6


@contextmanager
def warm_vm(px: Pyrecks, threads: int, timeout: float) -> Iterator[Any]:
    """A VM in this process, warmed up: both kernels loaded, threads and connections made."""
    with px.local_vm(threads=threads, echo=False) as vm:
        run_chain(px, 10, False, timeout)
        run_chain(px, 10, True, timeout)
        yield vm


def measure_relay(px: Pyrecks, sizes: Sizes, effect: bool) -> ChainTimes:
    """Each run is paired with a fresh round-trip floor taken just before it.

    On a shared 2-core machine the load drifts over a minute; a ratio of two numbers
    taken seconds apart is far steadier than either number alone.
    """
    times = ChainTimes()
    with warm_vm(px, sizes.relay_threads, sizes.timeout):
        for _ in range(sizes.repeat):
            floor = round_trip_floor(px.r, sizes.steps, 1, warmup=False)
            wall, vm = run_chain(px, sizes.steps, effect, sizes.timeout, sizes.waiter)
            times.floor_us.append(floor.median_us)
            times.wall_us.append(wall)
            times.vm_us.append(vm)
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


def measure_fan_in(px: Pyrecks, sizes: Sizes) -> list[FanIn]:
    out = []
    for threads in sizes.fan_threads:
        result = FanIn(threads)
        with warm_vm(px, threads, sizes.timeout):
            for _ in range(sizes.repeat):
                wall_rate, vm_rate = run_fan_in(px, sizes.fan_chains, sizes.fan_steps,
                                                sizes.timeout)
                result.steps_per_s.append(wall_rate)
                result.vm_steps_per_s.append(vm_rate)
        out.append(result)
    return out


# -- the whole run --------------------------------------------------------------------------


@dataclass
class Report:
    """Everything one run measured, with the ratios the targets are stated in."""

    sizes: Sizes
    python: Stats
    round_trip: Stats
    round_trip_after: Stats
    round_trip_x64: Summary | None
    relay: ChainTimes | None
    relay_effect: ChainTimes | None
    fan_in: list[FanIn]
    #: os.getloadavg() around the run: the machine may be shared, say how busy it was.
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()

    @property
    def floor_us(self) -> float:
        return min(self.round_trip.median_us, self.round_trip_after.median_us)

    @property
    def best_fan_in(self) -> FanIn | None:
        if not self.fan_in:
            return None
        return max(self.fan_in, key=lambda f: summarize(f.steps_per_s).median)

    def targets(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.relay:
            ratio = self.relay.ratio().median
            out.append({"name": "relay / round trip", "value": ratio,
                        "target": f"<= {TARGET_RELAY}", "met": ratio <= TARGET_RELAY})
        if self.relay_effect:
            ratio = self.relay_effect.ratio().median
            out.append({"name": "relay+effect / round trip", "value": ratio,
                        "target": f"<= {TARGET_RELAY_EFFECT}",
                        "met": ratio <= TARGET_RELAY_EFFECT})
        best = self.best_fan_in
        if best:
            rate = summarize(best.steps_per_s).median
            out.append({"name": f"fan-in steps/s ({best.threads} threads)", "value": rate,
                        "target": f">= {TARGET_FAN_IN:,.0f}", "met": rate >= TARGET_FAN_IN})
        return out

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
                      "waiter": s.waiter},
            "floors": {
                "python_us_per_step": self.python.as_dict(),
                "round_trip_us_per_step": self.round_trip.as_dict(),
                "round_trip_after_us_per_step": self.round_trip_after.as_dict(),
                "round_trip_floor_us": self.floor_us,
            },
            "workloads": {},
            "targets": self.targets(),
        }
        if self.round_trip_x64 is not None:
            report["floors"]["round_trip_concurrent_ops_per_s"] = {
                **self.round_trip_x64.as_dict(), "threads": s.fan_chains}
        if self.relay:
            report["workloads"]["relay"] = self.relay.as_json()
        if self.relay_effect:
            report["workloads"]["relay_effect"] = self.relay_effect.as_json()
        if self.fan_in:
            best = self.best_fan_in
            assert best is not None
            report["workloads"]["fan_in"] = {
                "by_threads": [f.as_json() for f in self.fan_in],
                "best_threads": best.threads,
                "steps_per_s": summarize(best.steps_per_s).as_dict(),
            }
        return report

    def rows(self) -> list[list[object]]:
        """Table rows; "x floor" is against the run's floor, for relays the paired floor."""
        floor = self.floor_us
        rows: list[list[object]] = []

        def us(name: str, s: Summary, ratio: float | None = None) -> None:
            ratio = s.median / floor if ratio is None else ratio
            rows.append([name, f"{s.median:,.1f}", s.spread(), "us/step", f"{ratio:.2f}"])

        def st(name: str, s: Stats) -> None:
            us(name, Summary(s.median_us, s.min_us, s.max_us, s.runs))

        def chain(name: str, times: ChainTimes) -> None:
            pairs = zip(times.vm_us, times.floor_us, strict=True)
            vm_ratio = summarize([v / f for v, f in pairs]).median
            us(f"{name}: paired floor", summarize(times.floor_us), 1.0)
            us(f"{name} (start -> wait)", summarize(times.wall_us), times.ratio().median)
            us(f"{name} (VM started -> finished)", summarize(times.vm_us), vm_ratio)

        st("floor: python call of relay", self.python)
        st("floor: round trip MULTI SET HSET EXEC", self.round_trip)
        st("floor: round trip (after workloads)", self.round_trip_after)
        if self.relay:
            chain("relay", self.relay)
        if self.relay_effect:
            chain("relay+effect", self.relay_effect)
        if self.round_trip_x64 is not None:
            x = self.round_trip_x64
            rows.append([f"floor: round trip x{self.sizes.fan_chains} threads",
                         f"{x.median:,.0f}", x.spread(0), "ops/s", ""])
        for f in self.fan_in:
            s = summarize(f.steps_per_s)
            v = summarize(f.vm_steps_per_s)
            rows.append([f"fan-in {self.sizes.fan_chains}x{self.sizes.fan_steps}, "
                         f"{f.threads} threads", f"{s.median:,.0f}", s.spread(0), "steps/s", ""])
            rows.append([f"fan-in {f.threads} threads (VM clock)", f"{v.median:,.0f}",
                         v.spread(0), "steps/s", ""])
        return rows

    def print(self) -> None:
        print_table(["case", "median", "min-max", "unit", "x floor"], self.rows())
        load = ", ".join(f"{x:.2f}" for x in self.load_before + self.load_after)
        print(f"\nround-trip floor = {self.floor_us:.1f} us/step (lower of before/after); "
              f"relay ratios use the floor taken just before each run")
        print(f"load average (1/5/15 min) before, after: {load}")
        for t in self.targets():
            value = (f"{t['value']:,.0f}" if "steps/s" in t["name"]
                     else f"{t['value']:.2f}x")
            print(f"  {t['name']:<40} {value:>10}  target {t['target']:<9} "
                  f"{'met' if t['met'] else 'MISSED'}")


def run(sizes: Sizes, url: str | None = None) -> Report:
    """Measure everything; on ``url`` if given (tests), else on a private redis-server."""
    server = None
    if url is None:
        server = RedisServer().start()
        url = server.url
    client = redis.Redis.from_url(url)
    load_before = os.getloadavg()
    try:
        px = Pyrecks(client)
        store_kernels(px)
        python = python_floor(sizes.steps, max(sizes.repeat, 3))
        rt = round_trip_floor(client, sizes.steps, max(sizes.repeat, 3))
        relay = measure_relay(px, sizes, False) if "relay" in sizes.only else None
        relay_fx = measure_relay(px, sizes, True) if "relay+effect" in sizes.only else None
        fan = measure_fan_in(px, sizes) if "fan-in" in sizes.only else []
        x64 = None
        if "fan-in" in sizes.only:
            x64 = concurrent_floor(url, sizes.fan_chains, sizes.fan_steps, sizes.repeat)
        rt_after = round_trip_floor(client, sizes.steps, max(sizes.repeat, 3))
        return Report(sizes, python, rt, rt_after, x64, relay, relay_fx, fan,
                      load_before, os.getloadavg())
    finally:
        client.close()
        if server is not None:
            server.close()


def _parse_only(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {unknown}; pick from {WORKLOADS}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 repeats, one fan-in thread count (~20 s)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--repeat", type=int, help="timed runs per workload (default 5)")
    parser.add_argument("--steps", type=int, help="steps of the relay chains (default 200)")
    parser.add_argument("--threads", type=lambda t: tuple(int(x) for x in t.split(",")),
                        help="fan-in worker-thread counts to try, e.g. 16,64")
    parser.add_argument("--only", type=_parse_only,
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--waiter", choices=("wait", "poll"),
                        help="relay workloads: Pyrecks.wait (default) or poll every 10 ms "
                        "(no per-step client wake-up in the VM's process)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    overrides: dict[str, Any] = {}
    if args.repeat:
        overrides["repeat"] = args.repeat
    if args.steps:
        overrides["steps"] = args.steps
    if args.threads:
        overrides["fan_threads"] = args.threads
    if args.only:
        overrides["only"] = args.only
    if args.waiter:
        overrides["waiter"] = args.waiter
    if overrides:
        sizes = dataclasses.replace(sizes, **overrides)
    report = run(sizes)
    report.print()
    if args.json:
        write_json(report.as_json(), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
