"""The run-time guards that the compiler writes into every kernel's code.

:mod:`pyrecks.compiler.rewriter` rewrites a kernel before compiling it (as RestrictedPython
does): attribute reads whose verdict depends on the object (``_private``, dunder, frame and
the few type-dependent names of the rule book), every attribute write, every call of a value
the compiler cannot name, every ``except`` clause, every ``with`` statement and ``finally:``
body, and the end of the module body become calls of the functions below.  The module also
holds the stand-ins the sandbox's module proxies hand out for library functions that would
otherwise read attributes by name, change their argument or cache a kernel's objects
process-wide (:data:`LIBRARY_OVERRIDES`), and, when imported, freezes the rule book's mutable
class attributes and keeps kernels' objects out of ``typing``'s caches.  The guards judge
the object's *real type* against
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
import keyword
import operator
import re
import string
import types
import typing
import weakref
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


_str_copy = str.__str__


def _exact(text: str) -> str:
    """``text`` as an exact ``str``, for guards that inspect a kernel's string and then hand it
    to C code.

    A kernel's ``str`` subclass can override ``startswith``, ``__getitem__``, ``__contains__``
    or ``split`` so that ``"__globals__"`` looks harmless to a guard, while ``getattr`` and
    ``str.format`` read its characters, not its methods.  ``str.__str__`` copies the
    characters into a plain ``str`` without calling anything the kernel defined.
    """
    return text if _real_type(text) is str else _str_copy(text)


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
                if _own_init(obj):
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


_super_self = super.__dict__["__self__"].__get__


def _own_init(obj: Any) -> bool:
    """Whether ``obj.__init__`` can only re-initialise an object the kernel made.

    On an instance, it is bound to that instance: allowed when the instance is the kernel's.
    On ``super(...)``, it is bound to the object ``super`` was given, so that object is
    judged (``super(T, typing.List).__init__(dict)`` would re-initialise a shared alias);
    ``super(C, C)`` hands out the unbound function, which applies to anything: refused.  On a
    class, it is the unbound function of the first class of the MRO that defines it: allowed
    when that is a kernel class (or ``object``, whose ``__init__`` does nothing) —
    ``K.__init__(uuid.NAMESPACE_DNS, int=0)`` with ``class K(uuid.UUID): pass`` is
    ``UUID.__init__`` applied to an object every kernel shares.
    """
    if isinstance(obj, super):
        target = _super_self(obj)
        return not isinstance(target, type) and is_kernel_class(_real_type(target))
    if not isinstance(obj, type):
        return is_kernel_class(_real_type(obj))
    for klass in obj.__mro__:
        if "__init__" in klass.__dict__:
            return klass is object or is_kernel_class(klass)
    return False


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
    if (
        isinstance(obj, type | types.ModuleType | super)
        or name in rulebook.WRAPPED_ATTRIBUTES
        or name in rulebook.CLASS_REFUSED_ATTRIBUTES
    ):
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
    if name in rulebook.CLASS_REFUSED_ATTRIBUTES:
        _judge_value(value)
    _remember_read(obj, name)
    return value


def _judge_value(value: Any) -> None:
    """Refuse a bound method of a refused function, whatever object it was read from.

    ``typing.Mapping.register`` is ``collections.abc.Mapping.register`` (typing's aliases
    forward attribute reads to their origin class), so judging the object read from is not
    enough: the value read is judged too.
    """
    if _real_type(value) is types.MethodType:
        rule = _REFUSED_FUNCTIONS.get(id(value.__func__))
        if rule is not None:
            rule(value)


def method(obj: Any, name: str) -> Any:
    """``obj.name`` in call position: the read guard, then the call guard on the value."""
    allowed = _READ_OK.get(_real_type(obj))
    if allowed is not None and name in allowed:
        value = _real_getattr(obj, name)
    else:
        value = getattr_(obj, name)
    rule = _CALL_RULES.get(id(value))
    # (A bound method of a refused function never reaches a kernel: every read of the names
    # that could yield one — CLASS_REFUSED_ATTRIBUTES — judges the value read.)
    return value if rule is None else rule(value)


def guarded_getattr(obj: Any, name: str, *default: Any) -> Any:
    """The ``getattr`` builtin of kernels: the name is judged like ``obj.name``."""
    if not isinstance(name, str):
        raise TypeError("getattr(): attribute name must be a string")
    name = _exact(name)
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
    if name in rulebook.CLASS_REFUSED_ATTRIBUTES:
        _judge_value(value)
    return _wrap_format(value) if name in rulebook.WRAPPED_ATTRIBUTES else value


def guarded_hasattr(obj: Any, name: str) -> bool:
    """The ``hasattr`` builtin of kernels: refused names raise instead of answering."""
    if not isinstance(name, str):
        raise TypeError("hasattr(): attribute name must be a string")
    name = _exact(name)
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


#: Class -> "its instances take writes": kernel classes, except enumerations, whose members
#: are made once when the module is loaded and shared by every call (``Color.RED.seen = []``
#: would keep state between calls).  Bounded like :data:`_KERNEL_CLASSES`.
_INSTANCE_WRITES: dict[type, bool] = {}


def _instance_writes(cls: type) -> bool:
    ok = is_kernel_class(cls) and not issubclass(cls, enum.Enum)
    if len(_INSTANCE_WRITES) > 4096:
        _INSTANCE_WRITES.clear()
    _INSTANCE_WRITES[cls] = ok
    return ok


def write(obj: Any, name: str) -> Any:
    """Guard for ``obj.name = v`` / ``del obj.name`` / ``obj.name += v``: returns ``obj``.

    Only instances of the kernel's own classes take writes (and the few library attributes
    of :data:`~pyrecks.compiler.rulebook.WRITABLE_ATTRIBUTES`): modules, classes, functions
    and library objects are shared by every kernel in the process, or survive the call.
    The name was judged when the kernel was compiled (the rewriter refuses writes of dunder,
    ``_sunder_`` and frame names), so the common case is one dict lookup by type.
    """
    cls = _real_type(obj)
    own = _INSTANCE_WRITES.get(cls)
    if own is None:
        own = _instance_writes(cls)
    if own:
        return obj  # an instance of a kernel class (kernel classes cannot be metaclasses)
    allowed = _WRITABLE.get(cls)
    if allowed is not None and name in allowed:
        return obj
    if isinstance(obj, types.ModuleType):
        _refuse(f"module {obj.__name__!r} is read-only in a kernel")
    if isinstance(obj, enum.Enum):
        _refuse(
            f"{_kind(obj)} is an enumeration member, made once when the kernel is loaded "
            f"and shared by every call: kernels may not set its attributes ('.{name}')"
        )
    _refuse(
        f"kernels may only set attributes on instances of classes they define, not on a "
        f"{_kind(obj)} ('.{name}'): it is shared by every run of the kernel"
    )


def _writable_name(name: str) -> str:
    """Names judged at run time (``setattr(obj, name, v)``): what the rewriter refuses."""
    if not isinstance(name, str):
        raise TypeError("attribute name must be a string")
    name = _exact(name)
    if rulebook.refused_by_name(name) or rulebook.is_dunder(name):
        _refuse(f"kernels may not set the attribute '.{name}'")
    return name


def guarded_setattr(obj: Any, name: str, value: Any) -> None:
    """The ``setattr`` builtin of kernels: judged like ``obj.name = value``."""
    name = _writable_name(name)
    _real_setattr(write(obj, name), name, value)


def guarded_delattr(obj: Any, name: str) -> None:
    """The ``delattr`` builtin of kernels: judged like ``del obj.name``."""
    name = _writable_name(name)
    _real_delattr(write(obj, name), name)


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
    template = _exact(template)
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
    paths = tuple(map(_exact, paths)) if all(isinstance(p, str) for p in paths) else paths
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
    name = _exact(name)
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
#: The refusals of :data:`_CALL_RULES` alone: a bound method of one of these functions
#: (``typing.Mapping.register`` is ``ABCMeta.register`` bound to ``Mapping``) is refused too.
_REFUSED_FUNCTIONS: dict[int, Callable[[Any], Any]] = {}


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
        _REFUSED_FUNCTIONS[id(target)] = _CALL_RULES[id(target)]


_install_call_rules()


def call(f: Any) -> Any:
    """Guard for ``f(...)`` where the compiler cannot name ``f``: returns what to call.

    A dict lookup by identity: the real ``type``/``getattr``/``attrgetter``/``str.format``
    become their guarded versions, refused callables raise, everything else is ``f`` itself.
    """
    rule = _CALL_RULES.get(id(f))
    if rule is not None:
        return rule(f)
    if _real_type(f) is _MethodType and id(f.__func__) in _REFUSED_FUNCTIONS:
        _judge_value(f)
    return f


_MethodType = types.MethodType


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


# -- with statements -----------------------------------------------------------------------------

#: Exceptions an ``__exit__`` of the kernel's may not suppress (as :func:`catch` never catches).
_UNSUPPRESSIBLE: tuple[type[BaseException], ...] = (
    KernelTimeout,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
)


class _NoSwallow:
    """A kernel's context manager whose ``__exit__`` may not suppress the VM's signals.

    ``with cm:`` suppresses the exception when ``type(cm).__exit__`` returns a true value:
    ``def __exit__(self, *exc): return True`` would swallow the timeout like a bare
    ``except:`` does.  The ``with`` guard hands this stand-in to the statement instead.
    """

    __slots__ = ("_cm", "_enter", "_exit")

    def __init__(self, cm: Any) -> None:
        cls = _real_type(cm)
        enter = _real_getattr(cls, "__enter__", None)
        exit_ = _real_getattr(cls, "__exit__", None)
        if enter is None or exit_ is None:
            raise TypeError(
                f"'{cls.__qualname__}' object does not support the context manager protocol"
            )
        self._cm, self._enter, self._exit = cm, enter, exit_

    def __enter__(self) -> Any:
        return self._enter(self._cm)

    def __exit__(self, kind: Any, value: Any, tb: Any) -> Any:
        signal = kind is not None and issubclass(kind, _UNSUPPRESSIBLE)
        try:
            suppress = self._exit(self._cm, kind, value, tb)
        except BaseException:
            if signal:  # raising another exception would replace the signal in flight
                raise value from None
            raise
        if suppress and signal:
            return False
        return suppress


def with_(cm: Any) -> Any:
    """Guard for ``with cm:``: a kernel's own context manager goes through :class:`_NoSwallow`
    (library context managers of the rule book never suppress exceptions)."""
    cls = _real_type(cm)
    own = _KERNEL_CLASSES.get(cls)
    if own is None:
        own = is_kernel_class(cls)
    return _NoSwallow(cm) if own else cm


def finally_(exc: BaseException) -> None:
    """Guard for a ``finally:`` body that raised ``exc``: raise the VM signal it replaces.

    ``try: ... finally: raise ValueError`` replaces the exception in flight, and an outer
    ``except ValueError:`` would then swallow the timeout.  The rewriter compiles
    ``finally: F`` as ``finally: try: F / except BaseException as e: _pyrecks_finally(e);
    raise`` (no cost unless F raises): a VM signal in ``exc``'s context chain was in flight
    when F started (kernels can never catch one), so it is raised again instead of ``exc``.
    """
    if isinstance(exc, _UNSUPPRESSIBLE):
        return
    seen = 0
    context = exc.__context__
    while context is not None and seen < 100:
        if isinstance(context, _UNSUPPRESSIBLE):
            raise context from None
        context = context.__context__
        seen += 1


# -- library functions that change their argument ---------------------------------------------

#: Kernel classes the module body left behind (sealed by :func:`module_done`): shared by every
#: call, so a call may not change them (``dataclasses.dataclass(C)`` from the entry function).
_SEALED: weakref.WeakSet[type] = weakref.WeakSet()


def _own_fresh_class(cls: Any, what: str) -> None:
    if isinstance(cls, type) and is_kernel_class(cls) and cls not in _SEALED:
        return
    _refuse(
        f"{what} changes the class passed to it, and {_kind(cls)} is shared (a library "
        "class, or a class of the module level, which every call shares): use it as a "
        "decorator of a class you define"
    )


def guarded_dataclass(cls: Any = None, /, **options: Any) -> Any:
    """``dataclasses.dataclass`` for kernels: only on classes the running code defines."""
    if cls is None:
        return lambda c: guarded_dataclass(c, **options)
    _own_fresh_class(cls, "dataclasses.dataclass")
    _plain_field_names(cls)
    return dataclasses.dataclass(cls, **options)


def _plain_field_names(cls: type) -> None:
    """Refuse a dataclass whose field names are not plain identifiers.

    ``dataclasses`` pastes field names, unchecked, into the source of ``__init__``,
    ``__eq__`` and friends and ``exec``s it (with the real builtins when the class's module is
    not in ``sys.modules``): a name such as ``"a,__import__('os')..."`` is code.  The
    compiler refuses class bodies that bind ``__annotations__`` (PK533); this is the same
    promise kept where the names are read, for fields inherited from a base too.
    """
    for klass in cls.__mro__:
        # What dataclasses itself reads (3.11-3.13), not what inspect would make of it.
        names = list(klass.__dict__.get("__annotations__", {}))  # noqa: RUF063
        inherited = klass.__dict__.get("__dataclass_fields__")
        if inherited is not None:
            names += list(inherited)
        for name in names:
            if type(name) is not str or not name.isidentifier() or keyword.iskeyword(name):
                _refuse(
                    f"dataclasses.dataclass: field name {name!r} of {klass.__name__} is not "
                    "a plain identifier"
                )


def guarded_total_ordering(cls: Any) -> Any:
    """``functools.total_ordering`` for kernels: only on classes the running code defines."""
    _own_fresh_class(cls, "functools.total_ordering")
    return functools.total_ordering(cls)


def guarded_final(f: Any) -> Any:
    """``typing.final`` for kernels: a marker for type checkers that sets no attribute."""
    return f


def _overload_dummy(*args: Any, **kwargs: Any) -> NoReturn:
    raise NotImplementedError(
        "You should not call an overloaded function. A series of @overload-decorated "
        "functions outside a stub module should always be followed by an implementation "
        "that is not @overload-ed."
    )


def guarded_overload(f: Any) -> Any:
    """``typing.overload`` for kernels: without typing's process-wide registry."""
    return _overload_dummy


