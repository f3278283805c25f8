"""What ``pyrecks vm --metrics-port N --metrics-host H --otel`` subscribes to its VM."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pyrecks.errors import PyrecksError
from pyrecks.observe import Observer


def for_vm(
    name: str,
    isolation: str,
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    otel: bool = False,
    say: Callable[[str], None] = print,
    environ: Mapping[str, str] | None = None,
) -> list[Observer]:
    """The observers of VM ``name``: metrics served on ``metrics_host:metrics_port`` (if a
    port is given; 0 picks a free one), traces with ``otel`` or OpenTelemetry's environment.

    Raises PyrecksError, saying what to do, when what was asked for cannot be had; traces
    that only the environment asked for are skipped with a note instead.
    """
    from pyrecks.observe import tracing

    observers: list[Observer] = []
    try:
        traces = tracing.from_environment(name, explicit=otel, environ=environ)
    except PyrecksError as exc:
        if otel:
            raise
        say(f"note: no traces ({exc})")
        traces = None
    if metrics_port is not None:
        from pyrecks.observe.metrics import Metrics

        metrics = Metrics(name, isolation, process=True)
        try:
            port = metrics.serve(metrics_host, metrics_port)
        except OSError as exc:
            raise PyrecksError(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: "
                f"{exc.strerror or exc}; choose another --metrics-port (0 picks a free one) "
                "or --metrics-host"
            ) from None
        shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
        say(f"metrics: http://{shown}:{port}/metrics")
        observers.append(metrics)
    if traces is not None:
        say("traces: OpenTelemetry, one trace per chain (docs/observability.md)")
        observers.append(traces)
    return observers


__all__ = ["for_vm"]
