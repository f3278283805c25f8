"""The public Python API: connect, store kernels, start chains, watch them.

Example::

    import pyrecks

    px = pyrecks.connect()                      # REDIS_URL, else the embedded Redis
    px.store_kernel("double", "def double(x: int):\\n    return f'return {x * 2}'\\n")
    chain = px.start('double(21)')
    with px.local_vm():                         # or run `pyrecks vm` elsewhere
        info = px.wait(chain, timeout=10)
    print(info.status, px.result(chain))        # ChainStatus.DONE 42

The CLI (``pyrecks``) is a thin layer over this class.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from pyrecks.cluster import adapt
from pyrecks.compiler.instructions import Call
from pyrecks.compiler.parser import parse_value
from pyrecks.compiler.render import render_call
from pyrecks.connection import connect as connect_redis
from pyrecks.errors import ChainNotFound, PyrecksError
from pyrecks.keys import Keyspace, chain_id_problem
from pyrecks.logstream import LogReader
from pyrecks.vm.chainstore import ChainStore
from pyrecks.vm.config import default_vm_name
from pyrecks.vm.machine import VM, VMConfig, parse_start_call
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry
from pyrecks.vm.registry import VMInfo, list_vms

__all__ = [
    "ChainExists",
    "ChainInfo",
    "ChainStatus",
    "LogEntry",
    "Pyrecks",
    "RunningStep",
    "connect",
]


class ChainExists(PyrecksError):
    """``start(..., exist_ok=False)`` with an id that already names a chain."""

    def __init__(self, chain_id: str, status: str, call: str) -> None:
        super().__init__(
            f"chain {chain_id!r} already exists ({status}, call {call}); nothing was started"
        )
        self.chain_id = chain_id
        self.status = status
        self.call = call


@dataclass(frozen=True)
class RunningStep:
    """The step a running chain is in now (``pyrecks status``).

    ``source`` says where it was read: ``heartbeat`` — the owner VM's last heartbeat, which
    lists the step each of its chains runs and since when (at most a third of its lease
    old); ``checkpoint`` — the chain record, when the heartbeat is older than the last
    checkpoint: the step after it is running, at least since the checkpoint.
    """

    step: int
    kernel: str
    since: float
    vm: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _valid_chain_id(chain_id: str) -> str:
    problem = chain_id_problem(chain_id)
    if problem:
        raise PyrecksError(
            f"{problem} ('.', '{{' and '}}' are reserved for fan-out branches and hash tags)"
        )
    return chain_id


class Pyrecks:
    """A handle on one pyrecks deployment (a Redis server and a key layout)."""

    def __init__(self, r: redis.Redis, keyspace: Keyspace | None = None) -> None:
        self.r = r
        self.keyspace = adapt(r, keyspace or Keyspace())
        self.store = ChainStore(r, self.keyspace)
        #: The name of this handle's local VM (see local_vm): chains started with
        #: ``local=True`` are pinned to it, and no other VM runs them while it beats.
        self.local_name = default_vm_name()
        self._local_vms = 0

    # -- kernels ----------------------------------------------------------------------------

    def store_kernel(self, name: str, source: str) -> Any:
        """Check, compile and store one kernel (raises KernelRejected with every finding)."""
        from pyrecks.compiler.compiler import compile_kernel
        from pyrecks.compiler.policy import load_policy
        from pyrecks.compiler.store import KernelStore

        compiled = compile_kernel(name, source, load_policy(self.r, self.keyspace))
        KernelStore(self.r, self.keyspace).put_many([compiled])
        return compiled

    # -- chains -----------------------------------------------------------------------------

    def start(
        self,
        call: str | Call,
        *,
        chain_id: str | None = None,
        exist_ok: bool = True,
        local: bool = False,
    ) -> str:
        """Queue a chain and return its id at once; a VM runs it.

        ``call`` is a call such as ``'func0("start ...")'``, a bare kernel name (``start``)
        or a :class:`Call`.  With ``chain_id`` the start is idempotent: a second start with
        the same id returns the id without starting another chain — or, with
        ``exist_ok=False``, raises :class:`ChainExists` (what ``pyrecks run --id`` does, so
        that nobody mistakes an old run for the one they asked for).

        With ``local`` (``pyrecks run --local``) the chain is pinned to this handle's local
        VM (:meth:`local_vm`, which may start later): while that VM beats no other VM runs
        any step of it or of its fan-out branches.  The pin lapses with the VM's heartbeat
        — a lease after it stops, or after the start if it never starts — and any VM then
        finishes the chain, so a dead local run strands nothing.
        """
        first = call if isinstance(call, Call) else parse_start_call(call)
        cid = _valid_chain_id(chain_id) if chain_id else uuid.uuid4().hex[:16]
        pin = self.local_name if local else ""
        reply = self.store.create(
            cid, render_call(first), repr(time.time()), enqueue=True, pin=pin
        ).run()
        if reply.status == "exists" and not exist_ok:
            raise ChainExists(cid, reply.text(0), reply.text(1))
        return cid

    def status(self, chain_id: str) -> ChainInfo:
        data: Any = self.r.hgetall(self.keyspace.chain(chain_id))
        if not data:
            raise ChainNotFound(
                f"no chain {chain_id!r} (it never existed, or its record expired); "
                "list chains with 'pyrecks ls'"
            )
        return ChainInfo.from_hash(chain_id, data)

    def running_step(self, info: ChainInfo) -> RunningStep | None:
        """The step ``info``'s chain runs now, if it runs (see :class:`RunningStep`).

        Pure steps are checkpointed in batches, so the record alone may be many steps
        behind; the owner's heartbeat knows the step it runs.  Reading it costs the VM
        nothing: it writes its heartbeat anyway.
        """
        if info.status is not ChainStatus.RUNNING or not info.owner:
            return None
        raw: Any = self.r.get(self.keyspace.for_chain(info.id).vm(info.owner))
        try:
            beat = json.loads(raw) if raw else {}
            now = (beat.get("running") or {}).get(info.id)
        except (ValueError, AttributeError):
            now = None
        if isinstance(now, dict) and int(now.get("step") or 0) > info.step:
            return RunningStep(
                int(now["step"]),
                str(now.get("kernel", "")),
                float(now.get("since") or 0.0),
                info.owner,
                "heartbeat",
            )
        try:
            kernel = parse_start_call(info.call).name if info.call else ""
        except PyrecksError:
            kernel = ""
        since = info.updated or info.started or 0.0
        return RunningStep(info.step + 1, kernel, since, info.owner, "checkpoint")

    def live_vms(self) -> list[VMInfo]:
        """The VMs whose heartbeat lives: those that will run a queued chain."""
        return [v for v in list_vms(self.r, self.keyspace) if v.alive]

    def result(self, chain_id: str) -> Any:
        """The value a finished chain ended with (``return <value>``), or None."""
        info = self.status(chain_id)
        if info.status is not ChainStatus.DONE:
            raise PyrecksError(f"chain {chain_id} is {info.status.value}, it has no result")
        if not info.result:
            return None
        from pyrecks.compiler.instructions import thaw

        return thaw(parse_value(info.result))

    def logs(
        self,
        chain_id: str,
        *,
        follow: bool = False,
        after: str = "0-0",
        block_ms: int = 1000,
        branches: bool = False,
    ) -> Iterator[LogEntry]:
        """The chain's log entries; with ``follow``, keep yielding until the chain ends.

        Read in pages (see :mod:`pyrecks.logstream`); a ``dropped`` entry says how many
        entries the log no longer holds.  With ``branches``, the logs of the chain's
        fan-out branches too (each entry's ``chain`` says whose), and following ends once
        every branch has ended as well.
        """
        reader = LogReader(self.r, self.keyspace, chain_id, branches=branches, after=after)
        while True:
            reader.discover()
            page = reader.read()
            if page is not None:
                yield from page
                continue
            if not follow:
                return
            unfinished = self._unfinished(reader.chains)
            if not unfinished and self.r.exists(self.keyspace.chain(chain_id)):
                # Drain what landed between the read and the status check, then stop.
                reader.discover()
                yield from reader.read_all()
                return
            if not reader.wait(block_ms) and not unfinished:
                self.status(chain_id)  # no record (yet) after a wait: ChainNotFound

    def _unfinished(self, chain_ids: list[str]) -> list[str]:
        """The chains that have not ended (a record that expired counts as ended)."""
        pipe = self.r.pipeline(transaction=False)
        for cid in chain_ids:
            pipe.hget(self.keyspace.chain(cid), "status")
        return [
            cid
            for cid, status in zip(chain_ids, pipe.execute(), strict=True)
            if status is not None and not ChainStatus(status.decode()).finished
        ]

    def wait(
        self,
        chain_id: str,
        timeout: float | None = None,
        on_entry: Callable[[LogEntry], None] | None = None,
        *,
        missing_ok: bool = False,
        branches: bool = True,
        kinds: Iterable[str] | None = None,
    ) -> ChainInfo:
        """Block until the chain is done, failed or cancelled (or ``timeout`` passes).

        Without ``on_entry`` it blocks on the chain's end stream (one entry, written by the
        script that ends the chain), so a waiter costs the VM nothing per step.  With
        ``on_entry`` it follows the log (every step, kernel output), in pages, and — with
        ``branches`` — the logs of the chain's fan-out branches, each entry labelled with
        its chain; it returns once the chain and every branch it follows have ended and
        their logs are read to the end.  Either way the record is re-read at least once a
        second.  With ``missing_ok``, a chain whose record does not exist yet (started with
        a raw ``XADD`` that no VM has read yet) is waited for too.  ``kinds`` limits the
        entries ``on_entry`` receives (``run --wait``: what kernels print, retries, errors
        and ``dropped`` notes); the others are passed over without being parsed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        moving = ("end", "error", "fanout")  # entries after which the record moved on
        wanted = None if kinds is None else {*kinds, *moving}
        reader = LogReader(self.r, self.keyspace, chain_id, branches=branches, kinds=wanted)
        recheck = True
        while True:
            if recheck:
                try:
                    info = self.status(chain_id)
                except ChainNotFound:
                    if not missing_ok:
                        raise
                    info = ChainInfo.from_hash(chain_id, {})
            if on_entry is not None:
                if recheck:
                    reader.discover()
                recheck = False
                while (page := reader.read()) is not None:
                    for entry in page:
                        # The record moved on (ended, failed, fanned out): read it again.
                        recheck |= entry.kind in moving
                        if kinds is None or entry.kind in kinds:
                            on_entry(entry)
                if recheck:
                    continue
            waiting_for = [chain_id]
            owing = info.status.finished and not self._delivered(chain_id)
            if info.status.finished and not owing:
                # A branch can outlive its parent (a failed sibling failed the parent).
                reader.discover()
                waiting_for = self._unfinished(reader.chains[1:])
                if not waiting_for:
                    if on_entry is not None:
                        for entry in reader.read_all():
                            if kinds is None or entry.kind in kinds:
                                on_entry(entry)
                    return info
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"chain {chain_id} is still {info.status.value} after {timeout:g}s"
                )
            block = 1000 if left is None else max(1, min(1000, int(left * 1000)))
            if owing:  # ended; its last effects are landing: DELIVERED adds an end entry
                end = self.keyspace.ended(chain_id)
                last: Any = self.r.xrevrange(end, count=1)
                self.r.xread({end: last[0][0] if last else "0-0"}, block=block)
                recheck = True
                continue
            if on_entry is None:
                # Nothing to show: sleep on the end streams, not on every step.
                ends = [self.keyspace.ended(c) for c in waiting_for]
                self.r.xread(dict.fromkeys(ends, "0-0"), block=block)
                recheck = True
                continue
            recheck = not reader.wait(block)

    def _delivered(self, chain_id: str) -> bool:
        """Whether the chain owes no effects (on a cluster the last step's effects on other
        slots land just after its commit: see pyrecks/vm/outbox.py; a waiter waits for
        them too, woken by a second entry on the end stream)."""
        return not self.keyspace.sharded or not self.r.hexists(
            self.keyspace.chain(chain_id), "owed"
        )

    def cancel(self, chain_id: str) -> bool:
        """Cancel a chain and its fan-out branches.

        Returns True if this call cancelled it, False if it had already ended.  A step that
        is running finishes, but its commit is refused: nothing of it lands.
        """
        info = self.status(chain_id)
        branches = int(info.raw.get("branches") or 0)
        for i in range(branches):
            with contextlib.suppress(ChainNotFound):
                self.cancel(f"{chain_id}.{i}")
        reply = self.store.cancel(chain_id, repr(time.time()), "cancelled by user").run()
        if reply.status == "missing":
            raise ChainNotFound(f"no chain {chain_id!r}")
        return reply.ok

    def retry(self, chain_id: str) -> bool:
        """Put a failed chain back in the queue at the step that failed.

        Typically used after hot-patching the kernel that failed.  A parent that failed
        because a fan-out branch failed is retried by retrying its failed branches (the
        parent goes back to waiting for them).  Returns False if the chain is not failed.
        """
        info = self.status(chain_id)
        if info.status is not ChainStatus.FAILED:
            return False
        if info.error_kind == "branch":
            branches = int(info.raw.get("branches") or 0)
            retried = False
            for i in range(branches):
                with contextlib.suppress(ChainNotFound):
                    retried = self.retry(f"{chain_id}.{i}") or retried
            return retried
        return self.store.retry(chain_id, info.parent, repr(time.time())).run().ok

    def failed(self, limit: int = 50) -> list[ChainInfo]:
        """The most recently failed chains (from the failed set), newest first."""
        out = []
        for cid in self._newest("failed", limit - 1):
            try:
                info = self.status(cid)
            except ChainNotFound:
                self.r.zrem(self.keyspace.for_chain(cid).failed, cid)  # expired
                continue
            if info.status is ChainStatus.FAILED:
                out.append(info)
        return out

    def vms(self) -> list[VMInfo]:
        """Every VM that has beaten, with liveness and load (``pyrecks vms``)."""
        return list_vms(self.r, self.keyspace)

    def chains(self, status: str | None = None, limit: int = 50) -> list[ChainInfo]:
        """The most recent chains (newest first), optionally only those with ``status``."""
        ids = self._newest("chains", -1)
        out: list[ChainInfo] = []
        stale: list[str] = []
        for start in range(0, len(ids), 200):
            batch = ids[start : start + 200]
            pipe = self.r.pipeline(transaction=False)
            for cid in batch:
                pipe.hgetall(self.keyspace.chain(cid))
            for cid, data in zip(batch, pipe.execute(), strict=True):
                if not data:
                    stale.append(cid)
                    continue
                info = ChainInfo.from_hash(cid, data)
                if status is None or info.status.value == status:
                    out.append(info)
                    if len(out) >= limit:
                        break
            if len(out) >= limit:
                break
        for cid in stale:
            self.r.zrem(self.keyspace.for_chain(cid).chains, cid)  # records that expired
        return out

    def _newest(self, index: str, stop: int) -> list[str]:
        """Ids of the index ``index`` ("chains", "failed"), newest first, ranks 0..``stop``
        (-1: all).  On a cluster each shard has its own index: merged by score."""
        scored: list[tuple[float, str]] = []
        for view in self.keyspace.every_shard():
            raw: Any = self.r.zrevrange(getattr(view, index), 0, stop, withscores=True)
            scored += [(float(score), member.decode()) for member, score in raw]
        if len(self.keyspace.every_shard()) > 1:
            scored.sort(key=lambda pair: pair[0], reverse=True)
        ids = [cid for _score, cid in scored]
        return ids if stop < 0 else ids[: stop + 1]

    # -- running ----------------------------------------------------------------------------

    def vm(self, **config: Any) -> VM:
        """A VM on this deployment (call ``.start()`` / ``.stop()``, or ``run_forever()``)."""
        return VM(self.r, self.keyspace, VMConfig(**config))

    @contextmanager
    def local_vm(self, **config: Any) -> Iterator[VM]:
        """Run a VM in this process for the duration of the ``with`` block.

        Unless given a ``name``, the first one at a time is this handle's local VM
        (named :attr:`local_name`): it also runs the chains started with ``local=True``.
        """
        if self._local_vms == 0 and "name" not in config:
            config = {**config, "name": self.local_name, "pinned": True}
        machine = self.vm(**config).start()
        self._local_vms += 1
        try:
            yield machine
        finally:
            self._local_vms -= 1
            machine.stop()


def connect(url: str | None = None, *, kernel_prefix: str = "") -> Pyrecks:
    """Connect to ``url`` (else ``REDIS_URL``, else the embedded Redis)."""
    return Pyrecks(connect_redis(url), Keyspace(kernel_prefix=kernel_prefix))
