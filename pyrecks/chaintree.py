"""A chain's picture as data: its steps, fan-out branches and joins, with timings.

One place builds it, two places draw it: ``pyrecks tree <id>`` (text, :func:`render_text`)
and ``pyrecks ui`` (SVG, :mod:`pyrecks.ui.picture`).  Everything comes from what the VM
already writes:

* the chain record (``status``, ``step``, ``call``, ``join``, ``branches``, ``started`` …);
* the chain's log stream, one entry per event: ``step`` (a step ran; ``text`` says where the
  chain goes next, ``ts`` is when its commit was made), ``fanout``, ``error``, ``retry``,
  ``end`` and ``out`` (a printed line, with ``attempt`` = ``epoch.try`` of the run that
  printed it);
* the records and logs of the branch chains ``<id>.0``, ``<id>.1``, … of every fan-out.

A step's duration runs from the end of the step before it (for the first step, from the
moment a VM claimed the chain; for a join, from the end of its last branch) to its own
``step``/``fanout``/``error`` entry.  Pure steps are committed in batches, so a step that is
running may show while the steps before it are not in the log yet; they appear at the next
checkpoint.  The log keeps the last ``max_log`` entries of a chain: when older ones were
dropped, :attr:`ChainTree.truncated` says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyrecks.api import Pyrecks
from pyrecks.display import one_line
from pyrecks.errors import ChainNotFound
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry

__all__ = [
    "ChainTree",
    "StepNode",
    "build_tree",
    "format_duration",
    "render_text",
]

#: Fan-outs deeper than this are not expanded (a branch that fans out, whose branch fans out …).
MAX_DEPTH = 6
#: At most this many branches of one fan-out are read (the rest are counted, not drawn).
MAX_BRANCHES = 64

_NAME = re.compile(r"\s*(?:->\s*)?([A-Za-z_]\w*)\s*\(")


def _kernel_of(call_text: str | None) -> str:
    """``merge(["a"], "x")`` -> ``merge`` (``''`` if the text names no call)."""
    if not call_text:
        return ""
    match = _NAME.match(call_text)
    return match.group(1) if match else ""


@dataclass
class StepNode:
    """One step of a chain: a kernel that ran (or runs, or will run next)."""

    step: int
    kernel: str
    #: ``done``, ``running``, ``queued``, ``waiting`` (a fan-out whose branches run),
    #: ``failed``, ``cancelled`` or ``pending`` (the next call, not started yet).
    status: str
    #: ``step``, ``fanout`` (its :attr:`branches` ran in parallel) or ``join``.
    kind: str = "step"
    started: float | None = None
    ended: float | None = None
    #: ``epoch.try`` of the run that printed the step's last line ("" if it printed none).
    attempt: str = ""
    #: How many times the step was run (1 + retries + re-runs after a failure).
    tries: int = 1
    #: Where the chain went next (``-> func1("x")``, ``-> end``), or the fan-out text.
    text: str = ""
    error: str | None = None
    lines: int = 0
    branches: list[ChainTree] = field(default_factory=list)
    #: Branches of the fan-out that were not read (beyond ``MAX_BRANCHES`` or ``MAX_DEPTH``).
    hidden_branches: int = 0

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        if self.ended is not None:
            return max(0.0, self.ended - self.started)
        if self.status == "running":
            return max(0.0, time.time() - self.started)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kernel": self.kernel,
            "status": self.status,
            "kind": self.kind,
            "started": self.started,
            "ended": self.ended,
            "duration": self.duration,
            "attempt": self.attempt,
            "tries": self.tries,
            "text": self.text,
            "error": self.error,
            "lines": self.lines,
            "branches": [b.to_json() for b in self.branches],
            "hidden_branches": self.hidden_branches,
        }


@dataclass
class ChainTree:
    """A chain (or a fan-out branch) and its steps, in order."""

    info: ChainInfo
    steps: list[StepNode]
    #: The log lost its oldest entries (it keeps the last ``max_log``).
    truncated: bool = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status.value

    @property
    def duration(self) -> float | None:
        start = self.info.started or self.info.created
        if start is None:
            return None
        end = self.info.finished
        if end is None:
            return time.time() - start if not self.info.status.finished else None
        return max(0.0, end - start)

    def walk(self) -> Iterator[tuple[ChainTree, StepNode]]:
        """Every (chain, step) pair, depth first, branches right after their fan-out."""
        for node in self.steps:
            yield self, node
            for branch in node.branches:
                yield from branch.walk()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "kernel": self.info.kernel,
            "call": self.info.call,
            "created": self.info.created,
            "started": self.info.started,
            "finished": self.info.finished,
            "duration": self.duration,
            "result": self.info.result if self.info.status is ChainStatus.DONE else None,
            "error": self.info.error,
            "error_kind": self.info.error_kind,
            "parent": self.info.parent,
            "truncated": self.truncated,
            "steps": [s.to_json() for s in self.steps],
        }


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def build_tree(
    px: Pyrecks,
    chain_id: str,
    *,
    depth: int = MAX_DEPTH,
    max_branches: int = MAX_BRANCHES,
) -> ChainTree:
    """Read the chain's record, log and branches and build its tree (ChainNotFound if none)."""
    info = px.status(chain_id)
    entries = list(px.logs(chain_id))
    return tree_from(px, info, entries, depth=depth, max_branches=max_branches)


