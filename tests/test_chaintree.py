"""The chain picture as data (pyrecks.chaintree) and ``pyrecks tree``, on real VMs and Redis."""

from __future__ import annotations

import json

import redis
from click.testing import CliRunner

from pyrecks.api import Pyrecks
from pyrecks.chaintree import (
    ChainTree,
    StepNode,
    build_tree,
    format_duration,
    render_text,
    visible_steps,
)
from pyrecks.cli.pyrecks_main import main
from pyrecks.cli.tree_cmd import tree as tree_command
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

VM = {"echo": False, "isolation": "thread"}

LINEAR = {
    "first": """
        def first(x: str):
            print("first got", x)
            return 'second("%s")' % x
    """,
    "second": """
        def second(x: str):
            print("second got", x)
            return 'return "%s!"' % x
    """,
}

FANOUT = {
    "split": """
        from pyrecks.kernel import branch, fanout

        def split(n: int):
            print("splitting into", n)
            return fanout([branch("work", i) for i in range(n)], join=branch("merge", "tag"))
    """,
    "work": """
        def work(i: int):
            print("work", i)
            if i == 1:
                return 'twice(%d)' % i
            return 'return %d' % (i * 10)
    """,
    "twice": """
        def twice(i: int):
            return 'return %d' % (i * 2)
    """,
    "merge": """
        def merge(results: list, tag: str):
            print("merging", results, tag)
            return 'return %d' % sum(results)
    """,
}

SPIN = """
    def spin(gate: str, n: int):
        if gate == "open":
            return 'return %d' % n
        return 'spin("@gate", %d)' % (n + 1)
"""


def _store(r: redis.Redis, kernels: dict[str, str]) -> None:
    for name, source in kernels.items():
        raw_kernel(r, name, source)


def test_linear_chain_has_one_node_per_step_with_timings(r: redis.Redis) -> None:
    _store(r, LINEAR)
    px = Pyrecks(r)
    with px.local_vm(**VM):
        chain = px.start('first("hi")')
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    tree = build_tree(px, chain)
    assert [(n.step, n.kernel, n.status) for n in tree.steps] == [
        (1, "first", "done"),
        (2, "second", "done"),
    ]
    for node in tree.steps:
        assert node.duration is not None and node.duration >= 0
        assert node.lines == 1
        assert node.attempt.endswith(".1")
        assert node.tries == 1
    assert tree.steps[0].text == '-> second("hi")'
    assert tree.status == "done" and tree.duration is not None
    text = render_text(tree)
    assert text.splitlines()[0].startswith(f"chain {chain}  done")
    assert "step 1   first  done" in text
    assert 'result "hi!"' in text


def test_fanout_tree_has_branches_and_join(r: redis.Redis) -> None:
    _store(r, FANOUT)
    px = Pyrecks(r)
    with px.local_vm(threads=4, **VM):
        chain = px.start("split(3)")
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    tree = build_tree(px, chain)
    split, merge = tree.steps
    assert (split.kernel, split.kind, split.status) == ("split", "fanout", "done")
    assert (merge.kernel, merge.kind, merge.status) == ("merge", "join", "done")
    assert [b.id for b in split.branches] == [f"{chain}.{i}" for i in range(3)]
    assert [[n.kernel for n in b.steps] for b in split.branches] == [
        ["work"],
        ["work", "twice"],
        ["work"],
    ]
    assert all(b.status == "done" for b in split.branches)
    # The join starts when the last branch ends.
    last_branch_end = max(b.info.finished or 0 for b in split.branches)
    assert merge.started is not None and merge.started >= last_branch_end
    walked = [(c.id, n.kernel) for c, n in tree.walk()]
    assert walked[0] == (chain, "split") and walked[-1] == (chain, "merge")
    text = render_text(tree)
    assert f"branch {chain}.1  done" in text
    assert "step 2   twice  done" in text
    assert "join" in text and "3 branches" in text
    doc = tree.to_json()
    assert doc["steps"][0]["branches"][1]["steps"][1]["kernel"] == "twice"


def test_failed_step_then_retry_counts_attempts(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "boom",
        """
        def boom(x: int):
            print("about to fail", x)
            raise ValueError("bad input %d" % x)
        """,
    )
    px = Pyrecks(r)
    with px.local_vm(**VM):
        chain = px.start("boom(7)")
        assert px.wait(chain, timeout=30).status is ChainStatus.FAILED
        failed = build_tree(px, chain)
        (node,) = failed.steps
        assert (node.kernel, node.status, node.tries) == ("boom", "failed", 1)
        assert node.error is not None and "bad input 7" in node.error
        assert "failed: [kernel_error]" in render_text(failed)
        raw_kernel(
            r,
            "boom",
            """
            def boom(x: int):
                print("fixed", x)
                return 'return %d' % x
            """,
        )
        assert px.retry(chain)
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    tree = build_tree(px, chain)
    (node,) = tree.steps
    assert (node.status, node.tries, node.error) == ("done", 2, None)
    assert node.attempt.startswith("2.")  # printed by the second claim of the chain
    assert "attempt 2" in render_text(tree)


