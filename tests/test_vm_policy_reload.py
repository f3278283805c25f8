"""A policy changed with ``pyrecksc policy set`` reaches running VMs within one heartbeat."""

from __future__ import annotations

import json

import redis

from pyrecks.api import Pyrecks
from pyrecks.compiler.policy import Policy, save_policy
from pyrecks.keys import Keyspace
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

KS = Keyspace()


def _next_beat_with_policy(r: redis.Redis, vm_name: str, old: str) -> str:
    """Block until the VM's heartbeat record names another policy (keyspace events)."""
    r.config_set("notify-keyspace-events", "Kh")
    pubsub = r.pubsub()
    pubsub.subscribe(f"__keyspace@0__:{KS.vms}")
    try:
        for _ in range(100):
            record = json.loads(r.hget(KS.vms, vm_name) or b"{}")
            if record.get("policy", old) != old:
                return str(record["policy"])
            pubsub.get_message(timeout=0.5)
        raise TimeoutError("the VM never reported a new policy")
    finally:
        pubsub.close()


def test_a_running_vm_follows_a_policy_change_and_pyrecks_vms_shows_it(
    r: redis.Redis,
) -> None:
    raw_kernel(r, "put", "def put(k):\n    return 'return 1 SET [(\"%s\", 1)]' % k\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False, name="follower", lease=1.5, isolation="thread") as vm:
        assert px.wait(px.start('put("free:1")'), timeout=30).status is ChainStatus.DONE
        (before,) = [v.policy for v in px.vms() if v.name == "follower"]
        assert before == "default"
        save_policy(r, KS, Policy(effect_key_patterns=("ok:*",)))
        after = _next_beat_with_policy(r, "follower", before)
        assert vm.policy.effect_key_patterns == ("ok:*",)
        info = px.wait(px.start('put("free:2")'), timeout=30)
        assert px.wait(px.start('put("ok:1")'), timeout=30).status is ChainStatus.DONE
    assert info.status is ChainStatus.FAILED and info.error_kind == "effect"
    assert "effect_key_patterns" in (info.error or "")
    assert [v.policy for v in px.vms() if v.name == "follower"] == [after]
    assert r.get("free:2") is None and r.get("ok:1") == b"1"
