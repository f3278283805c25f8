"""How a step fails: the error kinds recorded in chain records, and kernel tracebacks."""

from __future__ import annotations

import traceback

from pyrecks.errors import PyrecksError

#: Failure kinds a retry policy (PYRECKS_RETRIES) applies to: the kernel's own fault or
#: its time limit.  Everything else (missing kernel, bad return string, …) needs a fix first.
RETRYABLE = frozenset({"kernel_error", "timeout", "crashed", "memory"})


class StepFailure(PyrecksError):
    """A step could not complete; ``kind`` goes into the chain record's ``error_kind``."""

    def __init__(self, kind: str, message: str, tb: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.tb = tb


def kernel_traceback(exc: BaseException) -> str:
    """The traceback limited to kernel frames (``<kernel NAME>`` files), kernel line numbers."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<kernel")
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def kernel_error(kernel: str, exc: BaseException) -> StepFailure:
    return StepFailure(
        "kernel_error",
        f"kernel {kernel} raised {type(exc).__name__}: {exc}",
        kernel_traceback(exc),
    )


def internal_failure(exc: Exception) -> StepFailure:
    """A step that failed inside pyrecks itself: say so, with the error, so it gets reported."""
    return StepFailure(
        "crashed",
        f"pyrecks could not run this step ({type(exc).__name__}: {exc}); this is a bug in "
        "pyrecks or input it did not foresee: please report it with this chain's log",
        traceback.format_exc(),
    )
