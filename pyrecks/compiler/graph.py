"""Which kernel may call which: a static picture of a set of kernels (``pyrecksc graph``).

The edges come from what the checker already reads in a kernel (one pass of
:class:`~pyrecks.compiler.checker.KernelChecker`, with its import resolution and scopes):

* calls of the return-string helpers ``pyrecks.kernel.call("name", …)``,
  ``branch("name", …)`` and ``fanout([...], join=…)``, however they are imported
  (``from pyrecks.kernel import call as c``, ``import pyrecks.kernel as k`` …);
* returned string literals (``return 'func1("x")'``) and returned templates
  (``'hop(%d)' % n``, f-strings, ``"{}(…)".format``), rebuilt into a sample return string
  the way the checker rebuilds them for its grammar check, then parsed with the real parser.

A call whose kernel name is computed (``call(name, x)``, ``f"{nxt}(1)"``) is a *dynamic*
edge: its target is drawn as ``?`` (or a pattern such as ``step_*`` when part of the name
is literal).  A call to a kernel that is neither among the kernels given nor known to exist
(stored in Redis, when asked) is *missing*: it is flagged in every output format.

Outputs: :func:`to_text`, :func:`to_dot` (Graphviz) and :func:`to_svg` (Graphviz's ``dot``
when it is installed, else a layered layout of our own, :func:`layout`).
"""

from __future__ import annotations

import ast
import html
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyrecks.compiler.checker import (
    KernelChecker,
    _quote_state,
    _sample,
)
from pyrecks.compiler.instructions import Call, FanOut, Finish, Halt
from pyrecks.compiler.policy import Policy

__all__ = [
    "Edge",
    "KernelGraph",
    "KernelNode",
    "build_graph",
    "extract",
    "layout",
    "to_dot",
    "to_svg",
    "to_text",
]

_HELPERS = "pyrecks.kernel."
#: Stands for a computed part of a kernel name while a template is parsed.
_MARK = "ZzPyrecksDynZz"
_CALL_LIKE = re.compile(r"\s*(?:[A-Za-z_]\w*\s*[(\[]|return\b|\[)")
_NAME_TAIL = re.compile(r"[A-Za-z_0-9]\w*\s*\(")
_NAME_END = re.compile(r"[A-Za-z_]\w*$")
_NAME_AT = re.compile(r"(?:^|[\[,>]|->)\s*([A-Za-z_]\w*)\s*\(")


@dataclass(frozen=True)
class Edge:
    """``source`` may run ``target`` next (``kind``: call, fanout = a branch, join)."""

    source: str
    target: str
    kind: str
    line: int
    #: The name is computed at run time: ``target`` is ``?`` or a glob such as ``step_*``.
    dynamic: bool = False
    #: How the edge was found: ``helper`` (call/branch/fanout) or ``return`` (a returned string).
    via: str = "helper"


@dataclass
class KernelNode:
    name: str
    path: str = ""
    #: The kernel can end its chain (returns '', done(), halt(), ``return <value>``).
    ends: bool = False
    #: Checker errors in the kernel (it would not compile as it is).
    errors: int = 0
    #: Known to exist (given, or stored in Redis) but not given: drawn without its edges.
    external: bool = False


@dataclass
class KernelGraph:
    nodes: dict[str, KernelNode] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    #: Every kernel name known to exist (the given ones and, if asked, the stored ones).
    known: set[str] = field(default_factory=set)

    @property
    def missing(self) -> list[Edge]:
        """Edges to kernels that do not exist."""
        return [e for e in self.edges if not e.dynamic and e.target not in self.known]

    def unique_edges(self) -> list[Edge]:
        """One edge per (source, target, kind), the first line it appears on."""
        seen: dict[tuple[str, str, str], Edge] = {}
        for edge in self.edges:
            seen.setdefault((edge.source, edge.target, edge.kind), edge)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "kernels": [
                {
                    "name": n.name,
                    "path": n.path,
                    "ends": n.ends,
                    "errors": n.errors,
                    "external": n.external,
                }
                for n in self.nodes.values()
            ],
            "edges": [
                {
                    "from": e.source,
                    "to": e.target,
                    "kind": e.kind,
                    "line": e.line,
                    "dynamic": e.dynamic,
                    "via": e.via,
                    "missing": not e.dynamic and e.target not in self.known,
                }
                for e in self.unique_edges()
            ],
        }


