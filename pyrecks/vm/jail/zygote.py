"""The zygote: one clean, single-threaded process per VM from which every cell is forked.

Why a zygote
------------
A cell must start in a few milliseconds and must not inherit anything of the VM: its
threads (forking a threaded process leaves locks held forever), its Redis sockets, its
credentials, its environment.  The zygote is started once per VM as a fresh interpreter
(``python -m pyrecks.vm.jail.zygote``) with an empty environment and only its control
socket.  It imports the modules kernels may use — pre-importing is what lets a cell run
with no filesystem at all, lazy imports such as ``datetime.strptime``'s included — builds
the kernel namespace, and then only forks.  No kernel code ever runs in it.

Protocol on the control socket
------------------------------
* VM -> zygote: one ``config`` frame, then one byte ``F`` per cell wanted, carrying the
  cell's end of a fresh socketpair as ``SCM_RIGHTS``;
* zygote -> VM: ``["ready", pid]``, then ``["forked", pid]`` per request and
  ``["exited", pid, wait_status]`` whenever a cell ends (the zygote is the cells' parent and
  reaps them, so that the VM can say *how* a cell died).

When the VM's end closes (the VM exited or died), the zygote kills its cells and exits;
cells also die with the zygote (``PR_SET_PDEATHSIG``) and when their channel closes.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pyrecks.vm.jail.frames import (
    MAX_VM_FRAME,
    BadFrame,
    ChannelClosed,
    read_frame,
    write_frame,
)

#: How long the zygote may take to start and import what kernels use.
START_TIMEOUT = 60.0

#: Imported by the zygote beyond the allowed modules: what those modules import lazily on
#: first use (a cell cannot read a file to import it later).
LAZY_IMPORTS = (
    "_strptime",
    "encodings.idna",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.utf_16",
    "encodings.utf_32",
    "unicodedata",
    "pyrecks.kernel",
    "pyrecks.vm.convert",
    "pyrecks.compiler.instructions",
)


@dataclass(frozen=True)
class CellConfig:
    """What every cell of one VM is given: the kernel rules and the jail's settings."""

    allowed_modules: frozenset[str]
    forbidden_builtins: frozenset[str] = frozenset()
    forbidden_attributes: frozenset[str] = frozenset()
    memory_limit_mb: int | None = 512
    layers: tuple[str, ...] = ()
    empty_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "allowed_modules": sorted(self.allowed_modules),
            "forbidden_builtins": sorted(self.forbidden_builtins),
            "forbidden_attributes": sorted(self.forbidden_attributes),
            "memory_limit_mb": self.memory_limit_mb,
            "layers": list(self.layers),
            "empty_root": self.empty_root,
        }


# -- the zygote process -------------------------------------------------------------------

#: The cells this zygote forked and has not reaped yet.
_CELLS: set[int] = set()


def _preload(modules: list[str]) -> Any:
    """Import everything a cell may need and build the kernel namespace's module proxies."""
    from pyrecks.vm.sandbox import Sandbox

    for name in [*LAZY_IMPORTS, *modules]:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return Sandbox


def _kill_all(cells: set[int]) -> None:
    for pid in cells:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _zygote(control_fd: int) -> None:
    try:
        _serve(control_fd)
    except (BrokenPipeError, ConnectionResetError):
        _kill_all(_CELLS)  # the VM went away while we told it something


