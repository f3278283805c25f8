"""What the parts of a VM share: a running chain, the roster of running chains, Redis access.

The VM is cut in three by ownership — the stream consumer (:mod:`pyrecks.vm.consumer`), the
step (:mod:`pyrecks.vm.step`) and the committer (:mod:`pyrecks.vm.committer`) — and the VM
(:mod:`pyrecks.vm.machine`) keeps the life cycle.  What more than one of them needs lives
here, below all of them, so that imports run one way and none imports the VM back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, TypeVar

import redis

from pyrecks.compiler.instructions import Call
from pyrecks.compiler.parser import parse
from pyrecks.errors import PyrecksError
from pyrecks.vm.chainstore import Invocation

T = TypeVar("T")
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def text(value: Any) -> str:
    """A Redis reply value as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def now() -> str:
    """The wall clock as every record field stores it."""
    return repr(time.time())


class Lost(Exception):
    """The chain is no longer ours (fenced): stop without acknowledging its entry."""


@dataclass
class InFlight:
    """A step commit sent but not yet acknowledged, and how to undo our optimism.

    While it is on the wire the chain's next kernel already runs: kernels are pure and the
    next call reads no ``@key`` (a call that does waits for the commit first), so nothing
    can observe the difference.  If the commit turns out refused or fenced, the next
    step's work is thrown away and the chain is where the commit left it.
    """

    invocation: Invocation
    committed_before: int
    step_before: int
    call_before: Call
    logs_before: list[list[str]]
    clear_join_before: bool


@dataclass
class ChainRun:
    """A chain while this VM owns it."""

    id: str
    epoch: str
    step: int
    call: Call
    entry_id: str
    parent: str | None = None
    branch: str | None = None
    clear_join: bool = False
    abandoned: bool = False
    attempts: int = 0
    retries: int = 0
    #: The running step's time limit (what a watchdog message names).
    limit: float = 0.0
    #: When the running step began (wall clock): the heartbeat tells ``pyrecks status``.
    step_began: float = 0.0
    #: The step Redis has (the last checkpoint); ``step`` may be ahead by pure steps.
    committed_step: int = 0
    checkpoint_at: float = field(default_factory=time.monotonic)
    pending_logs: list[list[str]] = field(default_factory=list)
    inflight: InFlight | None = None
    #: The first step after a claim always asks Redis for the kernel digest, so a fix made
    #: just before a start or a retry is seen even if its invalidation is still in flight.
    asked: bool = False
    #: The call as the record stored it at the claim: what a failure before the call could
    #: be parsed (a chain started with an invalid call, then retried) records again.
    stored_call: str = ""
    #: A fan-out parent resumes at its join: the join call and the branches' results.
    stored_join: str = ""
    results: list[list[Any]] = field(default_factory=list)
    #: The stream the chain's entry is in (``starts`` or ``resume``).
    stream: str = ""
    #: Other entries naming this chain that reached us while we ran it: (stream, entry id).
    #: They leave with the chain, never before it: after Redis forgot our claim (a power
    #: loss) such an entry may be the only one left naming the chain.
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    #: Set when we lost the chain and Redis has it queued: our entries are handed back to
    #: the queue when it leaves (no other entry may name it; see Committer.lost).
    requeue: bool = False
    #: Cluster only: the step whose owed effects we delivered but whose outbox entry is
    #: still there; the chain's next commit clears it (saving DELIVERED's round trip).
    delivered_step: str | None = None
    #: The VM the chain is pinned to ('' if none; see PIN in chainstore/scripts.py).
    pin: str = ""


class Roster:
    """The chains this VM runs, and those it is claiming right now.

    The consumer's heartbeat reads it (which stream entries to keep fresh, which chains
    Redis may wrongly think we own); the workers write it.  A chain is *claiming* from just
    before its claim script is sent until it is running or given up, so the heartbeat never
    mistakes a claim in flight for a chain we forgot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, ChainRun] = {}
        self._claiming: set[str] = set()

    def __len__(self) -> int:
        return len(self._running)

    def get(self, chain_id: str) -> ChainRun | None:
        with self._lock:
            return self._running.get(chain_id)

    def claiming(self, chain_id: str) -> None:
        with self._lock:
            self._claiming.add(chain_id)

    def running(self, run: ChainRun) -> None:
        with self._lock:
            self._running[run.id] = run
            self._claiming.discard(run.id)

    def done(self, chain_id: str) -> None:
        with self._lock:
            self._running.pop(chain_id, None)
            self._claiming.discard(chain_id)

    def holds(self, chain_id: str) -> bool:
        with self._lock:
            return chain_id in self._running or chain_id in self._claiming

    def hold(self, chain_id: str, stream: str, entry_id: str) -> bool:
        """Keep another entry naming a running chain with it; False if it is not running."""
        with self._lock:
            run = self._running.get(chain_id)
            if run is None:
                return False
            if (stream, entry_id) != (run.stream, run.entry_id):
                run.duplicates.append((stream, entry_id))
            return True

    def runs(self) -> list[ChainRun]:
        """The running chains (a snapshot)."""
        with self._lock:
            return list(self._running.values())

    def entries(self) -> list[tuple[str, str]]:
        """(stream, entry id) of every running chain, and of the duplicates it holds."""
        with self._lock:
            return [
                entry
                for run in self._running.values()
                for entry in [(run.stream, run.entry_id), *run.duplicates]
            ]


class RedisAccess:
    """How the parts of a VM talk to Redis: a connection per thread, and outage handling."""

    def __init__(
        self, r: redis.Redis, stopping: threading.Event, say: Callable[..., None]
    ) -> None:
        self.r = r
        self.stopping = stopping
        self.say = say
        self._local = threading.local()

    def client(self) -> redis.Redis:
        """This thread's own connection: no pool checkout per command on the hot path
        (on a cluster: the cluster client, which routes each command to its node)."""
        if not hasattr(self.r, "connection_pool"):
            return self.r  # a RedisCluster: it keeps a connection pool per node itself
        client = getattr(self._local, "client", None)
        if client is None:
            client = redis.Redis(
                connection_pool=self.r.connection_pool, single_connection_client=True
            )
            self._local.client = client
        return client

    def retrying(self, operation: Callable[[], T]) -> T:
        """Run an idempotent Redis operation, waiting out a Redis outage with backoff.

        If the VM is asked to stop while Redis is down, the chain is left where it is:
        its entry stays pending and it resumes from its checkpoint later.
        """
        backoff = 0.05
        while True:
            try:
                return operation()
            except REDIS_DOWN as exc:
                if self.stopping.is_set():
                    raise Lost() from exc
                self.say(f"redis unavailable ({exc}); retrying in {backoff:.2f}s", WARNING)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)


def parse_start_call(source: str) -> Call:
    """A chain's first call: ``'func0("x")'`` or a bare kernel name ``start``."""
    stripped = source.strip()
    if stripped.isidentifier():
        return Call(stripped, ())
    transition = parse(stripped)
    if not isinstance(transition.then, Call) or transition.effects:
        raise PyrecksError(
            f"a chain starts with one call such as 'func0(\"x\")' or a kernel name, "
            f"not {stripped!r}"
        )
    return transition.then
