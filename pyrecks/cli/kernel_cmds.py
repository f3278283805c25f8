"""``pyrecksc lint | compile | show | list | rm | policy``: the kernel commands.

A kernel file's name (without ``.py``) is the kernel's name, as with the seed's installer.
``lint`` works offline (CI, pre-commit); the other commands talk to Redis (``--redis URL``,
else ``REDIS_URL``, else the embedded Redis in ``$PYRECKS_HOME``), and ``compile`` checks
kernels with the policy stored there — the one every VM enforces.
"""

from __future__ import annotations

import dis
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from pyrecks.cli.common import POSITIVE_SECONDS, fail, redis_option, remember_url
from pyrecks.cli.pyrecksc import main
from pyrecks.compiler.checker import Finding, check
from pyrecks.compiler.compiler import (
    MAGIC,
    PARALLEL_MIN_KERNELS,
    CompiledKernel,
    compile_kernel,
    compile_many,
)
from pyrecks.compiler.policy import Policy, load_policy, save_policy
from pyrecks.compiler.store import KernelRecord, KernelStore
from pyrecks.display import one_line, shown
from pyrecks.errors import KernelRejected, LintError, PyrecksError
from pyrecks.keys import Keyspace

PROGRESS_THRESHOLD = 20


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def prefix_option(func: Any) -> Any:
    return click.option(
        "--prefix",
        default="",
        metavar="P",
        help="Key prefix of kernel records (default: none, as in the seed: key = kernel name).",
    )(func)


def _keyspace(prefix: str) -> Keyspace:
    return Keyspace(kernel_prefix=prefix)


def _connect(redis_url: str | None) -> Any:
    from pyrecks.connection import connect

    return connect(redis_url)


def _is_kernel_file(path: Path) -> bool:
    name = path.name
    return not (
        name.startswith(("test_", "."))
        or name.endswith("_test.py")
        or name in ("conftest.py", "__init__.py", "setup.py")
    )


