"""Fan-in across several ``pyrecks vm`` processes: the lever beyond one process's GIL.

The issue-6 fan-in target is for one VM process; this measures the same workload (64 chains
of 100 relay+effect steps) with 1 and 2 VM *processes* sharing the chains through the
consumer group, as a user would run them (``pyrecks vm`` subprocesses, real Redis).

    python -m bench.bench_scaleout [--processes 1,2] [--threads 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import redis

from pyrecks.api import Pyrecks
from pyrecks.testing import RedisServer
from pyrecks.vm.records import ChainStatus

KERNEL = """from pyrecks.kernel import call, done
def relay_fx(s: str, left: int, k: str):
    if left == 0:
        return done(len(s))
    return call("relay_fx", s + "x", left - 1, k, set={k: s})
"""
CHAINS, STEPS = 64, 100


def run(
    url: str,
    px: Pyrecks,
    processes: int,
    threads: int,
    repeat: int,
    *,
    chains: int = CHAINS,
    steps: int = STEPS,
    tag: str = "bench",
    vm_options: tuple[str, ...] = (),
) -> list[float]:
    """Steps per second of each repeat: ``chains`` relay chains of ``steps`` effect steps
    (each on a key of its own, named from ``tag``) run by ``processes`` VM processes on
    ``url`` (``pyrecks vm`` with ``vm_options``).  bench_cluster runs it on both servers."""
    env = {**os.environ, "REDIS_URL": url}
    command = [sys.executable, "-m", "pyrecks", "vm", "--threads", str(threads), "--quiet"]
    vms = [
        subprocess.Popen(
            [*command, *vm_options, "--name", f"{tag}-{processes}-{i}"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for i in range(processes)
    ]
    try:
        px.wait(px.start('relay_fx("", 5, "warm")'), timeout=120)
        rates = []
        for _ in range(repeat):
            began = time.perf_counter()
            started = [px.start(f'relay_fx("", {steps}, "{tag}:k{i}")') for i in range(chains)]
            for chain in started:
                info = px.wait(chain, timeout=600)
                if info.status is not ChainStatus.DONE:
                    raise SystemExit(f"chain {chain} ended {info.status.value}: {info.error}")
            rates.append(chains * (steps + 1) / (time.perf_counter() - began))
        return rates
    finally:
        for vm in vms:
            vm.kill()
            vm.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        px = Pyrecks(r)
        px.store_kernel("relay_fx", KERNEL)
        print(f"{'VM processes':>12}  {'steps/s median':>14}  min-max")
        for count in (int(p) for p in args.processes.split(",")):
            rates = run(server.url, px, count, args.threads, args.repeat)
            print(
                f"{count:>12}  {statistics.median(rates):>14,.0f}  "
                f"{min(rates):,.0f}-{max(rates):,.0f}"
            )


if __name__ == "__main__":
    main()
