"""The OS layers of a cell (pyrecks.vm.jail.confine), tested on real processes.

Cells are forked from a stand-in zygote (tests/jail_child.py, a fresh interpreter), confine
themselves and run escape probes (tests/jail_probes.py) against real targets set up here: a
listening TCP port, unix sockets, a root-only file, the test process itself as "the VM" and
another confined cell.  Every probe runs in its own cell

* with no layer at all: it must get through (so each probe is a real attempt);
* with each layer alone: exactly the layers listed in ``BLOCKED_BY`` stop it;
* with all layers: it must fail.

A layer the host cannot apply fails these tests; nothing is skipped for a missing layer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyrecks.errors import PyrecksError
from pyrecks.vm.jail import landlock, seccomp
from pyrecks.vm.jail.confine import LAYERS, JailUnavailable, available_layers
from tests.jail_probes import (
    BLOCKED_BY,
    LANDLOCK_MIN_ABI,
    NAMESPACES_AND_RLIMITS,
    POSITIVE,
    PROBES,
)

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 64 << 20
PROBE_NAMES = [name for name, _ in PROBES]
PROBE_SOURCE = dict(PROBES)
POSITIVE_NAMES = [name for name, _ in POSITIVE]
SINGLE_LAYERS = list(LAYERS)
# Exceptions that mean "the probe is broken", not "the probe was stopped".
BROKEN_PROBE = {"NameError", "ImportError", "ModuleNotFoundError", "AttributeError", "SyntaxError",
                "TypeError", "KeyError", "AssertionError"}


def _zygote(spec: dict[str, Any], *, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.jail_child", json.dumps(spec)],
        cwd=REPO,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The zygote's exec environment holds a secret: the cells must not show it.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYRECKS_TEST_SECRET": "hunter2"},
    )


@dataclass
class HeldCell:
    """A confined cell kept alive (blocked reading its channel) until :meth:`release`."""

    zygote: subprocess.Popen[str]
    pid: int
    channel_fd: int
    first: dict[str, Any]

    @classmethod
    def start(cls, cell: dict[str, Any], env: dict[str, Any] | None = None) -> HeldCell:
        zygote = _zygote({"globals": env or {}, "cells": [{**cell, "mode": "hold"}]},
                         stdin=subprocess.PIPE)
        assert zygote.stdout is not None
        line = zygote.stdout.readline()
        if not line:
            raise AssertionError(f"the zygote died: {zygote.communicate()[1]}")
        ready = json.loads(line)
        return cls(zygote, ready["pid"], ready["channel_fd"], ready["first"])

    def release(self) -> dict[str, Any]:
        """Let the cell exit; returns the zygote's final report on it."""
        out, err = self.zygote.communicate("done\n", timeout=30)
        lines = out.strip().splitlines()
        assert lines, err
        return dict(json.loads(lines[-1]))


@dataclass
class Arena:
    """Targets for the probes and the directories the cells use."""

    root: Path
    empty_root: str
    env: dict[str, Any]
    sibling: HeldCell
    closers: list[Any] = field(default_factory=list)


def _all_layers_cell(empty_root: str) -> dict[str, Any]:
    return {"layers": list(LAYERS), "memory_limit": MEMORY_LIMIT, "empty_root": empty_root}


