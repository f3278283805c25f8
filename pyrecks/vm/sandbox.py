"""Run-time enforcement of the kernel rules, for kernels that never met the checker.

Anyone with Redis access can ``SET func0 "<source>"``, so the VM cannot trust that a kernel
was linted.  It therefore (1) runs the same checker on every source before compiling it
(:mod:`pyrecks.vm.loader`), and (2) executes kernels in a namespace built here:

* builtins are an allow-list — no ``open``, ``eval``, ``exec``, ``compile``, ``globals``,
  ``vars``, ``input``, …; ``getattr``/``hasattr`` refuse dunder and frame attributes;
* ``import`` goes through a guard with the policy's allow-list, and hands out *proxies* of
  allowed modules that hold only their non-module attributes (``json.codecs`` and
  ``datetime.sys`` do not exist in the sandbox);
* ``print`` writes to the running step's output buffer, which the VM appends to the chain
  log (and echoes to its console);
* ``time.sleep`` sleeps in short slices so the VM's timeout can interrupt it.

What a thread sandbox cannot do (see docs/vm.md): stop a kernel stuck inside one long C
call (a huge regex, ``10**10**8``), bound its memory, or protect against a CPython bug.
``pyrecks vm --isolation process`` is the answer to those.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import operator
import re
import threading
import time
import types
from collections.abc import Callable, Iterable
from typing import Any

from pyrecks.errors import PyrecksError

#: Builtins a kernel may use.  Everything not listed here is absent from the sandbox.
SAFE_BUILTINS: frozenset[str] = frozenset(
    [
        "abs",
        "all",
        "any",
        "ascii",
        "bin",
        "bool",
        "bytearray",
        "bytes",
        "callable",
        "chr",
        "classmethod",
        "complex",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "format",
        "frozenset",
        "hash",
        "hex",
        "id",
        "int",
        "isinstance",
        "issubclass",
        "iter",
        "len",
        "list",
        "map",
        "max",
        "min",
        "next",
        "object",
        "oct",
        "ord",
        "pow",
        "property",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "slice",
        "sorted",
        "staticmethod",
        "str",
        "sum",
        "super",
        "tuple",
        "type",
        "zip",
        "NotImplemented",
        "Ellipsis",
        "__build_class__",
    ]
)

#: Attribute names that lead out of the sandbox even when spelled as a plain string.
FRAME_ATTRIBUTES: frozenset[str] = frozenset(
    [
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "f_code",
        "f_trace",
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "ag_frame",
        "ag_code",
        "ag_await",
        "tb_frame",
        "tb_next",
        "co_code",
        "func_globals",
        "func_code",
        "im_func",
        "im_self",
        "mro",
    ]
)

_SLEEP_SLICE = 0.05


class KernelTimeout(BaseException):
    """Raised inside a kernel's thread when its time limit passes.

    A ``BaseException`` so that ``except Exception`` in a kernel does not swallow it (the
    checker also forbids bare ``except:`` and ``except BaseException``).
    """


class SandboxViolation(PyrecksError):
    """A kernel tried, at run time, something the sandbox forbids."""


def _is_forbidden_attribute(name: str, obj: Any = None) -> bool:
    """Dunder and frame attributes always; other ``_`` names except on kernel objects."""
    if (name.startswith("__") and name.endswith("__")) or name in FRAME_ATTRIBUTES:
        return True
    return name.startswith("_") and not _kernel_instance(obj)


def _guarded_getattr(obj: Any, name: str, *default: Any) -> Any:
    if not isinstance(name, str):
        raise TypeError("getattr(): attribute name must be a string")
    if _is_forbidden_attribute(name, obj):
        raise SandboxViolation(f"getattr(..., {name!r}) is not allowed in a kernel")
    return getattr(obj, name, *default)


def _guarded_hasattr(obj: Any, name: str) -> bool:
    if _is_forbidden_attribute(name, obj):
        raise SandboxViolation(f"hasattr(..., {name!r}) is not allowed in a kernel")
    return hasattr(obj, name)


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


def _checked_path(path: Any) -> Any:
    if not isinstance(path, str):
        raise TypeError("attribute name must be a string")
    for part in path.split("."):
        if part.startswith("_") or part in FRAME_ATTRIBUTES:
            raise SandboxViolation(f"attribute {part!r} is not allowed in a kernel")
    return path


def _attrgetter(*paths: str) -> Any:
    return operator.attrgetter(*(_checked_path(p) for p in paths))


def _methodcaller(name: str, *args: Any, **kwargs: Any) -> Any:
    return operator.methodcaller(_checked_path(name), *args, **kwargs)


# Replacements for module attributes that would otherwise block the timeout or leak out.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "time": {"sleep": _interruptible_sleep},
    "operator": {"attrgetter": _attrgetter, "methodcaller": _methodcaller},
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


def _sandbox_print(*args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
    """``print`` for kernels: goes to the chain log; ``file=``/``flush=`` are ignored."""
    text = (sep if sep is not None else " ").join(str(a) for a in args)
    text += end if end is not None else "\n"
    buffer = current_output()
    for line in text.splitlines():
        if buffer is None:
            builtins.print(line)
        else:
            buffer.write_line(line)


class ModuleProxy(types.ModuleType):
    """A read-only stand-in for an allowed module: only its public, non-module attributes.

    Read-only because one proxy serves every kernel in the process: a kernel that could
    write ``json.dumps = ...`` would change what every other kernel runs.
    """

    _sealed = False

    def __repr__(self) -> str:
        return f"<sandboxed module {self.__name__!r}>"

    def __setattr__(self, name: str, value: Any) -> None:
        if self._sealed:
            raise SandboxViolation(f"module {self.__name__!r} is read-only in a kernel")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise SandboxViolation(f"module {self.__name__!r} is read-only in a kernel")

    def seal(self) -> None:
        object.__setattr__(self, "_sealed", True)


# -- guards compiled into kernel code ---------------------------------------------------

GUARD_PREFIX = "_pyrecks_"


def _kernel_instance(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a class the kernel itself defined."""
    return not isinstance(obj, type | types.FunctionType | types.ModuleType) and str(
        getattr(type(obj), "__module__", "")
    ).startswith("kernel:")


