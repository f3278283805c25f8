"""The whitelist of Redis writes a return string may ask for, and their argument rules.

A kernel is pure: it cannot touch Redis.  Its return string may instead carry *effect
clauses* (``SET [("k", "v")]``) that the VM applies after the step, atomically with the
chain's checkpoint.  Only the commands in :data:`ALLOWED_COMMANDS` are accepted — each
writes exactly one key, named by ``args[0]`` — so a return string can never flush the
database, run a script or reconfigure the server.

This module is the single source of truth for those rules.  The parser, the kernel helper
(:mod:`pyrecks.kernel`) and the VM all use it; it imports nothing but the standard library
and the instruction model, because kernels import it inside the sandbox.

For the VM
----------
Every :class:`~pyrecks.compiler.instructions.Effect` the parser (or :func:`make_effect`)
produces is already validated and normalised:

* ``effect.command`` is an upper-case key of :data:`ALLOWED_COMMANDS`;
* ``effect.args`` match the command's :class:`CommandSpec`, in Redis argument order;
  ``HSET key {field: value}`` has been flattened to ``HSET key field value ...``;
* :func:`effect_key` gives the one key written (always ``args[0]``, a non-empty ``str``),
  e.g. to check it belongs to the chain's cluster slot or to log it;
* :func:`arg_roles` says what each argument is.  ``Role.KEY`` and ``Role.FIELD`` are
  strings (fields may also be ints/floats), ``Role.INT``/``Role.NUMBER`` are ints/floats
  to send as numbers, and ``Role.VALUE`` is any language value *kept exactly as parsed*:
  it may be structured (a ``tuple`` for a list, a ``FrozenDict`` for a dict), ``None`` or a
  bool.  The VM encodes ``VALUE`` arguments when it applies the effect — structured values
  are msgpack-encoded (after :func:`~pyrecks.compiler.instructions.thaw`), so a kernel that
  later receives the key via ``"@key"`` gets the same structure back.  ``Role.MAP`` (the
  XADD body) is a ``FrozenDict`` of ``FIELD -> VALUE``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyrecks.compiler.instructions import Effect, FrozenDict, KeyRef


class Role(enum.Enum):
    """What one argument of an effect is, and therefore which values it accepts."""

    KEY = "key"  #: a non-empty str: the Redis key written
    FIELD = "field"  #: a hash/stream field name: str, int or float
    VALUE = "value"  #: any language value; the VM encodes structured ones with msgpack
    INT = "integer"  #: an int (not a bool)
    NUMBER = "number"  #: an int or a finite float (not a bool)
    MAP = "map"  #: a non-empty dict of FIELD -> VALUE (XADD's entry)


class EffectError(ValueError):
    """An effect's command is not allowed or its arguments do not fit the command.

    The parser turns this into a positioned :class:`~pyrecks.errors.ReturnStringError`;
    the kernel helper turns it into a :class:`~pyrecks.errors.RenderError`.
    """


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """The argument shape of one whitelisted command.

    ``fixed`` roles come first; then ``repeat`` is repeated at least ``min_repeat`` times
    (``HSET key field value [field value ...]`` is ``fixed=(KEY,)``,
    ``repeat=(FIELD, VALUE)``, ``min_repeat=1``).
    """

    name: str
    usage: str
    fixed: tuple[Role, ...]
    repeat: tuple[Role, ...] = ()
    min_repeat: int = 0
    summary: str = ""

    def arity_text(self) -> str:
        """Human description of the argument count, for error messages."""
        if not self.repeat:
            n = len(self.fixed)
            return f"exactly {n} argument{'s' if n != 1 else ''}"
        least = len(self.fixed) + self.min_repeat * len(self.repeat)
        step = len(self.repeat)
        text = f"at least {least} arguments"
        if step > 1:
            text += f" ({len(self.fixed)} + a multiple of {step})"
        return text

    def roles_for(self, count: int) -> tuple[Role, ...] | None:
        """The role of each of ``count`` arguments, or None when the count does not fit."""
        if not self.repeat:
            return self.fixed if count == len(self.fixed) else None
        rest = count - len(self.fixed)
        step = len(self.repeat)
        if rest < self.min_repeat * step or rest % step:
            return None
        return self.fixed + self.repeat * (rest // step)


_K, _F, _V, _I, _N, _M = Role.KEY, Role.FIELD, Role.VALUE, Role.INT, Role.NUMBER, Role.MAP


def _spec(name: str, usage: str, fixed: tuple[Role, ...], repeat: tuple[Role, ...] = (),
          summary: str = "") -> CommandSpec:
    return CommandSpec(name, usage, fixed, repeat, 1 if repeat else 0, summary)


#: Upper-case command name -> its argument shape.  Every command writes one key, ``args[0]``.
ALLOWED_COMMANDS: Mapping[str, CommandSpec] = {
    s.name: s
    for s in (
        _spec("SET", "SET key value", (_K, _V), summary="set a string key"),
        _spec("DEL", "DEL key", (_K,), summary="delete a key"),
        _spec("INCRBY", "INCRBY key integer", (_K, _I), summary="add to an integer key"),
        _spec("INCRBYFLOAT", "INCRBYFLOAT key number", (_K, _N),
              summary="add to a float key"),
        _spec("HSET", "HSET key field value [field value ...]  or  HSET key {field: value}",
              (_K,), (_F, _V), summary="set hash fields"),
        _spec("HDEL", "HDEL key field [field ...]", (_K,), (_F,),
              summary="delete hash fields"),
        _spec("RPUSH", "RPUSH key value [value ...]", (_K,), (_V,),
              summary="append to a list"),
        _spec("LPUSH", "LPUSH key value [value ...]", (_K,), (_V,),
              summary="prepend to a list"),
        _spec("SADD", "SADD key member [member ...]", (_K,), (_V,),
              summary="add set members"),
        _spec("SREM", "SREM key member [member ...]", (_K,), (_V,),
              summary="remove set members"),
        _spec("ZADD", "ZADD key score member [score member ...]", (_K,), (_N, _V),
              summary="add scored members to a sorted set"),
        _spec("ZINCRBY", "ZINCRBY key increment member", (_K, _N, _V),
              summary="add to a member's score"),
        _spec("XADD", "XADD key {field: value, ...}", (_K, _M),
              summary="append an entry (auto id) to a stream"),
        _spec("EXPIRE", "EXPIRE key seconds", (_K, _I), summary="set a TTL in seconds"),
        _spec("PEXPIRE", "PEXPIRE key milliseconds", (_K, _I),
              summary="set a TTL in milliseconds"),
    )
}


def allowed_text() -> str:
    """The allowed command names as one comma-separated string, for messages."""
    return ", ".join(ALLOWED_COMMANDS)


def effect_key(effect: Effect) -> str:
    """The Redis key ``effect`` writes.  Every whitelisted command writes exactly one."""
    key = effect.args[0]
    assert isinstance(key, str)
    return key


def arg_roles(effect: Effect) -> tuple[Role, ...]:
    """The :class:`Role` of each argument of a validated ``effect``."""
    roles = ALLOWED_COMMANDS[effect.command].roles_for(len(effect.args))
    if roles is None:
        raise EffectError(f"{effect.command} cannot take {len(effect.args)} arguments")
    return roles


def _type_name(value: Any) -> str:
    if isinstance(value, KeyRef):
        return "a key reference"
    if isinstance(value, tuple | list):
        return "a list"
    if isinstance(value, Mapping):
        return "a dict"
    if value is None:
        return "None"
    return f"{type(value).__name__} {value!r}"


def _role_problem(role: Role, value: Any) -> str | None:
    """Why ``value`` cannot fill ``role``, or None when it can."""
    if isinstance(value, KeyRef):
        return (
            f'a "@{value.key}" key reference cannot be used in an effect (only as a whole '
            f'argument of a call); write "@@{value.key}" for the literal string'
        )
    kind = type(value)
    if role is Role.VALUE:
        return None
    if role is Role.KEY:
        if kind is not str and not isinstance(value, str):
            return f"the key must be a string, not {_type_name(value)}"
        if not value:
            return "the key must not be empty"
        return None
    if role is Role.FIELD:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"a field name must be a string or a number, not {_type_name(value)}"
        return None
    if role is Role.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, not {_type_name(value)}"
        return None
    if role is Role.NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, not {_type_name(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number, not {value!r}"
        return None
    # Role.MAP
    if not isinstance(value, Mapping) or not value:
        return f"expected a non-empty dict of field: value, not {_type_name(value)}"
    for field in value:
        problem = _role_problem(Role.FIELD, field)
        if problem:
            return problem
    return None


def make_effect(command: str, args: tuple[Any, ...]) -> Effect:
    """Validate and normalise one invocation; the result is what the VM will apply.

    ``command`` is matched case-insensitively.  ``HSET key {field: value, ...}`` is
    flattened to field/value pairs.  Raises :class:`EffectError` with a message that says
    what is wrong and how the command is written.
    """
    name = command.upper()
    spec = ALLOWED_COMMANDS.get(name)
    if spec is None:
        raise EffectError(
            f"{command!r} is not an allowed effect command; allowed: {allowed_text()}"
        )
    if name == "HSET" and len(args) == 2 and isinstance(args[1], Mapping):
        if not args[1]:
            raise EffectError("HSET with a dict needs at least one field; usage: " + spec.usage)
        flat: list[Any] = [args[0]]
        for field, value in args[1].items():
            flat += (field, value)
        args = tuple(flat)
    roles = spec.roles_for(len(args))
    if roles is None:
        raise EffectError(
            f"{name} takes {spec.arity_text()}, got {len(args)}; usage: {spec.usage}"
        )
    for i, (role, value) in enumerate(zip(roles, args, strict=True)):
        problem = _role_problem(role, value)
        if problem:
            raise EffectError(f"{name} argument {i + 1} ({role.value}): {problem}")
    if name == "XADD" and not isinstance(args[1], FrozenDict):
        args = (args[0], FrozenDict(args[1]))
    return Effect(name, args)
