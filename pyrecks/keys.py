"""Every Redis key name pyrecks uses is built here, and only here.

Chain keys carry a hash tag made from the *root* chain id (``{root}``), so a chain, its log,
its fan-out branches and their results all live in one Redis Cluster slot and one Lua script
may touch them together.  Kernel records live under ``kernel_prefix + name``; the prefix is
empty by default so that the seed's ``SET func0 "<source>"`` names the kernel ``func0``.

On Redis Cluster (``shards`` > 0) a chain belongs to one of N *shards*, picked from its root
id (:meth:`Keyspace.shard_of`), and every key a chain's scripts touch carries the shard's hash
tag ``{pyrecks.<shard>}``: the chain's record, log, end stream and results, and the shard's
starts and resume streams, chains index, failed set, pins, pinned streams, outbox and the
per-shard copy of each VM's heartbeat.  So every script runs in one slot.  A shard's keys are
named through a shard view (:meth:`Keyspace.for_chain`, :meth:`Keyspace.every_shard`); asking
a cluster keyspace that is no shard's for a per-shard key raises, so that no code path can
silently use a key of the wrong slot.  On one Redis (``shards`` = 0) every name is what it
always was.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace

from pyrecks.errors import PyrecksError

NAMESPACE = "pyrecks"


def hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes of ``key`` when it has a tag (``a{b}c`` -> ``b``), else None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


#: A chain id a user chooses (``run --id``, ``XADD … id X``): letters, digits, ``-`` and
#: ``_``.  ``.`` and ``{}`` are taken by fan-out branches and hash tags, and an id is shown
#: in terminals and pages, so nothing that could be markup or a control character.
CHAIN_ID_RULE = "1 to 128 letters, digits, '-' or '_'"


def chain_id_problem(chain_id: str) -> str | None:
    """Why ``chain_id`` cannot name a chain (None: it can)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,128}", chain_id):
        return None
    return f"invalid chain id {chain_id!r}: use {CHAIN_ID_RULE}"


def root_of(chain_id: str) -> str:
    """The root chain of a fan-out branch id (``abc.0.1`` -> ``abc``)."""
    return chain_id.split(".", 1)[0]


