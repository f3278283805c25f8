"""Kernel records in Redis: atomic batch install, seed-style kernels, in-place promotion.

A kernel lives under ``keyspace.kernel(name)`` (the bare name by default, as in the seed) as
a hash with exactly these fields:

=============  ==========================================================================
``source``     the kernel's Python 3 source
``bytecode``   ``marshal.dumps`` of the code object (readable by one Python version only)
``magic``      ``importlib.util.MAGIC_NUMBER.hex()`` of the Python that wrote ``bytecode``
``digest``     sha256 hex of ``source`` (UTF-8)
``version``    1 for a new kernel, previous + 1 whenever its source is replaced
``compiled``   ``"1"``; a hand-written ``HSET k source … compiled 0`` means "compile me"
``signature``  JSON list of ``{name, annotation, kind, has_default}``
``lint``       JSON list of the checker's findings (warnings; errors are never stored)
``timeout``    the kernel's ``PYRECKS_TIMEOUT`` (absent when it sets none)
``retries``    the kernel's ``PYRECKS_RETRIES`` (absent when it sets none)
``updated``    unix time of the write, as a float
=============  ==========================================================================

Every name stored through pyrecks is also in the set ``keyspace.kernels``, an index that
the keys overrule: a name whose key was deleted by hand (``DEL``) is left out of every
listing (:meth:`KernelStore.names`).

The seed wrote kernels as plain strings (``SET func0 "def func0(x): …"``).  Those still work:
:meth:`KernelStore.get` returns them as records with ``compiled=False``, and the VM, on first
use, checks and compiles them with the same checker and calls :meth:`KernelStore.promote`,
which replaces the string by a full hash *only if the string is still the one that was
compiled*, so a concurrent ``SET`` (a hot patch) is never lost.

All writes are Lua scripts: a batch from ``pyrecksc compile`` is all-or-nothing, and a
promotion is a compare-and-set.  The scripts touch several kernel keys at once, so on Redis
Cluster a batch must live in one slot (give the kernels a hash-tagged prefix).
"""

from __future__ import annotations

import json
import re
import time
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from pyrecks.compiler.checker import Finding
from pyrecks.compiler.compiler import (
    MAGIC,
    CompiledKernel,
    Param,
    load_code,
    signature_from_json,
    signature_to_json,
    source_digest,
)
from pyrecks.errors import KernelNotFound, PyrecksError
from pyrecks.keys import Keyspace

RECORD_FIELDS = (
    "source",
    "bytecode",
    "format",
    "magic",
    "digest",
    "version",
    "compiled",
    "signature",
    "lint",
    "timeout",
    "retries",
    "updated",
)

# KEYS[1]: the kernels set — on Redis Cluster, where the set lives in another slot, KEYS[2]
# again (one kernel per call; the caller adds the name to the set after); KEYS[2..]: kernel
# keys.  ARGV[1]: now; then per kernel:
# name, expected TYPE, force ("1"/"0"), field count n, n field/value pairs.
# Every key is verified before anything is written, so a failed check writes nothing.
_PUT_MANY = """
local now = ARGV[1]
local pos = 2
local plans = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local name, expected, force = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
  local n = tonumber(ARGV[pos + 3])
  local t = redis.call('TYPE', key)['ok']
  if t ~= expected then
    return redis.error_reply('PYRECKS_CHANGED ' .. key .. ' is now a ' .. t)
  end
  local version = 1
  if t == 'hash' then
    if force ~= '1' and redis.call('HEXISTS', key, 'source') == 0 then
      return redis.error_reply('PYRECKS_NOTKERNEL ' .. key)
    end
    version = (tonumber(redis.call('HGET', key, 'version')) or 0) + 1
  end
  plans[#plans + 1] = {key, name, version, pos + 4, n}
  pos = pos + 4 + 2 * n
end
local versions = {}
for _, p in ipairs(plans) do
  redis.call('DEL', p[1])
  local args = {'version', tostring(p[3]), 'updated', now}
  for j = 0, p[5] - 1 do
    args[#args + 1] = ARGV[p[4] + 2 * j]
    args[#args + 1] = ARGV[p[4] + 2 * j + 1]
  end
  redis.call('HSET', p[1], unpack(args))
  if KEYS[1] ~= KEYS[2] then redis.call('SADD', KEYS[1], p[2]) end
  versions[#versions + 1] = p[3]
end
return versions
"""