# --------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------


class _EdgeCollector(KernelChecker):
    """The checker's pass, also noting every helper call and returned return string."""

    def __init__(self, source: str, name: str, policy: Policy) -> None:
        super().__init__(source, name, policy)
        self.edges: list[Edge] = []
        self.ends = False
        self._roles: dict[int, str] = {}  # id(branch call node) -> fanout / join

    # Helper calls ----------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        dotted = self._dotted(node.func) or ""
        if dotted.startswith(_HELPERS):
            self._helper(dotted[len(_HELPERS) :], node)
        super().visit_Call(node)

    def _helper(self, helper: str, node: ast.Call) -> None:
        if helper in ("call", "branch"):
            role = self._roles.get(id(node), "call" if helper == "call" else "fanout")
            self._target(node.args[0] if node.args else None, role, node)
        elif helper in ("done", "halt"):
            self.ends = True
        elif helper == "fanout":
            branches = node.args[0] if node.args else None
            join = node.args[1] if len(node.args) > 1 else None
            for kw in node.keywords:
                if kw.arg == "branches":
                    branches = kw.value
                elif kw.arg == "join":
                    join = kw.value
            if isinstance(branches, ast.List | ast.Tuple):
                for item in branches.elts:
                    self._member(item, "fanout")
            elif isinstance(branches, ast.ListComp | ast.GeneratorExp):
                self._member(branches.elt, "fanout")
            if join is not None:
                self._member(join, "join")

    def _member(self, node: ast.expr, role: str) -> None:
        """A fan-out's branch or join: a ``branch(...)`` call or a bare kernel name."""
        if isinstance(node, ast.Call):
            dotted = self._dotted(node.func) or ""
            if dotted == _HELPERS + "branch":
                self._roles[id(node)] = role
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            self._add(node.value, role, node, dynamic=False)
        else:
            self._add("?", role, node, dynamic=True)

    def _target(self, arg: ast.expr | None, role: str, node: ast.AST) -> None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            self._add(arg.value, role, node, dynamic=False)
        elif isinstance(arg, ast.JoinedStr):
            pattern = "".join(
                v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "*"
                for v in arg.values
            )
            self._add(pattern, role, node, dynamic=True)
        else:
            self._add("?", role, node, dynamic=True)

    def _add(
        self, target: str, kind: str, node: ast.AST, *, dynamic: bool, via: str = "helper"
    ) -> None:
        line = getattr(node, "lineno", 1)
        self.edges.append(Edge(self.name, target, kind, line, dynamic, via))

    # Returned strings -------------------------------------------------------------------

    def _return_value(self, value: ast.expr, in_entry: bool) -> None:
        self._returned(value, in_entry)
        super()._return_value(value, in_entry)

    def _returned(self, value: ast.expr, in_entry: bool) -> None:
        if isinstance(value, ast.IfExp):  # return 'a()' if x else 'b()'
            self._returned(value.body, in_entry)
            self._returned(value.orelse, in_entry)
            return
        if isinstance(value, ast.Constant):
            if value.value is None or (isinstance(value.value, str) and not value.value.strip()):
                self.ends = self.ends or in_entry
            elif isinstance(value.value, str) and _CALL_LIKE.match(value.value):
                self._parsed(value.value, value, in_entry)
            return
        pieces = self._template(value)
        if pieces is None:
            return
        filled = _fill_marked(pieces)
        if _CALL_LIKE.match(filled):
            self._parsed(filled, value, in_entry)

    def _parsed(self, text: str, node: ast.expr, in_entry: bool) -> None:
        from pyrecks.compiler.parser import parse

        try:
            then = parse(text).then
        except Exception:
            # Not a valid return string (the checker reports it); take what looks like calls.
            for match in _NAME_AT.finditer(text):
                self._returned_name(match.group(1), "call", node)
            return
        if isinstance(then, Call):
            self._returned_name(then.name, "call", node)
        elif isinstance(then, FanOut):
            for b in then.branches:
                self._returned_name(b.name, "fanout", node)
            self._returned_name(then.join.name, "join", node)
        elif isinstance(then, Finish | Halt) and in_entry:
            self.ends = True

    def _returned_name(self, name: str, kind: str, node: ast.AST) -> None:
        if _MARK in name:
            pattern = name.replace(_MARK, "*")
            self._add("?" if pattern == "*" else pattern, kind, node, dynamic=True, via="return")
        else:
            self._add(name, kind, node, dynamic=False, via="return")


