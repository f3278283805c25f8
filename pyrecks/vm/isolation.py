"""Running kernels in worker processes: hard time and memory limits, and every core.

Why a second executor
---------------------
The default :class:`~pyrecks.vm.executors.ThreadExecutor` runs kernels on the VM's worker
threads.  It is cheap, but a thread cannot be killed: the watchdog's time limit is an
exception raised *between bytecodes*, so a kernel stuck inside one long C call
(``re.match("(a+)+$", "a" * 40 + "b")``, ``sum(range(10**12))``, ``10**10**8``) ignores it and
holds the GIL — stalling every other thread of the VM — until it returns, which may be never.
A thread cannot bound a kernel's memory either (``[0] * 10**10`` takes the whole VM down with
it), and only one thread runs Python at a time, so CPU-bound kernels use one core.

:class:`ProcessExecutor` (``pyrecks vm --isolation process``) runs each step in a long-lived
worker process instead:

* **time** — the VM thread waits on the worker's pipe for at most the kernel's limit; when it
  expires it SIGKILLs the worker, which stops any kernel, C code included, at once.  The step
  fails with ``timeout`` and a fresh worker replaces the dead one;
* **memory** — each worker caps its address space with ``RLIMIT_AS`` (its size when idle plus
  ``memory_limit_mb``).  An allocation past it raises ``MemoryError`` in the kernel: the step
  fails with ``memory`` and the worker is replaced (its heap may be fragmented or a kernel
  global may hold the memory).  If the allocation fails somewhere CPython cannot recover, the
  worker dies and the step fails with ``crashed``;
* **crashes** — a worker that dies (a signal, a CPython bug, an external ``kill``) fails the
  running step with ``crashed``; the VM and its other chains carry on;
* **cores** — each VM worker thread that is running a step holds its own worker process, so
  steps run in parallel on every core.

Workers are started with the ``forkserver`` method, never ``fork``: the VM has threads and
open Redis sockets, which a plain fork would copy in an undefined state.  The fork server is
one clean, single-threaded process started once per VM; it imports pyrecks (and the program's
``__main__``, as every ``spawn``/``forkserver`` child does — keep a script that starts a VM
behind ``if __name__ == "__main__":``) so that each worker is a cheap fork of it (tens of
ms) rather than a fresh interpreter (~0.5 s of imports).  Workers start lazily, when a VM thread
needs one and none is idle (or up front with :meth:`ProcessExecutor.warm`), so the start-up
cost is paid once per worker, not per step; a worker killed for its time limit is replaced
the same way.  Workers ignore SIGINT (so Ctrl-C drains the VM instead of failing the running
steps) and exit when their pipe closes.

Costs
-----
* one pipe round trip per step, plus pickling the arguments and the returned string (see
  docs/isolation.md for measured numbers); a kernel's compiled code is sent to a worker once
  per digest, so a hot patch costs one extra message per worker;
* arguments and results cross a process boundary, so they must be picklable (the VM only
  passes plain values: str, bytes, numbers, lists, dicts …);
* kernel module globals live per worker process: a kernel that (wrongly) keeps state in a
  global sees a different copy on each worker, and a replaced worker starts afresh;
* about 20 to 40 MB of resident memory per worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from pyrecks.compiler.policy import Policy
from pyrecks.vm.executors import load_entry
from pyrecks.vm.failures import StepFailure, kernel_error
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.sandbox import OutputBuffer, Sandbox, set_current_output

#: How long a new worker may take to start and report ready (not counted in the step's limit).
START_TIMEOUT = 60.0
#: Kernels (by digest) a worker keeps compiled; older ones are dropped and re-sent on demand.
WORKER_CACHE = 256

_MB = 1024 * 1024


@dataclass(frozen=True)
class StepRecord:
    """One step run by the executor: which kernel, on which worker, when, and how it ended."""

    kernel: str
    pid: int
    started: float
    ended: float
    outcome: str  # "ok" or a StepFailure kind


# -- the worker process ----------------------------------------------------------------------


def _address_space_bytes() -> int:
    """This process's current virtual size (Linux ``/proc``); 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit_memory(memory_limit_mb: int | None) -> None:
    """Cap the address space at today's size plus ``memory_limit_mb``, where supported."""
    if memory_limit_mb is None:
        return
    try:
        import resource
    except ImportError:  # not on this platform: no limit (documented)
        return
    cap = _address_space_bytes() + memory_limit_mb * _MB
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