def _exact_pattern(pattern: Any) -> Any:
    """A ``str``/``bytes`` pattern as an exact ``str``/``bytes``.

    The ``re`` module caches compiled patterns process-wide and ``Pattern.pattern`` hands the
    cached pattern object back: an instance of a kernel's ``str`` subclass stored there would
    carry its attributes from one call (and kernel) to the next.
    """
    kind = _real_type(pattern)
    if kind is str or kind is bytes or kind is re.Pattern:
        return pattern
    if isinstance(pattern, str):
        return "".join((pattern,))
    if isinstance(pattern, bytes):
        return b"".join((pattern,))
    return pattern


_re_compile = re._compile  # type: ignore[attr-defined]


# ``re``'s functions as ``re`` writes them (``_compile(pattern, flags).match(string)``), with
# the pattern made exact first: no extra call on the hot path.
def _re_compile_exact(pattern: Any, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags)


def _re_match(pattern: Any, string: Any, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).match(string)


def _re_fullmatch(pattern: Any, string: Any, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).fullmatch(string)


def _re_search(pattern: Any, string: Any, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).search(string)


def _re_sub(pattern: Any, repl: Any, string: Any, count: Any = 0, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).sub(repl, string, count)


def _re_subn(pattern: Any, repl: Any, string: Any, count: Any = 0, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).subn(repl, string, count)


