"""The deployment policy stored in Redis governs every VM: effect key patterns, time
limits, retention of finished chains."""

from __future__ import annotations

import redis

from pyrecks.api import Pyrecks
from pyrecks.compiler.policy import Policy, save_policy
from pyrecks.keys import Keyspace
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel, run_to_end

WRITER = "def writer(key: str):\n    return 'return 1 SET [(%r, \"v\")]' % key\n"


def test_effect_key_patterns_restrict_which_keys_effects_may_write(r: redis.Redis) -> None:
    save_policy(r, Keyspace(), Policy(effect_key_patterns=("app:*", "tmp:??")))
    raw_kernel(r, "writer", WRITER)
    px = Pyrecks(r)
    allowed = run_to_end(px, 'writer("app:user:1")')
    short = run_to_end(px, 'writer("tmp:ab")')
    refused = run_to_end(px, 'writer("other:1")')
    assert allowed.status is ChainStatus.DONE and short.status is ChainStatus.DONE
    assert refused.status is ChainStatus.FAILED
    assert refused.error_kind == "effect"
    assert "app:*" in (refused.error or "")
    assert r.get("other:1") is None
    assert r.get("app:user:1") == b"v"


def test_the_policy_default_timeout_applies_to_kernels_without_their_own(r: redis.Redis) -> None:
    save_policy(r, Keyspace(), Policy(default_timeout=0.2))
    raw_kernel(r, "busy", "def busy():\n    while True:\n        pass\n")
    info = run_to_end(Pyrecks(r), "busy")
    assert info.error_kind == "timeout"
    assert "0.2s" in (info.error or "")


def test_finished_chain_records_and_logs_expire_after_the_retention(r: redis.Redis) -> None:
    raw_kernel(r, "once", "def once():\n    print('hi')\n    return ''\n")
    px = Pyrecks(r)
    info = run_to_end(px, "once", retention=120)
    ks = Keyspace()
    assert 0 < r.ttl(ks.chain(info.id)) <= 120
    assert 0 < r.ttl(ks.log(info.id)) <= 120
    running = px.start("once")
    assert r.ttl(ks.chain(running)) == -1  # unfinished chains never expire



READER = "def reader(x):\n    return 'return ' + repr(str(x)[:300])\n"


def test_inputs_may_not_read_pyrecks_keys_or_kernels(r: redis.Redis) -> None:
    """An ``@key`` fence like the one on effects, with no policy at all: another chain's
    record or result, and a kernel's source, are not data a kernel may be handed (a linted
    kernel read them; so could any client user allowed to start chains)."""
    raw_kernel(r, "reader", READER)
    raw_kernel(r, "secret_kernel", "def secret_kernel():\n    return 'hunter3'\n")
    r.set("doc", "public text")
    px = Pyrecks(r)
    victim = run_to_end(px, 'reader("victim: password=hunter2")')
    assert victim.status is ChainStatus.DONE
    ks = Keyspace()
    refused = [ks.chain(victim.id), ks.results(victim.id), ks.chains, "secret_kernel"]
    with px.local_vm(echo=False):
        chains = [px.start(f'reader("@{key}")') for key in [*refused, "doc"]]
        infos = [px.wait(chain, timeout=30) for chain in chains]
    for key, info in zip(refused, infos, strict=False):
        assert info.status is ChainStatus.FAILED, key
        assert info.error_kind == "input", (key, info.error)
        assert "may not be read by kernels" in (info.error or ""), info.error
        assert "hunter" not in repr(info.raw)  # nothing of the victim reached the record
    assert infos[-1].status is ChainStatus.DONE
    assert px.result(infos[-1].id) == "public text"


def test_input_key_patterns_restrict_which_keys_inputs_may_read(r: redis.Redis) -> None:
    save_policy(r, Keyspace(), Policy(input_key_patterns=("app:*",)))
    raw_kernel(r, "reader", READER)
    r.set("app:doc", "mine")
    r.set("hr:salaries", "theirs")
    px = Pyrecks(r)
    allowed = run_to_end(px, 'reader("@app:doc")')
    refused = run_to_end(px, 'reader("@hr:salaries")')
    assert allowed.status is ChainStatus.DONE
    assert px.result(allowed.id) == "mine"
    assert refused.status is ChainStatus.FAILED
    assert refused.error_kind == "input"
    assert "app:*" in (refused.error or "") and "input_key_patterns" in (refused.error or "")
    assert "theirs" not in repr(refused.raw)


def test_policy_set_input_keys_is_shown_and_reaches_the_policy(
    r: redis.Redis, redis_url: str
) -> None:
    from click.testing import CliRunner

    from pyrecks.cli.pyrecksc import main
    from pyrecks.compiler.policy import load_policy

    runner = CliRunner()
    done = runner.invoke(main, ["policy", "set", "--input-keys", "app:*", "--redis", redis_url])
    assert done.exit_code == 0, done.output
    assert load_policy(r, Keyspace()).input_key_patterns == ("app:*",)
    shown = runner.invoke(main, ["policy", "show", "--redis", redis_url])
    assert "input keys (@key):    app:*" in shown.output
    cleared = runner.invoke(main, ["policy", "set", "--input-keys", "", "--redis", redis_url])
    assert cleared.exit_code == 0
    assert load_policy(r, Keyspace()).input_key_patterns == ()


BOMB = (
    "from pyrecks.kernel import branch, done, fanout\n"
    "def bomb(d: int):\n"
    "    if d >= 2:\n"
    "        return done(1)\n"
    "    return fanout([branch('bomb', d + 1) for _ in range(5)], 'tally')\n"
)
TALLY = "from pyrecks.kernel import done\ndef tally(results):\n    return done(sum(results))\n"


def test_nested_fan_outs_share_one_budget_per_started_chain(r: redis.Redis) -> None:
    """Each fan-out is at most 256 wide, but nesting multiplies: one start of a kernel that
    fans out into itself made thousands of chains.  Every branch a started chain and its
    branches create counts against the policy's max_descendants."""
    raw_kernel(r, "bomb", BOMB)
    raw_kernel(r, "tally", TALLY)
    px = Pyrecks(r)
    within = run_to_end(px, "bomb(0)")  # 5 + 25 branches: within the default budget
    assert within.status is ChainStatus.DONE and px.result(within.id) == 25
    save_policy(r, Keyspace(), Policy(max_descendants=25))
    over = run_to_end(px, "bomb(0)")
    assert over.status is ChainStatus.FAILED
    ks = Keyspace()
    made = list(r.scan_iter(ks.chain(over.id) + "*"))
    assert len(made) == 1 + 25  # the root, its 5 branches and 4 of their fan-outs
    assert r.hget(ks.chain(over.id), "descendants") == b"25"
    branches = [px.status(f"{over.id}.{i}") for i in range(5)]
    fanout_failures = [b for b in branches if b.error_kind == "fanout"]
    assert len(fanout_failures) == 1
    assert "max_descendants" in (fanout_failures[0].error or "")