def _serve(control_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the VM decides when we stop; cells inherit it
    config = read_frame(control_fd, limit=MAX_VM_FRAME, trusted=True)[1]
    os.environ.clear()
    sandbox_class = _preload(list(config["allowed_modules"]))
    sandbox = sandbox_class(
        config["allowed_modules"], config["forbidden_builtins"], config["forbidden_attributes"]
    )
    for module in config["allowed_modules"]:
        with contextlib.suppress(ImportError):
            sandbox.proxy(module)
    from pyrecks.vm.jail import cell

    memory = config["memory_limit_mb"]
    memory_bytes = None if memory is None else int(memory) * 1024 * 1024
    layers = tuple(config["layers"])
    empty_root = config["empty_root"]

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    control = socket.socket(fileno=control_fd)
    cells: set[int] = _CELLS
    gc.collect()
    gc.freeze()  # cells share the zygote's heap copy-on-write; keep the collector off it
    write_frame(control_fd, ["ready", os.getpid()])
    while True:
        readable, _, _ = select.select([control_fd, wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                cells.discard(pid)
                write_frame(control_fd, ["exited", pid, status])
        if control_fd not in readable:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 1, 1)
        except OSError:
            data, fds = b"", []
        if not data:  # the VM is gone: so are its cells
            _kill_all(cells)
            return
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            cell.serve(
                fds[0],
                sandbox,
                memory_limit_bytes=memory_bytes,
                layers=layers,
                empty_root=empty_root,
            )
        os.close(fds[0])
        cells.add(pid)
        write_frame(control_fd, ["forked", pid])


# -- the VM's side --------------------------------------------------------------------------


class ZygoteError(Exception):
    """The zygote could not be started or stopped answering."""


class Zygote:
    """The VM's handle on its zygote: fork cells, learn how they ended."""

    #: Exit statuses kept for cells nobody asked about yet (killed cells, mostly).
    KEEP_EXITS = 4096

    def __init__(self, config: CellConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._exits: OrderedDict[int, int] = OrderedDict()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)
        ))))  # fmt: skip
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyrecks.vm.jail.zygote", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env={"PYTHONPATH": package_root},
                cwd=config.empty_root or "/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                # Its own session: Ctrl-C at the terminal drains the VM, it must not kill
                # the zygote and the cells running the steps being drained.
                start_new_session=True,
            )
        finally:
            theirs.close()
        write_frame(ours.fileno(), ["config", config.to_wire()])
        try:
            ready = self._read(time.monotonic() + START_TIMEOUT)
        except (TimeoutError, ChannelClosed, BadFrame) as exc:
            self.close()
            raise ZygoteError(f"the cell zygote did not start: {exc!r}") from None
        if ready[0] != "ready":
            self.close()
            raise ZygoteError(f"the cell zygote sent {ready!r} instead of ready")
        self.pid = int(ready[1])

    def _read(self, deadline: float | None) -> list[Any]:
        return read_frame(self._sock.fileno(), limit=1024, deadline=deadline)

    def _note(self, message: list[Any]) -> bool:
        """Record an ``exited`` notice; False for any other message."""
        if message[0] != "exited":
            return False
        self._exits[int(message[1])] = int(message[2])
        while len(self._exits) > self.KEEP_EXITS:
            self._exits.popitem(last=False)
        return True

    def alive(self) -> bool:
        return self.process.poll() is None

    def fork(self) -> tuple[int, socket.socket]:
        """A new cell: its pid and the VM's end of its channel (the cell is confining itself)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                try:
                    socket.send_fds(self._sock, [b"F"], [theirs.fileno()])
                    deadline = time.monotonic() + START_TIMEOUT
                    while True:
                        message = self._read(deadline)
                        if not self._note(message):
                            break
                except (OSError, TimeoutError, ChannelClosed, BadFrame) as exc:
                    raise ZygoteError(f"the cell zygote stopped answering: {exc!r}") from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if message[0] != "forked":
            ours.close()
            raise ZygoteError(f"the cell zygote sent {message!r} instead of forked")
        return int(message[1]), ours

    def exit_status(self, pid: int, timeout: float = 2.0) -> int | None:
        """How cell ``pid`` ended (a ``waitpid`` status), waiting up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while pid not in self._exits:
                try:
                    self._note(self._read(deadline))
                except (TimeoutError, ChannelClosed, BadFrame, OSError):
                    return None
            return self._exits.pop(pid)

    def close(self) -> None:
        """Stop the zygote; it kills every cell it forked on its way out."""
        with contextlib.suppress(OSError):
            self._sock.close()
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def describe_status(status: int | None) -> str:
    """A ``waitpid`` status in words, for a chain's error."""
    if status is None:
        return "the cell died (how is unknown)"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "?"
        return f"the cell died of signal {number} ({name})"
    return f"the cell exited with code {os.WEXITSTATUS(status)}"


if __name__ == "__main__":
    _zygote(int(sys.argv[1]))
