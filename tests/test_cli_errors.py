"""Errors a user can fix get one line saying what is wrong and how to fix it — never a
traceback — on every command of both CLIs: malformed Redis URLs (exit status 2, like click's
own usage errors), missing or wrong credentials, missing ACL permissions, a database the
server does not have; and numeric options refuse values that make no sense.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from pyrecks.cli.pyrecks_main import main as pyrecks_main
from pyrecks.cli.pyrecksc import main as pyrecksc_main
from pyrecks.testing import RedisServer

CLIS = {"pyrecks": pyrecks_main, "pyrecksc": pyrecksc_main}

#: Malformed URLs: what is wrong with each, as the message says it.
BAD_URLS = {
    "redis://localhost:6379/abc": "the database 'abc' is not a database number",
    "redis://localhost:6379/-1": "the database '-1' is not a database number",
    "redis://localhost:6379/0/1": "the database '0/1' is not a database number",
    "redis://localhost:6379/0?db=x": "invalid value for 'db'",
    "http://localhost:6379/0": "unknown scheme 'http://'",
    "localhost:6379": "it has no scheme; did you mean 'redis://localhost:6379'?",
    "redis://localhost:port/0": "the port is a number in 1-65535",
    "redis://localhost:70000/0": "port out of range",
    "redis://localhost:0/0": "port 0",
    "redis://localhost:6379/0?colour=blue": "unknown option 'colour' in its query",
    "redis://localhost:6379/0?socket_timeout=soon": "invalid value for 'socket_timeout'",
    "unix://": "it names no socket",
    "redis://[::1/0": "invalid IPv6 URL",
}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], click.Command]
]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _every_command() -> list[tuple[str, tuple[str, ...], click.Command]]:
    return [(cli, path, cmd) for cli, group in CLIS.items() for path, cmd in _commands(group)]


def _required_arguments(command: click.Command) -> list[str]:
    """A placeholder for every required argument, so that click gets to the options."""
    return [
        "x"
        for p in command.params
        if isinstance(p, click.Argument) and p.required
    ]


def invoke(cli: str, args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(CLIS[cli], args, env=env)


def _one_error_line(result: Result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception
    )
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


REDIS_COMMANDS = [
    (cli, path, cmd)
    for cli, path, cmd in _every_command()
    if any(p.name == "redis_url" for p in cmd.params)
]


def test_every_command_that_talks_to_redis_has_the_redis_option() -> None:
    names = {" ".join((cli, *path)) for cli, path, _cmd in REDIS_COMMANDS}
    for expected in ("pyrecks ls", "pyrecks vm", "pyrecks run", "pyrecks ui", "pyrecks demo",
                     "pyrecks redis-cli", "pyrecks tree", "pyrecksc list", "pyrecksc compile",
                     "pyrecksc policy set", "pyrecksc graph", "pyrecksc lint"):
        assert expected in names


@pytest.mark.parametrize(
    ("cli", "path", "command"),
    REDIS_COMMANDS,
    ids=[" ".join((cli, *path)) for cli, path, _c in REDIS_COMMANDS],
)
def test_a_malformed_redis_option_is_one_line_and_a_usage_error_on_every_command(
    cli: str, path: tuple[str, ...], command: click.Command
) -> None:
    for url, what in BAD_URLS.items():
        args = [*path, *_required_arguments(command), "--redis", url]
        result = invoke(cli, args)
        line = _one_error_line(result)
        assert result.exit_code == 2, (args, result.output)
        assert line.startswith("error: invalid Redis URL"), line
        assert "(from --redis)" in line and what in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["pyrecks", "ls"],
        ["pyrecks", "status", "x"],
        ["pyrecks", "run", "f()"],
        ["pyrecks", "vm"],
        ["pyrecks", "vms"],
        ["pyrecks", "tree", "x"],
        ["pyrecks", "demo"],
        ["pyrecks", "redis-cli", "PING"],
        ["pyrecksc", "list"],
        ["pyrecksc", "show", "x"],
        ["pyrecksc", "policy", "show"],
        ["pyrecksc", "lint", "--stored"],
        ["pyrecksc", "upgrade", "--stored"],
        ["pyrecksc", "graph"],
    ],
    ids=" ".join,
)
def test_a_malformed_redis_url_variable_is_one_line_naming_it(args: list[str]) -> None:
    result = invoke(args[0], args[1:], env={"REDIS_URL": "redis://localhost:6379/abc"})
    line = _one_error_line(result)
    assert result.exit_code == 2
    assert "invalid Redis URL 'redis://localhost:6379/abc' (from REDIS_URL)" in line


def test_a_password_in_a_malformed_url_is_never_printed() -> None:
    result = invoke("pyrecks", ["ls", "--redis", "redis://:hunter2@localhost:6379/abc"])
    line = _one_error_line(result)
    assert "hunter2" not in line and ":***@" in line
    result = invoke("pyrecks", ["ls", "--redis", "unix:///x.sock?password=hunter2&colour=1"])
    line = _one_error_line(result)
    assert "hunter2" not in line and "password=***" in line and "'colour'" in line


def test_a_database_the_server_lacks_is_one_line_saying_how_many_it_has(
    redis_server: RedisServer,
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99999"
    for cli, args in (("pyrecks", ["ls", "--redis", url]), ("pyrecksc", ["list", "--redis", url])):
        result = invoke(cli, args)
        line = _one_error_line(result)
        assert result.exit_code == 2
        assert "has no such database (DB index is out of range)" in line
        assert "'databases' setting" in line and "--redis" in line
    result = invoke("pyrecks", ["vms"], env={"REDIS_URL": url})
    assert result.exit_code == 2 and "fix the URL given with REDIS_URL" in _one_error_line(result)


@pytest.fixture(scope="module")
def locked_server() -> Iterator[RedisServer]:
    """A server with a password, and an ACL user that may only read."""
    server = RedisServer(password="s3cret").start()
    server.client().execute_command(
        "ACL", "SETUSER", "reader", "on", ">readpw", "~*", "+@read", "+@connection"
    )
    try:
        yield server
    finally:
        server.close()


def _url(server: RedisServer, auth: str) -> str:
    return f"redis://{auth}127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("cli, args", [("pyrecks", ["ls"]), ("pyrecksc", ["list"])])
def test_a_missing_password_is_reported_as_such_not_as_a_server_down(
    locked_server: RedisServer, cli: str, args: list[str]
) -> None:
    result = invoke(cli, [*args, "--redis", _url(locked_server, "")])
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert "requires a password and the URL gives none" in line
    assert "redis://USER:PASSWORD@HOST:PORT/DB" in line
    assert "Is the server running" not in line and "cannot reach" not in line


@pytest.mark.parametrize("auth", [":wrong@", "reader:wrong@", "nobody:readpw@"])
def test_wrong_credentials_are_reported_as_such(locked_server: RedisServer, auth: str) -> None:
    result = invoke("pyrecks", ["vms"], env={"REDIS_URL": _url(locked_server, auth)})
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert "refused the user name or password in the URL" in line
    assert "invalid username-password pair" in line and "REDIS_URL" in line
    assert "wrong" not in line.replace("redis://", "")  # the password is redacted
    assert "Is the server running" not in line


def test_a_missing_acl_permission_is_reported_with_the_user_and_the_fix(
    locked_server: RedisServer,
) -> None:
    url = _url(locked_server, "reader:readpw@")
    assert invoke("pyrecksc", ["list", "--redis", url]).exit_code == 0  # reading is allowed
    result = invoke("pyrecksc", ["policy", "reset", "--redis", url])
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert "does not allow user 'reader' to do this" in line
    assert "pyrecks acl" in line and "(while running 'policy')" in line


def test_an_unreachable_server_still_says_so() -> None:
    from pyrecks.testing.server import free_port

    result = invoke("pyrecks", ["ls", "--redis", f"redis://127.0.0.1:{free_port()}/0"])
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert line.startswith("error: cannot reach Redis at redis://127.0.0.1:")
    assert "Is the server running?" in line


# -- numeric options --------------------------------------------------------------------------


def _numeric_options() -> list[tuple[str, click.Option]]:
    found = []
    for cli, path, command in _every_command():
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(
                param.type, click.types.IntParamType | click.types.FloatParamType
            ):
                found.append((" ".join((cli, *path)), param))
    return found


def test_every_numeric_option_of_both_clis_has_a_lower_bound() -> None:
    options = _numeric_options()
    assert len(options) >= 10
    unbounded = [
        f"{where} {param.opts[0]}"
        for where, param in options
        if not isinstance(param.type, click.IntRange | click.FloatRange)
        or param.type.min is None
    ]
    assert not unbounded, f"numeric options without a range (use click.IntRange/FloatRange): {unbounded}"


@pytest.mark.parametrize(
    "args",
    [
        ["pyrecks", "ls", "--limit", "-1"],
        ["pyrecks", "ls", "--limit", "0"],
        ["pyrecks", "run", "f()", "--wait", "--timeout", "-5"],
        ["pyrecks", "run", "f()", "--wait", "--timeout", "nan"],
        ["pyrecks", "run", "f()", "--local", "--threads", "0"],
        ["pyrecks", "vm", "--threads", "-2"],
        ["pyrecks", "vm", "--retention", "-1"],
        ["pyrecks", "vm", "--lease", "inf"],
        ["pyrecks", "vm", "--memory-limit", "-512"],
        ["pyrecks", "vm", "--max-cells", "0"],
        ["pyrecks", "tree", "x", "--limit", "-3"],
        ["pyrecks", "ui", "--port", "-1"],
        ["pyrecksc", "policy", "set", "--timeout", "-5"],
        ["pyrecksc", "policy", "set", "--max-timeout", "0"],
        ["pyrecksc", "policy", "set", "--retries", "-1"],
    ],
    ids=" ".join,
)
def test_values_that_make_no_sense_are_refused_before_anything_runs(args: list[str]) -> None:
    # A URL nothing listens on: the command must fail on the option, never get that far.
    result = invoke(args[0], [*args[1:], "--redis", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2, result.output
    option = next(a for a in args if a.startswith("--") and a not in ("--wait", "--local"))
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_sensible_values_still_pass(redis_url: str) -> None:
    assert invoke("pyrecks", ["ls", "--limit", "1", "--redis", redis_url]).exit_code == 0
    result = invoke(
        "pyrecksc", ["policy", "set", "--timeout", "2.5", "--retries", "0", "--redis", redis_url]
    )
    assert result.exit_code == 0, result.output
    shown = invoke("pyrecksc", ["policy", "show", "--redis", redis_url])
    assert "default timeout:      2.5s" in shown.stdout


@pytest.mark.parametrize("command", [["pyrecks", "ls"], ["pyrecksc", "list"]], ids=" ".join)
def test_the_installed_commands_print_one_line_too(command: list[str]) -> None:
    """The real entry points (not click's test runner): one line on stderr, exit status 2."""
    exe = str(Path(sys.executable).parent / command[0])
    done = subprocess.run(
        [exe, *command[1:]],
        capture_output=True,
        text=True,
        env={**os.environ, "REDIS_URL": "redis://localhost:6379/abc"},
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: invalid Redis URL 'redis://localhost:6379/abc'")


def test_a_read_only_replica_is_named_as_such(redis_factory: Callable[..., RedisServer]) -> None:
    from pyrecks.testing.server import free_port

    replica = redis_factory(config={"replicaof": f"127.0.0.1 {free_port()}"})
    result = invoke("pyrecksc", ["policy", "reset", "--redis", replica.url])
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert "is a read-only replica: point --redis or REDIS_URL at its primary" in line
