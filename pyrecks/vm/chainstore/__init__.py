"""The VM <-> Redis contract: every Lua script, what it takes, what it answers, which keys.

Every write to a chain record goes through one of the scripts below, so that Redis applies
it atomically and, for a running chain, *fenced*: the script first checks that the caller
still owns the chain (``owner`` and ``epoch``, the fencing token bumped by every claim) and
that the chain is at the step the caller thinks it is.  A VM that was presumed dead and
comes back therefore cannot commit a stale step.

The contract, for every script:

* **KEYS** lists every key the script reads or writes — the chain's own keys, the keys of
  fan-out branches and of the parent, the starts stream, and every effect's target key.
  No key name travels in ARGV or inside a payload (and none is derived inside a script), so
  Redis Cluster can route each call; payloads refer to variable keys by their index in KEYS.
  (On a cluster COMMIT *stores* the effects a step owes — key names as data, touched by
  APPLY later, where they are KEYS: see :mod:`pyrecks.vm.outbox`.)
* **ARGV** carries values only.  Fenced scripts take one msgpack payload built from the
  dataclasses below (all leaves already strings, so a script never has to guess how Python
  meant a number), then what is the same for every call (prefixes, limits).
* **The reply** is always a table whose first element is a status word (``ok``, ``fenced``,
  ``rejected``, ``missing``, ``skip``, ``alive``, ``moved``, ``exists``), then values;
  :class:`Reply` reads it.

The scripts themselves, with their KEYS, ARGV and replies line by line, are in
:mod:`pyrecks.vm.chainstore.scripts`.  The :class:`ChainStore` methods build an
:class:`Invocation` (script, KEYS, ARGV) once; the API runs it directly, the VM runs it
directly, pipelines it, or hands it to the group committer — nobody builds script
arguments twice.  An invocation always carries its own script, so after ``SCRIPT FLUSH``
or a Redis restart it is re-loaded and run as itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis
from redis.commands.core import Script

from pyrecks.cluster import adapt
from pyrecks.keys import Keyspace, root_of
from pyrecks.vm.chainstore.scripts import (
    ACK,
    APPLY,
    CANCEL,
    CLAIM,
    COMMIT,
    CREATE,
    DELIVERED,
    DISOWN,
    END_TTL,
    FAIL,
    GIVE,
    GROUP,
    HAND_BACK,
    LAPSE,
    PIN,
    PREPARE,
    READ,
    RELEASE,
    RETRY,
    TRACE,
    TRACE_JOIN,
)


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------
# Replies and invocations


@dataclass(frozen=True)
class Reply:
    """What a script answered: a status word, then values (raw, as Redis sent them)."""

    status: str
    values: tuple[Any, ...] = ()

    @classmethod
    def of(cls, raw: Any) -> Reply:
        if isinstance(raw, list) and raw:
            return cls(_s(raw[0]), tuple(raw[1:]))
        return cls("error", (raw,))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def text(self, index: int) -> str:
        """Value ``index`` as text ('' if absent)."""
        return _s(self.values[index]) if index < len(self.values) else ""


@dataclass(frozen=True)
class Invocation:
    """One script call, ready to run: the script itself, its KEYS and its ARGV."""

    script: Script
    keys: list[str]
    args: list[Any]

    def run(self, client: redis.Redis | None = None) -> Reply:
        return Reply.of(self.raw(client))

    def raw(self, client: redis.Redis | None = None) -> Any:
        """Run it (EVALSHA, or EVAL if Redis lost the script); the raw answer."""
        return run_script(self.script, self.keys, self.args, client)


def run_script(
    script: Script, keys: list[str], args: list[Any], client: redis.Redis | None = None
) -> Any:
    """EVALSHA ``script``; if Redis lost it (a restart, ``SCRIPT FLUSH``), EVAL its body.

    redis-py's own retry loads the script and calls EVALSHA again, and a flush between the
    two raised NoScriptError out of the VM; EVAL carries the body itself (and caches it), so
    it cannot miss.  Always the script asked for: a request never runs another's script.
    """
    target: Any = client or script.registered_client
    try:
        return target.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return target.eval(script.script, len(keys), *keys, *args)


class _Keys:
    """KEYS being assembled: fixed keys first, then variable ones referred to by index."""

    def __init__(self, *fixed: str) -> None:
        self.keys: list[str] = list(fixed)
        self._index = {k: i + 1 for i, k in enumerate(fixed)}

    def ref(self, key: str) -> str:
        """The (1-based, as text) index of ``key`` in KEYS, adding it if new."""
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return str(self._index[key])


def pack(payload: dict[str, Any]) -> bytes:
    """Encode a script payload; every leaf must already be ``str``/``bytes``."""
    return msgpack.packb(payload, use_bin_type=False)


def pack_effects(effects: list[list[bytes]]) -> bytes:
    """Effects owed by a commit on a cluster, as the record's ``owed`` field keeps them."""
    return msgpack.packb(effects, use_bin_type=True)