def _re_split(pattern: Any, string: Any, maxsplit: Any = 0, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).split(string, maxsplit)


def _re_findall(pattern: Any, string: Any, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).findall(string)


def _re_finditer(pattern: Any, string: Any, flags: Any = 0) -> Any:
    if _real_type(pattern) is not str:
        pattern = _exact_pattern(pattern)
    return _re_compile(pattern, flags).finditer(string)


_RE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "compile": _re_compile_exact,
    "match": _re_match,
    "fullmatch": _re_fullmatch,
    "search": _re_search,
    "sub": _re_sub,
    "subn": _re_subn,
    "split": _re_split,
    "findall": _re_findall,
    "finditer": _re_finditer,
}
for _name, _function in _RE_FUNCTIONS.items():
    _function.__name__ = _function.__qualname__ = _name
    _function.__doc__ = _real_getattr(re, _name).__doc__


_NOT_FOUND = object()


class KernelCachedProperty(functools.cached_property):  # type: ignore[type-arg,unused-ignore]
    """``functools.cached_property`` without the lock (Python 3.12's version).

    Python 3.11's ``cached_property`` holds an ``RLock`` in its public ``lock`` attribute,
    one per decorated method and so shared by every call of a module-level class:
    ``C.v.lock.acquire()`` would block the next call forever, inside C code the timeout
    cannot interrupt.  This subclass never creates it.
    """

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        self.attrname = None
        self.__doc__ = func.__doc__
        self.__module__ = func.__module__

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        if self.attrname is None:
            raise TypeError(
                "Cannot use cached_property instance without calling __set_name__ on it."
            )
        try:
            cache = instance.__dict__
        except AttributeError:
            raise TypeError(
                f"No '__dict__' attribute on {type(instance).__name__!r} instance to cache "
                f"{self.attrname!r} property."
            ) from None
        value = cache.get(self.attrname, _NOT_FOUND)
        if value is _NOT_FOUND:
            value = self.func(instance)
            cache[self.attrname] = value
        return value


