"""Word count, step 2: count words, record the counts in Redis, end with a summary.

The kernel never touches Redis itself: it *asks* for two writes with effect clauses —
``INCRBY wc:words <n>`` (a running total over every document counted) and
``HSET wc:counts word n ...`` — which the VM applies atomically with the step's checkpoint,
exactly once.  The chain ends with a result (``done``) instead of a bare halt.
"""

from collections import Counter

from pyrecks.kernel import done

TOTAL_KEY = "wc:words"
COUNTS_KEY = "wc:counts"


def wc_count(words: list[str], total: int, top: int = 3) -> str:
    counts = Counter(words)
    summary = {
        "words": total,
        "distinct": len(counts),
        "top": [[word, n] for word, n in _top(counts, top)],
    }
    effects = [("INCRBY", TOTAL_KEY, total)]
    if counts:
        effects.append(("HSET", COUNTS_KEY, dict(counts)))
    return done(summary, effects=effects)


def _top(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    """Most frequent first, ties broken alphabetically so every run gives the same answer."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
