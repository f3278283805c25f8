"""What runs inside a cell: one kernel version, its steps, and nothing else.

A cell is forked by the zygote (:mod:`pyrecks.vm.jail.zygote`), confines itself
(:func:`pyrecks.vm.jail.confine.confine`) and only then touches kernel code.  From that
moment it holds no Redis connection, no credentials, no environment and no file but its
channel, so whatever the kernel does — including escaping the purity guards — it can only
compute and write frames to that channel, which the VM treats as untrusted input.

Conversation (VM -> cell, cell -> VM):

* cell: ``["ready"]`` once confined, or ``["fatal", layer, message]`` and exit;
* VM: ``["run", name, bytecode | None, source | None, args_pickle]`` — the first run carries
  the kernel's stored bytecode (marshalled, guards compiled in) and its source (for the
  lines of tracebacks), and binds the cell to that kernel;
* cell: any number of ``["line", text]`` while the step runs (prints, live), then
  ``["ok", returned_text]`` or ``["error", kind, message, traceback, retire]``.

The VM's pickled arguments are trusted here (the VM built them from plain values); nothing
the cell sends back is pickled.
"""

from __future__ import annotations

import linecache
import marshal
import os
import pickle
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from pyrecks.compiler.compiler import kernel_filename
from pyrecks.vm.failures import kernel_error
from pyrecks.vm.jail.confine import JailUnavailable, confine
from pyrecks.vm.jail.frames import MAX_VM_FRAME, ChannelClosed, read_frame, write_frame
from pyrecks.vm.sandbox import OutputBuffer, Sandbox, set_current_output

#: A printed line longer than this is cut (and says so): the log is for reading.
MAX_LINE = 64 * 1024


def _clean(text: str) -> str:
    """Text that is valid UTF-8: lone surrogates a kernel printed are shown escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _ChannelOutput(OutputBuffer):
    """``print`` in a cell: every line goes to the VM at once, so it shows while the step runs."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def write_line(self, line: str) -> None:
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + f" … [line cut at {MAX_LINE} characters]"
        write_frame(self._fd, ["line", _clean(line)])


class _Cell:
    def __init__(self, fd: int, sandbox: Sandbox) -> None:
        self.fd = fd
        self.sandbox = sandbox
        self.entry: Callable[..., Any] | None = None
        self.name = ""

    def load(self, name: str, bytecode: bytes, source: str) -> Callable[..., Any]:
        code = marshal.loads(bytecode)
        filename = kernel_filename(name)
        if not isinstance(code, types.CodeType) or code.co_filename != filename:
            raise TypeError(f"the stored bytecode of kernel {name!r} is not its module code")
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        namespace = self.sandbox.namespace(name)
        exec(code, namespace)  # module body: imports, defs and constants
        entry = namespace.get(name)
        if not callable(entry):
            raise NameError(f"kernel {name!r} defines no function named {name!r}")
        return entry

    def run(self, message: list[Any]) -> list[Any]:
        """One step: the reply frame.  Whatever the kernel raises becomes an error frame."""
        _, name, bytecode, source, args_blob = message
        try:
            if self.entry is None:
                self.entry = self.load(str(name), bytes(bytecode), str(source))
                self.name = str(name)
            elif name != self.name:  # a VM bug, never a kernel's choice: refuse loudly
                raise RuntimeError(f"this cell runs kernel {self.name!r}, not {name!r}")
            args = pickle.loads(args_blob)
            value = self.entry(*args)
        except MemoryError:
            return ["error", "memory", f"kernel {name} exceeded its memory limit", "", True]
        except Exception as exc:
            failure = kernel_error(str(name), exc)
            return ["error", failure.kind, str(failure), failure.tb, False]
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit …
            failure = kernel_error(str(name), exc)
            text = f"{failure} (a kernel may not stop its process; the step failed)"
            return ["error", failure.kind, text, failure.tb, True]
        if value is None:
            value = ""
        if not isinstance(value, str):
            return [
                "error",
                "bad_return",
                f"kernel {name} returned a {type(value).__name__}; a kernel must return a "
                "string such as 'next(\"x\")' (use pyrecks.kernel.call) or '' to end",
                "",
                False,
            ]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return [
                "error",
                "return_string",
                f"kernel {name} returned a string that is not valid UTF-8 (a lone surrogate "
                f"at position {exc.start}); return text only",
                "",
                False,
            ]
        return ["ok", value]

    def serve(self) -> None:
        set_current_output(_ChannelOutput(self.fd))
        write_frame(self.fd, ["ready"])
        while True:
            try:
                message = read_frame(self.fd, limit=MAX_VM_FRAME, trusted=True)
            except ChannelClosed:
                return
            if message[0] != "run":
                return
            reply = self.run(message)
            write_frame(self.fd, reply)
            if reply[0] == "error" and reply[-1]:
                return  # its heap or state is suspect: the VM starts a fresh cell


def serve(
    fd: int,
    sandbox: Sandbox,
    *,
    memory_limit_bytes: int | None,
    layers: Iterable[str],
    empty_root: str | None,
) -> NoReturn:
    """Body of a freshly forked cell: confine, then run steps until the channel closes."""
    code = 0
    try:
        try:
            confine(
                fd, memory_limit_bytes=memory_limit_bytes, layers=layers, empty_root=empty_root
            )
        except JailUnavailable as exc:
            write_frame(fd, ["fatal", exc.layer, str(exc)])
            code = 3
        except BaseException as exc:
            write_frame(fd, ["fatal", "confine", f"{type(exc).__name__}: {exc}"])
            code = 3
        else:
            # fds 0-2 are closed: nothing may write to them (the unraisable hook included).
            sys.stdin = sys.stdout = sys.stderr = None
            # What the zygote learnt about the host while importing (paths, directory
            # listings cached by the import system) is no business of a kernel's.
            sys.path.clear()
            sys.path_importer_cache.clear()
            sys.argv[:] = []
            _Cell(fd, sandbox).serve()
    except BaseException:
        code = 4
    os._exit(code)
