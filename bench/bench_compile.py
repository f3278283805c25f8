"""Benchmark: kernels checked + compiled per second, and the time to store them in Redis.

    python -m bench.bench_compile [--kernels 1000] [--runs 5] [--workers 2] [--json]

Generates two batches of varied, realistic kernels (imports, helpers, comprehensions,
classes, annotated entry functions): "large" (21-84 lines) and "typical" (21-43 lines, no
classes), runs the checker and compiler over each whole batch several times and reports the
median rate with its min-max, in one process (``compile_kernel``) and spread over
``--workers`` processes (``compile_many``, pool start-up included).  Then it stores the large
batch in a private real Redis (started here with ``pyrecks.testing.RedisServer``) with one
atomic ``KernelStore.put_many`` and reports that time too.  Target: ≥ 2,000 kernels/s for
check + compile.  The same run measures the floor — CPython's own ``compile(source)`` and
``ast.parse`` + ``compile(tree)`` over the same batch — because no checker that parses the
source can beat ``ast.parse`` + ``compile``; the ratio to that floor is the number that tells
whether the checker itself is slow.  See docs/kernels.md, "Compile speed".
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from pyrecks.compiler.compiler import CompiledKernel, compile_kernel, compile_many
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.store import KernelStore
from pyrecks.testing import RedisServer

HEADERS = [
    "import json\nimport math\n",
    "import re\nfrom collections import Counter\n",
    "from pyrecks.kernel import call, done\nimport statistics\n",
    "import datetime\nfrom functools import reduce\nimport itertools\n",
]

HELPER = '''
def _helper_{i}(values: list[float], scale: float = {scale}) -> list[float]:
    """Scale and clip values."""
    out = []
    for v in values:
        w = v * scale
        if w > {limit}:
            w = {limit}
        out.append(round(w, 3))
    return [x for x in out if x >= 0]
'''

CLASS = '''
class Acc{i}:
    """A small accumulator."""

    def __init__(self) -> None:
        self.items: list[int] = []

    def add(self, v: int) -> None:
        self.items.append(v)

    def total(self) -> int:
        return sum(self.items)
'''

ENTRY = '''
LIMIT = {limit}
NAMES = ("alpha", "beta", "gamma")


def {name}(text: str, counts: dict[str, int], n: int = 3) -> str:
    """Entry point of {name}."""
    words = [w.lower() for w in text.split() if w]
    table = {{w: len(w) for w in words}}
    total = sum(table.values()) + sum(counts.values())
    best = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    try:
        ratio = total / max(len(words), 1)
    except ZeroDivisionError:
        ratio = 0.0
    label = f"{{len(words)}} words, ratio {{ratio:.2f}}"
    if total > LIMIT:
        return 'return {{"total": 1}}'
    return ''
'''


def make_kernels(
    count: int, seed: int = 7, *, max_helpers: int = 5, class_share: float = 0.3
) -> list[tuple[str, str]]:
    """``count`` (name, source) pairs of varied size, reproducible from ``seed``.

    The defaults give the "large" batch (21-84 lines); ``max_helpers=2, class_share=0``
    gives the "typical" one (21-43 lines).
    """
    rng = random.Random(seed)
    kernels = []
    for index in range(count):
        name = f"kernel_{index:05d}"
        parts = [rng.choice(HEADERS)]
        for h in range(rng.randint(0, max_helpers)):
            parts.append(HELPER.format(i=h, scale=rng.randint(1, 9), limit=rng.randint(10, 99)))
        if rng.random() < class_share:
            parts.append(CLASS.format(i=index))
        parts.append(ENTRY.format(name=name, limit=rng.randint(10, 1000)))
        kernels.append((name, "".join(parts)))
    return kernels


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(kernels: list[tuple[str, str]], runs: int, workers: int) -> dict[str, Any]:
    """Rates (kernels/s) for one batch: serial, parallel, and the CPython floors."""
    policy = Policy()
    n = len(kernels)
    lines = [source.count("\n") for _name, source in kernels]

    def compile_all() -> None:
        for name, source in kernels:
            compile_kernel(name, source, policy)

    def compile_parallel() -> None:
        results = compile_many(kernels, policy, workers=workers)
        assert all(isinstance(r, CompiledKernel) for r in results)

    def floor_compile() -> None:
        for name, source in kernels:
            compile(source, name, "exec", dont_inherit=True)

    def floor_parse_compile() -> None:
        for name, source in kernels:
            compile(ast.parse(source), name, "exec", dont_inherit=True)

    compile_all()  # warm-up: imports of the allowed modules, the grammar, caches

    def rates(fn: Callable[[], object]) -> dict[str, int]:
        values = [n / timed(fn) for _ in range(runs)]
        return {
            "median": round(statistics.median(values)),
            "min": round(min(values)),
            "max": round(max(values)),
        }

    return {
        "kernels": n,
        "lines_min_median_max": [min(lines), int(statistics.median(lines)), max(lines)],
        "check_compile_kernels_per_s": rates(compile_all),
        f"check_compile_parallel_{workers}_workers_kernels_per_s": rates(compile_parallel),
        "floor_compile_source_kernels_per_s": rates(floor_compile),
        "floor_ast_parse_plus_compile_kernels_per_s": rates(floor_parse_compile),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--kernels", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel line")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    batches = {
        "large": make_kernels(args.kernels),
        "typical": make_kernels(args.kernels, seed=11, max_helpers=2, class_share=0.0),
    }
    results = {label: measure(k, args.runs, args.workers) for label, k in batches.items()}

    policy = Policy()
    compiled = [compile_kernel(name, source, policy) for name, source in batches["large"]]
    with RedisServer() as server:
        store = KernelStore(server.client())
        store_times = []
        for _ in range(args.runs):
            server.client().flushall()
            store_times.append(timed(lambda: store.put_many(compiled)))

    result: dict[str, Any] = {
        "runs": args.runs,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "batches": results,
        "store_batch_s": {
            "median": round(statistics.median(store_times), 4),
            "min": round(min(store_times), 4),
            "max": round(max(store_times), 4),
        },
        "target_kernels_per_s": 2000,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return

    def fmt(rate: dict[str, int]) -> str:
        return f"{rate['median']:>6,} ({rate['min']:,}-{rate['max']:,})"

    print(f"{args.runs} runs per line; kernels/s, median (min-max); target 2,000")
    for label, r in results.items():
        lo, med, hi = r["lines_min_median_max"]
        print(f"\n{label} batch: {r['kernels']} kernels, {lo}-{hi} lines (median {med})")
        print(f"  check + compile, 1 process      {fmt(r['check_compile_kernels_per_s'])}")
        key = f"check_compile_parallel_{args.workers}_workers_kernels_per_s"
        print(f"  check + compile, {args.workers} workers      {fmt(r[key])}  (compile_many)")
        print(f"  floor: compile(source)          {fmt(r['floor_compile_source_kernels_per_s'])}")
        print(
            "  floor: ast.parse+compile(tree)  "
            f"{fmt(r['floor_ast_parse_plus_compile_kernels_per_s'])}"
        )
    st = result["store_batch_s"]
    print(
        f"\nstore the large batch in Redis (one atomic script): {st['median'] * 1000:.1f} ms "
        f"median (min {st['min'] * 1000:.1f}, max {st['max'] * 1000:.1f})"
    )


if __name__ == "__main__":
    main()
