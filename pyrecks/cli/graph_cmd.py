"""``pyrecksc graph [PATHS]``: which kernel may call which, as text, DOT or SVG.

With PATHS (kernel files or folders, as for ``lint``) the graph is drawn from those files;
with ``--redis`` the kernels stored there also count as existing.  Without PATHS it is drawn
from every kernel stored in Redis.  Calls to kernels that exist nowhere are flagged; with
``--strict`` they make the command exit 1 (for CI).

Register on the ``pyrecksc`` group with ``main.add_command(graph)``.
"""

from __future__ import annotations

from pathlib import Path

import click

from pyrecks.cli.common import fail, remember_url
from pyrecks.compiler.graph import build_graph, to_dot, to_svg, to_text


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "dot", "svg", "json"]),
    default="text",
    show_default=True,
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to FILE."
)
@click.option(
    "--layout",
    "engine",
    type=click.Choice(["auto", "dot", "builtin"]),
    default="auto",
    show_default=True,
    help="SVG layout: Graphviz's dot (auto: when installed) or the built-in layered one.",
)
@click.option("--strict", is_flag=True, help="Exit 1 if any kernel calls a missing kernel.")
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    default=None,
    callback=remember_url,
    help="Kernels stored in this Redis exist too; without PATHS, draw them.",
)
@click.option("--prefix", default="", metavar="P", help="Key prefix of kernel records.")
def graph(
    paths: tuple[str, ...],
    fmt: str,
    output: str | None,
    engine: str,
    strict: bool,
    redis_url: str | None,
    prefix: str,
) -> None:
    """Draw which kernel may call which (call/branch/fanout helpers and return strings)."""
    import json

    kernels: list[tuple[str, str, str]] = []
    known: set[str] = set()
    if paths:
        from pyrecks.cli.kernel_cmds import collect_files, read_kernel

        files = collect_files(paths)
        if not files:
            fail("no kernel files found (kernels are *.py files; test_*.py files are skipped)")
        for path in files:
            kernel = read_kernel(path)
            kernels.append((kernel.name, kernel.source, str(path)))
    if redis_url or not paths:
        from pyrecks.compiler.store import KernelStore
        from pyrecks.connection import connect
        from pyrecks.keys import Keyspace

        store = KernelStore(connect(redis_url), Keyspace(kernel_prefix=prefix))
        known = set(store.names())
        if not paths:
            for name in sorted(known):
                record = store.get(name)
                if record is not None:
                    kernels.append((name, record.source, f"redis:{record.key}"))
            if not kernels:
                fail("no kernels stored yet; name kernel files or folders, or compile some")
    built = build_graph(kernels, known=known)
    if fmt == "text":
        text = to_text(built)
    elif fmt == "dot":
        text = to_dot(built)
    elif fmt == "json":
        text = json.dumps(built.to_json(), indent=2)
    else:
        try:
            text = to_svg(built, engine=engine)
        except (FileNotFoundError, RuntimeError) as exc:
            fail(str(exc))
            return
    if output:
        Path(output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))
    missing = built.missing
    if missing and fmt != "text":
        for edge in missing:
            click.echo(f"warning: {edge.source} calls missing kernel {edge.target!r}", err=True)
    if missing and strict:
        raise SystemExit(1)
