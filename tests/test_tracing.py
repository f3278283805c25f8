"""OpenTelemetry traces: each chain one trace, each step a span, parented across fan-out, join
and VMs (pyrecks/observe/tracing.py; the SDK's in-memory exporter, real VMs and Redis)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis

pytest.importorskip("opentelemetry.sdk", reason="the otel extra: pip install 'pyrecks[otel]'")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pyrecks.api import Pyrecks
from pyrecks.errors import PyrecksError
from pyrecks.observe import tracing
from pyrecks.observe.tracing import Tracing, from_environment, wanted
from pyrecks.vm.chainstore import TRACE, TRACE_JOIN
from pyrecks.vm.machine import VM, VMConfig
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traced_vm(px: Pyrecks, provider: TracerProvider, name: str, **config: Any) -> VM:
    machine = VM(px.r, px.keyspace, VMConfig(echo=False, name=name, lease=1.0, **config))
    return machine.observe(Tracing(provider, vm=name))


def run_traced(px: Pyrecks, provider: TracerProvider, *calls: str) -> list[str]:
    """Start ``calls`` on a traced VM, wait for each, stop the VM (every span ended)."""
    machine = traced_vm(px, provider, "vm-t").start()
    try:
        chains = [px.start(call) for call in calls]
        for chain in chains:
            assert px.wait(chain, timeout=60).status.finished
    finally:
        machine.stop()
    return chains


def by_trace(spans: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        assert span.context is not None
        traces[span.context.trace_id].append(span)
    return traces


def steps_of(spans: list[ReadableSpan], chain: str) -> list[ReadableSpan]:
    found = [
        s
        for s in spans
        if s.name.startswith("step ") and (s.attributes or {}).get("pyrecks.chain.id") == chain
    ]
    return sorted(found, key=lambda s: (s.start_time or 0))


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


HOP = "def hop(n: int):\n    if n == 0:\n        return 'return 0'\n    return 'hop(%d)' % (n - 1)\n"


def test_each_chain_is_one_trace_with_a_span_per_step_under_its_root(
    r: redis.Redis, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = exported
    raw_kernel(r, "hop", HOP)
    px = Pyrecks(r)
    first, second = run_traced(px, provider, "hop(3)", "hop(1)")
    traces = by_trace(exporter.get_finished_spans())
    assert len(traces) == 2
    for chain, steps in ((first, 4), (second, 2)):
        (spans,) = [t for t in traces.values() if steps_of(t, chain)]
        (root,) = [s for s in spans if s.name == "chain hop"]
        assert root.parent is None
        assert (root.attributes or {})["pyrecks.chain.id"] == chain
        step_spans = steps_of(spans, chain)
        assert len(spans) == steps + 1
        assert [(s.attributes or {})["pyrecks.step"] for s in step_spans] == list(
            range(1, steps + 1)
        )
        for s in step_spans:
            attributes = s.attributes or {}
            assert s.name == "step hop"
            assert parent_id(s) == span_id(root)
            assert attributes["pyrecks.kernel"] == "hop"
            assert attributes["pyrecks.step.attempt"] == 1
            assert attributes["pyrecks.step.effects"] == 0
            assert attributes["pyrecks.step.outcome"] == "ok"
            assert attributes["pyrecks.vm"] == "vm-t"
        nexts = [(s.attributes or {})["pyrecks.step.next"] for s in step_spans]
        assert nexts == ["call"] * (steps - 1) + ["end"]
        # The record keeps the root's context for any VM that continues the chain.
        stored = r.hget(px.keyspace.chain(chain), TRACE)
        assert stored == tracing.traceparent(root).encode()
        # ... and `pyrecks status --json` names the trace to look up.
        assert root.context is not None
        assert px.status(chain).trace_id == f"{root.context.trace_id:032x}"
        # ... and so does the plain `pyrecks status`.
        from pyrecks.watching import describe

        assert f"trace    {root.context.trace_id:032x}" in describe(px.status(chain)).splitlines()


def test_fan_out_branches_and_the_join_are_children_of_the_fan_out_step(
    r: redis.Redis, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = exported
    raw_kernel(
        r,
        "split",
        "from pyrecks.kernel import branch, fanout\n"
        "def split(n: int):\n"
        "    return fanout([branch('square', n + i) for i in range(3)], branch('total', 'sum'))\n",
    )
    raw_kernel(r, "square", "def square(x: int):\n    return 'return %d' % (x * x)\n")
    raw_kernel(
        r,
        "total",
        "def total(results: list, label: str):\n    return 'hop(1) SET [(\"sum\", %d)]' % sum(results)\n",
    )
    raw_kernel(r, "hop", HOP)
    px = Pyrecks(r)
    (chain,) = run_traced(px, provider, "split(2)")
    assert px.status(chain).status is ChainStatus.DONE
    traces = by_trace(exporter.get_finished_spans())
    assert len(traces) == 1  # the parent, its three branches and the join: one trace
    (spans,) = traces.values()
    (root,) = [s for s in spans if s.name == "chain split"]
    (fan,) = steps_of(spans, chain)[:1]
    fan_attributes = fan.attributes or {}
    assert fan_attributes["pyrecks.step.next"] == "fanout"
    assert fan_attributes["pyrecks.fanout.branches"] == 3
    assert parent_id(fan) == span_id(root)
    for index in range(3):
        branch = f"{chain}.{index}"
        (step,) = steps_of(spans, branch)
        attributes = step.attributes or {}
        assert parent_id(step) == span_id(fan), "a branch step is a child of the fan-out step"
        assert attributes["pyrecks.chain.parent"] == chain
        assert attributes["pyrecks.chain.branch"] == str(index)
        assert r.hget(px.keyspace.chain(branch), TRACE) == tracing.traceparent(fan).encode()
    join, after, last = steps_of(spans, chain)[1:]
    assert join.name == "step total"
    assert parent_id(join) == span_id(fan), "the join continues the fan-out step"
    assert (join.attributes or {})["pyrecks.step.join"] is True
    assert (join.attributes or {})["pyrecks.step.effects"] == 1
    assert r.hget(px.keyspace.chain(chain), TRACE_JOIN) == tracing.traceparent(fan).encode()
    # After the join, the chain's steps are children of its root again.
    assert [after.name, last.name] == ["step hop", "step hop"]
    assert parent_id(after) == parent_id(last) == span_id(root)


def test_a_chain_continues_its_trace_on_another_vm(
    r: redis.Redis, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = exported
    raw_kernel(r, "first", "def first():\n    return 'second(\"@gate\")'\n")
    raw_kernel(r, "second", "def second(gate: str):\n    return 'return %r' % gate\n")
    px = Pyrecks(r)
    vm_a = traced_vm(px, provider, "vm-a").start()
    try:
        chain = px.start("first")
        failed = px.wait(chain, timeout=60)
    finally:
        vm_a.stop()
    assert failed.error_kind == "missing_key"
    r.set("gate", "open")
    assert px.retry(chain)
    vm_b = traced_vm(px, provider, "vm-b").start()
    try:
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE
    finally:
        vm_b.stop()
    traces = by_trace(exporter.get_finished_spans())
    assert len(traces) == 1
    (spans,) = traces.values()
    (root,) = [s for s in spans if s.name.startswith("chain ")]
    steps = steps_of(spans, chain)
    facts = [
        (
            (s.attributes or {})["pyrecks.vm"],
            (s.attributes or {})["pyrecks.kernel"],
            (s.attributes or {})["pyrecks.step.outcome"],
        )
        for s in steps
    ]
    assert facts == [
        ("vm-a", "first", "ok"),
        ("vm-a", "second", "missing_key"),
        ("vm-b", "second", "ok"),
    ]
    assert all(parent_id(s) == span_id(root) for s in steps)
    failed_step = steps[1]
    assert failed_step.status.status_code is StatusCode.ERROR
    assert (failed_step.attributes or {})["error.type"] == "missing_key"
    assert (steps[2].attributes or {})["pyrecks.chain.epoch"] == "2"


def test_a_vm_that_does_not_trace_stores_no_trace_context(r: redis.Redis) -> None:
    raw_kernel(r, "split", "def split():\n    return '[leaf(), leaf()] -> join()'\n")
    raw_kernel(r, "leaf", "def leaf():\n    return 'return 1'\n")
    raw_kernel(r, "join", "def join(results: list):\n    return 'return %d' % sum(results)\n")
    px = Pyrecks(r)
    chain = px.start("split")
    with px.local_vm(echo=False):
        assert px.wait(chain, timeout=60).status is ChainStatus.DONE
    for key in (chain, f"{chain}.0", f"{chain}.1"):
        assert r.hget(px.keyspace.chain(key), TRACE) is None
    assert px.status(chain).trace_id is None
    assert r.hget(px.keyspace.chain(chain), TRACE_JOIN) is None


# -- configuration -------------------------------------------------------------------------


def test_opentelemetry_environment_turns_tracing_on_and_off() -> None:
    assert not wanted({})
    assert wanted({"OTEL_SERVICE_NAME": "pipeline"})
    assert wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "x"})
    assert not wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert from_environment("vm", explicit=False, environ={}) is None


def test_otel_flag_builds_a_provider_from_the_environment() -> None:
    traces = from_environment(
        "vm-x",
        explicit=True,
        environ={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orders"},
    )
    assert isinstance(traces, Tracing)
    try:
        resource = traces.provider.resource
        assert resource.attributes["service.name"] == "orders"
    finally:
        traces.vm_stopped()
    unnamed = from_environment(
        "vm-x", explicit=True, environ={"OTEL_TRACES_EXPORTER": "console"}
    )
    assert unnamed is not None
    assert unnamed.provider.resource.attributes["service.name"] == "pyrecks"
    unnamed.vm_stopped()


def test_otel_flag_names_the_exporter_package_it_misses() -> None:
    with pytest.raises(PyrecksError, match="nosuch: no such exporter is installed"):
        from_environment("vm", explicit=True, environ={"OTEL_TRACES_EXPORTER": "nosuch"})
    from importlib.metadata import entry_points

    if not list(entry_points(group="opentelemetry_traces_exporter", name="otlp")):
        # OpenTelemetry's default exporter is OTLP: without it, say which package has it.
        with pytest.raises(PyrecksError, match="pip install opentelemetry-exporter-otlp"):
            from_environment("vm", explicit=True, environ={})


def test_without_opentelemetry_otel_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "AVAILABLE", False)
    with pytest.raises(PyrecksError, match=r"pip install 'pyrecks\[otel\]'"):
        from_environment("vm", explicit=True, environ={})
    # Asked for only by the environment (set for some other program): nothing changes.
    assert from_environment("vm", explicit=False, environ={"OTEL_SERVICE_NAME": "x"}) is None