def collect_files(paths: Iterable[str]) -> list[Path]:
    """Kernel files named on the command line: files as given, folders searched for ``*.py``.

    In folders, test files (``test_*.py``, ``*_test.py``, ``conftest.py``) and
    ``__init__.py`` are skipped so a kernel repository can keep its pytest files beside the
    kernels.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for sub in sorted(path.rglob("*.py")):
                parts = sub.relative_to(path).parts
                if any(p.startswith(".") or p == "__pycache__" for p in parts[:-1]):
                    continue
                if _is_kernel_file(sub):
                    found.append(sub)
        elif path.is_file():
            found.append(path)
        else:
            fail(f"{raw}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


@dataclass
class KernelFile:
    path: Path
    name: str
    source: str
    problem: Finding | None = None
    findings: list[Finding] = field(default_factory=list)


def read_kernel(path: Path) -> KernelFile:
    name = path.stem
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return KernelFile(path, name, "", Finding("PK902", "error", f"not UTF-8: {exc}", 1, 1))
    if not name.isidentifier():
        message = (
            f"the file name makes the kernel name {name!r}, which is not a Python identifier; "
            "rename the file (e.g. word_count.py)"
        )
        return KernelFile(path, name, source, Finding("PK510", "error", message, 1, 1))
    return KernelFile(path, name, source)


def format_finding(path: Path | str, finding: Finding | LintError, source: str) -> str:
    """``path:line:col: CODE message`` plus the faulty line with a caret."""
    severity = getattr(finding, "severity", "error")
    label = f"{finding.code} (warning)" if severity == "warning" else finding.code
    head = f"{path}:{finding.line}:{finding.column}: {label} {finding.message}"
    error = finding if isinstance(finding, LintError) else finding.to_error(source)
    if not source:
        return head
    context = "\n".join("    " + line for line in error.context().splitlines())
    return f"{head}\n{context}"


def _progress(items: Sequence[Any], label: str) -> Any:
    show = len(items) > PROGRESS_THRESHOLD or sys.stderr.isatty()
    if show:
        return click.progressbar(items, label=label, file=sys.stderr, show_pos=True)
    return _NoProgress(items)


class _NoProgress:
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __enter__(self) -> Sequence[Any]:
        return self.items

    def __exit__(self, *exc: object) -> None:
        return None


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _policy_from(policy_file: str | None, redis_url: str | None, prefix: str) -> Policy:
    if policy_file:
        return Policy.from_json(Path(policy_file).read_text(encoding="utf-8"))
    if redis_url:
        return load_policy(_connect(redis_url), _keyspace(prefix))
    return Policy()


def stored_kernel_names(r: Any, keyspace: Keyspace) -> list[str]:
    """Every kernel in Redis: those pyrecks listed, and seed-style strings (``def name(``)."""
    from pyrecks.compiler.store import looks_like_kernel

    names = set(KernelStore(r, keyspace).names())
    prefix = keyspace.kernel_prefix
    for raw in r.scan_iter(match=f"{prefix}*", count=1000, _type="string"):
        key = raw.decode("utf-8", errors="replace")
        name = key[len(prefix) :]
        if not name.isidentifier() or key.startswith(keyspace.internal_prefix):
            continue
        head = r.getrange(raw, 0, 4095).decode("utf-8", errors="replace")
        if looks_like_kernel(head, name):
            names.add(name)
    return sorted(names)


def missing_kernel(name: str, r: Any, keyspace: Keyspace) -> str:
    """``no kernel named 'fucn1'; did you mean func1?`` (with the closest stored names)."""
    from pyrecks.cli.common import did_you_mean

    key = keyspace.kernel(name)
    what = "holds other data, not a kernel" if r.exists(key) else "does not exist"
    return (
        f"no kernel named {name!r} (key {key!r} {what})"
        + did_you_mean(name, stored_kernel_names(r, keyspace))
    )


def stored_sources(
    r: Any, keyspace: Keyspace, names: Sequence[str]
) -> list[tuple[str, KernelRecord]]:
    """(name, record) of the named stored kernels (all when none are named); fails on typos."""
    store = KernelStore(r, keyspace)
    wanted = list(names) or stored_kernel_names(r, keyspace)
    if not wanted:
        fail("no kernels stored in Redis yet")
    found: list[tuple[str, KernelRecord]] = []
    missing: list[str] = []
    for name in wanted:
        record = store.get(name)
        if record is None:
            missing.append(missing_kernel(name, r, keyspace))
        else:
            found.append((name, record))
    if missing:
        fail("; ".join(missing))
    return found


def stored_hints(name: str, source: str) -> list[str]:
    """Hints for kernels that were stored by hand the seed's way."""
    from pyrecks.compiler.upgrade import (
        escaped_newlines_hint,
        looks_like_python2,
        undo_shell_escapes,
    )

    hints = []
    escaped = escaped_newlines_hint(source, name)
    if escaped:
        hints.append(escaped)
    if looks_like_python2(undo_shell_escapes(source) if escaped else source):
        hints.append(
            f"{name} looks like Python 2: 'pyrecksc upgrade --stored {name}' shows a Python 3 "
            "version, '--write' stores it"
        )
    return hints


# --------------------------------------------------------------------------------------
# lint
# --------------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON (for CI).")
@click.option(
    "--stored",
    is_flag=True,
    help="Lint kernels stored in Redis (--redis, $REDIS_URL or the embedded one): the "
    "arguments are kernel names, none meaning every stored kernel.",
)
@prefix_option
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Policy JSON file (see 'pyrecksc policy show --json'). Default: built-in policy.",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    default=None,
    callback=remember_url,
    help="Check with the policy stored in this Redis (only when given; lint is offline).",
)
def lint(
    paths: tuple[str, ...],
    as_json: bool,
    stored: bool,
    prefix: str,
    policy_file: str | None,
    redis_url: str | None,
) -> None:
    """Check kernel files (or folders of *.py) without storing them.

    With --stored, check kernels already in Redis (seed-style strings set with redis-cli
    included) against the policy stored there.  Exit status 1 if any kernel has an error;
    warnings are shown but do not fail.
    """
    results: list[KernelFile] = []
    hints: list[str] = []
    if stored:
        r = _connect(redis_url)
        keyspace = _keyspace(prefix)
        policy = (
            Policy.from_json(Path(policy_file).read_text(encoding="utf-8"))
            if policy_file
            else load_policy(r, keyspace)
        )
        for name, record in stored_sources(r, keyspace, paths):
            kernel = KernelFile(Path(f"redis:{record.key}"), name, record.source)
            kernel.findings = check(record.source, name, policy)
            if any(f.is_error for f in kernel.findings):
                hints += stored_hints(name, record.source)
            results.append(kernel)
    else:
        if not paths:
            fail("name kernel files or folders to lint (or --stored for kernels in Redis)")
        policy = _policy_from(policy_file, redis_url, prefix)
        files = collect_files(paths)
        if not files:
            fail("no kernel files found (kernels are *.py files; test_*.py files are skipped)")
        for path in files:
            kernel = read_kernel(path)
            if kernel.problem is not None:
                kernel.findings = [kernel.problem]
            else:
                kernel.findings = check(kernel.source, kernel.name, policy)
            results.append(kernel)
    errors = sum(1 for k in results for f in k.findings if f.is_error)
    warnings = sum(1 for k in results for f in k.findings if not f.is_error)
    if as_json:
        doc = [
            {
                "path": str(k.path),
                "kernel": k.name,
                "findings": [f.to_dict() for f in k.findings],
            }
            for k in results
        ]
        click.echo(json.dumps(doc, indent=2))
    else:
        for kernel in results:
            for finding in kernel.findings:
                click.echo(format_finding(kernel.path, finding, kernel.source))
        for hint in hints:
            click.echo(f"hint: {hint}", err=True)
        click.echo(
            f"{len(results)} kernel{'s' if len(results) != 1 else ''} checked: "
            f"{errors} error{'s' if errors != 1 else ''}, "
            f"{warnings} warning{'s' if warnings != 1 else ''}",
            err=True,
        )
    if errors:
        raise SystemExit(1)


