"""What may run when a kernel is loaded, and what may survive a call: the purity rules.

A kernel's module body runs once per process (per cell), outside any step's time limit, and
whatever it binds is shared by every chain that process runs.  So module level may only bind
immutable values, and the only calls it may make are the rule book's pure constructors
(:data:`~pyrecks.compiler.rulebook.PURE_CONSTRUCTORS`: ``frozenset``, ``re.compile`` of a
literal, ``dataclass`` as a decorator, …).  The same goes for the bodies of module-level
classes, their decorators and the default arguments of module-level functions and methods
(a default is evaluated once and shared by every call).

One implementation, two users: the checker (:mod:`pyrecks.compiler.checker`) turns each
:class:`Problem` into a finding with its code, line and column, and the guard rewriter
(:mod:`pyrecks.compiler.rewriter`) refuses to compile a kernel that has any — so the rules
hold with the checker switched off too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from pyrecks.compiler import rulebook


@dataclass(frozen=True)
class Problem:
    """One purity violation: a rule code, the node it is about and a message with the fix."""

    code: str
    node: ast.AST
    message: str


_STATEMENT_KINDS = {
    "Expr": "an expression statement (e.g. a call)",
    "For": "a for loop",
    "While": "a while loop",
    "With": "a with block",
    "Try": "a try block",
    "If": "an if block",
}

_MUTABLE_DISPLAYS = (
    ast.List,
    ast.Dict,
    ast.Set,
    ast.ListComp,
    ast.DictComp,
    ast.SetComp,
    ast.GeneratorExp,
)


def is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``: a block the VM never runs (kernels run as ``kernel:NAME``)."""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def module_imports(tree: ast.Module) -> dict[str, str]:
    """Names bound by module-level imports -> the dotted name they stand for."""
    out: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname:
                    out[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    out[root] = root
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for alias in stmt.names:
                if alias.name != "*":
                    out[alias.asname or alias.name] = f"{stmt.module}.{alias.name}"
    return out


class _Rules:
    def __init__(self, tree: ast.Module, name: str) -> None:
        self.name = name
        self.imports = module_imports(tree)
        self.own = {
            s.name
            for s in tree.body
            if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        self.problems: list[Problem] = []

    def add(self, code: str, node: ast.AST, message: str) -> None:
        self.problems.append(Problem(code, node, message))

    # -- names ------------------------------------------------------------------------

    def dotted(self, node: ast.expr) -> str | None:
        """The rule-book name a callee stands for (``re.compile``, ``frozenset``)."""
        if isinstance(node, ast.Name):
            if node.id in self.imports:
                return self.imports[node.id]
            if node.id in self.own:
                return None
            return node.id
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # -- values -----------------------------------------------------------------------

    def value(
        self, node: ast.expr | None, *, consumed: bool = False, default: bool = False
    ) -> None:
        """Report the first impure part of an expression evaluated at load time.

        ``consumed``: the value is an argument of a pure constructor, which copies it into an
        immutable one (``frozenset({"a", "b"})``), so a display is fine there.
        """
        if node is None:
            return
        problem = self._value(node, consumed, default)
        if problem is not None:
            self.problems.append(problem)

    def _value(self, node: ast.expr, consumed: bool, default: bool) -> Problem | None:
        if isinstance(node, ast.Constant | ast.Name):
            return None
        if isinstance(node, ast.Attribute):
            return self._value(node.value, False, default)
        if isinstance(node, _MUTABLE_DISPLAYS) and not consumed:
            if default:
                return Problem(
                    "PK406",
                    node,
                    "mutable default argument: it is created once, when the kernel is loaded, "
                    "and every call (of every chain) shares it; default to None and create it "
                    "in the function (items = [] if items is None else items), or use a tuple",
                )
            return Problem(
                "PK403",
                node,
                "module-level mutable value: every run of the kernel in a VM shares it, so it "
                "keeps state between calls and chains; use a tuple, a frozenset or a constant, "
                "or build it inside the function",
            )
        if isinstance(node, ast.Call):
            return self._call(node, default)
        if isinstance(node, ast.Lambda):
            for value in [*node.args.defaults, *node.args.kw_defaults]:
                if value is not None:
                    problem = self._value(value, False, True)
                    if problem is not None:
                        return problem
            return None
        if isinstance(node, ast.Subscript):  # Callable[[int], int]: the list is consumed
            return self._value(node.value, False, default) or self._value(node.slice, True, default)
        if isinstance(node, ast.NamedExpr | ast.Await | ast.Yield | ast.YieldFrom):
            return Problem(
                "PK502",
                node,
                "this expression runs code when the kernel is loaded; module level may only "
                f"bind constants: compute the value inside {self.name}()",
            )
        passes = consumed and isinstance(node, ast.Tuple | ast.Starred | ast.comprehension)
        for child in _child_expressions(node):
            problem = self._value(child, passes, default)
            if problem is not None:
                return problem
        return None

    def _call(self, node: ast.Call, default: bool) -> Problem | None:
        func = self.dotted(node.func)
        if func is None or func not in rulebook.PURE_CONSTRUCTORS:
            if isinstance(node.func, ast.Name) and node.func.id in self.own:
                what = f"calling the kernel's own {node.func.id}()"
            else:
                shown = func or ast.unparse(node.func)
                what = f"calling {shown}()"
            return Problem(
                "PK502",
                node,
                f"{what} when the kernel is loaded runs code outside the time limit and can "
                "create state that outlives the call; module level may only call pure "
                "constructors (" + ", ".join(sorted(rulebook.PURE_CONSTRUCTORS)[:8]) + ", …; "
                f"see docs/kernels.md): compute the value inside {self.name}() or write the "
                "constant",
            )
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            problem = self._value(arg, True, default)
            if problem is not None:
                return problem
        return None

    # -- statements -------------------------------------------------------------------

    def decorators(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, local: set[str]
    ) -> None:
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            # ``@value.setter`` on a property of the same class body
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in local
                and target.attr in ("setter", "getter", "deleter")
            ):
                continue
            dotted = self.dotted(target)
            if dotted in rulebook.PURE_CONSTRUCTORS:
                if isinstance(deco, ast.Call):
                    self.value(deco)
                continue
            shown = dotted or ast.unparse(target)
            self.add(
                "PK502",
                deco,
                f"the decorator @{shown} runs when the kernel is loaded and may keep state "
                "between calls (a cache, a registry); only pure decorators are allowed at "
                "module level (@dataclass, @property, @staticmethod, @classmethod, "
                "@functools.total_ordering, …): call the helper explicitly inside the function",
            )

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, local: set[str]) -> None:
        self.decorators(node, local)
        for value in [*node.args.defaults, *node.args.kw_defaults]:
            self.value(value, default=True)
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                self.annotation(arg.annotation)
        self.annotation(node.returns)

    def annotation(self, node: ast.expr | None) -> None:
        """Annotations of module-level functions, class bodies and module-level names are
        evaluated when the kernel is loaded, like values (``x: re.match(...)`` runs)."""
        self.value(node, consumed=True)

    def klass(self, node: ast.ClassDef) -> None:
        self.decorators(node, set())
        for base in node.bases:
            self.value(base)
        local: set[str] = set()
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                self.function(stmt, local)
                local.add(stmt.name)
            elif isinstance(stmt, ast.ClassDef):
                self.klass(stmt)
                local.add(stmt.name)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                self.value(stmt.value)
                if isinstance(stmt, ast.AnnAssign):
                    self.annotation(stmt.annotation)
                for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    if isinstance(target, ast.Name):
                        local.add(target.id)

    def module(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            if isinstance(stmt, ast.Import | ast.ImportFrom | ast.Pass):
                continue
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                self.function(stmt, set())
                continue
            if isinstance(stmt, ast.ClassDef):
                self.klass(stmt)
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # a docstring, or a string used as a comment
            if isinstance(stmt, ast.If) and is_main_guard(stmt.test):
                continue
            if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
                self.assignment(stmt)
                continue
            what = _STATEMENT_KINDS.get(
                type(stmt).__name__, f"a '{type(stmt).__name__.lower()}' statement"
            )
            self.add(
                "PK501",
                stmt,
                f"{what} at module level runs when the kernel is loaded, outside the chain: "
                "kernels may only hold imports, functions, classes, a docstring and constant "
                f"assignments at module level; move it into {self.name}()",
            )

    def assignment(self, stmt: ast.Assign | ast.AnnAssign | ast.AugAssign) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            for leaf in target_leaves(target):
                if isinstance(leaf, ast.Name):
                    continue
                root = leaf
                while isinstance(root, ast.Attribute | ast.Subscript):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in self.imports:
                    self.add(
                        "PK404",
                        leaf,
                        f"changing module '{self.imports[root.id]}' affects every kernel in the "
                        "VM process; keep your values in local variables",
                    )
                    continue
                self.add(
                    "PK501",
                    leaf,
                    "module-level assignments may only bind plain names (NAME = value); "
                    "assigning to an attribute or item changes state shared by every run — "
                    f"build the value inside {self.name}() instead",
                )
        self.value(stmt.value)
        if isinstance(stmt, ast.AnnAssign):
            self.annotation(stmt.annotation)


def target_leaves(target: ast.expr) -> Iterator[ast.expr]:
    """The names, attributes and items an assignment target binds (tuples unpacked)."""
    if isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from target_leaves(elt)
    elif isinstance(target, ast.Starred):
        yield from target_leaves(target.value)
    else:
        yield target


def _child_expressions(node: ast.AST) -> Iterator[ast.expr]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr | ast.comprehension | ast.keyword):
            yield child  # type: ignore[misc]


def module_problems(tree: ast.Module, name: str) -> list[Problem]:
    """Every purity problem of a kernel's load-time code, in source order."""
    rules = _Rules(tree, name)
    rules.module(tree)
    return rules.problems
