"""OpenTelemetry traces: each chain a trace, each step a span (``pip install 'pyrecks[otel]'``).

The shape of a chain's trace::

    chain start                      root span: opened at the chain's first claim, ended
    ├─ step start                    when the chain first leaves that VM (ends, fails,
    ├─ step split   (fan-out)        fans out, is handed back)
    │  ├─ step work   [<id>.0]       a branch's steps are children of the fan-out step
    │  ├─ step work   [<id>.1]
    │  └─ step merge  (join)         so is the join
    └─ step after                    later steps: children of the root again, on any VM

A chain's steps run on different VMs at different times, so the trace context travels with
the chain: its record keeps a W3C ``traceparent`` (field ``trace``: the span its steps are
children of; ``trace_join``: the fan-out step its pending join continues).  The chain store
owns both fields (:mod:`pyrecks.vm.chainstore`): the first claim of a chain stores the
proposal of the VM claiming it (so exactly one root wins, whichever VM claims first), and a
fan-out commit writes the fan-out step's context into the branches' records and into the
parent's ``trace_join``.  Every VM then continues the same trace.

Span attributes (``pyrecks.*``): ``kernel``, ``chain.id``, ``chain.parent`` and
``chain.branch`` (branches), ``step`` (its number), ``step.attempt``, ``chain.epoch``,
``step.effects``, ``step.outcome`` (``ok``, an ``error_kind``, ``interrupted``),
``step.next`` (``call``, ``fanout``, ``end``), ``fanout.branches``, ``vm``; a failed step
has status ERROR and ``error.type`` = its error kind.

Without OpenTelemetry installed this module still imports (:data:`AVAILABLE` is False) and
nothing else changes; :func:`from_environment` says how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyrecks import __version__
from pyrecks.compiler.instructions import Call, FanOut
from pyrecks.errors import PyrecksError
from pyrecks.observe import Observer, RunView

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    AVAILABLE = False

INSTALL = "pip install 'pyrecks[otel]'  (opentelemetry-api and opentelemetry-sdk)"

#: Environment variables that turn tracing on without ``--otel`` (OpenTelemetry's own).
ENABLING_ENV = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def traceparent(span: Any) -> str:
    """The W3C ``traceparent`` of ``span`` ('' for a span that is not real)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@dataclass
class _Chain:
    """What this VM knows of a chain's trace while it runs it."""

    parent: Any  # the Context its steps start in
    join: Any = None  # the Context of its pending join (the fan-out step's span)
    root: Any = None  # the root span, if this VM opened it (ended when the chain leaves)
    named: bool = False
    step: Any = None  # the open step span


class Tracing(Observer):
    """Turns a VM's events into spans (see the module docstring)."""

    def __init__(
        self, tracer_provider: Any = None, *, vm: str = "", owns_provider: bool = False
    ) -> None:
        if not AVAILABLE:
            raise PyrecksError(f"tracing needs OpenTelemetry: {INSTALL}")
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.provider = provider
        self.tracer = self.provider.get_tracer("pyrecks", __version__)
        self.vm = vm
        self._owns_provider = owns_provider
        self._propagator = TraceContextTextMapPropagator()
        self._proposed: dict[str, Any] = {}
        self._chains: dict[str, _Chain] = {}

    def _context(self, parent: str) -> Any:
        if not parent:
            return Context()  # a new trace: never the caller's ambient span
        return self._propagator.extract({"traceparent": parent}, context=Context())

    # -- claims -----------------------------------------------------------------------------

    def propose_trace(self, chain_id: str) -> str:
        root = self.tracer.start_span(
            "chain",
            context=Context(),
            kind=SpanKind.INTERNAL,
            attributes={"pyrecks.chain.id": chain_id, "pyrecks.vm": self.vm},
        )
        proposal = traceparent(root)
        if proposal:
            self._proposed[chain_id] = root
        return proposal

    def claim_refused(self, chain_id: str) -> None:
        self._proposed.pop(chain_id, None)  # never ended: never exported

    def chain_claimed(self, run: RunView, trace: str, trace_join: str) -> None:
        root = self._proposed.pop(run.id, None)
        if root is not None and trace == traceparent(root):
            state = _Chain(trace_api_context(root), root=root)
            if run.parent:
                root.set_attribute("pyrecks.chain.parent", run.parent)
        else:  # the chain had a trace already (root, or a branch's fan-out step)
            state = _Chain(self._context(trace))
        if trace_join:
            state.join = self._context(trace_join)
        self._chains[run.id] = state

    # -- steps ------------------------------------------------------------------------------

    def step_started(self, run: RunView) -> None:
        state = self._chains.get(run.id)
        if state is None:
            return
        kernel = run.call.name
        if state.root is not None and not state.named:
            state.root.update_name(f"chain {kernel}")
            state.root.set_attribute("pyrecks.kernel", kernel)
            state.named = True
        joining = run.clear_join and state.join is not None
        attributes: dict[str, Any] = {
            "pyrecks.kernel": kernel,
            "pyrecks.chain.id": run.id,
            "pyrecks.step": run.step + 1,
            "pyrecks.step.attempt": run.attempts + 1,
            "pyrecks.chain.epoch": run.epoch,
            "pyrecks.vm": self.vm,
        }
        if run.parent:
            attributes["pyrecks.chain.parent"] = run.parent
            attributes["pyrecks.chain.branch"] = run.branch or ""
        if joining:
            attributes["pyrecks.step.join"] = True
        state.step = self.tracer.start_span(
            f"step {kernel}",
            context=state.join if joining else state.parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )

    def step_finished(self, run: RunView, outcome: str, transition: Any = None) -> None:
        state = self._chains.get(run.id)
        span = state.step if state is not None else None
        if state is None or span is None:
            return
        state.step = None
        attributes: dict[str, Any] = {"pyrecks.step.outcome": outcome}
        if transition is not None:
            then = transition.then
            attributes["pyrecks.step.effects"] = len(transition.effects)
            if isinstance(then, Call):
                attributes["pyrecks.step.next"] = "call"
            elif isinstance(then, FanOut):
                attributes["pyrecks.step.next"] = "fanout"
                attributes["pyrecks.fanout.branches"] = len(then.branches)
            else:
                attributes["pyrecks.step.next"] = "end"
        if outcome != "ok":
            attributes["error.type"] = outcome
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.set_attributes(attributes)
        span.end()

    def fanout_trace(self, run: RunView) -> str:
        state = self._chains.get(run.id)
        if state is None or state.step is None:
            return ""
        return traceparent(state.step)

    # -- leaving ----------------------------------------------------------------------------

    def chain_failed(self, run: RunView, kind: str) -> None:
        self.step_finished(run, kind)
        state = self._chains.get(run.id)
        if state is not None and state.root is not None:
            state.root.set_attribute("error.type", kind)
            state.root.set_status(Status(StatusCode.ERROR, kind))

    def chain_left(self, run: RunView) -> None:
        self.step_finished(run, "interrupted")
        state = self._chains.pop(run.id, None)
        if state is not None and state.root is not None:
            state.root.end()

    def vm_stopped(self) -> None:
        flush = getattr(self.provider, "shutdown" if self._owns_provider else "force_flush", None)
        if flush is not None:
            flush()