def tree_from(
    px: Pyrecks | None,
    info: ChainInfo,
    entries: list[LogEntry],
    *,
    depth: int = MAX_DEPTH,
    max_branches: int = MAX_BRANCHES,
) -> ChainTree:
    """The tree of one chain from its record and log; branches are read through ``px``."""
    steps: dict[int, StepNode] = {}
    order: list[int] = []
    # Where the next step starts: the end of the previous one (first: the claim).
    cursor: float | None = info.started
    last_next: str | None = None  # where the last finished step said the chain goes
    chain_ended = False

    def node_for(step: int, kernel: str) -> StepNode:
        node = steps.get(step)
        if node is None:
            node = steps[step] = StepNode(step=step, kernel=kernel, status="running")
            node.started = cursor
            order.append(step)
        elif kernel and not node.kernel:
            node.kernel = kernel
        return node

    # Steps that failed: the next entry of such a step starts another run of it.
    rerun: set[int] = set()

    def another_run(node: StepNode) -> None:
        if node.step in rerun:
            rerun.discard(node.step)
            node.tries += 1
            node.error = None
            # When the new run began is not logged (a retry is queued and claimed later).
            node.started = None
            node.ended = None

    for entry in entries:
        kind = entry.kind
        if kind == "out":
            node = node_for(entry.step, entry.kernel)
            another_run(node)
            node.lines += 1
            node.attempt = entry.attempt or node.attempt
            if node.status == "failed":
                node.status = "running"
        elif kind == "retry":
            # The VM retries the step itself (a retryable failure): another run follows.
            node = node_for(entry.step, entry.kernel)
            another_run(node)
            node.tries += 1
            node.status = "running"
            node.started = entry.ts
        elif kind in ("step", "fanout"):
            node = node_for(entry.step, entry.kernel)
            another_run(node)
            node.ended = entry.ts
            node.text = entry.text
            node.error = None
            if kind == "fanout":
                node.kind = "fanout"
                node.status = "waiting"
                last_next = None
            else:
                node.status = "done"
                last_next = entry.text[3:] if entry.text.startswith("-> ") else entry.text
            cursor = entry.ts
        elif kind == "error":
            if not entry.kernel and entry.step in steps and steps[entry.step].kind == "fanout":
                node = steps[entry.step]  # a branch failed: the fan-out failed with it
                node.status = "failed"
                node.error = entry.text
                continue
            node = node_for(entry.step, entry.kernel)
            another_run(node)
            node.status = "failed"
            node.error = entry.text
            node.ended = entry.ts
            rerun.add(node.step)
            cursor = entry.ts
        elif kind == "end":
            chain_ended = True
            if not entry.kernel:  # cancelled
                for node in steps.values():
                    if node.status in ("running", "queued", "waiting"):
                        node.status = "cancelled"
                        node.ended = node.ended or entry.ts

    nodes = [steps[s] for s in sorted(order)]
    truncated = bool(entries) and entries[0].step > 1 and entries[0].kind != "end"
    # Fan-outs: their branches, then whether the join is running, done or to come.
    for index, node in enumerate(nodes):
        if node.kind != "fanout":
            continue
        count = _branch_count(node.text) or int(info.raw.get("branches") or 0)
        shown = min(count, max_branches) if depth > 0 and px is not None else 0
        for i in range(shown):
            branch = _read_branch(px, f"{info.id}.{i}", depth - 1, max_branches)
            # A later fan-out of the same chain reuses the ids <id>.<i>: a branch belongs
            # to this fan-out only if the fan-out's commit created it.
            if branch is not None and _created_by(branch, node):
                node.branches.append(branch)
        node.hidden_branches = count - len(node.branches)
        _settle_fanout(node)
        later = nodes[index + 1] if index + 1 < len(nodes) else None
        if later is not None:
            if node.status == "waiting":
                node.status = "done"  # the join ran: every branch had ended
            later.kind = "join"
            finished = [b.info.finished for b in node.branches if b.info.finished]
            if finished and later.started is not None:
                later.started = max(later.started, max(finished))
    _finish_open_steps(info, nodes, last_next, chain_ended)
    return ChainTree(info=info, steps=nodes, truncated=truncated)