# --------------------------------------------------------------------------------------
# compile
# --------------------------------------------------------------------------------------


def compile_files(
    files: Sequence[Path], policy: Policy
) -> tuple[list[tuple[KernelFile, CompiledKernel]], list[tuple[KernelFile, list[Any]]]]:
    """Check and compile every file; return (compiled, rejected-with-findings)."""
    good: list[tuple[KernelFile, CompiledKernel]] = []
    bad: list[tuple[KernelFile, list[Any]]] = []
    readable: list[KernelFile] = []
    for path in files:
        kernel = read_kernel(path)
        if kernel.problem is not None:
            bad.append((kernel, [kernel.problem]))
        else:
            readable.append(kernel)
    if len(readable) >= PARALLEL_MIN_KERNELS:
        # Large batches use every core; each kernel still meets the same checker.
        click.echo(f"Checking {len(readable)} kernels on {os.cpu_count() or 1} cores ...", err=True)
        results = compile_many([(k.name, k.source) for k in readable], policy, workers=None)
        for kernel, result in zip(readable, results, strict=True):
            if isinstance(result, KernelRejected):
                bad.append((kernel, list(result.findings)))
            else:
                good.append((kernel, result))
    else:
        with _progress(readable, "Checking kernels") as bar:
            for kernel in bar:
                try:
                    good.append((kernel, compile_kernel(kernel.name, kernel.source, policy)))
                except KernelRejected as exc:
                    bad.append((kernel, list(exc.findings)))
    names: dict[str, Path] = {}
    for kernel, _compiled in good:
        if kernel.name in names:
            fail(
                f"two files define kernel {kernel.name!r}: {names[kernel.name]} and "
                f"{kernel.path}; kernel names (file stems) must be unique"
            )
        names[kernel.name] = kernel.path
    return good, bad


