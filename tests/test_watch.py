"""Watching a chain tells the truth and costs the chain nothing (issue 12 item 7).

Real Redis (the suite's server), VMs in this process or as ``pyrecks`` subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from click.testing import CliRunner

from pyrecks.api import Pyrecks
from pyrecks.cli.pyrecks_main import main
from pyrecks.logstream import LogReader, dropped_text
from pyrecks.vm import output
from pyrecks.vm.output import StepOutput
from pyrecks.vm.records import ChainStatus, LogEntry
from tests.vm_helpers import raw_kernel

VM = {"echo": False, "isolation": "thread"}

FANOUT = {
    "split": """
        from pyrecks.kernel import branch, fanout

        def split(n: int):
            print("splitting into", n)
            return fanout([branch("work", i) for i in range(n)], join=branch("merge", "x"))
    """,
    "work": """
        def work(i: int):
            print("work", i)
            return 'return %d' % i
    """,
    "merge": """
        def merge(results: list, tag: str):
            print("merging", results)
            return 'return %d' % sum(results)
    """,
}

#: Sleeps past output.LIVE_AFTER, so its lines are written while it runs, then prints.
CHATTY = """
    import time

    def chatty(n: int):
        time.sleep(0.15)
        for i in range(n):
            print("line", i)
        return ''
