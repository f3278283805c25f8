"""Loading kernels for the VM: from Redis record to compiled code ready for an executor.

The loader never runs kernel code: it decides *which code* a kernel's steps run and hands
that to the executor (a jailed cell, a worker process or the VM's own thread), which runs
it.  A cache keyed by source digest makes hot patch cheap: a new source takes effect at the
next step of every running chain, while a step already running finishes on the code it
started with.

Where the code comes from depends on what stands between it and the host:

* **jail** (``trust_stored_code=True``): the compiled code *stored in the kernel's hash* is
  what runs, as the brief always meant — compile once per kernel version, not once per VM
  process.  It is used when the record says it was compiled (``compiled`` = 1), by this
  Python (``magic``), from this very source (``digest``), with guards compiled in
  (``format``).  The VM never unmarshals those bytes: a crafted marshal stream can ask for
  gigabytes in a few bytes, so only the cell reads it, under its memory and time limits.
  A crafted code object can only hurt its own cell.  The record's metadata is untrusted
  too: the signature must have the expected shape, and its time limit and retries are
  capped by the policy.
* **process / thread**: no operating-system boundary, so the VM trusts nothing it did not
  compile itself: every kernel version is checked and compiled (guards included) once per
  process from its source, and stored bytecode is ignored.

Sources that were never compiled (the seed's ``SET func0 "<source>"``, or a hash with
``compiled`` = 0) go through the same checker as ``pyrecksc compile`` and the compiled record
is written back in place (``KernelStore.promote``), in every mode.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from pyrecks.compiler.compiler import (
    MAGIC,
    CompiledKernel,
    Param,
    compile_kernel,
    signature_from_json,
)
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.store import RECORD_FORMAT, KernelStore, looks_like_kernel
from pyrecks.errors import KernelNotFound, KernelRejected

#: Kernel versions the checker refused, remembered so a chain retried in a loop does not
#: make the VM check the same source again and again.
_REJECTED_CACHE = 256
#: Stored code larger than this is not sent to a cell (the source is compiled instead).
MAX_STORED_CODE = 16 * 1024 * 1024


@dataclass(frozen=True)
class LoadedKernel:
    """A kernel version ready to run: its code and what the VM needs to call it."""

    name: str
    digest: str
    params: tuple[Param, ...]
    timeout: float | None
    retries: int | None
    source: str
    #: The module's code, marshalled, with the run-time guards compiled in.
    bytecode: bytes

    @functools.cached_property
    def code_key(self) -> str:
        """What identifies the code that runs: a cell serves exactly one such key.

        The source digest alone is not enough: in a jail the stored bytecode runs, and two
        records may pair one source with different code.
        """
        return f"{self.name}:{hashlib.sha256(self.bytecode).hexdigest()}"


def _plain_param(param: Param) -> bool:
    """A parameter as the compiler writes it (a record's signature is untrusted data)."""
    return (
        isinstance(param.name, str)
        and (param.annotation is None or isinstance(param.annotation, str))
        and param.kind
        in ("positional_only", "positional_or_keyword", "var_positional", "keyword_only",
            "var_keyword")
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class KernelLoader:
    """Per-process cache of kernel versions, keyed by source digest."""

    def __init__(self, store: KernelStore, policy: Policy, *, trust_stored_code: bool) -> None:
        self.store = store
        self.policy = policy
        self.trust_stored_code = trust_stored_code
        #: (name, source digest) -> kernel: two names never share an entry, whatever their text.
        self._loaded: dict[tuple[str, str], LoadedKernel] = {}
        self._digest_of: dict[str, str] = {}
        self._rejected: dict[str, KernelRejected] = {}
        self._lock = threading.Lock()

    def cached(self, name: str) -> LoadedKernel | None:
        """The kernel this process last ran for ``name``, if still cached."""
        return self._loaded.get((name, self._digest_of.get(name, "")))

    def known_digest(self, name: str) -> str:
        """The digest this process last ran for ``name`` ('' if none)."""
        return self._digest_of.get(name, "")

    def resolve(self, name: str, state: str, payload: Any) -> LoadedKernel:
        """Turn the PREPARE script's answer about kernel ``name`` into a loaded kernel."""
        if state == "same":
            cached = self._loaded.get((name, self._digest_of.get(name, "")))
            if cached is not None:
                return cached
            state, payload = "hash", None  # cache evicted under us: reload fully
        if state == "none":
            raise KernelNotFound(
                f"kernel {name!r} does not exist in Redis; store it with "
                f"'pyrecksc compile {name}.py' or SET {self.store.keyspace.kernel(name)} "
                "'<source>'"
            )
        if state == "string":
            source = _text(payload)
            self._require_kernel_text(name, source, "string")
            return self._from_source(name, source)
        if state == "hash":
            fields = self._fields(name, payload)
            return self._from_record(name, fields)
        raise KernelNotFound(
            f"key {self.store.keyspace.kernel(name)!r} holds a {state}, not a kernel; "
            "a kernel is a hash written by pyrecksc compile or a string of Python source"
        )

    def _require_kernel_text(self, name: str, source: str, kind: str) -> None:
        """Run only what the store's one rule calls kernel ``name``'s source.

        :func:`~pyrecks.compiler.store.looks_like_kernel` (a line ``def NAME(``) is the rule
        the effect guard applies, in Lua, to every value an effect writes; a key whose text
        Python would still compile into ``NAME`` (``def\\fNAME(``, lines ended by ``\\r``,
        an NFKC twin of the name) is therefore one an effect *can* write, and must never
        be run as a kernel.  One rule on both sides: effects cannot make kernels.
        """
        if looks_like_kernel(source, name):
            return
        raise KernelNotFound(
            f"key {self.store.keyspace.kernel(name)!r} is a {kind} without a line "
            f"'def {name}(' in its source, so it is not kernel {name!r} (a kernel's source "
            "defines it as 'def NAME(' at the start of a line, spaces or tabs around the "
            "name); store kernels with 'pyrecksc compile'"
        )

    def near_names(self, name: str) -> str:
        """" (did you mean …?)" for a kernel name that does not exist; "" if none is close."""
        try:
            names = self.store.names()
        except Exception:  # a hint must never turn one failure into another
            return ""
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
        return f" (did you mean {', '.join(close)}?)" if close else ""

    def source_hint(self, name: str) -> str:
        """Why a refused kernel's stored text may not be what its author meant: backslash-n
        typed for line breaks on a shell line, or Python 2 (the seed's kernels)."""
        from pyrecks.compiler.upgrade import escaped_newlines_hint, looks_like_python2

        try:
            raw: Any = self.store.r.get(self.store.keyspace.kernel(name))
        except Exception:  # not a string kernel (a hash), or Redis went away: no hint
            return ""
        if raw is None:
            return ""
        source = _text(raw)
        hint = escaped_newlines_hint(source, name)
        if hint:
            return f". {hint}"
        if looks_like_python2(source):
            return (
                f". {name} looks like Python 2 (the seed's kernels are): "
                f"'pyrecksc upgrade --stored {name}' shows the Python 3 version, --write stores it"
            )
        return ""

    def _fields(self, name: str, payload: Any) -> dict[str, bytes]:
        if payload is None:
            raw: Any = self.store.r.hgetall(self.store.keyspace.kernel(name))
            return {_text(k): v for k, v in raw.items()}
        items = list(payload)
        return {_text(items[i]): items[i + 1] for i in range(0, len(items), 2)}

    def _from_record(self, name: str, fields: dict[str, bytes]) -> LoadedKernel:
        if "source" not in fields:
            raise KernelNotFound(
                f"key {self.store.keyspace.kernel(name)!r} is a hash without a 'source' "
                "field, not a kernel record"
            )
        source = _text(fields["source"])
        self._require_kernel_text(name, source, "hash")
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        cached = self._cached(name, digest)
        if cached is not None:
            return cached
        compiled_flag = _text(fields.get("compiled", b"0")) == "1"
        stored_digest = _text(fields.get("digest", b""))
        bytecode = bytes(fields.get("bytecode", b""))
        usable = (
            compiled_flag
            and stored_digest == digest
            and 0 < len(bytecode) <= MAX_STORED_CODE
            and _text(fields.get("magic", b"")) == MAGIC
        )
        if not usable:
            # Never compiled, hand-edited, or from another Python: compile and store it.
            return self._from_source(name, source)
        if self.trust_stored_code and _text(fields.get("format", b"")) == RECORD_FORMAT:
            stored = self._stored(name, digest, source, bytecode, fields)
            if stored is not None:
                return stored
        # No jail: re-check and compile the source once per process under today's policy
        # (the stored bytes are never read: nothing but our own compiler stands behind them).
        return self._install(name, self._compile(name, source, digest))

    def _stored(
        self, name: str, digest: str, source: str, bytecode: bytes, fields: dict[str, bytes]
    ) -> LoadedKernel | None:
        """The record's own code and metadata, or None if its metadata does not parse."""
        try:
            params = signature_from_json(fields.get("signature"))
            timeout_text = _text(fields.get("timeout", b""))
            retries_text = _text(fields.get("retries", b""))
            timeout = float(timeout_text) if timeout_text else None
            retries = int(retries_text) if retries_text else None
        except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
            return None
        if not all(_plain_param(p) for p in params):
            return None
        if timeout is not None:
            if not timeout > 0:  # NaN and negatives
                return None
            timeout = min(timeout, self.policy.max_timeout)
        if retries is not None:
            retries = max(0, min(retries, self.policy.max_retries))
        kernel = LoadedKernel(name, digest, params, timeout, retries, source, bytecode)
        return self._remember(kernel)

    def _from_source(self, name: str, source: str) -> LoadedKernel:
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        cached = self._cached(name, digest)
        if cached is not None:
            return cached
        compiled = self._compile(name, source, digest)
        self.store.promote(name, compiled, source)
        return self._install(name, compiled)

    def _compile(self, name: str, source: str, digest: str) -> CompiledKernel:
        """Check and compile; a version refused once is refused again without re-checking."""
        key = f"{name}:{digest}"
        refused = self._rejected.get(key)
        if refused is not None:
            raise refused
        try:
            return compile_kernel(name, source, self.policy)
        except KernelRejected as exc:
            with self._lock:
                self._rejected[key] = exc
                while len(self._rejected) > _REJECTED_CACHE:
                    del self._rejected[next(iter(self._rejected))]
            raise

    def _cached(self, name: str, digest: str) -> LoadedKernel | None:
        cached = self._loaded.get((name, digest))
        if cached is not None:
            self._digest_of[name] = digest
        return cached

    def _install(self, name: str, compiled: CompiledKernel) -> LoadedKernel:
        kernel = LoadedKernel(
            name,
            compiled.digest,
            compiled.signature,
            compiled.timeout,
            compiled.retries,
            compiled.source,
            compiled.bytecode,
        )
        return self._remember(kernel)

    def _remember(self, kernel: LoadedKernel) -> LoadedKernel:
        with self._lock:
            self._loaded[(kernel.name, kernel.digest)] = kernel
            self._digest_of[kernel.name] = kernel.digest
        return kernel
