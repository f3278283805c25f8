"""Fast walks over Python ASTs, shared by the checker and the guard rewriter.

``ast.iter_child_nodes`` calls ``getattr`` on every field of every node, including
identifiers, constants and the ``Load``/``Store``/operator singletons, through two
generators; on a 50-line kernel that was most of the checker's time.  The tables below name,
per node class, only the fields that can hold child nodes worth visiting, read once from the
class's ASDL signature (``Name(identifier id, expr_context ctx)``).  Walks over these fields
meet the same nodes in the same order as ``ast.walk``/``ast.iter_child_nodes``, minus the
context and operator singletons, which no rule looks at (the checker's visitor table refuses a
``visit_X`` method for them, so a future rule cannot silently miss its nodes).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator

#: ASDL field types that never hold a node a rule visits.
LEAF_KINDS = frozenset(
    {"identifier", "string", "int", "constant", "expr_context", "operator", "boolop",
     "unaryop", "cmpop"}
)  # fmt: skip

#: Node classes whose instances the fast walks skip (see ``LEAF_KINDS``).
SKIPPED_NODE_CLASSES: tuple[type, ...] = (
    ast.expr_context,
    ast.operator,
    ast.boolop,
    ast.unaryop,
    ast.cmpop,
)


def node_fields(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` that may hold child nodes, in ``_fields`` order."""
    names = tuple(getattr(cls, "_fields", ()))
    match = re.fullmatch(r"\w+\((.*)\)", (cls.__doc__ or "").strip())
    if match is None:
        return names
    kinds: dict[str, str] = {}
    for part in match.group(1).split(","):
        kind, _, fname = part.strip().rpartition(" ")
        kinds[fname] = kind.rstrip("*?")
    if set(kinds) != set(names):  # an unexpected signature: visit every field
        return names
    return tuple(n for n in names if kinds[n] not in LEAF_KINDS)


def _all_node_classes() -> list[type]:
    out: list[type] = []
    stack: list[type] = [ast.AST]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


class _FieldTable(dict[type, tuple[str, ...]]):
    """Node class -> its child-node fields; computed on first use for unknown classes."""

    def __missing__(self, cls: type) -> tuple[str, ...]:
        fields = self[cls] = node_fields(cls)
        return fields


CHILD_FIELDS = _FieldTable((cls, node_fields(cls)) for cls in _all_node_classes())


def children(node: ast.AST) -> list[ast.AST]:
    """Child nodes of ``node`` in ``ast.iter_child_nodes`` order (without the singletons)."""
    out: list[ast.AST] = []
    for name in CHILD_FIELDS[type(node)]:
        value = getattr(node, name, None)
        if type(value) is list:
            out.extend(item for item in value if isinstance(item, ast.AST))
        elif isinstance(value, ast.AST):
            out.append(value)
    return out


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` (breadth first, same order) over the fast child table."""
    todo = deque([node])
    while todo:
        node = todo.popleft()
        todo.extend(children(node))
        yield node