"""


def _store(r: redis.Redis, kernels: dict[str, str]) -> None:
    for name, source in kernels.items():
        raw_kernel(r, name, source)


def _until(check, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``check`` until it returns something truthy (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout}s")


# -- fan-out branches are reachable from the parent -------------------------------------------


def test_branch_output_reaches_the_parents_log_wait_and_follow(
    r: redis.Redis, redis_url: str
) -> None:
    _store(r, FANOUT)
    px = Pyrecks(r)
    seen: list[LogEntry] = []
    with px.local_vm(threads=4, **VM):
        chain = px.start("split(3)")
        info = px.wait(chain, timeout=30, on_entry=seen.append)
    assert info.status is ChainStatus.DONE
    printed = {(e.chain, e.text) for e in seen if e.kind == "out"}
    assert {(f"{chain}.{i}", f"work {i}") for i in range(3)} <= printed
    assert (chain, "merging [0, 1, 2]") in printed

    followed = list(px.logs(chain, follow=True, branches=True))
    assert {e.chain for e in followed} == {chain, f"{chain}.0", f"{chain}.1", f"{chain}.2"}
    assert [e.text for e in px.logs(chain) if e.kind == "out"] == [
        "splitting into 3",
        "merging [0, 1, 2]",
    ]  # the Python API reads one log unless asked for the branches

    shown = CliRunner().invoke(main, ["logs", chain, "--redis", redis_url])
    assert shown.exit_code == 0, shown.output
    assert f"{chain}.1 [step 1 work] work 1" in shown.output
    alone = CliRunner().invoke(main, ["logs", chain, "--no-branches", "--redis", redis_url])
    assert "work 1" not in alone.output and "merging" in alone.output


def test_run_wait_shows_branch_lines_labelled_by_branch(r: redis.Redis, redis_url: str) -> None:
    _store(r, FANOUT)
    px = Pyrecks(r)
    with px.local_vm(threads=4, **VM):
        waited = CliRunner().invoke(main, ["run", "split(2)", "--wait", "--redis", redis_url])
    assert waited.exit_code == 0, waited.output
    chain = waited.stderr.split()[1]  # "chain <id> started"
    assert f"[{chain}.0 work] work 0" in waited.stdout
    assert f"[{chain}.1 work] work 1" in waited.stdout


# -- a log that outgrew its length says so ----------------------------------------------------


def test_a_kernel_printing_past_the_log_length_says_how_much_was_dropped(
    r: redis.Redis, redis_url: str
) -> None:
    """What 200,000 printed lines did to a log of 10,000, with the log cut to 100 (a knob)."""
    _store(r, {"chatty": CHATTY})
    px = Pyrecks(r)
    with px.local_vm(threads=1, max_log=100, **VM):
        chain = px.start("chatty(2000)")
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE

    key = px.keyspace.log(chain)
    stream = r.xinfo_stream(key)
    gone = stream["entries-added"] - stream["length"]
    assert gone > 1000  # the log kept about 100 of its ~2,000 entries

    entries = list(px.logs(chain))
    assert entries[0].kind == "dropped"
    assert entries[0].text == dropped_text(gone, stream["length"])
    assert entries[0].text.startswith(f"… {gone:,} earlier log entries dropped (the log keeps")
    assert len(entries) - 1 == stream["length"]  # then every entry that is left
    out = [e.text for e in entries if e.kind == "out"]
    assert "line 1999" in out
    # The step says it too, in the log itself: the web view's live log shows it as it is.
    assert any("earlier lines of this step dropped" in line for line in out)

    shown = CliRunner().invoke(main, ["logs", chain, "--redis", redis_url])
    assert shown.output.splitlines()[0].startswith(f"… {gone:,} earlier log entries dropped")
    with px.local_vm(threads=1, **VM):
        followed = CliRunner().invoke(
            main, ["run", "chatty(0)", "--follow", "--redis", redis_url]
        )
    assert followed.exit_code == 0, followed.output
    assert "dropped" not in followed.output  # a short log has nothing to say


def test_log_reads_come_in_pages_however_long_the_log(r: redis.Redis) -> None:
    """No reply holds the whole log (a 10,000-entry reply timed out on a loaded machine)."""
    px = Pyrecks(r)
    key = px.keyspace.log("paged")
    for i in range(250):
        r.xadd(key, {"kind": "out", "step": "1", "kernel": "k", "text": f"l{i}", "ts": "0"})
    reader = LogReader(r, px.keyspace, "paged", page=40)
    first = reader.read()
    assert first is not None and len(first) == 40
    rest = reader.read_all()
    assert [e.text for e in first + rest] == [f"l{i}" for i in range(250)]
    assert reader.read() is None


def test_a_follower_that_fell_behind_is_told_what_it_missed(r: redis.Redis) -> None:
    px = Pyrecks(r)
    key = px.keyspace.log("behind")
    for i in range(10):
        r.xadd(key, {"kind": "out", "text": f"a{i}"})
    reader = LogReader(r, px.keyspace, "behind", page=5)
    assert [e.text for e in reader.read() or []] == [f"a{i}" for i in range(5)]
    for i in range(30):
        r.xadd(key, {"kind": "out", "text": f"b{i}"}, maxlen=10, approximate=False)
    got = reader.read_all()
    assert got[0].kind == "dropped"
    assert got[0].text.startswith("… 25 earlier log entries dropped")  # a5..a9, b0..b19
    assert [e.text for e in got[1:]] == [f"b{i}" for i in range(20, 30)]


def test_live_output_is_written_in_batches_not_one_write_per_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step printing thousands of lines made thousands of round trips (slowing the step,
    Redis and every follower); now lines wait for LIVE_EVERY or LIVE_BATCH lines."""
    monkeypatch.setattr(output, "LIVE_AFTER", 0.0)
    monkeypatch.setattr(output, "LIVE_EVERY", 3600.0)  # only the batch size flushes
    writes: list[list[str]] = []
    buffer = StepOutput(flush=writes.append)
    for i in range(3 * output.LIVE_BATCH):
        buffer.write_line(f"l{i}")
    written = [line for batch in writes for line in batch] + buffer.unwritten
    assert written == [f"l{i}" for i in range(3 * output.LIVE_BATCH)]
    assert len(writes) <= 4  # the first line at once, then one write per full batch


# -- status shows the step running now -----------------------------------------------------------


