"""The chain-store scripts, each tested by itself against a real Redis (as RQ tests its own).

Every script must declare in KEYS every key it touches (a later Redis Cluster port depends
on it): ``touched`` watches the commands a script runs through MONITOR and asks Redis
(``COMMAND GETKEYS``) which keys each one names.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from pyrecks.keys import Keyspace
from pyrecks.vm.chainstore import (
    GROUP,
    BranchOf,
    ChainStore,
    Commit,
    Failure,
    Fence,
    Invocation,
    Reply,
)

KS = Keyspace()
NOW = "1700000000.0"


@pytest.fixture
def store(r: redis.Redis) -> ChainStore:
    return ChainStore(r, KS, retention=600, max_log=100)


def touched(r: redis.Redis, action: Callable[[], Any]) -> set[str]:
    """Every key that a command run *inside a script* named while ``action`` ran."""
    conn = r.connection_pool.make_connection()
    conn.connect()
    conn.send_command("MONITOR")
    conn.read_response()
    try:
        action()
        r.exists("monitor:end")
        keys: set[str] = set()
        while True:
            raw = conn.read_response()
            line = raw.decode() if isinstance(raw, bytes) else str(raw)
            args = [
                a.encode().decode("unicode_escape")
                for a in re.findall(r'"((?:[^"\\]|\\.)*)"', line)
            ]
            if [a.lower() for a in args] == ["exists", "monitor:end"]:
                return keys
            if "lua]" not in line:
                continue
            try:
                found: Any = r.command_getkeys(*args)
            except redis.ResponseError:
                continue  # a command without keys
            keys |= {k.decode() if isinstance(k, bytes) else str(k) for k in found}
    finally:
        conn.disconnect()


def run_declared(r: redis.Redis, invocation: Invocation) -> Reply:
    """Run ``invocation`` and check that it touched only keys it declared in KEYS."""
    replies: list[Reply] = []
    keys = touched(r, lambda: replies.append(invocation.run()))
    assert keys <= set(invocation.keys), f"undeclared keys: {keys - set(invocation.keys)}"
    return replies[0]


def running(r: redis.Redis, store: ChainStore, chain_id: str, owner: str = "vm-a") -> Fence:
    """A chain created and claimed by ``owner``; its fence."""
    assert store.create(chain_id, 'f("x")', NOW, enqueue=False).run().ok
    got = store.claim(chain_id, owner, NOW, reclaim=False, owner="", asks_ttl=30).run()
    assert got.ok
    return Fence(owner, got.text(0), got.text(1))


# -- create -------------------------------------------------------------------------------


def test_create_queues_a_chain_once_and_says_when_it_exists(
    r: redis.Redis, store: ChainStore
) -> None:
    assert run_declared(r, store.create("c1", 'f("x")', NOW, enqueue=True)).ok
    again = run_declared(r, store.create("c1", "g()", NOW, enqueue=True))
    assert (again.status, again.text(0), again.text(1)) == ("exists", "queued", 'f("x")')
    assert r.xlen(KS.starts) == 1
    assert r.hget(KS.chain("c1"), "status") == b"queued"


def test_create_of_a_bad_call_records_a_failed_chain_and_ends_it(
    r: redis.Redis, store: ChainStore
) -> None:
    reply = run_declared(
        r, store.create("bad", "f(", NOW, enqueue=False, error="no", error_kind="bad_call")
    )
    assert reply.ok
    assert r.hget(KS.chain("bad"), "status") == b"failed"
    assert r.zscore(KS.failed, "bad") is not None
    assert r.xlen(KS.ended("bad")) == 1


# -- claim ----------------------------------------------------------------------------------


def test_claim_bumps_the_epoch_and_a_second_claim_is_skipped(
    r: redis.Redis, store: ChainStore
) -> None:
    store.create("c", 'f("x")', NOW, enqueue=False).run()
    first = run_declared(r, store.claim("c", "vm-a", NOW, reclaim=False, owner="", asks_ttl=30))
    assert first.ok and first.text(0) == "1" and first.text(2) == 'f("x")'
    second = store.claim("c", "vm-b", NOW, reclaim=False, owner="", asks_ttl=30).run()
    assert (second.status, second.text(0)) == ("skip", "running")


def test_a_takeover_of_a_living_owners_chain_asks_the_owner(
    r: redis.Redis, store: ChainStore
) -> None:
    running(r, store, "c", owner="vm-a")
    r.set(KS.vm("vm-a"), "{}", px=10_000)
    wrong = store.claim("c", "vm-b", NOW, reclaim=True, owner="vm-x", asks_ttl=30).run()
    assert (wrong.status, wrong.text(0)) == ("moved", "vm-a")
    alive = run_declared(r, store.claim("c", "vm-b", NOW, reclaim=True, owner="vm-a", asks_ttl=30))
    assert (alive.status, alive.text(0)) == ("alive", "vm-a")
    assert r.smembers(KS.vm_asks("vm-a")) == {b"c"}
    r.delete(KS.vm("vm-a"))  # its heartbeat expired: the takeover wins
    taken = store.claim("c", "vm-b", NOW, reclaim=True, owner="vm-a", asks_ttl=30).run()
    assert taken.ok and taken.text(0) == "2"


def test_disown_gives_back_a_chain_only_at_the_epoch_read(
    r: redis.Redis, store: ChainStore
) -> None:
    fence = running(r, store, "c", owner="vm-a")
    stale = store.disown("c", "vm-a", "0", NOW).run()
    assert (stale.status, stale.text(0)) == ("fenced", "running")
    assert run_declared(r, store.disown("c", "vm-a", fence.epoch, NOW)).ok
    assert r.hget(KS.chain("c"), "status") == b"queued"
    assert r.xlen(KS.resumes) == 1  # ahead of newer starts


# -- prepare --------------------------------------------------------------------------------


def test_prepare_reads_the_kernel_and_every_key_argument(r: redis.Redis, store: ChainStore) -> None:
    r.set("k", "def k(x):\n    return ''\n")
    r.hset("h", mapping={"a": "1"})
    reply = run_declared(r, store.prepare("k", ["h", "nothing"], "", ""))
    assert reply.ok and reply.text(0) == "string"
    assert reply.values[2] == [b"hash", [b"a", b"1"]]
    assert reply.values[3] == [b"none", b""]


def test_prepare_sees_a_source_changed_by_hset_alone(r: redis.Redis, store: ChainStore) -> None:
    """``HSET name source …`` leaves the old digest: freshness compares sources too."""
    import hashlib

    source = "def k(x):\n    return ''\n"
    r.hset("k", mapping={"source": source, "digest": "d1", "compiled": "1"})
    sha1 = hashlib.sha1(source.encode()).hexdigest()
    assert store.prepare("k", [], "d1", sha1).run().text(0) == "same"
    r.hset("k", "source", "def k(x):\n    return 'return 1'\n")
    assert store.prepare("k", [], "d1", sha1).run().text(0) == "hash"


# -- commit ---------------------------------------------------------------------------------


def test_commit_applies_effects_checkpoint_and_logs_with_every_key_declared(
    r: redis.Redis, store: ChainStore
) -> None:
    fence = running(r, store, "c")
    commit = Commit(
        fence,
        NOW,
        ["step", "1", "call", "g()"],
        [["kind", "step", "text", "-> g()"]],
        effects=[[b"INCRBY", b"counter", b"2"], [b"SET", b"name", b"v"]],
    )
    assert run_declared(r, store.commit("c", commit)).ok
    assert r.mget("counter", "name") == [b"2", b"v"]
    assert r.hmget(KS.chain("c"), "step", "call") == [b"1", b"g()"]
    assert r.xlen(KS.log("c")) == 1
    # The same commit again is fenced: the chain is no longer at step 0.
    again = store.commit("c", commit).run()
    assert (again.status, again.text(0)) == ("fenced", "running")
    assert r.get("counter") == b"2"


def test_commit_refuses_an_effect_on_a_pyrecks_key(r: redis.Redis, store: ChainStore) -> None:
    fence = running(r, store, "c")
    commit = Commit(fence, NOW, ["step", "1"], [], effects=[[b"SET", b"pyrecks:x", b"1"]])
    reply = store.commit("c", commit).run()
    assert reply.status == "rejected" and "belong to pyrecks" in reply.text(0)
    assert r.hget(KS.chain("c"), "step") == b"0"


def test_fan_out_then_the_last_branch_queues_the_parent(r: redis.Redis, store: ChainStore) -> None:
    fence = running(r, store, "p")
    fields = ["step", "1", "status", "waiting", "owner", "", "pending", "2", "join", "j()"]
    commit = Commit(fence, NOW, fields, [], fanout=["a(1)", "b(2)"])
    assert run_declared(r, store.commit("p", commit)).ok
    assert r.hget(KS.chain("p.0"), "call") == b"a(1)"
    assert r.hget(KS.chain("p.1"), "parent") == b"p"
    for index in ("0", "1"):
        branch = f"p.{index}"
        got = store.claim(branch, "vm-a", NOW, reclaim=False, owner="", asks_ttl=30).run()
        done = Commit(
            Fence("vm-a", got.text(0), "0"),
            NOW,
            ["step", "1", "status", "done", "owner", ""],
            [],
            done=index,
            branch_of=BranchOf("p", index),
        )
        assert run_declared(r, store.commit(branch, done)).ok
    assert r.hget(KS.chain("p"), "status") == b"queued"
    assert r.hgetall(KS.results("p")) == {b"0": b"0", b"1": b"1"}
    assert r.xlen(KS.ended("p.0")) == 1


# -- fail, release, retry, cancel -------------------------------------------------------------


def test_a_failing_branch_fails_its_waiting_parent(r: redis.Redis, store: ChainStore) -> None:
    fence = running(r, store, "p")
    store.commit(
        "p", Commit(fence, NOW, ["step", "1", "status", "waiting"], [], fanout=["a()"])
    ).run()
    got = store.claim("p.0", "vm-a", NOW, reclaim=False, owner="", asks_ttl=30).run()
    failure = Failure(
        Fence("vm-a", got.text(0), "0"),
        NOW,
        ["status", "failed", "error", "boom"],
        [["kind", "error", "text", "boom"]],
        parent="p",
        parent_error="branch p.0 failed: boom",
    )
    assert run_declared(r, store.fail("p.0", failure)).ok
    assert r.hmget(KS.chain("p"), "status", "error_kind") == [b"failed", b"branch"]
    assert {m for m, _ in r.zrange(KS.failed, 0, -1, withscores=True)} == {b"p", b"p.0"}
    assert run_declared(r, store.retry("p.0", "p", NOW)).ok
    assert r.hget(KS.chain("p"), "status") == b"waiting"
    assert r.hget(KS.chain("p.0"), "status") == b"queued"
    assert r.exists(KS.ended("p.0")) == 0


def test_release_hands_a_chain_back_and_cancel_ends_it(r: redis.Redis, store: ChainStore) -> None:
    fence = running(r, store, "c")
    assert run_declared(r, store.release("c", fence, NOW)).ok
    assert r.hget(KS.chain("c"), "status") == b"queued"
    assert r.xlen(KS.resumes) == 1
    assert run_declared(r, store.cancel("c", NOW, "stop")).ok
    assert store.cancel("c", NOW, "stop").run() == Reply("skip", (b"cancelled",))
    assert store.cancel("nothing", NOW, "stop").run().status == "missing"
    assert store.retry("c", None, NOW).run() == Reply("skip", (b"cancelled",))


# -- acknowledging ------------------------------------------------------------------------------


@pytest.fixture
def group(r: redis.Redis) -> Iterator[None]:
    r.xgroup_create(KS.starts, GROUP, id="0", mkstream=True)
    yield


def test_a_vm_acknowledges_only_entries_it_holds(
    r: redis.Redis, store: ChainStore, group: None
) -> None:
    """The zombie break: A read an entry, B took it over after A's lease; A's ack must not
    touch B's pending entry, or nobody would resume the chain when B dies."""
    entry = r.xadd(KS.starts, {"chain": "c"}).decode()
    r.xreadgroup(GROUP, "vm-a", {KS.starts: ">"})
    r.xclaim(KS.starts, GROUP, "vm-b", 0, [entry])
    assert store.ack(KS.starts, "vm-a", [entry]).run() == Reply("ok", (0,))
    assert r.xpending(KS.starts, GROUP)["pending"] == 1
    assert run_declared(r, store.ack(KS.starts, "vm-b", [entry])) == Reply("ok", (1,))
    assert r.xpending(KS.starts, GROUP)["pending"] == 0