@pytest.fixture(scope="module")
def arena() -> Iterator[Arena]:
    root = Path(tempfile.mkdtemp(prefix="pyrecks-jail-"))
    root.chmod(0o755)  # searchable by uid 65534, like most of a real filesystem
    empty = root / "empty"
    empty.mkdir(mode=0o111)
    empty.chmod(0o111)
    secret = root / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)

    tcp = socket.create_server(("127.0.0.1", 0))  # stands in for Redis
    unix_path = str(root / "vm.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(64)
    os.chmod(unix_path, 0o777)
    abstract_name = f"\0pyrecks-jail-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(abstract_name)
    abstract.listen(64)

    sibling = HeldCell.start(_all_layers_cell(str(empty)))
    env = {
        "VM_PID": os.getpid(),
        "SIBLING_PID": sibling.pid,
        "REDIS_PORT": tcp.getsockname()[1],
        "UNIX_SOCKET_PATH": unix_path,
        "ABSTRACT_SOCKET_NAME": abstract_name,
        "SECRET_PATH": str(secret),
        "MEMORY_LIMIT_BYTES": MEMORY_LIMIT,
    }
    made = Arena(root, str(empty), env, sibling, [tcp, unix, abstract])
    try:
        yield made
    finally:
        sibling.release()
        for s in made.closers:
            s.close()
        shutil.rmtree(root, ignore_errors=True)


# -- one zygote run for the whole matrix ----------------------------------------------------


@dataclass
class Outcome:
    """How one snippet ended in one cell."""

    name: str
    outcome: str  # "raised", "completed", "vanished" (the cell ended mid-snippet)
    detail: dict[str, Any]

    @property
    def escaped(self) -> bool:
        if self.outcome == "completed":
            return True
        # execve that works replaces the process, which then exits 0 without reporting.
        status = self.detail.get("status", {})
        return self.outcome == "vanished" and status.get("exit_code") == 0

    def __str__(self) -> str:
        return f"{self.name}: {self.outcome} {self.detail}"


@dataclass
class CellReport:
    tag: str
    raw: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.raw["messages"])

    def refused(self) -> dict[str, Any] | None:
        for m in self.messages:
            if m["kind"] in ("unavailable", "confine_error"):
                return m
        return None

    @property
    def confine_ns(self) -> int | None:
        for m in self.messages:
            if m["kind"] == "confined":
                return int(m["ns"])
        return None

    def outcomes(self) -> dict[str, Outcome]:
        refused = self.refused()
        if refused is not None:
            raise AssertionError(f"cell {self.tag}: confine refused: {refused}")
        found: dict[str, Outcome] = {}
        started = None
        for m in self.messages:
            if m["kind"] == "start":
                started = m["name"]
            elif m["kind"] == "result":
                found[m["name"]] = Outcome(m["name"], m["outcome"], m)
                started = None
        if started is not None:
            found[started] = Outcome(started, "vanished", {"status": self.raw["status"]})
        return found

    def outcome(self, name: str) -> Outcome:
        got = self.outcomes()
        assert name in got, f"cell {self.tag} did not report {name}: {self.raw}"
        return got[name]


CONFIGS: dict[str, list[str]] = {"none": [], **{layer: [layer] for layer in LAYERS},
                                 "all": list(LAYERS)}


def _matrix_cells(arena: Arena) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []

    def add(tag: str, layers: list[str], snippets: list[tuple[str, str]], *,
            empty_root: str | None = arena.empty_root) -> None:
        cells.append({"tag": tag, "layers": layers, "memory_limit": MEMORY_LIMIT,
                      "empty_root": empty_root, "snippets": snippets})

    for config, layers in CONFIGS.items():
        for name, source in PROBES:
            add(f"{config}:{name}", layers, [(name, source)])
    for name in NAMESPACES_AND_RLIMITS:
        add(f"ns+rlimits:{name}", ["namespaces", "rlimits"], [(name, PROBE_SOURCE[name])])
    for name, source in POSITIVE:
        add(f"positive:{name}", list(LAYERS), [(name, source)])
    add("positive:sequence", list(LAYERS), POSITIVE)
    # uid 65534 without chroot or Landlock: DAC and the nested-userns limit still hold.
    add("ns-no-root", ["namespaces"],
        [(n, PROBE_SOURCE[n]) for n in ("read_root_secret", "read_vm_environ",
                                        "read_etc_passwd", "unshare_user_ns")],
        empty_root=None)
    add("netns", ["namespaces"], [("netns", NETNS_SNIPPET)])
    add("abort", list(LAYERS), [("abort", "import os\nos.abort()")])
    add("x32", list(LAYERS),
        [("x32", "import ctypes\nctypes.CDLL(None).syscall(ctypes.c_long(0x40000000 | 39))")])
    add("bad:unknown-layer", ["namespaces", "sandbox"], [])
    add("bad:root-not-searchable", ["namespaces"], [], empty_root=str(arena.root / "closed"))
    add("bad:landlock-without-nnp", ["namespaces", "landlock"], [])
    return cells


