"""The run-time guards that the compiler writes into every kernel's code.

:mod:`pyrecks.compiler.rewriter` rewrites a kernel before compiling it (as RestrictedPython
does): attribute reads whose verdict depends on the object (``_private``, dunder, frame and
the few type-dependent names of the rule book), every attribute write, every call of a value
the compiler cannot name, every ``except`` clause and the end of the module body become calls
of the functions below.  The guards judge the object's *real type* against
:mod:`pyrecks.compiler.rulebook` — never the name it was reached through — so they hold for
aliases, values returned by library functions and ``type(x)`` alike, and they hold whether or
not the checker ran (the guards are in the stored bytecode).

Everything here is a plain module-level function or object built at import time: a jail's
zygote imports this module once and forks cells that run kernels with it, so nothing may
depend on a VM's state.

Attribute names whose verdict is the same for every object (public, not a frame attribute,
not type-dependent) are judged by the rewriter at compile time and stay plain ``obj.name``
reads: that is the hot path (``s.lower()``, ``self.total``) and it costs nothing.
"""

from __future__ import annotations

import _string  # C helpers behind str.format's parser
import abc
import builtins
import dataclasses
import decimal
import enum
import functools
import importlib
import operator
import string
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from pyrecks.compiler import rulebook
from pyrecks.compiler.rewriter import SandboxViolation as SandboxViolation
from pyrecks.compiler.templates import field_accesses

_real_getattr = builtins.getattr
_real_hasattr = builtins.hasattr
_real_setattr = builtins.setattr
_real_delattr = builtins.delattr
_real_type = builtins.type


class KernelTimeout(BaseException):
    """Raised inside a kernel's thread when its time limit passes.

    A ``BaseException`` so that ``except Exception`` in a kernel does not swallow it; the
    ``except`` guard (:func:`catch`) turns ``except BaseException:`` into ``except Exception:``.
    """


