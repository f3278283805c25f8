"""The guard rewriter: compile into every kernel the checks a static pass cannot prove.

Before a kernel is compiled, its AST is rewritten (as RestrictedPython does) so that what
depends on run-time values goes through a guard of :mod:`pyrecks.vm.guards`, which judges the
object's real type against the rule book (:mod:`pyrecks.compiler.rulebook`):

==========================================  ================================================
kernel code                                 compiled as
==========================================  ================================================
``obj._x``, ``obj.__init__``, ``s.format``  ``_pyrecks_getattr(obj, "_x")``
``obj._m(...)``, ``Mapping.register(...)``  ``_pyrecks_method(obj, "_m")(...)``
``f(...)`` with ``f`` not a name the         ``_pyrecks_call(f)(...)``
kernel defines or imports
``obj.x = v``, ``del obj.x``, ``obj.x += 1``  ``_pyrecks_write(obj, "x").x = v``
``except T:`` / ``except:``                 ``except _pyrecks_catch(T):`` / ``_pyrecks_catch()``
``with cm as x:``                           ``with _pyrecks_with(cm) as x:``
``finally: F``                              ``finally: try: F`` / ``except BaseException as
                                            e: _pyrecks_finally(e); raise``
end of the module body                      ``_pyrecks_module_done()``
==========================================  ================================================

A public attribute name that is neither a frame internal nor type-dependent (``.lower``,
``.total``, ``json.dumps``) gets the same verdict on every object, so its read stays a plain
attribute read: the verdict is compiled in, and the hot path costs nothing.

What can be decided from the text alone is refused here, with :class:`SandboxViolation`:
names starting with ``_pyrecks_`` and dunder names other than ``__name__``/``__doc__``/
``__debug__``; ``global``/``nonlocal``; class keywords (metaclasses) and class hooks
(``__del__``, ``__init_subclass__``, …); ``match`` class patterns that read refused attributes
(``case object(__class__=t)`` — the interpreter reads those attributes itself, with no node a
guard could wrap); ``return``/``break``/``continue`` that leave a ``finally:`` clause,
``yield`` inside ``try ... finally:`` or ``with`` (the cleanup would run at finalization,
where exceptions are swallowed) and ``async with``; and load-time code that is not pure
(:mod:`pyrecks.compiler.purity`).

The rewrite runs in :func:`pyrecks.compiler.compiler.compile_kernel` after the checker and
in :func:`compile_guarded` without it, so the stored bytecode always carries the guards.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from typing import Any

from pyrecks.compiler import purity, rulebook
from pyrecks.compiler.astwalk import CHILD_FIELDS
from pyrecks.errors import PyrecksError

G = rulebook.GUARDS


class SandboxViolation(PyrecksError):
    """A kernel does something the rule book forbids: refused by the rewriter or a guard."""


def _refuse(node: ast.AST | None, message: str) -> Any:
    line = getattr(node, "lineno", None)
    where = f"line {line}: " if line else ""
    raise SandboxViolation(where + message)


def _mangle(name: str, classes: tuple[str, ...]) -> str:
    """Python's private-name mangling (``self.__x`` in class ``C`` is ``self._C__x``).

    The interpreter mangles ``Attribute`` nodes itself; a guard receives the name as a string
    constant, so the rewriter mangles it the same way.
    """
    if not classes or not name.startswith("__") or name.endswith("__"):
        return name
    owner = classes[-1].lstrip("_")
    return f"_{owner}{name}" if owner else name


def _reserved(node: ast.AST, name: str) -> None:
    if name.startswith(rulebook.GUARD_PREFIX):
        _refuse(node, f"names starting with {rulebook.GUARD_PREFIX!r} are reserved")


def _guard(role: str, at: ast.AST, *args: ast.expr) -> ast.Call:
    """``_pyrecks_<role>(*args)`` at ``at``'s position (tracebacks keep the kernel's lines)."""
    func = ast.Name(G[role], _LOAD)
    out = ast.Call(func, list(args), [])
    line, col = at.lineno, at.col_offset  # type: ignore[attr-defined]
    end_line, end_col = at.end_lineno, at.end_col_offset  # type: ignore[attr-defined]
    func.lineno = out.lineno = line
    func.col_offset = out.col_offset = col
    func.end_lineno = out.end_lineno = end_line
    func.end_col_offset = out.end_col_offset = end_col
    return out


def _text(value: str, at: ast.AST) -> ast.Constant:
    out = ast.Constant(value)
    out.lineno, out.col_offset = at.lineno, at.col_offset  # type: ignore[attr-defined]
    out.end_lineno, out.end_col_offset = at.end_lineno, at.end_col_offset  # type: ignore[attr-defined]
    return out


_LOAD = ast.Load()
_PLAIN_CACHE: dict[str, bool] = {}


def _plain(name: str) -> bool:
    known = _PLAIN_CACHE.get(name)
    if known is None:
        known = _PLAIN_CACHE[name] = rulebook.is_plain_attribute(name)
    return known


class _Walk:
    """One pass over the tree: inserts the guards and counts every name binding.

    Iterative (a stack, no method dispatch per node) because it runs on every kernel compiled
    and must stay a small share of ``compile``'s own time.  Calls of plain names are decided
    at the end, once every binding is counted (:meth:`finish`).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.name_calls: list[ast.Call] = []
        self.kernel_classes: set[str] = set()
        #: Enclosing class names, innermost last (for private-name mangling).
        self.classes: tuple[str, ...] = ()

    def bind(self, name: str) -> None:
        counts = self.counts
        counts[name] = counts.get(name, 0) + 1

    def attribute(self, node: ast.Attribute, push: Any) -> ast.expr:
        """The guarded form of an attribute node that is not a call's callee (chains too)."""
        attr = node.attr
        if self.classes:
            attr = _mangle(attr, self.classes)
        value = self.expr_child(node.value, push)
        if type(node.ctx) is ast.Load:
            if _plain(attr):
                node.value = value
                return node
            return _guard("getattr", node, value, _text(attr, node))
        if rulebook.refused_by_name(attr) or rulebook.is_dunder(attr):
            _refuse(node, f"kernels may not set the attribute '.{attr}'")
        node.value = _guard("write", node, value, _text(attr, node))
        return node

    def run(self, roots: list[ast.AST]) -> None:
        """Walk ``roots`` and everything below them (class bodies recurse, for mangling)."""
        stack = list(reversed(roots))
        push = stack.append
        pop = stack.pop
        fields_of = CHILD_FIELDS
        Attribute, Name, Constant, Load = ast.Attribute, ast.Name, ast.Constant, ast.Load
        special = _SPECIAL
        counts = self.counts
        while stack:
            node = pop()
            cls = type(node)
            handler = special.get(cls)
            if handler is not None and handler(self, node, push):
                continue
            for fname in fields_of[cls]:
                value = getattr(node, fname, None)
                if type(value) is list:
                    for index in range(len(value)):
                        item = value[index]
                        kind = type(item)
                        if kind is Name:
                            ident = item.id
                            if ident[0] == "_":
                                self.name(item, ident)
                            if type(item.ctx) is not Load:
                                counts[ident] = counts.get(ident, 0) + 1
                        elif kind is Attribute:
                            value[index] = self.attribute(item, push)
                        elif kind is not Constant and item is not None:
                            push(item)
                elif value is not None:
                    kind = type(value)
                    if kind is Name:
                        ident = value.id
                        if ident[0] == "_":
                            self.name(value, ident)
                        if type(value.ctx) is not Load:
                            counts[ident] = counts.get(ident, 0) + 1
                    elif kind is Attribute:
                        setattr(node, fname, self.attribute(value, push))
                    elif kind is not Constant:
                        push(value)

    # -- nodes with rules of their own (return True when their children were pushed) --------

    def name(self, node: ast.Name, ident: str) -> None:
        _reserved(node, ident)
        if rulebook.is_dunder(ident) and not (
            type(node.ctx) is ast.Load and ident in rulebook.SAFE_DUNDER_NAMES
        ):
            _refuse(node, f"the name {ident!r} reaches interpreter internals")

    def expr_child(self, value: ast.expr, push: Any) -> ast.expr:
        """Rewrite a child expression in place of its parent's field (attributes are replaced
        from their parent; everything else is walked later)."""
        if type(value) is ast.Attribute:
            return self.attribute(value, push)
        if type(value) is ast.Name:
            ident = value.id
            if ident[0] == "_":
                self.name(value, ident)
            if type(value.ctx) is not ast.Load:
                self.bind(ident)
        elif type(value) is not ast.Constant:
            push(value)
        return value

    def call(self, node: ast.Call, push: Any) -> bool:
        func = node.func
        args = node.args
        for index in range(len(args)):
            arg = args[index]
            kind = type(arg)
            if kind is ast.Constant or (kind is ast.Name and arg.id[0] != "_"):  # type: ignore[attr-defined]
                continue  # the common case: nothing to rewrite or refuse
            args[index] = self.expr_child(arg, push)
        for keyword in node.keywords:
            keyword.value = self.expr_child(keyword.value, push)
        if type(func) is ast.Name:
            if func.id[0] == "_":
                self.name(func, func.id)
            self.name_calls.append(node)
            return True
        if type(func) is ast.Attribute and type(func.ctx) is ast.Load:
            func.value = self.expr_child(func.value, push)
            attr = _mangle(func.attr, self.classes) if self.classes else func.attr
            if not _plain(attr):
                node.func = _guard("method", func, func.value, _text(attr, func))
            # A plain name: the rule book allows it on every object, and what a kernel can
            # reach holds no refused callable (the guards never hand one out), so the call
            # of ``obj.m`` is left as it is: method calls are the hot path of every kernel.
            return True
        node.func = _guard("call", func, self.expr_child(func, push))
        return True

    def function(self, node: ast.FunctionDef, push: Any) -> bool:
        _reserved(node, node.name)
        self.bind(node.name)
        return False

    def arg(self, node: ast.arg, push: Any) -> bool:
        _reserved(node, node.arg)
        self.bind(node.arg)
        return False

    def alias(self, node: ast.alias, push: Any) -> bool:
        bound = node.asname or node.name.split(".")[0]
        _reserved(node, bound)
        if rulebook.is_dunder(bound) or node.name.split(".")[-1].startswith("_"):
            _refuse(node, f"importing {node.name!r}: private and dunder names are refused")
        self.bind(bound)
        return True

    def global_(self, node: ast.Global, push: Any) -> bool:
        keyword = "global" if isinstance(node, ast.Global) else "nonlocal"
        return _refuse(
            node,
            f"'{keyword} {', '.join(node.names)}' lets a kernel keep state outside the call",
        )

    def handler(self, node: ast.ExceptHandler, push: Any) -> bool:
        if node.type is None:
            node.type = _guard("catch", node)
        else:
            node.type = _guard("catch", node.type, self.expr_child(node.type, push))
        if node.name:
            _reserved(node, node.name)
            self.bind(node.name)
        for stmt in node.body:
            push(stmt)
        return True

    def with_(self, node: ast.With, push: Any) -> bool:
        """``with cm as x:`` -> ``with _pyrecks_with(cm) as x:`` (a kernel's ``__exit__`` may
        not suppress the VM's timeout)."""
        _no_yield(node.body, "a 'with' block")
        for item in node.items:
            item.context_expr = _guard(
                "with", item.context_expr, self.expr_child(item.context_expr, push)
            )
            if item.optional_vars is not None:
                item.optional_vars = self.expr_child(item.optional_vars, push)
        for stmt in reversed(node.body):
            push(stmt)
        return True

    def async_with(self, node: ast.AsyncWith, push: Any) -> bool:
        return _refuse(node, "'async with' is not available in kernels (kernels are synchronous)")

    def try_(self, node: ast.Try, push: Any) -> bool:
        """``return``/``break``/``continue`` in ``finally:`` drop the exception in flight, the
        VM's timeout included (PEP 765): refused; the body runs under the ``finally`` guard
        (raising another exception there would replace the timeout)."""
        for stmt in node.finalbody:
            _no_jump_out(stmt, loop=False)
        for child in (*node.body, *node.handlers, *node.orelse, *node.finalbody):
            push(child)
        if node.finalbody:
            _no_yield([*node.body, *node.handlers, *node.orelse], "a 'try' with 'finally:'")
            # ``finally: F`` -> ``finally: try: F / except BaseException as e:
            # _pyrecks_finally(e); raise``: F may not replace the VM's signal in flight by
            # raising something else (free unless F raises).
            first, last = node.finalbody[0], node.finalbody[-1]
            caught = f"{rulebook.GUARD_PREFIX}exc"
            check = ast.Expr(_guard("finally", first, ast.Name(caught, _LOAD)))
            reraise = ast.Raise(exc=None, cause=None)
            handler = ast.ExceptHandler(
                # (``BaseException`` by a reserved name: a kernel may shadow the builtin's)
                type=ast.Name(G["base"], _LOAD),
                name=caught,
                body=[check, reraise],
            )
            guarded = ast.Try(body=node.finalbody, handlers=[handler], orelse=[], finalbody=[])
            made_nodes: tuple[Any, ...] = (guarded, handler, handler.type, check, reraise)
            for made in made_nodes:
                ast.copy_location(made, first)
                made.end_lineno, made.end_col_offset = last.end_lineno, last.end_col_offset
            for name_node in ast.walk(check):
                if not hasattr(name_node, "lineno"):
                    ast.copy_location(name_node, first)
            node.finalbody = [guarded]
        return True

    def match_name(self, node: ast.AST, push: Any) -> bool:
        name = getattr(node, "name", None) or getattr(node, "rest", None)
        if name:
            _reserved(node, name)
            self.bind(name)
        if isinstance(node, ast.MatchMapping):
            for key in node.keys:
                _value_pattern(key)
            for pattern in node.patterns:
                push(pattern)
            return True
        return False

    def match_value(self, node: ast.MatchValue, push: Any) -> bool:
        _value_pattern(node.value)
        return True

    def class_def(self, node: ast.ClassDef, push: Any) -> bool:
        _reserved(node, node.name)
        self.bind(node.name)
        if node.keywords:
            _refuse(
                node,
                f"class {node.name}: keyword '{node.keywords[0].arg}=' (metaclasses and class "
                "hooks) is not allowed in kernels",
            )
        node.bases = [self.expr_child(b, push) for b in node.bases]
        node.decorator_list = [self.expr_child(d, push) for d in node.decorator_list]
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and (
                stmt.name in rulebook.CLASS_HOOKS
                or (rulebook.is_dunder(stmt.name) and stmt.name not in rulebook.CLASS_BODY_DUNDERS)
            ):
                _refuse(stmt, f"class {node.name}: defining {stmt.name} is not allowed")
        # The body is walked now, with the class's name for mangling ``self.__x``.
        outer = self.classes
        self.classes = (*outer, node.name)
        pending: list[ast.AST] = []
        try:
            for stmt in node.body:
                if isinstance(stmt, ast.Assign | ast.AnnAssign):
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    if all(isinstance(t, ast.Name) for t in targets):
                        # ``NAME = value`` may bind dunders the interpreter reads itself
                        # (``__hash__ = None``, ``__match_args__``, ``__slots__``).
                        for target in targets:
                            self._class_name(node, stmt, target.id)  # type: ignore[attr-defined]
                        if isinstance(stmt, ast.AnnAssign):
                            stmt.annotation = self.expr_child(stmt.annotation, pending.append)
                        if stmt.value is not None:
                            stmt.value = self.expr_child(stmt.value, pending.append)
                        continue
                pending.append(stmt)
            self.run(pending)
        finally:
            self.classes = outer
        return True

    def _class_name(self, cls: ast.ClassDef, stmt: ast.Assign | ast.AnnAssign, name: str) -> None:
        _reserved(stmt, name)
        self.bind(name)
        if name in rulebook.CLASS_HOOKS or (
            rulebook.is_dunder(name) and name not in rulebook.CLASS_BODY_DUNDERS
        ):
            _refuse(stmt, f"class {cls.name}: setting {name} is not allowed")
        if name == "__match_args__":
            _match_args(cls, stmt.value)

    def match_class(self, node: ast.MatchClass, push: Any) -> bool:
        """``case C(a, k=p)`` reads attributes of the subject with no node a guard could wrap.

        So the names are judged here, by the rule book: keyword sub-patterns must name
        attributes that every object may show (plain names), or ``_private`` names of a class
        the kernel defines itself.  Positional sub-patterns read ``C.__match_args__``, which
        kernel classes may only fill with such names (judged in :meth:`class_def`).
        """
        parts: list[str] = []
        cls = node.cls
        while isinstance(cls, ast.Attribute):
            parts.append(cls.attr)
            cls = cls.value
        for part in parts:
            if not _plain(part):
                _refuse(node, f"a class pattern may not read '.{part}'")
        if isinstance(cls, ast.Name) and cls.id.startswith("_"):
            self.name(cls, cls.id)
        own = isinstance(node.cls, ast.Name) and node.cls.id in self.kernel_classes
        for attr in node.kwd_attrs:
            if _plain(attr) or (
                own and attr.startswith("_") and not rulebook.refused_by_name(attr)
            ):
                continue
            _refuse(
                node,
                f"the class pattern reads the attribute {attr!r}, which the rule book refuses "
                "(dunder, frame, type-dependent or another's private attribute); match on "
                "values or on your own classes' attributes",
            )
        for pattern in (*node.patterns, *node.kwd_patterns):
            push(pattern)
        return True

    def finish(self, tree: ast.Module) -> None:
        """Guard the calls of names that are not a single module-level def/class/import.

        A name bound exactly once, by a module-level ``def``/``class``/``import``, always
        holds that object (module-level names cannot be rebound: ``global`` is refused); a
        name bound nowhere is a sandbox builtin (all safe or guarded).  Any other name may
        hold anything at run time, so its calls go through the call guard.
        """
        counts = self.counts
        known: set[str] = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if counts.get(stmt.name) == 1:
                    known.add(stmt.name)
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                for alias in stmt.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    if counts.get(bound) == 1:
                        known.add(bound)
        for node in self.name_calls:
            func = node.func
            ident = func.id  # type: ignore[attr-defined]
            if ident in known or ident not in counts:
                continue
            node.func = _guard("call", func, func)