def _fill_marked(pieces: list[tuple[str, bool | None]]) -> str:
    """The checker's sample return string for a template, kernel-name placeholders marked.

    Same walk as the checker's ``_fill``: each placeholder gets ``_sample``'s value for its
    context, except one that is (part of) the next kernel's name — followed by ``(``, or
    touching a name that is — which gets a marker, so that the edge is known to be computed.
    """
    out: list[str] = []
    state: str | None = None
    for index, (text, numeric) in enumerate(pieces):
        if numeric is None:
            out.append(text)
            state = _quote_state(text, state)
            continue
        following = next((t for t, n in pieces[index + 1 :] if n is None), "")
        before = out[-1] if out else ""
        in_name = state is None and (
            following.lstrip().startswith("(")
            or bool(_NAME_TAIL.match(following))
            or (bool(_NAME_END.search(before)) and bool(re.match(r"\w*\s*\(", following)))
        )
        out.append(_MARK if in_name else _sample(state, following, numeric))
    return "".join(out)


def extract(source: str, name: str, policy: Policy | None = None) -> tuple[list[Edge], bool, int]:
    """Edges out of kernel ``name``, whether it can end its chain, and its checker errors."""
    try:
        tree = ast.parse(source, filename=f"<kernel {name}>")
    except (SyntaxError, ValueError):
        return [], False, 1
    collector = _EdgeCollector(source, name, policy or Policy())
    try:
        collector.run(tree)
    except RecursionError:
        return collector.edges, collector.ends, 1
    errors = sum(1 for f in collector.findings if f.is_error)
    return collector.edges, collector.ends, errors


def build_graph(
    kernels: Iterable[tuple[str, str, str]],
    *,
    known: Iterable[str] = (),
    policy: Policy | None = None,
) -> KernelGraph:
    """The graph of ``kernels`` (``(name, source, path)`` each); ``known`` exist elsewhere."""
    graph = KernelGraph()
    for name, source, path in kernels:
        edges, ends, errors = extract(source, name, policy)
        graph.nodes[name] = KernelNode(name, path, ends, errors)
        graph.edges.extend(edges)
    graph.known = set(graph.nodes) | set(known)
    for edge in graph.edges:
        if edge.target not in graph.nodes and not edge.dynamic and edge.target in graph.known:
            graph.nodes[edge.target] = KernelNode(edge.target, external=True)
    return graph


# --------------------------------------------------------------------------------------
# Text and DOT
# --------------------------------------------------------------------------------------

_ARROWS = {"call": "->", "fanout": "=>", "join": "-+"}


