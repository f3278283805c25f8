"""The ``pyrecks`` command as a user types it (real subprocesses, real Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.connection import EmbeddedServer
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

ROOT = Path(__file__).resolve().parent.parent


def pyrecks(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrecks", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def seeded(r: redis.Redis) -> redis.Redis:
    raw_kernel(r, "start", "def start():\n    return 'func0(\"start ...\")'\n")
    raw_kernel(r, "func0", "def func0(x):\n    print('func0 got %s' % x)\n    return ''\n")
    raw_kernel(r, "boom", "def boom():\n    return 1 // 0\n")
    return r


def test_run_local_runs_the_chain_here_shows_output_and_exits_0(
    seeded: redis.Redis, redis_url: str
) -> None:
    done = pyrecks("run", "start", "--local", "--redis", redis_url)
    assert done.returncode == 0, done.stderr
    assert "func0 got start ..." in done.stdout
    assert "status   done" in done.stdout


def test_run_local_of_a_failing_chain_exits_1_with_the_reason(
    seeded: redis.Redis, redis_url: str
) -> None:
    failed = pyrecks("run", "boom", "--local", "--json", "--redis", redis_url)
    assert failed.returncode == 1
    record = json.loads(failed.stdout)
    assert record["status"] == "failed"
    assert record["result_value"] is None
    assert record["error_kind"] == "kernel_error"
    assert "ZeroDivisionError" in record["traceback"]


def test_run_prints_the_id_at_once_and_status_ls_logs_cancel_work(
    seeded: redis.Redis, redis_url: str
) -> None:
    started = pyrecks("run", "func0('queued')", "--redis", redis_url)
    assert started.returncode == 0, started.stderr
    chain = started.stdout.strip()
    status = pyrecks("status", chain, "--json", "--redis", redis_url)
    assert json.loads(status.stdout)["status"] == "queued"
    listed = pyrecks("ls", "--status", "queued", "--redis", redis_url)
    assert chain in listed.stdout
    cancelled = pyrecks("cancel", chain, "--redis", redis_url)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    again = pyrecks("cancel", chain, "--redis", redis_url)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    logs = pyrecks("logs", chain, "--redis", redis_url)
    assert "cancelled by user" in logs.stdout


def test_logs_show_each_step_and_every_printed_line(seeded: redis.Redis, redis_url: str) -> None:
    px = Pyrecks(seeded)
    chain = px.start("start")
    with px.local_vm(echo=False):
        px.wait(chain, timeout=30)
    out = pyrecks("logs", chain, "--redis", redis_url).stdout
    assert 'step: -> func0("start ...")' in out
    assert "func0 got start ..." in out


def test_unknown_chain_and_unreachable_redis_give_clear_errors(redis_url: str) -> None:
    unknown = pyrecks("status", "nope", "--redis", redis_url)
    assert unknown.returncode == 1
    assert "no chain 'nope'" in unknown.stderr
    down = pyrecks("ls", "--redis", "redis://127.0.0.1:1/0")
    assert down.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in down.stderr
    assert "Traceback" not in down.stderr


def test_bad_start_call_is_refused_with_the_caret(redis_url: str) -> None:
    bad = pyrecks("run", "func0(unquoted", "--redis", redis_url)
    assert bad.returncode == 1
    assert "^" in bad.stderr


def test_any_redis_client_starts_a_chain_with_xadd_and_duplicate_ids_start_one(
    seeded: redis.Redis,
) -> None:
    px = Pyrecks(seeded)
    # What `redis-cli XADD pyrecks:starts * call 'func0("from cli")' id job-1` sends.
    seeded.xadd("pyrecks:starts", {"call": "func0(oops"})
    seeded.xadd("pyrecks:starts", {"call": 'func0("from cli")', "id": "job-1"})
    seeded.xadd("pyrecks:starts", {"call": 'func0("from cli")', "id": "job-1"})
    # One worker takes the entries in order; the log stream wakes us when job-1 ends.
    with px.local_vm(echo=False, threads=1):
        for entry in px.logs("job-1", follow=True):
            if entry.kind == "end":
                break
        info = px.wait("job-1", timeout=30)
    assert info.status is ChainStatus.DONE
    assert info.step == 1
    printed = [e.text for e in px.logs("job-1") if e.kind == "out"]
    assert printed == ["func0 got from cli"]  # ran once despite two submissions
    failed = px.chains(status="failed")
    assert len(failed) == 1
    assert failed[0].error_kind == "bad_call"
    assert "func0(oops" in (failed[0].call or "")


def test_demo_runs_on_the_embedded_redis_with_nothing_else_running(tmp_path: Path) -> None:
    env = {"PYRECKS_HOME": str(tmp_path / "home")}
    env_clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | env
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "pyrecks", "demo"],
            capture_output=True,
            text=True,
            env=env_clean,
            cwd=ROOT,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stderr
        assert "func2 says say hi to func2 with" in demo.stdout
        assert "done after 4 steps" in demo.stdout
        assert '"words": 15' in demo.stdout
        # A later command sees the same data in the embedded server.
        listed = subprocess.run(
            [sys.executable, "-m", "pyrecks", "ls", "--status", "done"],
            capture_output=True,
            text=True,
            env=env_clean,
            cwd=ROOT,
            timeout=60,
        )
        assert listed.stdout.count(" done ") == 2
    finally:
        EmbeddedServer(tmp_path / "home").stop()


def test_bad_urls_and_passwords_in_errors(redis_url: str) -> None:
    bad = pyrecks("ls", "--redis", "foo://bar")
    assert bad.returncode == 2  # a usage error, like click's own (tests/test_cli_errors.py)
    assert "invalid Redis URL" in bad.stderr and "Traceback" not in bad.stderr
    secret = pyrecks("ls", "--redis", "redis://:hunter2@127.0.0.1:1/0")
    assert secret.returncode == 1
    assert "hunter2" not in secret.stderr and "***" in secret.stderr


def test_an_invalid_client_supplied_id_fails_visibly(seeded: redis.Redis) -> None:
    px = Pyrecks(seeded)
    entry = seeded.xadd("pyrecks:starts", {"call": 'func0("x")', "id": "a.b"})
    chain_id = entry.decode().replace("-", "")
    with px.local_vm(echo=False, threads=1):
        info = px.wait(chain_id, timeout=30, missing_ok=True)
    assert info.status is ChainStatus.FAILED
    assert "invalid chain id 'a.b'" in (info.error or "")


def test_run_json_gives_the_result_as_text_and_as_a_json_value(redis_url: str, r: redis.Redis) -> None:
    raw_kernel(r, "summary", "from pyrecks.kernel import done\ndef summary():\n    return done({'n': [1, 2]})\n")
    done = pyrecks("run", "summary", "--local", "--json", "--redis", redis_url)
    record = json.loads(done.stdout)
    assert record["result"] == '{"n": [1, 2]}'
    assert record["result_value"] == {"n": [1, 2]}


def test_run_with_an_existing_id_says_so_and_starts_nothing(seeded: redis.Redis) -> None:
    url = seeded.connection_pool.connection_kwargs
    env = {"REDIS_URL": f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}"}
    first = pyrecks("run", 'func0("one")', "--id", "order-1", env=env)
    assert first.returncode == 0, first.stderr
    queued = seeded.xlen("pyrecks:starts")
    second = pyrecks("run", 'func0("two")', "--id", "order-1", "--wait", env=env)
    assert second.returncode == 1
    assert "chain 'order-1' already exists" in second.stderr
    assert 'func0("one")' in second.stderr
    assert "chain order-1 started" not in second.stderr
    assert seeded.xlen("pyrecks:starts") == queued  # nothing new queued
    assert seeded.hget("pyrecks:chain:{order-1}", "call") == b'func0("one")'


def _wait_for_key(r: redis.Redis, key: str, process: subprocess.Popen[str]) -> None:
    """Block until ``key`` is written (keyspace notifications, no polling sleeps)."""
    r.config_set("notify-keyspace-events", "K$h")
    pubsub = r.pubsub()
    pubsub.subscribe(f"__keyspace@0__:{key}")
    try:
        for _ in range(120):
            if r.exists(key):
                return
            pubsub.get_message(timeout=0.5)
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
        raise TimeoutError(f"{key} was never written")
    finally:
        pubsub.close()


def test_a_vm_started_with_sigint_ignored_still_drains_on_sigint(
    seeded: redis.Redis, redis_url: str
) -> None:
    """``nohup``, ``&`` in a script and some CI wrappers start children with SIGINT
    ignored; Python then installs no Ctrl-C handler and the VM never drained."""
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "pyrecks", "vm", "--name", "nohup-vm", "--quiet"],
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        _wait_for_key(seeded, "pyrecks:vms", process)  # its first full heartbeat
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    record = json.loads(seeded.hget("pyrecks:vms", "nohup-vm") or b"{}")
    assert record["state"] == "stopped"