def trace_api_context(span: Any) -> Any:
    """A context whose current span is ``span`` (the parent of the steps under it)."""
    return trace.set_span_in_context(span, Context())


# -- configuration (pyrecks vm --otel, or OpenTelemetry's environment variables) ---------------


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether OpenTelemetry's own environment asks for traces (without ``--otel``)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name) for name in ENABLING_ENV)


def from_environment(
    vm: str, *, explicit: bool, environ: Mapping[str, str] | None = None
) -> Tracing | None:
    """The tracing of ``pyrecks vm``: ``explicit`` is ``--otel``; else OTel's environment.

    Follows OpenTelemetry's conventions: a tracer provider someone else installed (for
    example ``opentelemetry-instrument pyrecks vm``) is used as it is; otherwise one is
    made with the resource from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
    (service ``pyrecks`` when neither names one) and a batch processor for each exporter
    named in ``OTEL_TRACES_EXPORTER`` (default ``otlp``), found by its entry point as the
    SDK's own configurator does.  ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``
    turn tracing off.  Raises PyrecksError (with the fix) when ``--otel`` cannot be honoured.
    """
    env = os.environ if environ is None else environ
    if not explicit and not wanted(env):
        return None
    if not AVAILABLE:
        if explicit:
            raise PyrecksError(f"--otel needs OpenTelemetry, which is not installed: {INSTALL}")
        return None  # OTEL_* set for something else in this environment: change nothing
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        if explicit:
            raise PyrecksError("--otel, but OTEL_SDK_DISABLED=true turns OpenTelemetry off")
        return None
    current = trace.get_tracer_provider()
    if hasattr(current, "add_span_processor"):  # an SDK provider installed by someone else
        return Tracing(current, vm=vm)
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise PyrecksError(
            f"--otel needs the OpenTelemetry SDK (opentelemetry-sdk): {INSTALL}"
        ) from None
    names = [
        n.strip().lower()
        for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    if not names:
        raise PyrecksError("--otel, but OTEL_TRACES_EXPORTER=none names no exporter")
    provider = TracerProvider(resource=Resource.create(_resource_attributes(env, SERVICE_NAME)))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return Tracing(provider, vm=vm, owns_provider=True)


def _resource_attributes(env: Mapping[str, str], service_name: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,…``), then ``OTEL_SERVICE_NAME``, else service
    ``pyrecks``: what the SDK reads from ``os.environ``, read from ``env``."""
    from urllib.parse import unquote

    attributes: dict[str, str] = {}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if env.get("OTEL_SERVICE_NAME"):
        attributes[service_name] = env["OTEL_SERVICE_NAME"]
    attributes.setdefault(service_name, "pyrecks")
    return attributes


def _exporter(name: str) -> Any:
    """The span exporter registered under ``name`` (entry point group of the SDK)."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        hint = {
            "otlp": "pip install opentelemetry-exporter-otlp",
            "otlp_proto_http": "pip install opentelemetry-exporter-otlp-proto-http",
            "otlp_proto_grpc": "pip install opentelemetry-exporter-otlp-proto-grpc",
            "zipkin": "pip install opentelemetry-exporter-zipkin",
        }.get(name, f"install the package that provides the {name!r} span exporter")
        raise PyrecksError(
            f"OTEL_TRACES_EXPORTER={name}: no such exporter is installed ({hint}); "
            "OTEL_TRACES_EXPORTER=console prints spans instead"
        )
    return found[0].load()()


__all__ = ["AVAILABLE", "INSTALL", "Tracing", "from_environment", "traceparent", "wanted"]
