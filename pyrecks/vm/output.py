"""What a step prints, on its way to the chain's log.

Lines of a quick step travel with its commit (one round trip for everything).  A step that
runs longer than :data:`LIVE_AFTER` has its lines written to the log as they come — the
seed's ``func2`` prints, sleeps ten seconds and prints again, and its first line must show
in ``pyrecks logs -f`` at once, not ten seconds later.  The executor calls :meth:`tick`
while it waits for a step, so a line printed early in a long step is written once the step
has run for ``LIVE_AFTER`` even if nothing else is printed.

Live lines are written in batches, at most one write every :data:`LIVE_EVERY` seconds (or
once :data:`LIVE_BATCH` lines wait): a kernel that prints 200,000 lines must not cost
200,000 round trips — that made its step crawl (and time out in a jail cell), and kept
Redis and every follower of the log busy for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pyrecks.display import one_line
from pyrecks.vm.sandbox import OutputBuffer

#: A step that has run this long has its printed lines written to the log as they come.
LIVE_AFTER = 0.1
#: Once live, printed lines are written at most this often (a human cannot read faster) …
LIVE_EVERY = 0.1
#: … unless this many wait: one write stays small however fast a kernel prints.
LIVE_BATCH = 1000
#: Printed text one step may put in the log; lines past it are counted, not kept.
MAX_STEP_OUTPUT = 1024 * 1024



class StepOutput(OutputBuffer):
    """Lines one step printed; ``flush`` writes lines to the chain log while the step runs."""

    def __init__(
        self,
        echo: Callable[[str], None] | None = None,
        flush: Callable[[list[str]], None] | None = None,
        log_keeps: int | None = None,
    ) -> None:
        super().__init__(echo)
        self._flush = flush
        #: The chain log's length (``max_log``): a step printing more loses its first lines.
        self._log_keeps = log_keeps
        self._printed = 0  # lines kept (not dropped by MAX_STEP_OUTPUT)
        self._started = time.monotonic()
        self._written = 0.0  # when lines were last written live (monotonic)
        self._kept = 0  # characters of output kept so far
        self._dropped = 0

    def write_line(self, line: str) -> None:
        line = one_line(line)  # a kernel may not drive the terminal
        if self._kept + len(line) > MAX_STEP_OUTPUT:
            self._dropped += 1
            return
        self._kept += len(line)
        self._printed += 1
        super().write_line(line)
        self.tick()

    def tick(self) -> None:
        """Write what is not in the log yet, if the step has been running long enough."""
        if self._flush is None or not self.lines:
            return
        at = time.monotonic()
        if at - self._started < LIVE_AFTER:
            return
        if at - self._written < LIVE_EVERY and len(self.lines) < LIVE_BATCH:
            return
        self._written = at
        # Written lines are not kept: a step that prints for minutes must not grow the VM.
        pending, self.lines = self.lines, []
        self._flush(pending)

    @property
    def unwritten(self) -> list[str]:
        """Lines not yet in the log: they go with the step's commit (with a note of how
        many lines were dropped, if the step printed more than it may keep, or more than
        the log holds — a note in the log itself, so every reader of it shows it)."""
        if self._dropped:
            self.lines.append(
                f"[{self._dropped} more line(s) dropped: a step keeps at most "
                f"{MAX_STEP_OUTPUT // 1024} KiB of printed output]"
            )
            self._dropped = 0
        keeps = self._log_keeps
        if keeps is not None and self._printed > keeps:
            self.lines.append(
                f"[… about {self._printed - keeps:,} earlier lines of this step dropped "
                f"(the log keeps its last {keeps:,} entries)]"
            )
            self._printed = 0
        return self.lines