def test_hand_back_requeues_held_entries_only_ahead_of_new_starts(
    r: redis.Redis, store: ChainStore, group: None
) -> None:
    r.xgroup_create(KS.resumes, GROUP, id="0", mkstream=True)
    mine = r.xadd(KS.starts, {"chain": "a"}).decode()
    theirs = r.xadd(KS.starts, {"chain": "b"}).decode()
    r.xreadgroup(GROUP, "vm-a", {KS.starts: ">"})
    r.xclaim(KS.starts, GROUP, "vm-b", 0, [theirs])
    reply = run_declared(r, store.hand_back(KS.starts, "vm-a", [mine, theirs]))
    assert reply == Reply("ok", (1,))
    fresh = r.xreadgroup(GROUP, "vm-c", {KS.resumes: ">"})
    assert [f[b"chain"] for _id, f in fresh[0][1]] == [b"a"]
    pending = r.xpending_range(KS.starts, GROUP, "-", "+", 10)
    assert [(p["message_id"].decode(), p["consumer"].decode()) for p in pending] == [
        (theirs, "vm-b")
    ]


# -- after the script cache empties -----------------------------------------------------------


def test_every_script_runs_as_itself_after_script_flush(
    r: redis.Redis, store: ChainStore, group: None
) -> None:
    fence = running(r, store, "c")
    r.script_flush()
    assert store.commit("c", Commit(fence, NOW, ["step", "1"], [], [[b"INCR", b"n"]])).run().ok
    r.script_flush()
    fence = Fence(fence.owner, fence.epoch, "1")
    failed = store.fail("c", Failure(fence, NOW, ["status", "failed"], [])).run()
    assert failed.ok
    assert r.get("n") == b"1"
    assert r.hget(KS.chain("c"), "status") == b"failed"
    r.script_flush()
    assert store.retry("c", None, NOW).run().ok
    r.script_flush()
    assert store.prepare("nothing", [], "", "").run().text(0) == "none"