def unpack_effects(raw: bytes) -> list[list[bytes]]:
    out: list[list[bytes]] = msgpack.unpackb(raw, raw=True)
    return out


# ---------------------------------------------------------------------------------------
# Payloads


@dataclass(frozen=True)
class Fence:
    """What every fenced script checks: the caller owns the chain, at this epoch and step."""

    owner: str
    epoch: str
    step: str

    def fields(self) -> dict[str, str]:
        return {"owner": self.owner, "epoch": self.epoch, "step": self.step}


@dataclass(frozen=True)
class BranchOf:
    """The chain being committed is branch ``index`` of fan-out parent ``parent``."""

    parent: str
    index: str


@dataclass
class Commit:
    """One step's commit: effects, checkpoint fields and log entries, and where it went.

    ``effects`` are encoded effects (``[command, key, arg...]``, see
    :func:`pyrecks.vm.effects.encode_effect`); their keys move into KEYS when packed.
    ``fanout`` (the calls of the branches) and ``done`` (the chain's result) are exclusive.
    ``trace`` (a fan-out's, optional): the fan-out step's W3C traceparent, which its
    branches and its join continue (see ``TRACE`` in :mod:`pyrecks.vm.chainstore.scripts`).
    """

    fence: Fence
    now: str
    fields: list[str]
    logs: list[list[str]]
    effects: list[list[bytes]] = field(default_factory=list)
    fanout: list[str] | None = None
    done: str | None = None
    branch_of: BranchOf | None = None
    trace: str | None = None
    #: Cluster only: a step whose owed effects were delivered; its outbox entry goes with
    #: this commit (unless this commit owes effects itself, which replaces it anyway).
    delivered: str | None = None
    #: With ``fanout``: how many branches the root chain and all its branches may create
    #: in all (policy ``max_descendants``); None: no limit.
    budget: int | None = None


@dataclass
class Failure:
    """A chain failing: its record fields and log entries; a branch also fails its parent."""

    fence: Fence
    now: str
    fields: list[str]
    logs: list[list[str]]
    parent: str | None = None
    parent_error: str = ""