def to_text(graph: KernelGraph) -> str:
    """One block per kernel: its edges with kind and line, then the missing calls."""
    out: list[str] = []
    by_source: dict[str, list[Edge]] = {}
    for edge in graph.unique_edges():
        by_source.setdefault(edge.source, []).append(edge)
    width = max((len(e.target) for e in graph.edges), default=4)
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        if node.external:
            continue
        notes = []
        if node.ends:
            notes.append("can end the chain")
        if node.errors:
            notes.append(f"{node.errors} checker error{'s' if node.errors != 1 else ''}")
        out.append(name + (f"  ({'; '.join(notes)})" if notes else ""))
        for edge in by_source.get(name, []):
            flag = ""
            if edge.dynamic:
                flag = "  (name computed at run time)"
            elif edge.target not in graph.known:
                flag = "  MISSING: no such kernel"
            where = f"{node.path}:{edge.line}" if node.path else f"line {edge.line}"
            out.append(
                f"  {_ARROWS.get(edge.kind, '->')} {edge.target.ljust(width)}  "
                f"{edge.kind:<6}  {where}{flag}"
            )
        if name not in by_source and not node.ends:
            out.append("  (calls no kernel)")
    missing = graph.missing
    if missing:
        out.append("")
        out.append(f"{len(missing)} call{'s' if len(missing) != 1 else ''} to missing kernels:")
        for edge in missing:
            path = graph.nodes[edge.source].path if edge.source in graph.nodes else ""
            where = f"{path}:{edge.line}" if path else f"line {edge.line}"
            out.append(f"  {edge.source} -> {edge.target}  ({where})")
    return "\n".join(out)


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _target_id(edge: Edge) -> str:
    """The node an edge points at: a computed name gets a node of its own per caller."""
    return f"{edge.target}@{edge.source}" if edge.dynamic else edge.target


def _extra_nodes(graph: KernelGraph) -> dict[str, tuple[str, bool]]:
    """Targets that are not kernels of the graph: id -> (label, dynamic)."""
    out: dict[str, tuple[str, bool]] = {}
    for edge in graph.unique_edges():
        tid = _target_id(edge)
        if tid not in graph.nodes:
            out[tid] = (edge.target, edge.dynamic)
    return out