class _PipeOutput(OutputBuffer):
    """Kernel output in a worker: each line goes to the VM at once (live echo, and kept
    even if the step is then killed for its time limit)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def write_line(self, line: str) -> None:
        self._conn.send(("line", line))


def _load(
    sandbox: Sandbox,
    cache: OrderedDict[str, Callable[..., Any]],
    kernel: LoadedKernel,
) -> Callable[..., Any]:
    entry = load_entry(sandbox, kernel)
    cache[kernel.digest] = entry
    while len(cache) > WORKER_CACHE:
        cache.popitem(last=False)
    return entry


def _run_one(
    conn: Connection,
    sandbox: Sandbox,
    cache: OrderedDict[str, Callable[..., Any]],
    memory_limit_mb: int | None,
    message: tuple[Any, ...],
) -> None:
    _, name, digest, kernel, args = message
    entry = cache.get(digest)
    if entry is None and kernel is None:
        conn.send(("missing",))  # evicted here: the VM re-sends with the source
        return
    if entry is not None:
        cache.move_to_end(digest)
    output = _PipeOutput(conn)
    set_current_output(output)
    try:
        if entry is None:
            entry = _load(sandbox, cache, kernel)
        value = entry(*args)
    except MemoryError:
        limit = f" of {memory_limit_mb} MB" if memory_limit_mb is not None else ""
        conn.send(("error", "memory", f"kernel {name} exceeded its memory limit{limit}", ""))
        return
    except BaseException as exc:  # the worker must survive whatever a kernel raises
        failure = kernel_error(name, exc)
        conn.send(("error", failure.kind, str(failure), failure.tb))
        return
    finally:
        set_current_output(None)
    try:
        conn.send(("ok", value))
    except Exception:  # the value does not pickle: it cannot be a string either
        conn.send(
            (
                "error",
                "bad_return",
                f"kernel {name} returned a {type(value).__name__}; a kernel must return a "
                "string such as 'next(\"x\")' (use pyrecks.kernel.call) or '' to end",
                "",
            )
        )


def _worker_main(
    conn: Connection,
    sandbox_rules: tuple[frozenset[str], frozenset[str], frozenset[str]],
    memory_limit_mb: int | None,
) -> None:
    """Body of a worker process: run steps sent over ``conn`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains the VM; the VM stops us
    sandbox = Sandbox(*sandbox_rules)
    cache: OrderedDict[str, Callable[..., Any]] = OrderedDict()
    _limit_memory(memory_limit_mb)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the VM is gone
        if message[0] == "stop":
            return
        _run_one(conn, sandbox, cache, memory_limit_mb, message)


# -- the VM side -----------------------------------------------------------------------------


class _Worker:
    """One worker process and the VM's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection, pid: int) -> None:
        self.process = process
        self.conn = conn
        self.pid = pid
        self.digests: set[str] = set()  # kernels sent to this worker
        self._gone = False

    def describe_death(self) -> str:
        if self._gone:
            return "worker process was stopped (the VM is shutting down)"
        self.process.join(5.0)
        code = self.process.exitcode
        if code is None:
            return "worker process stopped answering"
        if code < 0:
            try:
                signame = signal.Signals(-code).name
            except ValueError:
                signame = "?"
            return f"worker process died with signal {-code} ({signame})"
        return f"worker process died with exit code {code}"

    def kill(self) -> None:
        """SIGKILL and reap: no zombie, no open pipe.  Idempotent."""
        if self._gone:
            return
        self._gone = True
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(10.0)
        self.conn.close()
        with contextlib.suppress(ValueError):
            self.process.close()

    def stop(self) -> None:
        """Ask politely (it is idle), then make sure."""
        if self._gone:
            return
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(2.0)
        self.kill()


def _context() -> SpawnContext | ForkServerContext:
    """``forkserver`` where available (POSIX), with pyrecks preloaded; else ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Only takes effect before the server starts (the first worker of this process).
    ctx.set_forkserver_preload(_preload_modules())
    return ctx


def _preload_modules() -> list[str]:
    """What the fork server imports once so that each forked worker starts in a few ms.

    Every forkserver child re-runs the parent's main module as ``__mp_main__``, and CPython
    (3.11, 3.12) never preloads it in the server although ``"__main__"`` is listed (it looks
    for a ``main_path`` key the preparation data does not have).  The re-run is cheap only
    if what the main module imports is already in the server: hence ``pyrecks.api`` and the
    CLI module, which is the main module of ``pyrecks vm``.
    """
    return ["__main__", __name__, "pyrecks.api", "pyrecks.cli.pyrecks_main"]


class ProcessExecutor:
    """Run each step in a worker process, with hard time and memory limits.

    ``memory_limit_mb``: address space a kernel may add to an idle worker (``None``: no
    limit).  ``workers``: at most this many worker processes (steps wait for a free one);
    ``None`` means one per VM thread that is running a step, i.e. at most the VM's
    ``threads``.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        memory_limit_mb: int | None = 512,
        workers: int | None = None,
    ) -> None:
        if memory_limit_mb is not None and memory_limit_mb <= 0:
            raise ValueError("memory_limit_mb must be a positive number of megabytes")
        if workers is not None and workers <= 0:
            raise ValueError("workers must be positive")
        self.memory_limit_mb = memory_limit_mb
        self._rules = (
            frozenset(policy.allowed_modules),
            frozenset(policy.forbidden_builtins),
            frozenset(policy.forbidden_attributes),
        )
        self._ctx = _context()
        self._slots = threading.BoundedSemaphore(workers) if workers else None
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._live: dict[int, _Worker] = {}
        self._closed = False
        #: Every worker pid ever started, in order (bookkeeping for operators and tests).
        self.started_pids: list[int] = []
        #: The most recent steps (kernel, worker pid, start/end time, outcome).
        self.history: deque[StepRecord] = deque(maxlen=10_000)

    # -- pool ----------------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the worker processes alive now (idle or running a step)."""
        with self._lock:
            return sorted(self._live)

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_end, self._rules, self.memory_limit_mb),
            name="pyrecks-kernel-worker",
            daemon=True,
        )
        process.start()
        child_end.close()  # so that the worker's death reads as EOF here
        pid = process.pid or 0
        worker = _Worker(process, parent_end, pid)
        try:
            if not parent_end.poll(START_TIMEOUT):
                raise StepFailure("crashed", "worker process did not start in time")
            kind, _pid = parent_end.recv()
            if kind != "ready":
                raise StepFailure("crashed", f"worker process sent {kind!r} instead of ready")
        except (EOFError, OSError) as exc:
            death = worker.describe_death()
            worker.kill()
            raise StepFailure("crashed", f"could not start a worker process: {death}") from exc
        except StepFailure:
            worker.kill()
            raise
        with self._lock:
            self._live[pid] = worker
            self.started_pids.append(pid)
            if self._closed:
                del self._live[pid]
                worker.stop()
                raise StepFailure("crashed", "the executor is closed")
        return worker

    def warm(self, count: int) -> None:
        """Start workers until ``count`` are idle, so the first steps do not wait for them."""
        with self._lock:
            missing = count - len(self._idle)
        started: list[_Worker] = []
        try:
            for _ in range(max(missing, 0)):
                started.append(self._start_worker())
        finally:
            with self._lock:
                closed = self._closed
                if not closed:
                    self._idle.extend(started)
            if closed:
                for worker in started:
                    worker.stop()

    def _checkout(self) -> _Worker:
        if self._slots is not None:
            self._slots.acquire()
        try:
            with self._lock:
                if self._closed:
                    raise StepFailure("crashed", "the executor is closed")
                if self._idle:
                    return self._idle.pop()
            return self._start_worker()
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        try:
            with self._lock:
                if healthy and not self._closed:
                    self._idle.append(worker)
                    return
                self._live.pop(worker.pid, None)
            if healthy:
                worker.stop()
            else:
                worker.kill()
        finally:
            if self._slots is not None:
                self._slots.release()

    # -- KernelExecutor --------------------------------------------------------------------

    def execute(
        self,
        kernel: LoadedKernel,
        args: list[Any],
        output: OutputBuffer,
        limit: float,
        on_abandon: Callable[[], None],
    ) -> Any:
        """Run one step on a worker; ``on_abandon`` is never needed (this thread never hangs)."""
        worker = self._checkout()
        started = time.monotonic()
        outcome = "ok"
        healthy = False
        try:
            value, failure = self._run(worker, kernel, args, output, limit)
            # A kernel's own exception leaves the worker fine; after a MemoryError its heap
            # is suspect (a global may hold the memory), so it is replaced.
            healthy = failure is None or failure.kind != "memory"
            if failure is not None:
                raise failure
            return value
        except StepFailure as failure:
            outcome = failure.kind
            raise
        finally:
            self.history.append(
                StepRecord(kernel.name, worker.pid, started, time.monotonic(), outcome)
            )
            self._checkin(worker, healthy)

    def _run(
        self,
        worker: _Worker,
        kernel: LoadedKernel,
        args: list[Any],
        output: OutputBuffer,
        limit: float,
    ) -> tuple[Any, StepFailure | None]:
        """The step's value, or the failure the worker reported (the worker survived it).

        Raises StepFailure when the worker had to be killed or died (it is then unusable).
        """
        deadline = time.monotonic() + limit
        code = None if kernel.digest in worker.digests else kernel
        self._send(worker, kernel, ("run", kernel.name, kernel.digest, code, args))
        worker.digests.add(kernel.digest)
        while True:
            left = deadline - time.monotonic()
            try:
                ready = left > 0 and worker.conn.poll(left)
                if not ready:
                    worker.kill()
                    raise StepFailure(
                        "timeout",
                        f"kernel {kernel.name} exceeded its time limit of {limit:g}s "
                        "(worker process killed)",
                    )
                message = worker.conn.recv()
            except (EOFError, OSError):
                raise self._crashed(worker, kernel) from None
            kind = message[0]
            if kind == "line":
                output.write_line(message[1])
            elif kind == "ok":
                return message[1], None
            elif kind == "missing":
                self._send(worker, kernel, ("run", kernel.name, kernel.digest, kernel, args))
            elif kind == "error":
                _, failure_kind, text, tb = message
                return None, StepFailure(failure_kind, text, tb)
            else:
                worker.kill()
                raise StepFailure("crashed", f"worker process sent an unknown reply {kind!r}")

    def _send(self, worker: _Worker, kernel: LoadedKernel, message: tuple[Any, ...]) -> None:
        try:
            worker.conn.send(message)
        except (EOFError, OSError):
            raise self._crashed(worker, kernel) from None
        except Exception as exc:  # pickling the arguments failed; nothing was sent
            raise StepFailure(
                "arguments",
                f"the arguments of {kernel.name} cannot be sent to a worker process: {exc}",
            ) from None

    @staticmethod
    def _crashed(worker: _Worker, kernel: LoadedKernel) -> StepFailure:
        death = worker.describe_death()
        worker.kill()
        return StepFailure("crashed", f"kernel {kernel.name} crashed: {death}")

    def close(self) -> None:
        """Stop every worker (idle ones politely, busy ones with SIGKILL) and reap them."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = [w for w in self._live.values() if w not in idle]
            self._live.clear()
        for worker in idle:
            worker.stop()
        for worker in busy:
            worker.kill()


__all__ = ["ProcessExecutor", "StepRecord"]
