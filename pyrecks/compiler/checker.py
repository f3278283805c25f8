"""The kernel checker: one AST pass that enforces the no-side-effects rules.

A kernel is a small Python 3 module: imports, an entry function named like the kernel, and
helpers.  Before a VM trusts one with data, this pass proves statically what can be proved:
no I/O, no imports outside the policy's allow-list, no reflection escape hatches (dunders,
frames, ``getattr`` with computed names, module attributes that are other modules), no
mutation of module-level state, no code at module level beyond constants, an entry function
that exists, and no ``except:`` that could swallow the VM's timeout.  The VM enforces the same
:class:`~pyrecks.compiler.policy.Policy` again at run time: a static pass alone can be fooled
by aliasing (``c = CACHE; c.append(x)``), a run-time guard alone reports too late.

Every rule has a stable code; the families are

* ``PK1xx`` imports, ``PK2xx`` builtins and names, ``PK3xx`` attributes and reflection,
* ``PK4xx`` global state and nondeterminism, ``PK5xx`` structure and the entry function,
* ``PK6xx`` return strings, ``PK9xx`` syntax errors and Python 2.

Each :class:`Finding` carries the 1-based line and column and a message that says what to
write instead.  ``docs/kernels.md`` lists every code with an example and the fix.

The visitor has one ``visit_X`` per node kind and each method holds one family of rules, in
the shape of CPython's ``ast.NodeVisitor`` examples: adding a rule means adding a few lines in
the method of the node it is about.
"""

from __future__ import annotations

