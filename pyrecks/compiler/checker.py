"""The kernel checker: one AST pass that enforces the no-side-effects rules.

A kernel is a small Python 3 module: imports, an entry function named like the kernel, and
helpers.  Before a VM trusts one with data, this pass proves statically what can be proved:
no I/O, no imports outside the policy's allow-list, no reflection escape hatches (dunders,
frames, ``getattr`` with computed names, module attributes that are other modules), no
mutation of module-level state, no code at module level beyond constants, an entry function
that exists, and no ``except:`` that could swallow the VM's timeout.  The rules come from the
rule book (:mod:`pyrecks.compiler.rulebook`); the guard rewriter
(:mod:`pyrecks.compiler.rewriter`) compiles the same rules into every kernel, because a static
pass alone can be fooled by values it cannot see, and a run-time guard alone reports too late.

Every rule has a stable code; the families are

* ``PK1xx`` imports, ``PK2xx`` builtins and names, ``PK3xx`` attributes and reflection,
* ``PK4xx`` global state and nondeterminism, ``PK5xx`` structure and the entry function,
* ``PK6xx`` return strings, ``PK9xx`` syntax errors and Python 2.

Each :class:`Finding` carries the 1-based line and column and a message that says what to
write instead.  ``docs/kernels.md`` lists every code with an example and the fix.

The visitor has one ``visit_X`` per node kind and each method holds one family of rules, in
the shape of CPython's ``ast.NodeVisitor`` examples: adding a rule means adding a few lines in
the method of the node it is about.  The pieces it stands on live apart, none importing the
checker back: :mod:`~pyrecks.compiler.findings` (the result types),
:mod:`~pyrecks.compiler.astwalk` (the fast walk), :mod:`~pyrecks.compiler.bindings` (name
resolution: what each name is bound to), :mod:`~pyrecks.compiler.purity` (load-time
rules, shared with the rewriter), :mod:`~pyrecks.compiler.python2` (PK9xx heuristics) and
:mod:`~pyrecks.compiler.templates` (return-string template reconstruction).
"""

from __future__ import annotations

import abc
import ast
import builtins
import importlib
import re
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyrecks.compiler import purity, rulebook
from pyrecks.compiler.astwalk import CHILD_FIELDS as _CHILD_FIELDS
from pyrecks.compiler.astwalk import SKIPPED_NODE_CLASSES as _SKIPPED_NODE_CLASSES
from pyrecks.compiler.astwalk import children as _children
from pyrecks.compiler.astwalk import walk as _walk
from pyrecks.compiler.bindings import collect
from pyrecks.compiler.findings import Analysis as Analysis
from pyrecks.compiler.findings import Finding as Finding
from pyrecks.compiler.findings import Severity as Severity
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.python2 import PY2_METHODS, PY2_NAMES
from pyrecks.compiler.python2 import syntax_finding as syntax_finding
from pyrecks.compiler.templates import field_accesses, folded_text, template_pieces
from pyrecks.compiler.templates import fill as _fill
from pyrecks.compiler.templates import quote_state as _quote_state  # noqa: F401 (graph.py)
from pyrecks.compiler.templates import sample as _sample  # noqa: F401 (graph.py)
from pyrecks.errors import ReturnStringError

# The rule data (allowed modules and names, builtins, refused attributes, purity rules) lives
# in :mod:`pyrecks.compiler.rulebook`; these are the names the rules below use most.
SAFE_DUNDER_ATTRIBUTES = rulebook.SAFE_DUNDER_ATTRIBUTES
SAFE_DUNDER_NAMES = rulebook.SAFE_DUNDER_NAMES
FRAME_ATTRIBUTES = rulebook.FRAME_ATTRIBUTES
CONTROL_EXCEPTIONS = rulebook.CONTROL_EXCEPTIONS

#: Names of module-level ``random`` functions that do not share the hidden generator.
RANDOM_SAFE = frozenset({"Random"})

CONFIG_NAMES = ("PYRECKS_TIMEOUT", "PYRECKS_RETRIES")

#: Class factories whose classes carry ``_private`` API of their own (``P._asdict()``).
#: Builtin names that are classes: ``type(int)`` is ``type`` itself (PK204).
_BUILTIN_CLASSES = frozenset(
    name for name in rulebook.ALLOWED_BUILTINS if isinstance(getattr(builtins, name, None), type)
)

_TUPLE_FACTORIES = frozenset({"collections.namedtuple", "typing.NamedTuple"})
_NAMEDTUPLE_ATTRIBUTES = frozenset({"_asdict", "_replace", "_fields", "_make", "_field_defaults"})

_ATTR_BUILTINS = frozenset({"getattr", "setattr", "delattr"})

_MISSING = object()


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def check(source: str, name: str, policy: Policy | None = None) -> list[Finding]:
    """Check kernel ``name``'s ``source``; return every finding, errors and warnings."""
    return analyse(source, name, policy or Policy()).findings


def analyse(source: str, name: str, policy: Policy) -> Analysis:
    """Parse and check ``source``; keep the tree and config so the compiler parses once."""
    try:
        tree = ast.parse(source, filename=f"<kernel {name}>")
    except SyntaxError as exc:
        return Analysis([syntax_finding(source, exc)])
    except ValueError as exc:  # null bytes
        return Analysis([Finding("PK902", "error", f"the kernel is not valid source: {exc}", 1, 1)])
    visitor = KernelChecker(source, name, policy)
    visitor.run(tree)
    findings = sorted(visitor.findings, key=lambda f: (f.line, f.column, f.code))
    return Analysis(findings, tree, visitor.entry, visitor.timeout, visitor.retries)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

_module_cache: dict[str, Any] = {}


def _import(dotted: str) -> Any:
    """Import an allowed module in the checker's process to inspect its attributes.

    Returns ``_MISSING`` when it cannot be imported (a custom allow-list entry that is not
    installed here); the checker then skips the module-attribute rule for it and the VM's
    run-time guard remains.
    """
    if dotted not in _module_cache:
        try:
            _module_cache[dotted] = importlib.import_module(dotted)
        except Exception:
            _module_cache[dotted] = _MISSING
    return _module_cache[dotted]


