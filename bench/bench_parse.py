"""Benchmark: parsing a return string vs. one Redis GET round trip, in the same run.

    python -m bench.bench_parse [--json] [--repeat 7] [--number 2000]
    python bench/bench_parse.py

The parser runs once per chain step, so its cost is compared with the floor of a step: a
redis-py ``GET`` round trip to a private local ``redis-server`` started here.  Target: a
parse costs at most 0.2 × that round trip.

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
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench.common import Stats, add_common_args, emit_json, environment, print_table
from bench.common import time_calls, time_each
from pyrecks.compiler.parser import _engine, parse
from pyrecks.testing import RedisServer

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


def run(number: int, repeat: int) -> dict[str, object]:
    engine = _engine(None)
    server = RedisServer().start()
    try:
        get = measure_get(server, number, repeat)
        results: dict[str, dict[str, Stats]] = {}
        for name, case in CASES.items():
            same = case(0)
            lark_number = max(number // 10, 50)
            results[name] = {
                "hit": time_calls(lambda s=same: parse(s), number=number, repeat=repeat),
                "miss": time_each(parse, _unique(case, number), number=number, repeat=repeat),
                "lark": time_each(lambda t: engine.run(t, "start"), _unique(case, lark_number),
                                  number=lark_number, repeat=repeat),
            }
        get_after = measure_get(server, number, repeat)  # the floor drifts: measure twice
    finally:
        server.close()
    floor = min(get.median_us, get_after.median_us)
    return {
        "environment": environment(),
        "redis_get_us": get.as_dict(),
        "redis_get_after_us": get_after.as_dict(),
        "floor_us": floor,
        "cases": {
            name: {
                "text": CASES[name](0),
                **{kind: {**s.as_dict(), "ratio_to_get": s.median_us / floor}
                   for kind, s in kinds.items()},
            }
            for name, kinds in results.items()
        },
        "target_ratio": 0.2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--number", type=int, default=2000, help="operations per batch")
    args = parser.parse_args(argv)
    report = run(args.number, args.repeat)
    if args.json:
        emit_json(report)
        return 0
    floor = float(report["floor_us"])  # type: ignore[arg-type]
    get = report["redis_get_us"]
    rows: list[list[object]] = [[
        "redis-py GET round trip", f"{get['median_us']:.2f}",  # type: ignore[index]
        f"{get['min_us']:.2f}–{get['max_us']:.2f}", "1.00",  # type: ignore[index]
    ]]
    for name, kinds in report["cases"].items():  # type: ignore[attr-defined]
        for kind in ("hit", "miss", "lark"):
            s = kinds[kind]
            rows.append([f"parse {name} ({kind})", f"{s['median_us']:.2f}",
                         f"{s['min_us']:.2f}–{s['max_us']:.2f}", f"{s['ratio_to_get']:.3f}"])
    print_table(["case", "median µs", "min–max µs", "× GET"], rows)
    worst = max(k["miss"]["ratio_to_get"] for k in report["cases"].values())  # type: ignore[attr-defined]
    print(f"\nfloor (GET median) {floor:.1f} µs; worst cache-miss parse = {worst:.3f} × GET "
          f"(target ≤ 0.2 for call and set3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
