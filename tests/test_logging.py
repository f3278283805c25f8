"""The VM logs through ``logging`` (text or JSON lines) and ``pyrecks logs --json``."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from pyrecks.api import Pyrecks
from pyrecks.cli.pyrecks_main import main
from pyrecks.logsetup import ROOT, configure
from pyrecks.vm.records import ChainStatus
from pyrecks.watching import ENTRY_FIELDS
from tests.vm_helpers import raw_kernel

HELLO = "def hello(x: str):\n    print('hi', x)\n    return ''\n"
BOOM = "def boom(x: int):\n    return 1 // x\n"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger(ROOT)
    handlers, level, propagate = list(root.handlers), root.level, root.propagate
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = propagate


def _records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_vm_json_log_carries_chain_step_and_kernel(
    r: redis.Redis, restore_logging: None
) -> None:
    raw_kernel(r, "hello", HELLO)
    raw_kernel(r, "boom", BOOM)
    buffer = io.StringIO()
    configure("info", "json", stream=buffer)
    px = Pyrecks(r)
    with px.local_vm(threads=1, isolation="thread") as machine:
        ok = px.start('hello("there")')
        bad = px.start("boom(0)")
        assert px.wait(ok, timeout=30).status is ChainStatus.DONE
        assert px.wait(bad, timeout=30).status is ChainStatus.FAILED
    records = _records(buffer.getvalue())  # every line is one JSON object
    for rec in records:
        assert {"time", "level", "logger", "message"} <= set(rec)
    said = [r for r in records if r["logger"] == "pyrecks.kernel"]
    assert said and said[0]["chain"] == ok and said[0]["step"] == 1
    assert said[0]["kernel"] == "hello" and str(said[0]["message"]).endswith("hi there")
    assert said[0]["vm"] == machine.name
    failed = [r for r in records if r.get("chain") == bad and r["level"] == "warning"]
    assert failed and "kernel_error" in str(failed[0]["message"])


def test_quiet_vm_logs_no_kernel_output(r: redis.Redis, restore_logging: None) -> None:
    raw_kernel(r, "hello", HELLO)
    buffer = io.StringIO()
    configure("info", "json", stream=buffer)
    px = Pyrecks(r)
    with px.local_vm(threads=1, isolation="thread", echo=False):
        assert px.wait(px.start('hello("x")'), timeout=30).status is ChainStatus.DONE
    assert not [r for r in _records(buffer.getvalue()) if r["logger"] == "pyrecks.kernel"]


def test_pyrecks_vm_log_format_json_from_the_environment(r: redis.Redis, redis_url: str) -> None:
    raw_kernel(r, "hello", HELLO)
    vm = subprocess.Popen(
        [sys.executable, "-m", "pyrecks", "vm", "--isolation", "thread", "--threads", "1"],
        env={**os.environ, "REDIS_URL": redis_url, "PYRECKS_LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        px = Pyrecks(r)
        chain = px.start('hello("env")')
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE
        vm.send_signal(signal.SIGINT)
        _out, err = vm.communicate(timeout=60)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    records = _records(err)
    assert any("Ctrl-C to stop" in str(rec["message"]) for rec in records)
    assert any(rec.get("chain") == chain and rec.get("kernel") == "hello" for rec in records)


def test_a_bad_log_level_is_refused_with_the_choices() -> None:
    got = CliRunner().invoke(main, ["vm", "--log-level", "loud"])
    assert got.exit_code == 2
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in got.stderr


def test_logs_json_prints_one_object_per_entry_with_stable_fields(
    r: redis.Redis, redis_url: str
) -> None:
    raw_kernel(r, "hello", HELLO)
    px = Pyrecks(r)
    with px.local_vm(threads=1, isolation="thread", echo=False):
        chain = px.start('hello("json")')
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    got = CliRunner().invoke(main, ["logs", chain, "--json", "--redis", redis_url])
    assert got.exit_code == 0, got.output
    lines = [json.loads(line) for line in got.output.splitlines()]
    assert all(list(line) == list(ENTRY_FIELDS) for line in lines)
    assert {"chain": chain, "kind": "out", "text": "hi json"}.items() <= lines[0].items()
    assert lines[-1]["kind"] == "end"