def _only_def(source: str) -> str:
    """The name of the only public top-level function of ``source`` (for ``compile -``)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = ast.Module(body=[], type_ignores=[])
    names = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
    ]
    if len(names) != 1:
        fail(
            "cannot tell the kernel's name from stdin "
            f"({'no public function' if not names else 'functions ' + ', '.join(names)}): "
            "pass --name NAME"
        )
    return names[0]


@main.command(name="compile")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@redis_option
@prefix_option
@click.option("--dry-run", is_flag=True, help="Check and compile, but write nothing.")
@click.option("--force", is_flag=True, help="Overwrite keys that hold data other than kernels.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Check with this policy file instead of the policy stored in Redis.",
)
@click.option(
    "--name",
    "stdin_name",
    metavar="NAME",
    default=None,
    help="With '-': the kernel's name (default: the source's only public top-level def).",
)
def compile_cmd(
    paths: tuple[str, ...],
    redis_url: str | None,
    prefix: str,
    dry_run: bool,
    force: bool,
    policy_file: str | None,
    stdin_name: str | None,
) -> None:
    """Check, compile and store kernels (all or nothing).

    Each *.py file is one kernel named after the file; '-' reads one kernel from stdin
    (named by --name, or by its only public top-level def).  If any kernel fails the
    checker, every finding is printed and nothing is written.
    """
    if paths == ("-",):
        import shutil
        import tempfile

        source = sys.stdin.read()
        name = stdin_name or _only_def(source)
        scratch = Path(tempfile.mkdtemp(prefix="pyrecksc-stdin-"))
        click.get_current_context().call_on_close(
            lambda: shutil.rmtree(scratch, ignore_errors=True)
        )
        (scratch / f"{name}.py").write_text(source, encoding="utf-8")
        paths = (str(scratch / f"{name}.py"),)
    elif "-" in paths:
        fail("'-' (stdin) cannot be mixed with files")
    files = collect_files(paths)
    if not files:
        fail("no kernel files found (kernels are *.py files; test_*.py files are skipped)")
    r = _connect(redis_url)
    keyspace = _keyspace(prefix)
    policy = (
        Policy.from_json(Path(policy_file).read_text(encoding="utf-8"))
        if policy_file
        else load_policy(r, keyspace)
    )
    good, bad = compile_files(files, policy)
    for kernel, compiled in good:
        for finding in compiled.warnings:
            click.echo(format_finding(kernel.path, finding, kernel.source), err=True)
    if bad:
        for kernel, findings in bad:
            for finding in findings:
                click.echo(format_finding(kernel.path, finding, kernel.source), err=True)
        total = sum(len(f) for _k, f in bad)
        fail(
            f"{len(bad)} of {len(files)} kernel{'s' if len(files) != 1 else ''} rejected "
            f"({total} error{'s' if total != 1 else ''}); nothing was written"
        )
    store = KernelStore(r, keyspace)
    previous = {kernel.name: store.get(kernel.name) for kernel, _c in good}
    to_write: list[CompiledKernel] = []
    statuses: dict[str, str] = {}
    for kernel, compiled in good:
        old = previous[kernel.name]
        if old is None:
            statuses[kernel.name] = "new"
            to_write.append(compiled)
        elif not old.needs_compile and old.digest == compiled.digest:
            statuses[kernel.name] = "unchanged"
        else:
            statuses[kernel.name] = "seed-style replaced" if old.seed_style else "updated"
            to_write.append(compiled)
    versions: dict[str, int] = {}
    if not dry_run and to_write:
        written_versions = store.put_many(to_write, force=force)
        versions = {k.name: v for k, v in zip(to_write, written_versions, strict=True)}
    rows: list[list[str]] = []
    for kernel, compiled in good:
        old = previous[kernel.name]
        version: str
        if kernel.name in versions:
            version = str(versions[kernel.name])
        elif dry_run and statuses[kernel.name] != "unchanged":
            version = f"{(old.version if old else 0) + 1} (dry run)"
        else:
            version = str(old.version if old else "-")
        rows.append([kernel.name, version, compiled.digest[:12], statuses[kernel.name]])
    click.echo(_table(rows, ["kernel", "version", "digest", "status"]))
    written = len(versions)
    verb = "would write" if dry_run else "wrote"
    click.echo(
        f"{len(good)} kernel{'s' if len(good) != 1 else ''} compiled; {verb} "
        f"{len(to_write) if dry_run else written}, "
        f"{sum(1 for s in statuses.values() if s == 'unchanged')} unchanged",
        err=True,
    )


# --------------------------------------------------------------------------------------
# show, list, rm
# --------------------------------------------------------------------------------------


def _signature_text(record: KernelRecord) -> str:
    parts = []
    for p in record.signature:
        star = {"var_positional": "*", "var_keyword": "**"}.get(p.kind, "")
        text = f"{star}{p.name}"
        if p.annotation:
            text += f": {p.annotation}"
        if p.has_default:
            text += " = …"
        parts.append(text)
    return f"{record.name}({', '.join(parts)})"


@main.command()
@click.argument("name")
@redis_option
@prefix_option
@click.option("--source", "source_only", is_flag=True, help="Print only the source.")
@click.option("--dis", "disassemble", is_flag=True, help="Also disassemble the stored bytecode.")
def show(
    name: str, redis_url: str | None, prefix: str, source_only: bool, disassemble: bool
) -> None:
    """Show a stored kernel: metadata, signature, lint warnings and source."""
    r = _connect(redis_url)
    store = KernelStore(r, _keyspace(prefix))
    found = store.get(name)
    if found is None:
        fail(missing_kernel(name, r, _keyspace(prefix)))
        return
    record = found
    if source_only:
        # Redirected, the source stays byte for byte (a round trip to a file); on a terminal
        # its control characters are shown, not obeyed (pyrecks.display).
        source = shown(record.source) if sys.stdout.isatty() else record.source
        click.echo(source, nl=not source.endswith("\n"))
        return
    if record.seed_style:
        state = "no (seed-style string; the VM compiles it on first use)"
    elif not record.compiled:
        state = "no (the VM compiles it on first use)"
    elif record.needs_compile:
        state = "stale (source edited or other Python; recompiled on next use)"
    else:
        state = "yes"
    magic = record.magic or "-"
    if record.magic and record.magic != MAGIC:
        magic += f" (this Python: {MAGIC})"
    rows = [
        ("kernel", record.name),
        ("key", record.key),
        ("version", str(record.version) if record.version else "-"),
        ("compiled", state),
        ("digest", record.digest),
        ("magic", magic),
        ("updated", _when(record.updated)),
        ("signature", _signature_text(record) if record.signature else "-"),
        ("timeout", f"{record.timeout:g}s" if record.timeout else "policy default"),
        ("retries", str(record.retries) if record.retries is not None else "policy default"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(one_line(f"{key.ljust(width)}  {value}"))
    for finding in record.lint:
        click.echo(
            f"lint{' ' * (width - 4)}  {finding.line}:{finding.column}: "
            f"{finding.code} ({finding.severity}) {finding.message}"
        )
    click.echo("\n--- source ---")
    click.echo(shown(record.source), nl=not record.source.endswith("\n"))
    if disassemble:
        code = record.code()
        if code is None:
            click.echo("\n--- no bytecode for this Python (compile it with 'pyrecksc compile') ---")
            return
        out = io.StringIO()
        dis.dis(code, file=out)
        click.echo("\n--- bytecode ---")
        click.echo(out.getvalue(), nl=False)


@main.command(name="list")
@redis_option
@prefix_option
def list_cmd(redis_url: str | None, prefix: str) -> None:
    """List stored kernels (seed-style strings appear once the VM first runs them)."""
    store = KernelStore(_connect(redis_url), _keyspace(prefix))
    summaries = store.summaries()
    if not summaries:
        click.echo("no kernels stored yet; install some with 'pyrecksc compile kernels/'", err=True)
        return
    rows = [
        [
            s["name"],
            str(s["version"] or "-"),
            "yes" if s["compiled"] else "no",
            s["digest"][:12] or "-",
            _when(s["updated"]),
        ]
        for s in summaries
    ]
    click.echo(_table(rows, ["kernel", "version", "compiled", "digest", "updated"]))


@main.command()
@click.argument("names", nargs=-1, required=True)
@redis_option
@prefix_option
def rm(names: tuple[str, ...], redis_url: str | None, prefix: str) -> None:
    """Delete kernels (refuses keys that hold anything but a kernel)."""
    store = KernelStore(_connect(redis_url), _keyspace(prefix))
    # Check every name before deleting any, so a typo in the list loses nothing.
    missing_or_data = [n for n in names if store.get(n) is None]
    if missing_or_data:
        r = store.r
        fail(
            "refusing to delete: "
            + "; ".join(missing_kernel(n, r, _keyspace(prefix)) for n in missing_or_data)
            + "; nothing was deleted"
        )
    for name in names:
        store.remove(name)
        click.echo(f"removed {name}")


# --------------------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Show or change the sandbox policy stored in Redis (shared by the checker and VMs)."""


