"""Kernel source -> checked, guarded, compiled, serialisable :class:`CompiledKernel`.

Compilation happens once, on the machine that runs ``pyrecksc compile`` (or in the VM on a
seed-style kernel's first use); every VM then loads the marshalled code object in one round
trip.  ``marshal`` is only readable by the interpreter version that wrote it, so each record
carries ``importlib.util.MAGIC_NUMBER``: a VM on another Python version gets ``None`` from
:func:`load_code` and recompiles from the stored source.  The code object's filename is
``<kernel NAME>`` so tracebacks point into the kernel, not into pyrecks.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import marshal
import multiprocessing
import os
import types
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from pyrecks.compiler.checker import Finding, analyse
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.rewriter import SandboxViolation, rewrite
from pyrecks.errors import KernelRejected, LintError

MAGIC = importlib.util.MAGIC_NUMBER.hex()

ParamKind = Literal[
    "positional_only", "positional_or_keyword", "var_positional", "keyword_only", "var_keyword"
]


@dataclass(frozen=True)
class Param:
    """One parameter of a kernel's entry function, as the VM needs it to convert arguments.

    ``annotation`` is the annotation's source text (``"list[str]"``) or ``None``; the VM
    interprets it (it never evaluates it as code).
    """

    name: str
    annotation: str | None
    kind: ParamKind
    has_default: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "annotation": self.annotation,
            "kind": self.kind,
            "has_default": self.has_default,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Param:
        return cls(
            name=str(data["name"]),
            annotation=data.get("annotation"),
            kind=data.get("kind", "positional_or_keyword"),
            has_default=bool(data.get("has_default", False)),
        )


def signature_to_json(signature: tuple[Param, ...]) -> str:
    return json.dumps([p.to_dict() for p in signature])


def signature_from_json(text: str | bytes | None) -> tuple[Param, ...]:
    if not text:
        return ()
    return tuple(Param.from_dict(d) for d in json.loads(text))


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel that passed the checker, ready to be stored or executed."""

    name: str
    source: str
    code: types.CodeType = field(repr=False)
    bytecode: bytes = field(repr=False)
    magic: str
    digest: str
    signature: tuple[Param, ...]
    findings: tuple[Finding, ...] = ()
    timeout: float | None = None
    retries: int | None = None

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.is_error)

    def lint_json(self) -> str:
        return json.dumps([f.to_dict() for f in self.findings])