def test_running_and_cancelled_chain(r: redis.Redis) -> None:
    raw_kernel(r, "spin", SPIN)
    r.set("gate", "closed")
    px = Pyrecks(r)
    with px.local_vm(**VM):
        chain = px.start('spin("@gate", 0)')
        for entry in px.logs(chain, follow=True):
            if entry.kind == "step" and entry.step >= 3:
                break
        running = build_tree(px, chain)
        assert running.status == "running"
        assert [n.kernel for n in running.steps][:3] == ["spin", "spin", "spin"]
        assert running.steps[-1].status in ("running", "done")
        assert px.cancel(chain)
        px.wait(chain, timeout=30)
    cancelled = build_tree(px, chain)
    assert cancelled.status == "cancelled"
    assert all(n.status in ("done", "cancelled") for n in cancelled.steps)
    assert "cancelled: [cancelled]" in render_text(cancelled)


def test_waiting_fanout_shows_running_branches_and_the_join_to_come(r: redis.Redis) -> None:
    raw_kernel(r, "spin", SPIN)
    raw_kernel(r, "fan", 'def fan():\n    return \'[spin("@gate", 0), done1()] -> join2("t")\'\n')
    raw_kernel(r, "done1", "def done1():\n    return 'return 1'\n")
    raw_kernel(
        r, "join2", "def join2(results: list, t: str):\n    return 'return %d' % len(results)\n"
    )
    r.set("gate", "closed")
    px = Pyrecks(r)
    with px.local_vm(threads=4, **VM):
        chain = px.start("fan()")
        # The fan-out's commit creates the branches: wait for it in the parent's log.
        for entry in px.logs(chain, follow=True):
            if entry.kind == "fanout":
                break
        for entry in px.logs(f"{chain}.0", follow=True):
            if entry.kind == "step" and entry.step >= 2:
                break
        px.wait(f"{chain}.1", timeout=30)
        waiting = build_tree(px, chain)
        assert waiting.status == "waiting"
        fan, join = waiting.steps
        assert (fan.kernel, fan.kind, fan.status) == ("fan", "fanout", "waiting")
        assert (join.kernel, join.kind, join.status) == ("join2", "join", "pending")
        assert [b.status for b in fan.branches] == ["running", "done"]
        assert "join2  join  pending" in render_text(waiting)
        r.set("gate", "open")
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    done = build_tree(px, chain)
    assert [(n.kernel, n.status) for n in done.steps] == [("fan", "done"), ("join2", "done")]


def test_queued_chain_shows_its_next_call() -> None:
    from pyrecks.chaintree import tree_from
    from pyrecks.vm.records import ChainInfo

    info = ChainInfo.from_hash(
        "q1", {b"status": b"queued", b"step": b"0", b"call": b'first("x")', b"created": b"1.0"}
    )
    tree = tree_from(None, info, [])
    assert [(n.step, n.kernel, n.status) for n in tree.steps] == [(1, "first", "queued")]


def test_elision_and_durations() -> None:
    steps = [StepNode(i, "k", "done") for i in range(1, 101)]
    shown = visible_steps(steps, 10)
    assert len(shown) == 11 and shown[5] == 90
    assert visible_steps(steps, None) == steps
    assert format_duration(None) == "-"
    assert format_duration(0.0004) == "0.40ms"
    assert format_duration(0.012) == "12ms"
    assert format_duration(1.5) == "1.50s"
    assert format_duration(184) == "3m04s"
    assert format_duration(7500) == "2h05m"
    from pyrecks.vm.records import ChainInfo

    info = ChainInfo.from_hash("x", {b"status": b"done", b"created": b"1", b"finished": b"2"})
    text = render_text(ChainTree(info, steps), limit=10)
    assert "… 90 more steps …" in text


def test_tree_command(r: redis.Redis, redis_url: str) -> None:
    _store(r, FANOUT)
    px = Pyrecks(r)
    with px.local_vm(threads=4, **VM):
        chain = px.start("split(2)")
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    main.add_command(tree_command)
    runner = CliRunner()
    got = runner.invoke(main, ["tree", chain, "--redis", redis_url, "--no-color"])
    assert got.exit_code == 0, got.output
    assert f"branch {chain}.0  done" in got.output
    assert "merge  join  done" in got.output
    got = runner.invoke(main, ["tree", chain, "--redis", redis_url, "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.output)
    assert [s["kernel"] for s in doc["steps"]] == ["split", "merge"]
    missing = runner.invoke(main, ["tree", "nope", "--redis", redis_url])
    assert missing.exit_code == 1
    assert "no chain 'nope'" in missing.output
