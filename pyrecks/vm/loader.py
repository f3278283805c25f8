"""Loading kernels for the VM: from Redis record to a callable entry function.

Every step asks Redis (in the same round trip that reads its ``@key`` inputs) whether the
kernel's digest is still the one this process has cached.  If it is, the cached entry
function runs; if not — a hot patch — the new record is loaded, so a new source takes effect
at the next step of every running chain while a step already running finishes on the code
it started with (it holds a reference to the old function).

Sources that were never compiled (the seed's ``SET func0 "<source>"``, or a hash with
``compiled`` = 0) go through the same checker as ``pyrecksc compile`` before they are
compiled, and the compiled record is written back in place (``KernelStore.promote``).
Compiled records are re-checked once per process as well: the digest must match the source
and the source must pass the current policy, so a record written by hand cannot smuggle in
code the checker would refuse.
"""

from __future__ import annotations

import hashlib
import linecache
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyrecks.compiler.compiler import (
    CompiledKernel,
    Param,
    compile_kernel,
    kernel_filename,
    load_code,
)
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.store import KernelStore
from pyrecks.errors import KernelNotFound, KernelRejected, LintError
from pyrecks.vm.sandbox import Sandbox, SandboxViolation, compile_guarded


@dataclass(frozen=True)
class LoadedKernel:
    """A kernel ready to run: its entry function and what the VM needs to call it."""

    name: str
    digest: str
    entry: Callable[..., Any]
    params: tuple[Param, ...]
    timeout: float | None
    retries: int | None
    source: str = ""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class KernelLoader:
    """Per-process cache of loaded kernels, keyed by source digest."""

    def __init__(self, store: KernelStore, policy: Policy, sandbox: Sandbox) -> None:
        self.store = store
        self.policy = policy
        self.sandbox = sandbox
        self._by_digest: dict[str, LoadedKernel] = {}
        self._digest_of: dict[str, str] = {}
        self._lock = threading.Lock()

    def cached(self, name: str) -> LoadedKernel | None:
        """The kernel this process last ran for ``name``, if still cached."""
        return self._by_digest.get(self._digest_of.get(name, ""))

    def known_digest(self, name: str) -> str:
        """The digest this process last ran for ``name`` ('' if none)."""
        return self._digest_of.get(name, "")

    def resolve(self, name: str, state: str, payload: Any) -> LoadedKernel:
        """Turn the PREPARE script's answer about kernel ``name`` into a loaded kernel."""
        if state == "same":
            cached = self._by_digest.get(self._digest_of.get(name, ""))
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
            return self._from_source(name, source, expected_source=source)
        if state == "hash":
            fields = self._fields(name, payload)
            return self._from_record(name, fields)
        raise KernelNotFound(
            f"key {self.store.keyspace.kernel(name)!r} holds a {state}, not a kernel; "
            "a kernel is a hash written by pyrecksc compile or a string of Python source"
        )

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
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        cached = self._by_digest.get(digest)
        if cached is not None:
            self._digest_of[name] = digest
            return cached
        compiled_flag = _text(fields.get("compiled", b"0")) == "1"
        stored_digest = _text(fields.get("digest", b""))
        usable = compiled_flag and stored_digest == digest and "bytecode" in fields
        if not usable or load_code(fields["bytecode"], _text(fields.get("magic", b""))) is None:
            # Never compiled, hand-edited, or from another Python: compile and store it.
            return self._from_source(name, source, expected_source=source)
        # A compiled record: re-check the source once per process under today's policy.
        # The VM runs its own guarded compilation, never the bytecode read from Redis.
        compiled = compile_kernel(name, source, self.policy)
        return self._install(
            name, digest, source, compiled.signature, compiled.timeout, compiled.retries
        )

    def _from_source(self, name: str, source: str, *, expected_source: str) -> LoadedKernel:
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        cached = self._by_digest.get(digest)
        if cached is not None:
            self._digest_of[name] = digest
            return cached
        compiled: CompiledKernel = compile_kernel(name, source, self.policy)
        self.store.promote(name, compiled, expected_source)
        return self._install(
            name, digest, source, compiled.signature, compiled.timeout, compiled.retries
        )

    def _install(
        self,
        name: str,
        digest: str,
        source: str,
        params: tuple[Param, ...],
        timeout: float | None,
        retries: int | None,
    ) -> LoadedKernel:
        filename = kernel_filename(name)
        try:
            code = compile_guarded(name, source, filename)
        except SandboxViolation as exc:
            finding = LintError("PK299", str(exc), text=source)
            raise KernelRejected(f"kernel {name!r} was refused: {exc}", [finding]) from None
        namespace = self.sandbox.namespace(name)
        exec(code, namespace)  # module body: imports, defs and constants only (checked)
        entry = namespace.get(name)
        if not callable(entry):
            raise KernelNotFound(f"kernel {name!r} defines no function named {name!r}")
        # Let tracebacks show kernel source lines.
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        kernel = LoadedKernel(name, digest, entry, params, timeout, retries, source)
        with self._lock:
            self._by_digest[digest] = kernel
            self._digest_of[name] = digest
        return kernel
