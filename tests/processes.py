"""Real ``pyrecks vm`` processes for fault tests: start, kill -9, stop (SIGSTOP) and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import redis


class VMProcess:
    """One ``python -m pyrecks vm`` child process."""

    def __init__(self, redis_url: str, name: str, *, threads: int = 4, lease: float = 1.0,
                 extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyrecks", "vm", "--name", name, "--threads", str(threads),
             "--lease", str(lease), "--quiet", *extra],
            env={**os.environ, "REDIS_URL": redis_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def kill(self) -> None:
        """kill -9: no drain, no goodbye; its chains are taken over after the lease."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def interrupt(self) -> None:
        """Ctrl-C: a graceful drain."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)


@contextmanager
def vms(redis_url: str, count: int, **kwargs: object) -> Iterator[list[VMProcess]]:
    started = [VMProcess(redis_url, f"vm-{i}", **kwargs) for i in range(count)]  # type: ignore[arg-type]
    try:
        yield started
    finally:
        for vm in started:
            vm.resume()
            vm.kill()


def wait_for_expiry(r: redis.Redis, key: str, timeout: float = 30.0) -> None:
    """Block until ``key`` expires, using keyspace notifications (no polling sleeps)."""
    r.config_set("notify-keyspace-events", "Kx")
    pubsub = r.pubsub()
    db = r.connection_pool.connection_kwargs.get("db", 0)
    pubsub.subscribe(f"__keyspace@{db}__:{key}")
    try:
        if not r.exists(key):
            return
        deadline_ms = int(timeout * 1000)
        while deadline_ms > 0:
            message = pubsub.get_message(timeout=0.5)
            deadline_ms -= 500
            if message and message.get("data") in (b"expired", b"del"):
                return
            if not r.exists(key):
                return
        raise TimeoutError(f"{key} did not expire within {timeout}s")
    finally:
        pubsub.close()