class ModuleProxy(types.ModuleType):
    """A read-only stand-in for an allowed module: only the names the rule book allows.

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

    def _seal(self) -> None:
        object.__setattr__(self, "_sealed", True)


def _refuse(message: str) -> NoReturn:
    raise SandboxViolation(message)


# -- who defined it ------------------------------------------------------------------------

#: Class -> "defined by a kernel".  Bounded: kernels that define classes inside functions
#: make a new class per call.
_KERNEL_CLASSES: dict[type, bool] = {}


def is_kernel_class(cls: type) -> bool:
    """Whether ``cls`` was defined by kernel code (its module is ``kernel:NAME``)."""
    known = _KERNEL_CLASSES.get(cls)
    if known is None:
        module = _real_getattr(cls, "__module__", None)
        known = isinstance(module, str) and module.startswith("kernel:")
        if len(_KERNEL_CLASSES) > 4096:
            _KERNEL_CLASSES.clear()
        _KERNEL_CLASSES[cls] = known
    return known


def _own_private(obj: Any, name: str) -> bool:
    """Whether the ``_private`` attribute ``name`` of ``obj`` is the kernel's own.

    It is when ``obj`` is an instance of a kernel class and holds it itself, or when the first
    class of the MRO that defines it is a kernel class; a name defined by a library base class
    (``_randbelow`` of a ``random.Random`` subclass) is not.  A name nobody defines yet is the
    kernel's to create on its own instances and classes.
    """
    if isinstance(obj, type):
        cls = obj
    else:
        cls = _real_type(obj)
        if not is_kernel_class(cls):
            return False
        try:
            own = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            own = None
        if own is not None and name in own:
            return True
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return is_kernel_class(klass)
    return is_kernel_class(cls)


# -- reading -----------------------------------------------------------------------------------


def _judge_name(obj: Any, name: str) -> None:
    """Raise unless the rule book lets a kernel read ``obj.name`` (judged by obj's type)."""
    if name in rulebook.FRAME_ATTRIBUTES:
        _refuse(
            f"'.{name}' reaches frames, code objects or generator internals; kernels may not "
            "read it"
        )
    if name[:1] == "_":
        if rulebook.is_dunder(name):
            if name == "__init__":
                if isinstance(obj, super) or (
                    is_kernel_class(obj)
                    if isinstance(obj, type)
                    else is_kernel_class(_real_type(obj))
                ):
                    return
                _refuse(
                    "'.__init__' of an object the kernel did not define would re-initialise "
                    "it; call super().__init__(...) from your own class"
                )
            if name not in rulebook.SAFE_DUNDER_ATTRIBUTES:
                _refuse(f"dunder attribute '.{name}' reaches interpreter internals")
            return
        if rulebook.is_sunder(name) or not _own_private(obj, name):
            _refuse(
                f"'.{name}' is a private attribute of a {_kind(obj)} the kernel did not "
                "define; kernels may read '_' names only on their own objects"
            )
        return
    if name in rulebook.CLASS_REFUSED_ATTRIBUTES and isinstance(obj, abc.ABCMeta):
        _refuse(f"'{obj.__name__}.{name}': " + rulebook.CLASS_REFUSED_ATTRIBUTES[name])


def _kind(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__!r}"
    if isinstance(obj, type):
        return f"class {obj.__qualname__!r}"
    return f"{_real_type(obj).__qualname__!r} object"


#: Type -> names a read of which is allowed for *every* object of that type: the decision
#: depends on the type alone (a kernel class's own ``_private`` names, ``__init__`` of a
#: kernel class), so after the first read the guard is one dict lookup by type.  Bounded:
#: kernels that define classes inside functions make a new class per call.
_READ_OK: dict[type, set[str]] = {}


def _type_decides(obj: Any, name: str) -> bool:
    """Whether the verdict for ``obj.name`` (allowed) holds for every object of its type."""
    if isinstance(obj, type | types.ModuleType | super) or name in rulebook.WRAPPED_ATTRIBUTES:
        return False
    cls = _real_type(obj)
    if not is_kernel_class(cls):
        return False
    if name == "__init__":
        return True
    for klass in cls.__mro__:  # allowed because the first class defining it is the kernel's
        if name in klass.__dict__:
            return is_kernel_class(klass)
    # Defined by no class: an instance holds it in its own dict or has no such attribute,
    # for every instance alike (classes cannot be changed by kernels).
    return True


def _remember_read(obj: Any, name: str) -> None:
    if _type_decides(obj, name):
        if len(_READ_OK) > 4096:
            _READ_OK.clear()
        _READ_OK.setdefault(_real_type(obj), set()).add(name)


def getattr_(obj: Any, name: str) -> Any:
    """``obj.name`` for a name whose verdict depends on ``obj`` (the rewriter's read guard)."""
    allowed = _READ_OK.get(_real_type(obj))
    if allowed is not None and name in allowed:
        return _real_getattr(obj, name)
    _judge_name(obj, name)
    value = _real_getattr(obj, name)
    if name in rulebook.WRAPPED_ATTRIBUTES:
        return _wrap_format(value)
    _remember_read(obj, name)
    return value


def method(obj: Any, name: str) -> Any:
    """``obj.name`` in call position: the read guard, then the call guard on the value."""
    allowed = _READ_OK.get(_real_type(obj))
    if allowed is not None and name in allowed:
        value = _real_getattr(obj, name)
    else:
        value = getattr_(obj, name)
    rule = _CALL_RULES.get(id(value))
    return value if rule is None else rule(value)


def guarded_getattr(obj: Any, name: str, *default: Any) -> Any:
    """The ``getattr`` builtin of kernels: the name is judged like ``obj.name``."""
    if not isinstance(name, str):
        raise TypeError("getattr(): attribute name must be a string")
    if len(default) > 1:
        raise TypeError(f"getattr expected at most 3 arguments, got {2 + len(default)}")
    if rulebook.is_plain_attribute(name):
        return _real_getattr(obj, name, *default)
    _judge_name(obj, name)
    try:
        value = _real_getattr(obj, name)
    except AttributeError:
        if default:
            return default[0]
        raise
    return _wrap_format(value) if name in rulebook.WRAPPED_ATTRIBUTES else value


def guarded_hasattr(obj: Any, name: str) -> bool:
    """The ``hasattr`` builtin of kernels: refused names raise instead of answering."""
    if not isinstance(name, str):
        raise TypeError("hasattr(): attribute name must be a string")
    if not rulebook.is_plain_attribute(name):
        _judge_name(obj, name)
    return _real_hasattr(obj, name)


# -- writing -----------------------------------------------------------------------------------


def _resolve_type(dotted: str) -> type | None:
    """``"decimal.Context"`` -> the class (the rule book names types, it imports nothing)."""
    module_name, _, qualname = dotted.partition(".")
    module = {"builtins": builtins, "types": types}.get(module_name)
    if module is None:
        module = importlib.import_module(module_name)
    value = _real_getattr(module, qualname, None)
    return value if isinstance(value, type) else None


#: :data:`~pyrecks.compiler.rulebook.WRITABLE_ATTRIBUTES`, by resolved type.
_WRITABLE: dict[type, frozenset[str]] = {
    t: names
    for t, names in (
        (_resolve_type(dotted), names) for dotted, names in rulebook.WRITABLE_ATTRIBUTES.items()
    )
    if t is not None
}


def write(obj: Any, name: str) -> Any:
    """Guard for ``obj.name = v`` / ``del obj.name`` / ``obj.name += v``: returns ``obj``.

    Only instances of the kernel's own classes take writes (and the few library attributes
    of :data:`~pyrecks.compiler.rulebook.WRITABLE_ATTRIBUTES`): modules, classes, functions
    and library objects are shared by every kernel in the process, or survive the call.
    The name was judged when the kernel was compiled (the rewriter refuses writes of dunder,
    ``_sunder_`` and frame names), so the common case is one dict lookup by type.
    """
    cls = _real_type(obj)
    if _KERNEL_CLASSES.get(cls) or (cls not in _KERNEL_CLASSES and is_kernel_class(cls)):
        return obj  # an instance of a kernel class (kernel classes cannot be metaclasses)
    allowed = _WRITABLE.get(cls)
    if allowed is not None and name in allowed:
        return obj
    if isinstance(obj, types.ModuleType):
        _refuse(f"module {obj.__name__!r} is read-only in a kernel")
    _refuse(
        f"kernels may only set attributes on instances of classes they define, not on a "
        f"{_kind(obj)} ('.{name}'): it is shared by every run of the kernel"
    )


def _writable_name(name: str) -> str:
    """Names judged at run time (``setattr(obj, name, v)``): what the rewriter refuses."""
    if not isinstance(name, str):
        raise TypeError("attribute name must be a string")
    if rulebook.refused_by_name(name) or rulebook.is_dunder(name):
        _refuse(f"kernels may not set the attribute '.{name}'")
    return name


def guarded_setattr(obj: Any, name: str, value: Any) -> None:
    """The ``setattr`` builtin of kernels: judged like ``obj.name = value``."""
    _real_setattr(write(obj, _writable_name(name)), name, value)


def guarded_delattr(obj: Any, name: str) -> None:
    """The ``delattr`` builtin of kernels: judged like ``del obj.name``."""
    _real_delattr(write(obj, _writable_name(name)), name)


# -- str.format --------------------------------------------------------------------------------


class _GuardedFormatter(string.Formatter):
    """``str.format`` with every ``{0.name}`` field read through :func:`guarded_getattr`."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = guarded_getattr(obj, key) if is_attr else obj[key]
        return obj, first


_FORMATTER = _GuardedFormatter()


def _reads_attributes(template: str) -> bool:
    """Whether a template has a field that reads an attribute or an item (``{0.x}``, ``{a[k]}``).

    The same parser as the checker's PK304 (:func:`~pyrecks.compiler.templates.field_accesses`).
    """
    if "." not in template and "[" not in template:
        return False  # the common case, decided without parsing
    return any(True for _ in field_accesses(template))


def safe_format(template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``template.format(*args, **kwargs)``, with attribute fields judged by the guards."""
    if _reads_attributes(template):
        return _FORMATTER.vformat(template, args, kwargs)
    return str.format(template, *args, **kwargs)


def _format_unbound(template: str, *args: Any, **kwargs: Any) -> str:
    if not isinstance(template, str):
        raise TypeError("descriptor 'format' requires a 'str' object")
    return safe_format(template, args, kwargs)


def _format_map_unbound(template: str, mapping: Mapping[str, Any]) -> str:
    if not isinstance(template, str):
        raise TypeError("descriptor 'format_map' requires a 'str' object")
    return safe_format(template, (), mapping)


def _wrap_format(value: Any) -> Any:
    """Replace a real ``str.format``/``format_map`` (bound or not) by its guarded version."""
    if value is _STR_FORMAT:
        return _format_unbound
    if value is _STR_FORMAT_MAP:
        return _format_map_unbound
    owner = _real_getattr(value, "__self__", None)
    if isinstance(owner, str) and isinstance(value, types.BuiltinMethodType):
        template = owner
        if value.__name__ == "format":
            return functools.partial(_bound_format, template)
        if value.__name__ == "format_map":
            return functools.partial(_format_map_unbound, template)
    return value


def _bound_format(template: str, *args: Any, **kwargs: Any) -> str:
    return safe_format(template, args, kwargs)


_STR_FORMAT = str.format
_STR_FORMAT_MAP = str.format_map


# -- library functions that read attributes by name -------------------------------------------


def guarded_attrgetter(*paths: str) -> Callable[[Any], Any]:
    """``operator.attrgetter`` for kernels: every name judged like ``obj.name``."""
    split: list[list[str]] = []
    for path in paths:
        if not isinstance(path, str):
            raise TypeError("attribute name must be a string")
        split.append(path.split("."))
    if all(rulebook.is_plain_attribute(n) for parts in split for n in parts):
        return operator.attrgetter(*paths)  # names every object may show: the C version

    def get_one(obj: Any, parts: list[str]) -> Any:
        for part in parts:
            obj = getattr_(obj, part)
        return obj

    if len(split) == 1:
        return lambda obj: get_one(obj, split[0])
    return lambda obj: tuple(get_one(obj, parts) for parts in split)


def guarded_methodcaller(name: str, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """``operator.methodcaller`` for kernels: the method name judged like ``obj.name``."""
    if not isinstance(name, str):
        raise TypeError("method name must be a string")
    if rulebook.is_plain_attribute(name):
        return operator.methodcaller(name, *args, **kwargs)
    return lambda obj: method(obj, name)(*args, **kwargs)


def guarded_operator_call(obj: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``operator.call`` for kernels: a call of a value, through the call guard."""
    return call(obj)(*args, **kwargs)


# -- the type builtin --------------------------------------------------------------------------

#: Classes ``type(x)`` does not hand out: calling them builds attribute readers from strings
#: or code from code objects, or they are the sandbox's own machinery.
_HIDDEN_CLASSES: frozenset[type] = frozenset(
    {
        operator.attrgetter,
        operator.methodcaller,
        types.FunctionType,
        types.CodeType,
        types.CellType,
        types.FrameType,
        types.TracebackType,
        types.ModuleType,
        ModuleProxy,
        typing.ForwardRef,
        string.Formatter,
    }
)


class _TypeMeta(type):
    """Makes the kernels' ``type`` answer ``isinstance(C, type)`` like the real one."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, type)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, type)

    def __repr__(cls) -> str:
        return "<class 'type'>"


def _type_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    if len(args) != 1 or kwargs:
        _refuse("type() with three arguments creates a class at run time; write a class statement")
    result = _real_type(args[0])
    if issubclass(result, type) or result in _HIDDEN_CLASSES:
        _refuse(
            f"type() of this object is {result.__qualname__!r}, which kernels may not hold: "
            "compare with isinstance() instead"
        )
    return result


def _type_class_getitem(cls: type, item: Any) -> types.GenericAlias:
    return types.GenericAlias(cls, item)


#: The ``type`` builtin of kernels: ``type(x)`` returns x's class, except metaclasses and
#: :data:`_HIDDEN_CLASSES`; ``type(name, bases, ns)`` is refused; ``isinstance(C, type)``
#: and ``type[int]`` annotations work as usual.
KernelType: type = _TypeMeta(
    "type",
    (),
    {
        "__new__": _type_new,
        "__class_getitem__": classmethod(_type_class_getitem),
        "__module__": "builtins",
        "__doc__": "type(object) -> the object's type (kernels: one argument only)",
    },
)


# -- calls -------------------------------------------------------------------------------------


def _refuser(reason: str) -> Callable[[Any], NoReturn]:
    def refuse(f: Any) -> NoReturn:
        name = _real_getattr(f, "__qualname__", None) or _real_getattr(f, "__name__", "?")
        _refuse(f"calling {name} is not allowed in a kernel: {reason}")

    return refuse


def _replace_by(replacement: Any) -> Callable[[Any], Any]:
    return lambda _f: replacement


#: id(callable) -> what a call of it gets instead (a guarded stand-in) or a refusal.  The
#: objects are kept alive in :data:`_CALL_TARGETS` so that their ids stay theirs.
_CALL_RULES: dict[int, Callable[[Any], Any]] = {}
_CALL_TARGETS: list[Any] = []


def _rule(target: Any, handler: Callable[[Any], Any]) -> None:
    _CALL_TARGETS.append(target)
    _CALL_RULES[id(target)] = handler


def _install_call_rules() -> None:
    _rule(builtins.type, _replace_by(KernelType))
    _rule(builtins.getattr, _replace_by(guarded_getattr))
    _rule(builtins.hasattr, _replace_by(guarded_hasattr))
    _rule(builtins.setattr, _replace_by(guarded_setattr))
    _rule(builtins.delattr, _replace_by(guarded_delattr))
    _rule(operator.attrgetter, _replace_by(guarded_attrgetter))
    _rule(operator.methodcaller, _replace_by(guarded_methodcaller))
    _rule(_STR_FORMAT, _replace_by(_format_unbound))
    _rule(_STR_FORMAT_MAP, _replace_by(_format_map_unbound))
    if hasattr(operator, "call"):
        _rule(operator.call, _replace_by(guarded_operator_call))
    for name, fix in rulebook.FORBIDDEN_BUILTINS.items():
        target = builtins.__dict__.get(name)
        if target is not None:
            _rule(target, _refuser(fix))
    _rule(builtins.__dict__["dir"], _refuser("read the attributes you need by name"))
    refused: list[tuple[Any, str]] = [
        (functools.update_wrapper, rulebook.REFUSED_MODULE_NAMES["functools.update_wrapper"]),
        (functools.wraps, rulebook.REFUSED_MODULE_NAMES["functools.wraps"]),
        (functools.singledispatch, rulebook.REFUSED_MODULE_NAMES["functools.singledispatch"]),
        (string.Formatter, rulebook.REFUSED_MODULE_NAMES["string.Formatter"]),
        (typing.get_type_hints, rulebook.REFUSED_MODULE_NAMES["typing.get_type_hints"]),
        (typing.ForwardRef, rulebook.REFUSED_MODULE_NAMES["typing.ForwardRef"]),
        (typing.get_args, rulebook.REFUSED_MODULE_NAMES["typing.get_args"]),
        (dataclasses.make_dataclass, rulebook.REFUSED_MODULE_NAMES["dataclasses.make_dataclass"]),
        (types.FunctionType, "functions are made with def or lambda"),
        (types.CodeType, "kernels cannot build code"),
        (types.CellType, "kernels cannot build closures by hand"),
        (abc.ABCMeta.register, rulebook.CLASS_REFUSED_ATTRIBUTES["register"]),
        (decimal.setcontext, rulebook.REFUSED_MODULE_NAMES["decimal.setcontext"]),
        (enum.EnumType, rulebook.REFUSED_MODULE_NAMES["enum.EnumType"]),
    ]
    for target, reason in refused:
        _rule(target, _refuser(reason))


_install_call_rules()


def call(f: Any) -> Any:
    """Guard for ``f(...)`` where the compiler cannot name ``f``: returns what to call.

    A dict lookup by identity: the real ``type``/``getattr``/``attrgetter``/``str.format``
    become their guarded versions, refused callables raise, everything else is ``f`` itself.
    """
    rule = _CALL_RULES.get(id(f))
    return f if rule is None else rule(f)


# -- except clauses ------------------------------------------------------------------------------

_CONTROL: dict[Any, Any] = {
    BaseException: Exception,
    SystemExit: (),
    KeyboardInterrupt: (),
    GeneratorExit: (),
    KernelTimeout: (),
}


def catch(spec: Any = None) -> Any:
    """Guard for ``except spec:``: the VM's control exceptions are never caught.

    ``except BaseException:`` catches ``Exception``; ``SystemExit``, ``KeyboardInterrupt``,
    ``GeneratorExit`` and the VM's timeout are dropped from the clause (an empty tuple
    catches nothing), whatever name they were reached by.  A bare ``except:`` is rewritten to
    ``except <catch()>:``, which is ``Exception``.
    """
    if spec is None:
        return Exception
    if _real_type(spec) is type and spec not in _CONTROL:
        return spec
    if isinstance(spec, tuple):
        out: list[Any] = []
        for item in spec:
            replaced = catch(item)
            if isinstance(replaced, tuple):
                out.extend(replaced)
            else:
                out.append(replaced)
        return tuple(out)
    try:
        return _CONTROL.get(spec, spec)
    except TypeError:  # unhashable: Python raises its own error for it
        return spec


# -- the end of the module body ------------------------------------------------------------------

#: :data:`~pyrecks.compiler.rulebook.IMMUTABLE_TYPES`, resolved (plus the module proxies).
_IMMUTABLE: tuple[type, ...] = (
    *(t for t in map(_resolve_type, sorted(rulebook.IMMUTABLE_TYPES)) if t is not None),
    ModuleProxy,
)


def _immutable(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _IMMUTABLE):
        return True
    if _real_type(value) is object:
        return True  # a sentinel: object() has no state
    if isinstance(value, tuple | frozenset) and depth < 20:
        return all(_immutable(v, depth + 1) for v in value)
    return _real_type(value).__module__ == "typing" or id(value) in _LIBRARY_VALUES


#: ids of every value the sandbox's module proxies hand out (``from typing import Optional``
#: binds a ``typing`` special form): imported names are rule-book values by definition.
_LIBRARY_VALUES: set[int] = set()
_LIBRARY_KEEP: list[Any] = []


def register_library_value(value: Any) -> None:
    """Tell :func:`module_done` that ``value`` came from an allowed module's proxy."""
    if id(value) not in _LIBRARY_VALUES:
        _LIBRARY_KEEP.append(value)
        _LIBRARY_VALUES.add(id(value))


#: Private class attributes that library class factories put on the kernel's own classes.
_FACTORY_ATTRIBUTES = frozenset({"_field_defaults", "_fields"})


def _function_state(fn: Any) -> str | None:
    defaults = (_real_getattr(fn, "__defaults__", None) or ()) + tuple(
        (_real_getattr(fn, "__kwdefaults__", None) or {}).values()
    )
    for value in defaults:
        if not _immutable(value):
            return f"a mutable default argument ({_real_type(value).__name__})"
    return None


def module_done(namespace: Mapping[str, Any]) -> None:
    """Refuse a module whose body left state behind (the guard at the end of every kernel).

    After the module body ran, every global must be immutable (numbers, strings, bytes,
    tuples and frozensets of them, functions, classes, modules, rule-book values); class
    attributes of the kernel's classes and default arguments of its functions too.  A list,
    dict, set or object there would survive the call and be shared by every chain.
    """
    for name, value in namespace.items():
        if rulebook.is_dunder(name) or name.startswith(rulebook.GUARD_PREFIX):
            continue
        problem: str | None = None
        if not _immutable(value):
            problem = f"holds a {_real_type(value).__name__}, which can change between calls"
        elif isinstance(value, types.FunctionType):
            problem = _function_state(value)
        elif isinstance(value, type) and is_kernel_class(value):
            problem = _class_state(value)
        if problem is not None:
            _refuse(
                f"module-level name {name!r} {problem}: module level may bind only immutable "
                "values (numbers, strings, bytes, tuples and frozensets of them, functions, "
                "classes); build it inside the function"
            )


def _class_state(cls: type) -> str | None:
    for attr, value in vars(cls).items():
        if rulebook.is_dunder(attr) or rulebook.is_sunder(attr) or attr in _FACTORY_ATTRIBUTES:
            continue
        if isinstance(value, types.FunctionType):
            problem = _function_state(value)
            if problem is not None:
                return f"(class {cls.__name__}, method {attr}) has {problem}"
            continue
        if not _immutable(value):
            return (
                f"(class {cls.__name__}) has the attribute {attr!r} holding a "
                f"{_real_type(value).__name__}, which every instance and every call share"
            )
    return None


def namespace_guards(namespace: dict[str, Any]) -> dict[str, Any]:
    """The guard functions rewritten code calls, by the names the rewriter uses."""
    names = rulebook.GUARDS
    return {
        names["getattr"]: getattr_,
        names["method"]: method,
        names["call"]: call,
        names["write"]: write,
        names["catch"]: catch,
        names["module_done"]: functools.partial(module_done, namespace),
    }


def public_values(module: Any, names: Iterable[str]) -> dict[str, Any]:
    """The ``names`` of ``module`` that exist and are not modules (for a proxy)."""
    out: dict[str, Any] = {}
    for name in names:
        value = _real_getattr(module, name, _MISSING)
        if value is _MISSING or isinstance(value, types.ModuleType):
            continue
        out[name] = value
    return out


_MISSING = object()
