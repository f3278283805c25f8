"""The VM registry: heartbeats, liveness and ``pyrecks vms``.

Each VM keeps a key ``pyrecks:vm:<name>`` alive with a TTL equal to its *lease*: while the
key exists, the VM is presumed alive and nobody takes its chains.  When it stops beating
(killed, machine gone, stuck longer than its lease), the key expires and any VM may take
over its chains from their last checkpoint — fenced, so a VM that comes back cannot commit.
The hash ``pyrecks:vms`` keeps the last beat of every VM for ``pyrecks vms``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis

from pyrecks.keys import Keyspace


@dataclass(frozen=True)
class VMInfo:
    name: str
    alive: bool
    host: str
    pid: int
    threads: int
    active: int
    isolation: str
    started: float
    beat: float
    state: str
    #: Which stored policy the VM runs under (a short digest, "default" if none is stored).
    policy: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def holder_of(r: redis.Redis, keyspace: Keyspace, name: str, lease: float) -> dict[str, Any] | None:
    """Take the name ``name`` for a starting VM; the living holder's last beat if taken.

    Two VMs under one name would each believe the other's chains are their own (a claim by
    the same name is a restart) and run their steps twice; the name is therefore taken
    atomically (``SET NX``) and refused while its heartbeat lives.
    """
    home = keyspace.every_shard()[0]  # on a cluster: the first shard's copy decides
    placeholder = json.dumps({"name": name, "host": socket.gethostname(), "pid": os.getpid()})
    if r.set(home.vm(name), placeholder, nx=True, px=max(int(lease * 1000), 1)):
        return None
    raw: Any = r.get(home.vm(name))
    if raw is None:  # it expired just now: try once more
        if r.set(home.vm(name), placeholder, nx=True, px=max(int(lease * 1000), 1)):
            return None
        raw = r.get(home.vm(name)) or b"{}"
    try:
        data = json.loads(raw)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if data.get("host") == socket.gethostname() and not _running(data.get("pid")):
        # A restart after a crash on this machine: the holder is gone, its heartbeat just
        # has not expired yet.  The name (and its pending chains) resume at once.
        r.set(home.vm(name), placeholder, px=max(int(lease * 1000), 1))
        return None
    return data


def _running(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def beat(
    r: redis.Redis | Any,
    keyspace: Keyspace,
    name: str,
    *,
    lease: float,
    threads: int,
    active: int,
    isolation: str,
    started: float,
    state: str = "running",
    extra: dict[str, Any] | None = None,
) -> None:
    """Write one heartbeat (``r`` may be a pipeline); ``extra`` adds record fields."""
    record = json.dumps(
        {
            **(extra or {}),
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": threads,
            "active": active,
            "isolation": isolation,
            "started": started,
            "beat": time.time(),
            "state": state,
        }
    )
    # On a cluster every shard has its own copy of the heartbeat: the scripts that check
    # whether a VM lives (CLAIM, LAPSE) run in a shard's slot.
    for shard in keyspace.every_shard():
        if state == "running":
            r.set(shard.vm(name), record, px=max(int(lease * 1000), 1))
        else:
            r.delete(shard.vm(name))
    r.hset(keyspace.vms, name, record)


def list_vms(r: redis.Redis, keyspace: Keyspace) -> list[VMInfo]:
    """Every VM that ever beat, alive ones first, newest beat first."""
    raw: Any = r.hgetall(keyspace.vms)
    names = sorted(k.decode() for k in raw)
    pipe = r.pipeline(transaction=False)
    home = keyspace.every_shard()[0]
    for name in names:
        pipe.exists(home.vm(name))
    alive = dict(zip(names, pipe.execute(), strict=True))
    out = []
    for key, value in raw.items():
        data = json.loads(value)
        name = key.decode()
        out.append(
            VMInfo(
                name=name,
                alive=bool(alive.get(name)),
                host=data.get("host", "?"),
                pid=int(data.get("pid", 0)),
                threads=int(data.get("threads", 0)),
                active=int(data.get("active", 0)),
                isolation=data.get("isolation", "thread"),
                started=float(data.get("started", 0.0)),
                beat=float(data.get("beat", 0.0)),
                state=data.get("state", "running")
                if alive.get(name)
                else ("stopped" if data.get("state") == "stopped" else "dead"),
                policy=str(data.get("policy", "")),
            )
        )
    return sorted(out, key=lambda v: (not v.alive, -v.beat))