import ast
import importlib
import re
import string
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pyrecks.compiler.policy import Policy
from pyrecks.errors import LintError, ReturnStringError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One rule violation: ``path:line:column: CODE message``."""

    code: str
    severity: Severity
    message: str
    line: int
    column: int

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_error(self, text: str = "") -> LintError:
        """The finding as an exception; ``text`` (the kernel source) enables caret drawing."""
        return LintError(self.code, self.message, text=text, line=self.line, column=self.column)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "line": self.line,
            "column": self.column,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            code=str(data["code"]),
            severity="error" if data.get("severity") == "error" else "warning",
            message=str(data["message"]),
            line=int(data["line"]),
            column=int(data["column"]),
        )

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.code} {self.message}"


@dataclass
class Analysis:
    """Everything one checker pass learned: findings plus what the compiler reuses."""

    findings: list[Finding]
    tree: ast.Module | None = None
    entry: ast.FunctionDef | None = None
    timeout: float | None = None
    retries: int | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]


# --------------------------------------------------------------------------------------
# Rule data.  Kept as plain tables so docs/kernels.md and the tests can be checked against
# them and so a reader sees every decision in one place.
# --------------------------------------------------------------------------------------

#: Dunder attributes that only name things or call ordinary protocol methods; every other
#: ``__x__`` attribute (``__class__``, ``__globals__``, ``__dict__``, ``__subclasses__`` …)
#: leads to interpreter internals and is refused (PK301).
SAFE_DUNDER_ATTRIBUTES = frozenset({"__init__", "__name__", "__qualname__", "__doc__"})

#: Dunder names a kernel may read: ``if __name__ == "__main__":`` guards and ``__debug__``.
SAFE_DUNDER_NAMES = frozenset({"__name__", "__debug__", "__doc__"})

#: Frame, code, generator, coroutine and traceback internals, plus their Python 2 spellings.
#: Explicit names rather than prefixes, so a user's ``self.f_value`` stays legal.
FRAME_ATTRIBUTES = frozenset(
    {
        "f_back", "f_builtins", "f_code", "f_globals", "f_lasti", "f_lineno", "f_locals",
        "f_trace", "f_trace_lines", "f_trace_opcodes",
        "gi_code", "gi_frame", "gi_running", "gi_suspended", "gi_yieldfrom",
        "cr_await", "cr_code", "cr_frame", "cr_origin", "cr_running", "cr_suspended",
        "ag_await", "ag_code", "ag_frame", "ag_running",
        "tb_frame", "tb_lasti", "tb_lineno", "tb_next",
        "co_code", "co_consts", "co_names", "co_varnames", "co_filename", "co_name",
        "co_firstlineno", "co_lnotab", "co_linetable", "co_freevars", "co_cellvars",
        "co_flags", "co_qualname", "co_exceptiontable", "co_positions", "co_lines",
        "func_globals", "func_code", "func_closure", "func_defaults", "func_dict",
        "im_func", "im_self", "im_class", "mro", "_getframe", "_current_frames",
    }
)  # fmt: skip

#: Methods that mutate the container they are called on (lists, dicts, sets, deques).
MUTATING_METHODS = frozenset(
    {
        "add", "append", "appendleft", "clear", "difference_update", "discard", "extend",
        "extendleft", "insert", "intersection_update", "pop", "popitem", "popleft", "remove",
        "reverse", "rotate", "setdefault", "sort", "symmetric_difference_update", "update",
    }
)  # fmt: skip

#: Functions of allowed modules that mutate the list passed as their first argument.
MUTATING_FUNCTIONS = frozenset(
    {
        "heapq.heappush", "heapq.heappop", "heapq.heapify", "heapq.heapreplace",
        "heapq.heappushpop", "bisect.insort", "bisect.insort_left", "bisect.insort_right",
        "random.shuffle",
    }
)  # fmt: skip

#: Functions that change state shared by every kernel running in the same VM process.
MODULE_STATE_FUNCTIONS = {
    "random.seed": "create your own generator: rng = random.Random(seed); rng.random()",
    "random.setstate": "create your own generator: rng = random.Random(seed)",
    "decimal.setcontext": "use 'with decimal.localcontext() as ctx: ctx.prec = …'",
    "time.tzset": "convert times explicitly with datetime and a fixed timezone",
}

#: Calls whose result differs from run to run (a re-run step may then differ: warning).
NONDETERMINISTIC = frozenset(
    {
        "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
        "time.perf_counter", "time.perf_counter_ns", "time.process_time", "time.ctime",
        "time.localtime", "time.gmtime", "time.asctime", "time.strftime",
        "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today",
        "datetime.date.today", "uuid.uuid1", "uuid.uuid4", "random.SystemRandom",
    }
)  # fmt: skip

#: Names of module-level ``random`` functions that share the process-wide hidden generator.
RANDOM_SAFE = frozenset({"Random"})

CONTROL_EXCEPTIONS = frozenset(
    {"BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit"}
)

#: How to replace each forbidden builtin.
BUILTIN_FIXES = {
    "open": "kernels do no I/O: pass the data in as an argument or an \"@key\" input, and "
    "write results with a SET effect in the return string",
    "eval": "kernels cannot run code from strings: write the code in the kernel, or parse "
    "data with json.loads",
    "exec": "kernels cannot run code from strings: write the code in the kernel",
    "compile": "kernels cannot compile code; for regular expressions use re.compile",
    "__import__": "write an import statement for a module on the allow-list",
    "globals": "pass values explicitly as arguments or build your own dict",
    "locals": "pass values explicitly or build your own dict",
    "vars": "read the attributes you need by name, or use dataclasses.asdict",
    "input": "kernels are not interactive: pass the value as an argument",
    "breakpoint": "debug the kernel with pytest outside Redis (see docs/kernels.md)",
    "help": "read the docs outside the kernel",
    "memoryview": "use bytes or bytearray",
    "exit": "return '' to end the chain, or raise an exception to fail it",
    "quit": "return '' to end the chain, or raise an exception to fail it",
}

#: Python 2 builtins that no longer exist, with their Python 3 replacement.
PY2_NAMES = {
    "xrange": "range(...)",
    "unicode": "str(...)",
    "basestring": "str (isinstance(x, str))",
    "long": "int(...)",
    "unichr": "chr(...)",
    "raw_input": "an argument (kernels are not interactive)",
    "execfile": "an import of an allowed module (kernels cannot run files)",
    "reduce": "functools.reduce (from functools import reduce)",
    "cmp": "a key function, or (a > b) - (a < b)",
    "apply": "f(*args, **kwargs)",
    "file": "an argument or an \"@key\" input (kernels do no I/O)",
    "buffer": "bytes(...)",
    "intern": "a plain str",
}

PY2_METHODS = {
    "iteritems": "items()",
    "iterkeys": "keys()",
    "itervalues": "values()",
    "has_key": "'key in d'",
    "viewitems": "items()",
    "viewkeys": "keys()",
    "viewvalues": "values()",
}

CONFIG_NAMES = ("PYRECKS_TIMEOUT", "PYRECKS_RETRIES")

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
# Python 2 and syntax errors (PK9xx)
# --------------------------------------------------------------------------------------

_PY2_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^\s*print\s*>>"),
        "Python 2 'print >>f, x' statement: kernels write output with print(x) (it goes to "
        "the chain log) and may not write to files",
    ),
    (
        re.compile(r"^\s*print(?:\s+(?![\s=(])|\s*$)"),
        "Python 2 print statement: in Python 3 print is a function, write {fix}",
    ),
    (
        re.compile(r"\bexcept\s+([^,:]+?)\s*,\s*([A-Za-z_]\w*)\s*:"),
        "Python 2 'except E, e:' clause: write 'except {g1} as {g2}:'",
    ),
    (re.compile(r"`"), "Python 2 backticks: write repr(x) instead of `x`"),
    (
        re.compile(r"^\s*exec\s+[\"'\w(]"),
        "Python 2 exec statement: exec is a function in Python 3, and kernels may not run "
        "code from strings at all; write the code in the kernel",
    ),
    (
        re.compile(r"(?<![\w.])0([0-7]+)\b"),
        "Python 2 octal literal: write 0o{g1}",
    ),
    (
        re.compile(r"(?<![\w])[uU][rR](?=[\"'])"),
        "Python 2 ur'' string prefix: write r'' (every str is unicode in Python 3)",
    ),
    (re.compile(r"<>"), "Python 2 '<>' operator: write '!='"),
    (
        re.compile(r"^\s*raise\s+([\w.]+)\s*,\s*(.+?)\s*$"),
        "Python 2 'raise E, msg' statement: write 'raise {g1}({g2})'",
    ),
    (re.compile(r"\b(\d+)[lL]\b"), "Python 2 long literal: write {g1} (int has no size limit)"),
]


def syntax_finding(source: str, exc: SyntaxError) -> Finding:
    """One PK901 finding naming the Python 3 form for Python 2 code, else PK902."""
    lineno = exc.lineno or 1
    lines = source.splitlines()
    text = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    for pattern, template in _PY2_PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        groups = {f"g{i}": g for i, g in enumerate(match.groups(), start=1)}
        fix = ""
        if "{fix}" in template:
            rest = text[match.end() :].strip() if match.end() < len(text) else ""
            if rest.endswith(","):
                fix = f"print({rest[:-1].rstrip()}, end=' ')"
            else:
                fix = f"print({rest})"
        message = template.format(fix=fix, **groups)
        return Finding("PK901", "error", message, lineno, match.start() + 1)
    message = exc.msg
    if "Missing parentheses in call to 'print'" in message:
        message = "Python 2 print statement: in Python 3 print is a function, write print(...)"
        return Finding("PK901", "error", message, lineno, exc.offset or 1)
    return Finding(
        "PK902",
        "error",
        f"syntax error: {message}; kernels are Python 3 modules (check the line and the one "
        "before it)",
        lineno,
        exc.offset or 1,
    )


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


# --------------------------------------------------------------------------------------
# Fast tree walking.  ``ast.iter_child_nodes`` calls ``getattr`` on every field of every node,
# including identifiers, constants and the ``Load``/``Store``/operator singletons, through two
# generators; on a 50-line kernel that was most of the checker's time.  The tables below name,
# per node class, only the fields that can hold child nodes worth visiting, read once from the
# class's ASDL signature (``Name(identifier id, expr_context ctx)``).  Walks over these fields
# meet the same nodes in the same order as ``ast.walk``/``ast.iter_child_nodes``, minus the
# context and operator singletons, which no rule looks at (``_visitor_table`` refuses a
# ``visit_X`` method for them, so a future rule cannot silently miss its nodes).
# --------------------------------------------------------------------------------------

#: ASDL field types that never hold a node a rule visits.
_LEAF_KINDS = frozenset(
    {"identifier", "string", "int", "constant", "expr_context", "operator", "boolop",
     "unaryop", "cmpop"}
)  # fmt: skip

#: Node classes whose instances the fast walks skip (see ``_LEAF_KINDS``).
_SKIPPED_NODE_CLASSES: tuple[type, ...] = (
    ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop
)


def _node_fields(cls: type) -> tuple[str, ...]:
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
    return tuple(n for n in names if kinds[n] not in _LEAF_KINDS)


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
        fields = self[cls] = _node_fields(cls)
        return fields


_CHILD_FIELDS = _FieldTable((cls, _node_fields(cls)) for cls in _all_node_classes())


def _children(node: ast.AST) -> list[ast.AST]:
    """Child nodes of ``node`` in ``ast.iter_child_nodes`` order (without the singletons)."""
    out: list[ast.AST] = []
    for name in _CHILD_FIELDS[type(node)]:
        value = getattr(node, name, None)
        if type(value) is list:
            out.extend(item for item in value if isinstance(item, ast.AST))
        elif isinstance(value, ast.AST):
            out.append(value)
    return out


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` (breadth first, same order) over the fast child table."""
    todo = deque([node])
    while todo:
        node = todo.popleft()
        todo.extend(_children(node))
        yield node