def to_dot(graph: KernelGraph) -> str:
    """The graph in Graphviz DOT: missing kernels red and dashed, dynamic targets grey."""
    lines = [
        "digraph kernels {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        attrs = []
        if node.ends:
            attrs.append("peripheries=2")
        if node.errors:
            attrs.append('color="orange"')
        if node.external:
            attrs.append('style="rounded,dotted"')
        lines.append(f"  {_dot_id(name)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    for tid, (label, dynamic) in sorted(_extra_nodes(graph).items()):
        if dynamic:
            style = (
                f'label={_dot_id(label)}, style="rounded,dashed", color="gray50", '
                'fontcolor="gray40"'
            )
        else:
            style = 'style="rounded,dashed", color="red", fontcolor="red", xlabel="missing"'
        lines.append(f"  {_dot_id(tid)} [{style}];")
    for edge in graph.unique_edges():
        attrs = [f'label="{edge.kind}"']
        if edge.kind == "fanout":
            attrs.append("style=bold")
        elif edge.kind == "join":
            attrs.append("style=dashed")
        if not edge.dynamic and edge.target not in graph.known:
            attrs.append('color="red"')
        lines.append(
            f"  {_dot_id(edge.source)} -> {_dot_id(_target_id(edge))} [{', '.join(attrs)}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# SVG: Graphviz if installed, else a layered layout of our own
# --------------------------------------------------------------------------------------

NODE_W = 150
NODE_H = 36
GAP_X = 40
GAP_Y = 70
MARGIN = 30


@dataclass
class Layout:
    """Node centres (``positions``), the canvas size and the edges that point backwards."""

    positions: dict[str, tuple[float, float]]
    width: float
    height: float
    layers: list[list[str]]
    back_edges: set[tuple[str, str]]


def layout(names: list[str], edges: list[tuple[str, str]]) -> Layout:
    """A simple Sugiyama-style layout: break cycles, layer by longest path, order by
    barycentres (a few sweeps), then place layers top to bottom."""
    succ: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        if a in succ and b in succ and b not in succ[a]:
            succ[a].append(b)
    # 1. Back edges by depth-first search from the roots (nodes nobody calls) first.
    indeg = {n: 0 for n in names}
    for a in names:
        for b in succ[a]:
            indeg[b] += 1
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}
    order = [n for n in names if indeg[n] == 0] + [n for n in names if indeg[n] > 0]
    for root in order:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, i = stack.pop()
            if i < len(succ[node]):
                stack.append((node, i + 1))
                nxt = succ[node][i]
                if state.get(nxt) == 1:
                    back.add((node, nxt))
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state[node] = 2
    forward = {n: [b for b in succ[n] if (n, b) not in back and b != n] for n in names}
    # 2. Longest-path layering (Kahn's order over the acyclic forward edges).
    layer = {n: 0 for n in names}
    indeg = {n: 0 for n in names}
    for a in names:
        for b in forward[a]:
            indeg[b] += 1
    ready = [n for n in names if indeg[n] == 0]
    while ready:
        node = ready.pop(0)
        for b in forward[node]:
            layer[b] = max(layer[b], layer[node] + 1)
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
    depth = max(layer.values(), default=0) + 1
    layers: list[list[str]] = [[] for _ in range(depth)]
    for n in names:
        layers[layer[n]].append(n)
    # 3. Crossing reduction: barycentres of the neighbours in the layer above, then below.
    preds: dict[str, list[str]] = {n: [] for n in names}
    for a in names:
        for b in forward[a]:
            preds[b].append(a)
    for _sweep in range(4):
        for i in range(1, depth):
            pos = {n: k for k, n in enumerate(layers[i - 1])}
            layers[i] = _by_barycentre(layers[i], preds, pos)
        for i in range(depth - 2, -1, -1):
            pos = {n: k for k, n in enumerate(layers[i + 1])}
            layers[i] = _by_barycentre(layers[i], forward, pos)
    widest = max((len(lay) for lay in layers), default=1)
    width = MARGIN * 2 + widest * NODE_W + (widest - 1) * GAP_X
    height = MARGIN * 2 + depth * NODE_H + (depth - 1) * GAP_Y
    positions: dict[str, tuple[float, float]] = {}
    for i, lay in enumerate(layers):
        row_w = len(lay) * NODE_W + (len(lay) - 1) * GAP_X
        x0 = (width - row_w) / 2
        for k, n in enumerate(lay):
            positions[n] = (
                x0 + k * (NODE_W + GAP_X) + NODE_W / 2,
                MARGIN + i * (NODE_H + GAP_Y) + NODE_H / 2,
            )
    return Layout(positions, width, height, layers, back)


def _by_barycentre(
    row: list[str], neighbours: dict[str, list[str]], pos: dict[str, int]
) -> list[str]:
    """``row`` sorted by the mean position of each node's neighbours in the next row."""
    keys: dict[str, float] = {}
    for k, n in enumerate(row):
        near = [pos[m] for m in neighbours[n] if m in pos]
        keys[n] = sum(near) / len(near) if near else float(k)
    return sorted(row, key=lambda n: keys[n])


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _svg_builtin(graph: KernelGraph) -> str:
    edges = graph.unique_edges()
    names = sorted(graph.nodes)
    extras = _extra_nodes(graph)
    all_names = names + sorted(extras)
    lay = layout(all_names, [(e.source, _target_id(e)) for e in edges])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kernel-graph" '
        f'width="{lay.width:.0f}" height="{lay.height:.0f}" '
        f'viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" font-family="sans-serif" font-size="12">',
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
        'markerUnits="userSpaceOnUse" '
        'markerHeight="9" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555"/></marker>',
        '<marker id="arrow-red" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
        'markerUnits="userSpaceOnUse" '
        'markerHeight="9" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#c62828"/></marker>',
        "</defs>",
    ]
    half_w, half_h = NODE_W / 2, NODE_H / 2
    for edge in edges:
        (x1, y1), (x2, y2) = lay.positions[edge.source], lay.positions[_target_id(edge)]
        missing = not edge.dynamic and edge.target not in graph.known
        color = "#c62828" if missing else "#555"
        marker = "arrow-red" if missing else "arrow"
        dash = ' stroke-dasharray="5,4"' if edge.kind == "join" or edge.dynamic else ""
        width = "2.2" if edge.kind == "fanout" else "1.3"
        if edge.source == edge.target:
            d = (
                f"M{x1 + half_w:.1f},{y1 - 6:.1f} C{x1 + half_w + 40:.1f},{y1 - 30:.1f} "
                f"{x1 + half_w + 40:.1f},{y1 + 30:.1f} {x1 + half_w:.1f},{y1 + 6:.1f}"
            )
        elif (edge.source, _target_id(edge)) in lay.back_edges or y2 <= y1:
            bend = max(x1, x2) + half_w + 30
            d = (
                f"M{x1 + half_w:.1f},{y1:.1f} C{bend:.1f},{y1:.1f} {bend:.1f},{y2:.1f} "
                f"{x2 + half_w:.1f},{y2:.1f}"
            )
        else:
            sy, ty = y1 + half_h, y2 - half_h
            mid = (sy + ty) / 2
            d = f"M{x1:.1f},{sy:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{ty:.1f}"
        parts.append(
            f'<path class="edge edge-{edge.kind}" d="{d}" fill="none" stroke="{color}" '
            f'stroke-width="{width}"{dash} marker-end="url(#{marker})">'
            f"<title>{_esc(edge.source)} {edge.kind} {_esc(edge.target)} "
            f"(line {edge.line})</title></path>"
        )
    for name in all_names:
        x, y = lay.positions[name]
        node = graph.nodes.get(name)
        shown, dynamic = extras.get(name, (name, False))
        missing = node is None and not dynamic
        cls = "kernel"
        stroke, fill, dash = "#37474f", "#eceff1", ""
        if node is not None and node.ends:
            cls += " ends"
            fill = "#e8f5e9"
        if node is not None and node.errors:
            stroke = "#ef6c00"
        if node is not None and node.external:
            dash = ' stroke-dasharray="2,3"'
        if missing:
            cls += " missing"
            stroke, fill, dash = "#c62828", "#ffebee", ' stroke-dasharray="5,4"'
        if dynamic:
            cls += " dynamic"
            stroke, fill, dash = "#90a4ae", "#fafafa", ' stroke-dasharray="5,4"'
        label = shown if len(shown) <= 20 else shown[:19] + "…"
        title = shown + (" — missing: no such kernel" if missing else "")
        if dynamic:
            title += f" — a name {name.rsplit('@', 1)[-1]} computes at run time"
        parts.append(
            f'<g class="{cls}" data-kernel="{_esc(shown)}"><title>{_esc(title)}</title>'
            f'<rect x="{x - half_w:.1f}" y="{y - half_h:.1f}" width="{NODE_W}" '
            f'height="{NODE_H}" rx="8" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">{_esc(label)}</text>'
        )
        if missing:
            parts.append(
                f'<text x="{x:.1f}" y="{y + half_h + 13:.1f}" text-anchor="middle" '
                f'fill="#c62828" font-size="10">missing</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def to_svg(graph: KernelGraph, *, engine: str = "auto") -> str:
    """SVG through Graphviz (``engine`` ``dot``, or ``auto`` when ``dot`` is on PATH), else
    (``builtin``, or ``auto`` without Graphviz) the built-in layered layout."""
    dot = shutil.which("dot") if engine in ("auto", "dot") else None
    if engine == "dot" and dot is None:
        raise FileNotFoundError("Graphviz 'dot' is not installed; use --layout builtin")
    if dot is not None:
        done = subprocess.run(
            [dot, "-Tsvg"], input=to_dot(graph), capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return done.stdout
        if engine == "dot":
            raise RuntimeError(f"dot failed: {done.stderr.strip()}")
    return _svg_builtin(graph)
