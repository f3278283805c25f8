"""Smoke test of the chain benchmark harness (bench/bench_chains.py): tiny sizes, no timing.

The harness is what the VM's speed work is measured with, so a refactor of the VM or the
API must not silently break it.  This runs every workload and floor at toy sizes against
the test Redis, in both isolation modes it compares (thread and jail), and checks the
report's shape and that every number is positive — never how fast anything is (that
depends on the machine and its load).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.bench_chains import Sizes, parse_args, run
from bench.common import write_json

TINY = Sizes(steps=10, fan_chains=4, fan_steps=5, fan_threads=(2, 4), repeat=1,
             relay_threads=2, timeout=30.0, cold_kernels=2, block_ms=100)


def _positive(summary: dict[str, Any], key: str = "median") -> None:
    assert summary[key] > 0 and math.isfinite(summary[key]), summary


def _check_cpu(cpu: dict[str, Any], isolation: str) -> None:
    """CPU per step: this process and Redis always work; cells only exist in jail mode."""
    _positive(cpu["process"])
    assert cpu["redis"]["median"] >= 0  # INFO cpu has a coarse clock: a tiny run may read 0
    if isolation == "jail":
        _positive(cpu["cells"])
    else:
        assert cpu["cells"]["max"] == 0


def test_bench_chains_report_has_every_workload_floor_and_target(
    redis_url: str, tmp_path: Path
) -> None:
    report = run(TINY, redis_url)
    path = tmp_path / "chains.json"
    write_json(report.as_json(), str(path))
    data = json.loads(path.read_text())

    assert data["sizes"]["steps"] == 10 and data["sizes"]["fan_chains"] == 4
    assert data["sizes"]["isolations"] == ["thread", "jail"]
    floors = data["floors"]
    for name in ("python_us_per_step", "round_trip_us_per_step",
                 "round_trip_after_us_per_step"):
        _positive(floors[name], "median_us")
    assert floors["round_trip_floor_us"] > 0
    _positive(floors["round_trip_concurrent_ops_per_s"])
    # one x64 floor sample per fan-in run: 2 modes x 2 thread counts x 1 repeat
    assert floors["round_trip_concurrent_ops_per_s"]["runs"] == 4

    assert set(data["workloads"]) == {"thread", "jail"}
    for isolation, workloads in data["workloads"].items():
        assert set(workloads) == {"relay", "relay_effect", "fan_in", "cold_first_step"}, isolation
        for name in ("relay", "relay_effect"):
            w = workloads[name]
            for key in ("wall_us_per_step", "vm_us_per_step", "paired_floor_us_per_step",
                        "ratio_to_paired_floor", "vm_ratio_to_paired_floor"):
                _positive(w[key])
            assert len(w["samples_wall_us"]) == TINY.repeat
            _check_cpu(w["cpu_us_per_step"], isolation)
        fan = workloads["fan_in"]
        assert [f["threads"] for f in fan["by_threads"]] == [2, 4]
        assert fan["best_threads"] in (2, 4)
        _positive(fan["steps_per_s"])
        _positive(fan["ratio_to_paired_floor"])
        for f in fan["by_threads"]:
            _positive(f["vm_steps_per_s"])
            _positive(f["paired_floor_ops_per_s"])
            _check_cpu(f["cpu_us_per_step"], isolation)
        cold = workloads["cold_first_step"]
        for key in ("first_step_vm_ms", "first_step_wall_ms", "warm_step_vm_ms",
                    "warm_step_wall_ms"):
            _positive(cold[key])
        assert len(cold["samples_vm_ms"]) == TINY.cold_kernels

    targets = [(t["isolation"], t["name"]) for t in data["targets"]]
    assert targets[:4] == [
        ("thread", "relay / round trip"), ("jail", "relay / round trip"),
        ("thread", "relay+effect / round trip"), ("jail", "relay+effect / round trip"),
    ]
    assert targets[4][0] == "thread" and targets[4][1].startswith("fan-in steps/s")
    assert targets[5][0] == "jail" and targets[5][1].startswith("fan-in / round trip x4")
    assert targets[6] == ("jail", "cold kernel first step ms (VM clock)")
    assert len(targets) == 7
    assert all(isinstance(t["met"], bool) and t["value"] > 0 for t in data["targets"])
    assert {t["issue"] for t in data["targets"]} == {6, 9}

    report.print()  # the tables render without error


def test_bench_chains_poll_waiter_and_subset(redis_url: str) -> None:
    """``--waiter poll --only relay``: the other workloads are skipped, not reported as 0."""
    sizes = dataclasses.replace(TINY, only=("relay",), waiter="poll", isolations=("jail",))
    report = run(sizes, redis_url)
    data = report.as_json()
    assert set(data["workloads"]) == {"jail"}
    assert set(data["workloads"]["jail"]) == {"relay"}
    assert data["sizes"]["waiter"] == "poll"
    _positive(data["workloads"]["jail"]["relay"]["vm_us_per_step"])
    assert [(t["isolation"], t["name"]) for t in data["targets"]] == [
        ("jail", "relay / round trip")]
    assert "round_trip_concurrent_ops_per_s" not in data["floors"]
    report.print()


def test_bench_chains_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The options reach Sizes (no run): both modes by default, a subset on request."""
    sizes, json_path = parse_args([])
    assert sizes == Sizes() and sizes.isolations == ("thread", "jail") and json_path is None
    sizes, json_path = parse_args(["--quick", "--isolation", "jail", "--cold", "3",
                                   "--only", "cold,relay", "--json", "-"])
    assert sizes == dataclasses.replace(Sizes.quick(), isolations=("jail",), cold_kernels=3,
                                        only=("cold", "relay"))
    assert json_path == "-"
    for bad in (["--isolation", "jail,vm"], ["--only", "relay,nope"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "unknown" in capsys.readouterr().err
