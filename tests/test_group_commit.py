"""Group commit: concurrent chains share round trips, and nothing about a step changes."""

from __future__ import annotations

import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

BUMP = (
    "def bump(i: int, left: int):\n"
    "    if left == 0:\n"
    "        return 'return %d' % i\n"
    "    return 'bump(%d, %d) INCRBY [(\"b:%d\", 1)]' % (i, left - 1, i)\n"
)


def test_concurrent_commits_are_batched_and_every_effect_lands_once(r: redis.Redis) -> None:
    raw_kernel(r, "bump", BUMP)
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=32) as vm:
        chains = [px.start(f"bump({i}, 20)") for i in range(64)]
        infos = [px.wait(c, timeout=120) for c in chains]
    assert all(i.status is ChainStatus.DONE for i in infos)
    assert [int(v) for v in r.mget([f"b:{i}" for i in range(64)])] == [20] * 64
    assert vm.committer.commits >= 64 * 21
    # With 32 chains stepping at once, some round trips must have carried several commits.
    assert vm.committer.batches < vm.committer.commits


def test_a_refused_commit_in_a_batch_fails_only_its_own_chain(r: redis.Redis) -> None:
    raw_kernel(r, "bump", BUMP)
    raw_kernel(r, "bad", "def bad(n: int):\n    return 'bad(%d) INCRBY [(\"text\", 1)]' % n\n")
    r.set("text", "not a number")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=16):
        good = [px.start(f"bump({i}, 10)") for i in range(15)]
        bad = px.start("bad(1)")
        assert px.wait(bad, timeout=60).error_kind == "effect"
        assert all(px.wait(c, timeout=60).status is ChainStatus.DONE for c in good)
    assert r.get("text") == b"not a number"
