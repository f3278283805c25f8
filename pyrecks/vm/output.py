"""What a step prints, on its way to the chain's log.

Lines of a quick step travel with its commit (one round trip for everything).  A step that
runs longer than :data:`LIVE_AFTER` has its lines written to the log as they come — the
seed's ``func2`` prints, sleeps ten seconds and prints again, and its first line must show
in ``pyrecks logs -f`` at once, not ten seconds later.  The executor calls :meth:`tick`
while it waits for a step, so a line printed early in a long step is written once the step
has run for ``LIVE_AFTER`` even if nothing else is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pyrecks.vm.sandbox import OutputBuffer

#: A step that has run this long has its printed lines written to the log as they come.
LIVE_AFTER = 0.1
#: Printed text one step may put in the log; lines past it are counted, not kept.
MAX_STEP_OUTPUT = 1024 * 1024

# Control characters (but tab) shown escaped: a kernel must not be able to move the
# operator's cursor, clear a terminal or forge what looks like another chain's line.
_ESCAPES = {
    c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09
}


class StepOutput(OutputBuffer):
    """Lines one step printed; ``flush`` writes lines to the chain log while the step runs."""

    def __init__(
        self,
        echo: Callable[[str], None] | None = None,
        flush: Callable[[list[str]], None] | None = None,
    ) -> None:
        super().__init__(echo)
        self._flush = flush
        self._started = time.monotonic()
        self._kept = 0  # characters of output kept so far
        self._dropped = 0

    def write_line(self, line: str) -> None:
        line = line.translate(_ESCAPES)
        if self._kept + len(line) > MAX_STEP_OUTPUT:
            self._dropped += 1
            return
        self._kept += len(line)
        super().write_line(line)
        self.tick()

    def tick(self) -> None:
        """Write what is not in the log yet, if the step has been running long enough."""
        if (
            self._flush is None
            or not self.lines
            or time.monotonic() - self._started < LIVE_AFTER
        ):
            return
        # Written lines are not kept: a step that prints for minutes must not grow the VM.
        pending, self.lines = self.lines, []
        self._flush(pending)

    @property
    def unwritten(self) -> list[str]:
        """Lines not yet in the log: they go with the step's commit (with a note of how
        many lines were dropped, if the step printed more than it may keep)."""
        if self._dropped:
            self.lines.append(
                f"[{self._dropped} more line(s) dropped: a step keeps at most "
                f"{MAX_STEP_OUTPUT // 1024} KiB of printed output]"
            )
            self._dropped = 0
        return self.lines
