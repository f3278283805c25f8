"""Where a kernel's code actually runs: on the worker thread, or in a worker process.

The VM hands an executor a loaded kernel, its converted arguments, an output buffer and a
time limit; the executor returns what the entry function returned or raises
:class:`~pyrecks.vm.failures.StepFailure` (``kernel_error``, ``timeout``, ``crashed``,
``memory``).  :class:`ThreadExecutor` is the default; the process executor
(``pyrecks vm --isolation process``) lives in :mod:`pyrecks.vm.isolation`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from pyrecks.vm.failures import StepFailure, kernel_error
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.sandbox import KernelTimeout, OutputBuffer, set_current_output
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
        """Run ``kernel.entry(*args)``; return its value or raise StepFailure.

        ``on_abandon`` is called (from another thread) if the executor had to give up the
        calling thread; the VM then fails the chain and replaces the worker.
        """
        ...

    def close(self) -> None: ...


class ThreadExecutor:
    """Run kernels on the calling worker thread, with a watchdog for time limits."""

    def __init__(self, grace: float = 2.0) -> None:
        self.watchdog = Watchdog(grace=grace)

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
                return kernel.entry(*args)
            finally:
                self._disarm(deadline)
                set_current_output(None)
        except KernelTimeout:
            timed_out = True
        except Exception as exc:
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