KernelCachedProperty.__name__ = KernelCachedProperty.__qualname__ = "cached_property"
KernelCachedProperty.__module__ = "functools"


def _freeze_class_attributes() -> None:
    """:data:`~pyrecks.compiler.rulebook.FROZEN_CLASS_ATTRIBUTES`: dicts become read-only."""
    for dotted, names in rulebook.FROZEN_CLASS_ATTRIBUTES.items():
        cls = _resolve_type(dotted)
        for name in names if cls is not None else ():
            value = cls.__dict__.get(name)
            if _real_type(value) is dict:
                _real_setattr(cls, name, types.MappingProxyType(dict(value)))


_freeze_class_attributes()


def _holds_kernel_value(values: Iterable[Any], depth: int = 0) -> bool:
    """Whether ``values`` (nested tuples and lists too) hold an instance of a kernel class."""
    for value in values:
        kind = _real_type(value)
        if kind is tuple or kind is list:
            if depth < 10 and _holds_kernel_value(value, depth + 1):
                return True
        elif kind is not type and kind is not str and is_kernel_class(kind):
            return True
    return False


def _kernel_values_uncached(cached: Callable[..., Any]) -> Callable[..., Any]:
    def filtered(*args: Any, **kwargs: Any) -> Any:
        if _holds_kernel_value(args) or (kwargs and _holds_kernel_value(kwargs.values())):
            raise TypeError("not cached: holds a kernel's object")  # typing falls back
        return cached(*args, **kwargs)

    return filtered


