"""The knobs of one VM process (see docs/vm.md and docs/operations.md).

Its own module because every part of the VM reads it — the stream consumer, the step, the
committer and the VM's life cycle — and none of them may import another's module for it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

#: Where kernel code runs (see docs/isolation.md); the first is the default.
ISOLATION_MODES = ("jail", "process", "thread")


def default_vm_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class VMConfig:
    """Knobs of one VM process (see docs/vm.md and docs/operations.md)."""

    threads: int = 8
    name: str = field(default_factory=default_vm_name)
    retention: int = 7 * 24 * 3600
    max_log: int = 10_000
    echo: bool = True
    block_ms: int = 500
    timeout_grace: float = 2.0
    echo_to: Callable[[str], None] | None = None
    #: Seconds without a heartbeat after which this VM's chains may be taken over.
    lease: float = 10.0
    #: First retry delay (doubles per attempt, capped by retry_backoff_max).
    retry_backoff: float = 0.5
    retry_backoff_max: float = 30.0
    #: "jail" (default: each kernel in its own confined process, see docs/isolation.md),
    #: "process" (worker processes with time and memory limits, no jail) or "thread"
    #: (in the VM process: for kernels trusted as much as the VM's own code).
    isolation: str = "jail"
    memory_limit_mb: int = 512
    #: With jail isolation: at most this many cells (one kernel version each) live at once.
    max_cells: int = 64
    #: A step without effects needs no commit of its own (a crash re-runs it from the last
    #: checkpoint); checkpoint anyway after this many steps or milliseconds.
    checkpoint_steps: int = 100
    checkpoint_ms: float = 100.0
    #: Learn about hot patches from Redis invalidation messages instead of asking each step.
    track_kernels: bool = True
    #: Send the commits of concurrently running chains together, one round trip per batch.
    group_commit: bool = True
    #: With at most this many chains running, a chain's next kernel runs while its previous
    #: step's commit is on the wire (see InFlight); above it, group commit takes over.
    pipeline_below: int = 4
    #: Housekeeping (trimming the streams, pruning dead VMs and expired ids) runs at most
    #: this often, from the heartbeat.  Acknowledged start entries younger than
    #: ``stream_retention`` seconds are kept (to see what was submitted lately).
    housekeeping_every: float = 60.0
    stream_retention: float = 3600.0
    #: Serve chains pinned to this VM (``pyrecks run --local``, ``Pyrecks.local_vm``): it
    #: reads its own pinned stream, and no other VM runs those chains while it beats.
    pinned: bool = False
