"""``pyrecks ui``: serve the web view with uvicorn.

Register on the ``pyrecks`` group with ``main.add_command(ui)``.
"""

from __future__ import annotations

import ipaddress
import os

import click

from pyrecks.cli.common import fail, redis_option

TOKEN_ENV = "PYRECKS_UI_TOKEN"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    help=f"Enable the retry and cancel buttons; they need this token (env {TOKEN_ENV}). "
    "Without it the view is read-only.",
)
@redis_option
def ui(host: str, port: int, token: str | None, redis_url: str | None) -> None:
    """Serve a web view of chains (live logs, pictures), VMs and kernels."""
    try:
        import uvicorn

        from pyrecks.ui.app import create_app
    except ImportError as exc:  # pragma: no cover - a broken install
        fail(f"pyrecks ui needs starlette and uvicorn ({exc}); pip install starlette uvicorn")
        return
    from pyrecks.api import connect

    px = connect(redis_url)
    px.r.ping()  # a clear error now rather than on the first page
    allowed = LOOPBACK_NAMES if _is_loopback(host) else None
    app = create_app(px, token or None, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    mode = "buttons need the token" if token else "read-only (pass --token to enable buttons)"
    click.echo(f"pyrecks ui on http://{shown}:{port}/ — {mode}; Ctrl-C to stop",
               err=True)  # fmt: skip
    if not _is_loopback(host):
        click.echo(
            "warning: listening beyond this machine; anyone who reaches it can read chain "
            "data and logs",
            err=True,
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=os.environ.get("PYRECKS_UI_LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=2,
    )