def _uncache_kernel_values_in_typing() -> None:
    """Keep kernels' objects out of ``typing``'s process-wide caches.

    ``typing.Literal[o]``, ``typing.List[o]`` (any callable passes) and
    ``typing.Annotated[int, o]`` are cached by their arguments (``functools.lru_cache``):
    ``o`` would stay there, be handed back to the next call whose argument compares equal
    (``o.__eq__`` decides), and its methods (``__repr__``, ``__eq__``) would run with the
    old ``self`` later — state kept between calls, and kernel code run inside other
    kernels' calls.  typing's cache wrapper calls the function uncached when the cache
    raises ``TypeError`` (an unhashable argument), so each cache is wrapped to raise it for
    arguments that hold an instance of a kernel class.
    """
    candidates: list[Any] = []
    for obj in vars(typing).values():
        if isinstance(obj, type):
            for value in vars(obj).values():
                candidates.append(_real_getattr(value, "__func__", value))
        elif isinstance(obj, typing._SpecialForm):
            candidates.append(_real_getattr(obj, "_getitem", None))
    done: set[int] = set()
    for function in candidates:
        for cell in _real_getattr(function, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(contents, functools._lru_cache_wrapper) and id(contents) not in done:
                done.add(id(contents))
                cell.cell_contents = _kernel_values_uncached(contents)
    # From 3.12 on, typing's wrapper looks its cache up in the module-level ``_caches``.
    caches = _real_getattr(typing, "_caches", None)
    if isinstance(caches, dict):
        for key, cache in list(caches.items()):
            if isinstance(cache, functools._lru_cache_wrapper):
                caches[key] = _kernel_values_uncached(cache)


_uncache_kernel_values_in_typing()


_real_enum_create = enum.EnumType._create_  # type: ignore[attr-defined]


def _guarded_enum_create(cls: Any, class_name: Any, names: Any, **options: Any) -> Any:
    """``Enum("E", names)`` (the functional API) with member names judged like class bodies.

    The functional API turns every name into a class attribute: ``("__del__", f)`` would
    install a finalizer (run by the garbage collector, outside any time limit),
    ``("__init_subclass__", f)`` or ``("__reduce_ex__", f)`` a hook — everything the
    rewriter refuses in a class statement.  Names must be plain ``str`` and not start with
    ``_``.
    """
    # Materialised once (a kernel's iterable or pair could answer differently the second
    # time): a plain str, a dict, or a list of str and tuples.
    if isinstance(names, str):
        names = _exact(names)
        listed: list[Any] = names.replace(",", " ").split()
    elif isinstance(names, Mapping):
        names = dict(names)
        listed = list(names)
    else:
        names = [item if _real_type(item) is str else tuple(item) for item in names]
        listed = [item if _real_type(item) is str else item[0] for item in names]
    for name in listed:
        if _real_type(name) is not str:
            _refuse("enum member names must be plain strings")
        if name.startswith("_"):
            _refuse(
                f"enum member name {name!r}: the functional API makes every name a class "
                "attribute, and names starting with '_' would install hooks or private "
                "attributes; name members without a leading underscore"
            )
    return _real_enum_create(cls, class_name, names, **options)


enum.EnumType._create_ = _guarded_enum_create  # type: ignore[attr-defined]


#: The replacements the sandbox's module proxies hand out for these names.
LIBRARY_OVERRIDES: dict[str, dict[str, Any]] = {
    "dataclasses": {"dataclass": guarded_dataclass},
    "functools": {
        "total_ordering": guarded_total_ordering,
        "cached_property": KernelCachedProperty,
    },
    "typing": {"final": guarded_final, "overload": guarded_overload},
    "re": dict(_RE_FUNCTIONS),
}


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
            problem = _class_state(value, 0)
        if problem is not None:
            _refuse(
                f"module-level name {name!r} {problem}: module level may bind only immutable "
                "values (numbers, strings, bytes, tuples and frozensets of them, functions, "
                "classes); build it inside the function"
            )


def _class_state(cls: type, depth: int) -> str | None:
    """What in a module-level kernel class (and the classes nested in it) keeps state.

    Also seals the class (:data:`_SEALED`) and freezes the dicts class factories leave on it
    (``namedtuple``'s ``_field_defaults``), which kernels may read and would otherwise fill.
    """
    _SEALED.add(cls)
    for attr, value in list(vars(cls).items()):
        if attr in _FACTORY_ATTRIBUTES:
            if _real_type(value) is dict:
                type.__setattr__(cls, attr, types.MappingProxyType(dict(value)))
            continue
        if rulebook.is_dunder(attr) or rulebook.is_sunder(attr):
            continue
        if isinstance(value, type) and is_kernel_class(value) and depth < 20:
            problem = _class_state(value, depth + 1)
            if problem is not None:
                return problem
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
        names["with"]: with_,
        names["finally"]: finally_,
        names["base"]: BaseException,
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
