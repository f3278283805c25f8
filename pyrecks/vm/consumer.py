"""The stream consumer: which start entries this VM holds, and for how long.

Entries of the starts stream reach a VM three ways: read as new (``XREADGROUP >``), left
pending under its own name by a previous life (read at start), or taken over from a VM
whose heartbeat expired (``XAUTOCLAIM`` after the lease).  The consumer reads only as many
as the VM has idle workers, hands them to the workers through a queue, keeps the entries of
running chains fresh while the VM beats, acknowledges an entry when its chain leaves the
VM — only if the VM still holds it, checked inside the ACK script, since a VM that was
stopped past its lease no longer does — and hands entries back on drain.

The heartbeat also answers other VMs' questions: a takeover that finds a chain owned by a
living VM asks that VM (``pyrecks:vm-asks:<name>``); a VM asked about a chain it does not
run gives it back (DISOWN, fenced on owner and epoch) within one heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from pyrecks.keys import Keyspace
from pyrecks.observe import NOOP, Observer
from pyrecks.vm.chainrun import REDIS_DOWN, ChainRun, RedisAccess, Roster, now, text
from pyrecks.vm.chainstore import GROUP, ChainStore
from pyrecks.vm.config import VMConfig
from pyrecks.vm.outbox import Outbox
from pyrecks.vm.registry import beat

log = logging.getLogger("pyrecks.vm")

#: (stream, entry id, entry fields, taken over from another consumer)
Entry = tuple[str, str, dict[str, str], bool]


class StreamConsumer:
    """Reads, holds, keeps fresh, acknowledges and hands back start entries."""

    def __init__(
        self,
        store: ChainStore,
        access: RedisAccess,
        config: VMConfig,
        roster: Roster,
        *,
        started: float,
        record: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.store = store
        self.access = access
        self.config = config
        self.roster = roster
        self.name = config.name
        self.started = started
        #: Extra fields of this VM's heartbeat record (what ``pyrecks vms`` shows).
        self.record = record
        #: Entries to begin, and chains back from a retry's backoff (see VM._park).
        self.work: queue.Queue[Entry | ChainRun | None] = queue.Queue()
        self.idle = threading.Semaphore(0)
        self.asked: list[str] = []  # chains given back after a question (tests read it)
        #: (stream, entry id) of entries in the work queue that no worker has begun.
        self._waiting: set[tuple[str, str]] = set()
        self._next_housekeeping = time.monotonic() + self.config.housekeeping_every
        self.observer: Observer = NOOP  # metrics (pyrecks/observe): queue depth, Redis RTT
        #: On a cluster: delivers effects a dead VM's commits still owe (at each beat).
        self.outbox = Outbox(store, access) if store.keyspace.sharded else None
        self._turn = 0  # which shard a cluster read blocks on (it rotates)

    @property
    def stopping(self) -> threading.Event:
        return self.access.stopping

    @property
    def keyspace(self) -> Keyspace:
        return self.store.keyspace

    @property
    def shards(self) -> list[Keyspace]:
        """One view per shard (on one Redis: the keyspace itself)."""
        return self.keyspace.every_shard()

    def shard_streams(self, shard: Keyspace) -> tuple[str, ...]:
        """A shard's streams, in the order they are served: chains to continue (drained,
        given back, fan-out), then chains pinned to this VM (a ``pinned`` VM: ``run
        --local``), then new starts.  They share a slot, so one XREADGROUP reads them all."""
        if self.config.pinned:
            return (shard.resumes, shard.pinned(self.name), shard.starts)
        return (shard.resumes, shard.starts)

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream this VM reads (one Redis: resume, [pinned,] starts; a cluster:
        those of every shard)."""
        return tuple(s for shard in self.shards for s in self.shard_streams(shard))

    # -- start-up ---------------------------------------------------------------------------

    def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                self.access.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        if self.config.pinned:  # listed, so that whoever outlives us removes the stream
            for shard in self.shards:
                self.access.r.sadd(shard.pins, self.name)

    def queue_own_pending(self) -> None:
        """Entries this VM name left pending (a restart after a crash) resume first."""
        for stream in self.streams:
            got: Any = self.access.r.xreadgroup(GROUP, self.name, {stream: "0"})
            for _stream, entries in got or []:
                for entry_id, fields in entries:
                    decoded = {text(k): text(v) for k, v in (fields or {}).items()}
                    self.work.put((stream, text(entry_id), decoded, True))

    # -- heartbeat --------------------------------------------------------------------------

    def beat(self, state: str = "running") -> None:
        """One heartbeat: our liveness key and record, our entries' idle time reset."""
        pipe = self.access.r.pipeline(transaction=False)
        beat(
            pipe,
            self.keyspace,
            self.name,
            lease=self.config.lease,
            threads=self.config.threads,
            active=len(self.roster),
            isolation=self.config.isolation,
            started=self.started,
            state=state,
            extra=self.record(),
        )
        held: dict[str, list[Any]] = {}
        for stream, entry_id in self.roster.entries():
            held.setdefault(stream, []).append(entry_id)
        for stream, entries in held.items():
            # Reset the idle time of our entries: they are not up for takeover.
            pipe.xclaim(stream, GROUP, self.name, 0, entries, justid=True)
        # Entries we hold but no chain of ours names, idle for two beats (see take_up).
        idle_ms = int(self.config.lease * 2000 / 3)
        for stream in self.streams:
            pipe.xpending_range(
                stream, GROUP, "-", "+", 100, consumername=self.name, idle=idle_ms
            )
        for shard in self.shards:
            pipe.smembers(shard.pins)
        replies = pipe.execute(raise_on_error=False)
        if any(isinstance(x, redis.ResponseError) and "NOGROUP" in str(x) for x in replies):
            self.ensure_group()  # Redis lost a stream or its group (an AOF cut back)
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, redis.ResponseError):
                raise reply  # (a lost connection: the heartbeat loop says so and retries)
        replies = [[] if isinstance(x, redis.ResponseError) else x for x in replies]
        n = len(self.shards)
        pins, idle = replies[-n:], replies[-n - len(self.streams) : -n]
        if state != "running" and self.config.pinned:
            for shard in self.shards:  # we stopped beating: our pins lapse now
                self.lapse(self.name, min_age=0.0, shard=shard)
        if state == "running":
            self.take_up(dict(zip(self.streams, idle, strict=True)))
            for shard, names in zip(self.shards, pins, strict=True):
                self.lapse_pins(sorted(text(m) for m in names or ()), shard)
            self.answer_asks()
            if self.outbox is not None:
                self.outbox.recover(self.roster.holds)
            if time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + self.config.housekeeping_every
                self.housekeep()

    def answer_asks(self) -> list[str]:
        """Give back chains other VMs found under our name that we do not run.

        Redis can remember an owner the VM forgot (it lost the last second of its AOF, or a
        claim's reply never came back): every takeover then answers "alive" and the chain
        would wait for this VM's restart.  The owner's epoch is read first and DISOWN is
        fenced on it, so a claim of ours racing with the answer keeps its chain.
        """
        members: set[Any] = set()
        for shard in self.shards:  # (one asks set per shard on a cluster: CLAIM's slot)
            asks = shard.vm_asks(self.name)
            pipe = self.access.r.pipeline(transaction=True)
            pipe.smembers(asks)
            pipe.delete(asks)
            members.update(pipe.execute()[0] or ())
        given: list[str] = []
        for chain_id in sorted(text(m) for m in members):
            if self.roster.holds(chain_id):
                continue
            owner, epoch, status = (
                text(v) if v is not None else ""
                for v in self.access.r.hmget(
                    self.keyspace.chain(chain_id), "owner", "epoch", "status"
                )
            )
            if status != "running" or owner != self.name or self.roster.holds(chain_id):
                continue
            if self.store.disown(chain_id, self.name, epoch, now()).run().ok:
                self.access.say(
                    f"[{chain_id}] given back: Redis had us as its owner", chain=chain_id
                )
                given.append(chain_id)
        self.asked += given
        return given

    def take_up(self, idle: dict[str, list[dict[str, Any]]]) -> int:
        """Queue again the entries we hold that no chain of ours names (``idle``: per stream,
        our pending entries idle for two beats, as XPENDING described them).

        The heartbeat resets the idle time of every entry of a chain we run, so one idle for
        two beats is one we forgot: Redis lost its acknowledgement (a power loss), say.  Left
        alone it waits a lease for a takeover, which then has to ask us; taken up now, the
        claim (as a takeover of our own) finds out what the chain needs.
        """
        held = set(self.roster.entries()) | self._waiting
        count = 0
        for stream, pending in idle.items():
            ids = [text(p["message_id"]) for p in pending or []]
            ids = [i for i in ids if (stream, i) not in held]
            if not ids:
                continue
            pipe = self.access.r.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xrange(stream, entry_id, entry_id)
            for entry_id, found in zip(ids, pipe.execute(), strict=True):
                for _id, fields in found or []:
                    decoded = {text(k): text(v) for k, v in (fields or {}).items()}
                    self._queue((stream, entry_id, decoded, True))
                    count += 1
        return count

    # -- pins -------------------------------------------------------------------------------

    def lapse_pins(self, names: list[str], shard: Keyspace | None = None) -> int:
        """Move the pinned chains of VMs that stopped beating to the resume stream.

        A pin lasts as long as its VM's heartbeat: a ``run --local`` that died (or never
        started its VM) must not strand its chains.  Checked at every heartbeat: one
        ``SMEMBERS`` in the heartbeat's pipeline, then one ``EXISTS`` per pinned VM.
        """
        view = shard or self.keyspace
        others = [n for n in names if n != self.name]
        if not others:
            return 0
        pipe = self.access.r.pipeline(transaction=False)
        for name in others:
            pipe.exists(view.vm(name))
        dead = [n for n, alive in zip(others, pipe.execute(), strict=True) if not alive]
        # A pinned start may be created a moment before its VM first beats: only entries
        # older than a lease lapse.
        return sum(self.lapse(name, min_age=self.config.lease, shard=view) for name in dead)

    def lapse(self, vm: str, *, min_age: float, shard: Keyspace | None = None) -> int:
        """Move ``vm``'s pinned entries older than ``min_age`` s to the resume stream (the
        LAPSE script does nothing if ``vm`` beats); the chains moved.  ``shard``: whose
        pinned stream (a cluster has one per shard)."""
        view = shard or self.keyspace
        raw: Any = self.access.r.xrange(view.pinned(vm), count=500)
        newest = (time.time() - min_age) * 1000
        entries = []
        for entry_id, fields in raw or []:
            chain = {text(k): text(v) for k, v in (fields or {}).items()}.get("chain")
            if chain and int(text(entry_id).split("-")[0]) <= newest:
                entries.append((text(entry_id), chain))
        if raw and not entries:
            return 0
        reply = self.store.lapse(vm, entries, view).run()
        moved = int(reply.text(0) or 0) if reply.ok else 0
        if moved:
            self.access.say(f"{moved} chain(s) pinned to {vm} resume elsewhere: it stopped beating")
        return moved

    def give(self, stream: str, entry_id: str, vm: str) -> None:
        """An entry naming a chain VM ``vm`` runs goes to ``vm`` (see GIVE)."""
        invocation = self.store.give(stream, self.name, vm, entry_id)
        self.access.retrying(lambda: invocation.run(self.access.client()))

    def hand_over(self, stream: str, entry_id: str, vm: str) -> None:
        """A chain pinned to living VM ``vm`` reached us: its entry goes to ``vm``."""
        invocation = self.store.hand_back(stream, self.name, [entry_id], to_pin=vm)
        self.access.retrying(lambda: invocation.run(self.access.client()))

    # -- housekeeping -----------------------------------------------------------------------

    def housekeep(self) -> dict[str, int]:
        """Trim what nobody needs any more; return how much of each went.

        * start and resume entries delivered, acknowledged and older than
          ``stream_retention`` (never a pending entry: a takeover needs it);
        * consumers of VMs that no longer beat and hold nothing, and their ``pyrecks vms``
          records once older than the retention of finished chains;
        * ids in ``pyrecks:chains`` and ``pyrecks:failed`` whose records expired.

        Every VM may run it at the same time: each step is idempotent.
        """
        r = self.access.r
        ks = self.keyspace.every_shard()[0]  # VM heartbeats: the first shard's copy
        wall = time.time()
        done = {"entries": 0, "consumers": 0, "vms": 0, "ids": 0}
        for stream in self.streams:
            done["entries"] += self._trim(stream, wall)
            for consumer in r.xinfo_consumers(stream, GROUP):
                name = text(consumer["name"])
                # Holding nothing and not beating: gone (a VM that is merely slow gets its
                # consumer back at its next read).
                if (
                    int(consumer.get("pending", 0)) == 0
                    and name != self.name
                    and not r.exists(ks.vm(name))
                ):
                    r.xgroup_delconsumer(stream, GROUP, name)  # answers its pending count: 0
                    done["consumers"] += 1
        records: Any = r.hgetall(ks.vms) or {}
        for raw_name, raw in records.items():
            vm_name = text(raw_name)
            try:
                last = float(json.loads(raw).get("beat", 0.0))
            except (ValueError, AttributeError):
                last = 0.0
            if wall - last > self.config.retention and not r.exists(ks.vm(vm_name)):
                done["vms"] += int(r.hdel(ks.vms, vm_name))
        for index in (i for view in self.shards for i in (view.chains, view.failed)):
            old: Any = r.zrangebyscore(index, "-inf", wall - self.config.retention, 0, 500)
            if not old:
                continue
            pipe = r.pipeline(transaction=False)
            for chain_id in old:
                pipe.exists(ks.chain(text(chain_id)))
            gone = [c for c, alive in zip(old, pipe.execute(), strict=True) if not alive]
            if gone:
                done["ids"] += int(r.zrem(index, *gone))
        return done

    def _trim(self, stream: str, wall: float) -> int:
        """Trim ``stream`` below its oldest entry that is pending, undelivered or recent."""
        r = self.access.r
        groups = [g for g in r.xinfo_groups(stream) if text(g["name"]) == GROUP]
        if not groups:
            return 0
        keep = [
            text(groups[0]["last-delivered-id"]),
            f"{int((wall - self.config.stream_retention) * 1000)}-0",
        ]
        summary: Any = r.xpending(stream, GROUP)
        if summary and summary.get("pending"):
            keep.append(text(summary["min"]))
        floor = min(keep, key=lambda i: tuple(int(p) for p in i.split("-")))
        if floor in ("0-0", ""):
            return 0
        return int(r.xtrim(stream, minid=floor, approximate=False))

    def heartbeat_loop(self, on_beat: Callable[[], object] | None = None) -> None:
        """Beat every lease/3; ``on_beat`` runs first (the VM re-reads its policy there)."""
        interval = max(self.config.lease / 3, 0.05)
        while not self.stopping.wait(interval):
            try:
                if on_beat is not None:
                    on_beat()
                self.beat()
                self.observer.heartbeat(self.access.r, self.streams, GROUP)
            except REDIS_DOWN as exc:
                self.access.say(f"heartbeat failed ({exc}); retrying", logging.WARNING)
            except Exception:  # a bad policy, say: keep beating, say why
                log.exception("pyrecks VM: heartbeat step failed")

    # -- reading ----------------------------------------------------------------------------

    def reclaim(self, count: int) -> list[Entry]:
        """Take up to ``count`` entries idle longer than the lease (their VM stopped beating)."""
        out: list[Entry] = []
        for stream in self.streams:
            if len(out) >= count:
                break
            got: Any = self.access.r.xautoclaim(
                stream,
                GROUP,
                self.name,
                min_idle_time=int(self.config.lease * 1000),
                start_id="0-0",
                count=count - len(out),
            )
            out += [
                (stream, text(entry_id), {text(k): text(v) for k, v in fields.items()}, True)
                for entry_id, fields in (got[1] if got else [])
                if fields is not None  # an entry trimmed from the stream
            ]
        return out

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """Up to ``count`` new entries, resume stream first.

        One blocking read waits on both streams, but Redis then answers up to ``count``
        entries *per stream*: what is beyond ``count`` is handed back at once (to the resume
        stream, so it keeps its place before newer starts).
        """
        if self.keyspace.sharded:
            return self._read_shards(count, block_ms)
        got: Any = self.access.r.xreadgroup(
            GROUP, self.name, {self.keyspace.resumes: ">"}, count=count
        )
        if not got and block_ms is not None:
            got = self.access.r.xreadgroup(
                GROUP,
                self.name,
                dict.fromkeys(self.streams, ">"),
                count=count,
                block=block_ms,
            )
        items = self._entries(got, self.streams)
        self.hand_back(items[count:])
        return items[:count]

    def _read_shards(self, count: int, block_ms: int | None) -> list[Entry]:
        """A cluster's read: every shard's streams without blocking (the first shard
        rotates, so none is always last), then, if nothing came, a blocking read on one
        shard for its share of ``block_ms``.  One command cannot block on several slots, so
        a start on another shard waits at most about ``block_ms`` for its turn."""
        self._turn += 1
        shards = self.shards
        first = self._turn % len(shards)
        order = shards[first:] + shards[:first]
        items: list[Entry] = []
        for shard in order:
            if len(items) >= count:
                break
            streams = self.shard_streams(shard)
            got: Any = self.access.r.xreadgroup(
                GROUP, self.name, dict.fromkeys(streams, ">"), count=count - len(items)
            )
            items += self._entries(got, streams)
        if not items and block_ms is not None:
            streams = self.shard_streams(order[0])
            got = self.access.r.xreadgroup(
                GROUP,
                self.name,
                dict.fromkeys(streams, ">"),
                count=count,
                block=max(1, block_ms // len(order)),
            )
            items += self._entries(got, streams)
        self.hand_back(items[count:])
        return items[:count]

    @staticmethod
    def _entries(got: Any, streams: tuple[str, ...]) -> list[Entry]:
        """XREADGROUP's answer as entries, in the order of ``streams`` (resume first)."""
        items: list[Entry] = []
        for stream in streams:  # resume first, whatever order Redis answered in
            for name, entries in got or []:
                if text(name) != stream:
                    continue
                for entry_id, fields in entries:
                    decoded = {text(k): text(v) for k, v in (fields or {}).items()}
                    items.append((stream, text(entry_id), decoded, False))
        return items

    def read_loop(self) -> None:
        backoff = 0.05
        last_reclaim = 0.0
        while not self.stopping.is_set():
            # Only take as many entries as there are idle workers: an entry we hold but do
            # not run would wait in our pending list for nothing.
            if not self.idle.acquire(timeout=self.config.block_ms / 1000):
                continue
            free = 1
            while self.idle.acquire(blocking=False):
                free += 1
            items: list[Entry] = []
            try:
                if time.monotonic() - last_reclaim > self.config.lease / 2:
                    last_reclaim = time.monotonic()
                    items += self.reclaim(free)
                if len(items) < free:
                    items += self.read(free - len(items), self.config.block_ms)
                backoff = 0.05
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (or Redis lost it)
                    self.ensure_group()
                else:
                    self.access.say(f"reading the starts stream failed: {exc}", logging.ERROR)
            except REDIS_DOWN as exc:
                self.access.say(
                    f"redis unavailable ({exc}); retrying in {backoff:.2f}s", logging.WARNING
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            if self.stopping.is_set():
                self.hand_back(items)  # read while stopping: nobody here will run them
                return
            for item in items:
                self._queue(item)
            for _ in range(free - len(items)):
                self.idle.release()

    def _queue(self, item: Entry) -> None:
        self._waiting.add((item[0], item[1]))
        self.work.put(item)

    def next(self) -> Entry | ChainRun | None:
        """A worker's next entry (None: stop); the worker counts as idle until it comes."""
        self.idle.release()
        item = self.work.get()
        if isinstance(item, tuple):
            self._waiting.discard((item[0], item[1]))
        return item

    def leftovers(self) -> list[Entry | ChainRun]:
        """Entries queued but never begun, and chains back from a backoff (at stop)."""
        out: list[Entry | ChainRun] = []
        while not self.work.empty():
            item = self.work.get_nowait()
            if item is not None:
                out.append(item)
        return out

    # -- letting go -------------------------------------------------------------------------

    def ack(self, stream: str, entry_id: str) -> None:
        """Acknowledge ``entry_id`` if we still hold it (see the ACK script)."""
        invocation = self.store.ack(stream, self.name, [entry_id])
        self.access.retrying(lambda: invocation.run(self.access.client()))

    def hand_back(self, items: list[Entry]) -> None:
        """Give entries we hold back to the group: a fresh copy, then ack the original.

        A consumer cannot un-read an entry; left pending, it would wait a whole lease for a
        takeover.  Copies are safe: an entry only names a chain, and claiming checks status.
        Copies go to the resume stream, ahead of newer starts.
        """
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _fields, _reclaimed in items:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, entry_ids in by_stream.items():
            with contextlib.suppress(*REDIS_DOWN):
                self.store.hand_back(stream, self.name, entry_ids).run()
