"""A stand-in zygote for the jail layer tests, run as a fresh interpreter.

``python -m tests.jail_child SPEC_JSON`` pre-imports what cells may use (plus what the probes
use: ctypes, socket, resource…), then forks one cell per entry of ``spec["cells"]``, one after
the other.  Each cell confines itself with :func:`confine` and the entry's layers, runs its
snippets with ``exec`` and reports every step as a JSON line over its channel (a socketpair).
For each cell this process prints one JSON line on stdout: the cell's messages, its wait
status and timings.  A cell in ``"hold"`` mode instead reports ``{"event": "ready", ...}``
once confined and stays alive until a line arrives on stdin, so the test can inspect it from
the outside.

The pytest process is not used as the zygote: it may have threads and open fds, and a cell
must be a fork of a clean, single-threaded process, as in production.

Cells that do not use the namespaces layer get a private mount namespace from this harness
(not from confine), so that a probe that succeeds in mounting cannot touch the host.
"""

from __future__ import annotations

import _strptime  # noqa: F401  (pre-imports, as the real zygote does)
import base64  # noqa: F401
import bisect  # noqa: F401
import collections  # noqa: F401
import copy  # noqa: F401
import ctypes
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import enum  # noqa: F401
import errno  # noqa: F401
import fcntl  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import operator  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import resource
import select  # noqa: F401
import signal  # noqa: F401
import socket
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import sys
import textwrap  # noqa: F401
import time
import traceback  # noqa: F401
import typing  # noqa: F401
import unicodedata  # noqa: F401
from typing import Any

import msgpack  # noqa: F401

import pyrecks.kernel  # noqa: F401
from pyrecks.vm.jail.confine import JailUnavailable, confine

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _private_mounts() -> None:
    if _libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if _libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None) != 0:
        raise OSError(ctypes.get_errno(), "mount(/, MS_REC|MS_PRIVATE)")


def _cell(chan: int, cell: dict[str, Any], env: dict[str, Any]) -> None:
    layers = cell["layers"]
    if "namespaces" not in layers:
        _private_mounts()
    start = time.perf_counter_ns()
    try:
        confine(
            chan,
            memory_limit_bytes=cell.get("memory_limit"),
            layers=layers,
            empty_root=cell.get("empty_root"),
        )
    except JailUnavailable as exc:
        _send(chan, {"kind": "unavailable", "layer": exc.layer, "message": str(exc)})
        os._exit(3)
    except BaseException as exc:
        _send(chan, {"kind": "confine_error", "type": type(exc).__name__, "message": str(exc)})
        os._exit(4)
    _send(chan, {"kind": "confined", "ns": time.perf_counter_ns() - start})
    if cell.get("mode") == "hold":
        os.read(chan, 1)  # until the harness closes its end
        os._exit(0)
    for name, source in cell["snippets"]:
        namespace = dict(env)
        namespace["CHANNEL_FD"] = chan
        _send(chan, {"kind": "start", "name": name})
        try:
            exec(compile(source, f"<{name}>", "exec"), namespace)
        except BaseException as exc:
            _send(
                chan,
                {
                    "kind": "result",
                    "name": name,
                    "outcome": "raised",
                    "type": type(exc).__name__,
                    "errno": getattr(exc, "errno", None),
                    "message": str(exc)[:300],
                },
            )
        else:
            result = namespace.get("RESULT")
            _send(chan, {"kind": "result", "name": name, "outcome": "completed", "value": result})
    os._exit(0)


def _read_messages(fd: int) -> list[dict[str, Any]]:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    messages = []
    for line in data.splitlines():
        try:
            messages.append(json.loads(line))
        except ValueError:
            messages.append({"kind": "garbage", "text": line.decode(errors="replace")})
    return messages


def _read_message(fd: int) -> dict[str, Any]:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return json.loads(line) if line else {"kind": "eof"}


def _status(status: int) -> dict[str, Any]:
    return {
        "raw": status,
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "core_dumped": os.WCOREDUMP(status),
    }


def _run(cell: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    parent_end, cell_end = (s.detach() for s in socket.socketpair())
    sys.stdout.flush()
    forked = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        try:
            _cell(cell_end, cell, env)
        finally:
            os._exit(70)
    os.close(cell_end)
    report: dict[str, Any] = {"tag": cell.get("tag"), "pid": pid, "channel_fd": cell_end}
    if cell.get("mode") == "hold":
        first = _read_message(parent_end)
        report["first"] = first
        print(json.dumps({"event": "ready", **report}), flush=True)
        sys.stdin.readline()
        os.close(parent_end)
        _, status = os.waitpid(pid, 0)
        report["status"] = _status(status)
        return report
    report["messages"] = _read_messages(parent_end)
    report["wall_ns"] = time.perf_counter_ns() - forked
    os.close(parent_end)
    _, status = os.waitpid(pid, 0)
    report["status"] = _status(status)
    return report


def main() -> None:
    spec = json.loads(sys.argv[1])
    # Known starting limits, whatever the environment: no cores from this harness (soft 0)
    # but unlimited hard limits, so that what a layer changes is what the probes see.
    inf = resource.RLIM_INFINITY
    for which, soft in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, inf)):
        resource.setrlimit(which, (soft, inf))
    env = spec.get("globals", {})
    for cell in spec["cells"]:
        print(json.dumps(_run(cell, env)), flush=True)


if __name__ == "__main__":
    main()
