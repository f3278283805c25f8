"""Reading chain logs: in pages, with the fan-out branches, saying what was dropped.

A chain's log is a Redis stream that keeps its last ``max_log`` entries (10,000): a kernel
that prints 200,000 lines leaves the last 10,000 or so.  Readers (``pyrecks logs``, ``run
--wait``/``--follow``, ``Pyrecks.logs``/``wait``) go through :class:`LogReader`, which

* reads every log in pages of :data:`PAGE` entries, never the whole stream in one reply
  (a reply that big outlived redis-py's 5 s socket timeout on a loaded machine);
* says when entries were dropped — before the reader saw them, or while it was reading
  slower than a kernel printed — with a ``dropped`` entry whose text says how many.  Each
  page is read together with ``XINFO STREAM`` in one MULTI, so the count is exact: the
  stream's ``entries-added`` minus its ``length`` is how many entries left its front, and
  the reader knows how many of those it had seen;
* follows the logs of the chain's fan-out branches (``<id>.0``, ``<id>.1``, and theirs),
  each entry labelled with the chain it belongs to (:attr:`LogEntry.chain`).

It only reads: watching a chain writes nothing and costs the VM nothing per step.  A
follower sleeps in one ``XREAD BLOCK`` on every log it follows (``COUNT 1``: it only wakes
the reader, which then reads the pages).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from pyrecks.cluster import is_cluster
from pyrecks.keys import Keyspace
from pyrecks.vm.records import LogEntry

#: Entries per read: replies stay small however long a log is.
PAGE = 1000
#: At most this many logs are followed at once (the chain and its branches, breadth first).
MAX_FOLLOWED = 256


def dropped_text(count: int, kept: int) -> str:
    """What a ``dropped`` entry says (one wording for every reader)."""
    keeps = kept // 1000 * 1000 if kept >= 1000 else kept
    return f"… {count:,} earlier log entries dropped (the log keeps its last {keeps:,})"


@dataclass
class _Position:
    """Where a reader is in one log: the last id read and how many entries came before."""

    chain: str
    last: str = "0-0"
    #: Entries of this log the reader is past: read, or reported dropped.
    passed: int = 0
    #: ``passed`` is a true count (the reader began at the log's start); a reader asked
    #: to begin after some entry learns the count at its first read, and cannot tell what
    #: was dropped before it began.
    counted: bool = True


class LogReader:
    """Pages through a chain's log (and its branches' logs) from where it last stopped."""

    def __init__(
        self,
        r: redis.Redis,
        keyspace: Keyspace,
        chain_id: str,
        *,
        branches: bool = True,
        after: str = "0-0",
        page: int = PAGE,
        kinds: Iterable[str] | None = None,
    ) -> None:
        self.r = r
        self.keyspace = keyspace
        self.chain_id = chain_id
        self.branches = branches
        self.page = page
        #: Only entries of these kinds become LogEntry objects (None: all); the others
        #: are passed over unparsed — a waiter that shows what kernels print need not
        #: build an object for every step of a chain it shares a process with.
        self.kinds = None if kinds is None else frozenset(k.encode() for k in kinds)
        self._logs: dict[str, _Position] = {
            keyspace.log(chain_id): _Position(chain_id, after, counted=after == "0-0")
        }

    @property
    def chains(self) -> list[str]:
        """The chains whose logs are followed (the chain first)."""
        return [p.chain for p in self._logs.values()]

    def discover(self) -> list[str]:
        """Add the logs of fan-out branches found since the last call; return their ids."""
        if not self.branches:
            return []
        found: list[str] = []
        todo = self.chains
        while todo and len(self._logs) < MAX_FOLLOWED:
            pipe = self.r.pipeline(transaction=False)
            for cid in todo:
                pipe.hget(self.keyspace.chain(cid), "branches")
            nxt: list[str] = []
            for cid, count in zip(todo, pipe.execute(), strict=True):
                for i in range(int(count or 0)):
                    branch = f"{cid}.{i}"
                    key = self.keyspace.log(branch)
                    if key in self._logs or len(self._logs) >= MAX_FOLLOWED:
                        continue
                    self._logs[key] = _Position(branch)
                    found.append(branch)
                    nxt.append(branch)
            todo = nxt
        return found

    def read(self) -> list[LogEntry] | None:
        """The next page of every followed log, in stream order per log (no blocking).

        Call again while it returns a list: a log longer than a page comes page by page.
        None: there was nothing new (an empty list: only entries of other ``kinds``).
        """
        # One snapshot of every log (a chain's logs share a slot).  Not on a cluster, whose
        # transactional pipeline hands back replies unparsed (redis-py): there each log's
        # length and page are read together but not at one instant with the other logs'.
        pipe = self.r.pipeline(transaction=not is_cluster(self.r))
        keys = list(self._logs)
        for key in keys:
            pos = self._logs[key]
            pipe.xinfo_stream(key)
            pipe.xrange(key, min=f"({pos.last}" if pos.last != "0-0" else "-", count=self.page)
        replies = pipe.execute(raise_on_error=False)
        out: list[LogEntry] = []
        new = False
        for i, key in enumerate(keys):
            info, page = replies[2 * i], replies[2 * i + 1]
            if isinstance(info, Exception) or isinstance(page, Exception):
                continue  # no such stream (yet): a branch not started, an expired log
            new |= bool(page)
            out += self._page(self._logs[key], info, page)
        return out if new or out else None

    def read_all(self) -> list[LogEntry]:
        """Everything there is now, page after page (bounded by the logs' lengths)."""
        out: list[LogEntry] = []
        while (got := self.read()) is not None:
            out += got
        return out

    def _page(self, pos: _Position, info: Any, page: list[Any]) -> list[LogEntry]:
        out: list[LogEntry] = []
        added = info.get("entries-added")  # Redis 7+ and Valkey; older servers cannot tell
        length = int(info.get("length") or 0)
        if added is not None:
            gone = int(added) - length  # entries that left the stream's front
            if not pos.counted:
                pos.passed, pos.counted = max(pos.passed, gone), True
            elif pos.passed < gone:
                first = page[0][0] if page else ""
                out.append(
                    LogEntry(
                        id=_text(first) if first else pos.last,
                        kind="dropped",
                        step=0,
                        kernel="",
                        text=dropped_text(gone - pos.passed, length),
                        ts=0.0,
                        chain=pos.chain,
                    )
                )
                pos.passed = gone
        kinds = self.kinds
        for entry_id, fields in page:
            if kinds is None or fields.get(b"kind") in kinds:
                out.append(LogEntry.from_stream(entry_id, fields, pos.chain))
        if page:
            pos.last = _text(page[-1][0])
            pos.passed += len(page)
        return out

    def wait(self, block_ms: int) -> bool:
        """Sleep until any followed log has an entry past the reader (or ``block_ms``)."""
        streams: dict[Any, Any] = {key: pos.last for key, pos in self._logs.items()}
        got: Any = self.r.xread(streams, count=1, block=max(1, block_ms))
        return bool(got)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["MAX_FOLLOWED", "PAGE", "LogReader", "dropped_text"]
