"""The committer by itself: a chain's state and its writes, driven step by step, no thread.

Each test claims a chain, hands the committer transitions as a step would, and reads what
Redis holds — the promises of docs/vm.md ("Fast paths") checked without a VM around them.
"""

from __future__ import annotations

import threading

import pytest
import redis

from pyrecks.compiler.parser import parse
from pyrecks.keys import Keyspace
from pyrecks.vm.chainrun import ChainRun, Lost, RedisAccess, Roster
from pyrecks.vm.chainstore import ChainStore, Commit
from pyrecks.vm.committer import Claimed, Committer
from pyrecks.vm.config import VMConfig
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.step import StepRunner

KS = Keyspace()


def make(r: redis.Redis, name: str = "vm-a", **config: object) -> Committer:
    settings = VMConfig(name=name, echo=False, group_commit=False, **config)  # type: ignore[arg-type]
    access = RedisAccess(r, threading.Event(), lambda *line, **fields: None)
    return Committer(ChainStore(r, KS), access, settings, Roster(), lambda: ())


def claimed(committer: Committer, r: redis.Redis, call: str = "f(0)") -> ChainRun:
    store = committer.store
    store.create("c", call, "1.0", enqueue=False).run()
    run = committer.claim("c", "1-0", reclaimed=False)
    assert isinstance(run, ChainRun)
    StepRunner.resume(run)
    return run


def test_pure_steps_wait_for_a_checkpoint_and_effects_commit_at_once(r: redis.Redis) -> None:
    committer = make(r, checkpoint_steps=100, checkpoint_ms=60_000, pipeline_below=0)
    run = claimed(committer, r)
    committer.commit(run, "f", parse("f(1)"), ["one"])
    committer.commit(run, "f", parse("f(2)"), [])
    assert (run.step, run.committed_step) == (2, 0)
    assert r.hget(KS.chain("c"), "step") == b"0"  # nothing on the wire yet
    committer.commit(run, "f", parse('f(3) INCRBY [("n", 1)]'), [])
    assert r.hmget(KS.chain("c"), "step", "call") == [b"3", b"f(3)"]
    assert r.get("n") == b"1"
    assert next(e[b"text"] for _id, e in r.xrange(KS.log("c"))) == b"one"


def test_a_refused_pipelined_commit_puts_the_chain_back(r: redis.Redis) -> None:
    committer = make(r, checkpoint_steps=1, pipeline_below=4)
    run = claimed(committer, r)
    r.set("text", "not a number")
    committer.commit(run, "f", parse('f(1) INCRBY [("text", 1)]'), ["ran"])
    assert run.inflight is not None and run.step == 1  # optimistic: the next kernel may run
    with pytest.raises(StepFailure, match="does not hold a number"):
        committer.settle(run)
    assert (run.step, run.committed_step, str(run.call.name)) == (0, 0, "f")
    assert committer.fail(run, StepFailure("effect", "refused"))
    assert r.hmget(KS.chain("c"), "status", "step") == [b"failed", b"0"]


def test_a_commit_after_a_takeover_is_fenced(r: redis.Redis) -> None:
    committer = make(r, pipeline_below=0)
    run = claimed(committer, r)
    other = make(r, name="vm-b")
    r.set(KS.vm("vm-a"), "{}")  # vm-a beats: the takeover asks it instead
    asked = other.claim("c", "1-0", reclaimed=True)
    assert isinstance(asked, Claimed) and asked.verdict == "alive"
    r.delete(KS.vm("vm-a"))  # vm-a's lease expired: vm-b takes the chain
    assert isinstance(other.claim("c", "1-0", reclaimed=True), ChainRun)
    with pytest.raises(Lost):
        committer.commit(run, "f", parse('f(1) SET [("k", 1)]'), [])
    assert r.get("k") is None
    assert committer.lost(run) is False  # vm-b runs it: keep our hands off its entry


def test_release_keeps_the_progress_of_pure_steps(r: redis.Redis) -> None:
    committer = make(r, checkpoint_steps=100, checkpoint_ms=60_000, pipeline_below=0)
    run = claimed(committer, r)
    committer.commit(run, "f", parse("f(1)"), [])
    assert committer.release(run)
    assert r.hmget(KS.chain("c"), "status", "step", "call") == [b"queued", b"1", b"f(1)"]


def test_a_lost_reply_is_not_taken_for_a_landed_commit_when_redis_went_back(
    r: redis.Redis,
) -> None:
    """After a power loss Redis may hold an *older* step of our own epoch.  Recovery once
    read "the step moved" as "our commit landed", acknowledged the chain's entry as ended,
    and left it running under a living owner with no entry: stranded for good."""
    committer = make(r, checkpoint_steps=1, pipeline_below=0)
    run = claimed(committer, r)
    committer.commit(run, "f", parse('f(1) INCRBY [("n", 1)]'), [])
    committer.commit(run, "f", parse('f(2) INCRBY [("n", 1)]'), [])
    r.hset(KS.chain("c"), "step", "1")  # the AOF cut lost the commit of step 2
    final = committer.store.commit("c", committer_commit_of(committer, run))
    assert committer.recover(final, run).status == "fenced"


def committer_commit_of(committer: Committer, run: ChainRun) -> Commit:
    """The commit that would end ``run`` (what a lost reply leaves the committer holding)."""
    return Commit(committer.fence(run), "2.0", ["status", "done"], [], done="3")


def test_a_chain_redis_forgot_we_claimed_goes_back_to_the_queue_when_fenced(
    r: redis.Redis,
) -> None:
    """The claim was lost with Redis' last second: the chain is queued again, and the entry
    we hold is the only one naming it.  Dropping the chain leaves it to the stream, at
    once (not a lease later) and never acknowledged away."""
    committer = make(r, pipeline_below=0)
    run = claimed(committer, r)
    r.hset(KS.chain("c"), mapping={"status": "queued", "owner": "", "epoch": "0"})
    with pytest.raises(Lost):
        committer.commit(run, "f", parse('f(1) SET [("k", 1)]'), [])
    assert committer.lost(run) is False  # never acknowledge the only entry ...
    assert run.requeue  # ... hand it back: nobody else will deliver it


def test_a_chain_redis_took_back_to_an_older_step_of_ours_is_given_back_at_once(
    r: redis.Redis,
) -> None:
    """Redis lost our last commits but still names us the owner at our epoch: nobody else
    will take the chain before our lease-long silence on it, so we give it back now, at the
    step Redis has (DISOWN, fenced on the epoch we read); our own entry may then go."""
    committer = make(r, checkpoint_steps=1, pipeline_below=0)
    run = claimed(committer, r)
    committer.commit(run, "f", parse('f(1) INCRBY [("n", 1)]'), [])
    committer.commit(run, "f", parse('f(2) INCRBY [("n", 1)]'), [])
    r.hset(KS.chain("c"), mapping={"step": "1", "call": "f(1)"})  # the cut lost step 2
    with pytest.raises(Lost):
        committer.commit(run, "f", parse('f(3) INCRBY [("n", 1)]'), [])
    assert committer.lost(run) is True
    assert r.hmget(KS.chain("c"), "status", "owner", "step") == [b"queued", b"", b"1"]
    assert [f[b"chain"] for _i, f in r.xrange(KS.resumes)] == [b"c"]
