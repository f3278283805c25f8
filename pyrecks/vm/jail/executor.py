"""``--isolation jail``: every step runs in a cell, one cell per kernel version.

The pool
--------
A cell is bound to one kernel digest by its first step and is reused for that kernel's later
steps, in any chain; two kernels never share a cell, so a kernel that corrupts its own
process (or escapes the purity guards) can damage only itself.  Idle cells wait in an LRU
list; at most ``max_cells`` live at once (idle ones are stopped, oldest first, to make room).
A cell past its deadline is SIGKILLed (through a pidfd, so a recycled pid is never hit);
one that reports ``MemoryError`` or a ``SystemExit`` exits; one that dies any other way — a
crash in C, a seccomp-refused call that killed it — fails its step with ``crashed`` and
the reason, and the next step of that kernel gets a fresh cell.

Trust
-----
Everything a cell sends is validated before the VM acts on it: frames are size-limited and
must be valid msgpack and UTF-8 (:mod:`pyrecks.vm.jail.frames`), each message must have the
expected shape and kinds, printed lines are capped, and the returned text is parsed by the
return-string parser with the language's limits, exactly like any other string.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyrecks.compiler.policy import Policy
from pyrecks.observe import NOOP, Observer
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.isolation import StepRecord
from pyrecks.vm.jail.cell import MAX_LINE
from pyrecks.vm.jail.frames import MAX_CELL_FRAME, BadFrame, ChannelClosed, read_frame, write_frame
from pyrecks.vm.jail.zygote import (
    START_TIMEOUT,
    CellConfig,
    Zygote,
    ZygoteError,
    describe_status,
)
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.output import StepOutput
from pyrecks.vm.sandbox import OutputBuffer

#: How often a waiting step hands printed lines to the output (so they show while it runs).
TICK = 0.1
#: An idle cell unused this long is stopped: it may hold up to its memory limit.
IDLE_TIMEOUT = 300.0

#: Error kinds a cell may report; anything else is a protocol violation.
_CELL_ERROR_KINDS = frozenset({"kernel_error", "memory", "bad_return", "return_string"})

_MAX_TRACEBACK = 64 * 1024


@dataclass
class Cell:
    """One jailed process and the VM's end of its channel (non-blocking: every wait on a
    cell, reading or writing, is bounded by the step's deadline)."""

    pid: int
    sock: socket.socket
    pidfd: int
    #: The code it serves (``LoadedKernel.code_key``): bound by its first step.
    code_key: str = ""
    started: float = field(default_factory=time.monotonic)
    #: When it last answered (idle cells unused for IDLE_TIMEOUT are stopped).
    last_used: float = field(default_factory=time.monotonic)
    #: It said ``ready`` (it is jailed) / it has been sent its kernel's code.
    ready: bool = False
    loaded: bool = False
    #: It answered this step (``ok`` or ``error``): only then may it serve again.
    answered: bool = False
    fd: int = field(init=False)

    def __post_init__(self) -> None:
        # Kept as a number: the socket object forgets its fd once closed, and a thread
        # still waiting on this cell must then fail on a dead fd, not on -1.
        self.fd = self.sock.fileno()
        self.sock.setblocking(False)

    def signal(self, signum: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signum)

    def kill(self) -> None:
        """SIGKILL now and close the channel (idempotent; only by the thread using it)."""
        self.signal(signal.SIGKILL)
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = -1
        with contextlib.suppress(OSError):
            self.sock.close()

    def leftovers(self) -> bool:
        """Whether it wrote anything (or died) since its last answer: it must not serve."""
        return bool(select.select([self.fd], [], [], 0)[0])