@policy.command(name="show")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print the policy as a JSON document.")
@click.option("--default", "default", is_flag=True, help="Show the built-in default policy.")
def policy_show(redis_url: str | None, as_json: bool, default: bool) -> None:
    """Print the policy every VM and 'pyrecksc compile' use."""
    current = Policy() if default else load_policy(_connect(redis_url), Keyspace())
    if as_json:
        click.echo(current.to_json())
        return
    click.echo(f"allowed modules:      {', '.join(sorted(current.allowed_modules))}")
    click.echo(f"forbidden builtins:   {', '.join(sorted(current.forbidden_builtins))}")
    click.echo(f"forbidden attributes: {', '.join(sorted(current.forbidden_attributes))}")
    click.echo(
        f"default timeout:      {current.default_timeout:g}s "
        f"(kernels may ask up to {current.max_timeout:g}s)"
    )
    click.echo(
        f"default retries:      {current.default_retries} "
        f"(kernels may ask up to {current.max_retries})"
    )
    patterns = ", ".join(current.effect_key_patterns) or "any key not owned by pyrecks/kernels"
    click.echo(f"effect keys:          {patterns}")
    inputs = ", ".join(current.input_key_patterns) or "any key not owned by pyrecks/kernels"
    click.echo(f"input keys (@key):    {inputs}")
    click.echo(f"max descendants:      {current.max_descendants} branches per started chain")
    click.echo(f"nondeterminism:       {'warn' if current.warn_nondeterminism else 'ignore'}")


