"""``pyrecks demo``: the README's main job, from stored kernels to finished chains.

It does what a new user would do by hand — compile ``kernels/``, start the seed's chain
(start -> func0 -> func1 -> func2), then a word count that reads its input from a Redis
key and writes its counts with effects — with a VM running inside this process.
"""

from __future__ import annotations

from pathlib import Path

import click

from pyrecks.api import Pyrecks
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


def run_demo(px: Pyrecks, kernel_dir: Path) -> None:
    from pyrecks.cli.kernel_cmds import collect_files, compile_files

    if not kernel_dir.is_dir():
        raise PyrecksError(
            f"no kernel folder at {kernel_dir}: run the demo from a pyrecks checkout "
            "or pass --kernels DIR"
        )
    files = collect_files([str(kernel_dir)])
    good, bad = compile_files(files, load_policy(px.r, px.keyspace))
    if bad:
        raise PyrecksError(f"{len(bad)} sample kernel(s) failed the checker; run pyrecksc lint")
    KernelStore(px.r, px.keyspace).put_many([compiled for _, compiled in good])
    click.echo(
        f"stored {len(good)} kernels from {kernel_dir}: "
        + ", ".join(sorted(k.name for k, _ in good))
    )
    px.r.set("doc:1", DOCUMENT)
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
