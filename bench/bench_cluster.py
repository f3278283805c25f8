"""Fan-in on Redis Cluster beside one Redis, with 1, 2 and 3 ``pyrecks vm`` processes.

The same workload as bench_scaleout (chains of relay steps, each with one ``SET`` effect on
a key of its own) runs on one Redis server and on a private 3-master + 3-replica cluster, in
one run, so the two columns meet the same machine and load.  On the cluster every effect
goes through the outbox (a check, an APPLY in the key's slot, a DELIVERED: see
docs/vm.md, Redis Cluster), commits are neither pipelined nor grouped and the kernel digest
is read at each step: the ratio says what that costs.  VMs run kernels in threads
(``--isolation thread``), so the numbers are about the VM and Redis, not the jail.

    python -m bench.bench_cluster [--processes 1,2,3] [--threads 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import bench_scaleout as scaleout
from bench.bench_scaleout import KERNEL
from bench.common import print_table, ratios, summarize
from pyrecks.api import Pyrecks, connect
from pyrecks.testing import RedisServer
from pyrecks.testing.cluster import RedisClusterServer


def run(
    url: str, px: Pyrecks, processes: int, args: argparse.Namespace, tag: str
) -> list[float]:
    """Steps per second of each repeat, with ``processes`` VM processes on ``url``."""
    return scaleout.run(
        url,
        px,
        processes,
        args.threads,
        args.repeat,
        chains=args.chains,
        steps=args.steps,
        tag=tag,
        vm_options=("--isolation", "thread"),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", default="1,2,3")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--chains", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",")]
    rates: dict[str, dict[int, list[float]]] = {"one Redis": {}, "cluster 3+3": {}}
    with RedisServer() as server, RedisClusterServer(masters=3, replicas=1) as cluster:
        setups = {"one Redis": server.url, "cluster 3+3": cluster.url}
        handles = {setup: connect(url) for setup, url in setups.items()}
        for px in handles.values():
            px.store_kernel("relay_fx", KERNEL)
        # Interleaved (one Redis, then the cluster, per process count): the two numbers a
        # ratio pairs are taken close together.
        for count in counts:
            for i, (setup, url) in enumerate(setups.items()):
                rates[setup][count] = run(url, handles[setup], count, args, f"s{i}")
    rows = []
    for count in counts:
        single = summarize(rates["one Redis"][count])
        spread = summarize(rates["cluster 3+3"][count])
        ratio = ratios(rates["cluster 3+3"][count], rates["one Redis"][count])
        rows.append(
            [
                count,
                f"{single.median:,.0f} ({single.spread(0)})",
                f"{spread.median:,.0f} ({spread.spread(0)})",
                f"{ratio.median:.2f}",
            ]
        )
    print(
        f"{args.chains} chains x {args.steps + 1} steps (one SET effect each), "
        f"{args.threads} threads per VM, {args.repeat} repeats: steps/s median (min-max)"
    )
    print_table(["VM processes", "one Redis", "cluster 3+3", "cluster / one"], rows)
    return {"rates": {k: {str(c): v for c, v in d.items()} for k, d in rates.items()}}


if __name__ == "__main__":
    main()