def _bound_names(body: Iterable[ast.AST], imports: set[str] | None = None) -> set[str]:
    """Names bound directly in a scope (not inside nested functions, classes or lambdas).

    A comprehension's loop variables belong to the comprehension (Python 3), not the scope;
    a ``:=`` inside one does bind in the scope.

    ``imports``, if given, receives the subset bound by import statements.  (The checker
    computes these sets for every scope in one pass, :meth:`KernelChecker._prepass`; this
    function is the definition that pass follows.)
    """
    names: set[str] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.comprehension):  # its target is the comprehension's own
            stack.append(node.iter)
            stack.extend(node.ifs)
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            if node.name != "*":
                names.add(node.asname or node.name.split(".")[0])
                if imports is not None:
                    imports.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        stack.extend(_children(node))
    return names


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


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _is_internal_attribute(name: str) -> bool:
    """Dunder (outside the safe few) or frame/code/generator internals."""
    return (_is_dunder(name) and name not in SAFE_DUNDER_ATTRIBUTES) or name in FRAME_ATTRIBUTES


def _walk_no_nested(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Walk statements without entering nested function, class or lambda bodies."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        stack.extend(_children(node))


_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])"
)


def _quote_state(text: str, state: str | None) -> str | None:
    """Track whether we are inside a quoted string after reading ``text``."""
    escaped = False
    for ch in text:
        if state is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == state:
                state = None
        elif ch in "\"'":
            state = ch
    return state