def test_status_shows_the_step_running_now_not_the_last_checkpoint(
    r: redis.Redis, redis_url: str
) -> None:
    _store(
        r,
        {
            "first": "def first(x: int):\n    return 'second(%d)' % x\n",
            "second": "def second(x: int):\n    return 'slow(%d)' % x\n",
            "slow": (
                "import time\nPYRECKS_TIMEOUT = 120\n\ndef slow(x: int):\n"
                "    time.sleep(100)\n    return ''\n"
            ),
        },
    )
    px = Pyrecks(r)
    machine = px.vm(threads=1, echo=False, isolation="jail", lease=0.3).start()
    try:
        chain = px.start("first(1)")

        def running_slow():  # type: ignore[no-untyped-def]
            now = px.running_step(px.status(chain))
            return now if now and now.kernel == "slow" and now.source == "heartbeat" else None

        now = _until(running_slow, what="the heartbeat naming step 3")
        assert (now.step, now.vm) == (3, machine.name)
        assert 0 < now.since <= time.time()
        assert px.status(chain).step < 3  # the record alone says less

        shown = CliRunner().invoke(main, ["status", chain, "--redis", redis_url])
        assert "running  step 3 slow, since " in shown.output
        assert f"on {machine.name}" in shown.output
        data = json.loads(
            CliRunner().invoke(main, ["status", chain, "--json", "--redis", redis_url]).output
        )
        assert data["running"]["kernel"] == "slow" and data["running"]["step"] == 3
        assert data["status"] == "running"
    finally:
        px.cancel(chain)
        machine.stop(timeout=1)  # closing the jail kills the sleeping cell
    done = CliRunner().invoke(main, ["status", chain, "--json", "--redis", redis_url])
    assert json.loads(done.output)["running"] is None


# -- no VM alive -------------------------------------------------------------------------------


def test_run_with_no_vm_alive_says_so_and_how_to_start_one(r: redis.Redis, redis_url: str) -> None:
    runner = CliRunner()
    started = runner.invoke(main, ["run", "anything(1)", "--redis", redis_url])
    assert started.exit_code == 0
    assert len(started.stdout.strip()) == 16  # the id, as before
    assert "no VM is running" in started.stderr and "pyrecks vm" in started.stderr

    waited = runner.invoke(
        main, ["run", "anything(1)", "--wait", "--timeout", "0.3", "--redis", redis_url]
    )
    assert waited.exit_code == 1
    assert "no VM is running" in waited.stderr.splitlines()[1]  # before any waiting
    assert "still queued after 0.3s" in waited.stderr
    assert waited.stderr.count("pyrecks vm") >= 2  # the warning, and the final error

    px = Pyrecks(r)
    with px.local_vm(threads=1, **VM):
        quiet = runner.invoke(main, ["run", "anything(1)", "--redis", redis_url])
    assert "no VM" not in quiet.stderr


# -- Ctrl-C during run --local ----------------------------------------------------------------------


def test_ctrl_c_during_run_local_says_what_became_of_the_chain(
    r: redis.Redis, redis_url: str
) -> None:
    raw_kernel(
        r,
        "loop",
        "import time\n\ndef loop(n: int):\n    time.sleep(0.05)\n    return 'loop(%d)' % (n + 1)\n",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pyrecks", "run", "loop(0)", "--local", "--threads", "1"],
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        px = Pyrecks(r)

        def running_chain():  # type: ignore[no-untyped-def]
            ids = r.zrange(px.keyspace.chains, 0, -1)
            if ids and px.status(ids[0].decode()).status is ChainStatus.RUNNING:
                return ids[0].decode()
            return None

        chain = _until(running_chain, what="the chain running")
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert f"interrupted: chain {chain} is queued" in err
    assert f"pyrecks cancel {chain}" in err
    assert "Traceback" not in err
    info = px.status(chain)
    assert info.status is ChainStatus.QUEUED and info.step > 0  # handed back, not lost
