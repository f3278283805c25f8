"""pyrecks: chains of small, pure Python kernels that run next to their data in Redis.

The public Python API lives in :mod:`pyrecks.api`; the names most programs need are
re-exported here lazily so that ``import pyrecks`` stays cheap for kernels that only need
:mod:`pyrecks.kernel`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API_NAMES = {"connect", "Pyrecks", "ChainStatus"}


def __getattr__(name: str) -> Any:
    # Lazy so that kernels importing pyrecks.kernel do not pull in redis, the VM and click.
    if name in _API_NAMES:
        from pyrecks import api

        return getattr(api, name)
    raise AttributeError(f"module 'pyrecks' has no attribute {name!r}")
