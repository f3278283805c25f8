"""Every Redis key name pyrecks uses is built here, and only here.

Chain keys carry a hash tag made from the *root* chain id (``{root}``), so a chain, its log,
its fan-out branches and their results all live in one Redis Cluster slot and one Lua script
may touch them together.  Kernel records live under ``kernel_prefix + name``; the prefix is
empty by default so that the seed's ``SET func0 "<source>"`` names the kernel ``func0``.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "pyrecks"


def root_of(chain_id: str) -> str:
    """The root chain of a fan-out branch id (``abc.0.1`` -> ``abc``)."""
    return chain_id.split(".", 1)[0]


@dataclass(frozen=True)
class Keyspace:
    """Key names for one pyrecks deployment (one kernel prefix, one namespace)."""

    kernel_prefix: str = ""
    namespace: str = NAMESPACE

    def kernel(self, name: str) -> str:
        """The hash (or seed-style string) holding kernel ``name``."""
        return f"{self.kernel_prefix}{name}"

    @property
    def internal_prefix(self) -> str:
        """Every key pyrecks owns starts with this; effects may never write such keys."""
        return f"{self.namespace}:"

    @property
    def kernels(self) -> str:
        """Set of the names of every kernel stored through pyrecks (compile or first use)."""
        return f"{self.namespace}:kernels"

    @property
    def policy(self) -> str:
        """Hash holding the sandbox policy shared by the checker and every VM."""
        return f"{self.namespace}:policy"

    @property
    def starts(self) -> str:
        """Stream any Redis client may XADD to in order to start a chain."""
        return f"{self.namespace}:starts"

    @property
    def resumes(self) -> str:
        """Stream of chains to continue (handed back on drain, given back, a fan-out's
        branches and join): VMs read it before ``starts``, so older work goes first."""
        return f"{self.namespace}:resume"

    @property
    def chains(self) -> str:
        """Sorted set of root chain ids scored by creation time (for ``pyrecks ls``)."""
        return f"{self.namespace}:chains"

    @property
    def vms(self) -> str:
        """Hash of VM name -> last heartbeat record (JSON), for ``pyrecks vms``."""
        return f"{self.namespace}:vms"

    def vm(self, name: str) -> str:
        """Exists while VM ``name`` is alive: its heartbeat, which expires after the lease."""
        return f"{self.namespace}:vm:{name}"

    def vm_asks(self, name: str) -> str:
        """Set of chain ids other VMs found owned by VM ``name`` while it lives: it releases
        any of them it does not run (Redis may remember an owner the VM forgot)."""
        return f"{self.namespace}:vm-asks:{name}"

    def pinned(self, name: str) -> str:
        """Stream of chains pinned to VM ``name`` (``pyrecks run --local``): only that VM
        reads it; once its heartbeat is gone, any VM moves them to the resume stream."""
        return f"{self.namespace}:pinned:{name}"

    @property
    def pins(self) -> str:
        """Set of the VM names that have a pinned stream (what the lapse check reads)."""
        return f"{self.namespace}:pins"

    @property
    def failed(self) -> str:
        """Sorted set of failed chain ids scored by failure time."""
        return f"{self.namespace}:failed"

    def _tagged(self, kind: str, chain_id: str) -> str:
        root = root_of(chain_id)
        return f"{self.namespace}:{kind}:{{{root}}}{chain_id[len(root) :]}"

    def chain(self, chain_id: str) -> str:
        """Hash: the chain record (status, step, current call, owner, timings, error)."""
        return self._tagged("chain", chain_id)

    def log(self, chain_id: str) -> str:
        """Stream: the chain's append-only log (steps, kernel output, errors)."""
        return self._tagged("log", chain_id)

    def ended(self, chain_id: str) -> str:
        """Stream that gets one entry when the chain ends (what ``Pyrecks.wait`` blocks on).

        The scripts derive it from the chain key (``:chain:{`` -> ``:end:{``).
        """
        return self._tagged("end", chain_id)

    def results(self, chain_id: str) -> str:
        """Hash: branch index -> result of each fan-out branch of ``chain_id``."""
        return self._tagged("results", chain_id)
