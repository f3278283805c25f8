"""Smoke test of the chain benchmark harness (bench/bench_chains.py): tiny sizes, no timing.

The harness is what the VM's speed work is measured with, so a refactor of the VM or the
API must not silently break it.  This runs every workload and floor at toy sizes against
the test Redis and checks the report's shape and that every number is positive — never
how fast anything is (that depends on the machine and its load).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from bench.bench_chains import Sizes, run
from bench.common import write_json

TINY = Sizes(steps=10, fan_chains=4, fan_steps=5, fan_threads=(2, 4), repeat=1,
             relay_threads=2, timeout=30.0)


def _positive(summary: dict[str, Any], key: str = "median") -> None:
    assert summary[key] > 0 and math.isfinite(summary[key]), summary


def test_bench_chains_report_has_every_workload_floor_and_target(
    redis_url: str, tmp_path: Path
) -> None:
    report = run(TINY, redis_url)
    path = tmp_path / "chains.json"
    write_json(report.as_json(), str(path))
    data = json.loads(path.read_text())

    assert data["sizes"]["steps"] == 10 and data["sizes"]["fan_chains"] == 4
    floors = data["floors"]
    for name in ("python_us_per_step", "round_trip_us_per_step",
                 "round_trip_after_us_per_step"):
        _positive(floors[name], "median_us")
    assert floors["round_trip_floor_us"] > 0
    _positive(floors["round_trip_concurrent_ops_per_s"])

    workloads = data["workloads"]
    for name in ("relay", "relay_effect"):
        w = workloads[name]
        for key in ("wall_us_per_step", "vm_us_per_step", "paired_floor_us_per_step",
                    "ratio_to_paired_floor"):
            _positive(w[key])
        assert len(w["samples_wall_us"]) == TINY.repeat
    fan = workloads["fan_in"]
    assert [f["threads"] for f in fan["by_threads"]] == [2, 4]
    assert fan["best_threads"] in (2, 4)
    _positive(fan["steps_per_s"])
    for f in fan["by_threads"]:
        _positive(f["vm_steps_per_s"])

    names = [t["name"] for t in data["targets"]]
    assert names[:2] == ["relay / round trip", "relay+effect / round trip"]
    assert names[2].startswith("fan-in steps/s")
    assert all(isinstance(t["met"], bool) and t["value"] > 0 for t in data["targets"])

    report.print()  # the table renders without error


def test_bench_chains_poll_waiter_and_subset(redis_url: str) -> None:
    """``--waiter poll --only relay``: the other workloads are skipped, not reported as 0."""
    sizes = dataclasses.replace(TINY, only=("relay",), waiter="poll")
    data = run(sizes, redis_url).as_json()
    assert set(data["workloads"]) == {"relay"}
    assert data["sizes"]["waiter"] == "poll"
    _positive(data["workloads"]["relay"]["vm_us_per_step"])
    assert [t["name"] for t in data["targets"]] == ["relay / round trip"]
    assert "round_trip_concurrent_ops_per_s" not in data["floors"]
