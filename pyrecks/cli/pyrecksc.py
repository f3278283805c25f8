"""``pyrecksc``: parse return strings, lint, compile, store and inspect kernels."""

from __future__ import annotations

import click

from pyrecks import __version__
from pyrecks.cli.common import PyrecksGroup


@click.group(cls=PyrecksGroup)
@click.version_option(__version__, prog_name="pyrecksc")
def main() -> None:
    """Compile side of pyrecks: check and store kernels, parse return strings."""


def _register() -> None:
    # Each command family lives in its own module; importing registers it on ``main``.
    from pyrecks.cli import kernel_cmds, parse_cmd  # noqa: F401
    from pyrecks.cli.graph_cmd import graph

    main.add_command(graph)


_register()