def _writable(obj: Any) -> Any:
    """Guard for ``obj.attr = …`` / ``del obj.attr``: only on instances of kernel classes.

    Everything else — modules, classes, functions, objects from library modules — is
    shared by every kernel in the process, so writing to it would be global state.
    """
    if _kernel_instance(obj):
        return obj
    if isinstance(obj, types.ModuleType):
        raise SandboxViolation(f"module {obj.__name__!r} is read-only in a kernel")
    raise SandboxViolation(
        f"kernels may only set attributes on instances of classes they define, "
        f"not on a {type(obj).__name__}"
    )


def _template_is_safe(template: str) -> None:
    """Refuse ``str.format`` templates that reach attributes or items named ``_…``."""
    import string

    for _literal, field, _spec, _conversion in string.Formatter().parse(template):
        if not field:
            continue
        parts = re.split(r"[.\[\]]", field)
        if any(
            part.strip().startswith("_") or part.strip() in FRAME_ATTRIBUTES for part in parts[1:]
        ):
            raise SandboxViolation(
                f"format template field {{{field}}} reads a private or internal attribute; "
                "kernels may not do that"
            )


def _format(obj: Any, attr: str) -> Any:
    """Guard for ``x.format`` / ``x.format_map``: templates may not read private attributes."""
    method = getattr(obj, attr)
    if obj is str:  # str.format(template, ...)

        def unbound(template: str, *args: Any, **kwargs: Any) -> Any:
            _template_is_safe(template)
            return method(template, *args, **kwargs)

        return unbound
    if isinstance(obj, str):

        def bound(*args: Any, **kwargs: Any) -> Any:
            _template_is_safe(obj)
            return method(*args, **kwargs)

        return bound
    return method


class _GuardInserter(ast.NodeTransformer):
    """Rewrites kernel code so that attribute writes and format templates are checked."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Store | ast.Del):
            node.value = ast.Call(
                func=ast.Name(id=f"{GUARD_PREFIX}writable", ctx=ast.Load()),
                args=[node.value],
                keywords=[],
            )
            return node
        if node.attr in ("format", "format_map"):
            return ast.copy_location(
                ast.Call(
                    func=ast.Name(id=f"{GUARD_PREFIX}format", ctx=ast.Load()),
                    args=[node.value, ast.Constant(node.attr)],
                    keywords=[],
                ),
                node,
            )
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id.startswith(GUARD_PREFIX):
            raise SandboxViolation(f"names starting with {GUARD_PREFIX!r} are reserved")
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        if node.arg.startswith(GUARD_PREFIX):
            raise SandboxViolation(f"names starting with {GUARD_PREFIX!r} are reserved")
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.name.startswith(GUARD_PREFIX):
            raise SandboxViolation(f"names starting with {GUARD_PREFIX!r} are reserved")
        self.generic_visit(node)
        return node

    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]


def compile_guarded(name: str, source: str, filename: str) -> types.CodeType:
    """Compile a (checked) kernel source with the run-time guards inserted.

    The VM always compiles kernels itself, this way, rather than trusting bytecode read
    from Redis: the checker decides what may be written, and these guards hold even where
    the checker cannot see (names computed at run time, objects reached through aliases).
    """
    tree = ast.parse(source, filename=filename)
    tree = _GuardInserter().visit(tree)
    ast.fix_missing_locations(tree)
    return compile(tree, filename, "exec")


class Sandbox:
    """Builds kernel namespaces for one policy (allowed modules, forbidden names)."""

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
        self.builtins.update(
            {
                "getattr": _guarded_getattr,
                "hasattr": _guarded_hasattr,
                "print": _sandbox_print,
                "__import__": self._import,
                f"{GUARD_PREFIX}writable": _writable,
                f"{GUARD_PREFIX}format": _format,
            }
        )
        self._proxies: dict[str, ModuleProxy] = {}
        self._lock = threading.Lock()

    def namespace(self, kernel_name: str) -> dict[str, Any]:
        """A fresh global namespace for one kernel module."""
        return {"__builtins__": self.builtins, "__name__": f"kernel:{kernel_name}"}

    def _import(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Iterable[str] | None = (),
        level: int = 0,
    ) -> Any:
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
                if not hasattr(proxy, item):
                    raise ImportError(
                        f"cannot import {item!r} from {name!r} in a kernel "
                        "(it does not exist or is a module, and modules are not exposed)"
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
            made_proxy.seal()
        return top

    def proxy(self, name: str) -> ModuleProxy:
        with self._lock:
            cached = self._proxies.get(name)
            if cached is not None:
                return cached
            module = importlib.import_module(name)
            proxy = ModuleProxy(name)
            for attr, value in vars(module).items():
                # Private names (``dataclasses._create_fn``, ``random._os``) are not API
                # and several lead straight out of the sandbox.
                if attr.startswith("_") or isinstance(value, types.ModuleType):
                    continue
                if f"{name}.{attr}" in self.forbidden_attributes:
                    continue
                setattr(proxy, attr, value)
            for attr, value in _OVERRIDES.get(name, {}).items():
                setattr(proxy, attr, value)
            proxy.seal()
            self._proxies[name] = proxy
            return proxy
