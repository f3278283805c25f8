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
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from pyrecks.compiler.instructions import Call
from pyrecks.compiler.parser import parse_value
from pyrecks.compiler.render import render_call
from pyrecks.connection import connect as connect_redis
from pyrecks.errors import ChainNotFound, PyrecksError
from pyrecks.keys import Keyspace
from pyrecks.vm.chainstore import ChainStore
from pyrecks.vm.config import default_vm_name
from pyrecks.vm.machine import VM, VMConfig, parse_start_call
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry
from pyrecks.vm.registry import VMInfo, list_vms

__all__ = ["ChainExists", "ChainInfo", "ChainStatus", "LogEntry", "Pyrecks", "connect"]


class ChainExists(PyrecksError):
    """``start(..., exist_ok=False)`` with an id that already names a chain."""

    def __init__(self, chain_id: str, status: str, call: str) -> None:
        super().__init__(
            f"chain {chain_id!r} already exists ({status}, call {call}); nothing was started"
        )
        self.chain_id = chain_id
        self.status = status
        self.call = call


def _valid_chain_id(chain_id: str) -> str:
    if not chain_id or "." in chain_id or "{" in chain_id or "}" in chain_id:
        raise PyrecksError(
            f"invalid chain id {chain_id!r}: use letters, digits, '-' or '_' "
            "('.', '{' and '}' are reserved for fan-out branches and hash tags)"
        )
    return chain_id


class Pyrecks:
    """A handle on one pyrecks deployment (a Redis server and a key layout)."""

    def __init__(self, r: redis.Redis, keyspace: Keyspace | None = None) -> None:
        self.r = r
        self.keyspace = keyspace or Keyspace()
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
    ) -> Iterator[LogEntry]:
        """The chain's log entries; with ``follow``, keep yielding until the chain ends."""
        key = self.keyspace.log(chain_id)
        last = after
        while True:
            entries: Any
            if follow:
                got: Any = self.r.xread({key: last}, count=500, block=block_ms)
                entries = got[0][1] if got else []
            else:
                entries = self.r.xrange(key, min=f"({last}" if last != "0-0" else "-")
            for entry_id, fields in entries:
                entry = LogEntry.from_stream(entry_id, fields)
                last = entry.id
                yield entry
            if not follow:
                return
            if not entries and self.status(chain_id).status.finished:
                # Drain what landed between the read and the status check, then stop.
                tail: Any = self.r.xrange(key, min=f"({last}")
                for entry_id, fields in tail:
                    yield LogEntry.from_stream(entry_id, fields)
                return

    def wait(
        self,
        chain_id: str,
        timeout: float | None = None,
        on_entry: Callable[[LogEntry], None] | None = None,
        *,
        missing_ok: bool = False,
    ) -> ChainInfo:
        """Block until the chain is done, failed or cancelled (or ``timeout`` passes).

        Without ``on_entry`` it blocks on the chain's end stream (one entry, written by the
        script that ends the chain), so a waiter costs the VM nothing per step.  With
        ``on_entry`` it follows the log stream (every step, kernel output) and re-reads the
        chain record when an ``end`` or ``error`` entry arrives.  Either way the record is
        re-read at least once a second.  With ``missing_ok``, a chain whose record does not
        exist yet (started with a raw ``XADD`` that no VM has read yet) is waited for too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self.keyspace.log(chain_id)
        last = "0-0"
        recheck = True
        while True:
            if recheck:
                try:
                    info = self.status(chain_id)
                except ChainNotFound:
                    if not missing_ok:
                        raise
                    info = ChainInfo.from_hash(chain_id, {})
                recheck = False
                if info.status.finished:
                    if on_entry is not None:
                        rest: Any = self.r.xrange(key, min=f"({last}" if last != "0-0" else "-")
                        for entry_id, fields in rest:
                            on_entry(LogEntry.from_stream(entry_id, fields))
                    return info
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"chain {chain_id} is still {info.status.value} after {timeout}s"
                )
            block = 1000 if left is None else max(1, min(1000, int(left * 1000)))
            if on_entry is None:
                # Nothing to show: sleep on the chain's end stream, not on every step.
                self.r.xread({self.keyspace.ended(chain_id): "0-0"}, block=block)
                recheck = True
                continue
            got: Any = self.r.xread({key: last}, count=1000, block=block)
            if not got:
                recheck = True
            for _key, entries in got or []:
                for entry_id, fields in entries:
                    entry = LogEntry.from_stream(entry_id, fields)
                    last = entry.id
                    if entry.kind in ("end", "error"):
                        recheck = True
                    if on_entry is not None:
                        on_entry(entry)

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
        raw: Any = self.r.zrevrange(self.keyspace.failed, 0, limit - 1)
        out = []
        for cid in (i.decode() for i in raw):
            try:
                info = self.status(cid)
            except ChainNotFound:
                self.r.zrem(self.keyspace.failed, cid)  # expired
                continue
            if info.status is ChainStatus.FAILED:
                out.append(info)
        return out

    def vms(self) -> list[VMInfo]:
        """Every VM that has beaten, with liveness and load (``pyrecks vms``)."""
        return list_vms(self.r, self.keyspace)

    def chains(self, status: str | None = None, limit: int = 50) -> list[ChainInfo]:
        """The most recent chains (newest first), optionally only those with ``status``."""
        raw_ids: Any = self.r.zrevrange(self.keyspace.chains, 0, -1)
        ids = [i.decode() for i in raw_ids]
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
        if stale:
            self.r.zrem(self.keyspace.chains, *stale)  # records that expired
        return out

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