@policy.command(name="set")
@redis_option
@click.option("--allow-module", multiple=True, metavar="MODULE", help="Add to the allow-list.")
@click.option("--disallow-module", multiple=True, metavar="MODULE", help="Remove from it.")
@click.option("--forbid-builtin", multiple=True, metavar="NAME")
@click.option("--allow-builtin", multiple=True, metavar="NAME")
@click.option(
    "--timeout", "default_timeout", type=POSITIVE_SECONDS, help="Default kernel time limit (s)."
)
@click.option(
    "--max-timeout", type=POSITIVE_SECONDS, help="Largest PYRECKS_TIMEOUT a kernel may set."
)
@click.option(
    "--retries",
    "default_retries",
    type=click.IntRange(min=0),
    help="Default retries of a failed step.",
)
@click.option(
    "--effect-keys",
    multiple=True,
    metavar="GLOB",
    help="Glob patterns effect keys must match (repeat; '' clears the list).",
)
@click.option(
    "--max-descendants",
    type=click.IntRange(min=1),
    help="Fan-out branches one started chain and its branches may create in all.",
)
@click.option(
    "--input-keys",
    multiple=True,
    metavar="GLOB",
    help="Glob patterns the keys of @key inputs must match (repeat; '' clears the list).",
)
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Replace the whole policy with this JSON file.",
)
def policy_set(
    redis_url: str | None,
    allow_module: tuple[str, ...],
    disallow_module: tuple[str, ...],
    forbid_builtin: tuple[str, ...],
    allow_builtin: tuple[str, ...],
    default_timeout: float | None,
    max_timeout: float | None,
    default_retries: int | None,
    effect_keys: tuple[str, ...],
    max_descendants: int | None,
    input_keys: tuple[str, ...],
    from_file: str | None,
) -> None:
    """Change the stored policy; running VMs pick it up when they reload it."""
    r = _connect(redis_url)
    current = (
        Policy.from_json(Path(from_file).read_text(encoding="utf-8"))
        if from_file
        else load_policy(r, Keyspace())
    )
    changes: dict[str, Any] = {}
    if allow_module or disallow_module:
        changes["allowed_modules"] = sorted(
            (current.allowed_modules | set(allow_module)) - set(disallow_module)
        )
    if forbid_builtin or allow_builtin:
        changes["forbidden_builtins"] = sorted(
            (current.forbidden_builtins | set(forbid_builtin)) - set(allow_builtin)
        )
    if default_timeout is not None:
        changes["default_timeout"] = default_timeout
    if max_timeout is not None:
        changes["max_timeout"] = max_timeout
    if default_retries is not None:
        changes["default_retries"] = default_retries
    if effect_keys:
        changes["effect_key_patterns"] = [p for p in effect_keys if p]
    if input_keys:
        changes["input_key_patterns"] = [p for p in input_keys if p]
    if max_descendants is not None:
        changes["max_descendants"] = max_descendants
    try:
        updated = current.with_changes(**changes)
    except PyrecksError as exc:
        fail(str(exc))
        return
    save_policy(r, Keyspace(), updated)
    click.echo("policy saved; recompile kernels ('pyrecksc compile') to re-check them", err=True)