def source_digest(source: str) -> str:
    """sha256 of the source text: identifies a kernel version across VMs and records."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def kernel_filename(name: str) -> str:
    return f"<kernel {name}>"


def compile_kernel(name: str, source: str, policy: Policy | None = None) -> CompiledKernel:
    """Check, rewrite and compile one kernel; raise :class:`KernelRejected` listing every error.

    The AST the checker built is rewritten with the run-time guards
    (:mod:`pyrecks.compiler.rewriter`) and compiled directly, so the source is parsed once.
    ``code``/``bytecode`` of the result are that *guarded* code: what is stored in Redis and
    what the VM runs.  A kernel the checker accepts but the rewriter refuses (a rule only
    the rewriter knows) is rejected with code PK299.
    """
    return _compile_kernel(name, source, policy or Policy())


def _compile_kernel(name: str, source: str, policy: Policy) -> CompiledKernel:
    result = analyse(source, name, policy)
    errors = result.errors
    if errors or result.tree is None or result.entry is None:
        count = len(errors)
        raise KernelRejected(
            f"kernel {name!r} was rejected: {count} error{'s' if count != 1 else ''}",
            [f.to_error(source) for f in errors],
        )
    try:
        tree = rewrite(result.tree, name, checked=True)
    except SandboxViolation as exc:
        raise KernelRejected(
            f"kernel {name!r} was rejected: {exc}", [LintError("PK299", str(exc), text=source)]
        ) from None
    code = compile(tree, kernel_filename(name), "exec", dont_inherit=True)
    return CompiledKernel(
        name=name,
        source=source,
        code=code,
        bytecode=marshal.dumps(code),
        magic=MAGIC,
        digest=source_digest(source),
        signature=signature_of(result.entry),
        findings=tuple(result.findings),
        timeout=result.timeout,
        retries=result.retries,
    )


#: Below this many kernels ``compile_many`` stays in-process: starting worker processes
#: costs more than it saves (measured in bench/bench_compile.py).
PARALLEL_MIN_KERNELS = 200


def compile_many(
    kernels: Sequence[tuple[str, str]],
    policy: Policy | None = None,
    *,
    workers: int | None = 1,
) -> list[CompiledKernel | KernelRejected]:
    """Check and compile a batch of ``(name, source)`` pairs, in order.

    Each entry of the result is the :class:`CompiledKernel` or the :class:`KernelRejected`
    that :func:`compile_kernel` would have raised for it (returned, not raised).  With
    ``workers`` > 1 (``None``: one per CPU) and at least :data:`PARALLEL_MIN_KERNELS`
    kernels, the batch is split over that many worker processes; every kernel is still
    judged by the same checker and policy, only on another core.
    """
    policy = policy or Policy()
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count <= 1 or len(kernels) < PARALLEL_MIN_KERNELS:
        return [_compile_or_reject(name, source, policy) for name, source in kernels]
    size = max(1, min(64, -(-len(kernels) // (count * 4))))
    chunks = [list(kernels[i : i + size]) for i in range(0, len(kernels), size)]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    out: list[CompiledKernel | KernelRejected] = []
    with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        done = pool.map(_compile_chunk, chunks, [policy] * len(chunks))
        for chunk, wire in zip(chunks, done, strict=True):
            for (name, source), item in zip(chunk, wire, strict=True):
                out.append(_from_wire(name, source, item))
    return out


def _compile_or_reject(name: str, source: str, policy: Policy) -> CompiledKernel | KernelRejected:
    try:
        return _compile_kernel(name, source, policy)
    except KernelRejected as exc:
        return exc


def _compile_chunk(chunk: list[tuple[str, str]], policy: Policy) -> list[tuple[Any, ...]]:
    """Worker side of compile_many: results as picklable tuples (code objects are not)."""
    out: list[tuple[Any, ...]] = []
    for name, source in chunk:
        result = _compile_or_reject(name, source, policy)
        if isinstance(result, KernelRejected):
            findings = [(f.code, f.message, f.line, f.column) for f in result.findings]
            out.append(("rejected", str(result), findings))
        else:
            out.append(
                (
                    "ok", result.bytecode, result.digest, result.signature,
                    result.findings, result.timeout, result.retries,
                )
            )  # fmt: skip
    return out


def _from_wire(name: str, source: str, item: tuple[Any, ...]) -> CompiledKernel | KernelRejected:
    if item[0] == "rejected":
        errors = [
            LintError(code, message, text=source, line=line, column=column)
            for code, message, line, column in item[2]
        ]
        return KernelRejected(item[1], errors)
    _kind, bytecode, digest, signature, findings, timeout, retries = item
    return CompiledKernel(
        name=name,
        source=source,
        code=marshal.loads(bytecode),
        bytecode=bytecode,
        magic=MAGIC,
        digest=digest,
        signature=signature,
        findings=findings,
        timeout=timeout,
        retries=retries,
    )


def signature_of(fn: ast.FunctionDef) -> tuple[Param, ...]:
    """The entry function's parameters, read from the AST (nothing is executed)."""
    args = fn.args

    def text(node: ast.expr | None) -> str | None:
        return ast.unparse(node) if node is not None else None

    params: list[Param] = []
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    for index, arg in enumerate(positional):
        kind: ParamKind = (
            "positional_only" if index < len(args.posonlyargs) else "positional_or_keyword"
        )
        params.append(Param(arg.arg, text(arg.annotation), kind, index >= first_default))
    if args.vararg:
        params.append(Param(args.vararg.arg, text(args.vararg.annotation), "var_positional", False))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(Param(arg.arg, text(arg.annotation), "keyword_only", default is not None))
    if args.kwarg:
        params.append(Param(args.kwarg.arg, text(args.kwarg.annotation), "var_keyword", False))
    return tuple(params)


def load_code(bytecode: bytes, magic: str) -> types.CodeType | None:
    """Unmarshal stored bytecode; ``None`` when it was written by another Python version.

    ``None`` means "recompile from source" (and, in the VM, promote the fresh code so the
    next VM on this version finds it ready).  A corrupt payload also yields ``None``.
    """
    if magic != MAGIC or not bytecode:
        return None
    try:
        code = marshal.loads(bytecode)
    except (ValueError, EOFError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) else None
