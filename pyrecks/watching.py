"""What ``pyrecks run``, ``status`` and ``logs`` show while a chain is watched.

One place for the words: how a log entry prints (a fan-out branch's entry labelled with
its id), what a log entry is as JSON (``logs --json``: stable field names), how a chain
record reads with the step running now, and what to say when no VM is alive to run a
chain, or when Ctrl-C stopped ``run --local``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import click

from pyrecks.api import Pyrecks, RunningStep
from pyrecks.connection import describe as describe_redis
from pyrecks.display import json_safe, one_line, shown
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry

#: What ``run --wait`` shows (``--follow`` shows every entry).
WAIT_KINDS = ("out", "error", "retry", "dropped")
#: ``logs --json``: the fields of every line, in this order (docs/observability.md).
ENTRY_FIELDS = ("chain", "id", "kind", "step", "kernel", "text", "ts", "attempt")


def entry_record(entry: LogEntry, chain_id: str) -> dict[str, Any]:
    """One log entry's fields (:data:`ENTRY_FIELDS`, in order) for ``logs --json`` and the
    web view's log API and live events: one shape for both, so a script reads either.
    ``chain`` is the chain whose log holds the entry (a branch's own id for its entries)."""
    values = {
        "chain": entry.chain or chain_id,
        "id": entry.id,
        "kind": entry.kind,
        "step": entry.step,
        "kernel": entry.kernel,
        "text": entry.text,
        "ts": entry.ts,
        "attempt": entry.attempt,
    }
    return {name: values[name] for name in ENTRY_FIELDS}


def entry_json(entry: LogEntry, chain_id: str) -> str:
    """One log entry as one line of JSON."""
    return json_safe(json.dumps(entry_record(entry, chain_id), ensure_ascii=False))


class EntryPrinter:
    """Prints the entries of a chain's log and its branches' logs for a person.

    Entries of a fan-out branch are labelled with the branch id (``<id>.1``) so that the
    lines of parallel branches can be told apart.
    """

    def __init__(self, chain_id: str, *, everything: bool) -> None:
        self.chain_id = chain_id
        #: --follow and ``logs`` show every entry; --wait what kernels print, retries,
        #: errors and dropped lines.
        self.everything = everything

    def label(self, entry: LogEntry) -> str:
        return f"{entry.chain} " if entry.chain and entry.chain != self.chain_id else ""

    def __call__(self, entry: LogEntry) -> None:
        if not self.everything and entry.kind not in WAIT_KINDS:
            return
        entry = safe_entry(entry)
        who = self.label(entry)
        if entry.kind == "out":
            click.echo(f"  [{who}{entry.kernel}] {entry.text}")
        elif entry.kind == "dropped":
            click.echo(click.style(f"{who}{entry.text}", fg="yellow"), err=not self.everything)
        elif entry.kind == "error":
            click.echo(
                click.style(
                    f"{who}step {entry.step}: {entry.kernel} failed: {entry.text}", fg="red"
                ),
                err=True,
            )
        elif entry.kind == "step":
            click.echo(
                click.style(f"{who}step {entry.step}: {entry.kernel} {entry.text}", dim=True)
            )
        else:
            click.echo(click.style(f"{who}step {entry.step}: {entry.kind}: {entry.text}", dim=True))


def safe_entry(entry: LogEntry) -> LogEntry:
    """The entry with what a terminal would obey escaped (pyrecks.display): its text, its
    kernel's name and its chain's id come from Redis."""
    return dataclasses.replace(
        entry,
        text=shown(entry.text),
        kernel=one_line(entry.kernel) if entry.kernel else entry.kernel,
        chain=one_line(entry.chain) if entry.chain else entry.chain,
    )


def format_entry(entry: LogEntry, chain_id: str) -> str:
    """``pyrecks logs``: one entry per line, with the time; branches labelled."""
    entry = safe_entry(entry)
    if entry.kind == "dropped":
        who = f"[{entry.chain}] " if entry.chain and entry.chain != chain_id else ""
        return f"{who}{entry.text}"
    line = entry.format()
    if entry.chain and entry.chain != chain_id:
        return f"{line[:8]} {entry.chain}{line[8:]}"
    return line


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def describe_running(running: RunningStep) -> str:
    """``step 3 func2, since 12:00:01 (4.2s) on vm-a``."""
    kernel = f" {running.kernel}" if running.kernel else ""
    if not running.since:
        return f"step {running.step}{kernel} on {running.vm}"
    age = max(time.time() - running.since, 0.0)
    at_least = "at least " if running.source == "checkpoint" else ""
    return (
        f"step {running.step}{kernel}, {at_least}since {_clock(running.since)} "
        f"({age:.1f}s) on {running.vm}"
    )


def describe(info: ChainInfo, running: RunningStep | None = None) -> str:
    """A chain record for a person (``pyrecks status``)."""
    lines = [
        f"chain    {info.id}",
        f"status   {info.status.value}",
    ]
    if running is not None:
        lines.append(f"running  {describe_running(running)}")
    lines.append(f"step     {info.step}" + ("  (last checkpoint)" if running else ""))
    if info.status is ChainStatus.WAITING and info.raw.get("branches"):
        pending = info.raw.get("pending") or "?"
        lines.append(f"branches {pending} of {info.raw['branches']} still running")
    if info.call:
        lines.append(f"next     {info.call}")
    if info.kernel:
        lines.append(f"kernel   {info.kernel}")
    if info.owner:
        lines.append(f"owner    {info.owner}")
    if info.elapsed is not None:
        lines.append(f"elapsed  {info.elapsed:.3f}s")
    if info.parent:
        lines.append(f"parent   {info.parent}")
    if info.trace_id:  # recorded when the VM traces (--otel): find the chain in your tracer
        lines.append(f"trace    {info.trace_id}")
    if info.status is ChainStatus.DONE and info.result:
        lines.append(f"result   {info.result}")
    if info.error:
        lines.append(f"error    [{info.error_kind}] {info.error}")
    if info.traceback:
        lines.append(info.traceback.rstrip())
    return shown("\n".join(lines))  # every field came from Redis


def status_json(info: ChainInfo, running: RunningStep | None) -> dict[str, Any]:
    """``pyrecks status --json``: the record, and ``running`` (null unless it runs)."""
    return {**info.to_json(), "running": running.to_json() if running else None}


def start_hint() -> str:
    """How to get a VM running (what every 'no VM' message ends with)."""
    return (
        "start one with 'pyrecks vm' (in another terminal), "
        "or run the chain here with 'pyrecks run … --local'"
    )


def no_vm_warning(px: Pyrecks, redis_url: str | None) -> str | None:
    """A warning if no VM's heartbeat lives on this Redis (the chain would wait forever)."""
    if px.live_vms():
        return None
    return (
        f"no VM is running on {describe_redis(redis_url)}: the chain stays queued until one "
        f"starts; {start_hint()}"
    )


def interrupted_message(px: Pyrecks, chain_id: str) -> str:
    """What Ctrl-C during ``run --local`` left behind, and what to do about it."""
    try:
        info = px.status(chain_id)
    except Exception:  # Redis gone too: say what we know
        return f"interrupted: chain {chain_id} may still be queued; see 'pyrecks status {chain_id}'"
    state = info.status.value
    if info.status.finished:
        return f"interrupted: chain {chain_id} had already ended ({state})"
    return (
        f"interrupted: chain {chain_id} is {state} at step {info.step}; it will be resumed "
        f"by the next VM (pyrecks vm) — or cancel it with 'pyrecks cancel {chain_id}'"
    )


__all__ = [
    "ENTRY_FIELDS",
    "WAIT_KINDS",
    "EntryPrinter",
    "describe",
    "describe_running",
    "entry_json",
    "entry_record",
    "format_entry",
    "interrupted_message",
    "no_vm_warning",
    "start_hint",
    "status_json",
]
