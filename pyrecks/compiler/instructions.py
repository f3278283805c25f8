"""Typed, immutable instruction objects: what a parsed return string means.

The VM only ever sees these objects, never return-string text.  Values inside them are
immutable too: the language's lists become tuples and its dicts become :class:`FrozenDict`,
so an instruction can be cached, shared between threads and used as a dict key.  The VM
turns them back into ordinary lists and dicts (:func:`thaw`) before handing them to a kernel.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

#: A value of the return-string language.  ``tuple`` stands for the language's list.
Value: TypeAlias = Any


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A ``"@key"`` argument: the VM replaces it with the value of Redis key ``key``."""

    key: str


class FrozenDict(Mapping[Any, Any]):
    """A read-only, hashable mapping that compares equal to a dict with the same items."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[Any, Any] | None = None) -> None:
        self._items: dict[Any, Any] = dict(items or {})
        self._hash: int | None = None

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"


@dataclass(frozen=True, slots=True)
class Call:
    """Run kernel ``name`` with positional ``args`` as the chain's next step."""

    name: str
    args: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True)
class FanOut:
    """Run every call in ``branches`` in parallel; when all have ended, run ``join``.

    The join kernel receives the list of branch results (in branch order) as its first
    argument, followed by ``join.args``.  A branch's result is the value its sub-chain ended
    with (``return <value>``), or ``None`` when it halted with ``''``.
    """

    branches: tuple[Call, ...]
    join: Call


@dataclass(frozen=True, slots=True)
class Finish:
    """End the chain with a result value (``return <value>``)."""

    value: Value


@dataclass(frozen=True, slots=True)
class Halt:
    """End the chain without a result (the seed's empty return string ``''``)."""


@dataclass(frozen=True, slots=True)
class Effect:
    """One whitelisted Redis write, applied after the step and before the next kernel runs.

    ``command`` is upper case (``"SET"``); ``args`` are the command's arguments in Redis
    order (``("key", "value")``).  Structured values (lists, dicts) are stored msgpack-encoded.
    """

    command: str
    args: tuple[Value, ...]


Next: TypeAlias = Call | FanOut | Finish | Halt


@dataclass(frozen=True, slots=True)
class Transition:
    """Everything one return string says: the effects to apply, then what runs next."""

    then: Next
    effects: tuple[Effect, ...] = ()


HALT = Transition(Halt())


def freeze(value: Any) -> Value:
    """Turn lists and dicts (recursively) into the immutable forms instructions hold."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping) and not isinstance(value, FrozenDict):
        return FrozenDict({freeze(k): freeze(v) for k, v in value.items()})
    return value


def thaw(value: Value) -> Any:
    """Turn tuples and FrozenDicts (recursively) back into lists and dicts for kernels."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, FrozenDict):
        return {thaw(k): thaw(v) for k, v in value.items()}
    return value
