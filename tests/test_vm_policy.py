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
