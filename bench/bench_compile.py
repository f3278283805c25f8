"""Benchmark: kernels checked + compiled per second, and the time to store them in Redis.

    python bench/bench_compile.py [--kernels 1000] [--runs 5] [--json]

Generates a batch of varied, realistic kernels (imports, helpers, comprehensions, classes,
annotated entry functions; 15-120 lines), runs the checker and compiler over the whole
batch several times and reports the median rate with its min-max, then stores the batch in
a private real Redis (started here with ``pyrecks.testing.RedisServer``) with one atomic
``KernelStore.put_many`` and reports that time too.  Target: ≥ 2,000 kernels/s for
check + compile on one core.  The same run measures the floor — CPython's own
``compile(source)`` and ``ast.parse`` + ``compile(tree)`` over the same batch — because no
checker that parses the source can beat ``ast.parse`` + ``compile``; the ratio to that floor
is the number that tells whether the checker itself is slow.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import statistics
import time
from collections.abc import Callable

from pyrecks.compiler.compiler import CompiledKernel, compile_kernel
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


def make_kernels(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` (name, source) pairs of varied size, reproducible from ``seed``."""
    rng = random.Random(seed)
    kernels = []
    for index in range(count):
        name = f"kernel_{index:05d}"
        parts = [rng.choice(HEADERS)]
        for h in range(rng.randint(0, 5)):
            parts.append(HELPER.format(i=h, scale=rng.randint(1, 9), limit=rng.randint(10, 99)))
        if rng.random() < 0.3:
            parts.append(CLASS.format(i=index))
        parts.append(ENTRY.format(name=name, limit=rng.randint(10, 1000)))
        kernels.append((name, "".join(parts)))
    return kernels


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--kernels", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    kernels = make_kernels(args.kernels)
    lines = [source.count("\n") for _name, source in kernels]
    policy = Policy()
    compiled: list[CompiledKernel] = []

    def compile_all() -> None:
        compiled.clear()
        compiled.extend(compile_kernel(name, source, policy) for name, source in kernels)

    def floor_compile() -> None:
        for name, source in kernels:
            compile(source, name, "exec")

    def floor_parse_compile() -> None:
        for name, source in kernels:
            compile(ast.parse(source), name, "exec")

    compile_all()  # warm-up: imports of the allowed modules, the grammar, caches
    rates = [args.kernels / timed(compile_all) for _ in range(args.runs)]
    floor = [args.kernels / timed(floor_compile) for _ in range(args.runs)]
    floor_ast = [args.kernels / timed(floor_parse_compile) for _ in range(args.runs)]

    with RedisServer() as server:
        store = KernelStore(server.client())
        store_times = []
        for _ in range(args.runs):
            server.client().flushall()
            store_times.append(timed(lambda: store.put_many(compiled)))

    result = {
        "kernels": args.kernels,
        "lines_min_median_max": [min(lines), int(statistics.median(lines)), max(lines)],
        "runs": args.runs,
        "check_compile_kernels_per_s": {
            "median": round(statistics.median(rates)),
            "min": round(min(rates)),
            "max": round(max(rates)),
        },
        "floor_compile_source_kernels_per_s": round(statistics.median(floor)),
        "floor_ast_parse_plus_compile_kernels_per_s": round(statistics.median(floor_ast)),
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
    rate = result["check_compile_kernels_per_s"]
    st = result["store_batch_s"]
    print(
        f"{args.kernels} kernels ({min(lines)}-{max(lines)} lines, median "
        f"{int(statistics.median(lines))}), {args.runs} runs"
    )
    print(
        f"check + compile: {rate['median']:,} kernels/s median "  # type: ignore[index]
        f"(min {rate['min']:,}, max {rate['max']:,}); target 2,000"  # type: ignore[index]
    )
    print(
        f"floor, same run: compile(source) alone {result['floor_compile_source_kernels_per_s']:,}"
        f" kernels/s; ast.parse + compile(tree) "
        f"{result['floor_ast_parse_plus_compile_kernels_per_s']:,} kernels/s"
    )
    print(
        f"store batch in Redis (one atomic script): {st['median'] * 1000:.1f} ms median "  # type: ignore[index]
        f"(min {st['min'] * 1000:.1f}, max {st['max'] * 1000:.1f})"  # type: ignore[index]
    )


if __name__ == "__main__":
    main()
