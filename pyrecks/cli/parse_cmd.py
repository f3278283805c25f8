"""``pyrecksc parse TEXT [--json]``: show what a return string means, or why it is invalid.

Useful while writing kernels ("what will the VM do with this string?") and in scripts
(``--json``).  The JSON schema is documented in ``docs/return-strings.md``; in short::

    {"then": {"kind": "call", "name": "f", "args": [...]},
     "effects": [{"command": "SET", "args": ["k", "v"]}]}

with ``kind`` one of ``call``, ``fanout`` (``branches``, ``join``), ``return`` (``value``)
and ``halt``.  Values map to JSON directly (lists and tuples to arrays), except a key
reference, written ``{"$key": "name"}``, and a dict that JSON cannot hold as an object
(a non-string key, or a single key ``"$key"``/``"$dict"``), written
``{"$dict": [[key, value], ...]}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import click

from pyrecks.cli.pyrecksc import main
from pyrecks.compiler.instructions import Call, FanOut, Finish, KeyRef, Transition
from pyrecks.errors import ReturnStringError

_MARKERS = ("$key", "$dict")


def value_to_json(value: Any) -> Any:
    """A language value as JSON-ready data (see the module docstring for the markers)."""
    if isinstance(value, KeyRef):
        return {"$key": value.key}
    if isinstance(value, tuple | list):
        return [value_to_json(v) for v in value]
    if isinstance(value, Mapping):
        plain = all(isinstance(k, str) for k in value)
        if plain and not (len(value) == 1 and next(iter(value)) in _MARKERS):
            return {k: value_to_json(v) for k, v in value.items()}
        return {"$dict": [[value_to_json(k), value_to_json(v)] for k, v in value.items()]}
    return value


def _call_json(call: Call) -> dict[str, Any]:
    return {"name": call.name, "args": [value_to_json(a) for a in call.args]}


def transition_to_json(t: Transition) -> dict[str, Any]:
    """The ``--json`` document for one parsed return string."""
    then = t.then
    if isinstance(then, Call):
        target: dict[str, Any] = {"kind": "call", **_call_json(then)}
    elif isinstance(then, FanOut):
        target = {
            "kind": "fanout",
            "branches": [_call_json(b) for b in then.branches],
            "join": _call_json(then.join),
        }
    elif isinstance(then, Finish):
        target = {"kind": "return", "value": value_to_json(then.value)}
    else:
        target = {"kind": "halt"}
    effects = [{"command": e.command, "args": value_to_json(e.args)} for e in t.effects]
    return {"then": target, "effects": effects}


def describe(t: Transition) -> list[str]:
    """One human-readable line per instruction, in the order the VM carries them out."""
    from pyrecks.compiler.render import render_call, render_value

    lines = [f"effect {e.command} {render_value(e.args)}" for e in t.effects]
    then = t.then
    if isinstance(then, Call):
        lines.append(f"call {render_call(then)}")
    elif isinstance(then, FanOut):
        branches = ", ".join(render_call(b) for b in then.branches)
        lines.append(f"fanout [{branches}] -> {render_call(then.join)}")
    elif isinstance(then, Finish):
        lines.append(f"return {render_value(then.value)}")
    else:
        lines.append("halt")
    return lines


def error_lines(exc: ReturnStringError) -> list[str]:
    """The caret report for an invalid string (also used by other commands)."""
    out = [f"error: {exc}"]
    if exc.text:
        out.append(exc.context())
    if exc.expected:
        from pyrecks.compiler.parser import _sort_words

        out.append("expected: " + ", ".join(_sort_words(exc.expected)))
    return out


@main.command("parse")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print the instructions as JSON.")
@click.option("--canonical", is_flag=True, help="Print the canonical rendering instead.")
def parse_command(text: str, as_json: bool, canonical: bool) -> None:
    """Parse a return string TEXT and print its instructions ('-' reads stdin).

    \b
    Examples:
      pyrecksc parse 'func1("say hi")'
      pyrecksc parse --json 'func1("x") SET [("k1", "v1"), ("k2", 3)]'
      echo '[f(1), g(2)] -> merge()' | pyrecksc parse -

    An invalid string prints the error with a caret under the fault and exits 1.
    """
    from pyrecks.compiler.parser import parse
    from pyrecks.compiler.render import render

    if text == "-":
        text = sys.stdin.read()
    try:
        transition = parse(text)
    except ReturnStringError as exc:
        for line in error_lines(exc):
            click.echo(line, err=True)
        if as_json:
            error = {
                "message": exc.message,
                "line": exc.line,
                "column": exc.column,
                "expected": sorted(exc.expected),
            }
            click.echo(json.dumps({"error": error}, ensure_ascii=False))
        raise SystemExit(1) from None
    if canonical:
        click.echo(render(transition))
    elif as_json:
        click.echo(json.dumps(transition_to_json(transition), ensure_ascii=False))
    else:
        for line in describe(transition):
            click.echo(line)
