"""Shared helpers for VM tests: store raw (redis-cli style) kernels, run chains to the end."""

from __future__ import annotations

import textwrap

import redis

from pyrecks.api import Pyrecks


def raw_kernel(r: redis.Redis, name: str, source: str) -> None:
    """Store a kernel the seed's way: a plain string under its name, no checker run."""
    r.set(name, textwrap.dedent(source).lstrip("\n"))


def run_to_end(px: Pyrecks, call: str, timeout: float = 30.0, **vm_config: object):  # type: ignore[no-untyped-def]
    """Start ``call`` on a VM in this process and wait for the chain to finish."""
    chain = px.start(call)
    with px.local_vm(echo=False, **vm_config):
        return px.wait(chain, timeout=timeout)
