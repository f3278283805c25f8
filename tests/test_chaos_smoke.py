"""A small run of the chaos soak (bench/chaos.py): real VM processes, real Redis, real faults.

One case per fault kind, each a phase of its own (fresh Redis with an AOF, two ``pyrecks vm``
processes, 60 chains with effects and fan-out, six seconds of faults of that kind), then the
soak's own checker: every effect counter exact, every chain ended with its right result
within the recovery deadline, and no VM logged a traceback.  About 80 s on two cores; the
full soak is ``python -m bench.chaos`` (see its docstring).
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from bench.chaos import KINDS, Options, Phase, Row, format_notes, format_table, main

pytestmark = pytest.mark.slow

QUICK = Options(vms=2, chains=60, duration=6.0, interval=1.5, lease=1.0, threads=4,
                recovery=15.0, verbose=False)

#: Per kind, the quick run that exercises it hard enough to expose its known bugs.
CASES: dict[str, Options] = {
    "vm-kill": QUICK,
    "zombie": QUICK,
    "redis-kill": QUICK,
    # A dense storm: flushes land between a script's SCRIPT LOAD and its EVALSHA retry.
    "script-flush": dataclasses.replace(QUICK, flushes=50, flush_gap_ms=2.0),
    # Slower steps: chains are claimed before the lost second and commit inside it.  (Issue
    # 11 item 4 stranded such chains for good: running under a live owner that had dropped
    # them, their entry bouncing between non-owners or acknowledged.)  The deadline leaves
    # room for one lease, the re-run and the backlog (about 2 s without faults).
    "power-loss": dataclasses.replace(QUICK, step_ms=100, recovery=10.0),
}

#: Fault kinds that currently break a promise of docs/vm.md and docs/operations.md, with the
#: bug (issue 11): their case is marked xfail(strict=False) until the bug is fixed.  Empty:
#: "script-flush" (NoScriptError out of the VM's script calls when a flush lands between
#: SCRIPT LOAD and the EVALSHA retry) and "power-loss" (chains left running under a live owner
#: that dropped them; later a chain left queued with no entry, when a VM acknowledged the
#: start delivered again after the cut as a duplicate of the chain it still ran) failed here;
#: the fixes in pyrecks/vm pass both (tests/test_vm_ownership.py reproduces the second).
KNOWN_BUGS: dict[str, str] = {}


def _case(kind: str) -> object:
    if kind in KNOWN_BUGS:
        return pytest.param(kind, marks=pytest.mark.xfail(strict=False, reason=KNOWN_BUGS[kind]))
    return kind


def _report(row: Row) -> str:
    return f"\n{format_table([row])}\n{format_notes([row])}"


@pytest.mark.parametrize("kind", [_case(k) for k in KINDS])
def test_quick_soak_of_one_fault_kind_loses_duplicates_and_strands_nothing(kind: str) -> None:
    opts = CASES[kind]
    row = Phase(kind, opts, seed=11 + KINDS.index(kind)).run()
    assert row.count > 0, f"no {kind} fault was injected" + _report(row)
    assert row.chains == opts.chains, _report(row)
    assert (row.lost, row.duplicated, row.failed, row.stuck) == (0, 0, 0, 0), _report(row)
    if kind != "power-loss":  # only an everysec power loss may drop acknowledged starts
        assert row.starts_lost == 0, _report(row)
    assert row.recovery is not None and row.recovery < opts.recovery, _report(row)
    assert row.vm_errors == 0, _report(row)


def test_command_line_prints_the_table_and_exits_zero_without_faults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--faults", "none", "--vms", "1", "--chains", "10", "--duration", "1",
                 "--lease", "1", "--threads", "2", "--recovery", "30", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    header, rule, row = out.splitlines()[:3]
    assert header.split() == ["fault", "kind", "count", "chains", "lost", "effects", "dup",
                              "effects", "failed", "stuck", "starts", "lost", "recovery", "VM",
                              "errors"]
    assert set(rule) <= {"-", " "}
    assert row.split()[:7] == ["none", "0", "10", "0", "0", "0", "0"]
    assert row.split()[-1] == "0"


def test_checker_counts_a_lost_and_a_duplicated_effect() -> None:
    """The checker is not vacuous: tamper with counters after a clean run, before the check."""
    opts = dataclasses.replace(QUICK, vms=1, chains=8, duration=1.0)
    phase = Phase("none", opts, seed=5)
    tampered: list[str] = []
    check = phase._check

    def tamper_then_check() -> None:
        r = phase.client()
        first, second = phase.chains[0].counters()[:2]
        r.decr(first)  # an effect lost
        r.incr(second)  # an effect applied twice
        r.set("cx:99999:m0", 1)  # an effect nobody should have applied
        r.close()
        tampered.extend([first, second])
        check()

    phase._check = tamper_then_check  # type: ignore[method-assign]
    row = phase.run()
    shutil.rmtree(row.workdir or phase.workdir, ignore_errors=True)
    assert tampered
    assert (row.lost, row.duplicated, row.stuck, row.failed) == (1, 2, 0, 0), _report(row)
    assert "stray counter keys" in format_notes([row])
