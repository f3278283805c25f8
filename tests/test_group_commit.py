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
    # While more than a few chains run, commits go through the group committer (the last
    # few chains pipeline their own); some round trips must have carried several commits.
    assert vm.committer.group.commits > 64 * 10
    assert vm.committer.group.batches < vm.committer.group.commits


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


def test_a_refused_pipelined_commit_discards_the_step_that_ran_ahead(r: redis.Redis) -> None:
    # With one chain, the next kernel runs while the previous commit is on the wire.  If
    # that commit is refused, the step that ran ahead must leave no trace.
    raw_kernel(r, "ahead", "def ahead(n: int):\n    print('ran', n)\n    return 'ahead(%d) INCRBY [(\"text\", 1)]' % (n + 1)\n")
    r.set("text", "not a number")
    px = Pyrecks(r)
    with px.local_vm(echo=False, threads=1):
        info = px.wait(px.start("ahead(0)"), timeout=30)
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "effect"
    assert info.step == 0 and info.call == "ahead(0)"  # failed at the first step
    assert [e.text for e in px.logs(info.id) if e.kind == "out"] == ["ran 0"]
    assert r.get("text") == b"not a number"


def test_after_the_script_cache_empties_each_request_runs_its_own_script(
    r: redis.Redis,
) -> None:
    """A batch mixes scripts (COMMIT, FAIL, RELEASE …).  After SCRIPT FLUSH (or a Redis
    restart) every request must be re-run with its own script: a COMMIT payload run by the
    FAIL script advanced checkpoints without their effects (issue 11, item 1)."""
    from pyrecks.vm.groupcommit import GroupCommitter, _Request

    first = r.register_script("return 'first:' .. KEYS[1] .. ARGV[1]")
    second = r.register_script("return 'second:' .. KEYS[1] .. ARGV[1]")
    committer = GroupCommitter(lambda: r)
    assert committer.call(first, ["k"], ["0"]) == b"first:k0"
    assert committer.call(second, ["k"], ["0"]) == b"second:k0"
    r.script_flush()
    batch = [
        _Request(second, ["a"], ["1"]),
        _Request(first, ["b"], ["2"]),
        _Request(second, ["c"], ["3"]),
    ]
    committer._send(batch)
    assert [q.error for q in batch] == [None, None, None]
    assert [q.result for q in batch] == [b"second:a1", b"first:b2", b"second:c3"]