def test_group_commit_after_script_flush_runs_each_request_with_its_own_script(
    r: redis.Redis, store: ChainStore
) -> None:
    """The NOSCRIPT storm: a batch mixing COMMIT and FAIL loses no effect after a flush."""
    from pyrecks.vm.groupcommit import GroupCommitter, _Request

    fences = [running(r, store, f"c{i}") for i in range(4)]
    calls = []
    for i, fence in enumerate(fences):
        if i % 2:
            calls.append(store.fail(f"c{i}", Failure(fence, NOW, ["status", "failed"], [])))
        else:
            commit = Commit(fence, NOW, ["step", "1"], [], [[b"INCR", f"n{i}".encode()]])
            calls.append(store.commit(f"c{i}", commit))
    r.script_flush()
    batch = [_Request(c.script, c.keys, c.args) for c in calls]
    GroupCommitter(lambda: r)._send(batch)
    assert [Reply.of(q.result).status for q in batch] == ["ok"] * 4
    assert r.mget("n0", "n2") == [b"1", b"1"]
    assert [r.hget(KS.chain(f"c{i}"), "status") for i in range(4)] == [
        b"running",
        b"failed",
        b"running",
        b"failed",
    ]


def test_the_key_watch_sees_a_key_a_script_did_not_declare(r: redis.Redis) -> None:
    """The check above is only worth something if it catches a smuggled key."""
    sneaky = r.register_script("return redis.call('GET', ARGV[1])")
    assert touched(r, lambda: sneaky(keys=[], args=["undeclared"])) == {"undeclared"}


