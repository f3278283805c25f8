"""Where a kernel's code actually runs: in a jailed cell, a worker process, or the VM's thread.

The VM hands an executor a loaded kernel, its converted arguments, an output buffer and a
time limit; the executor returns what the entry function returned or raises
:class:`~pyrecks.vm.failures.StepFailure` (``kernel_error``, ``timeout``, ``crashed``,
``memory``).  The jail (the default on Linux) lives in :mod:`pyrecks.vm.jail.executor`,
worker processes (``--isolation process``) in :mod:`pyrecks.vm.isolation`, and
:class:`ThreadExecutor` here runs kernels inside the VM process itself: for kernels trusted
as much as the VM's own code.
"""

from __future__ import annotations

import linecache
import marshal
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from pyrecks.compiler.compiler import kernel_filename
from pyrecks.vm.failures import StepFailure, kernel_error
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.sandbox import KernelTimeout, OutputBuffer, Sandbox, set_current_output
from pyrecks.vm.watchdog import Deadline, Watchdog


class KernelExecutor(Protocol):
    def execute(
        self,
        kernel: LoadedKernel,
        args: list[Any],
        output: OutputBuffer,
        limit: float,
        on_abandon: Callable[[], None],
    ) -> Any:
        """Run ``kernel``'s entry function on ``args``; return its value or raise StepFailure.

        ``on_abandon`` is called (from another thread) if the executor had to give up the
        calling thread; the VM then fails the chain and replaces the worker.
        """
        ...

    def close(self) -> None: ...


def load_entry(sandbox: Sandbox, kernel: LoadedKernel) -> Callable[..., Any]:
    """Run a kernel's module body in a fresh sandbox namespace; its entry function.

    Used where kernels run without a jail (threads, worker processes): the code is what
    the VM compiled itself from the source, guards included (see :mod:`pyrecks.vm.loader`).
    """
    code = marshal.loads(kernel.bytecode)
    namespace = sandbox.namespace(kernel.name)
    exec(code, namespace)  # module body: imports, defs and constants (checked)
    entry = namespace.get(kernel.name)
    if not callable(entry):
        raise NameError(f"kernel {kernel.name!r} defines no function named {kernel.name!r}")
    filename = kernel_filename(kernel.name)  # tracebacks show kernel source lines
    lines = kernel.source.splitlines(keepends=True)
    linecache.cache[filename] = (len(kernel.source), None, lines, filename)
    return entry


#: Kernel versions whose module a ThreadExecutor keeps loaded.
ENTRY_CACHE = 256


class ThreadExecutor:
    """Run kernels on the calling worker thread, with a watchdog for time limits.

    No boundary stands between such kernels and the VM (its Redis connection, its memory,
    its host): this is for kernels trusted as much as the VM's own code.
    """

    def __init__(self, sandbox: Sandbox, grace: float = 2.0) -> None:
        self.sandbox = sandbox
        self.watchdog = Watchdog(grace=grace)
        self._entries: OrderedDict[str, Callable[..., Any]] = OrderedDict()

    def execute(
        self,
        kernel: LoadedKernel,
        args: list[Any],
        output: OutputBuffer,
        limit: float,
        on_abandon: Callable[[], None],
    ) -> Any:
        abandoned = threading.Event()

        def give_up() -> None:
            abandoned.set()
            on_abandon()

        set_current_output(output)
        deadline = self.watchdog.arm(limit, give_up)
        timed_out = False
        try:
            try:
                entry = self._entries.get(kernel.digest)
                if entry is None:
                    entry = load_entry(self.sandbox, kernel)
                    self._entries[kernel.digest] = entry
                    while len(self._entries) > ENTRY_CACHE:  # old versions of hot patches
                        self._entries.popitem(last=False)
                return entry(*args)
            finally:
                self._disarm(deadline)
                set_current_output(None)
        except KernelTimeout:
            timed_out = True
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: a kernel's, not ours
            raise kernel_error(kernel.name, exc) from None
        finally:
            self._disarm(deadline)
        if timed_out and not abandoned.is_set():
            raise StepFailure(
                "timeout", f"kernel {kernel.name} exceeded its time limit of {limit:g}s"
            )
        return None

    def _disarm(self, deadline: Deadline) -> None:
        # A KernelTimeout may land while we disarm; disarming is idempotent, so retry.
        while True:
            try:
                self.watchdog.disarm(deadline)
                return
            except KernelTimeout:
                continue

    def close(self) -> None:
        self.watchdog.stop()
