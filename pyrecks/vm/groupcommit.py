"""Group commit: many chains' step commits share one Redis round trip.

With many chains running at once on one VM, each step's commit is a short Lua script call,
and the VM would spend its time on round trips and system calls.  Commits therefore go
through a leader/follower queue: a thread that finds no batch in flight becomes the leader
and sends every commit queued so far in one pipeline; threads that arrive meanwhile queue
up and wait.  When the leader's batch returns, it hands leadership to the first waiting
commit, which sends the next batch.  A single chain pays nothing extra: with nobody else
queued, its commit goes out at once on the leader's own thread.

Each commit is still its own fenced script run, so batching changes no promise: a batch is
not a transaction, and one chain's refused commit does not affect another's.

On Redis Cluster a batch is split by master: one pipeline per master, on its own connection
(redis-py refuses scripts in a cluster pipeline).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from pyrecks.cluster import is_cluster
from pyrecks.observe import NOOP, Observer
from pyrecks.vm.chainstore import run_script


@dataclass
class _Request:
    #: The request's own script: a batch mixes COMMIT, FAIL, RELEASE … and after a Redis
    #: restart (or SCRIPT FLUSH) each must be re-run with *its* script, never the leader's.
    script: Any
    keys: list[str]
    args: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupCommitter:
    """Batches script calls (EVALSHA) from many threads into pipelined round trips."""

    def __init__(self, client_for_thread: Callable[[], redis.Redis], max_batch: int = 256):
        self._client = client_for_thread
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._busy = False
        self.batches = 0
        self.commits = 0
        self.observer: Observer = NOOP  # metrics (pyrecks/observe): batch sizes

    def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` (a registered redis-py Script) with ``keys`` and ``args``."""
        request = _Request(script, keys, args)
        with self._lock:
            self._queue.append(request)
            lead = not self._busy
            self._busy = True
        if not lead:
            request.done.wait()
            if not request.lead:
                return self._outcome(request)
        self._lead()
        return self._outcome(request)

    @staticmethod
    def _outcome(request: _Request) -> Any:
        if request.error is not None:
            raise request.error
        return request.result

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
        self._send(batch)
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
            else:
                successor = None
                self._busy = False
        for request in batch:
            request.done.set()
        if successor is not None:
            successor.done.set()

    def _send(self, batch: list[_Request]) -> None:
        client = self._client()
        self.batches += 1
        self.commits += len(batch)
        self.observer.commit_batch(len(batch))
        try:
            if len(batch) == 1:
                (only,) = batch
                only.result = run_script(only.script, only.keys, only.args, client)
                return
            if not is_cluster(client):
                self._pipelined(client, batch, client)
                return
            # A cluster refuses scripts in its own pipelines: one pipeline per master, on
            # that master's own connection, each request to the master of its first key.
            by_node: dict[str, tuple[Any, list[_Request]]] = {}
            for request in batch:
                node: Any = client.get_node_from_key(request.keys[0])  # type: ignore[attr-defined]
                by_node.setdefault(node.name, (node, []))[1].append(request)
            for node, requests in by_node.values():
                self._pipelined(node.redis_connection, requests, client)
        except BaseException as exc:  # a lost connection fails the whole batch
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = exc

    @staticmethod
    def _pipelined(target: redis.Redis, batch: list[_Request], client: redis.Redis) -> None:
        """``batch`` in one pipeline on ``target``; a request the pipeline could not run —
        the script cache lost, or (a cluster) its slot moved or moving — runs by itself
        through ``client``, with its own script."""
        pipe = target.pipeline(transaction=False)
        for request in batch:
            pipe.evalsha(request.script.sha, len(request.keys), *request.keys, *request.args)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.exceptions.NoScriptError:
            results = [redis.exceptions.NoScriptError("NOSCRIPT")] * len(batch)
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, _RUN_BY_ITSELF):
                # Redis restarted or flushed its script cache (EVAL, so a second flush cannot
                # strike), or the cluster moved the slot: the cluster client follows it.
                request.result = run_script(request.script, request.keys, request.args, client)
            elif isinstance(result, BaseException):
                request.error = result
            else:
                request.result = result


#: Pipeline replies after which a request is sent again by itself (see _pipelined).
_RUN_BY_ITSELF = (
    redis.exceptions.NoScriptError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
