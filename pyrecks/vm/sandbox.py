"""The namespace kernels run in: guarded builtins, guarded imports, the guards, ``print``.

Anyone with Redis access can ``SET func0 "<source>"``, so the VM cannot trust that a kernel
was linted.  Every kernel's code is rewritten before it is compiled
(:mod:`pyrecks.compiler.rewriter`) so that it calls the run-time guards of
:mod:`pyrecks.vm.guards`, and it is executed in a namespace built here from the rule book
(:mod:`pyrecks.compiler.rulebook`):

* builtins are the rule book's allow-list — no ``open``, ``eval``, ``exec``, ``compile``,
  ``globals``, ``vars``, ``input``, …; ``type``, ``getattr``, ``hasattr``, ``setattr`` and
  ``delattr`` are the guards' versions;
* ``import`` goes through a guard with the policy's allow-list, and hands out read-only
  *proxies* of allowed modules that hold only the rule book's names for the module
  (``json.codecs``, ``functools.update_wrapper``, ``random._os`` do not exist in a kernel);
* proxies hand out guarded stand-ins where a library function would read attributes by
  name, change the class passed to it or cache a kernel's object process-wide
  (:data:`~pyrecks.vm.guards.LIBRARY_OVERRIDES`: ``re``'s functions, ``dataclasses.dataclass``,
  ``functools.total_ordering``/``cached_property``, ``typing.final``/``overload``);
* the guard functions the rewritten code calls are in the namespace under reserved names;
* ``print`` writes to the running step's output buffer, which the VM appends to the chain
  log (and echoes to its console);
* ``time.sleep`` sleeps in short slices so the VM's timeout can interrupt it.

Everything is built from module-level data at import time, so a jail's zygote can import this
module once and fork cells that build namespaces without any VM state.

What a thread sandbox cannot do (see docs/vm.md): stop a kernel stuck inside one long C
call (a huge regex, ``10**10**8``), bound its memory, or protect against a CPython bug.
The jail is the security boundary; these guards keep kernels pure.
"""

from __future__ import annotations

import builtins
import importlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pyrecks.compiler import rulebook
from pyrecks.compiler.rewriter import compile_guarded as compile_guarded
from pyrecks.vm import guards
from pyrecks.vm.guards import KernelTimeout as KernelTimeout
from pyrecks.vm.guards import ModuleProxy as ModuleProxy
from pyrecks.vm.guards import SandboxViolation as SandboxViolation

#: Builtins a kernel may use (the rule book's list).  Everything else is absent.
SAFE_BUILTINS: frozenset[str] = rulebook.ALLOWED_BUILTINS

GUARD_PREFIX = rulebook.GUARD_PREFIX

_SLEEP_SLICE = 0.05


def _interruptible_sleep(seconds: float) -> None:
    """``time.sleep`` in slices, so an asynchronous KernelTimeout lands within ~50 ms."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, _SLEEP_SLICE))


# Replacements for module attributes that would otherwise block the timeout or leak out.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "time": {"sleep": _interruptible_sleep},
    "operator": {
        "attrgetter": guards.guarded_attrgetter,
        "methodcaller": guards.guarded_methodcaller,
        "call": guards.guarded_operator_call,
    },
    **guards.LIBRARY_OVERRIDES,
}


class OutputBuffer:
    """Lines a kernel printed during one step."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.lines: list[str] = []
        self._echo = echo

    def write_line(self, line: str) -> None:
        self.lines.append(line)
        if self._echo is not None:
            self._echo(line)


_current = threading.local()


def current_output() -> OutputBuffer | None:
    return getattr(_current, "output", None)


def set_current_output(buffer: OutputBuffer | None) -> None:
    _current.output = buffer


_str_copy = str.__str__