def test_a_finished_chain_keeps_its_end_stream_only_briefly(
    r: redis.Redis, store: ChainStore
) -> None:
    """Half of a finished chain's ~9 KB was its one-entry end stream, kept a week; waiters
    re-read the record before blocking on it, so a minute is enough (issue 11, why 10)."""
    from pyrecks.vm.chainstore import END_TTL

    fence = running(r, store, "c")
    done = Commit(fence, NOW, ["step", "1", "status", "done", "owner", ""], [], done="1")
    assert store.commit("c", done).run().ok
    assert 0 < r.ttl(KS.ended("c")) <= END_TTL < r.ttl(KS.chain("c"))
    assert r.xlen(KS.ended("c")) == 1


@pytest.mark.parametrize(
    ("setup", "effect"),
    [
        # A seed-style kernel, however its def is spaced (issue 11, why 5).
        (("SET", "v_space", "def v_space (x):\n    return ''\n"), [b"SET", b"v_space", b"x"]),
        (("SET", "v_tab", "def\tv_tab(x):\n    return ''\n"), [b"SET", b"v_tab", b"x"]),
        # A hash holding a source and "compiled 0": no digest, still a kernel.
        (
            ("HSET", "v_hash", "source", "def v_hash(x): pass", "compiled", "0"),
            [b"HSET", b"v_hash", b"a", b"1"],
        ),
        # Effects may not create kernels either: a new key holding its own kernel's source …
        (None, [b"SET", b"v_new", b"def v_new(x):\n    return 'return 1'\n"]),
        # … or a new hash with such a source field.
        (None, [b"HSET", b"v_rec", b"source", b"def v_rec(x): pass"]),
    ],
)
def test_effects_never_write_or_create_kernels(
    r: redis.Redis, store: ChainStore, setup: tuple[str, ...] | None, effect: list[bytes]
) -> None:
    if setup is not None:
        r.execute_command(*setup)
    before = {k: r.type(k) for k in ("v_space", "v_tab", "v_hash", "v_new", "v_rec")}
    fence = running(r, store, "c")
    reply = store.commit("c", Commit(fence, NOW, ["step", "1"], [], [effect])).run()
    assert reply.status == "rejected", reply
    assert "kernel" in reply.text(0)
    assert {k: r.type(k) for k in before} == before


