"""Redis Cluster: telling a cluster from one server, and the shard count every party shares.

``--redis``/``REDIS_URL`` may name any node of a cluster: :func:`cluster_client` asks the
server (``INFO cluster``) and, if ``cluster_enabled``, gives redis-py's ``RedisCluster`` for
the same URL, which finds the other nodes and follows ``MOVED``/``ASK``.

Chains are spread over N shards (see :mod:`pyrecks.keys`).  N is stored in Redis
(``pyrecks:shards``) by whoever comes first — ``PYRECKS_SHARDS``, else
:data:`DEFAULT_SHARDS` — so that every VM and every client agrees on where a chain's keys
live; changing it later would orphan the chains already started.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import redis

from pyrecks.errors import PyrecksError
from pyrecks.keys import Keyspace

if TYPE_CHECKING:
    from pyrecks.vm.config import VMConfig

#: Shards of a new cluster deployment: enough that the starts of a 3-master cluster spread
#: over every master, few enough that a VM's read round over all of them stays cheap.
DEFAULT_SHARDS = 6


def is_cluster(r: Any) -> bool:
    return isinstance(r, redis.RedisCluster)


def cluster_client(url: str, **kwargs: Any) -> redis.Redis | None:
    """A ``RedisCluster`` for ``url`` if the server it names is a cluster node, else None.

    Best effort and quick (one try, no retries): a server that cannot be asked (down, a user
    without INFO) is taken for one Redis, and whatever is wrong shows at the first real
    command, worded as it always was.
    """
    if not url.startswith(("redis://", "rediss://")):
        return None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    probe = redis.Redis.from_url(url, **{**kwargs, "retry": Retry(NoBackoff(), 0)})
    try:
        info: Any = probe.info("cluster")
    except (redis.RedisError, OSError):
        return None
    finally:
        probe.close()
    if not int(info.get("cluster_enabled", 0) or 0):
        return None
    client: Any = redis.RedisCluster.from_url(url, **kwargs)
    return client


def shard_count(r: Any, keyspace: Keyspace) -> int:
    """The deployment's shard count, stored on first use (see the module docstring)."""
    raw = os.environ.get("PYRECKS_SHARDS", "")
    try:
        wanted = int(raw) if raw else DEFAULT_SHARDS
    except ValueError:
        raise PyrecksError(f"PYRECKS_SHARDS must be a whole number, not {raw!r}") from None
    if not 1 <= wanted <= 1024:
        raise PyrecksError(f"PYRECKS_SHARDS must be in 1-1024, not {wanted}")
    r.set(keyspace.shard_count, wanted, nx=True)
    stored = r.get(keyspace.shard_count)
    return int(stored) if stored is not None else wanted


def adapt(r: Any, keyspace: Keyspace) -> Keyspace:
    """``keyspace`` as it must be on ``r``: sharded on a cluster, unchanged on one Redis."""
    if not is_cluster(r) or keyspace.sharded:
        return keyspace
    return replace(keyspace, shards=shard_count(r, keyspace))


def for_cluster(config: VMConfig) -> VMConfig:
    """A VM's knobs on a cluster: no commit pipelining (it sends on this thread's single
    connection, and a cluster has one per node).  Group commit batches per master
    (pyrecks/vm/groupcommit.py), kernel tracking watches every master
    (pyrecks/vm/freshness.py)."""
    return replace(config, pipeline_below=-1)
