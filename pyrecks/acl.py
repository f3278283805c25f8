"""Least-privilege Redis ACL rules for the two roles of a pyrecks deployment.

* **vm** — runs chains: reads kernels, policy, chain records and the ``@key`` inputs of
  kernels; applies effects (the whitelisted writes) anywhere kernels may write.  Its key
  pattern is ``~*`` by default because kernels read and write user data; narrow it to your
  data's patterns plus ``~pyrecks:*`` and your kernel names when you can (and set the
  policy's ``effect_key_patterns`` to match).
* **client** — starts, watches, cancels and retries chains: only chain records, logs, the
  starts stream and the indexes (:data:`CLIENT_KEYS`), and only the commands those
  operations use.  It cannot read or write user data, kernels or
  the policy itself, and cannot run admin commands.  A chain it starts runs as the VM,
  though: narrow what ``@key`` inputs may read with the policy's ``input_key_patterns``.

Redis checks ACLs on the commands a Lua script calls too, so granting EVALSHA does not grant
what the scripts do; that is why the write commands the scripts use are listed here.
``pyrecks acl vm|client`` prints the ``ACL SETUSER`` line.
"""

from __future__ import annotations

from pyrecks.compiler.effects import ALLOWED_COMMANDS

#: Commands every role needs to connect and run pyrecks' scripts.
_COMMON = ["ping", "hello", "auth", "select", "evalsha", "eval", "script|load", "script|exists"]

#: Redis Cluster: telling a cluster from one server (``INFO cluster``) and what redis-py's
#: ``RedisCluster`` asks to learn the topology and where each command's keys are.
_CLUSTER = ["info", "cluster|slots", "cluster|shards", "cluster|nodes", "command", "readonly"]

#: Effects kernels may request — the grammar's whitelist, the one list
#: (:data:`pyrecks.compiler.effects.ALLOWED_COMMANDS`) — applied by the VM inside scripts.
_EFFECT_WRITES = sorted(command.lower() for command in ALLOWED_COMMANDS)

VM_COMMANDS = sorted(
    set(
        [
            *_COMMON,
            *_EFFECT_WRITES,
            # chain records, logs, the starts stream and its consumer group
            "hgetall", "hget", "hmget", "hsetnx", "hincrby", "hexists", "exists", "type",
            "get", "persist", "zrem", "sismember", "smembers", "lrange", "zrange",
            "xreadgroup", "xack", "xautoclaim", "xclaim", "xgroup|create", "xread", "xrange",
            "xpending",  # the ACK script: acknowledge only entries this VM holds
            "xlen", "xdel",  # the LAPSE script: a dead VM's pinned stream moves and goes
            "multi", "exec", "watch", "unwatch",
            # hot-patch freshness through client-side caching invalidations
            "client|id", "client|tracking", "subscribe",
            *_CLUSTER,
        ]
    )
)  # fmt: skip

CLIENT_COMMANDS = sorted(
    set(
        [
            *_COMMON,
            # start (create script), status, logs, ls, cancel, retry, vms
            "hgetall", "hget", "hset", "hsetnx", "exists", "expire", "persist", "zadd",
            "zrem", "zrevrange", "zrange", "xadd", "xread", "xrange",
            "del",  # retry: a failed chain's end stream goes, so waiters wait for the new end
            *_CLUSTER,
            # Redis Cluster: the shard count (read, or stored by the first to meet the
            # cluster), and wait() checks that a chain's last effects have landed
            "get", "set", "hexists", "xrevrange",
        ]
    )
)  # fmt: skip


#: Chain records, logs, the starts stream, the indexes and the VM registry — not the policy
#: (``pyrecks:policy``) nor the kernel registry (``pyrecks:kernels``), nor any user data.
CLIENT_KEYS = " ".join(
    f"~pyrecks:{k}"
    for k in (
        "chain:*", "log:*", "end:*", "results:*", "chains", "starts", "failed", "vms", "vm:*",
        # Redis Cluster: the shards' indexes and starts streams (``chains:{pyrecks.3}``)
        # and the shard count
        "chains:*", "starts:*", "failed:*", "shards",
    )
)


def setuser(role: str, username: str, password: str, key_patterns: str | None = None) -> str:
    """The ``ACL SETUSER`` command line for ``role`` (``vm`` or ``client``)."""
    if role == "vm":
        commands, keys = (
            VM_COMMANDS,
            (key_patterns or "~*") + " resetchannels &__redis__:invalidate",
        )
    elif role == "client":
        commands, keys = CLIENT_COMMANDS, (key_patterns or CLIENT_KEYS) + " resetchannels"
    else:
        raise ValueError(f"unknown role {role!r}: use 'vm' or 'client'")
    allowed = " ".join(f"+{c}" for c in commands)
    return f"ACL SETUSER {username} reset on >{password} {keys} -@all {allowed}"
