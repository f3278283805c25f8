"""What a kernel's ``@key`` inputs may read: the fence on reads that effects have on writes.

Two rules, each with one owner: the PREPARE script (:mod:`pyrecks.vm.chainstore`) refuses
keys that belong to pyrecks and keys that hold kernels (the keys effects may not write), and
:func:`check_inputs` applies the policy's ``input_key_patterns``.  Without them any kernel,
and any client allowed to start a chain, could read every key the VM's Redis user can read:
other chains' records and results, other tenants' data.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from pyrecks.vm.failures import StepFailure


def check_inputs(kernel: str, keys: Sequence[str], patterns: Sequence[str]) -> None:
    """Refuse ``@key`` inputs outside the deployment's input key patterns (if any).

    Reads get the same kind of fence as writes: without one, any kernel (and any client
    allowed to start a chain) could read every key the VM's Redis user can read.
    """
    if not patterns:
        return
    for key in keys:
        if not any(fnmatch.fnmatchcase(key, p) for p in patterns):
            raise StepFailure(
                "input",
                f"{kernel}: @{key} does not match the allowed input key patterns "
                f"{list(patterns)} (policy input_key_patterns); widen them with "
                "'pyrecksc policy set --input-keys PATTERN', or read another key",
            )


def refused_input(kernel: str, key: str, why: str) -> str:
    """The message for an ``@key`` the PREPARE script refused (``internal`` or ``kernel``)."""
    what = (
        "belongs to pyrecks (chain records, results, logs: other chains' data)"
        if why == "internal"
        else "holds a kernel (kernels are read with 'pyrecksc show', not passed as data)"
    )
    return f"{kernel}: @{key} may not be read by kernels: the key {what}"