class ChainStore:
    """The scripts registered on one Redis client, and the one way to call each of them."""

    def __init__(
        self,
        r: redis.Redis,
        keyspace: Keyspace | None = None,
        *,
        retention: int = 7 * 24 * 3600,
        max_log: int = 10_000,
    ) -> None:
        self.r = r
        self.keyspace = adapt(r, keyspace or Keyspace())
        self.retention = retention
        self.max_log = max_log
        self._create = r.register_script(CREATE)
        self._claim = r.register_script(CLAIM)
        self._prepare = r.register_script(PREPARE)
        self._commit = r.register_script(COMMIT)
        self._fail = r.register_script(FAIL)
        self._release = r.register_script(RELEASE)
        self._disown = r.register_script(DISOWN)
        self._cancel = r.register_script(CANCEL)
        self._retry = r.register_script(RETRY)
        self._ack = r.register_script(ACK)
        self._hand_back = r.register_script(HAND_BACK)
        self._lapse = r.register_script(LAPSE)
        self._give = r.register_script(GIVE)
        self._read = r.register_script(READ)
        self._apply = r.register_script(APPLY)
        self._delivered = r.register_script(DELIVERED)

    # -- starting and managing chains (API and VM) ----------------------------------------

    def create(
        self,
        chain_id: str,
        call: str,
        now: str,
        *,
        enqueue: bool,
        error: str = "",
        error_kind: str = "",
        pin: str = "",
    ) -> Invocation:
        """A new chain record (``queued``, or ``failed`` with ``error``), if none exists.

        ``pin`` names the only VM that may run it while that VM beats (``run --local``):
        its start goes to that VM's pinned stream instead of the starts stream.
        """
        ks, sk = self.keyspace, self.keyspace.for_chain(chain_id)
        keys = [ks.chain(chain_id), sk.chains, sk.starts, ks.ended(chain_id), sk.failed]
        if pin:
            keys[2] = sk.pinned(pin)
            keys.append(sk.pins)
        return Invocation(
            self._create,
            keys,
            [
                chain_id,
                call,
                now,
                "1" if enqueue else "0",
                "failed" if error else "queued",
                error,
                error_kind,
                str(self.retention),
                pin,
            ],
        )

    def cancel(self, chain_id: str, now: str, reason: str) -> Invocation:
        ks = self.keyspace
        return Invocation(
            self._cancel,
            [ks.chain(chain_id), ks.log(chain_id), ks.ended(chain_id)],
            [now, reason, str(self.retention), str(self.max_log)],
        )

    def retry(self, chain_id: str, parent: str | None, now: str) -> Invocation:
        ks, sk = self.keyspace, self.keyspace.for_chain(chain_id)
        keys = [ks.chain(chain_id), ks.log(chain_id), sk.starts, sk.failed, ks.ended(chain_id)]
        if parent:
            keys.append(ks.chain(parent))
        return Invocation(self._retry, keys, [now, chain_id, parent or ""])

    # -- the VM's side ------------------------------------------------------------------

    def claim(
        self,
        chain_id: str,
        claimer: str,
        now: str,
        *,
        reclaim: bool,
        owner: str,
        asks_ttl: int,
        trace: str = "",
        pin: str = "",
    ) -> Invocation:
        """Claim a chain for ``claimer``; ``owner`` is who we believe owns it now ('' if
        nobody): its heartbeat and its asks set are the claim's keys 3 and 4.  ``trace``
        is stored as the chain's TRACE if it has none (the reply gives the one stored).
        ``pin`` is the VM we believe the chain pinned to ('' if none): its heartbeat is
        key 5 (a wrong guess is answered ``pin`` with the right one)."""
        ks, sk = self.keyspace, self.keyspace.for_chain(chain_id)
        who = owner or claimer
        return Invocation(
            self._claim,
            [
                ks.chain(chain_id),
                ks.results(chain_id),
                sk.vm(who),
                sk.vm_asks(who),
                sk.vm(pin or claimer),
            ],
            [
                *(claimer, now, "reclaim" if reclaim else "new", owner, chain_id),
                *(str(asks_ttl), trace, pin),
            ],
        )

    def prepare(self, kernel: str, refs: list[str], digest: str, source_sha1: str) -> Invocation:
        """The kernel record (unless it is the one the caller has) and every ``@key``."""
        ks = self.keyspace
        keys = [ks.kernel(kernel), *refs]
        return Invocation(
            self._prepare, keys, [digest, source_sha1, ks.internal_prefix, ks.kernel_prefix]
        )

    def read(self, keys: list[str]) -> Invocation:
        """The value of each key, as PREPARE gives an ``@key`` (keys of one slot)."""
        ks = self.keyspace
        return Invocation(self._read, keys, [ks.internal_prefix, ks.kernel_prefix])

    def load(
        self, kernel: str, refs: list[str], digest: str, source_sha1: str, client: Any
    ) -> Reply:
        """PREPARE's reply.  On a cluster the ``@key`` arguments live in other slots than
        the kernel: PREPARE reads the kernel, READ each key (one call per key), and the
        reply is put together as one PREPARE would give it.  (So on a cluster the inputs of
        one step are not read at one instant; each is at least as new as the last commit
        the step follows.)"""
        if not self.keyspace.sharded or not refs:
            return self.prepare(kernel, refs, digest, source_sha1).run(client)
        head = self.prepare(kernel, [], digest, source_sha1).run(client)
        if not head.ok:
            return head
        values = []
        for ref in refs:
            read = self.read([ref]).run(client)
            if not read.ok:  # refused: a pyrecks key or a kernel
                return read
            values.append(read.values[0])
        return Reply(head.status, (*head.values, *values))

    def apply(self, marker: str, effects: list[list[bytes]], mode: str) -> Invocation:
        """Deliver (``mode`` "apply") or check ("check") effects on keys of one slot (see
        APPLY): the outbox's half of a step's effects on a cluster."""
        keys = _Keys(marker)
        packed = [[e[0], keys.ref(_s(e[1])), *e[2:]] for e in effects]
        return Invocation(
            self._apply,
            keys.keys,
            [
                msgpack.packb(packed, use_bin_type=False),
                mode,
                self.keyspace.internal_prefix,
                self.keyspace.kernel_prefix,
                str(self.retention),
            ],
        )

    def delivered(self, chain_id: str, step: str) -> Invocation:
        """Step ``step``'s owed effects are applied: its outbox entry goes."""
        ks = self.keyspace
        keys = [ks.chain(chain_id), ks.for_chain(chain_id).outbox, ks.ended(chain_id)]
        return Invocation(self._delivered, keys, [chain_id, step])

    def commit(self, chain_id: str, commit: Commit, *, pinned_to: str = "") -> Invocation:
        """``pinned_to``: the committing VM, if the chain is pinned to it (its branches and
        its join then go to that VM's pinned stream, not the shared resume stream)."""
        ks, sk = self.keyspace, self.keyspace.for_chain(chain_id)
        keys = _Keys(
            ks.chain(chain_id),
            ks.log(chain_id),
            sk.outbox if ks.sharded else ks.kernels,
            ks.ended(chain_id),
            ks.results(chain_id),
            sk.pinned(pinned_to) if pinned_to else sk.resumes,
        )
        payload: dict[str, Any] = {
            **commit.fence.fields(),
            "now": commit.now,
            "fields": commit.fields,
            "logs": commit.logs,
            "effects": [],
        }
        if ks.sharded and commit.effects:
            # A cluster: effect keys live in other slots.  The commit records what it owes
            # (the outbox); APPLY delivers it in each target's slot (pyrecks/vm/outbox.py).
            step = dict(zip(commit.fields[::2], commit.fields[1::2], strict=True))["step"]
            owed = pack_effects(commit.effects)
            payload["owed"] = {"id": chain_id, "step": step, "effects": owed}
        else:
            payload["effects"] = [[e[0], keys.ref(_s(e[1])), *e[2:]] for e in commit.effects]
        if ks.sharded and commit.delivered is not None:
            payload["delivered"] = {"id": chain_id, "step": commit.delivered}
        if commit.fanout is not None:
            payload["id"] = chain_id
            payload["fanout"] = [
                [f"{chain_id}.{i}", keys.ref(ks.chain(f"{chain_id}.{i}")), call]
                for i, call in enumerate(commit.fanout)
            ]
            if commit.trace:
                payload["trace"] = commit.trace
            if commit.budget is not None:
                root = ks.chain(root_of(chain_id))
                payload["budget"] = {"root": keys.ref(root), "max": commit.budget}
        if commit.done is not None:
            payload["done"] = commit.done
            up = commit.branch_of
            if up is not None:
                payload["up"] = {
                    "id": up.parent,
                    "index": up.index,
                    "key": keys.ref(ks.chain(up.parent)),
                    "results": keys.ref(ks.results(up.parent)),
                }
        return Invocation(
            self._commit,
            keys.keys,
            [
                pack(payload),
                ks.internal_prefix,
                str(self.max_log),
                str(self.retention),
                ks.kernel_prefix,
            ],
        )

    def fail(self, chain_id: str, failure: Failure) -> Invocation:
        ks = self.keyspace
        keys = [
            ks.chain(chain_id),
            ks.log(chain_id),
            ks.ended(chain_id),
            ks.results(chain_id),
            ks.for_chain(chain_id).failed,
        ]
        payload: dict[str, Any] = {
            **failure.fence.fields(),
            "now": failure.now,
            "id": chain_id,
            "fields": failure.fields,
            "logs": failure.logs,
        }
        if failure.parent is not None:
            keys += [ks.chain(failure.parent), ks.log(failure.parent), ks.ended(failure.parent)]
            payload["parent"] = failure.parent
            payload["parent_error"] = failure.parent_error
        return Invocation(self._fail, keys, [pack(payload), str(self.max_log), str(self.retention)])

    def release(self, chain_id: str, fence: Fence, now: str) -> Invocation:
        ks = self.keyspace
        return Invocation(
            self._release,
            [ks.chain(chain_id), ks.for_chain(chain_id).resumes],
            [pack({**fence.fields(), "now": now})],
        )

    def disown(self, chain_id: str, owner: str, epoch: str, now: str) -> Invocation:
        ks = self.keyspace
        return Invocation(
            self._disown, [ks.chain(chain_id), ks.for_chain(chain_id).resumes], [owner, epoch, now]
        )

    def ack(self, stream: str, consumer: str, entry_ids: list[str]) -> Invocation:
        return Invocation(self._ack, [stream], [GROUP, consumer, *entry_ids])

    def hand_back(
        self, stream: str, consumer: str, entry_ids: list[str], *, to_pin: str = ""
    ) -> Invocation:
        """Copies to the resume stream (or to VM ``to_pin``'s pinned stream), originals
        acknowledged: of the entries ``consumer`` holds only."""
        sk = self.keyspace.view_of(stream)  # on a cluster: the stream's own shard
        target = sk.pinned(to_pin) if to_pin else sk.resumes
        return Invocation(self._hand_back, [stream, target], [GROUP, consumer, *entry_ids])

    def give(self, stream: str, consumer: str, to: str, entry_id: str) -> Invocation:
        """Give ``entry_id`` (if ``consumer`` holds it) to consumer ``to``."""
        return Invocation(self._give, [stream], [GROUP, consumer, to, entry_id])

    def lapse(
        self, vm: str, entries: list[tuple[str, str]], shard: Keyspace | None = None
    ) -> Invocation:
        """Move the ``(entry id, chain id)`` entries of dead VM ``vm``'s pinned stream to
        the resume stream (nothing if ``vm`` beats again); ``shard``: whose pinned stream
        (on a cluster every shard has its own)."""
        ks, sk = self.keyspace, shard or self.keyspace
        return Invocation(
            self._lapse,
            [sk.pinned(vm), sk.resumes, sk.vm(vm), sk.pins, *(ks.chain(c) for _e, c in entries)],
            [GROUP, vm, str(len(entries)), *(e for e, _c in entries)],
        )


__all__ = [
    "END_TTL",
    "GROUP",
    "PIN",
    "TRACE",
    "TRACE_JOIN",
    "BranchOf",
    "ChainStore",
    "Commit",
    "Failure",
    "Fence",
    "Invocation",
    "Reply",
    "pack",
    "pack_effects",
    "run_script",
    "unpack_effects",
]
