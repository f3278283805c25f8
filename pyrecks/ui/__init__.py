"""``pyrecks ui``: a web view of chains, VMs and kernels (Starlette; no CDN, no build step).

``create_app(px, token=None)`` returns the ASGI application; ``pyrecks.ui.cli.ui`` is the
click command that serves it with uvicorn.  See ``docs/observability.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from pyrecks.api import Pyrecks

__all__ = ["create_app"]


def create_app(px: Pyrecks, token: str | None = None, **kwargs: Any) -> Starlette:
    """The web application for ``px`` (imports Starlette only when called)."""
    from pyrecks.ui.app import create_app as _create

    return _create(px, token, **kwargs)
