"""Time limits for kernels running on VM threads.

A Python thread cannot be killed, but CPython can raise an exception *inside* another
thread at its next bytecode boundary (``PyThreadState_SetAsyncExc``).  The watchdog keeps
one deadline per running kernel and, when it passes, raises :class:`KernelTimeout` in that
thread — again every ``repeat`` seconds in case the kernel swallows it — and after
``grace`` seconds gives the thread up: the VM fails the chain, starts a replacement worker
and ignores whatever the abandoned thread does later.  A kernel stuck in one long C call
is only stopped when that call returns; process isolation handles that case.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyrecks.vm.sandbox import KernelTimeout


def _raise_in_thread(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(KernelTimeout)
    )


def _clear_pending(thread_id: int) -> None:
    """Withdraw a KernelTimeout that was raised but not yet delivered."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


@dataclass
class Deadline:
    """One running kernel's time limit."""

    thread_id: int
    expires: float
    on_abandon: Callable[[], None]
    fired: int = 0
    done: bool = False
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Watchdog:
    """One thread per VM that enforces every kernel's deadline."""

    def __init__(self, grace: float = 2.0, repeat: float = 0.1, tick: float = 0.05) -> None:
        self.grace = grace
        self.repeat = repeat
        self.tick = tick
        self._deadlines: dict[int, Deadline] = {}
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="pyrecks-watchdog", daemon=True)
        self._thread.start()

    def arm(self, limit: float, on_abandon: Callable[[], None]) -> Deadline:
        """Start the clock for the kernel about to run on the calling thread."""
        deadline = Deadline(
            thread_id=threading.get_ident(),
            expires=time.monotonic() + limit,
            on_abandon=on_abandon,
        )
        # No notify: waking the watchdog thread would cost a thread switch per step.  It
        # checks every ``tick`` seconds instead, so a limit fires at most one tick late.
        with self._wake:
            self._deadlines[id(deadline)] = deadline
        return deadline

    def disarm(self, deadline: Deadline) -> bool:
        """Stop the clock; return False if the thread was already given up."""
        with deadline.lock:
            deadline.done = True
            abandoned = deadline.abandoned
            if deadline.fired and not abandoned:
                _clear_pending(deadline.thread_id)
        with self._wake:
            self._deadlines.pop(id(deadline), None)
        return not abandoned

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while not self._stopped:
                now = time.monotonic()
                next_wake = now + 3600.0
                for key, d in list(self._deadlines.items()):
                    if now >= d.expires + self.grace and d.fired:
                        with d.lock:
                            if d.done:
                                continue
                            d.abandoned = True
                        del self._deadlines[key]
                        d.on_abandon()
                        continue
                    if now >= d.expires:
                        with d.lock:
                            if not d.done:
                                _raise_in_thread(d.thread_id)
                                d.fired += 1
                        next_wake = min(next_wake, now + self.repeat)
                    else:
                        next_wake = min(next_wake, d.expires)
                wake_in = min(next_wake - time.monotonic(), self.tick)
                self._wake.wait(timeout=max(wake_in, 0.001))
