"""The seed's walkthrough in Python 3: kernels SET from redis-cli, a start kernel, a chain."""

from __future__ import annotations

import redis

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel, run_to_end

FUNC0 = "def func0(x):\n\tprint('func0 got %s' % x)\n\tx = x + '3'\n\tprint('func0 says %s' % x)\n\treturn 'func1(\"say hi to func1 with %s\")' % x"
FUNC1 = "def func1(x):\n\tprint('func1 got %s' % x)\n\tx = x * 3\n\tprint('func1 says %s' % x)\n\treturn 'func2(\"say hi to func2 with %s\")' % x\n"
FUNC2 = "import time \ndef func2(x):\n\tprint('func2 got %s' % x)\n\ttime.sleep(0.01)\n\tx = x + '-and-we-are-done'\n\tprint('func2 says %s' % x)\n\treturn ''"
START = "def start():\n    return 'func0(\"start ...\")'\n"


def _seed(r: redis.Redis) -> None:
    # Exactly what a user types in redis-cli: SET name "<source>".
    r.set("func0", FUNC0)
    r.set("func1", FUNC1)
    r.set("func2", FUNC2)
    r.set("start", START)


def test_seed_chain_runs_from_raw_set_kernels_and_logs_what_each_printed(
    r: redis.Redis,
) -> None:
    _seed(r)
    px = Pyrecks(r)
    info = run_to_end(px, "start")
    assert info.status is ChainStatus.DONE, info.error
    assert info.step == 4
    printed = [e.text for e in px.logs(info.id) if e.kind == "out"]
    assert printed == [
        "func0 got start ...",
        "func0 says start ...3",
        "func1 got say hi to func1 with start ...3",
        "func1 says " + "say hi to func1 with start ...3" * 3,
        "func2 got say hi to func2 with " + "say hi to func1 with start ...3" * 3,
        "func2 says say hi to func2 with "
        + "say hi to func1 with start ...3" * 3
        + "-and-we-are-done",
    ]


def test_raw_set_kernels_are_compiled_on_first_use_and_cached_in_redis(r: redis.Redis) -> None:
    _seed(r)
    px = Pyrecks(r)
    run_to_end(px, 'func0("x")')
    record = r.hgetall("func0")
    assert record[b"compiled"] == b"1"
    assert record[b"source"].decode() == FUNC0
    assert record[b"bytecode"]


def test_a_direct_call_starts_a_chain_without_a_start_kernel(r: redis.Redis) -> None:
    _seed(r)
    px = Pyrecks(r)
    info = run_to_end(px, 'func1("direct")')
    assert info.status is ChainStatus.DONE
    assert info.step == 2


def test_starting_returns_the_chain_id_at_once_while_no_vm_runs(r: redis.Redis) -> None:
    _seed(r)
    px = Pyrecks(r)
    chain = px.start("start")
    info = px.status(chain)
    assert info.status is ChainStatus.QUEUED
    assert info.call == "start()"
    with px.local_vm(echo=False):
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE


def test_python2_seed_source_fails_the_chain_with_the_python3_form(r: redis.Redis) -> None:
    raw_kernel(r, "old", "def old(x):\n\tprint 'old got %s' % x\n\treturn ''\n")
    info = run_to_end(Pyrecks(r), 'old("x")')
    assert info.status is ChainStatus.FAILED
    assert info.error_kind == "lint"
    assert "print(" in (info.error or "")