@dataclass(frozen=True)
class Keyspace:
    """Key names for one pyrecks deployment (one kernel prefix, one namespace)."""

    kernel_prefix: str = ""
    namespace: str = NAMESPACE
    #: 0: one Redis server (today's names).  N > 0: Redis Cluster, chains in N shards.
    shards: int = 0
    #: The shard this view names per-shard keys of (cluster only; see for_chain).
    shard: int | None = None

    # -- shards (Redis Cluster) -----------------------------------------------------------

    @property
    def sharded(self) -> bool:
        return self.shards > 0

    def shard_of(self, chain_id: str) -> int:
        """The shard of a chain (and of its fan-out branches: the root decides)."""
        if not self.sharded:
            return 0
        return zlib.crc32(root_of(chain_id).encode("utf-8")) % self.shards

    def for_chain(self, chain_id: str) -> Keyspace:
        """The view whose per-shard keys share ``chain_id``'s slot (itself on one Redis)."""
        if not self.sharded:
            return self
        return replace(self, shard=self.shard_of(chain_id))

    def for_shard(self, shard: int) -> Keyspace:
        return replace(self, shard=shard) if self.sharded else self

    def view_of(self, key: str) -> Keyspace:
        """The shard view a per-shard key belongs to (its tag names it; one Redis: self)."""
        if not self.sharded:
            return self
        tag = hash_tag(key) or ""
        prefix = f"{self.namespace}."
        if not tag.startswith(prefix) or not tag[len(prefix) :].isdigit():
            raise PyrecksError(f"{key!r} is no shard's key")
        return replace(self, shard=int(tag[len(prefix) :]))

    def every_shard(self) -> list[Keyspace]:
        """One view per shard (on one Redis: just this keyspace)."""
        if not self.sharded:
            return [self]
        return [replace(self, shard=i) for i in range(self.shards)]

    @property
    def tag(self) -> str:
        """The hash tag of this shard view's keys (``{pyrecks.3}``)."""
        if self.shard is None:
            raise PyrecksError(
                "a cluster keyspace names per-shard keys only through a shard view "
                "(for_chain / every_shard)"
            )
        return f"{{{self.namespace}.{self.shard}}}"

    def _scoped(self, kind: str, suffix: str = "") -> str:
        """A per-shard key: today's name on one Redis, with the shard's tag on a cluster."""
        if not self.sharded:
            return f"{self.namespace}:{kind}" + (f":{suffix}" if suffix else "")
        return f"{self.namespace}:{kind}:{self.tag}{suffix}"

    @property
    def shard_count(self) -> str:
        """String holding the number of shards a cluster deployment uses (agreed by all)."""
        return f"{self.namespace}:shards"

    @property
    def outbox(self) -> str:
        """Set (per shard, cluster only) of chains whose committed step still owes effects
        on keys of other slots (the record's ``owed`` field holds them): any VM applies
        what a VM that died left there."""
        return self._scoped("outbox")

    def applied(self, key: str) -> str:
        """The marker prefix for effects applied to ``key``: it hashes to ``key``'s slot (its
        hash tag, else the whole key as the tag).  A marker is this + ``chain:step``."""
        tag = hash_tag(key)
        return f"{self.namespace}:applied:{{{tag if tag is not None else key}}}"

    def kernel(self, name: str) -> str:
        """The hash (or seed-style string) holding kernel ``name``."""
        return f"{self.kernel_prefix}{name}"

    @property
    def internal_prefix(self) -> str:
        """Every key pyrecks owns starts with this; effects may never write such keys."""
        return f"{self.namespace}:"

    @property
    def kernels(self) -> str:
        """Set of the names of every kernel stored through pyrecks (compile or first use)."""
        return f"{self.namespace}:kernels"

    @property
    def policy(self) -> str:
        """Hash holding the sandbox policy shared by the checker and every VM."""
        return f"{self.namespace}:policy"

    @property
    def starts(self) -> str:
        """Stream any Redis client may XADD to in order to start a chain."""
        return self._scoped("starts")

    @property
    def resumes(self) -> str:
        """Stream of chains to continue (handed back on drain, given back, a fan-out's
        branches and join): VMs read it before ``starts``, so older work goes first."""
        return self._scoped("resume")

    @property
    def chains(self) -> str:
        """Sorted set of root chain ids scored by creation time (for ``pyrecks ls``)."""
        return self._scoped("chains")

    @property
    def vms(self) -> str:
        """Hash of VM name -> last heartbeat record (JSON), for ``pyrecks vms``."""
        return f"{self.namespace}:vms"

    def vm(self, name: str) -> str:
        """Exists while VM ``name`` is alive: its heartbeat, which expires after the lease."""
        return self._scoped("vm", name)

    def vm_asks(self, name: str) -> str:
        """Set of chain ids other VMs found owned by VM ``name`` while it lives: it releases
        any of them it does not run (Redis may remember an owner the VM forgot)."""
        return self._scoped("vm-asks", name)

    def pinned(self, name: str) -> str:
        """Stream of chains pinned to VM ``name`` (``pyrecks run --local``): only that VM
        reads it; once its heartbeat is gone, any VM moves them to the resume stream."""
        return self._scoped("pinned", name)

    @property
    def pins(self) -> str:
        """Set of the VM names that have a pinned stream (what the lapse check reads)."""
        return self._scoped("pins")

    @property
    def failed(self) -> str:
        """Sorted set of failed chain ids scored by failure time."""
        return self._scoped("failed")

    def _tagged(self, kind: str, chain_id: str) -> str:
        if self.sharded:
            return f"{self.namespace}:{kind}:{self.for_chain(chain_id).tag}{chain_id}"
        root = root_of(chain_id)
        return f"{self.namespace}:{kind}:{{{root}}}{chain_id[len(root) :]}"

    def chain(self, chain_id: str) -> str:
        """Hash: the chain record (status, step, current call, owner, timings, error)."""
        return self._tagged("chain", chain_id)

    def log(self, chain_id: str) -> str:
        """Stream: the chain's append-only log (steps, kernel output, errors)."""
        return self._tagged("log", chain_id)

    def ended(self, chain_id: str) -> str:
        """Stream that gets one entry when the chain ends (what ``Pyrecks.wait`` blocks on).

        The scripts derive it from the chain key (``:chain:{`` -> ``:end:{``).
        """
        return self._tagged("end", chain_id)

    def results(self, chain_id: str) -> str:
        """Hash: branch index -> result of each fan-out branch of ``chain_id``."""
        return self._tagged("results", chain_id)