NETNS_SNIPPET = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack('16sH14s', b'lo', 0, b'')
flags = struct.unpack_from('H', fcntl.ioctl(s.fileno(), 0x8913, req), 16)[0]  # SIOCGIFFLAGS
RESULT = {'interfaces': [n for _, n in socket.if_nameindex()], 'lo_up': bool(flags & 1)}
"""


@pytest.fixture(scope="module")
def matrix(arena: Arena) -> dict[str, CellReport]:
    closed = arena.root / "closed"
    closed.mkdir(mode=0o700, exist_ok=True)
    zygote = _zygote({"globals": arena.env, "cells": _matrix_cells(arena)})
    out, err = zygote.communicate(timeout=120)
    assert zygote.returncode == 0, err
    reports = {}
    for line in out.splitlines():
        raw = json.loads(line)
        reports[raw["tag"]] = CellReport(raw["tag"], raw)
    return reports


# -- the probe table ------------------------------------------------------------------------


def test_probe_table_is_complete() -> None:
    assert len(PROBE_NAMES) == len(set(PROBE_NAMES))
    assert set(BLOCKED_BY) == set(PROBE_NAMES)
    assert set(LANDLOCK_MIN_ABI) <= set(PROBE_NAMES)
    for name, layers in BLOCKED_BY.items():
        assert layers, f"{name}: no layer stops it alone"
        assert layers <= set(LAYERS), name


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_probe_gets_through_without_layers(matrix: dict[str, CellReport], name: str) -> None:
    """Every probe is a real attempt: with no layer (still root) it succeeds."""
    result = matrix[f"none:{name}"].outcome(name)
    assert result.escaped, f"the probe does not work even unconfined: {result}"


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_all_layers_stop_probe(matrix: dict[str, CellReport], name: str) -> None:
    result = matrix[f"all:{name}"].outcome(name)
    assert not result.escaped, f"ESCAPE with all layers: {result}"
    assert result.outcome == "raised", result
    assert result.detail["type"] not in BROKEN_PROBE, f"the probe is broken: {result}"


def _expected_blockers(name: str) -> set[str]:
    expected = set(BLOCKED_BY[name])
    if "landlock" in expected and landlock.abi_version() < LANDLOCK_MIN_ABI.get(name, 1):
        expected.discard("landlock")
    return expected


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_each_layer_alone(matrix: dict[str, CellReport], name: str) -> None:
    """Exactly the layers the table names stop the probe on their own."""
    stopped_by = set()
    for layer in SINGLE_LAYERS:
        result = matrix[f"{layer}:{name}"].outcome(name)
        if not result.escaped:
            assert result.detail.get("type") not in BROKEN_PROBE, f"{layer}: broken probe {result}"
            stopped_by.add(layer)
    assert stopped_by == _expected_blockers(name)


@pytest.mark.parametrize("name", NAMESPACES_AND_RLIMITS)
def test_namespaces_and_rlimits_together(matrix: dict[str, CellReport], name: str) -> None:
    """As uid 65534, RLIMIT_NPROC binds and hard limits cannot be raised again."""
    result = matrix[f"ns+rlimits:{name}"].outcome(name)
    assert result.outcome == "raised", result


def test_uid_alone_keeps_root_files_and_vm_out(matrix: dict[str, CellReport]) -> None:
    """Namespaces without the chroot (and no Landlock): DAC as uid 65534 still holds."""
    report = matrix["ns-no-root"]
    assert report.outcome("read_root_secret").detail.get("errno") == errno.EACCES
    assert report.outcome("read_vm_environ").detail.get("errno") == errno.EACCES
    assert report.outcome("read_etc_passwd").outcome == "completed"  # the path is reachable
    # No nested user namespace even without the chroot: max_user_namespaces is 0 inside.
    assert report.outcome("unshare_user_ns").detail.get("errno") == errno.ENOSPC


def test_network_namespace_has_only_lo_and_it_is_down(matrix: dict[str, CellReport]) -> None:
    result = matrix["netns"].outcome("netns")
    assert result.outcome == "completed", result
    assert result.detail["value"] == {"interfaces": ["lo"], "lo_up": False}


# -- what must keep working -----------------------------------------------------------------


@pytest.mark.parametrize("name", POSITIVE_NAMES)
def test_computation_works_in_a_fresh_cell(matrix: dict[str, CellReport], name: str) -> None:
    result = matrix[f"positive:{name}"].outcome(name)
    assert result.outcome == "completed", result


def test_computation_works_in_a_reused_cell(matrix: dict[str, CellReport]) -> None:
    report = matrix["positive:sequence"]
    for name in POSITIVE_NAMES:
        assert report.outcome(name).outcome == "completed", report.outcome(name)
    prints = [m for m in report.messages if m["kind"] == "print"]
    assert prints == [{"kind": "print", "text": "hello from the cell"}]
    assert report.raw["status"]["exit_code"] == 0


# -- seen from outside ----------------------------------------------------------------------


def _status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_confined_cell_seen_from_outside(arena: Arena) -> None:
    pid = arena.sibling.pid
    status = _status_fields(pid)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert status["Seccomp_filters"] == "1"
    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].strip() == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, caps
    for ns in ("net", "user", "ipc", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert [line.split(":")[0].strip() for line in
            Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]] == ["lo"]
    assert os.listdir(f"/proc/{pid}/fd") == [str(arena.sibling.channel_fd)]
    assert Path(f"/proc/{pid}/environ").read_bytes() == b""
    assert os.readlink(f"/proc/{pid}/root") == arena.empty_root
    assert os.readlink(f"/proc/{pid}/cwd") == arena.empty_root
    limits = {line[:26].strip(): line[26:].split()[:2]
              for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]}
    for name in ("Max core file size", "Max processes", "Max file size", "Max locked memory",
                 "Max msgqueue size"):
        assert limits[name] == ["0", "0"], name
    assert limits["Max open files"] == ["1", "1"]
    soft, hard = limits["Max address space"]
    assert soft == hard != "unlimited"


def test_cell_dies_with_its_zygote(arena: Arena) -> None:
    cell = HeldCell.start(_all_layers_cell(arena.empty_root))
    pidfd = os.pidfd_open(cell.pid)
    try:
        cell.zygote.kill()
        cell.zygote.communicate()
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        assert poller.poll(10_000), "the cell outlived its zygote"
    finally:
        os.close(pidfd)


def test_abort_leaves_no_core(matrix: dict[str, CellReport]) -> None:
    report = matrix["abort"]
    assert report.outcome("abort").outcome == "vanished"
    status = report.raw["status"]
    # SIGABRT cannot be raised (tgkill is denied), so glibc's abort() ends on its fallback
    # instruction (SIGSEGV on x86_64, SIGTRAP/SIGILL elsewhere): a core-dumping signal.
    assert status["signal"] is not None, status
    assert not status["core_dumped"], status


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 exists only on x86_64")
def test_x32_syscall_kills_the_cell(matrix: dict[str, CellReport]) -> None:
    report = matrix["x32"]
    assert report.outcome("x32").outcome == "vanished"
    assert report.raw["status"]["signal"] == signal.SIGSYS


# -- errors ---------------------------------------------------------------------------------


def test_unknown_layer_is_refused(matrix: dict[str, CellReport]) -> None:
    refused = matrix["bad:unknown-layer"].refused()
    assert refused is not None and refused["kind"] == "confine_error"
    assert refused["type"] == "ValueError"
    assert "sandbox" in refused["message"]


def test_unusable_empty_root_is_refused(matrix: dict[str, CellReport]) -> None:
    refused = matrix["bad:root-not-searchable"].refused()
    assert refused is not None and refused["kind"] == "unavailable"
    assert refused["layer"] == "namespaces"
    assert "install -d" in refused["message"]


def test_landlock_without_privileges_names_the_fix(matrix: dict[str, CellReport]) -> None:
    refused = matrix["bad:landlock-without-nnp"].refused()
    assert refused is not None and refused["layer"] == "landlock"
    assert "no_new_privs" in refused["message"]


def test_jail_unavailable_is_a_pyrecks_error() -> None:
    exc = JailUnavailable("landlock", "the kernel has no Landlock")
    assert isinstance(exc, PyrecksError)
    assert exc.layer == "landlock"
    assert "landlock" in str(exc) and "no Landlock" in str(exc)


def test_available_layers_reports_every_layer_usable_here_and_fast() -> None:
    start = time.perf_counter()
    layers = available_layers()
    elapsed = time.perf_counter() - start
    assert layers == {layer: None for layer in LAYERS}
    assert elapsed < 0.05


# -- the seccomp program and timing ---------------------------------------------------------


def test_syscall_numbers_match_libseccomp() -> None:
    path = ctypes.util.find_library("seccomp")
    if path is None:
        pytest.skip("libseccomp is not installed (it only cross-checks the tables)")
    lib = ctypes.CDLL(path)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for arch, numbers in seccomp.SYSCALL_NUMBERS.items():
        assert set(numbers) <= set(seccomp.ALLOWED), arch
        for name, number in numbers.items():
            resolved = lib.seccomp_syscall_resolve_name_arch(seccomp.AUDIT_ARCH[arch], name.encode())
            assert resolved == number, f"{arch} {name}: ours {number}, libseccomp {resolved}"
        missing = set(seccomp.ALLOWED) - set(numbers)
        for name in missing:  # allowed names absent from a table must not exist on that arch
            resolved = lib.seccomp_syscall_resolve_name_arch(seccomp.AUDIT_ARCH[arch], name.encode())
            assert resolved < 0, f"{arch} has {name} ({resolved}) but the table lacks it"


def test_confine_time(matrix: dict[str, CellReport]) -> None:
    """confine() with every layer, measured inside the cells (target: well under 20 ms)."""
    times = [r.confine_ns for tag, r in matrix.items() if tag.startswith("all:")]
    ms = sorted(t / 1e6 for t in times if t is not None)
    assert len(ms) == len(PROBE_NAMES)
    median = statistics.median(ms)
    print(f"\nconfine() with all layers: median {median:.2f} ms, max {ms[-1]:.2f} ms "
          f"over {len(ms)} cells")
    assert median < 20
