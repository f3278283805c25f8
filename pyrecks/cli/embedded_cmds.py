"""``pyrecks embedded status|stop|cli``, ``pyrecks redis-cli`` and ``pyrecks demo``.

``embedded status`` shows the server's version, binary, socket and pid; ``embedded cli`` and
``redis-cli`` attach a command line to whatever pyrecks uses (the embedded server, or
``--redis URL``): the ``redis-cli`` (or ``valkey-cli``) found on PATH when there is one, else
a small built-in one over redis-py that splits arguments exactly like redis-cli, so the seed's
``SET func0 "def func0(x):\\n\\tprint ..."`` lines work as written at its prompt.

Importing this module registers the commands on ``pyrecks`` (replacing older definitions of
the same names).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import click
import redis

from pyrecks.cli.common import redis_option
from pyrecks.connection import EmbeddedServer, connect, describe, resolve_url
from pyrecks.errors import PyrecksError

CLI_NAMES = ("redis-cli", "valkey-cli")


# --------------------------------------------------------------------------------------
# redis-cli's argument splitting and reply format
# --------------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}


def split_args(line: str) -> list[str]:
    """Split a command line as redis-cli does (``sdssplitargs``).

    In double quotes ``\\n \\r \\t \\b \\a \\xHH`` and ``\\<any>`` are escapes; in single
    quotes only ``\\'``.  A closing quote must be followed by a space or the end of the line.
    """
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return args
        current: list[str] = []
        in_dq = in_sq = False
        while True:
            if in_dq:
                if i >= n:
                    raise PyrecksError("unbalanced quotes in the command line")
                c = line[i]
                hexdigits = "0123456789abcdefABCDEF"
                if (
                    c == "\\"
                    and i + 3 < n
                    and line[i + 1] == "x"
                    and line[i + 2] in hexdigits
                    and line[i + 3] in hexdigits
                ):
                    current.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 3
                elif c == "\\" and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == '"':
                    if i + 1 < n and not line[i + 1].isspace():
                        raise PyrecksError("a closing quote must be followed by a space")
                    in_dq = False
                    i += 1
                    break
                else:
                    current.append(c)
            elif in_sq:
                if i >= n:
                    raise PyrecksError("unbalanced quotes in the command line")
                c = line[i]
                if c == "\\" and i + 1 < n and line[i + 1] == "'":
                    i += 1
                    current.append("'")
                elif c == "'":
                    if i + 1 < n and not line[i + 1].isspace():
                        raise PyrecksError("a closing quote must be followed by a space")
                    in_sq = False
                    i += 1
                    break
                else:
                    current.append(c)
            else:
                if i >= n or line[i].isspace():
                    break
                c = line[i]
                if c == '"':
                    in_dq = True
                elif c == "'":
                    in_sq = True
                else:
                    current.append(c)
            i += 1
        args.append("".join(current))


def _quote(value: bytes) -> str:
    out = ['"']
    for byte in value:
        ch = chr(byte)
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    out.append('"')
    return "".join(out)


def format_reply(reply: Any, indent: int = 0) -> str:
    """A reply as redis-cli prints it on a terminal."""
    if reply is None:
        return "(nil)"
    if reply is True:
        return "OK"
    if isinstance(reply, bool):
        return "(integer) 0"
    if isinstance(reply, int):
        return f"(integer) {reply}"
    if isinstance(reply, float):
        return f"(double) {reply:g}"
    if isinstance(reply, bytes):
        # RESP2 status replies arrive as bytes too; these are the ones redis-cli shows bare.
        return reply.decode() if reply in (b"OK", b"PONG", b"QUEUED") else _quote(reply)
    if isinstance(reply, str):
        return reply if reply in ("OK", "PONG", "QUEUED") else _quote(reply.encode())
    if isinstance(reply, redis.ResponseError):
        return f"(error) {reply}"
    if isinstance(reply, dict):
        reply = [x for pair in reply.items() for x in pair]
    if isinstance(reply, list | tuple | set):
        items = list(reply)
        if not items:
            return "(empty array)"
        width = len(str(len(items)))
        lines = []
        for number, item in enumerate(items, 1):
            label = f"{number:>{width}}) "
            body = format_reply(item, indent + len(label))
            lines.append(label + body)
        return ("\n" + " " * indent).join(lines)
    return str(reply)


# --------------------------------------------------------------------------------------
# Running commands
# --------------------------------------------------------------------------------------


def _hint_for(args: Sequence[str]) -> str | None:
    """A hint for ``SET name "def name(...):\\n ..."`` typed where \\n stays two characters."""
    from pyrecks.compiler.upgrade import escaped_newlines_hint

    if len(args) >= 3 and args[0].upper() == "SET":
        return escaped_newlines_hint(args[2], args[1])
    return None


def run_command(client: redis.Redis, args: Sequence[str]) -> str:
    """Run one command and return its reply as redis-cli shows it (errors included)."""
    try:
        reply = client.execute_command(*args)
    except redis.ResponseError as exc:
        message = str(exc)
        # redis-py drops the generic "ERR " prefix; redis-cli shows it.
        if not re.match(r"[A-Z]+ ", message):
            message = f"ERR {message}"
        return f"(error) {message}"
    return format_reply(reply)


def _raw_client(url: str | None) -> redis.Redis:
    # Replies as bytes, no response callbacks reshaping them: what the server said.
    client = connect(url)
    kwargs = dict(client.connection_pool.connection_kwargs)
    client.close()
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    raw = redis.Redis(connection_pool=pool)
    raw.response_callbacks.clear()
    return raw


def repl(client: redis.Redis, prompt: str, *, stdin: Any = None) -> None:
    """The built-in prompt: one command a line, ``quit`` or end of input to leave."""
    stream = stdin or sys.stdin
    interactive = stream.isatty()
    while True:
        if interactive:
            try:
                line = input(prompt)
            except EOFError:
                click.echo()
                return
        else:
            line = stream.readline()
            if not line:
                return
        line = line.strip()
        if not line:
            continue
        try:
            args = split_args(line)
        except PyrecksError as exc:
            click.echo(f"Invalid argument(s): {exc}")
            continue
        if args[0].lower() in ("quit", "exit"):
            return
        hint = _hint_for(args)
        click.echo(run_command(client, args))
        if hint:
            click.echo(f"hint: {hint}", err=True)


def external_cli() -> str | None:
    for name in CLI_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def cli_arguments(client: Any) -> tuple[list[str], dict[str, str]]:
    """redis-cli options reaching the same server as ``client``, and the environment the
    password travels in (``REDISCLI_AUTH``: an argument would show in every local user's
    ``ps``).  On a cluster: the node pyrecks talks to first, with ``-c`` to follow
    redirections."""
    env: dict[str, str] = {}
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()
        kw = client.get_connection_kwargs()
        args = ["-c", "-h", str(node.host), "-p", str(node.port)]
    else:
        kw = client.connection_pool.connection_kwargs
        if kw.get("path"):
            args = ["-s", str(kw["path"])]
        else:
            args = ["-h", str(kw.get("host", "127.0.0.1")), "-p", str(kw.get("port", 6379))]
        if kw.get("db"):
            args += ["-n", str(kw["db"])]
    if kw.get("username"):
        args += ["--user", str(kw["username"])]
    if kw.get("password"):
        env["REDISCLI_AUTH"] = str(kw["password"])
    if "ssl_ca_certs" in kw or kw.get("connection_class") is redis.SSLConnection:
        args.append("--tls")
        if kw.get("ssl_ca_certs"):
            args += ["--cacert", str(kw["ssl_ca_certs"])]
    return args, env


def attach(redis_url: str | None, args: Sequence[str], builtin: bool) -> None:
    hint = _hint_for(args)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    exe = None if builtin else external_cli()
    if exe is not None:
        client = connect(redis_url)
        options, env = cli_arguments(client)
        client.close()
        raise SystemExit(subprocess.call([exe, *options, *args], env={**os.environ, **env}))
    client = _raw_client(redis_url)
    if args:
        out = run_command(client, list(args))
        click.echo(out)
        raise SystemExit(1 if out.startswith("(error)") else 0)
    where = describe(redis_url)
    if sys.stdin.isatty():
        click.echo(
            f"pyrecks' built-in redis-cli, connected to {where} (no redis-cli on PATH). "
            "Quote as in redis-cli: \"...\\n...\" holds a newline. 'quit' leaves.",
            err=True,
        )
    repl(client, "pyrecks> ")


_BUILTIN_HELP = "Use the built-in command line even if redis-cli is on PATH."


@click.command(
    "redis-cli",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--builtin", is_flag=True, help=_BUILTIN_HELP)
@redis_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def redis_cli(builtin: bool, redis_url: str | None, args: tuple[str, ...]) -> None:
    """redis-cli against the Redis pyrecks uses (embedded, or --redis URL).

    With ARGS, runs that one command; without, a prompt.  Uses redis-cli (or valkey-cli)
    from PATH when there is one, else a built-in prompt that quotes like redis-cli.
    """
    attach(redis_url, args, builtin)


# --------------------------------------------------------------------------------------
# pyrecks embedded ...
# --------------------------------------------------------------------------------------


@click.group()
def embedded() -> None:
    """Manage the embedded Redis server ($PYRECKS_HOME, default ~/.pyrecks)."""


@embedded.command("status")
def embedded_status() -> None:
    """Whether the embedded server runs, its version, binary, socket and data folder."""
    from pyrecks.testing.server import find_redis_server, server_version

    server = EmbeddedServer()
    running = server.is_running()
    try:
        binary: str | None = find_redis_server()
    except PyrecksError as exc:
        binary = None
        binary_note = str(exc)
    version = server.version() if running else None
    if version is None and binary:
        version = server_version(binary)
    click.echo(f"embedded Redis: {'running' if running else 'stopped'} ({server.url})")
    click.echo(f"  version:  {version or 'unknown'}")
    click.echo(f"  binary:   {binary or binary_note}")
    click.echo(f"  socket:   {server.socket}")
    if running:
        click.echo(f"  pid:      {server.pid() or '?'}")
    click.echo(f"  data:     {server.home}")
    click.echo(f"  log:      {server.logfile}")
    click.echo(f"  connect:  pyrecks embedded cli   (or: redis-cli -s {server.socket})")
    if resolve_url(None) != "embedded://":
        click.echo("  note:     REDIS_URL is set, so pyrecks commands use that server instead")


@embedded.command("stop")
def embedded_stop() -> None:
    """Shut the embedded server down (its data stays in $PYRECKS_HOME)."""
    server = EmbeddedServer()
    click.echo("stopped" if server.stop() else "not running")


@embedded.command(
    "cli", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--builtin", is_flag=True, help=_BUILTIN_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def embedded_cli(builtin: bool, args: tuple[str, ...]) -> None:
    """redis-cli attached to the embedded server (started if needed); ARGS run one command."""
    attach("embedded://", args, builtin)


def register(main: click.Group) -> None:
    """Add (or replace) ``embedded``, ``redis-cli`` and ``demo`` on the ``pyrecks`` group."""
    from pyrecks.cli.demo import demo

    main.add_command(embedded)
    main.add_command(redis_cli)
    main.add_command(demo)


def _register() -> None:
    from pyrecks.cli.pyrecks_main import main

    register(main)


_register()
