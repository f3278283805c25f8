"""The sandbox policy: what kernels may import, call and write, shared through Redis.

The same :class:`Policy` object drives the static checker (``pyrecksc lint`` / ``compile``)
and every VM's run-time guards.  It lives in Redis, in the hash ``keyspace.policy``, so that a
kernel accepted at compile time is judged by exactly the rules the VMs enforce: there is one
copy of the policy per deployment, not one per process.  A deployment that never wrote a
policy uses :class:`Policy`'s defaults, which are also what ``pyrecksc lint`` uses offline.

Each field is stored in its own hash field as JSON, so an operator can read or change one
setting with ``redis-cli`` (``HSET pyrecks:policy default_timeout 10``) as well as with
``pyrecksc policy set``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import redis

from pyrecks.compiler import rulebook
from pyrecks.errors import PyrecksError
from pyrecks.keys import Keyspace

#: The policy's defaults come from the rule book (:mod:`pyrecks.compiler.rulebook`), which
#: says per module which names kernels may use.  An operator may allow more modules (their
#: public names are then allowed wholesale) or forbid more builtins and attributes.
DEFAULT_ALLOWED_MODULES: frozenset[str] = frozenset(rulebook.MODULES)

#: Builtins a kernel may not name at all: I/O, code execution, scope reflection, interactive
#: helpers (PK201).
DEFAULT_FORBIDDEN_BUILTINS: frozenset[str] = frozenset(rulebook.FORBIDDEN_BUILTINS)

#: ``module.attribute`` names refused although their module is allowed, with the rule book's
#: reasons (they evaluate strings, read attributes by name, do I/O or change shared state).
DEFAULT_FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset(rulebook.REFUSED_MODULE_NAMES)


@dataclass(frozen=True)
class Policy:
    """The rules every kernel of one deployment is checked and run under.

    ``effect_key_patterns`` are glob patterns (Redis ``MATCH`` syntax) that the keys written by
    return-string effects must match; empty means "any key that is neither a kernel nor a
    pyrecks-internal key".  ``input_key_patterns`` are the same for the keys ``@key``
    arguments read (empty: any key that is neither a kernel nor pyrecks-internal).
    ``max_descendants`` caps the fan-out branches one started chain and all its branches
    create in all (nested fan-outs would otherwise grow a start exponentially).
    ``default_timeout`` applies to kernels that do not set
    ``PYRECKS_TIMEOUT``; ``max_timeout`` caps what a kernel may ask for.
    """

    allowed_modules: frozenset[str] = DEFAULT_ALLOWED_MODULES
    forbidden_builtins: frozenset[str] = DEFAULT_FORBIDDEN_BUILTINS
    forbidden_attributes: frozenset[str] = DEFAULT_FORBIDDEN_ATTRIBUTES
    default_timeout: float = 30.0
    max_timeout: float = 3600.0
    default_retries: int = 0
    max_retries: int = 100
    effect_key_patterns: tuple[str, ...] = ()
    input_key_patterns: tuple[str, ...] = ()
    max_descendants: int = 10_000
    warn_nondeterminism: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.default_timeout <= 0 or self.max_timeout <= 0:
            raise PyrecksError("policy: timeouts must be positive numbers of seconds")
        if self.default_timeout > self.max_timeout:
            raise PyrecksError(
                f"policy: default_timeout {self.default_timeout} exceeds "
                f"max_timeout {self.max_timeout}"
            )
        if self.default_retries < 0 or self.max_retries < 0:
            raise PyrecksError("policy: retries must be >= 0")
        if self.max_descendants < 1:
            raise PyrecksError("policy: max_descendants must be at least 1")

    # -- questions the checker and the VM ask -------------------------------------------

    def module_allowed(self, dotted: str) -> bool:
        """Whether ``import dotted`` is allowed (exact name; submodules are listed apart)."""
        return dotted in self.allowed_modules

    # -- serialisation ------------------------------------------------------------------

    def to_fields(self) -> dict[str, str]:
        """One JSON-encoded value per field: the layout of the Redis policy hash."""
        out: dict[str, str] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, frozenset | tuple):
                value = sorted(value) if isinstance(value, frozenset) else list(value)
            out[f.name] = json.dumps(value)
        for key, value in self.extra.items():
            out[key] = json.dumps(value)
        return out

    @classmethod
    def from_fields(cls, data: Mapping[str, str]) -> Policy:
        """Build a policy from a hash's fields; absent fields keep their defaults.

        Unknown fields are kept in ``extra`` (a newer pyrecks may have written them) so that
        ``save_policy`` does not silently drop them.
        """
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, raw in data.items():
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise PyrecksError(
                    f"policy field {key!r} is not valid JSON ({exc}); "
                    "fix it with 'pyrecksc policy set' or HSET a JSON value"
                ) from exc
            if key not in known:
                extra[key] = value
                continue
            kwargs[key] = _coerce(key, value)
        return cls(**kwargs, extra=extra)

    def to_json(self) -> str:
        """The whole policy as one JSON document (for ``--policy FILE`` and ``policy show``)."""
        doc = {key: json.loads(value) for key, value in self.to_fields().items()}
        return json.dumps(doc, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """Inverse of :meth:`to_json`; fields left out keep their defaults."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PyrecksError(f"policy file is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise PyrecksError("policy file must hold a JSON object")
        return cls.from_fields({key: json.dumps(value) for key, value in doc.items()})

    def with_changes(self, **changes: Any) -> Policy:
        """A copy with some fields replaced (values are coerced like stored ones)."""
        return replace(self, **{k: _coerce(k, v) for k, v in changes.items()})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(key: str, value: Any) -> Any:
    """Turn a JSON value into the field's Python type, with an error naming the field."""
    try:
        if key in ("allowed_modules", "forbidden_builtins", "forbidden_attributes"):
            if not isinstance(value, list | tuple | set | frozenset) or not all(
                isinstance(v, str) for v in value
            ):
                raise TypeError("expected a list of strings")
            return frozenset(value)
        if key in ("effect_key_patterns", "input_key_patterns"):
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError("expected a list of glob patterns")
            return tuple(value)
        if key in ("default_timeout", "max_timeout"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("expected a number of seconds")
            return float(value)
        if key in ("default_retries", "max_retries", "max_descendants"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("expected an integer")
            return value
        if key == "warn_nondeterminism":
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
    except TypeError as exc:
        raise PyrecksError(f"policy field {key!r}: {exc}, got {value!r}") from None
    return value


def load_policy(r: redis.Redis, keyspace: Keyspace | None = None) -> Policy:
    """The deployment's policy from Redis, or the defaults if none was ever saved."""
    ks = keyspace or Keyspace()
    raw = r.hgetall(ks.policy)
    if not raw:
        return Policy()
    return Policy.from_fields({_text(k): _text(v) for k, v in raw.items()})


def save_policy(r: redis.Redis, keyspace: Keyspace | None, policy: Policy) -> None:
    """Replace the deployment's policy atomically (one MULTI/EXEC: DEL then HSET)."""
    ks = keyspace or Keyspace()
    pipe = r.pipeline(transaction=True)
    pipe.delete(ks.policy)
    pipe.hset(ks.policy, mapping=policy.to_fields())  # type: ignore[arg-type]
    pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