@policy.command(name="reset")
@redis_option
def policy_reset(redis_url: str | None) -> None:
    """Go back to the built-in default policy."""
    r = _connect(redis_url)
    r.delete(Keyspace().policy)
    click.echo("policy reset to the built-in defaults", err=True)


# --------------------------------------------------------------------------------------
# upgrade
# --------------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--write", is_flag=True, help="Apply the rewrite (files in place; stored kernels "
              "are checked, compiled and stored as with 'pyrecksc compile').")
@click.option(
    "--stored",
    is_flag=True,
    help="Upgrade kernels stored in Redis: the arguments are kernel names, none meaning "
    "every stored kernel.",
)
@redis_option
@prefix_option
def upgrade(
    paths: tuple[str, ...], write: bool, stored: bool, redis_url: str | None, prefix: str
) -> None:
    """Rewrite Python 2 kernels (the seed's) as Python 3, shown as a diff.

    Rewrites print statements, 'except E, e', '<>', backticks, has_key, iteritems/xrange/
    unicode/basestring and tab indentation; flags '/' between possible integers (Python 2
    floored it) instead of guessing.  PATHS are kernel files or folders ('-' reads one kernel
    from stdin and, with --write, prints the result).  Exit status 1 if a kernel is still
    not valid Python 3 afterwards.
    """
    from pyrecks.compiler.upgrade import Upgrade, upgrade_source

    items: list[tuple[str, str, str]] = []  # (label, name, source)
    r: Any = None
    keyspace = _keyspace(prefix)
    if stored:
        r = _connect(redis_url)
        for name, record in stored_sources(r, keyspace, paths):
            items.append((f"redis:{record.key}", name, record.source))
    elif paths == ("-",):
        items.append(("<stdin>", "stdin", sys.stdin.read()))
    else:
        if not paths:
            fail("name kernel files or folders to upgrade, '-' for stdin, or --stored")
        for path in collect_files(paths):
            kernel = read_kernel(path)
            items.append((str(path), kernel.name, kernel.source))
    results: list[tuple[str, Upgrade]] = []
    for label, name, source in items:
        result = upgrade_source(source, name)
        results.append((label, result))
        if label == "<stdin>" and write:
            click.echo(result.source, nl=False)
        elif result.changed:
            click.echo(result.diff(f"{label} (Python 2)", f"{label} (Python 3)"), nl=False)
        for flag in result.flags:
            click.echo(f"{label}:{flag}", err=True)
    broken = [label for label, res in results if not res.ok]
    changed = [(label, res) for label, res in results if res.changed and res.ok]
    if write and stored and changed:
        policy = load_policy(r, keyspace)
        compiled: list[CompiledKernel] = []
        for label, res in changed:
            try:
                compiled.append(compile_kernel(res.name, res.source, policy))
            except KernelRejected as exc:
                for finding in exc.findings:
                    click.echo(format_finding(label, finding, res.source), err=True)
                fail(f"{label}: the upgraded kernel fails the checker; nothing was stored")
        KernelStore(r, keyspace).put_many(compiled)
    elif write and paths != ("-",):
        for label, res in changed:
            Path(label).write_text(res.source, encoding="utf-8")
    flags = sum(len(res.flags) for _l, res in results)
    verb = "upgraded" if write else "to upgrade"
    click.echo(
        f"{len(results)} kernel{'s' if len(results) != 1 else ''}: {len(changed)} {verb}, "
        f"{len(results) - len(changed) - len(broken)} unchanged, {len(broken)} not valid "
        f"Python 3, {flags} flag{'s' if flags != 1 else ''}"
        + ("" if write or not changed else "; add --write to apply"),
        err=True,
    )
    if broken:
        raise SystemExit(1)
