"""Knowing that a kernel did not change, without asking Redis at every step.

Hot patch requires that a new kernel source takes effect at the next step of every running
chain.  Asking Redis for the kernel's digest before each step costs a round trip per step;
instead the VM uses Redis *client-side caching* (``CLIENT TRACKING``): a dedicated
connection reads each kernel's digest once, and Redis promises to send an invalidation
message (to our listener connection, on ``__redis__:invalidate``) as soon as that key is
written.  Until then the VM knows its cached kernel is current.

Correctness rules, in order of importance:

* a digest is only trusted if no invalidation for its key (and no "flush everything"
  message) arrived between sending the read and recording the answer — a generation counter
  per key guards that race between the tracker and the listener thread;
* if either connection breaks, every trusted digest is dropped and the VM falls back to
  asking Redis at every step until tracking is re-established;
* freshness is as fresh as Redis' invalidation push: a step that starts in the instant
  between a write and the push's arrival may still run the previous version.

If the server refuses tracking (old Redis, ACL without ``client|tracking``), the watch
stays disabled and the VM simply asks at every step.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis

log = logging.getLogger("pyrecks.vm")

CHANNEL = "__redis__:invalidate"


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class KernelWatch:
    """Trusted kernel digests, kept valid by Redis invalidation messages."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._trusted: dict[str, str] = {}  # kernel key -> digest
        self._generation: dict[str, int] = {}
        self._epoch = 0  # bumped by "flush everything" and by lost connections
        self._tracker: Any = None
        self._listener: Any = None
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> KernelWatch:
        self._thread = threading.Thread(target=self._listen, name="pyrecks-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._drop_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in (self._tracker, self._listener):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.disconnect()

    @property
    def enabled(self) -> bool:
        return self._ready.is_set()

    # -- questions ----------------------------------------------------------------------

    def trusted(self, key: str) -> str | None:
        """The digest of ``key`` if it is known not to have changed since it was read."""
        return self._trusted.get(key)

    def track(self, key: str) -> None:
        """Read ``key``'s digest through the tracking connection and trust it (if compiled)."""
        if not self._ready.is_set():
            return
        with self._lock:
            generation = (self._epoch, self._generation.get(key, 0))
            tracker = self._tracker
        if tracker is None:
            return
        try:
            with self._lock:
                tracker.send_command("TYPE", key)
                kind = _s(tracker.read_response())
                digest = compiled = None
                if kind == "hash":
                    tracker.send_command("HMGET", key, "digest", "compiled")
                    digest, compiled = tracker.read_response()
        except (redis.RedisError, OSError) as exc:
            log.info("kernel tracking connection lost (%s); checking every step", exc)
            self._reset()
            return
        if kind != "hash" or digest is None or _s(compiled) != "1":
            return
        with self._lock:
            if (self._epoch, self._generation.get(key, 0)) == generation:
                self._trusted[key] = _s(digest)

    # -- the listener ---------------------------------------------------------------------

    def _new_connection(self) -> Any:
        # RESP2 on purpose: invalidations then arrive as plain pub/sub messages on the
        # listener (REDIRECT), instead of RESP3 push frames redis-py would swallow.
        kwargs = {**self._pool.connection_kwargs, "protocol": 2}
        return self._pool.connection_class(**kwargs)

    def _connect(self) -> None:
        listener = self._new_connection()
        listener.connect()
        listener.send_command("CLIENT", "ID")
        client_id = listener.read_response()
        listener.send_command("SUBSCRIBE", CHANNEL)
        listener.read_response()
        tracker = self._new_connection()
        tracker.connect()
        tracker.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
        tracker.read_response()
        with self._lock:
            self._listener, self._tracker = listener, tracker
        self._ready.set()

    def _listen(self) -> None:
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                self._connect()
                backoff = 0.05
                listener = self._listener
                while not self._stopped.is_set() and listener is self._listener:
                    if listener.can_read(timeout=0.5):
                        self._on_message(listener.read_response())
            except redis.ResponseError as exc:
                log.info("Redis refused client tracking (%s); checking kernels every step", exc)
                self._reset()
                return
            except (redis.RedisError, OSError, TypeError, ValueError, AttributeError) as exc:
                # TypeError/ValueError/AttributeError: the socket was closed under us by a
                # reset from the tracker's thread; treat it like any lost connection.
                if self._stopped.is_set():
                    return
                log.info("kernel invalidation listener lost (%s); reconnecting", exc)
                self._reset()
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _on_message(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3 or _s(message[0]) != "message":
            return
        keys = message[2]
        with self._lock:
            if keys is None:  # FLUSHALL, or Redis dropped its tracking table
                self._epoch += 1
                self._trusted.clear()
                return
            for raw in keys:
                key = _s(raw)
                self._generation[key] = self._generation.get(key, 0) + 1
                self._trusted.pop(key, None)

    def _drop_all(self) -> None:
        with self._lock:
            self._epoch += 1
            self._trusted.clear()

    def _reset(self) -> None:
        self._ready.clear()
        self._drop_all()
        with self._lock:
            conns = (self._tracker, self._listener)
            self._tracker = self._listener = None
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.disconnect()


class ClusterKernelWatch:
    """:class:`KernelWatch` on Redis Cluster: one watch per master, each asked about the
    keys of its slots (tracking and its invalidations are per node).

    The slot map decides which watch answers: a key whose slot moved to another master, or
    to a replica promoted since the VM started, has no trusted digest there, so the VM asks
    Redis at every step for it — never trusts a digest it cannot keep valid.  (A key that
    MIGRATE moves away is deleted on its old master, which invalidates it there too.)
    """

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster
        self._watches: dict[str, KernelWatch] = {
            node.name: KernelWatch(node.redis_connection.connection_pool)
            for node in cluster.get_primaries()
        }

    def _for(self, key: str) -> KernelWatch | None:
        try:
            node = self._cluster.get_node_from_key(key)
        except (redis.RedisError, IndexError, KeyError):
            return None
        return self._watches.get(node.name)

    def start(self) -> ClusterKernelWatch:
        for watch in self._watches.values():
            watch.start()
        return self

    def stop(self) -> None:
        for watch in self._watches.values():
            watch.stop()

    @property
    def enabled(self) -> bool:
        return any(watch.enabled for watch in self._watches.values())

    def trusted(self, key: str) -> str | None:
        watch = self._for(key)
        return watch.trusted(key) if watch is not None else None

    def track(self, key: str) -> None:
        watch = self._for(key)
        if watch is not None:
            watch.track(key)
