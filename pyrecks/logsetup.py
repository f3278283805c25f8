"""How pyrecks logs: the standard ``logging`` module, as text or one JSON object per line.

Every message of a VM goes to a logger under ``pyrecks.``: ``pyrecks.vm`` for what the VM
does (starting, draining, takeovers, failures, Redis outages) and ``pyrecks.kernel`` for the
lines kernels print, echoed to the console (``pyrecks vm --quiet`` leaves those out).  A
record about one chain carries the fields :data:`FIELDS` (``extra=``), so a JSON line says
which chain, step and kernel it is about without parsing the message.

``pyrecks vm`` calls :func:`configure` with ``--log-level`` / ``--log-format`` (or
``PYRECKS_LOG_LEVEL`` / ``PYRECKS_LOG_FORMAT``).  A program that embeds a VM
(``Pyrecks.local_vm``) configures ``logging`` its own way; until it does, pyrecks prints
nothing (a library must not write to a program's stderr uninvited).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

from pyrecks.display import json_safe, shown
from pyrecks.errors import PyrecksError

#: Levels by the names the options take.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")
ENV_LEVEL = "PYRECKS_LOG_LEVEL"
ENV_FORMAT = "PYRECKS_LOG_FORMAT"
#: Record attributes (set with ``extra=``) that a JSON line carries when present.
FIELDS = ("chain", "step", "kernel", "vm", "attempt")
#: The top logger; what the VM says goes to ``pyrecks.vm``, what kernels print to
#: ``pyrecks.kernel``.
ROOT = "pyrecks"
VM_LOGGER = "pyrecks.vm"
KERNEL_LOGGER = "pyrecks.kernel"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then ``chain``/``step``/``kernel``/``vm``/``attempt`` where known and
    ``traceback`` for an exception.  The names are stable (docs/observability.md)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                out[name] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json_safe(json.dumps(out, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level message``: what a person watching a VM's terminal reads."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        # Messages carry kernel errors and chain ids from Redis: the VM's terminal must
        # not obey them (pyrecks.display); newlines stay (tracebacks).
        return shown(super().format(record))


def resolve(level: str | None, fmt: str | None, *, quiet: bool = False) -> tuple[int, str]:
    """The level and format from the options, else the environment, else the defaults
    (``info``, or ``warning`` with ``--quiet``; ``text``).  A bad value says what is
    allowed and where it came from."""
    chosen = []
    for value, env, allowed, default in (
        (level, ENV_LEVEL, tuple(LEVELS), "warning" if quiet else "info"),
        (fmt, ENV_FORMAT, FORMATS, "text"),
    ):
        source = "option"
        if value is None and os.environ.get(env):
            value, source = os.environ[env], f"${env}"
        value = (value or default).strip().lower()
        if value not in allowed:
            raise PyrecksError(
                f"invalid log {'level' if env == ENV_LEVEL else 'format'} {value!r} "
                f"(from {source}): use one of {', '.join(allowed)}"
            )
        chosen.append(value)
    return LEVELS[chosen[0]], chosen[1]


def configure(
    level: str | None = None,
    fmt: str | None = None,
    *,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send pyrecks' log records to ``stream`` (stderr) at ``level`` in ``fmt``.

    Called again, it replaces the handler it installed before (tests, a restarted VM).
    """
    number, chosen = resolve(level, fmt, quiet=quiet)
    root = logging.getLogger(ROOT)
    for old in [h for h in root.handlers if getattr(h, "_pyrecks", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler._pyrecks = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(number)
    root.propagate = False  # the command owns the process: one line per record
    return handler


__all__ = [
    "ENV_FORMAT",
    "ENV_LEVEL",
    "FIELDS",
    "FORMATS",
    "KERNEL_LOGGER",
    "LEVELS",
    "VM_LOGGER",
    "JsonFormatter",
    "configure",
    "resolve",
]