def test_effects_may_write_text_that_only_mentions_a_def(r: redis.Redis, store: ChainStore) -> None:
    fence = running(r, store, "c")
    effects = [
        [b"SET", b"notes", b"see def other(x) and def notes"],
        [b"HSET", b"h", b"source", b"x"],
    ]
    assert store.commit("c", Commit(fence, NOW, ["step", "1"], [], effects)).run().ok
    assert r.get("notes") == b"see def other(x) and def notes"


def test_a_script_flush_storm_never_fails_a_call(r: redis.Redis, store: ChainStore) -> None:
    """redis-py re-loads a lost script and sends EVALSHA again; a flush between the two
    raised NoScriptError out of the VM (the chaos soak's script-flush storm)."""
    stop = threading.Event()
    flusher = redis.Redis(connection_pool=r.connection_pool)

    def storm() -> None:
        while not stop.is_set():
            flusher.script_flush()

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    try:
        for i in range(300):
            assert store.prepare(f"k{i}", [], "", "").run().text(0) == "none"
    finally:
        stop.set()
        thread.join()


# -- pins (run --local) ---------------------------------------------------------------------


def test_a_pinned_chain_is_refused_elsewhere_while_its_vm_beats(
    r: redis.Redis, store: ChainStore
) -> None:
    assert run_declared(r, store.create("c", 'f("x")', NOW, enqueue=True, pin="vm-a")).ok
    assert (r.xlen(KS.starts), r.xlen(KS.pinned("vm-a"))) == (0, 1)  # only vm-a reads it
    r.set(KS.vm("vm-a"), "{}", px=10_000)
    guess = store.claim("c", "vm-b", NOW, reclaim=False, owner="", asks_ttl=30).run()
    assert (guess.status, guess.text(0)) == ("pin", "vm-a")
    refused = run_declared(
        r, store.claim("c", "vm-b", NOW, reclaim=False, owner="", asks_ttl=30, pin="vm-a")
    )
    assert (refused.status, refused.text(0)) == ("pinned", "vm-a")
    r.delete(KS.vm("vm-a"))  # vm-a stopped beating: the pin lapsed
    taken = store.claim("c", "vm-b", NOW, reclaim=False, owner="", asks_ttl=30, pin="vm-a").run()
    assert taken.ok and taken.text(8) == "vm-a"