def _arg_names(args: ast.arguments) -> set[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg:
        every.append(args.vararg)
    if args.kwarg:
        every.append(args.kwarg)
    return {a.arg for a in every}


def _root(node: ast.expr) -> ast.expr:
    """The innermost object of an attribute/subscript chain (``a`` in ``a.b[c].d``)."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node


_is_dunder = rulebook.is_dunder
_is_internal_attribute = rulebook.refused_by_name


def _walk_no_nested(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Walk statements without entering nested function, class or lambda bodies."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        stack.extend(_children(node))


_ENUM_FACTORIES = frozenset(
    {"enum.Enum", "enum.IntEnum", "enum.Flag", "enum.IntFlag", "enum.StrEnum"}
)


def _loop_jumps(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """``break``/``continue`` among ``nodes`` that leave them (not inside a loop of theirs)."""
    stack = [(node, False) for node in nodes]
    while stack:
        node, in_loop = stack.pop()
        if isinstance(node, ast.Break | ast.Continue) and not in_loop:
            yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        loop = isinstance(node, ast.For | ast.While | ast.AsyncFor)
        orelse = node.orelse if loop else ()  # type: ignore[attr-defined]
        for child in _children(node):
            stack.append((child, in_loop or (loop and child not in orelse)))


def _suppressing_returns(method: ast.FunctionDef) -> Iterator[ast.Return]:
    """``return`` statements of an ``__exit__`` that may return a true value."""
    for sub in _walk_no_nested(method.body):
        if isinstance(sub, ast.Return) and not (
            sub.value is None or (isinstance(sub.value, ast.Constant) and not sub.value.value)
        ):
            yield sub


# --------------------------------------------------------------------------------------
# The visitor
# --------------------------------------------------------------------------------------


def _generic(checker: Any, node: Any) -> None:
    """Marker in a visitor table: no ``visit_X`` method, walk the children."""


def _skip(checker: Any, node: Any) -> None:
    """Marker in a visitor table: no ``visit_X`` method and no children to walk."""


_GENERIC: Callable[[Any, Any], None] = _generic
_SKIP: Callable[[Any, Any], None] = _skip


class _VisitorTable(dict[Any, Callable[[Any, Any], None]]):
    """Node class -> the checker's ``visit_X`` function, ``_GENERIC`` or ``_SKIP``.

    Anything that is not a node class (a ``None`` in ``Dict.keys``, a string in a field the
    child table could not classify) maps to ``_SKIP``, as ``NodeVisitor`` ignores it too.
    """

    def __init__(self, checker: type) -> None:
        super().__init__()
        self.checker = checker

    def __missing__(self, cls: Any) -> Callable[[Any, Any], None]:
        self[cls] = method = self._method(cls)
        return method

    def _method(self, cls: Any) -> Callable[[Any, Any], None]:
        if not (isinstance(cls, type) and issubclass(cls, ast.AST)):
            return _SKIP
        name = f"visit_{cls.__name__}"
        method = getattr(self.checker, name, None)
        if method is not None and method is not getattr(ast.NodeVisitor, name, None):
            if issubclass(cls, _SKIPPED_NODE_CLASSES):
                raise TypeError(
                    f"{self.checker.__name__}.{name}: the fast walk skips {cls.__name__} "
                    "nodes; check them from their parent node instead"
                )
            return method
        # NodeVisitor's own visit_Constant only dispatches to legacy visit_Num & co.
        return _GENERIC if _CHILD_FIELDS[cls] else _SKIP


_VISITOR_TABLES: dict[type, _VisitorTable] = {}


def _visitor_table(checker: type) -> _VisitorTable:
    table = _VISITOR_TABLES.get(checker)
    if table is None:
        table = _VISITOR_TABLES[checker] = _VisitorTable(checker)
        for cls in list(_CHILD_FIELDS):
            table[cls]  # fill eagerly; also raises for a visit_X the walk would skip
    return table


@dataclass
class _Scope:
    """Names bound in one function (or class) body, and which of them come from imports."""

    names: set[str]
    imports: frozenset[str] = frozenset()
    #: A class body's names are visible in the body itself, not in its methods, lambdas or
    #: comprehensions: they count only while the class scope is the innermost one.
    is_class: bool = False


@dataclass
class _State:
    in_class: int = 0
    finally_depth: int = 0
    loop_in_finally: int = 0
    functions: list[ast.AST] = field(default_factory=list)


class KernelChecker(ast.NodeVisitor):
    """Walks one kernel's AST and collects :class:`Finding` objects."""

    def __init__(self, source: str, name: str, policy: Policy) -> None:
        self.source = source
        self.name = name
        self.policy = policy
        self.lines = source.splitlines()
        self.findings: list[Finding] = []
        self.entry: ast.FunctionDef | None = None
        self.timeout: float | None = None
        self.retries: int | None = None
        self.aliases: dict[str, str] = {}  # local name -> dotted origin of an import
        self.module_bound: set[str] = set()
        self.module_vars: set[str] = set()  # module-level names that are not imports
        self.scopes: list[_Scope] = []
        self.state = _State()
        self._direct_calls: set[int] = set()
        # Filled by _prepass: each function/lambda/class node -> (bound names, import names).
        self._scope_names: dict[ast.AST, tuple[set[str], set[str]]] = {}
        self._has_yield = False
        self._watched_names: frozenset[str] | set[str] = frozenset()
        # PK306: names bound to a module by an import -> the module's dotted name; the ids of
        # Name nodes that stand as ``module.attr`` (read) or whose write PK404 reports.
        self.module_names: dict[str, str] = {}
        self._module_reads: set[int] = set()
        self._module_writes_reported: set[int] = set()
        self._module_writes: set[int] = set()
        self._visitors = _visitor_table(type(self))
        # Aliases of type/object/BaseException & co (``t = type``), resolved before the rules
        # apply: name -> the builtins it may stand for.  Filled after the prepass.
        self._alias_candidates: list[tuple[str, tuple[str, ...]]] = []
        self.builtin_aliases: dict[str, frozenset[str]] = {}
        self._type_names: frozenset[str] = frozenset({"type"})
        #: ``_private`` attribute names the kernel defines (assigns, or defines in a class
        #: body): the only ``_`` attributes it may read (PK309).
        self.kernel_attributes: set[str] = set()
        self.kernel_classes: set[str] = set()
        self._tree_body: list[ast.stmt] = []
        self._class_dunder_targets: set[int] = set()
        #: ids of decorator expressions (PK404: decorators that change their argument).
        self._decorators: set[int] = set()
        #: Locals assigned a library class or function by its dotted name
        #: (``e = json.JSONEncoder``): writing to their attributes is PK404.
        self._library_candidates: list[tuple[str, ast.expr]] = []
        self.library_aliases: dict[str, str] = {}

    # -- reporting ---------------------------------------------------------------------

    def _column(self, node: ast.AST) -> tuple[int, int]:
        line = getattr(node, "lineno", 1)
        offset = getattr(node, "col_offset", 0)
        if isinstance(node, ast.Attribute) and node.end_lineno == line and node.end_col_offset:
            offset = node.end_col_offset - len(node.attr)  # point at the attribute itself
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        if not text.isascii():  # col_offset counts UTF-8 bytes
            offset = len(text.encode()[:offset].decode(errors="replace"))
        return line, offset + 1

    def error(self, code: str, node: ast.AST, message: str) -> None:
        line, column = self._column(node)
        self.findings.append(Finding(code, "error", message, line, column))

    def warn(self, code: str, node: ast.AST, message: str) -> None:
        line, column = self._column(node)
        self.findings.append(Finding(code, "warning", message, line, column))

    # -- name resolution ---------------------------------------------------------------

    def _is_local(self, name: str) -> bool:
        scopes = self.scopes
        for scope in scopes:
            if name in scope.names and (not scope.is_class or scope is scopes[-1]):
                return True
        return False

    def _is_builtin(self, name: str) -> bool:
        """Whether ``name`` here refers to the builtin (nothing in the kernel binds it)."""
        return not self._is_local(name) and name not in self.module_bound

    def _dotted(self, node: ast.expr) -> str | None:
        """``json.decoder.JSONDecoder`` for an expression rooted at an imported name."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases and not self._shadowed(node.id):
                return self.aliases[node.id]
            return None
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _shadowed(self, name: str) -> bool:
        """An import alias rebound by a function's own assignment or parameter."""
        scopes = self.scopes
        for scope in reversed(scopes):
            if name in scope.names and (not scope.is_class or scope is scopes[-1]):
                return name not in scope.imports
        return False

    def _is_module(self, node: ast.expr) -> bool:
        """Whether ``node`` names an imported module (``operator``, ``collections.abc``)."""
        dotted = self._dotted(node)
        return dotted is not None and isinstance(self._value_of(dotted), types.ModuleType)

    def _value_of(self, dotted: str) -> Any:
        """The object a dotted import path names, imported here, or ``_MISSING``."""
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            module_name = ".".join(parts[:cut])
            if module_name not in self.policy.allowed_modules:
                continue
            obj = _import(module_name)
            for attr in parts[cut:]:
                if obj is _MISSING:
                    break
                obj = getattr(obj, attr, _MISSING)
            return obj
        return _MISSING

    # -- the pass ----------------------------------------------------------------------

    def run(self, tree: ast.Module) -> None:
        self.module_bound = self._prepass(tree)
        # Every name visit_Name has a rule for (dunders aside): the checks below only look
        # names up in these tables, so a name in none of them cannot produce a finding.
        self._watched_names = (
            self.policy.forbidden_builtins | _ATTR_BUILTINS | PY2_NAMES.keys() | self.aliases.keys()
        )
        imported = {
            alias.asname or alias.name.split(".")[0]
            for stmt in tree.body
            if isinstance(stmt, ast.Import | ast.ImportFrom)
            for alias in stmt.names
        }
        self.module_vars = self.module_bound - imported
        self.kernel_classes = {s.name for s in tree.body if isinstance(s, ast.ClassDef)}
        self._tree_body = tree.body
        self._resolve_aliases()
        self._type_names = frozenset(
            {"type"} | {n for n, v in self.builtin_aliases.items() if "type" in v}
        )
        for target, value in self._library_candidates:
            dotted = self._dotted(value)
            if dotted is not None and not self._is_module(value):
                self.library_aliases[target] = dotted
        if self._makes_tuple_classes(tree):
            self.kernel_attributes |= _NAMEDTUPLE_ATTRIBUTES
        self.visit(tree)
        self._check_entry(tree)

    def _prepass(self, tree: ast.Module) -> set[str]:
        """Name resolution (:func:`pyrecks.compiler.bindings.collect`); returns the names
        bound at module level and keeps the rest on the checker for the rules."""
        found = collect(tree, self.policy.allowed_modules, self._value_of)
        self.aliases.update(found.aliases)
        self.module_names.update(found.modules)
        self._scope_names = found.scope_names
        self._has_yield = found.has_yield
        self._alias_candidates = found.alias_candidates
        self._library_candidates = found.library_candidates
        self.kernel_attributes |= found.kernel_attributes
        return found.module_bound

    def _makes_tuple_classes(self, tree: ast.Module) -> bool:
        """Whether the kernel makes named-tuple classes (their ``_asdict`` & co are its own)."""
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
                if self._dotted(stmt.value.func) in _TUPLE_FACTORIES:
                    return True
            elif isinstance(stmt, ast.ClassDef) and any(
                self._dotted(base) in _TUPLE_FACTORIES for base in stmt.bases
            ):
                return True
        return False

    def _resolve_aliases(self) -> None:
        """``t = type``, ``_B = BaseException``, ``E = (ValueError, SystemExit)``: resolve.

        A name assigned anywhere in the kernel from builtins of
        :data:`~pyrecks.compiler.rulebook.ALIASED_BUILTINS` (or from such aliases) stands for
        them wherever it is used: over-approximating is safe for refusal rules.
        """
        aliases = self.builtin_aliases
        changed = True
        while changed:
            changed = False
            for target, sources in self._alias_candidates:
                resolved: set[str] = set()
                for source in sources:
                    if source in aliases:
                        resolved |= aliases[source]
                    elif source in rulebook.ALIASED_BUILTINS and source not in self.aliases:
                        resolved.add(source)
                if resolved and not resolved <= aliases.get(target, frozenset()):
                    aliases[target] = aliases.get(target, frozenset()) | frozenset(resolved)
                    changed = True

    def _builtins_of(self, node: ast.expr | None) -> frozenset[str]:
        """The aliased builtins an expression may stand for (``type`` for ``t = type; t``)."""
        if isinstance(node, ast.Name):
            if node.id in self.builtin_aliases:
                return self.builtin_aliases[node.id]
            if node.id in rulebook.ALIASED_BUILTINS and self._is_builtin(node.id):
                return frozenset((node.id,))
        return frozenset()

    # -- dispatch ----------------------------------------------------------------------
    #
    # ``ast.NodeVisitor.visit`` builds the method name and looks it up for every node and
    # ``generic_visit`` walks every field through ``ast.iter_fields``; these two do the same
    # with a per-class table and the fast child-field table above.

    def visit(self, node: ast.AST) -> None:
        method = self._visitors[type(node)]
        if method is _GENERIC:
            self.generic_visit(node)
        elif method is not _SKIP:
            method(self, node)

    def generic_visit(self, node: ast.AST) -> None:
        visitors = self._visitors
        items: list[Any] | tuple[Any]
        for fname in _CHILD_FIELDS[type(node)]:
            value = getattr(node, fname, None)
            if type(value) is list:
                items = value
            elif value is None:
                continue
            else:
                items = (value,)
            for item in items:
                method = visitors[type(item)]
                if method is _GENERIC:
                    self.generic_visit(item)
                elif method is not _SKIP:
                    method(self, item)

    # PK5xx: what may stand at module level ---------------------------------------------

    def visit_Module(self, node: ast.Module) -> None:
        """PK501/PK502/PK403/PK406: load-time code, from :mod:`pyrecks.compiler.purity`.

        The guard rewriter refuses the same problems, so they hold with the checker off too.
        (PK404 writes to module attributes are reported by the mutation rule instead.)
        """
        for problem in purity.module_problems(node, self.name):
            if problem.code != "PK404":
                self.error(problem.code, problem.node, problem.message)
        for stmt in node.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    for leaf in purity.target_leaves(target):
                        if isinstance(leaf, ast.Name) and leaf.id.startswith("PYRECKS_"):
                            self._config(leaf.id, stmt.value, stmt)
            self.visit(stmt)

    _target_leaves = staticmethod(purity.target_leaves)

    def _config(self, name: str, value: ast.expr | None, stmt: ast.stmt) -> None:
        """PK503: PYRECKS_TIMEOUT / PYRECKS_RETRIES must be literal numbers in range."""
        if name not in CONFIG_NAMES:
            self.warn(
                "PK503",
                stmt,
                f"unknown kernel setting {name}; the known ones are " + ", ".join(CONFIG_NAMES),
            )
            return
        number = value.value if isinstance(value, ast.Constant) else None
        if name == "PYRECKS_TIMEOUT":
            ok = isinstance(number, int | float) and not isinstance(number, bool)
            if ok and 0 < float(number) <= self.policy.max_timeout:  # type: ignore[arg-type]
                self.timeout = float(number)  # type: ignore[arg-type]
                return
            self.error(
                "PK503",
                stmt,
                "PYRECKS_TIMEOUT must be a literal number of seconds greater than 0 and at most "
                f"{self.policy.max_timeout:g} (the policy's max_timeout), e.g. "
                "PYRECKS_TIMEOUT = 5.0",
            )
        else:
            ok = isinstance(number, int) and not isinstance(number, bool)
            if ok and 0 <= number <= self.policy.max_retries:  # type: ignore[operator]
                self.retries = int(number)  # type: ignore[arg-type]
                return
            self.error(
                "PK503",
                stmt,
                "PYRECKS_RETRIES must be a literal integer from 0 to "
                f"{self.policy.max_retries} (the policy's max_retries), e.g. PYRECKS_RETRIES = 3",
            )

    # PK1xx: imports --------------------------------------------------------------------

    def _not_allowed(self, module: str) -> str:
        root = module.split(".")[0]
        hint = ""
        if module != root and root in self.policy.allowed_modules:
            hint = f" ({root} is allowed, its submodule {module} is not)"
        return (
            f"module '{module}' is not on the kernel allow-list{hint}: kernels may not do I/O "
            'or reach interpreter state; pass data in as arguments or "@key" inputs and '
            "write with effects. Allowed: "
            + ", ".join(sorted(self.policy.allowed_modules))
            + " (an operator can extend the list with 'pyrecksc policy set')"
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self.policy.module_allowed(alias.name):
                self.error("PK101", node, self._not_allowed(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.error(
                "PK103",
                node,
                "relative imports have no meaning for a kernel stored in Redis; import an "
                "allowed module by its absolute name",
            )
            return
        module = node.module or ""
        if not self.policy.module_allowed(module):
            self.error("PK101", node, self._not_allowed(module))
            return
        for alias in node.names:
            if alias.name == "*":
                self.error(
                    "PK104",
                    node,
                    f"'from {module} import *' hides which names the kernel uses; import the "
                    f"names you need: from {module} import name1, name2",
                )
                continue
            self._check_module_attribute(module, alias.name, node, imported=True)

    def _check_module_attribute(
        self, module: str, attr: str, node: ast.AST, *, imported: bool = False
    ) -> bool:
        """PK102/PK303: private names, forbidden names and modules reached from a module."""
        code = "PK102" if imported else "PK303"
        full = f"{module}.{attr}"
        if full in self.policy.allowed_modules:
            return True
        if full in self.policy.forbidden_attributes:
            self.error(
                code,
                node,
                f"{full} is forbidden in kernels: it can run code from strings, reach other "
                "objects' attributes or do I/O; see docs/kernels.md for alternatives",
            )
            return False
        if attr.startswith("_"):
            self.error(
                code,
                node,
                f"{full} is a private name of module {module}: private module internals may "
                f"lead to unsafe modules; use {module}'s public functions",
            )
            return False
        mod = _import(module) if module in self.policy.allowed_modules else _MISSING
        value = getattr(mod, attr, _MISSING) if mod is not _MISSING else _MISSING
        if (
            isinstance(value, types.ModuleType)
            and value.__name__ not in self.policy.allowed_modules
        ):
            self.error(
                code,
                node,
                f"{full} is the module '{value.__name__}', which is not on the allow-list: an "
                f"allowed module does not make the modules it uses allowed; use only "
                f"{module}'s own functions",
            )
            return False
        if full in rulebook.MODULE_STATE_FUNCTIONS:
            return True  # PK404 says it, with the fix
        reason = rulebook.refusal_reason(module, attr)
        if reason is not None and not isinstance(value, types.ModuleType):
            self.error(
                code,
                node,
                f"{full} is not available in kernels: {reason}; see the rule book's table "
                "in docs/kernels.md for what each allowed module offers",
            )
            return False
        return True

    # PK2xx: names and builtins ---------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name not in self._watched_names and name[:1] != "_":
            return  # fast path: none of the rules below can apply to this name
        if name[:2] != "__" and name not in self._watched_names:
            if name.startswith(rulebook.GUARD_PREFIX):
                self.error(
                    "PK202",
                    node,
                    f"names starting with {rulebook.GUARD_PREFIX!r} are reserved for the "
                    "guards the compiler writes into every kernel; rename it",
                )
            return  # a ``_private`` name: only the reserved prefix is a rule
        if isinstance(node.ctx, ast.Load):
            if name in self.policy.forbidden_builtins and self._is_builtin(name):
                fix = rulebook.FORBIDDEN_BUILTINS.get(name, "it is not available in kernels")
                self.error("PK201", node, f"{name}() is forbidden in kernels: {fix}")
                return
            if name in ("getattr", "setattr", "delattr") and self._is_builtin(name):
                if id(node) not in self._direct_calls:
                    self.error(
                        "PK203",
                        node,
                        f"{name} may only be called directly with a literal attribute name; "
                        "passing it around hides which attribute is read: write obj.name",
                    )
                return
            if name in PY2_NAMES and self._is_builtin(name):
                self.error(
                    "PK903",
                    node,
                    f"'{name}' is Python 2 and does not exist in Python 3: use {PY2_NAMES[name]}",
                )
                return
        if (
            _is_dunder(name)
            and name not in SAFE_DUNDER_NAMES
            and id(node) not in self._class_dunder_targets
        ):
            self.error(
                "PK202",
                node,
                f"'{name}' reaches interpreter internals and is forbidden in kernels; "
                "use ordinary names, and imports from the allow-list",
            )
        dotted = self.aliases.get(name)
        if dotted is not None and self._shadowed(name):
            dotted = None
        if (
            dotted in ("operator.attrgetter", "operator.methodcaller")
            and isinstance(node.ctx, ast.Load)
            and id(node) not in self._direct_calls
        ):
            self.error(
                "PK206",
                node,
                f"{dotted} may only be called directly with literal, non-dunder names; "
                "write a lambda that reads the attribute by name instead",
            )
        if name in self.module_names:
            self._module_use(node)

    def _module_use(self, node: ast.Name) -> None:
        """PK306: a module may only be used as ``module.attribute``.

        Storing, passing, returning, comparing or deleting a module (``m = json``,
        ``f(json)``, ``[json]``) hides which of its attributes the kernel reaches: the
        attribute rules (PK303, PK206, PK404) see ``json.x`` but not ``m.x``.  Writing to a
        module attribute is reported here too unless PK404 already says it (``for json.x in``,
        ``with ... as json.x``, comprehension targets, writes after a local import).
        """
        key = id(node)
        name = node.id
        if key in self._module_reads or key in self._module_writes_reported:
            return
        if self._shadowed(name):
            return  # a parameter or local variable of the same name
        module = self.module_names[name]
        shown = f"{name}'" if module == name else f"{name}' (module '{module}')"
        if key in self._module_writes:
            self.error(
                "PK306",
                node,
                f"writing to an attribute of module '{shown} changes it for every kernel in "
                "the VM process; modules cannot be stored, passed or changed in a kernel: "
                "keep your values in local variables",
            )
            return
        self.error(
            "PK306",
            node,
            f"module '{shown} may only be used as {name}.attribute: write {name}.f(x) where "
            f"you use it, not m = {name}; m.f(x) or g({name}); modules cannot be stored, "
            "passed, returned, compared or changed in a kernel",
        )

    # PK3xx: attributes -----------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _is_dunder(attr) and attr not in SAFE_DUNDER_ATTRIBUTES:
            self.error("PK301", node, self._dunder_message(attr))
        elif attr in FRAME_ATTRIBUTES:
            self.error(
                "PK302",
                node,
                f"'.{attr}' reaches frames, code objects or generator internals, which expose "
                "the VM's globals; kernels may not use it — pass the data you need explicitly",
            )
        elif attr in PY2_METHODS:
            self.warn(
                "PK904",
                node,
                f"'.{attr}' is a Python 2 method: in Python 3 write {PY2_METHODS[attr]}",
            )
        if attr[:1] == "_" or attr in rulebook.TYPE_DEPENDENT_ATTRIBUTES:
            self._typed_attribute(node)
        if isinstance(node.value, ast.Name) and node.value.id in self.module_names:
            if isinstance(node.ctx, ast.Load):
                self._module_reads.add(id(node.value))
            else:
                self._module_writes.add(id(node.value))
        base = self._dotted(node.value)
        if base is not None:
            value = self._value_of(base)
            if isinstance(value, types.ModuleType):
                self._check_module_attribute(value.__name__, attr, node)
                full = f"{base}.{attr}"
                if full in ("operator.attrgetter", "operator.methodcaller") and (
                    id(node) not in self._direct_calls
                ):
                    self.error(
                        "PK206",
                        node,
                        f"{full} may only be called directly with literal, non-dunder names",
                    )
        self.generic_visit(node)

    def _enum_functional_names(self, dotted: str, node: ast.Call) -> None:
        """PK532: ``enum.Enum("E", [("__del__", f)])`` installs a class hook by name."""
        names = [*node.args[1:], *(k.value for k in node.keywords if k.arg == "names")]
        for sub in _walk_no_nested(names):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                for part in sub.value.replace(",", " ").split():
                    if part.startswith("_"):
                        self.error(
                            "PK532",
                            sub,
                            f"{dotted}() functional API with the member name {part!r}: every "
                            "name becomes a class attribute, so '_' names install class hooks "
                            "(__del__, __init_subclass__, …) or private attributes; name "
                            "members without a leading underscore",
                        )
                        return

    def _plain_super(self, call: ast.Call) -> bool:
        """``super()`` or ``super(C, obj)`` with ``C`` a kernel class and ``obj`` not a class:
        the forms whose ``__init__`` is bound to the kernel's own instance."""
        args = call.args
        if not args and not call.keywords:
            return True
        return (
            len(args) == 2
            and all(isinstance(a, ast.Name) for a in args)
            and args[0].id in self.kernel_classes  # type: ignore[attr-defined]
            and args[1].id not in self.kernel_classes  # type: ignore[attr-defined]
        )

    def _own_init(self, name: str, depth: int = 0) -> bool:
        """Whether ``Name.__init__`` of a kernel class is the kernel's own function: the class
        (or a kernel base) defines it, or nothing but ``object`` does; a library base's
        ``__init__`` read through a kernel subclass re-initialises shared objects."""
        cls = next(
            (s for s in self._tree_body if isinstance(s, ast.ClassDef) and s.name == name),
            None,
        )
        if cls is None or depth > 20:
            return False
        if cls.decorator_list or any(
            isinstance(s, ast.FunctionDef) and s.name == "__init__" for s in cls.body
        ):
            return True
        return all(
            isinstance(b, ast.Name)
            and b.id in self.kernel_classes
            and self._own_init(b.id, depth + 1)
            for b in cls.bases
        )

    def _typed_attribute(self, node: ast.Attribute) -> None:
        """PK309/PK301/PK307: names whose verdict depends on the object (the rule book's
        type-dependent and private names), judged as far as the text shows the object."""
        attr, base = node.attr, node.value
        if self._is_module(base):
            return  # module attributes: PK303 (_check_module_attribute)
        if attr == "__init__":
            if (
                isinstance(base, ast.Call)
                and isinstance(base.func, ast.Name)
                and base.func.id == "super"
                and self._plain_super(base)
            ) or (
                isinstance(base, ast.Name)
                and (
                    self._own_init(base.id)
                    if base.id in self.kernel_classes
                    else self._dotted(base) is None
                )
            ):
                return  # super().__init__, Base.__init__(self) of a kernel class, self.__init__
            self.error(
                "PK301",
                node,
                "'.__init__' of a class or object the kernel did not define would "
                "re-initialise an object every kernel shares; call super().__init__(...) "
                "from your own class",
            )
        elif attr in rulebook.CLASS_REFUSED_ATTRIBUTES:
            dotted = self._dotted(base)
            value = self._value_of(dotted) if dotted else _MISSING
            origin = getattr(value, "__origin__", None) if value is not _MISSING else None
            if (
                isinstance(value, abc.ABCMeta)
                or isinstance(origin, abc.ABCMeta)  # typing.Mapping.register is Mapping's
                or (isinstance(base, ast.Name) and base.id in self.kernel_classes)
            ):
                self.error(
                    "PK307",
                    node,
                    f"'.{attr}': "
                    + rulebook.CLASS_REFUSED_ATTRIBUTES[attr]
                    + " (isinstance(x, (dict, MyMapping)) instead of registering)",
                )
        elif (
            attr[:1] == "_"
            and not _is_dunder(attr)
            and (rulebook.is_sunder(attr) or attr not in self.kernel_attributes)
            and attr not in FRAME_ATTRIBUTES
        ):
            self.error(
                "PK309",
                node,
                f"'.{attr}' is a private attribute of an object the kernel did not define "
                "(kernels may read '_' names only on their own objects and classes); use the "
                "object's public API",
            )

    @staticmethod
    def _dunder_message(attr: str) -> str:
        fixes = {
            "__class__": "use type(x) or isinstance(x, T)",
            "__dict__": "read the attributes you need by name, or use dataclasses.asdict",
            "__globals__": "pass the values you need as arguments",
            "__builtins__": "call builtins directly by name",
            "__code__": "kernels cannot inspect code; call the function",
            "__subclasses__": "kernels cannot enumerate classes",
            "__bases__": "use isinstance/issubclass",
            "__mro__": "use isinstance/issubclass",
        }
        fix = fixes.get(attr, "call the matching builtin or operator instead (len(x), str(x), …)")
        return f"dunder attribute '.{attr}' reaches interpreter internals; {fix}"

    def _check_format_template(self, template: str, node: ast.AST) -> None:
        """PK304: a template whose fields read attributes the rule book refuses.

        Every string literal of the kernel is a possible template (``t = "{0.__class__}"``
        and ``t.format(x)`` later, or ``getattr(t, "format")``), and so is a concatenation
        of literals.  At run time the same fields go through the attribute guard.
        """
        for field_name, is_attr, part in field_accesses(template):
            if not is_attr:
                continue
            if rulebook.is_plain_attribute(part) or (
                part[:1] == "_"
                and part in self.kernel_attributes
                and not _is_internal_attribute(part)
            ):
                continue
            self.error(
                "PK304",
                node,
                f"format field '{{{field_name}}}' reads the attribute '{part}', which "
                "the rule book refuses (interpreter internals, private or "
                "type-dependent names); format plain values: '{}'.format(value)",
            )
            return

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if type(value) is str and "{" in value and ("." in value or "[" in value):
            self._check_format_template(value, node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant | ast.BinOp):
            text = folded_text(node)
            if text is not None and "{" in text:
                self._check_format_template(text, node)
        self.generic_visit(node)

    # Calls: PK2xx builtins with arguments, PK4xx state and nondeterminism ---------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        self._direct_calls.add(id(func))
        if isinstance(func, ast.Name) and self._is_builtin(func.id):
            self._builtin_call(func.id, node)
        elif isinstance(func, ast.Name) and func.id in self._type_names:
            self._builtin_call("type", node)
        type_names = self._type_names  # "type" and its aliases: PK204 looks at these only
        if (
            type(func) is ast.Name
            and func.id in type_names
            and len(node.args) == 1
            and "type" in self._builtins_of(func)
        ):
            self._type_of(node)
        if not (type(func) is ast.Name and func.id in ("isinstance", "issubclass")):
            for arg in (
                node.args if not node.keywords else [*node.args, *(k.value for k in node.keywords)]
            ):
                if (
                    type(arg) is ast.Name
                    and arg.id in type_names
                    and "type" in self._builtins_of(arg)
                ):
                    self.error(
                        "PK204",
                        arg,
                        "passing type to another function (map(type, ...)) lets it create "
                        "classes with three arguments; call type(x) directly, or compare with "
                        "isinstance(x, T)",
                    )
        dotted = self._dotted(func)
        if dotted is not None:
            self._module_call(dotted, node)
        if isinstance(func, ast.Attribute):
            self._method_call(func, node)
        self.generic_visit(node)

    def _builtin_call(self, name: str, node: ast.Call) -> None:
        if name in ("getattr", "setattr", "delattr"):
            if len(node.args) >= 2:
                self._literal_attribute(name, node.args[1], node)
                if name != "getattr" and isinstance(node.args[1], ast.Constant):
                    # setattr(obj, "x", v) is obj.x = v: the same mutation rules
                    written = ast.Attribute(node.args[0], str(node.args[1].value), ast.Store())
                    self._mutation(written, node, via=f"{name}()")
            elif node.keywords:
                self.error("PK203", node, f"call {name}(obj, 'name') with positional arguments")
        elif name == "type" and len(node.args) == 3:
            self.error(
                "PK204",
                node,
                "type() with three arguments creates a class at run time; write a class "
                "statement instead",
            )
        elif name == "print":
            for kw in node.keywords:
                if kw.arg == "file":
                    self.error(
                        "PK205",
                        kw.value,
                        "print(..., file=...) is forbidden: kernel output goes to the chain "
                        "log; write print(...) without file=",
                    )
        elif name in ("hash", "id") and self.policy.warn_nondeterminism:
            self.warn(
                "PK405",
                node,
                f"{name}() differs between processes (hash randomisation, addresses), so a "
                "re-run step may compute something else; use hashlib for stable digests",
            )

    def _type_of(self, node: ast.Call) -> None:
        """PK204: ``type(x)`` of a library object or of a class hands out a class to call.

        ``type(operator.attrgetter("real"))("__globals__")`` built an attribute reader for
        any name; ``type(int)`` is ``type`` itself.  Kernels compare types with isinstance.
        """
        arg = node.args[0]
        library = isinstance(arg, ast.Call) and (
            self._dotted(arg.func) is not None or "type" in self._builtins_of(arg.func)
        )
        a_class = isinstance(arg, ast.Name) and (
            arg.id in self.kernel_classes
            or isinstance(self._value_of(self._dotted(arg) or ""), type)
            or (self._is_builtin(arg.id) and arg.id in _BUILTIN_CLASSES)
        )
        if library or a_class:
            self.error(
                "PK204",
                node,
                "type() of a library object or of a class hands out a class the kernel could "
                "call with names of its choosing (type(operator.attrgetter('x'))('__globals__'))"
                "; compare types with isinstance(x, T) instead",
            )

    def _literal_attribute(self, func: str, arg: ast.expr, node: ast.AST) -> None:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            self.error(
                "PK203",
                node,
                f"{func}() with a computed attribute name can reach any attribute, including "
                "interpreter internals; write obj.name, or keep the values in a dict keyed by "
                "name",
            )
            return
        for part in arg.value.split("."):
            if _is_internal_attribute(part):
                self.error(
                    "PK203",
                    node,
                    f"{func}() with the name '{arg.value}' reaches interpreter internals; "
                    "kernels may not read dunder or frame attributes",
                )
                return
            if part in rulebook.TYPE_DEPENDENT_ATTRIBUTES or (
                part[:1] == "_" and part not in self.kernel_attributes
            ):
                self.error(
                    "PK203",
                    node,
                    f"{func}() with the name '{part}' hides a guarded or private attribute "
                    f"behind a string; write obj.{part.lstrip('_') or part}(...) directly "
                    "(format templates are checked where they are written)",
                )
                return

    def _module_call(self, dotted: str, node: ast.Call) -> None:
        if dotted in _ENUM_FACTORIES:
            self._enum_functional_names(dotted, node)
        changes = rulebook.DECORATORS_THAT_CHANGE_THEIR_ARGUMENT.get(dotted)
        if changes is not None and id(node) not in self._decorators:
            self.error(
                "PK404",
                node,
                f"{dotted}() called other than as a decorator: {changes}, which may be a "
                "library class or a module-level one that every run shares; write "
                f"@{dotted} above a class or function you define",
            )
        if dotted in rulebook.MODULE_STATE_FUNCTIONS:
            self.error(
                "PK404",
                node,
                f"{dotted}() changes state shared by every kernel in the VM process; "
                + rulebook.MODULE_STATE_FUNCTIONS[dotted],
            )
        elif dotted in ("operator.attrgetter", "operator.methodcaller"):
            names = node.args if dotted == "operator.attrgetter" else node.args[:1]
            for arg in names:
                self._literal_attribute(dotted, arg, node)
        elif dotted in rulebook.MUTATING_FUNCTIONS and node.args:
            self._mutation(node.args[0], node, via=f"{dotted}()")
        if self.policy.warn_nondeterminism:
            module, _, attr = dotted.rpartition(".")
            random_call = module == "random" and attr not in RANDOM_SAFE and attr != "shuffle"
            if random_call and attr == "Random" and node.args:
                random_call = False
            if (
                dotted in rulebook.NONDETERMINISTIC
                or random_call
                or (dotted == "random.Random" and not node.args)
            ):
                self.warn(
                    "PK405",
                    node,
                    f"{dotted}() is nondeterministic: a step re-run after a crash may compute "
                    "something else; pass times and seeds in as arguments (e.g. "
                    "random.Random(seed)) to keep steps repeatable",
                )

    def _method_call(self, func: ast.Attribute, node: ast.Call) -> None:
        if func.attr in rulebook.MUTATING_METHODS and not self._is_module(func.value):
            # (``operator.add(a, b)`` calls a module function; it mutates nothing)
            self._mutation(func.value, node, via=f".{func.attr}()")
        if func.attr in ("format", "format_map"):
            receiver = func.value
            template: ast.expr | None = receiver
            if isinstance(receiver, ast.Name) and receiver.id == "str" and self._is_builtin("str"):
                template = node.args[0] if node.args else None
            if isinstance(template, ast.Constant) and isinstance(template.value, str):
                pass  # literal templates: visit_Constant (PK304)
            elif template is not None and not (
                isinstance(receiver, ast.Name) and receiver.id in self.aliases
            ):
                self.warn(
                    "PK305",
                    node,
                    f".{func.attr}() with a template that is not a literal can read any "
                    "attribute of its arguments ('{0.__class__}'); use a literal template or "
                    "f-string",
                )

    # PK4xx: mutation of module-level state ---------------------------------------------

    def _mutation(self, target: ast.expr, node: ast.AST, *, via: str) -> None:
        """Report a change of module-level state through ``target`` (a name, attr or item)."""
        root = _root(target)
        if not isinstance(root, ast.Name):
            return
        name = root.id
        if target is not root and name in self.library_aliases and self._is_local(name):
            self.error(
                "PK404",
                node,
                f"changing {self.library_aliases[name]} through '{name}' ({via}) changes a "
                "library object every kernel in the VM process shares; keep your values in "
                "your own objects",
            )
            return
        if name in self.aliases and name not in self.module_vars and not self._shadowed(name):
            # (an import inside the function is local to it but still the shared module)
            if target is not root:
                self._module_writes_reported.add(id(root))
            self.error(
                "PK404",
                node,
                f"changing module '{self.aliases[name]}' ({via}) affects every kernel in the VM "
                "process; keep your values in local variables",
            )
        elif name in self.module_vars and self.scopes and not self._is_local(name):
            self.error(
                "PK402",
                node,
                f"{via} changes the module-level '{name}', which every run of the kernel "
                "shares; kernels must be pure: copy it into a local variable (items = "
                f"list({name})) or return the new state with a SET effect",
            )

    def _assignment_targets(self, targets: Iterable[ast.expr], node: ast.AST) -> None:
        for target in targets:
            for leaf in self._target_leaves(target):
                if isinstance(leaf, ast.Attribute | ast.Subscript):
                    value = leaf.value
                    if (
                        isinstance(leaf, ast.Attribute)
                        and isinstance(value, ast.Call)
                        and self._dotted(value.func) == "decimal.getcontext"
                    ):
                        self.error(
                            "PK404",
                            leaf,
                            "changing decimal.getcontext() affects every kernel on this VM "
                            "thread; write 'with decimal.localcontext() as ctx: ctx.prec = …'",
                        )
                        continue
                    self._mutation(leaf, node, via="assignment")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assignment_targets(node.targets, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._assignment_targets([node.target], node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assignment_targets([node.target], node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._assignment_targets(node.targets, node)
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        """PK901: ``print >>f, x`` is valid Python 3 syntax (a shift and a tuple) but Python 2."""
        value = node.value
        first = value.elts[0] if isinstance(value, ast.Tuple) and value.elts else value
        if (
            isinstance(first, ast.BinOp)
            and isinstance(first.op, ast.RShift)
            and isinstance(first.left, ast.Name)
            and first.left.id == "print"
        ):
            self.error(
                "PK901",
                node,
                "Python 2 'print >>f, x' statement: kernels write output with print(x) (it goes "
                "to the chain log) and may not write to files",
            )
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self._global(node, "global")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self._global(node, "nonlocal")

    def _global(self, node: ast.Global | ast.Nonlocal, keyword: str) -> None:
        self.error(
            "PK401",
            node,
            f"'{keyword} {', '.join(node.names)}' lets the kernel change state that outlives "
            "the call; kernels must be pure: take the value as an argument and return the new "
            "one (or store it with a SET effect)",
        )

    # PK5xx: functions, classes, exceptions, async --------------------------------------

    def _visit_function(self, node: ast.FunctionDef | ast.Lambda) -> None:
        bound, imports = self._scope_names[node]  # names bound in the body (prepass)
        names = _arg_names(node.args) | bound
        self.scopes.append(_Scope(names, frozenset(imports)))
        self.state.functions.append(node)
        saved = (self.state.finally_depth, self.state.loop_in_finally)
        self.state.finally_depth = self.state.loop_in_finally = 0
        try:
            if isinstance(node, ast.FunctionDef):
                for stmt in node.body:
                    self.visit(stmt)
            else:
                self.visit(node.body)
        finally:
            self.state.finally_depth, self.state.loop_in_finally = saved
            self.state.functions.pop()
            self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for deco in node.decorator_list:
            self._decorators.add(id(deco))
            self.visit(deco)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.error(
            "PK512",
            node,
            f"async def {node.name}: kernels run synchronously on a VM thread; write a plain "
            "'def' (use fan-out in the return string for parallel work)",
        )

    def visit_Await(self, node: ast.Await) -> None:
        self.error("PK512", node, "await is not available in kernels: write synchronous code")
        self.generic_visit(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for sub in _walk(node.body) if self._has_yield else ():
            if isinstance(sub, ast.Yield | ast.YieldFrom):
                self.error(
                    "PK513",
                    sub,
                    "'yield' inside a lambda makes a hidden generator; write a def with a "
                    "loop, or a generator expression",
                )
                break
        self.visit(node.args)
        self._visit_function(node)

    def _visit_comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp
    ) -> None:
        """A comprehension is a scope of its own: its loop variables shadow outer names.

        The first iterable is evaluated outside that scope (``[m for json in [json]]`` reads
        the outer ``json``), so it is visited first.
        """
        first, *rest = node.generators
        self.visit(first.iter)
        names = {
            sub.id
            for gen in node.generators
            for sub in _walk(gen.target)
            if isinstance(sub, ast.Name)
        }
        self.scopes.append(_Scope(names))
        try:
            self.visit(first.target)
            for cond in first.ifs:
                self.visit(cond)
            for gen in rest:
                self.visit(gen)
            if isinstance(node, ast.DictComp):
                self.visit(node.key)
                self.visit(node.value)
            else:
                self.visit(node.elt)
        finally:
            self.scopes.pop()

    visit_ListComp = _visit_comprehension
    visit_SetComp = _visit_comprehension
    visit_GeneratorExp = _visit_comprehension
    visit_DictComp = _visit_comprehension

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._decorators.update(map(id, node.decorator_list))
        for kw in node.keywords:
            self.error(
                "PK530",
                kw,
                f"class {node.name}: keyword '{kw.arg}=' (metaclasses and class hooks) is "
                "forbidden in kernels; write a plain class or a dataclass",
            )
        for stmt in node.body:
            allowed = isinstance(
                stmt,
                ast.FunctionDef | ast.Assign | ast.AnnAssign | ast.Pass | ast.ClassDef,
            ) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
            if not allowed:
                self.error(
                    "PK531",
                    stmt,
                    f"class {node.name}: a class body may only hold methods, a docstring and "
                    "attribute assignments; move the statement into a method",
                )
            elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__exit__":
                for ret in _suppressing_returns(stmt):
                    self.error(
                        "PK521",
                        ret,
                        f"class {node.name}: an __exit__ that returns a true value swallows "
                        "the exception of the with block, the VM's timeout signal included; "
                        "return None and catch the exceptions you expect with except",
                    )
            elif (
                isinstance(stmt, ast.FunctionDef)
                and _is_dunder(stmt.name)
                and stmt.name not in rulebook.CLASS_HOOKS
                and stmt.name not in rulebook.CLASS_BODY_DUNDERS
            ):
                self._class_data_dunder(node, stmt, stmt.name)
            elif isinstance(stmt, ast.FunctionDef) and stmt.name in rulebook.CLASS_HOOKS:
                self.error(
                    "PK532",
                    stmt,
                    f"class {node.name}: {stmt.name} runs at times the VM does not control "
                    "(__del__ outside any time limit), changes other classes, or hands "
                    "library code a recipe it follows blindly (copy calls what __reduce__ "
                    "returns); kernels may not define class hooks: do the work in an "
                    "ordinary method",
                )
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    if isinstance(target, ast.Name) and _is_dunder(target.id):
                        # ``__slots__ = (...)``, ``__hash__ = None``: the class's own protocol
                        self._class_dunder_targets.add(id(target))
                    if isinstance(target, ast.Name) and target.id in rulebook.CLASS_HOOKS:
                        self.error(
                            "PK532",
                            stmt,
                            f"class {node.name}: setting {target.id} installs a class hook; "
                            "kernels may not define class hooks",
                        )
                    elif isinstance(target, ast.Name) and target.id == "__match_args__":
                        self._match_args(node, stmt.value)
                    elif (
                        isinstance(target, ast.Name)
                        and _is_dunder(target.id)
                        and target.id not in rulebook.CLASS_BODY_DUNDERS
                    ):
                        self._class_data_dunder(node, stmt, target.id)
        self.state.in_class += 1
        self.scopes.append(_Scope(set(self._scope_names[node][0]), is_class=True))
        try:
            self.generic_visit(node)
        finally:
            self.scopes.pop()
            self.state.in_class -= 1

    def _class_data_dunder(self, cls: ast.ClassDef, stmt: ast.stmt, name: str) -> None:
        """PK533: a class body binds a dunder that is data about the class (rulebook)."""
        self.error(
            "PK533",
            stmt,
            f"class {cls.name}: binding {name} sets what the interpreter or library code "
            "reads about the class and trusts (dataclasses turns __annotations__ into source "
            "code it runs); a class body may bind only its protocol methods, __slots__, "
            "__hash__, __match_args__ and a docstring: annotate fields as 'name: type'",
        )

    def _match_args(self, cls: ast.ClassDef, value: ast.expr | None) -> None:
        """PK308: ``__match_args__`` names attributes that class patterns read unguarded."""
        elts = value.elts if isinstance(value, ast.Tuple | ast.List) else None
        names = [e.value for e in elts or () if isinstance(e, ast.Constant)]
        if elts is None or len(names) != len(elts) or not all(isinstance(n, str) for n in names):
            self.error(
                "PK308",
                value or cls,
                f"class {cls.name}: __match_args__ must be a tuple of literal attribute names",
            )
            return
        for name in names:
            if _is_internal_attribute(str(name)) or name in rulebook.TYPE_DEPENDENT_ATTRIBUTES:
                self.error(
                    "PK308",
                    value or cls,
                    f"class {cls.name}: __match_args__ names {name!r}, which class patterns "
                    "would read without a guard; list your own public attributes",
                )

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        """PK308: ``case C(k=p)`` reads ``subject.k`` with no ``.k`` in the source.

        Keyword sub-patterns may name attributes every object may show (public, not frame
        internals, not type-dependent) or ``_private`` attributes of the kernel's own classes.
        """
        cls = node.cls
        own = isinstance(cls, ast.Name) and cls.id in self.kernel_classes
        for attr in node.kwd_attrs:
            if rulebook.is_plain_attribute(attr):
                continue
            if own and attr[:1] == "_" and not _is_internal_attribute(attr):
                continue
            self.error(
                "PK308",
                node,
                f"the class pattern reads the attribute {attr!r} of the subject, which the "
                "rule book refuses (dunder, frame, type-dependent or another's private "
                "attribute); match on values, or on your own classes' public attributes",
            )
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        caught = self._caught_names(node.type)
        reraises = any(isinstance(s, ast.Raise) and s.exc is None for s in node.body)
        if not reraises:
            if node.type is None:
                self.error(
                    "PK520",
                    node,
                    "bare 'except:' also catches the VM's timeout and shutdown signals, so a "
                    "runaway kernel could not be stopped; write 'except Exception:' (or the "
                    "exceptions you expect)",
                )
            elif caught & CONTROL_EXCEPTIONS:
                which = ", ".join(sorted(caught & CONTROL_EXCEPTIONS))
                self.error(
                    "PK520",
                    node,
                    f"catching {which} swallows the VM's timeout and shutdown signals; write "
                    "'except Exception:' (or re-raise with a bare 'raise')",
                )
        self.generic_visit(node)

    def _caught_names(self, node: ast.expr | None) -> set[str]:
        """The exception names a handler catches, aliases resolved (``_B = BaseException``)."""
        if node is None:
            return set()
        elts = node.elts if isinstance(node, ast.Tuple) else [node]
        out = set()
        for elt in elts:
            if isinstance(elt, ast.Name):
                out.add(elt.id)
                out |= self.builtin_aliases.get(elt.id, frozenset())
            elif isinstance(elt, ast.Attribute):
                out.add(elt.attr)
        return out

    def visit_Try(self, node: ast.Try) -> None:
        for stmt in node.body:
            self.visit(stmt)
        for handler in node.handlers:
            self.visit(handler)
        for stmt in node.orelse:
            self.visit(stmt)
        for sub in _walk_no_nested(node.finalbody):
            if isinstance(sub, ast.Raise) and sub.exc is not None:
                self.error(
                    "PK521",
                    sub,
                    "raising inside 'finally' replaces the exception in flight, including "
                    "the VM's timeout signal (an outer except would then swallow it); raise "
                    "after the try statement instead",
                )
            if isinstance(sub, ast.Return):
                self.error(
                    "PK521",
                    sub,
                    "'return' inside 'finally' swallows every exception, including the VM's "
                    "timeout signal; return after the try statement instead",
                )
        if node.finalbody:
            self._yield_in_cleanup(
                [*node.body, *node.handlers, *node.orelse], "a 'try' with 'finally:'"
            )
        for sub in _loop_jumps(node.finalbody):
            word = "break" if isinstance(sub, ast.Break) else "continue"
            self.error(
                "PK521",
                sub,
                f"'{word}' inside 'finally' swallows every exception, including the VM's "
                "timeout signal; leave the loop after the try statement instead",
            )
        for stmt in node.finalbody:
            self.visit(stmt)

    visit_TryStar = visit_Try  # type: ignore[assignment]

    def visit_With(self, node: ast.With) -> None:
        self._yield_in_cleanup(node.body, "a 'with' block")
        self.generic_visit(node)

    def _yield_in_cleanup(self, nodes: list[Any], where: str) -> None:
        for sub in _walk_no_nested(nodes):
            if isinstance(sub, ast.Yield | ast.YieldFrom):
                self.error(
                    "PK521",
                    sub,
                    f"'yield' inside {where}: when the generator is dropped its cleanup runs "
                    "at finalization, where every exception, the VM's timeout included, is "
                    "swallowed; yield outside the block",
                )

    # PK6xx: return strings ---------------------------------------------------------------

    def visit_Return(self, node: ast.Return) -> None:
        functions = self.state.functions
        in_entry = bool(functions) and functions[-1] is self._entry_candidate()
        if node.value is not None and functions:
            self._return_value(node.value, in_entry)
        self.generic_visit(node)

    def _entry_candidate(self) -> ast.AST | None:
        if len(self.state.functions) == 1 and not self.state.in_class:
            fn = self.state.functions[0]
            if isinstance(fn, ast.FunctionDef) and fn.name == self.name:
                return fn
        return None

    def _return_value(self, value: ast.expr, in_entry: bool) -> None:
        if isinstance(value, ast.Constant):
            if not in_entry:
                return
            if isinstance(value.value, str):
                self._grammar_check(value.value, value, literal=True)
            elif value.value is not None:
                self.error(
                    "PK603",
                    value,
                    f"the entry function returns {type(value.value).__name__} "
                    f"{value.value!r}; it must return a return string: '' to halt, or "
                    f"pyrecks.kernel.done({value.value!r}) to end the chain with a result",
                )
            return
        pieces = self._template(value)
        if pieces is None:
            return
        literal_text = "".join(text for text, numeric in pieces if numeric is None)
        call_like = re.match(r"\s*(?:[A-Za-z_]\w*\s*\(|return\b|\[)", literal_text)
        if not in_entry and not call_like:
            return
        if any(ch in literal_text for ch in "\"'()"):
            self.warn(
                "PK602",
                value,
                "return string built with %-formatting, .format or an f-string: a value "
                "containing a quote or parenthesis would change the instruction (injection); "
                "build it with pyrecks.kernel.call('next_kernel', value) (or done(), fanout(), "
                "key()), which escapes values",
            )
        if in_entry:
            self._grammar_check(_fill(pieces), value, literal=False)

    def _template(self, value: ast.expr) -> list[tuple[str, bool | None]] | None:
        """Literal pieces and placeholders of a return-string template (see templates.py)."""
        return template_pieces(value)

    def _grammar_check(self, text: str, node: ast.expr, *, literal: bool) -> None:
        parse = _grammar()
        if parse is None:
            return
        try:
            parse(text)
        except ReturnStringError as exc:
            line, column = self._column(node)
            if literal and exc.line == 1:
                segment = ast.get_source_segment(self.source, node) or ""
                body = re.sub(r"^[rRuU]*('''|\"\"\"|'|\")", "", segment)
                prefix = len(segment) - len(body)
                if node.lineno == node.end_lineno and body.startswith(text):
                    column += prefix + exc.column - 1
            where = f" (at column {exc.column} of the string)" if not literal else ""
            message = (
                f"this return string is not valid: {exc.message}{where}; see docs/kernels.md "
                "for the return-string language, or build it with pyrecks.kernel.call()"
            )
            finding = Finding(
                "PK601" if literal else "PK604",
                "error" if literal else "warning",
                message,
                line,
                column,
            )
            self.findings.append(finding)
        except Exception:  # a grammar bug must never hide the kernel's own findings
            return

    # Entry function (PK510/PK511) -------------------------------------------------------

    def _check_entry(self, tree: ast.Module) -> None:
        name = self.name
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == name:
                self.entry = stmt
            elif isinstance(stmt, ast.AsyncFunctionDef) and stmt.name == name:
                return  # PK512 already says it
            elif isinstance(stmt, ast.ClassDef) and stmt.name == name:
                self.error(
                    "PK511",
                    stmt,
                    f"'{name}' is a class; the entry point must be a function: def {name}(...):",
                )
                return
            elif isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in stmt.targets
            ):
                self.error(
                    "PK511",
                    stmt,
                    f"'{name}' is assigned, not defined; write the entry point as "
                    f"def {name}(...): so its signature can be stored and checked",
                )
                return
        if self.entry is None:
            found = sorted(
                s.name for s in tree.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
            )
            seen = f"found: {', '.join(found)}" if found else "the kernel defines no function"
            self.findings.append(
                Finding(
                    "PK510",
                    "error",
                    f"no entry function 'def {name}(...)' ({seen}); a kernel's entry function "
                    "must be named like the kernel (its file stem or Redis key)",
                    1,
                    1,
                )
            )
            return
        entry = self.entry
        if entry.decorator_list:
            self.error(
                "PK511",
                entry.decorator_list[0],
                f"the entry function {name}() may not be decorated: the VM calls it directly "
                "and stores its own signature; move the decorated logic into a helper",
            )
        for sub in _walk_no_nested(entry.body) if self._has_yield else ():
            if isinstance(sub, ast.Yield | ast.YieldFrom):
                self.error(
                    "PK511",
                    sub,
                    f"the entry function {name}() is a generator (it uses yield); it must "
                    "return one return string — collect the values in a list instead",
                )
                break


_GRAMMAR: list[Any] = []


def _grammar() -> Any:
    """The return-string parser, if the grammar package is installed (imported lazily, once)."""
    if not _GRAMMAR:
        try:
            from pyrecks.compiler.parser import parse
        except ImportError:
            return None
        _GRAMMAR.append(parse)
    return _GRAMMAR[0]
