"""Benchmark: parsing a return string vs. one Redis GET round trip, in the same run.

    python -m bench.bench_parse [--json] [--repeat 7] [--number 2000]
    python bench/bench_parse.py

The parser runs once per chain step, so its cost is compared with the floor of a step: a
redis-py ``GET`` round trip to a private local ``redis-server`` started here.  Target: a
parse costs at most 0.2 x that round trip.

Cases (each a typical string a kernel returns):

* ``call``   — ``func1("say hi …")``, a one-argument call;
* ``set3``   — a three-argument call with a three-pair ``SET`` clause;
* ``fanout`` — ``[f("…"), g(1)] -> merge("x")``.

For each: **hit** (the same string again: LRU cache), **miss** (a unique string every time,
through the public ``parse``: what a real chain with changing data pays) and **lark** (the
general Lark path alone, bypassing cache and fast path).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.common import (
    Stats,
    add_common_args,
    emit_json,
    environment,
    print_table,
    time_calls,
    time_each,
)
from pyrecks.compiler.parser import _engine, parse
from pyrecks.testing import RedisServer

TARGET_RATIO = 0.2

CASES: dict[str, Callable[[int], str]] = {
    "call": lambda i: f'func1("say hi to func1 with x{i}")',
    "set3": lambda i: (
        f'next_func_to_call("a{i}", "b", "c") '
        f'SET [("k1", "v{i}"), ("k2", "v2"), ("k3", {i})]'
    ),
    "fanout": lambda i: f'[f("a{i}"), g({i})] -> merge("x")',
}


def _unique(case: Callable[[int], str], number: int) -> Callable[[int], Iterator[str]]:
    # Distinct from every other batch's strings, so no batch ever hits the cache.
    return lambda run: (case(run * 10_000_000 + i) for i in range(number))


def measure_get(server: RedisServer, number: int, repeat: int) -> Stats:
    client = redis.Redis.from_url(server.url)
    client.set("bench:key", "say hi to func1 with x3")
    try:
        return time_calls(lambda: client.get("bench:key"), number=number, repeat=repeat)
    finally:
        client.close()


@dataclass
class Measurement:
    """Everything one run measured; the GET floor is measured before and after the parses."""

    get: Stats
    get_after: Stats
    results: dict[str, dict[str, Stats]]

    @property
    def floor_us(self) -> float:
        return min(self.get.median_us, self.get_after.median_us)

    def ratio(self, s: Stats) -> float:
        return s.median_us / self.floor_us

    def as_json(self) -> dict[str, object]:
        return {
            "environment": environment(),
            "redis_get_us": self.get.as_dict(),
            "redis_get_after_us": self.get_after.as_dict(),
            "floor_us": self.floor_us,
            "target_ratio": TARGET_RATIO,
            "cases": {
                name: {
                    "text": CASES[name](0),
                    **{kind: {**s.as_dict(), "ratio_to_get": self.ratio(s)}
                       for kind, s in kinds.items()},
                }
                for name, kinds in self.results.items()
            },
        }


def run(number: int, repeat: int) -> Measurement:
    engine = _engine(None)
    server = RedisServer().start()
    try:
        get = measure_get(server, number, repeat)
        results: dict[str, dict[str, Stats]] = {}
        for name, case in CASES.items():
            same = case(0)
            lark_number = max(number // 10, 50)
            results[name] = {
                "hit": time_calls(functools.partial(parse, same), number=number, repeat=repeat),
                "miss": time_each(parse, _unique(case, number), number=number, repeat=repeat),
                "lark": time_each(lambda t: engine.run(t, "start"), _unique(case, lark_number),
                                  number=lark_number, repeat=repeat),
            }
        get_after = measure_get(server, number, repeat)
    finally:
        server.close()
    return Measurement(get, get_after, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--number", type=int, default=2000, help="operations per batch")
    args = parser.parse_args(argv)
    m = run(args.number, args.repeat)
    if args.json:
        emit_json(m.as_json())
        return 0
    rows: list[list[object]] = [
        ["redis-py GET round trip (before)", f"{m.get.median_us:.2f}", m.get.spread(),
         f"{m.ratio(m.get):.3f}"],
        ["redis-py GET round trip (after)", f"{m.get_after.median_us:.2f}",
         m.get_after.spread(), f"{m.ratio(m.get_after):.3f}"],
    ]
    for name, kinds in m.results.items():
        for kind, s in kinds.items():
            rows.append([f"parse {name} ({kind})", f"{s.median_us:.2f}", s.spread(),
                         f"{m.ratio(s):.3f}"])
    print_table(["case", "median us", "min-max us", "x GET"], rows)
    worst = max(m.ratio(kinds["miss"]) for kinds in m.results.values())
    print(f"\nfloor (lower GET median) {m.floor_us:.1f} us; worst cache-miss parse = "
          f"{worst:.3f} x GET (target <= {TARGET_RATIO})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