class JailExecutor:
    """Run each step in a jailed cell (see the module docstring and docs/isolation.md)."""

    def __init__(
        self,
        policy: Policy,
        *,
        memory_limit_mb: int | None = 512,
        max_cells: int = 64,
        layers: tuple[str, ...] | None = None,
    ) -> None:
        from pyrecks.vm.jail.confine import LAYERS

        if max_cells <= 0:
            raise ValueError("max_cells must be positive")
        self.layers = LAYERS if layers is None else tuple(layers)
        self.memory_limit_mb = memory_limit_mb
        self.max_cells = max_cells
        self._root = tempfile.mkdtemp(prefix="pyrecks-cell-root-")
        os.chmod(self._root, 0o511)  # cells may enter it, only its owner may list it, none write
        self.config = CellConfig(
            allowed_modules=frozenset(policy.allowed_modules),
            forbidden_builtins=frozenset(policy.forbidden_builtins),
            forbidden_attributes=frozenset(policy.forbidden_attributes),
            memory_limit_mb=memory_limit_mb,
            layers=self.layers,
            empty_root=self._root,
        )
        self._lock = threading.Lock()
        self._zygote: Zygote | None = None
        self._idle: OrderedDict[int, Cell] = OrderedDict()  # pid -> cell, oldest first
        self._busy: dict[int, Cell] = {}
        self._closed = False
        #: Every cell pid ever started, in order (for operators and tests).
        self.started_pids: list[int] = []
        #: The most recent steps (kernel, cell pid, start/end time, outcome).
        self.history: deque[StepRecord] = deque(maxlen=10_000)
        self.observer: Observer = NOOP  # metrics (pyrecks/observe): cells started, retired

    # -- pool --------------------------------------------------------------------------------

    @property
    def cell_pids(self) -> list[int]:
        with self._lock:
            return sorted([*self._idle, *self._busy])

    def __str__(self) -> str:
        layers = ", ".join(self.layers) if self.layers else "none (test only)"
        memory = f"{self.memory_limit_mb} MB" if self.memory_limit_mb else "no memory limit"
        return f"jail isolation: cells with {layers}; {memory}, up to {self.max_cells} cells"

    def _zygote_handle(self) -> Zygote:
        with self._lock:
            if self._closed:
                raise StepFailure("crashed", "the VM is stopping")
            zygote = self._zygote
            if zygote is not None and zygote.alive():
                return zygote
            if zygote is not None:
                zygote.close()
            try:
                self._zygote = Zygote(self.config)
            except ZygoteError as exc:
                self._zygote = None
                raise StepFailure("crashed", str(exc)) from None
            return self._zygote

    def start(self) -> None:
        """Start the zygote now (else on the first step), so start-up errors show at once."""
        self._zygote_handle()

    def _checkout(self, code_key: str) -> Cell:
        stale: list[Cell] = []
        found = None
        with self._lock:
            if self._closed:
                raise StepFailure("crashed", "the VM is stopping")
            for pid, cell in reversed(self._idle.items()):
                if cell.code_key == code_key:
                    del self._idle[pid]
                    if cell.leftovers():
                        stale.append(cell)  # a reply nobody asked for: never reuse it
                        continue
                    self._busy[pid] = cell
                    found = cell
                    break
            while self._idle and (
                len(self._idle) + len(self._busy) >= self.max_cells
                or next(iter(self._idle.values())).last_used < time.monotonic() - IDLE_TIMEOUT
            ):
                stale.append(self._idle.popitem(last=False)[1])
        for cell in stale:
            cell.kill()
        self.observer.cells(len(self._idle), retired=len(stale))
        if found is not None:
            found.signal(signal.SIGCONT)
            return found
        cell = self._new_cell()
        cell.code_key = code_key
        return cell

    def _new_cell(self) -> Cell:
        zygote = self._zygote_handle()
        try:
            pid, sock = zygote.fork()
        except ZygoteError as exc:
            raise StepFailure("crashed", f"could not start a cell: {exc}") from None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1  # it already died: reading its channel will say how
        cell = Cell(pid, sock, pidfd)
        with self._lock:
            self._busy[pid] = cell
            self.started_pids.append(pid)
        self.observer.cell_started()
        return cell

    def _checkin(self, cell: Cell, healthy: bool) -> None:
        cell.last_used = time.monotonic()
        if healthy:
            # An idle cell cannot compute: whatever a kernel left running after its answer
            # (a finalizer, a loop in escaped code) waits, stopped, until its next step.
            cell.signal(signal.SIGSTOP)
        with self._lock:
            self._busy.pop(cell.pid, None)
            if healthy and not self._closed:
                self._idle[cell.pid] = cell
                self.observer.cells(len(self._idle))
                return
        cell.kill()
        self.observer.cells(len(self._idle), retired=1)

    # -- KernelExecutor ----------------------------------------------------------------------

    def execute(
        self,
        kernel: LoadedKernel,
        args: list[Any],
        output: OutputBuffer,
        limit: float,
        on_abandon: Callable[[], None],
    ) -> Any:
        """Run one step in a cell of ``kernel``'s version; its returned text or StepFailure."""
        if not kernel.bytecode:
            raise StepFailure("crashed", f"kernel {kernel.name} has no compiled code to run")
        try:
            blob = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise StepFailure(
                "arguments", f"the arguments of {kernel.name} cannot be sent to its cell: {exc}"
            ) from None
        cell = self._checkout(kernel.code_key)
        started = time.monotonic()
        outcome = "crashed"
        try:
            if not cell.ready:
                self._await_ready(cell, kernel)
            value = self._run(cell, kernel, blob, output, limit)
            outcome = "ok"
            return value
        except StepFailure as failure:
            outcome = failure.kind
            raise
        finally:
            # Only a cell that answered this very step and was not killed may serve again
            # (a kernel's own exception leaves it fine; anything else says nothing about it).
            healthy = cell.answered and cell.pidfd >= 0
            self.history.append(
                StepRecord(kernel.name, cell.pid, started, time.monotonic(), outcome)
            )
            self._checkin(cell, healthy)

    def _await_ready(self, cell: Cell, kernel: LoadedKernel) -> None:
        try:
            message = read_frame(
                cell.fd, limit=MAX_CELL_FRAME, deadline=time.monotonic() + START_TIMEOUT
            )
        except (ChannelClosed, OSError):
            raise self._died(cell, kernel) from None
        except (TimeoutError, BadFrame) as exc:
            cell.kill()
            raise StepFailure(
                "crashed", f"a cell for {kernel.name} did not start: {exc!r}"
            ) from None
        if message[0] == "fatal":
            cell.kill()
            raise StepFailure(
                "crashed",
                f"a cell could not be jailed ({_text(message, 1)} layer): {_text(message, 2)}",
            )
        if message != ["ready"]:
            cell.kill()
            raise StepFailure("crashed", f"a cell for {kernel.name} sent {message!r:.200}")
        cell.ready = True

    def _run(
        self,
        cell: Cell,
        kernel: LoadedKernel,
        blob: bytes,
        output: OutputBuffer,
        limit: float,
    ) -> str:
        """The step's returned text; StepFailure for everything else.

        The deadline covers sending the step too: a cell that stops reading cannot make
        the VM's thread wait on a full socket buffer.
        """
        deadline = time.monotonic() + limit
        code = (None, None) if cell.loaded else (kernel.bytecode, kernel.source)
        cell.answered = False
        try:
            write_frame(cell.fd, ["run", kernel.name, *code, blob], deadline=deadline)
        except TimeoutError:
            raise self._timed_out(cell, kernel, limit) from None
        except OSError:
            raise self._died(cell, kernel) from None
        cell.loaded = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out(cell, kernel, limit)
            try:
                if not select.select([cell.fd], [], [], min(left, TICK))[0]:
                    if isinstance(output, StepOutput):
                        self._hand_over(cell, output.tick)
                    continue
                message = read_frame(cell.fd, limit=MAX_CELL_FRAME, deadline=deadline)
            except (ChannelClosed, OSError, ValueError):
                raise self._died(cell, kernel) from None
            except TimeoutError:
                continue  # the loop head reports the timeout
            except BadFrame as exc:
                cell.kill()
                raise StepFailure(
                    "crashed", f"the cell of kernel {kernel.name} sent an invalid message: {exc}"
                ) from None
            kind = message[0]
            if (
                kind == "line"
                and len(message) == 2
                and isinstance(message[1], str)
                and len(message[1]) <= MAX_LINE + 100  # the cell's own cut, and its note
            ):
                self._hand_over(cell, output.write_line, message[1])
            elif kind == "ok" and len(message) == 2 and isinstance(message[1], str):
                cell.answered = True
                return message[1]
            elif (
                kind == "error"
                and len(message) == 5
                and message[1] in _CELL_ERROR_KINDS
                and isinstance(message[2], str)
                and isinstance(message[3], str)
                and isinstance(message[4], bool)
            ):
                cell.answered = True
                retire = message[4] or message[1] == "memory"
                if retire:
                    cell.kill()
                text = message[2]
                if message[1] == "memory" and self.memory_limit_mb is not None:
                    text = f"{text} of {self.memory_limit_mb} MB"
                raise StepFailure(message[1], text[:4096], message[3][:_MAX_TRACEBACK])
            else:
                cell.kill()
                raise StepFailure(
                    "crashed",
                    f"the cell of kernel {kernel.name} sent an unexpected message "
                    f"{str(message)[:200]}",
                )

    @staticmethod
    def _hand_over(cell: Cell, deliver: Callable[..., None], *args: Any) -> None:
        """Give printed lines to the VM's output; if that fails, the step is over.

        The output may write to the chain log (a long step's lines) and learn there that
        the chain's previous commit was refused: the step is abandoned, and its cell, which
        is still running it, must never serve another step.
        """
        try:
            deliver(*args)
        except BaseException:
            cell.kill()
            raise

    @staticmethod
    def _timed_out(cell: Cell, kernel: LoadedKernel, limit: float) -> StepFailure:
        cell.kill()
        return StepFailure(
            "timeout",
            f"kernel {kernel.name} exceeded its time limit of {limit:g}s (its cell was killed)",
        )

    def _died(self, cell: Cell, kernel: LoadedKernel) -> StepFailure:
        cell.kill()
        zygote = self._zygote
        status = zygote.exit_status(cell.pid) if zygote is not None else None
        return StepFailure("crashed", f"kernel {kernel.name} crashed: {describe_status(status)}")

    def close(self) -> None:
        """Stop every cell and the zygote; remove the cells' empty root."""
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle.values()), list(self._busy.values())
            self._idle.clear()
            self._busy.clear()
            zygote, self._zygote = self._zygote, None
        for cell in idle:
            cell.kill()
        for cell in busy:
            # Its thread still waits on the channel: only the signal, so that the thread
            # reads end-of-file and closes the channel itself (never a recycled fd).
            cell.signal(signal.SIGKILL)
        if zygote is not None:
            zygote.close()
        with contextlib.suppress(OSError):
            os.rmdir(self._root)


def require_jail() -> None:
    """Refuse to go on, naming the layer and the way out, where the jail cannot be built."""
    from pyrecks.errors import PyrecksError
    from pyrecks.vm.jail.confine import available_layers

    missing = {layer: why for layer, why in available_layers().items() if why}
    if missing:
        detail = "; ".join(f"{layer}: {why}" for layer, why in missing.items())
        raise PyrecksError(
            f"cannot run kernels in jail isolation on this machine ({detail}). Fix that, or "
            "choose a weaker mode explicitly: --isolation process (worker processes with time "
            "and memory limits, no jail) or --isolation thread (kernels run inside the VM; "
            "only for kernels you trust as much as the VM's own code)"
        )


def _text(message: list[Any], index: int) -> str:
    value = message[index] if len(message) > index else ""
    return value[:500] if isinstance(value, str) else repr(value)[:500]


__all__ = ["JailExecutor", "require_jail"]
