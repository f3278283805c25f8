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
from pyrecks.vm.chainstore import ChainStore
from pyrecks.vm.committer import Claimed, Committer
from pyrecks.vm.config import VMConfig
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.step import StepRunner

KS = Keyspace()


def make(r: redis.Redis, name: str = "vm-a", **config: object) -> Committer:
    settings = VMConfig(name=name, echo=False, group_commit=False, **config)  # type: ignore[arg-type]
    access = RedisAccess(r, threading.Event(), lambda line: None)
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