# KEYS[1]: kernel key, KEYS[2]: kernels set (on a cluster KEYS[1] again: see _PUT_MANY).
# ARGV: expected source, name, now, digest, magic, then field/value pairs.  Returns the version
# written, or 0 when nothing was written (the source changed meanwhile, or another VM
# promoted the same source already).
_PROMOTE = """
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
local version
if t == 'string' then
  if redis.call('GET', key) ~= ARGV[1] then return 0 end
  version = 1
elseif t == 'hash' then
  if redis.call('HGET', key, 'source') ~= ARGV[1] then return 0 end
  local cur = redis.call('HMGET', key, 'compiled', 'magic', 'digest', 'version')
  if cur[1] == '1' and cur[2] == ARGV[5] and cur[3] == ARGV[4] then return 0 end
  version = tonumber(cur[4]) or 0
  if cur[1] ~= '1' or cur[3] ~= ARGV[4] then version = version + 1 end
  if version < 1 then version = 1 end
else
  return 0
end
redis.call('DEL', key)
local args = {'version', tostring(version), 'updated', ARGV[3]}
for i = 6, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', key, unpack(args))
if KEYS[2] ~= KEYS[1] then redis.call('SADD', KEYS[2], ARGV[2]) end
return version
"""

# KEYS[1]: kernel key.  Returns {type} or {type, payload} in one round trip.
_INSPECT = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then return {t, redis.call('HGETALL', KEYS[1])} end
if t == 'string' then return {t, redis.call('GET', KEYS[1])} end
return {t}
"""


def looks_like_kernel(source: str, name: str) -> bool:
    """Whether a plain string value is plausibly kernel ``name``'s source (``def name(``).

    The rule: some line starts (after spaces or tabs) with ``def``, the name and ``(``.
    :data:`LUA_LOOKS_LIKE_KERNEL` is the same rule for scripts (tests/test_compiler_store_rule.py
    runs both over the same values), so the store and the effect guard agree on what a kernel is.
    """
    return re.search(rf"(?m)^[ \t]*def[ \t]+{re.escape(name)}[ \t]*\(", source) is not None


#: :func:`looks_like_kernel` as a Lua expression for Redis scripts, over the Lua locals
#: ``value`` (the string) and ``name`` (the kernel name; punctuation is escaped for Lua's
#: patterns).  Use it as ``if <LUA_LOOKS_LIKE_KERNEL> then ... end``.
LUA_LOOKS_LIKE_KERNEL = (
    "(string.find('\\n' .. value, '\\n[ \\t]*def[ \\t]+' .. "
    "string.gsub(name, '%p', '%%%0') .. '[ \\t]*%(') ~= nil)"
)


@dataclass(frozen=True)
class KernelRecord:
    """A kernel as stored: a full hash record, or a seed-style string (``seed_style``)."""

    name: str
    key: str
    source: str
    compiled: bool
    bytecode: bytes | None
    magic: str | None
    digest: str
    version: int
    signature: tuple[Param, ...]
    lint: tuple[Finding, ...]
    timeout: float | None
    retries: int | None
    updated: float | None
    seed_style: bool = False

    @property
    def needs_compile(self) -> bool:
        """True for seed-style strings, ``compiled`` 0, another Python, or edited source."""
        return (
            not self.compiled
            or not self.bytecode
            or self.magic != MAGIC
            or self.digest != source_digest(self.source)
        )

    def code(self) -> types.CodeType | None:
        """The stored code object, or ``None`` when the kernel must be (re)compiled."""
        if self.needs_compile or self.bytecode is None or self.magic is None:
            return None
        return load_code(self.bytecode, self.magic)


class KernelStore:
    """Read and write kernel records for one deployment (one :class:`Keyspace`)."""

    def __init__(self, r: redis.Redis, keyspace: Keyspace | None = None) -> None:
        pool = getattr(r, "connection_pool", None)  # (none on a cluster client)
        kwargs = pool.connection_kwargs if pool is not None else r.get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise PyrecksError(
                "KernelStore needs a Redis client with decode_responses=False: kernel "
                "bytecode is binary"
            )
        self.r = r
        self.keyspace = keyspace or Keyspace()
        #: Redis Cluster: kernels live in many slots, so each is stored by itself and the
        #: kernels set (another slot) is updated after it.
        self.cluster = pool is None
        self._put = r.register_script(_PUT_MANY)
        self._promote = r.register_script(_PROMOTE)
        self._inspect = r.register_script(_INSPECT)

    # -- writing ---------------------------------------------------------------------------

    def put(self, compiled: CompiledKernel, *, force: bool = False) -> int:
        return self.put_many([compiled], force=force)[0]

    def put_many(self, compiled: Sequence[CompiledKernel], *, force: bool = False) -> list[int]:
        """Store a batch atomically (all kernels or none); return the versions written.

        Every kernel must already have passed the checker (a :class:`CompiledKernel` only
        exists if it did).  A key that holds something other than a kernel — user data under
        the same name — is refused unless ``force``, because overwriting it would lose data.
        """
        if not compiled:
            return []
        names = [k.name for k in compiled]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PyrecksError(f"the batch holds several kernels named {', '.join(duplicates)}")
        keys = [self.keyspace.kernel(k.name) for k in compiled]
        types_ = self._types(keys)
        problems: list[str] = []
        at = repr(time.time())
        chunks: list[list[Any]] = []
        for kernel, key, kind in zip(compiled, keys, types_, strict=True):
            if not force:
                problem = self._not_a_kernel(kernel.name, key, kind)
                if problem:
                    problems.append(problem)
            fields = _record_fields(kernel)
            chunk: list[Any] = [kernel.name, kind, "1" if force else "0", len(fields)]
            for field_name, value in fields.items():
                chunk += [field_name, value]
            chunks.append(chunk)
        if problems:
            raise PyrecksError(
                "refusing to overwrite data that is not a kernel (nothing was written): "
                + "; ".join(problems)
                + ". Pick another kernel name or prefix, or pass --force to overwrite"
            )
        try:
            if self.cluster:  # not atomic as a batch: each kernel is atomic by itself
                result = [
                    v
                    for k, c in zip(keys, chunks, strict=True)
                    for v in self._put(keys=[k, k], args=[at, *c])
                ]
                self.r.sadd(self.keyspace.kernels, *names)
            else:
                argv = [at, *(v for chunk in chunks for v in chunk)]
                result = self._put(keys=[self.keyspace.kernels, *keys], args=argv)
        except redis.ResponseError as exc:
            text = str(exc)
            if "PYRECKS_CHANGED" in text or "PYRECKS_NOTKERNEL" in text:
                raise PyrecksError(
                    f"a kernel key changed while the batch was being stored ({text}); nothing "
                    "was written — run the command again"
                ) from None
            raise
        return [int(v) for v in result]

    def _types(self, keys: Iterable[str]) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        return [_text(t) for t in pipe.execute()]

    def _not_a_kernel(self, name: str, key: str, kind: str) -> str | None:
        """Why ``key`` may not be overwritten by kernel ``name`` (None if it may)."""
        if kind == "none":
            return None
        if kind == "hash":
            if self.r.hexists(key, "source"):
                return None
            return f"'{key}' is a hash without a 'source' field"
        if kind == "string":
            value = self.r.get(key)
            text = _text(value) if value is not None else ""
            if looks_like_kernel(text, name):
                return None
            return f"'{key}' is a string that is not the source of def {name}(...)"
        return f"'{key}' is a Redis {kind}"

    def promote(self, name: str, compiled: CompiledKernel, expected_source: str) -> bool:
        """Replace a seed-style or uncompiled record by ``compiled`` if its source is unchanged.

        The VM calls this after compiling a kernel on first use.  Returns whether it wrote:
        ``False`` means the key changed meanwhile (someone hot-patched it: the new source
        wins) or another VM already stored this very compilation.
        """
        fields = _record_fields(compiled)
        argv: list[Any] = [
            expected_source,
            name,
            repr(time.time()),
            compiled.digest,
            compiled.magic,
        ]
        for field_name, value in fields.items():
            argv += [field_name, value]
        key = self.keyspace.kernel(name)
        index = key if self.cluster else self.keyspace.kernels
        written = self._promote(keys=[key, index], args=argv)
        if self.cluster and int(written):
            self.r.sadd(self.keyspace.kernels, name)
        return bool(int(written))

    def remove(self, name: str) -> None:
        """Delete kernel ``name``; refuse if its key holds something that is not a kernel."""
        key = self.keyspace.kernel(name)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            kind = _text(pipe.type(key))
            if kind == "none":
                index: Any = self.r if self.cluster else pipe  # (a cluster: another slot)
                in_set = index.sismember(self.keyspace.kernels, name)
                if not in_set:
                    raise KernelNotFound(f"no kernel named {name!r} (key {key!r} does not exist)")
            else:
                problem = self._not_a_kernel_watched(pipe, name, key, kind)
                if problem:
                    raise PyrecksError(f"refusing to delete {key!r}: {problem}")
            pipe.multi()
            pipe.delete(key)
            if not self.cluster:
                pipe.srem(self.keyspace.kernels, name)
            try:
                pipe.execute()
                if self.cluster:
                    self.r.srem(self.keyspace.kernels, name)
            except redis.WatchError:
                raise PyrecksError(
                    f"kernel {name!r} changed while it was being removed; run the command again"
                ) from None

    @staticmethod
    def _not_a_kernel_watched(pipe: Any, name: str, key: str, kind: str) -> str | None:
        if kind == "hash":
            return None if pipe.hexists(key, "source") else "it is a hash without 'source'"
        if kind == "string":
            value = pipe.get(key)
            text = _text(value) if value is not None else ""
            return None if looks_like_kernel(text, name) else "it is a string, not a kernel"
        return f"it is a Redis {kind}"

    # -- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> KernelRecord | None:
        """The kernel record (one round trip), or ``None`` if the key holds no kernel."""
        key = self.keyspace.kernel(name)
        reply = self._inspect(keys=[key])
        kind = _text(reply[0])
        if kind == "string":
            source = _text(reply[1])
            if not looks_like_kernel(source, name):
                return None  # ordinary data that happens to share the name
            return KernelRecord(
                name=name,
                key=key,
                source=source,
                compiled=False,
                bytecode=None,
                magic=None,
                digest=source_digest(source),
                version=0,
                signature=(),
                lint=(),
                timeout=None,
                retries=None,
                updated=None,
                seed_style=True,
            )
        if kind != "hash":
            return None
        flat = reply[1]
        data = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        if "source" not in data:
            return None  # a hash, but not a kernel record
        return record_from_hash(name, key, data)

    def require(self, name: str) -> KernelRecord:
        record = self.get(name)
        if record is None:
            raise KernelNotFound(
                f"no kernel named {name!r} (key {self.keyspace.kernel(name)!r}); install it "
                "with 'pyrecksc compile path/to/" + name + ".py'"
            )
        return record

    def names(self) -> list[str]:
        """Names of every kernel stored through pyrecks (seed-style strings appear after
        their first use, when the VM promotes them).

        The set ``keyspace.kernels`` is only an index: the key decides.  A name whose key no
        longer holds a kernel — deleted with a plain ``DEL``, or overwritten with other data —
        is left out, by the same rule as :meth:`get` (a hash with ``source``, or a string
        that :func:`looks_like_kernel`).  Reading never repairs the index (readers may lack
        write permission); writing the kernel again, or ``pyrecksc rm``, brings it back in
        line.
        """
        listed = sorted(_text(n) for n in self.r.smembers(self.keyspace.kernels))
        return [name for name, ok in zip(listed, self._hold_kernels(listed), strict=True) if ok]

    def _hold_kernels(self, names: Sequence[str]) -> list[bool]:
        """Whether each name's key holds a kernel (two pipelined round trips in all)."""
        keys = [self.keyspace.kernel(n) for n in names]
        kinds = self._types(keys)
        pipe = self.r.pipeline(transaction=False)
        for key, kind in zip(keys, kinds, strict=True):
            if kind == "hash":
                pipe.hexists(key, "source")
            elif kind == "string":
                pipe.get(key)
            else:
                pipe.exists(key)  # a placeholder answer, ignored
        answers = pipe.execute(raise_on_error=False) if keys else []
        held = []
        for name, kind, answer in zip(names, kinds, answers, strict=True):
            if kind == "hash":
                held.append(answer is True or answer == 1)
            elif kind == "string":
                text = _text(answer) if isinstance(answer, bytes | str) else ""
                held.append(looks_like_kernel(text, name))
            else:
                held.append(False)
        return held

    def summaries(self) -> list[dict[str, Any]]:
        """Name, version, compiled flag, digest and update time of every listed kernel."""
        names = self.names()
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keyspace.kernel(name), "version", "compiled", "digest", "updated")
        out = []
        for name, row in zip(names, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(row, Exception):  # a seed-style string written over the hash
                row = [None, None, None, None]
            version, compiled, digest, updated = (_text(v) if v is not None else None for v in row)
            out.append(
                {
                    "name": name,
                    "version": int(version) if version else 0,
                    "compiled": compiled == "1",
                    "digest": digest or "",
                    "updated": float(updated) if updated else None,
                }
            )
        return out


def record_from_hash(name: str, key: str, data: dict[str, Any]) -> KernelRecord | None:
    """Build a record from a hash's fields (bytes or str values); None without ``source``."""
    if "source" not in data:
        return None
    source = _text(data["source"])

    def opt(field_name: str) -> str | None:
        value = data.get(field_name)
        return _text(value) if value is not None else None

    lint_text = opt("lint")
    bytecode = data.get("bytecode")
    if isinstance(bytecode, str):
        bytecode = bytecode.encode("latin-1")
    timeout, retries, updated = opt("timeout"), opt("retries"), opt("updated")
    return KernelRecord(
        name=name,
        key=key,
        source=source,
        compiled=opt("compiled") == "1",
        bytecode=bytecode or None,
        magic=opt("magic"),
        digest=opt("digest") or source_digest(source),
        version=int(opt("version") or 0),
        signature=signature_from_json(opt("signature")),
        lint=tuple(Finding.from_dict(d) for d in json.loads(lint_text)) if lint_text else (),
        timeout=float(timeout) if timeout else None,
        retries=int(retries) if retries else None,
        updated=float(updated) if updated else None,
    )


#: The ``format`` field of records whose ``bytecode`` has the run-time guards compiled in.
#: A jailed VM runs stored bytecode only from records of this format (older records are
#: compiled again from their source).
RECORD_FORMAT = "2"


def _record_fields(kernel: CompiledKernel) -> dict[str, bytes | str]:
    """The hash fields of a record, minus ``version`` and ``updated`` (set by the scripts)."""
    fields: dict[str, bytes | str] = {
        "source": kernel.source,
        "bytecode": kernel.bytecode,
        "format": RECORD_FORMAT,
        "magic": kernel.magic,
        "digest": kernel.digest,
        "compiled": "1",
        "signature": signature_to_json(kernel.signature),
        "lint": kernel.lint_json(),
    }
    if kernel.timeout is not None:
        fields["timeout"] = repr(kernel.timeout)
    if kernel.retries is not None:
        fields["retries"] = str(kernel.retries)
    return fields


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
