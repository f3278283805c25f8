"""The rule book is the one copy of the rules: the docs, the policy, the checker and the
guards all read it, and nothing it allows leaks state or reaches another module.

``python -m tests.test_rulebook`` prints the docs section the rule book renders to (paste it
between the ``rulebook`` markers of docs/kernels.md when the rule book changes).
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import pytest

from pyrecks import acl
from pyrecks.compiler import checker, rulebook
from pyrecks.compiler.effects import ALLOWED_COMMANDS
from pyrecks.compiler.policy import Policy
from pyrecks.vm import guards
from pyrecks.vm.sandbox import SAFE_BUILTINS, Sandbox

DOCS = Path(__file__).parent.parent / "docs" / "kernels.md"
BEGIN, END = "<!-- rulebook:begin -->", "<!-- rulebook:end -->"


def _names(names: object) -> str:
    return " ".join(f"`{n}`" for n in sorted(names))  # type: ignore[call-overload]


def render() -> str:
    """The rule book as the markdown tables of docs/kernels.md."""
    out = ["#### Modules and the names kernels may use from them", ""]
    out += ["| module | names |", "|---|---|"]
    for module in sorted(rulebook.MODULES):
        out.append(f"| `{module}` | {_names(rulebook.MODULES[module])} |")
    out += ["", "#### Names left out on purpose", ""]
    out += ["| name | why |", "|---|---|"]
    for name in sorted(rulebook.REFUSED_MODULE_NAMES):
        out.append(f"| `{name}` | {rulebook.REFUSED_MODULE_NAMES[name]} |")
    out += ["", "#### Builtins", ""]
    out += ["| rule | names |", "|---|---|"]
    out.append(f"| allowed (and every exception class) | {_names(rulebook.ALLOWED_BUILTINS)} |")
    out.append(f"| refused (PK201) | {_names(rulebook.FORBIDDEN_BUILTINS)} |")
    out += ["", "#### Attributes, classes and load-time code", ""]
    out += ["| rule | names |", "|---|---|"]
    rows = [
        ("dunder attributes allowed on every object", rulebook.SAFE_DUNDER_ATTRIBUTES),
        ("dunder names a kernel may read", rulebook.SAFE_DUNDER_NAMES),
        ("frame and code internals, refused on every object (PK302)", rulebook.FRAME_ATTRIBUTES),
        ("refused on classes the kernel did not define (PK307)",
         rulebook.CLASS_REFUSED_ATTRIBUTES),
        ("handed out behind a guard (PK304 for templates)", rulebook.WRAPPED_ATTRIBUTES),
        ("type-dependent: judged by the object at run time",
         rulebook.TYPE_DEPENDENT_ATTRIBUTES),
        ("class hooks a kernel class may not define (PK532)", rulebook.CLASS_HOOKS),
        ("exceptions a handler may not swallow (PK520)", rulebook.CONTROL_EXCEPTIONS),
        ("aliases resolved before the rules apply", rulebook.ALIASED_BUILTINS),
        ("the only calls at module level and in class bodies (PK502)",
         rulebook.PURE_CONSTRUCTORS),
        ("types a module-level value may have once loaded", rulebook.IMMUTABLE_TYPES),
    ]  # fmt: skip
    for rule, names in rows:
        out.append(f"| {rule} | {_names(names)} |")
    for dotted, names in sorted(rulebook.WRITABLE_ATTRIBUTES.items()):
        out.append(f"| writable attributes of `{dotted}` objects | {_names(names)} |")
    return "\n".join(out)


def test_docs_show_the_rule_book() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/kernels.md lost its rule book markers"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == render(), "run: python -m tests.test_rulebook, and paste the output"


@pytest.mark.parametrize("module", sorted(rulebook.MODULES))
def test_allowed_names_are_neither_modules_nor_shared_containers(module: str) -> None:
    mod = importlib.import_module(module)
    for name in rulebook.MODULES[module]:
        value = getattr(mod, name, None)
        assert not isinstance(value, types.ModuleType), f"{module}.{name} is a module"
        assert not isinstance(value, list | dict | set | bytearray), (
            f"{module}.{name} is a {type(value).__name__} every kernel would share"
        )
        assert not name.startswith("_"), f"{module}.{name} is private"


def test_refused_names_are_not_allowed() -> None:
    for full in rulebook.REFUSED_MODULE_NAMES:
        module, _, name = full.rpartition(".")
        assert name not in rulebook.MODULES.get(module, frozenset()), full
    for full in rulebook.MODULE_STATE_FUNCTIONS:
        module, _, name = full.rpartition(".")
        assert name not in rulebook.MODULES[module], full


def test_the_sandbox_proxies_hold_exactly_the_rule_books_names() -> None:
    sandbox = Sandbox.from_policy(Policy())
    for module, names in rulebook.MODULES.items():
        held = set(vars(sandbox.proxy(module))) - {"__name__", "__doc__", "__package__",
                                                   "__loader__", "__spec__", "_sealed"}
        existing = {n for n in names if hasattr(importlib.import_module(module), n)}
        assert held == existing, module


def test_one_copy_of_each_list() -> None:
    """The lists that had drifted apart are one object now."""
    assert checker.FRAME_ATTRIBUTES is rulebook.FRAME_ATTRIBUTES
    assert SAFE_BUILTINS is rulebook.ALLOWED_BUILTINS
    assert Policy().allowed_modules == frozenset(rulebook.MODULES)
    assert Policy().forbidden_builtins == frozenset(rulebook.FORBIDDEN_BUILTINS)
    assert Policy().forbidden_attributes == frozenset(rulebook.REFUSED_MODULE_NAMES)
    assert set(acl._EFFECT_WRITES) == {c.lower() for c in ALLOWED_COMMANDS}


def test_every_type_the_rule_book_names_exists() -> None:
    for dotted in rulebook.IMMUTABLE_TYPES | set(rulebook.WRITABLE_ATTRIBUTES):
        assert guards._resolve_type(dotted) is not None, dotted


def test_pure_constructors_name_real_callables() -> None:
    import builtins

    for dotted in rulebook.PURE_CONSTRUCTORS:
        module, _, name = dotted.rpartition(".")
        owner = importlib.import_module(module) if module else builtins
        assert callable(getattr(owner, name)), dotted
        if module:
            assert name in rulebook.MODULES[module], dotted


def test_plain_attributes_are_exactly_the_type_independent_ones() -> None:
    assert rulebook.is_plain_attribute("lower")
    assert rulebook.is_plain_attribute("total")
    for name in ["_x", "__class__", "gi_frame", "mro", "format", "format_map", "register",
                 "__init__", "_value_"]:  # fmt: skip
        assert not rulebook.is_plain_attribute(name), name


if __name__ == "__main__":
    print(BEGIN)
    print(render())
    print(END)
