"""Helpers every benchmark shares: timing with medians and min-max, tables, JSON output.

Benchmarks compare a cost with its floor measured *in the same run* (e.g. a Redis round
trip), because absolute numbers swing with the machine and its load; ratios travel.
Timings are taken in batches (``number`` calls per batch, ``repeat`` batches) and reported
per operation as the median batch, with the fastest and slowest batch beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    """Per-operation timing in microseconds over ``runs`` batches of ``number`` operations."""

    median_us: float
    min_us: float
    max_us: float
    runs: int
    number: int

    def spread(self) -> str:
        return f"{self.min_us:.2f}-{self.max_us:.2f}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stats(batches: Sequence[float], number: int) -> Stats:
    per_op = [b / number * 1e6 for b in batches]
    return Stats(statistics.median(per_op), min(per_op), max(per_op), len(per_op), number)


def time_calls(fn: Callable[[], object], *, number: int = 1000, repeat: int = 7,
               warmup: int = 1) -> Stats:
    """Time ``fn()`` called ``number`` times per batch, ``repeat`` batches (after warm-up)."""
    for _ in range(warmup):
        for _ in range(number):
            fn()
    batches = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        batches.append(time.perf_counter() - start)
    return _stats(batches, number)


def time_each(fn: Callable[[T], object], make_items: Callable[[int], Iterable[T]], *,
              number: int = 1000, repeat: int = 7) -> Stats:
    """Time ``fn(item)`` over fresh items each batch (e.g. unique strings: no cache hits).

    ``make_items(batch_index)`` builds the batch's items before its clock starts.
    """
    batches = []
    for run in range(repeat):
        items = list(make_items(run))[:number]
        start = time.perf_counter()
        for item in items:
            fn(item)
        batches.append(time.perf_counter() - start)
        number = len(items)
    return _stats(batches, number)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                out: Any = None) -> None:
    """A plain aligned text table (first column left-aligned, the others right)."""
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    print(line(cells[0]), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells[1:]:
        print(line(row), file=out)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--repeat``, which every benchmark accepts."""
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeat", type=int, default=7, help="timed batches per case")


def emit_json(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2, sort_keys=True))


def environment() -> dict[str, Any]:
    """What the numbers were measured on, to store beside them."""
    import platform

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
    }


# -- shared by bench_chains: whole-run samples, rates, JSON files ---------------------------


@dataclass(frozen=True)
class Summary:
    """Median and min-max of a few whole-run samples (any unit: us per step, steps/s...).

    ``Stats`` times many calls per batch; a chain benchmark instead gets one number per run
    (a 200-step chain, a 6,400-step fan-in), so it summarises the runs themselves.
    """

    median: float
    min: float
    max: float
    runs: int

    def spread(self, digits: int = 1) -> str:
        return f"{self.min:,.{digits}f}-{self.max:,.{digits}f}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Summary:
    """Summarise one sample per run; refuses an empty list (a silent zero would mislead)."""
    if not samples:
        raise ValueError("no samples to summarise")
    return Summary(statistics.median(samples), min(samples), max(samples), len(samples))


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """Summary of per-run ratios ``n / d`` of paired samples (e.g. a run / its own floor).

    On a shared machine the load drifts over a minute; a ratio of two numbers taken
    seconds apart is far steadier than either number alone.
    """
    return summarize([n / d for n, d in zip(numerators, denominators, strict=True)])


def stats_from_batches(batches: Sequence[float], number: int) -> Stats:
    """Public form of the batch summary: ``batches`` in seconds, ``number`` ops each."""
    return _stats(batches, number)


def write_json(report: dict[str, Any], path: str) -> None:
    """Write ``report`` to ``path`` (``-`` means stdout), for tracking numbers over time."""
    text = json.dumps(report, indent=2, sort_keys=True)
    if path == "-":
        print(text)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
