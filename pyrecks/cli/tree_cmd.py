"""``pyrecks tree <id>``: a chain's picture in the terminal.

Steps in order, each with its kernel, status, duration and attempt; a fan-out lists its
branches (``<id>.0``, ``<id>.1``, …) with their own steps, and the join follows.  The tree is
built by :mod:`pyrecks.chaintree`, the module ``pyrecks ui`` draws its SVG picture from.

Register on the ``pyrecks`` group with ``main.add_command(tree)``.
"""

from __future__ import annotations

import json
import sys

import click

from pyrecks.chaintree import build_tree, render_text
from pyrecks.cli.common import redis_option


@click.command()
@click.argument("chain_id")
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
@click.option(
    "--all", "show_all", is_flag=True, help="Show every step (default: elide long chains)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=2),
    default=40,
    show_default=True,
    help="Steps shown per chain before the middle ones are elided.",
)
@click.option(
    "--color/--no-color", default=None, help="Colour statuses (default: when on a terminal)."
)
@redis_option
def tree(
    chain_id: str,
    as_json: bool,
    show_all: bool,
    limit: int,
    color: bool | None,
    redis_url: str | None,
) -> None:
    """Show CHAIN_ID as a tree: steps, fan-out branches and joins, with durations."""
    from pyrecks.api import connect

    built = build_tree(connect(redis_url), chain_id)
    if as_json:
        click.echo(json.dumps(built.to_json(), indent=2))
        return
    use_color = sys.stdout.isatty() if color is None else color
    click.echo(
        render_text(built, color=use_color, limit=None if show_all else limit, style=click.style),
        color=use_color,
    )
