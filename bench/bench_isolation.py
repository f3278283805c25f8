"""Benchmark: per-step cost of ``--isolation process`` against the default thread mode.

    python bench/bench_isolation.py [--steps 200] [--repeat 7] [--json]

Runs a relay chain (``relay(200)`` -> ``relay(199)`` -> … -> ``return 0``: one trivial kernel
per step) on a one-thread VM against a private real Redis, alternating thread and process
mode, and reports the median time per step of each and their difference — the price of a
pipe round trip per step.  The same run measures the executor alone (one trivial call, no
Redis) in both modes, and how long it takes to start a worker (the first one starts the fork
server; later ones, e.g. replacing a worker killed for its time limit, are forks of it).

The ``__main__`` guard matters: worker processes import the main module (see
:mod:`pyrecks.vm.isolation`).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import Any

from bench.common import Stats, add_common_args, emit_json, environment, print_table, time_calls
from pyrecks.api import Pyrecks
from pyrecks.compiler.policy import Policy
from pyrecks.testing import RedisServer
from pyrecks.vm.executors import ThreadExecutor
from pyrecks.vm.isolation import ProcessExecutor
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.records import ChainStatus
from pyrecks.vm.sandbox import OutputBuffer, Sandbox

RELAY = (
    "def relay(n: int):\n"
    "    if n <= 0:\n"
    "        return 'return 0'\n"
    "    return 'relay(%d)' % (n - 1)\n"
)
TRIVIAL = "def trivial(n: int):\n    return 'return %d' % n\n"


def chain_seconds(px: Pyrecks, steps: int, isolation: str, repeat: int) -> list[float]:
    """Wall time of ``repeat`` relay chains of ``steps`` steps on one warm VM."""
    times: list[float] = []
    with px.local_vm(echo=False, threads=1, isolation=isolation, block_ms=50) as vm:
        if isinstance(vm.executor, ProcessExecutor):
            vm.executor.warm(1)
        px.wait(px.start("relay(3)"), timeout=60)  # warm-up: kernel loaded everywhere
        for _ in range(repeat):
            start = time.perf_counter()
            info = px.wait(px.start(f"relay({steps})"), timeout=600)
            times.append(time.perf_counter() - start)
            assert info.status is ChainStatus.DONE, info.error
    return times


def loaded(name: str, source: str) -> LoadedKernel:
    namespace = Sandbox(Policy().allowed_modules).namespace(name)
    exec(compile(source, f"<kernel {name}>", "exec"), namespace)
    digest = hashlib.sha256(source.encode()).hexdigest()
    return LoadedKernel(name, digest, namespace[name], (), None, None, source)


def executor_stats(executor: Any, repeat: int) -> Stats:
    kernel = loaded("trivial", TRIVIAL)

    def one() -> None:
        executor.execute(kernel, [1], OutputBuffer(), 30.0, lambda: None)

    try:
        return time_calls(one, number=500, repeat=repeat)
    finally:
        executor.close()


def start_seconds(count: int) -> list[float]:
    """Time to start (and hear 'ready' from) each of ``count`` workers, one after another."""
    executor = ProcessExecutor(Policy())
    out = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            executor.warm(len(executor.worker_pids) + 1)
            out.append(time.perf_counter() - start)
    finally:
        executor.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    add_common_args(parser)
    args = parser.parse_args()

    starts = start_seconds(4)
    server = RedisServer().start()
    try:
        r = server.client()
        r.set("relay", RELAY)
        px = Pyrecks(r)
        per_step: dict[str, list[float]] = {"thread": [], "process": []}
        for _ in range(2):  # alternate the modes so drift hits both alike
            for mode in ("thread", "process"):
                seconds = chain_seconds(px, args.steps, mode, max(args.repeat // 2, 1))
                per_step[mode] += [s / (args.steps + 1) * 1e6 for s in seconds]
    finally:
        server.close()
    thread_exec = executor_stats(ThreadExecutor(), args.repeat)
    process_exec = executor_stats(ProcessExecutor(Policy()), args.repeat)

    med = {mode: statistics.median(v) for mode, v in per_step.items()}
    report = {
        "environment": environment(),
        "steps": args.steps,
        "chain_step_us": {
            mode: {"median": med[mode], "min": min(v), "max": max(v), "runs": len(v)}
            for mode, v in per_step.items()
        },
        "chain_step_overhead_us": med["process"] - med["thread"],
        "executor_call_us": {"thread": thread_exec.as_dict(), "process": process_exec.as_dict()},
        "worker_start_s": {"first (starts the fork server)": starts[0], "next": starts[1:]},
    }
    if args.json:
        emit_json(report)
        return
    rows = [
        [
            f"{mode} mode, {args.steps}-step relay chain",
            f"{med[mode]:.0f}",
            f"{min(v):.0f}-{max(v):.0f}",
        ]
        for mode, v in per_step.items()
    ]
    rows.append(["process - thread (per step)", f"{report['chain_step_overhead_us']:.0f}", ""])
    rows += [
        ["executor alone, thread", f"{thread_exec.median_us:.1f}", thread_exec.spread()],
        ["executor alone, process", f"{process_exec.median_us:.1f}", process_exec.spread()],
    ]
    print_table(["per step (µs)", "median", "min-max"], rows)
    print(
        f"\nworker start: first {starts[0] * 1000:.0f} ms (starts the fork server), then "
        + ", ".join(f"{s * 1000:.0f}" for s in starts[1:])
        + " ms"
    )


if __name__ == "__main__":
    main()