def _sample(state: str | None, following: str, numeric: bool) -> str:
    """A sample value for a placeholder, valid in its context of the template."""
    if state is not None:
        return "1" if numeric else "x"
    if following.lstrip().startswith("("):
        return "f"  # the placeholder names the next kernel
    return "1" if numeric else '"x"'


def _fill(pieces: list[tuple[str, bool | None]]) -> str:
    """Join literal pieces and placeholders (``(text, None)`` literal, ``(_, numeric)``)."""
    out: list[str] = []
    state: str | None = None
    for index, (text, numeric) in enumerate(pieces):
        if numeric is None:
            out.append(text)
            state = _quote_state(text, state)
        else:
            following = next((t for t, n in pieces[index + 1 :] if n is None), "")
            out.append(_sample(state, following, numeric))
    return "".join(out)


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
        self.module_functions: set[str] = set()
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
        self.module_functions = {
            s.name for s in tree.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.visit(tree)
        self._check_entry(tree)

    def _prepass(self, tree: ast.Module) -> set[str]:
        """One breadth-first walk (``ast.walk`` order) that learns what the rules look up.

        * ``aliases``: every import anywhere in the kernel, later imports overriding earlier
          ones in walk order, and ``module_names``, those of them that bind a module (PK306:
          ``import a.b`` binds ``a``, ``import a.b as c`` binds ``c``, ``from a import b``
          counts when ``a.b`` is a module);
        * for every function, lambda and class, the names bound in its body and which of
          them are imports — :func:`_bound_names` of that body, for all scopes at once;
        * whether the kernel contains ``yield`` at all (the generator rules walk again only
          then).

        Returns the names bound at module level (``_bound_names(tree.body)``).
        """
        aliases = self.aliases
        modules = self.module_names
        scope_names = self._scope_names
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
        while todo:
            node, names, imports = pop()
            cls = type(node)
            if cls is ast.Import:
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
                            if full in self.policy.allowed_modules or isinstance(
                                self._value_of(full), types.ModuleType
                            ):  # ``from collections import abc`` binds a module
                                modules[alias.asname or alias.name] = full
            elif cls is ast.Yield or cls is ast.YieldFrom:
                self._has_yield = True
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
        return module_names

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
        for index, stmt in enumerate(node.body):
            self._module_statement(stmt, index)
            self.visit(stmt)

    def _module_statement(self, stmt: ast.stmt, index: int) -> None:
        if isinstance(
            stmt,
            ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            | ast.Pass,
        ):
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # docstring or a string used as a comment
        if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            self._module_assignment(stmt)
            return
        if isinstance(stmt, ast.If) and self._is_main_guard(stmt.test):
            return
        kind = type(stmt).__name__.lower()
        what = {
            "expr": "an expression statement (e.g. a call)",
            "for": "a for loop",
            "while": "a while loop",
            "with": "a with block",
            "try": "a try block",
            "if": "an if block",
        }.get(kind, f"a '{kind}' statement")
        self.error(
            "PK501",
            stmt,
            f"{what} at module level runs when the kernel is loaded, outside the chain: "
            "kernels may only hold imports, functions, classes, a docstring and constant "
            f"assignments at module level; move it into {self.name}()",
        )

    @staticmethod
    def _is_main_guard(test: ast.expr) -> bool:
        return (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__"
        )

    def _module_assignment(self, stmt: ast.Assign | ast.AnnAssign | ast.AugAssign) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        value = stmt.value
        for target in targets:
            for leaf in self._target_leaves(target):
                if isinstance(leaf, ast.Name):
                    if leaf.id.startswith("PYRECKS_"):
                        self._config(leaf.id, value, stmt)
                    continue
                root = _root(leaf)
                if isinstance(root, ast.Name) and root.id in self.aliases:
                    continue  # reported as PK404 by the mutation rule
                self.error(
                    "PK501",
                    leaf,
                    "module-level assignments may only bind plain names (NAME = value); "
                    "assigning to an attribute or item changes state shared by every run — "
                    f"build the value inside {self.name}() instead",
                )
        if value is None:
            return
        if self._is_mutable_container(value):
            self.warn(
                "PK403",
                value,
                "module-level mutable container: every run of the kernel in a VM shares it, "
                "so it must never be changed; use a tuple, frozenset or a constant instead, or "
                "build it inside the function",
            )
        for sub in _walk(value):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Name)
                and sub.func.id in self.module_functions
            ):
                self.error(
                    "PK502",
                    sub,
                    f"calling the kernel's own function {sub.func.id}() at module level runs "
                    "code when the kernel is loaded, outside its time limit; compute the value "
                    f"inside {self.name}() or write the constant",
                )

    @staticmethod
    def _target_leaves(target: ast.expr) -> Iterator[ast.expr]:
        if isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                yield from KernelChecker._target_leaves(elt)
        elif isinstance(target, ast.Starred):
            yield from KernelChecker._target_leaves(target.value)
        else:
            yield target

    def _is_mutable_container(self, value: ast.expr) -> bool:
        if isinstance(
            value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp
        ):
            return True
        if isinstance(value, ast.Call):
            func = value.func
            if isinstance(func, ast.Name) and func.id in ("list", "dict", "set", "bytearray"):
                return self._is_builtin(func.id)
            dotted = self._dotted(func)
            return dotted in (
                "collections.defaultdict",
                "collections.OrderedDict",
                "collections.Counter",
                "collections.deque",
                "collections.ChainMap",
            )
        return False

    def _config(self, name: str, value: ast.expr | None, stmt: ast.stmt) -> None:
        """PK503: PYRECKS_TIMEOUT / PYRECKS_RETRIES must be literal numbers in range."""
        if name not in CONFIG_NAMES:
            self.warn(
                "PK503",
                stmt,
                f"unknown kernel setting {name}; the known ones are "
                + ", ".join(CONFIG_NAMES),
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
            "or reach interpreter state; pass data in as arguments or \"@key\" inputs and "
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
        return True

    # PK2xx: names and builtins ---------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name not in self._watched_names and not name.startswith("__"):
            return  # fast path: none of the rules below can apply to this name
        if isinstance(node.ctx, ast.Load):
            if name in self.policy.forbidden_builtins and self._is_builtin(name):
                fix = BUILTIN_FIXES.get(name, "it is not available in kernels")
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
        if _is_dunder(name) and name not in SAFE_DUNDER_NAMES:
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
        if (
            isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and attr in ("format", "format_map")
        ):
            self._check_format_template(node.value.value, node.value)
        self.generic_visit(node)

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
        """PK304: a literal str.format template whose fields read dangerous attributes."""
        for field_name in self._format_fields(template):
            parts = re.split(r"[.\[]", field_name)[1:]
            for part in parts:
                part = part.rstrip("]")
                if _is_internal_attribute(part):
                    self.error(
                        "PK304",
                        node,
                        f"format field '{{{field_name}}}' reads the attribute '{part}', which "
                        "reaches interpreter internals; format plain values: "
                        "'{}'.format(value)",
                    )
                    return

    @staticmethod
    def _format_fields(template: str) -> Iterator[str]:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError:
            return
        for _literal, field_name, spec, _conv in parsed:
            if field_name:
                yield field_name
            if spec:
                yield from KernelChecker._format_fields(spec)

    # Calls: PK2xx builtins with arguments, PK4xx state and nondeterminism ---------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        self._direct_calls.add(id(func))
        if isinstance(func, ast.Name) and self._is_builtin(func.id):
            self._builtin_call(func.id, node)
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

    def _module_call(self, dotted: str, node: ast.Call) -> None:
        if dotted in MODULE_STATE_FUNCTIONS:
            self.error(
                "PK404",
                node,
                f"{dotted}() changes state shared by every kernel in the VM process; "
                + MODULE_STATE_FUNCTIONS[dotted],
            )
        elif dotted in ("operator.attrgetter", "operator.methodcaller"):
            names = node.args if dotted == "operator.attrgetter" else node.args[:1]
            for arg in names:
                self._literal_attribute(dotted, arg, node)
        elif dotted in MUTATING_FUNCTIONS and node.args:
            self._mutation(node.args[0], node, via=f"{dotted}()")
        if self.policy.warn_nondeterminism:
            module, _, attr = dotted.rpartition(".")
            random_call = module == "random" and attr not in RANDOM_SAFE and attr != "shuffle"
            if random_call and attr == "Random" and node.args:
                random_call = False
            if dotted in NONDETERMINISTIC or random_call or (
                dotted == "random.Random" and not node.args
            ):
                self.warn(
                    "PK405",
                    node,
                    f"{dotted}() is nondeterministic: a step re-run after a crash may compute "
                    "something else; pass times and seeds in as arguments (e.g. "
                    "random.Random(seed)) to keep steps repeatable",
                )

    def _method_call(self, func: ast.Attribute, node: ast.Call) -> None:
        if func.attr in MUTATING_METHODS and not self._is_module(func.value):
            # (``operator.add(a, b)`` calls a module function; it mutates nothing)
            self._mutation(func.value, node, via=f".{func.attr}()")
        if func.attr in ("format", "format_map"):
            receiver = func.value
            template: ast.expr | None = receiver
            if isinstance(receiver, ast.Name) and receiver.id == "str" and self._is_builtin("str"):
                template = node.args[0] if node.args else None
            if isinstance(template, ast.Constant) and isinstance(template.value, str):
                if template is not receiver:
                    self._check_format_template(template.value, template)
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
        bound, imports = self._scope_names[node]  # _bound_names(body), from the prepass
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
            elif (
                isinstance(stmt, ast.Assign | ast.AnnAssign)
                and stmt.value is not None
                and self._is_mutable_container(stmt.value)
            ):
                self.warn(
                    "PK403",
                    stmt.value,
                    "mutable class attribute: every instance and every run shares it; "
                    "create it in __init__ or use a tuple/frozenset",
                )
        self.state.in_class += 1
        # _bound_names(body)
        self.scopes.append(_Scope(set(self._scope_names[node][0]), is_class=True))
        try:
            self.generic_visit(node)
        finally:
            self.scopes.pop()
            self.state.in_class -= 1

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

    @staticmethod
    def _caught_names(node: ast.expr | None) -> set[str]:
        if node is None:
            return set()
        elts = node.elts if isinstance(node, ast.Tuple) else [node]
        out = set()
        for elt in elts:
            if isinstance(elt, ast.Name):
                out.add(elt.id)
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
            if isinstance(sub, ast.Return):
                self.error(
                    "PK521",
                    sub,
                    "'return' inside 'finally' swallows every exception, including the VM's "
                    "timeout signal; return after the try statement instead",
                )
        for stmt in node.finalbody:
            self.visit(stmt)

    visit_TryStar = visit_Try  # type: ignore[assignment]

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
        """Literal pieces and placeholders of a %-format, f-string or str.format template."""
        if (
            isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Mod)
            and isinstance(value.left, ast.Constant)
            and isinstance(value.left.value, str)
        ):
            template = value.left.value
            pieces: list[tuple[str, bool | None]] = []
            pos = 0
            for match in _PERCENT_SPEC.finditer(template):
                pieces.append((template[pos : match.start()], None))
                if match.group(1) == "%":
                    pieces.append(("%", None))
                else:
                    pieces.append(("", match.group(1) not in "rsac"))
                pos = match.end()
            pieces.append((template[pos:], None))
            return pieces
        if isinstance(value, ast.JoinedStr):
            pieces = []
            for part in value.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    pieces.append((part.value, None))
                else:
                    spec = getattr(part, "format_spec", None)
                    numeric = spec is not None and isinstance(spec, ast.JoinedStr) and any(
                        isinstance(v, ast.Constant) and str(v.value)[-1:] in "dfeg%"
                        for v in spec.values
                    )
                    pieces.append(("", numeric))
            return pieces
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "format"
            and isinstance(value.func.value, ast.Constant)
            and isinstance(value.func.value.value, str)
        ):
            try:
                parsed = list(string.Formatter().parse(value.func.value.value))
            except ValueError:
                return None
            pieces = []
            for literal, field_name, spec, _conv in parsed:
                pieces.append((literal, None))
                if field_name is not None:
                    pieces.append(("", bool(spec) and (spec or "")[-1:] in "dfeg%"))
            return pieces
        return None

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
