"""Build return strings in kernels, correctly quoted and escaped.

A kernel says what happens next by returning a string such as ``func1("say hi")``.
Building that string with ``%``-formatting or f-strings breaks as soon as a value holds a
quote — and worse, lets data inject instructions (a value ``x") SET [("admin", "1")] #``
becomes an extra write).  These helpers render the string from Python values instead::

    from pyrecks.kernel import call, done, halt, fanout, branch, key

    def func0(x):
        return call("func1", x + "3", set={"last_x": x})
        # 'func1("...3") SET [("last_x", "...")]'

    call("report", key("totals"))          # 'report("@totals")': the VM passes the key's value
    call("echo", "@home")                  # 'echo("@@home")': a literal, escaped for you
    call("f", 1, effects=[("INCRBY", "hits", 1), ("HSET", "h", "field", "v")])
    done({"total": 3})                     # 'return {"total": 3}': end with a result
    halt(set={"status": "ok"})             # 'SET [("status", "ok")]': write, then halt
    fanout([branch("f", "a"), branch("g", 1)], join=branch("merge", "x"))
                                           # '[f("a"), g(1)] -> merge("x")'

Every helper validates eagerly and raises :class:`~pyrecks.errors.RenderError` from the
kernel's own line (a bad command name, a NaN, a set, a misplaced ``key(...)``), instead of
the chain failing later in the VM.

Kernels import this module inside the sandbox, so it depends only on the standard library
and pyrecks' instruction model and renderer — never on Lark, Redis or click.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyrecks.compiler.effects import EffectError, make_effect
from pyrecks.compiler.instructions import (
    Call,
    Effect,
    FanOut,
    Finish,
    Halt,
    KeyRef,
    Transition,
    freeze,
)
from pyrecks.compiler.render import render, render_value
from pyrecks.errors import RenderError

__all__ = ["branch", "call", "done", "fanout", "halt", "key"]

#: ``set=``: a mapping ``{key: value}`` or an iterable of ``(key, value)`` pairs.
SetSpec = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
#: ``effects=``: ``(COMMAND, arg, ...)`` tuples (or Effect objects), applied in order.
EffectsSpec = Iterable[Sequence[Any] | Effect]

_KEYWORDS = frozenset(keyword.kwlist)


def key(name: str) -> KeyRef:
    """A reference to Redis key ``name``: the next kernel receives the key's value.

    Only allowed as a whole argument of :func:`call`, :func:`branch` or a join.
    """
    if not isinstance(name, str) or not name:
        raise RenderError(f"key() needs a non-empty key name, got {name!r}")
    if name[0] == "@":
        raise RenderError(f"key {name!r} starts with '@' and cannot be referenced; rename it")
    return KeyRef(name)


def _check_name(name: Any, what: str = "kernel") -> str:
    if not isinstance(name, str) or not name.isidentifier() or name in _KEYWORDS:
        raise RenderError(
            f"{name!r} is not a valid {what} name: use a Python identifier that is not a "
            "keyword (the name of the kernel's entry function)"
        )
    return name


def branch(name: str, *args: Any) -> Call:
    """One call of a fan-out (or its join): ``branch("f", 1, key("k"))``."""
    _check_name(name)
    frozen = tuple(a if isinstance(a, KeyRef) else freeze(a) for a in args)
    for a in frozen:
        if not isinstance(a, KeyRef):
            render_value(a)  # validate now, at the kernel's line
    return Call(name, frozen)


def _effects(set_: SetSpec, effects: EffectsSpec) -> tuple[Effect, ...]:
    out: list[Effect] = []
    if set_ is not None:
        pairs = set_.items() if isinstance(set_, Mapping) else set_
        for pair in pairs:
            try:
                k, v = pair
            except (TypeError, ValueError):
                raise RenderError(f"set= items must be (key, value) pairs, got {pair!r}") from None
            out.append(_effect("SET", (k, v)))
    for spec in effects:
        if isinstance(spec, Effect):
            out.append(_effect(spec.command, spec.args))
            continue
        if isinstance(spec, str) or not isinstance(spec, Sequence) or not spec:
            raise RenderError(
                f"each effect is a tuple (COMMAND, arg, ...), e.g. ('INCRBY', 'hits', 1); "
                f"got {spec!r}"
            )
        command, *args = spec
        if not isinstance(command, str):
            raise RenderError(f"effect command must be a string such as 'SET', got {command!r}")
        out.append(_effect(command, tuple(args)))
    return tuple(out)


def _effect(command: str, args: tuple[Any, ...]) -> Effect:
    frozen = tuple(freeze(a) for a in args)
    try:
        effect = make_effect(command, frozen)
    except EffectError as exc:
        raise RenderError(str(exc)) from None
    for a in effect.args:
        render_value(a)  # NaN, sets, nested key() ... fail here
    return effect


def _render(then: Any, set_: SetSpec, effects: EffectsSpec) -> str:
    # Only text leaves a kernel: the VM parses it with the language's limits, whatever
    # produced it (a helper here, or a kernel that broke out of its guards).
    return render(Transition(then, _effects(set_, effects)))


def call(name: str, *args: Any, set: SetSpec = None, effects: EffectsSpec = ()) -> str:
    """``name(args...)``, optionally with effects applied before ``name`` runs.

    ``set={"k": v}`` adds ``SET [("k", v)]``; ``effects=[("INCRBY", "c", 1), ...]`` adds any
    whitelisted command (see ``docs/return-strings.md``).  ``set`` effects come first.
    Arguments may be str, int, float, bool, None, lists/tuples, dicts, or :func:`key`.
    """
    return _render(branch(name, *args), set, effects)


def done(value: Any = None, *, set: SetSpec = None, effects: EffectsSpec = ()) -> str:
    """``return value``: end the chain with ``value`` as its result (after the effects)."""
    frozen = freeze(value)
    render_value(frozen)
    return _render(Finish(frozen), set, effects)


def halt(*, set: SetSpec = None, effects: EffectsSpec = ()) -> str:
    """End the chain without a result: ``''``, or just the effect clauses."""
    return _render(Halt(), set, effects)


def fanout(
    branches: Iterable[Call | str],
    join: Call | str,
    *,
    set: SetSpec = None,
    effects: EffectsSpec = (),
) -> str:
    """Run ``branches`` in parallel, then ``join`` with the list of their results.

    Each branch is a :func:`branch` (or a bare kernel name for a call without arguments).
    The join kernel receives the branch results (in branch order) as its first argument,
    followed by the join's own arguments: ``join=branch("merge", "x")`` calls
    ``merge(results, "x")``.
    """
    calls = tuple(b if isinstance(b, Call) else branch(b) for b in branches)
    if not calls:
        raise RenderError("fanout() needs at least one branch")
    join_call = join if isinstance(join, Call) else branch(join)
    return _render(FanOut(calls, join_call), set, effects)