def _branch_count(fanout_text: str) -> int:
    """How many branches the fan-out text ``[a(1), b(2)] -> j()`` names."""
    from pyrecks.compiler.instructions import FanOut
    from pyrecks.compiler.parser import parse

    try:
        then = parse(fanout_text).then
    except Exception:  # an old or odd log line: count nothing rather than fail the picture
        return 0
    return len(then.branches) if isinstance(then, FanOut) else 0


def _read_branch(
    px: Pyrecks | None, chain_id: str, depth: int, max_branches: int
) -> ChainTree | None:
    if px is None:
        return None
    try:
        info = px.status(chain_id)
    except ChainNotFound:
        return None  # expired, or not created yet
    return tree_from(px, info, list(px.logs(chain_id)), depth=depth, max_branches=max_branches)


def _created_by(branch: ChainTree, node: StepNode) -> bool:
    created = branch.info.created
    return created is None or node.ended is None or abs(created - node.ended) < 0.001


def _settle_fanout(node: StepNode) -> None:
    if node.status == "failed":
        return
    statuses = {b.status for b in node.branches}
    if "failed" in statuses:
        node.status = "failed"
    elif "cancelled" in statuses and statuses <= {"cancelled", "done"}:
        node.status = "cancelled"
    elif node.branches and statuses == {"done"} and not node.hidden_branches:
        node.status = "done"
    else:
        node.status = "waiting"


def _finish_open_steps(
    info: ChainInfo, nodes: list[StepNode], last_next: str | None, chain_ended: bool
) -> None:
    """Steps with no end entry: running, cancelled or failed with the chain; the next call."""
    status = info.status
    for node in nodes:
        if node.ended is not None or node.status not in ("running", "queued"):
            continue
        if status is ChainStatus.CANCELLED:
            node.status = "cancelled"
        elif status is ChainStatus.FAILED:
            node.status = "failed"
        elif status is ChainStatus.QUEUED:
            node.status = "queued"
        elif status is ChainStatus.DONE:
            node.status = "done"
    if status.finished or chain_ended:
        return
    last = nodes[-1] if nodes else None
    if last is not None and last.ended is None:
        return  # the step that runs now is already in the picture
    next_step = max(info.step, last.step if last else 0) + 1
    if last is not None and last.kind == "fanout":
        kernel = _kernel_of(info.raw.get("join"))
        if kernel:
            nodes.append(StepNode(next_step, kernel, "pending", kind="join", text="join"))
        return
    kernel = _kernel_of(last_next) or _kernel_of(info.call)
    if not kernel:
        return
    state = {ChainStatus.RUNNING: "running", ChainStatus.QUEUED: "queued"}.get(status, "pending")
    started = last.ended if last is not None else info.started
    if state == "queued":
        started = None
    nodes.append(StepNode(next_step, kernel, state, started=started))


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``0.8ms``, ``12ms``, ``1.25s``, ``3m04s``, ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f}ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


STATUS_COLORS = {
    "done": "green",
    "running": "blue",
    "queued": "white",
    "pending": "white",
    "waiting": "yellow",
    "failed": "red",
    "cancelled": "magenta",
}


