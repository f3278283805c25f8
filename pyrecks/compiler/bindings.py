"""Name resolution for the checker: one walk that learns what every name is bound to.

The checker asks, at every name and attribute, "is this a local here, an import (of a module
or of a name from one), a module-level constant, or a builtin?".  :func:`collect` answers the
static half of that in one breadth-first walk (``ast.walk`` order) before the rules run, as a
:class:`Bindings` object; the checker adds the dynamic half (which function it is in) from its
scope stack.

* ``aliases``: every import anywhere in the kernel, later imports overriding earlier ones in
  walk order, and ``modules``, those of them that bind a module (PK306: ``import a.b`` binds
  ``a``, ``import a.b as c`` binds ``c``, ``from a import b`` counts when ``a.b`` is a
  module);
* ``scope_names``: for every function, lambda and class, the names bound in its body and
  which of them are imports, for all scopes at once (a comprehension's targets belong to the
  comprehension; a nested def/class/lambda is a scope of its own); ``module_bound`` for the
  module body;
* ``has_yield``: whether the kernel contains ``yield`` at all (the generator rules walk again
  only then);
* what the alias rules start from: assignments of a name or a dotted name to a name
  (``t = type``, ``e = json.JSONEncoder``), and the ``_private`` attribute names the kernel
  defines itself (assigned, or defined in its class bodies).
"""

from __future__ import annotations

import ast
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyrecks.compiler.astwalk import CHILD_FIELDS as _CHILD_FIELDS

#: The node classes :func:`collect` looks at beyond bindings.
_LEARNS = frozenset(
    {ast.Import, ast.ImportFrom, ast.Yield, ast.YieldFrom, ast.Assign, ast.Attribute, ast.ClassDef}
)


@dataclass
class Bindings:
    """What :func:`collect` learned about a kernel's names (see the module docstring)."""

    aliases: dict[str, str] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    scope_names: dict[ast.AST, tuple[set[str], set[str]]] = field(default_factory=dict)
    module_bound: set[str] = field(default_factory=set)
    has_yield: bool = False
    alias_candidates: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    library_candidates: list[tuple[str, ast.expr]] = field(default_factory=list)
    kernel_attributes: set[str] = field(default_factory=set)