def _sandbox_print(*args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
    """``print`` for kernels: goes to the chain log; ``file=``/``flush=`` are ignored.

    What reaches the buffer is exact ``str``: the VM reads the lines after the step, outside
    its time limit, so no kernel object (a ``str`` subclass with its own ``splitlines``, a
    ``sep`` with its own ``join``) may travel with them.
    """
    for name, value in (("sep", sep), ("end", end)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be None or a string, not {type(value).__name__}")
    joiner = " " if sep is None else _str_copy(sep)
    text = joiner.join([_str_copy(str(a)) for a in args])
    text += "\n" if end is None else _str_copy(end)
    buffer = current_output()
    for line in text.splitlines():
        if buffer is None:
            builtins.print(line)
        else:
            buffer.write_line(line)


class Sandbox:
    """Builds kernel namespaces for one policy (allowed modules, forbidden names).

    ``Sandbox(allowed_modules, forbidden_builtins, forbidden_attributes)`` or
    :meth:`from_policy`.  Module proxies are built once per sandbox and shared by the kernels
    it loads (they are read-only).
    """

    def __init__(
        self,
        allowed_modules: Iterable[str],
        forbidden_builtins: Iterable[str] = (),
        forbidden_attributes: Iterable[str] = (),
    ) -> None:
        self.allowed_modules = frozenset(allowed_modules)
        self.forbidden_attributes = frozenset(forbidden_attributes)
        forbidden = frozenset(forbidden_builtins)
        self.builtins: dict[str, Any] = {
            name: getattr(builtins, name)
            for name in SAFE_BUILTINS - forbidden
            if hasattr(builtins, name)
        }
        # Every exception class is harmless and kernels need them to raise and catch.
        for name in dir(builtins):
            value = getattr(builtins, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                self.builtins[name] = value
        guarded = {
            "type": guards.KernelType,
            "getattr": guards.guarded_getattr,
            "hasattr": guards.guarded_hasattr,
            "setattr": guards.guarded_setattr,
            "delattr": guards.guarded_delattr,
        }
        self.builtins.update({k: v for k, v in guarded.items() if k not in forbidden})
        self.builtins.update(
            {
                "print": _sandbox_print,
                "__import__": self._import,
                "__build_class__": builtins.__build_class__,
                "__name__": "builtins",
            }
        )
        self._proxies: dict[str, ModuleProxy] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_policy(cls, policy: Any) -> Sandbox:
        """The sandbox for a :class:`~pyrecks.compiler.policy.Policy`."""
        return cls(policy.allowed_modules, policy.forbidden_builtins, policy.forbidden_attributes)

    def namespace(self, kernel_name: str) -> dict[str, Any]:
        """A fresh global namespace for one kernel module: builtins, name and the guards."""
        namespace: dict[str, Any] = {
            "__builtins__": self.builtins,
            "__name__": f"kernel:{kernel_name}",
        }
        namespace.update(guards.namespace_guards(namespace))
        return namespace

    def _import(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Iterable[str] | None = (),
        level: int = 0,
    ) -> Any:
        if type(fromlist) is list and not fromlist and not level:
            # The interpreter's own lazy imports (``datetime.strptime`` imports ``_strptime``
            # through the running frame's ``__import__``, with an empty *list* as fromlist).
            # Import statements pass ``None`` or a tuple, and kernels cannot name
            # ``__import__`` (the rewriter refuses it), so this is never the kernel asking.
            return importlib.import_module(name)
        if level:
            raise ImportError("relative imports are not allowed in kernels")
        if name not in self.allowed_modules:
            allowed = ", ".join(sorted(self.allowed_modules))
            raise ImportError(
                f"import of {name!r} is not allowed in a kernel; allowed modules: {allowed}"
            )
        proxy = self.proxy(name)
        if fromlist:
            for item in fromlist:
                if item == "*":
                    continue
                if item.startswith("_") or item not in vars(proxy):
                    reason = rulebook.refusal_reason(name, item)
                    raise ImportError(
                        f"cannot import {item!r} from {name!r} in a kernel: "
                        + (
                            reason
                            or "it does not exist or is a module, and modules are not exposed"
                        )
                    )
            return proxy
        # ``import a.b`` binds ``a``: hand out a proxy of ``a`` exposing just ``b``.
        head, _, rest = name.partition(".")
        if not rest:
            return proxy
        top = ModuleProxy(head)
        node = top
        made = [top]
        parts = rest.split(".")
        for i, part in enumerate(parts):
            child = proxy if i == len(parts) - 1 else ModuleProxy(f"{node.__name__}.{part}")
            setattr(node, part, child)
            node = child
            made.append(child)
        for made_proxy in made:
            made_proxy._seal()
        return top

    def proxy(self, name: str) -> ModuleProxy:
        """The read-only proxy of allowed module ``name`` (built once per sandbox).

        It holds the rule book's names for the module (for a module the rule book does not
        list, an operator's addition: every public attribute that is not a module), minus the
        policy's ``forbidden_attributes``, with the guarded replacements of ``time.sleep``,
        ``operator.attrgetter``, ``operator.methodcaller``, ``operator.call`` and
        :data:`~pyrecks.vm.guards.LIBRARY_OVERRIDES` (``re``'s functions, the decorators that
        change their argument).
        """
        with self._lock:
            cached = self._proxies.get(name)
            if cached is not None:
                return cached
            module = importlib.import_module(name)
            names = rulebook.module_names(name)
            if names is None:
                names = frozenset(n for n in vars(module) if not n.startswith("_"))
            proxy = ModuleProxy(name)
            values = guards.public_values(module, names)
            values.update({k: v for k, v in _OVERRIDES.get(name, {}).items() if k in values})
            for attr, value in values.items():
                if f"{name}.{attr}" in self.forbidden_attributes:
                    continue
                guards.register_library_value(value)
                setattr(proxy, attr, value)
            proxy._seal()
            self._proxies[name] = proxy
            return proxy
