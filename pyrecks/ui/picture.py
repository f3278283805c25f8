"""A chain's picture as inline SVG: steps top to bottom, fan-out branches side by side.

Drawn on the server from a :class:`~pyrecks.chaintree.ChainTree` (the same tree
``pyrecks tree`` prints), so the page needs no layout script: every step is a box with its
kernel, status, duration, step number and attempt; a fan-out's branches (``<id>.<i>``) hang
below it in columns, each ending with its result; their last boxes join into the join step.
Long chains are elided in the middle (``… N steps …``), as in the terminal.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from pyrecks.chaintree import ChainTree, StepNode, format_duration, visible_steps
from pyrecks.vm.records import ChainStatus

NODE_W = 176
NODE_H = 54
GAP_Y = 26
GAP_X = 22
HEADER_H = 20
PILL_H = 24
#: Characters of a result that fit in an end pill (12px text, DejaVu Sans is the widest).
PILL_CHARS = 24
PAD = 16


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str, size: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1] + "…"


@dataclass
class _Block:
    """A laid-out piece: its size, and its SVG drawn at (0, 0) (moved with a transform)."""

    width: float
    height: float
    parts: list[str] = field(default_factory=list)
    #: Where edges attach: top centre and bottom centre (x relative to the block).
    top_x: float = 0.0
    bottom_x: float = 0.0


def _node(node: StepNode, chain_id: str) -> list[str]:
    label = {"fanout": " · fan-out", "join": " · join"}.get(node.kind, "")
    line2 = f"{node.status} · {format_duration(node.duration)}"
    line3 = f"step {node.step} · attempt {node.tries}"
    if node.lines:
        line3 += f" · {node.lines} line{'s' if node.lines != 1 else ''}"
    tip = f"{node.kernel} step {node.step}: {node.status}, attempt {node.tries}"
    if node.attempt:
        tip += f" (run {node.attempt}: claim {node.attempt.replace('.', ', try ')})"
    if node.text:
        tip += f"\n{node.text}"
    if node.error:
        tip += f"\n{node.error}"
    return [
        f'<g class="node status-{_esc(node.status)} kind-{_esc(node.kind)}" '
        f'data-chain="{_esc(chain_id)}" data-step="{node.step}" data-kernel="{_esc(node.kernel)}" '
        f'data-status="{_esc(node.status)}">',
        f"<title>{_esc(_short(tip, 600))}</title>",
        f'<rect width="{NODE_W}" height="{NODE_H}" rx="9"/>',
        f'<text class="k" x="10" y="18">{_esc(_short(node.kernel or "?", 18))}{_esc(label)}</text>',
        f'<text class="s" x="10" y="33">{_esc(line2)}</text>',
        f'<text class="m" x="10" y="47">{_esc(_short(line3, 30))}</text>',
        "</g>",
    ]


def _pill(text: str, status: str) -> list[str]:
    return [
        f'<g class="end status-{_esc(status)}"><title>{_esc(_short(text, 600))}</title>',
        f'<rect width="{NODE_W}" height="{PILL_H}" rx="12"/>',
        f'<text x="{NODE_W / 2}" y="16" text-anchor="middle">'
        f"{_esc(_short(text, PILL_CHARS))}</text>",
        "</g>",
    ]


def _edge(
    x1: float, y1: float, x2: float, y2: float, cls: str = "", down_to: float | None = None
) -> str:
    """A curve from (x1, y1) to (x2, y2); ``down_to``: first straight down to that y."""
    start = f"M{x1:.1f},{y1:.1f} "
    if down_to is not None and down_to > y1:
        start += f"L{x1:.1f},{down_to:.1f} "
        y1 = down_to
    mid = (y1 + y2) / 2
    return (
        f'<path class="edge {cls}" d="{start}C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} '
        f'{x2:.1f},{y2:.1f}" marker-end="url(#arr)"/>'
    )


def _joins(bottoms: list[tuple[float, float]], x: float, y: float) -> list[str]:
    """Edges from the previous box (or each branch's last box) to the box at (x, y)."""
    if not bottoms:
        return []
    if len(bottoms) == 1:
        (bx, by) = bottoms[0]
        return [_edge(bx, by, x, y)]
    low = max(by for _bx, by in bottoms)  # shorter branches go straight down first
    return [_edge(bx, by, x, y, "join", down_to=low) for bx, by in bottoms]


def _end_text(tree: ChainTree) -> tuple[str, str] | None:
    info = tree.info
    if info.status is ChainStatus.DONE:
        return (f"result {info.result}" if info.result else "halted"), "done"
    if info.status is ChainStatus.FAILED:
        return f"failed: {info.error or info.error_kind or ''}", "failed"
    if info.status is ChainStatus.CANCELLED:
        return "cancelled", "cancelled"
    return None


def _chain_block(tree: ChainTree, base: str, limit: int | None) -> _Block:
    """One chain's column: its steps, the branch rows under fan-outs, its end."""
    items: list[tuple[str, StepNode | int]] = []
    for shown in visible_steps(tree.steps, limit):
        items.append(("elided", shown) if isinstance(shown, int) else ("node", shown))
    if not tree.steps:
        kernel = (tree.info.call or "?").split("(", 1)[0]
        items.append(
            ("node", StepNode(1, kernel, tree.status if tree.status != "done" else "done"))
        )
    end = _end_text(tree)
    # Measure: rows of branch blocks under fan-out nodes decide the column's width.
    rows: dict[int, list[_Block]] = {}
    for index, (kind, item) in enumerate(items):
        if (
            kind == "node"
            and isinstance(item, StepNode)
            and (item.branches or item.hidden_branches)
        ):
            row = [_branch_block(b, base, limit) for b in item.branches]
            if item.hidden_branches:
                more = _Block(NODE_W, HEADER_H + NODE_H)
                more.parts = [
                    f'<g class="more" transform="translate(0,{HEADER_H})">'
                    f'<rect width="{NODE_W}" height="{NODE_H}" rx="9"/>'
                    f'<text x="{NODE_W / 2}" y="{NODE_H / 2 + 4}" text-anchor="middle">'
                    f"+{item.hidden_branches} more branches</text></g>"
                ]
                more.top_x = more.bottom_x = NODE_W / 2
                row.append(more)
            rows[index] = row
    width = float(NODE_W)
    for row in rows.values():
        width = max(width, sum(b.width for b in row) + GAP_X * (len(row) - 1))
    cx = width / 2
    parts: list[str] = []
    y = 0.0
    prev_bottoms: list[tuple[float, float]] = []  # points the next box's edges come from
    for index, (kind, item) in enumerate(items):
        top = y
        if kind == "elided":
            h = 30.0
            parts.append(
                f'<g class="elided" transform="translate({cx - NODE_W / 2:.1f},{top:.1f})">'
                f'<rect width="{NODE_W}" height="{h}" rx="6"/>'
                f'<text x="{NODE_W / 2}" y="19" text-anchor="middle">… {item} more steps …</text>'
                "</g>"
            )
        else:
            assert isinstance(item, StepNode)
            h = NODE_H
            parts.append(f'<g transform="translate({cx - NODE_W / 2:.1f},{top:.1f})">')
            parts += _node(item, tree.id)
            parts.append("</g>")
        parts += _joins(prev_bottoms, cx, top)
        y = top + h
        prev_bottoms = [(cx, y)]
        row = rows.get(index, [])
        if row:
            y += GAP_Y
            row_w = sum(b.width for b in row) + GAP_X * (len(row) - 1)
            x = cx - row_w / 2
            row_h = max(b.height for b in row)
            bottoms = []
            for block in row:
                parts.append(_edge(cx, top + h, x + block.top_x, y, "fan"))
                parts.append(f'<g transform="translate({x:.1f},{y:.1f})">')
                parts += block.parts
                parts.append("</g>")
                bottoms.append((x + block.bottom_x, y + block.height))
                x += block.width + GAP_X
            y += row_h
            prev_bottoms = bottoms
        y += GAP_Y
    if end is not None:
        text, status = end
        parts.append(f'<g transform="translate({cx - NODE_W / 2:.1f},{y:.1f})">')
        parts += _pill(text, status)
        parts.append("</g>")
        parts += _joins(prev_bottoms, cx, y)
        y += PILL_H
    else:
        y -= GAP_Y
    return _Block(width, y, parts, cx, cx)


def _branch_block(tree: ChainTree, base: str, limit: int | None) -> _Block:
    inner = _chain_block(tree, base, limit)
    root = tree.info.parent or ""
    suffix = tree.id[len(root) :].lstrip(".") if root and tree.id.startswith(root) else ""
    name = f"branch {suffix}" if suffix else tree.id
    parts = [
        f'<a href="{_esc(base)}/chains/{_esc(tree.id)}" class="branch-link">'
        f'<text class="branch status-{_esc(tree.status)}" x="{inner.top_x:.1f}" y="13" '
        f'text-anchor="middle"><title>{_esc(tree.id)}</title>{_esc(name)} · {_esc(tree.status)} · '
        f"{_esc(format_duration(tree.duration))}</text></a>",
        f'<g class="branch-body" data-branch="{_esc(tree.id)}" '
        f'transform="translate(0,{HEADER_H})">',
        *inner.parts,
        "</g>",
    ]
    return _Block(inner.width, inner.height + HEADER_H, parts, inner.top_x, inner.bottom_x)


def render_svg(tree: ChainTree, *, base: str = "", limit: int | None = 60) -> str:
    """The picture of ``tree`` as one ``<svg>`` element (styled by the page's CSS)."""
    block = _chain_block(tree, base, limit)
    width = block.width + 2 * PAD
    height = block.height + 2 * PAD
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chain-picture" '
            f'data-chain="{_esc(tree.id)}" data-status="{_esc(tree.status)}" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'role="img" aria-label="steps of chain {_esc(tree.id)}">',
            '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
            f'<g transform="translate({PAD},{PAD})">',
            *block.parts,
            "</g>",
            "</svg>",
        ]
    )
