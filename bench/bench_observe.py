"""Benchmark: what watching a VM costs — relay steps/s with and without metrics and traces.

    python -m bench.bench_observe [--steps 200] [--repeat 7] [--chains 3] [--threads 8]
                                  [--isolation jail|thread] [--json PATH|-]

Issue 12 asks that ``pyrecks vm --metrics-port`` keep the hot path cheap.  Three VMs run in
this process side by side, each in its own namespace of one private ``redis-server`` (so
none takes another's chains): ``plain`` (nobody watches), ``metrics`` (the Prometheus
observer, as ``--metrics-port`` attaches it; the HTTP server is not needed to measure the
cost of counting) and, when OpenTelemetry is installed, ``metrics+traces`` (traces too,
through a batch processor into an exporter that drops them).  Each round runs ``--chains``
relay chains of ``--steps`` steps (bench_chains' ``relay`` kernel, no effects) on every VM,
the VMs taking turns in a rotating order, after a warm-up chain each.  Reported: steps/s of
each VM from the chain records (started -> finished), and each watched VM's ratio to
``plain`` paired round by round (ratios travel between machines; absolute rates don't).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import redis

from bench.bench_chains import RELAY_SOURCE, _check_done
from bench.common import environment, print_table, ratios, summarize, time_calls, write_json
from pyrecks.api import Pyrecks
from pyrecks.keys import Keyspace
from pyrecks.observe import Observer
from pyrecks.observe.metrics import Metrics
from pyrecks.testing import RedisServer
from pyrecks.vm.machine import VM, VMConfig


def _tracing() -> Observer | None:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from pyrecks.observe.tracing import Tracing
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return Tracing(provider, vm="bench", owns_provider=True)


def relay_rate(px: Pyrecks, steps: int, timeout: float = 120.0) -> float:
    """One relay chain of ``steps`` steps; steps/s by the VM's own record."""
    chain = px.start(f'relay("", {steps - 1})')
    info = _check_done(px, chain, steps, None, timeout)
    assert info.started is not None and info.finished is not None
    return steps / (info.finished - info.started)


class _Call:
    name = "relay"


class _Run:
    """A chain as the hooks see it (pyrecks.observe.RunView)."""

    id = "c1"
    epoch = "2"
    step = 5
    call = _Call()
    attempts = 0
    parent = None
    branch = None
    clear_join = False


def hook_cost(observers: list[Observer], number: int = 20_000) -> float:
    """Microseconds per step the VM spends in the observers' step hooks (the hot path)."""
    from pyrecks.compiler.instructions import Call, Transition
    from pyrecks.observe import NOOP, combine

    observer = combine(NOOP, *observers)
    run, transition = _Run(), Transition(Call("relay", ()))
    observer.chain_claimed(run, "", "")  # traces: the chain's context, as after a claim
    stats = time_calls(
        lambda: (observer.step_started(run), observer.step_finished(run, "ok", transition)),
        number=number,
        repeat=5,
    )
    observer.chain_left(run)
    return stats.median_us


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    modes: dict[str, list[Observer]] = {"plain": [], "metrics": [Metrics("bench", "")]}
    traces = _tracing()
    if traces is not None:
        modes["metrics+traces"] = [Metrics("bench", ""), traces]
    deployments: dict[str, Pyrecks] = {}
    machines: list[VM] = []
    try:
        for mode, observers in modes.items():
            px = Pyrecks(client, Keyspace(namespace=f"bench-{mode}"))
            px.store_kernel("relay", RELAY_SOURCE)
            config = VMConfig(
                name=f"bench-{mode}", threads=args.threads, echo=False, isolation=args.isolation
            )
            machine = VM(client, px.keyspace, config).observe(*observers).start()
            machines.append(machine)
            relay_rate(px, 20)  # warm-up: kernel loaded (jail: its cell forked), threads made
            deployments[mode] = px
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        order = list(modes)
        for round_ in range(args.repeat):
            turn = order[round_ % len(order) :] + order[: round_ % len(order)]
            for mode in turn:
                for _ in range(args.chains):
                    rates[mode].append(relay_rate(deployments[mode], args.steps))
    finally:
        for machine in machines:
            machine.stop()
        client.close()
    report: dict[str, Any] = {
        "environment": environment(),
        "isolation": args.isolation,
        "steps": args.steps,
        "rates": {mode: summarize(r).as_dict() for mode, r in rates.items()},
        "hook_us_per_step": {mode: hook_cost(observers) for mode, observers in modes.items()},
        "ratio_to_plain": {
            mode: ratios(rates[mode], rates["plain"]).as_dict() for mode in modes if mode != "plain"
        },
    }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7, help="rounds")
    parser.add_argument("--chains", type=int, default=3, help="chains per VM per round")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--isolation", default="jail", choices=("jail", "thread", "process"))
    parser.add_argument("--json", default=None, metavar="PATH", help="write JSON ('-': stdout)")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    try:
        report = run(args, server.url)
    finally:
        server.close()
    rows = []
    for mode, rate in report["rates"].items():
        ratio = report["ratio_to_plain"].get(mode)
        rows.append(
            [
                mode,
                f"{rate['median']:,.0f}",
                f"{rate['min']:,.0f}-{rate['max']:,.0f}",
                "1" if ratio is None else f"{ratio['median']:.3f}",
                "" if ratio is None else f"{ratio['min']:.3f}-{ratio['max']:.3f}",
                f"{report['hook_us_per_step'][mode]:.2f}",
            ]
        )
    print(f"relay, {report['steps']} steps, {report['isolation']} isolation, "
          f"{args.repeat} rounds x {args.chains} chains per VM")
    print_table(["VM", "steps/s", "min-max", "x plain", "min-max", "hooks us/step"], rows)
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