def _visible(steps: list[StepNode], limit: int | None) -> list[StepNode | int]:
    """The steps to draw: all, or the first and last ``limit // 2`` and the count between."""
    if limit is None or len(steps) <= limit:
        return list(steps)
    head = max(1, limit // 2)
    tail = max(1, limit - head)
    return [*steps[:head], len(steps) - head - tail, *steps[-tail:]]


def visible_steps(steps: list[StepNode], limit: int | None) -> list[StepNode | int]:
    """Public alias of the elision rule shared by the text and SVG pictures."""
    return _visible(steps, limit)


def render_text(
    tree: ChainTree,
    *,
    color: bool = False,
    limit: int | None = 40,
    style: Any = None,
) -> str:
    """The tree as indented text lines (``pyrecks tree``); ``limit`` elides long chains."""

    def paint(text: str, status: str) -> str:
        text = one_line(text)  # from Redis: a terminal must not obey it (pyrecks.display)
        if not color or style is None:
            return text
        return str(style(text, fg=STATUS_COLORS.get(status)))

    lines: list[str] = []
    status = paint(tree.status, tree.status)
    head = f"chain {one_line(tree.id)}  {status}  {format_duration(tree.duration)}"
    if tree.truncated:
        head += "  (log truncated: the oldest steps were dropped)"
    lines.append(head)
    _text_steps(tree, "", lines, paint, limit)
    return "\n".join(lines)


def _describe_node(node: StepNode, paint: Any) -> str:
    label = {"fanout": "  fan-out", "join": "  join"}.get(node.kind, "")
    parts = [
        f"step {node.step:<3} {one_line(node.kernel or '?')}{label}",
        paint(node.status, node.status),
        format_duration(node.duration),
    ]
    if node.tries > 1 or (node.attempt and not node.attempt.endswith(".1")):
        parts.append(f"attempt {node.tries}" + (f" ({node.attempt})" if node.attempt else ""))
    if node.kind == "fanout":
        total = len(node.branches) + node.hidden_branches
        parts.append(f"{total} branch{'es' if total != 1 else ''}")
    return "  ".join(parts)


def _text_steps(
    tree: ChainTree, prefix: str, lines: list[str], paint: Any, limit: int | None
) -> None:
    items: list[StepNode | int | str] = list(_visible(tree.steps, limit))
    info = tree.info
    if info.status is ChainStatus.DONE:
        items.append(f"result {info.result}" if info.result else "halted")
    elif info.status in (ChainStatus.FAILED, ChainStatus.CANCELLED) and info.error:
        items.append(f"{info.status.value}: [{info.error_kind}] {info.error.splitlines()[0]}")
    for index, item in enumerate(items):
        last = index == len(items) - 1
        branch_char = "└─ " if last else "├─ "
        child_prefix = prefix + ("   " if last else "│  ")
        if isinstance(item, int):
            lines.append(f"{prefix}{branch_char}… {item} more steps …")
            continue
        if isinstance(item, str):
            lines.append(f"{prefix}{branch_char}{paint(item, info.status.value)}")
            continue
        lines.append(f"{prefix}{branch_char}{_describe_node(item, paint)}")
        repeated = (
            info.error is not None
            and item.error is not None
            and (info.error.splitlines()[0] == item.error.splitlines()[0])
        )
        if item.error and item.kind != "fanout" and not repeated:
            lines.append(f"{child_prefix}! {one_line(item.error.splitlines()[0][:120])}")
        children: list[ChainTree | int] = [*item.branches]
        if item.hidden_branches:
            children.append(item.hidden_branches)
        for bi, branch in enumerate(children):
            blast = bi == len(children) - 1
            bchar = "└─ " if blast else "├─ "
            bprefix = child_prefix + ("   " if blast else "│  ")
            if isinstance(branch, int):
                lines.append(f"{child_prefix}{bchar}… {branch} more branches (not read)")
                continue
            lines.append(
                f"{child_prefix}{bchar}branch {one_line(branch.id)}  "
                f"{paint(branch.status, branch.status)}"
                f"  {format_duration(branch.duration)}"
            )
            _text_steps(branch, bprefix, lines, paint, limit)
