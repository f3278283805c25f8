"""Chain records and log entries as Python objects.

A chain record is a Redis hash (``Keyspace.chain``); its log is a Redis stream
(``Keyspace.log``).  This module only *reads* them and names their fields: every write
happens inside the Lua scripts of :mod:`pyrecks.vm.chainstore`, where it can be fenced.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

from pyrecks.errors import PyrecksError
from pyrecks.vm.chainstore.scripts import TRACE


class ChainStatus(enum.StrEnum):
    """Where a chain is in its life.  ``waiting`` = a fan-out's branches are running."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (ChainStatus.DONE, ChainStatus.FAILED, ChainStatus.CANCELLED)


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _float(raw: bytes | str | None) -> float | None:
    text = _text(raw)
    return float(text) if text else None


@dataclass(frozen=True)
class ChainInfo:
    """A snapshot of one chain record."""

    id: str
    status: ChainStatus
    step: int
    call: str | None
    kernel: str | None
    owner: str | None
    created: float | None
    started: float | None
    updated: float | None
    finished: float | None
    result: str | None
    error: str | None
    error_kind: str | None
    traceback: str | None
    parent: str | None
    attempts: int
    raw: dict[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_hash(cls, chain_id: str, data: dict[bytes, bytes]) -> ChainInfo:
        fields = {_text(k) or "": _text(v) or "" for k, v in data.items()}
        return cls(
            id=chain_id,
            status=ChainStatus(fields.get("status", "queued")),
            step=int(fields.get("step") or 0),
            call=fields.get("call") or None,
            kernel=fields.get("kernel") or None,
            owner=fields.get("owner") or None,
            created=_float(fields.get("created")),
            started=_float(fields.get("started")),
            updated=_float(fields.get("updated")),
            finished=_float(fields.get("finished")),
            result=fields.get("result") if "result" in fields else None,
            error=fields.get("error") or None,
            error_kind=fields.get("error_kind") or None,
            traceback=fields.get("traceback") or None,
            parent=fields.get("parent") or None,
            attempts=int(fields.get("attempts") or 0),
            raw=fields,
        )

    @property
    def trace_id(self) -> str | None:
        """The OpenTelemetry trace of the chain, if a tracing VM ran it (its ``traceparent``
        is kept in the record, see docs/observability.md)."""
        parts = self.raw.get(TRACE, "").split("-")
        return parts[1] if len(parts) == 4 else None

    @property
    def elapsed(self) -> float | None:
        """Seconds from creation to finish (or to now while the chain runs)."""
        if self.created is None:
            return None
        return (self.finished or time.time()) - self.created

    def result_value(self) -> Any:
        """The result as a JSON-friendly value (``result`` holds it as canonical text)."""
        if not self.result:
            return None
        from pyrecks.compiler.instructions import thaw
        from pyrecks.compiler.parser import parse_value

        try:
            value = thaw(parse_value(self.result))
        except PyrecksError:
            return None
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return None  # e.g. a dict with tuple keys: read "result" instead
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "step": self.step,
            "call": self.call,
            "kernel": self.kernel,
            "owner": self.owner,
            "created": self.created,
            "started": self.started,
            "updated": self.updated,
            "finished": self.finished,
            "result": self.result,
            "result_value": self.result_value(),
            "error": self.error,
            "error_kind": self.error_kind,
            "traceback": self.traceback,
            "parent": self.parent,
            "attempts": self.attempts,
            "trace_id": self.trace_id,
        }


@dataclass(frozen=True)
class LogEntry:
    """One entry of a chain's log stream.

    ``kind`` is ``start``, ``step`` (a kernel is about to run / ran), ``out`` (a line the
    kernel printed), ``effect``, ``error``, ``end``, ``fanout`` or ``info``.
    """

    id: str
    kind: str
    step: int
    kernel: str
    text: str
    ts: float
    #: For ``out`` lines: which run of the step printed it (``epoch.try``); a step re-run
    #: after a crash or retried prints again, under a new attempt.
    attempt: str = ""
    #: Whose log the entry is from, when a reader follows a chain with its fan-out
    #: branches (see :mod:`pyrecks.logstream`); empty when read from one log.
    chain: str = ""

    @classmethod
    def from_stream(
        cls, entry_id: bytes | str, data: dict[bytes, bytes], chain: str = ""
    ) -> LogEntry:
        fields = {_text(k) or "": _text(v) or "" for k, v in data.items()}
        return cls(
            id=_text(entry_id) or "",
            kind=fields.get("kind", "info"),
            step=int(fields.get("step") or 0),
            kernel=fields.get("kernel", ""),
            text=fields.get("text", ""),
            ts=float(fields.get("ts") or 0.0),
            attempt=fields.get("attempt", ""),
            chain=chain,
        )

    def format(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.ts))
        where = f"step {self.step}" + (f" {self.kernel}" if self.kernel else "")
        if self.kind == "out":
            return f"{stamp} [{where}] {self.text}"
        return f"{stamp} [{where}] {self.kind}: {self.text}"
