"""Typed arguments, @key inputs, effects, results and fan-out/join, end to end."""

from __future__ import annotations

import msgpack
import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel, run_to_end


def test_typed_arguments_are_converted_from_literals_and_keys(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "typed",
        """
        def typed(n: int, ratio: float, flag: bool, words: list[str], raw: str):
            return "return %r" % ([n + 1, ratio * 2, not flag, len(words), raw.upper()],)
        """,
    )
    r.set("n", "41")
    r.set("words", msgpack.packb(["a", "b", "c"]))
    px = Pyrecks(r)
    info = run_to_end(px, 'typed("@n", 0.25, True, "@words", "seed")')
    assert info.status is ChainStatus.DONE, info.error
    assert px.result(info.id) == [42, 0.5, False, 3, "SEED"]


def test_key_inputs_read_hashes_lists_and_missing_keys_fail_with_the_key_name(
    r: redis.Redis,
) -> None:
    raw_kernel(
        r,
        "shape",
        """
        from pyrecks.kernel import done
        def shape(h: dict, items: list):
            return done({"h": h, "items": items})
        """,
    )
    r.hset("h", mapping={"a": "1"})
    r.rpush("l", "x", "y")
    px = Pyrecks(r)
    ok = run_to_end(px, 'shape("@h", "@l")')
    assert ok.status is ChainStatus.DONE, ok.error
    assert px.result(ok.id) == {"h": {"a": "1"}, "items": ["x", "y"]}
    missing = run_to_end(px, 'shape("@nope", "@l")')
    assert missing.status is ChainStatus.FAILED
    assert missing.error_kind == "missing_key"
    assert "'nope'" in (missing.error or "")


def test_at_at_passes_a_literal_that_starts_with_at(r: redis.Redis) -> None:
    # The helper escapes the value again on the way out; hand-formatting would not.
    raw_kernel(r, "echo", "from pyrecks.kernel import done\ndef echo(x: str):\n    return done(x)\n")
    raw_kernel(r, "naive", "def naive(x: str):\n    return 'return %r' % x\n")
    px = Pyrecks(r)
    info = run_to_end(px, 'echo("@@handle")')
    assert px.result(info.id) == "@handle"
    naive = run_to_end(px, 'naive("@@handle")')
    assert naive.error_kind == "return_string"


def test_effects_apply_before_the_next_kernel_runs(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "writer",
        """
        def writer(x: str):
            return ('reader("@out") SET [("out", %r)] INCRBY [("hits", 5)] '
                    'RPUSH [("seen", %r)] HSET [("meta", "by", "writer")]' % (x + "!", x))
        """,
    )
    raw_kernel(
        r,
        "reader",
        """
        def reader(value: str):
            return "return %r" % value
        """,
    )
    px = Pyrecks(r)
    info = run_to_end(px, 'writer("hey")')
    assert info.status is ChainStatus.DONE, info.error
    assert px.result(info.id) == "hey!"
    assert r.get("out") == b"hey!"
    assert r.get("hits") == b"5"
    assert r.lrange("seen", 0, -1) == [b"hey"]
    assert r.hget("meta", "by") == b"writer"


def test_structured_set_values_are_stored_as_msgpack(r: redis.Redis) -> None:
    raw_kernel(
        r,
        "store",
        """
        from pyrecks.kernel import done
        def store():
            return done(None, set={"doc": {"a": [1, 2]}})
        """,
    )
    info = run_to_end(Pyrecks(r), "store")
    assert info.status is ChainStatus.DONE, info.error
    assert msgpack.unpackb(r.get("doc")) == {"a": [1, 2]}


def test_fan_out_runs_branches_and_the_join_receives_their_results_in_order(
    r: redis.Redis,
) -> None:
    raw_kernel(
        r,
        "split",
        "def split(n: int):\n    return '[square(%d), square(%d), square(%d)] -> total(\"sum\")' % (n, n + 1, n + 2)\n",
    )
    raw_kernel(r, "square", "def square(x: int):\n    return 'return %d' % (x * x)\n")
    raw_kernel(
        r,
        "total",
        "def total(results: list, label: str):\n    return 'return %r' % ({label: sum(results), 'parts': results},)\n",
    )
    px = Pyrecks(r)
    info = run_to_end(px, "split(2)")
    assert info.status is ChainStatus.DONE, info.error
    assert px.result(info.id) == {"sum": 4 + 9 + 16, "parts": [4, 9, 16]}
    assert px.status(f"{info.id}.1").status is ChainStatus.DONE


def test_a_failing_branch_fails_the_parent_with_the_branch_reason(r: redis.Redis) -> None:
    raw_kernel(r, "fan", "def fan():\n    return '[ok(), boom()] -> join()'\n")
    raw_kernel(r, "ok", "def ok():\n    return 'return 1'\n")
    raw_kernel(r, "boom", "def boom():\n    return 1 // 0\n")
    raw_kernel(r, "join", "def join(results):\n    return ''\n")
    px = Pyrecks(r)
    info = run_to_end(px, "fan")
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "branch"
    assert "ZeroDivisionError" in (info.error or "")


def test_halting_with_effects_only_applies_them_and_ends(r: redis.Redis) -> None:
    raw_kernel(r, "last", 'def last():\n    return \'SET [("final", "yes")]\'\n')
    info = run_to_end(Pyrecks(r), "last")
    assert info.status is ChainStatus.DONE
    assert r.get("final") == b"yes"