def _no_yield(nodes: list[Any], where: str) -> None:
    """Refuse ``yield`` in ``where``: when the generator is dropped, its ``finally:`` or
    ``__exit__`` runs at finalization, where every exception — the VM's timeout included —
    is swallowed ("Exception ignored in: <generator ...>"), and possibly outside any call."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is ast.Yield or kind is ast.YieldFrom:
            _refuse(
                node,
                f"'yield' inside {where}: the cleanup runs when the generator is dropped, "
                "where exceptions (the timeout included) are swallowed; yield outside it",
            )
        if kind in (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _no_jump_out(node: ast.AST, *, loop: bool) -> None:
    """Refuse a statement under ``finally:`` that leaves the clause (``loop``: inside a loop
    of the clause, where ``break``/``continue`` stay in it)."""
    stack: list[tuple[ast.AST, bool]] = [(node, loop)]
    while stack:
        current, in_loop = stack.pop()
        kind = type(current)
        if kind is ast.Return or (not in_loop and kind in (ast.Break, ast.Continue)):
            word = {ast.Return: "return", ast.Break: "break", ast.Continue: "continue"}[kind]
            _refuse(
                current,
                f"'{word}' inside 'finally:' drops the exception in flight, including the "
                "VM's timeout signal; leave the try statement first",
            )
        if kind in (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef):
            continue
        inner = in_loop or kind in (ast.For, ast.While, ast.AsyncFor)
        for child in ast.iter_child_nodes(current):
            if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                # a loop's else: runs after the loop, where break/continue leave the clause
                orelse = getattr(current, "orelse", None)
                in_else = kind in (ast.For, ast.While, ast.AsyncFor) and child in (orelse or ())
                stack.append((child, in_loop if in_else else inner))


def _value_pattern(node: ast.expr) -> None:
    """``case Color.RED:`` / ``case {K.x: v}``: the interpreter reads these attributes itself
    (the pattern may only be a dotted name or a literal, so no guard can wrap it)."""
    while isinstance(node, ast.Attribute):
        if not _plain(node.attr):
            _refuse(node, f"a value pattern may not read '.{node.attr}'")
        node = node.value
    if isinstance(node, ast.Name) and rulebook.is_dunder(node.id):
        _refuse(node, f"the name {node.id!r} reaches interpreter internals")


def _match_args(cls: ast.ClassDef, value: ast.expr | None) -> None:
    elts = value.elts if isinstance(value, ast.Tuple | ast.List) else None
    names = [e.value for e in elts or () if isinstance(e, ast.Constant)]
    if elts is None or len(names) != len(elts) or not all(isinstance(n, str) for n in names):
        _refuse(value, f"class {cls.name}: __match_args__ must be a tuple of literal names")
    for elt, name in zip(elts or (), names, strict=True):
        if rulebook.refused_by_name(str(name)) or name in rulebook.TYPE_DEPENDENT_ATTRIBUTES:
            _refuse(elt, f"class {cls.name}: __match_args__ may not name {name!r}")


_SPECIAL: dict[type, Callable[..., bool]] = {
    ast.Call: _Walk.call,
    ast.FunctionDef: _Walk.function,
    ast.AsyncFunctionDef: _Walk.function,
    ast.arg: _Walk.arg,
    ast.alias: _Walk.alias,
    ast.Global: _Walk.global_,
    ast.Nonlocal: _Walk.global_,
    ast.ExceptHandler: _Walk.handler,
    ast.ClassDef: _Walk.class_def,
    ast.MatchClass: _Walk.match_class,
    ast.MatchAs: _Walk.match_name,
    ast.MatchStar: _Walk.match_name,
    ast.MatchMapping: _Walk.match_name,
    ast.MatchValue: _Walk.match_value,
    ast.With: _Walk.with_,
    ast.AsyncWith: _Walk.async_with,
    ast.Try: _Walk.try_,
    ast.TryStar: _Walk.try_,
}


def rewrite(tree: ast.Module, name: str, *, checked: bool = False) -> ast.Module:
    """Insert the guards into ``tree`` (in place) and return it; refuse what text alone shows.

    Raises :class:`SandboxViolation` for load-time code that is not pure (unless
    ``checked``: the caller ran the checker, which reports the same problems as errors, and
    found none) and for the constructs listed in the module docstring.  New nodes carry the
    position of the node they guard, so tracebacks still point at the kernel's own lines.
    """
    if not checked:  # the checker reports these as errors itself (PK403/PK406/PK501/PK502)
        for problem in purity.module_problems(tree, name):
            _refuse(problem.node, f"{problem.code} {problem.message}")
    walk = _Walk()
    walk.kernel_classes = {s.name for s in tree.body if isinstance(s, ast.ClassDef)}
    walk.run([tree])
    walk.finish(tree)
    at = (
        tree.body[-1]
        if tree.body
        else ast.Pass(lineno=1, col_offset=0, end_lineno=1, end_col_offset=0)
    )
    done = ast.Expr(_guard("module_done", at))
    ast.copy_location(done, at)
    tree.body.append(done)
    return tree


def compile_guarded(name: str, source: str, filename: str) -> types.CodeType:
    """Rewrite and compile a kernel source *without* the checker.

    For code paths and tests that must not depend on the checker: the guards and the
    rewriter's refusals still hold.  :func:`pyrecks.compiler.compiler.compile_kernel` does
    the same after checking.
    """
    tree = ast.parse(source, filename=filename)
    return compile(rewrite(tree, name), filename, "exec", dont_inherit=True)