def test_the_pinned_vm_claims_its_chain_and_its_branches_inherit_the_pin(
    r: redis.Redis, store: ChainStore
) -> None:
    store.create("p", 'f("x")', NOW, enqueue=True, pin="vm-a").run()
    got = store.claim("p", "vm-a", NOW, reclaim=False, owner="", asks_ttl=30).run()
    assert got.ok and got.text(8) == "vm-a"
    fence = Fence("vm-a", got.text(0), got.text(1))
    fields = ["step", "1", "status", "waiting", "owner", "", "pending", "1", "join", "j()"]
    commit = Commit(fence, NOW, fields, [], fanout=["a(1)"])
    assert run_declared(r, store.commit("p", commit, pinned_to="vm-a")).ok
    assert r.hget(KS.chain("p.0"), "pin") == b"vm-a"
    assert [f[b"chain"] for _i, f in r.xrange(KS.pinned("vm-a"))] == [b"p", b"p.0"]
    assert r.xlen(KS.resumes) == 0


def test_a_dead_vms_pins_lapse_to_the_resume_stream(r: redis.Redis, store: ChainStore) -> None:
    store.create("q", 'f("x")', NOW, enqueue=True, pin="vm-a").run()  # never started
    store.create("run", 'f("x")', NOW, enqueue=True, pin="vm-a").run()
    store.create("end", 'f("x")', NOW, enqueue=True, pin="vm-a").run()
    running_fence = store.claim("run", "vm-a", NOW, reclaim=False, owner="", asks_ttl=30).run()
    assert running_fence.ok
    r.hset(KS.chain("end"), "status", "done")
    entries = [(i.decode(), f[b"chain"].decode()) for i, f in r.xrange(KS.pinned("vm-a"))]
    r.set(KS.vm("vm-a"), "{}", px=10_000)
    assert store.lapse("vm-a", entries).run().status == "alive"
    r.delete(KS.vm("vm-a"))
    moved = run_declared(r, store.lapse("vm-a", entries))
    assert moved.ok and moved.text(0) == "2"
    assert [f[b"chain"] for _i, f in r.xrange(KS.resumes)] == [b"q", b"run"]
    assert r.hmget(KS.chain("run"), "status", "owner") == [b"queued", b""]
    assert not r.exists(KS.pinned("vm-a")) and not r.sismember(KS.pins, "vm-a")


def test_give_hands_a_held_entry_to_another_consumer_only(
    r: redis.Redis, store: ChainStore
) -> None:
    r.xgroup_create(KS.starts, GROUP, id="0", mkstream=True)
    entry = r.xadd(KS.starts, {"chain": "c"}).decode()
    r.xreadgroup(GROUP, "vm-b", {KS.starts: ">"})
    assert store.give(KS.starts, "vm-c", "vm-a", entry).run().text(0) == "0"  # not vm-c's
    assert run_declared(r, store.give(KS.starts, "vm-b", "vm-a", entry)).text(0) == "1"
    held = r.xpending_range(KS.starts, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in held] == [b"vm-a"]


def test_ack_and_hand_back_of_a_stream_whose_group_redis_lost_do_nothing(
    store: ChainStore,
) -> None:
    assert store.ack(KS.resumes, "vm-a", ["1-0"]).run().text(0) == "0"
    assert store.hand_back(KS.resumes, "vm-a", ["1-0"]).run().text(0) == "0"