def collect(
    tree: ast.Module, allowed_modules: frozenset[str], value_of: Callable[[str], Any]
) -> Bindings:
    """One breadth-first walk over ``tree``; ``value_of(dotted)`` imports what an import names
    (to tell modules from other names)."""
    out = Bindings()
    aliases = out.aliases
    modules = out.modules
    scope_names = out.scope_names
    module_names: set[str] = set()
    fields_of = _CHILD_FIELDS
    AST, Name, Constant, Store, Del = ast.AST, ast.Name, ast.Constant, ast.Store, ast.Del
    items: list[Any] | tuple[Any]
    function_types = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    # Queue entries: (node, names of the scope whose body holds it, its import names);
    # ``None`` outside any scope's body (decorators, defaults, annotations).
    todo: deque[tuple[ast.AST, set[str] | None, set[str] | None]] = deque()
    todo.append((tree, None, None))
    pop = todo.popleft
    push = todo.append
    # Node classes this pass learns something from; every other node costs one lookup.
    learns = _LEARNS
    while todo:
        node, names, imports = pop()
        cls = type(node)
        if cls not in learns:
            pass
        elif cls is ast.Import:
            for alias in node.names:  # type: ignore[attr-defined]
                if alias.asname:
                    aliases[alias.asname] = modules[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = modules[root] = root
        elif cls is ast.ImportFrom:
            if node.module and not node.level:  # type: ignore[attr-defined]
                for alias in node.names:  # type: ignore[attr-defined]
                    if alias.name != "*":
                        full = f"{node.module}.{alias.name}"  # type: ignore[attr-defined]
                        aliases[alias.asname or alias.name] = full
                        if full in allowed_modules or isinstance(
                            value_of(full), types.ModuleType
                        ):  # ``from collections import abc`` binds a module
                            modules[alias.asname or alias.name] = full
        elif cls is ast.Yield or cls is ast.YieldFrom:
            out.has_yield = True
        elif cls is ast.Assign:
            targets = node.targets  # type: ignore[attr-defined]
            value = node.value  # type: ignore[attr-defined]
            if len(targets) == 1 and type(targets[0]) is Name:
                if type(value) is Name or type(value) is ast.Attribute:
                    out.library_candidates.append((targets[0].id, value))
                if type(value) is Name:
                    out.alias_candidates.append((targets[0].id, (value.id,)))
                elif type(value) is ast.Tuple and all(type(e) is Name for e in value.elts):
                    names_ = tuple(e.id for e in value.elts)  # type: ignore[attr-defined]
                    out.alias_candidates.append((targets[0].id, names_))
        elif cls is ast.Attribute:
            if type(node.ctx) is not ast.Load and node.attr[:1] == "_":  # type: ignore[attr-defined]
                out.kernel_attributes.add(node.attr)  # type: ignore[attr-defined]
        elif cls is ast.ClassDef:
            for stmt in node.body:  # type: ignore[attr-defined]
                if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    out.kernel_attributes.add(stmt.name)
                elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                    for target in (
                        stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    ):
                        if isinstance(target, ast.Name):
                            out.kernel_attributes.add(target.id)
        fields = fields_of[cls]
        if cls in function_types:
            # A nested scope: its name is bound in the enclosing body (not a lambda's),
            # its own body starts a new scope, its other parts belong to none.
            if names is not None and cls is not ast.Lambda:
                names.add(node.name)  # type: ignore[attr-defined]
            own: tuple[set[str], set[str]] = (set(), set())
            scope_names[node] = own
            for fname in fields:
                value = getattr(node, fname, None)
                inner = own if fname == "body" else (None, None)
                if type(value) is list:
                    for item in value:
                        if isinstance(item, AST):
                            push((item, inner[0], inner[1]))
                elif isinstance(value, AST):
                    push((value, inner[0], inner[1]))
            continue
        if cls is ast.Module:
            names = module_names
        elif names is not None:
            if cls is ast.Name:
                if isinstance(node.ctx, ast.Store | ast.Del):  # type: ignore[attr-defined]
                    names.add(node.id)  # type: ignore[attr-defined]
            elif cls is ast.alias:
                if node.name != "*":  # type: ignore[attr-defined]
                    bound = node.asname or node.name.split(".")[0]  # type: ignore[attr-defined]
                    names.add(bound)
                    if imports is not None:
                        imports.add(bound)
            elif cls is ast.ExceptHandler or cls is ast.MatchAs or cls is ast.MatchStar:
                if node.name:  # type: ignore[attr-defined]
                    names.add(node.name)  # type: ignore[attr-defined]
            elif cls is ast.MatchMapping and node.rest:  # type: ignore[attr-defined]
                names.add(node.rest)  # type: ignore[attr-defined]
            elif cls is ast.comprehension:
                # The loop variables are the comprehension's own (the visitor gives it a
                # scope); its iterables and conditions bind ':=' names here.
                push((node.target, None, None))  # type: ignore[attr-defined]
                push((node.iter, names, imports))  # type: ignore[attr-defined]
                for cond in node.ifs:  # type: ignore[attr-defined]
                    push((cond, names, imports))
                continue
        for fname in fields:
            value = getattr(node, fname, None)
            if type(value) is list:
                items = value
            elif value is None:
                continue
            else:
                items = (value,)
            for item in items:
                # Leaves are handled here rather than queued: they have no children and
                # are never imports or yields, so the order of the walk is unchanged.
                kind = type(item)
                if kind is Name:
                    if names is not None:
                        ctx = type(item.ctx)
                        if ctx is Store or ctx is Del:
                            names.add(item.id)
                elif kind is not Constant and isinstance(item, AST):
                    push((item, names, imports))
    out.module_bound = module_names
    return out
