"""``pyrecks demo``: the README's main job, from stored kernels to finished chains.

It does what a new user would do by hand — compile the sample kernels, start the seed's
chain (start -> func0 -> func1 -> func2), then a word count that reads its input from a Redis
key and writes its counts with effects — with a VM running inside this process.

The sample kernels ship inside the package (``pyrecks/_kernels`` in the wheel, ``kernels/``
of a checkout), so the demo runs from any folder.  It never replaces a user's own kernels or
keys of the same names without ``--force``, and it stops an embedded Redis that it started
itself when it fails before running anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click
import redis

from pyrecks.api import Pyrecks
from pyrecks.cli.common import redis_option
from pyrecks.compiler.policy import load_policy
from pyrecks.compiler.store import KernelStore
from pyrecks.errors import PyrecksError
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry

DOCUMENT = "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs."


def _show(entry: LogEntry) -> None:
    if entry.kind == "out":
        click.echo(f"    {entry.kernel:<9} | {entry.text}")
    elif entry.kind == "step":
        click.echo(click.style(f"  step {entry.step}: {entry.kernel} {entry.text}", dim=True))
    elif entry.kind == "error":
        click.echo(click.style(f"  step {entry.step}: {entry.text}", fg="red"))


def _run(px: Pyrecks, title: str, call: str) -> ChainInfo:
    click.echo(click.style(f"\n== {title}: pyrecks run '{call}'", bold=True))
    chain = px.start(call)
    info = px.wait(chain, timeout=120, on_entry=_show)
    took = f"{info.elapsed:.3f}s" if info.elapsed is not None else "?"
    click.echo(f"  chain {chain}: {info.status.value} after {info.step} steps in {took}")
    if info.result:
        click.echo(f"  result: {info.result}")
    if info.status is not ChainStatus.DONE:
        raise PyrecksError(f"demo chain {chain} {info.status.value}: {info.error}")
    return info


DATA_KEYS = ("wc:words", "wc:counts")
DOC_KEY = "doc:1"


def sample_kernels_dir() -> Path:
    """The sample kernels: ``pyrecks/_kernels`` of an installed wheel, else ``kernels/``."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_kernels", package.parent / "kernels"):
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    raise PyrecksError(
        f"the sample kernels are missing from this installation (looked in {package / '_kernels'}"
        f" and {package.parent / 'kernels'}); reinstall pyrecks or pass --kernels DIR"
    )


def conflicts(px: Pyrecks, sources: dict[str, str]) -> list[str]:
    """Keys the demo would overwrite that hold something the demo did not put there.

    A kernel whose stored source is the sample's own is the demo's (a re-run); so is
    ``doc:1`` holding the demo's document, and the word-count keys when it does.
    """
    store = KernelStore(px.r, px.keyspace)
    found: list[str] = []
    for name, source in sorted(sources.items()):
        if not px.r.exists(px.keyspace.kernel(name)):
            continue
        record = store.get(name)
        if record is None or record.source.strip() != source.strip():
            found.append(px.keyspace.kernel(name))
    doc = px.r.get(DOC_KEY) if px.r.type(DOC_KEY) == b"string" else None
    if px.r.exists(DOC_KEY) and doc != DOCUMENT.encode():
        found.append(DOC_KEY)
    if doc != DOCUMENT.encode():
        found += [k for k in DATA_KEYS if px.r.exists(k)]
    return found


@contextlib.contextmanager
def _stop_embedded_on_failure(px: Pyrecks) -> Iterator[None]:
    """On an error, stop the embedded Redis if this very command started it."""
    from pyrecks.connection import EmbeddedServer

    try:
        yield
    except (PyrecksError, redis.RedisError):
        server = EmbeddedServer()
        kwargs = px.r.connection_pool.connection_kwargs
        if server.started_here() and kwargs.get("path") == str(server.socket):
            px.r.close()
            server.stop()
            click.echo(f"stopped the embedded Redis this demo started ({server.home})", err=True)
        raise


def run_demo(px: Pyrecks, kernel_dir: Path | None = None, *, force: bool = False) -> None:
    """Store the sample kernels (or those of ``kernel_dir``) and run the two demo chains.

    ``kernel_dir`` of ``None`` — or the old default ``kernels`` where no such folder exists —
    means the samples shipped with pyrecks.
    """
    with _stop_embedded_on_failure(px):
        _run_demo(px, kernel_dir, force=force)


def _run_demo(px: Pyrecks, kernel_dir: Path | None, *, force: bool) -> None:
    from pyrecks.cli.kernel_cmds import collect_files, compile_files

    if kernel_dir is None or (kernel_dir == Path("kernels") and not kernel_dir.is_dir()):
        kernel_dir = sample_kernels_dir()
    if not kernel_dir.is_dir():
        raise PyrecksError(
            f"no kernel folder at {kernel_dir}; leave out --kernels to use the sample kernels "
            "shipped with pyrecks"
        )
    files = collect_files([str(kernel_dir)])
    good, bad = compile_files(files, load_policy(px.r, px.keyspace))
    if bad:
        raise PyrecksError(f"{len(bad)} sample kernel(s) failed the checker; run pyrecksc lint")
    taken = conflicts(px, {k.name: k.source for k, _ in good})
    if taken and not force:
        raise PyrecksError(
            f"the demo would overwrite {', '.join(taken)}, which "
            f"{'holds' if len(taken) == 1 else 'hold'} your own kernels or data (not the demo's)."
            " Nothing was changed. Run 'pyrecks demo --force' to replace them, "
            "or run the demo against another Redis: PYRECKS_HOME=/tmp/pyrecks-demo pyrecks demo"
        )
    KernelStore(px.r, px.keyspace).put_many([compiled for _, compiled in good], force=force)
    click.echo(
        f"stored {len(good)} kernels from {kernel_dir}: "
        + ", ".join(sorted(k.name for k, _ in good))
    )
    # The word count adds to its totals: start from zero so every run shows the same numbers.
    px.r.delete(*DATA_KEYS)
    px.r.set(DOC_KEY, DOCUMENT)
    with px.local_vm(threads=4, echo=False):
        _run(px, "The seed's chain", "start")
        _run(
            px,
            "Word count with typed arguments, an @key input and effects",
            'wc_split("@doc:1", 3)',
        )
    counts = {k.decode(): int(v) for k, v in px.r.hgetall("wc:counts").items()}  # type: ignore[union-attr]
    click.echo(
        f"\nRedis now holds wc:words = {px.r.get('wc:words').decode()}"  # type: ignore[union-attr]
        f" and wc:counts = {dict(sorted(counts.items()))}"
    )
    click.echo("Next: pyrecks ls, pyrecks logs <chain>, pyrecksc show func0, docs/vm.md")


@click.command()
@click.option(
    "--kernels",
    "kernel_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of kernels to store instead of the sample kernels shipped with pyrecks.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace kernels and keys of the same names (start, func0-func2, wc_split, wc_count, "
    "doc:1, wc:words, wc:counts) that hold something else.",
)
@redis_option
def demo(kernel_dir: Path | None, force: bool, redis_url: str | None) -> None:
    """Store the sample kernels and run the seed's chain plus the word-count example.

    Refuses, changing nothing, when a kernel or key it needs holds your own kernel or data;
    --force replaces them.
    """
    from pyrecks.api import connect

    run_demo(connect(redis_url), kernel_dir, force=force)
