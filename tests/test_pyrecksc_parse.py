"""`pyrecksc parse` prints instructions (or JSON), and invalid strings a caret and exit 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pyrecks.cli.pyrecksc import main


def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["parse", *args], input=stdin)


def test_human_output_lists_effects_then_the_call() -> None:
    result = run('next_func_to_call("a", "b", "c") SET [("k1","v1"), ("k2", "v2")]')
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        'effect SET ["k1", "v1"]',
        'effect SET ["k2", "v2"]',
        'call next_func_to_call("a", "b", "c")',
    ]


def test_human_output_for_fanout_return_and_halt() -> None:
    assert run('[f("a"), g(1)] -> merge("x")').output == 'fanout [f("a"), g(1)] -> merge("x")\n'
    assert run("return {'a': 1}").output == 'return {"a": 1}\n'
    assert run("''").output == "halt\n"
    assert run("").output == "halt\n"


def test_json_output_follows_the_documented_schema() -> None:
    result = run("--json", 'f("@k", "@@lit", [1, 2], {1: "a"}) DEL ["x"]')
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "then": {
            "kind": "call",
            "name": "f",
            "args": [{"$key": "k"}, "@lit", [1, 2], {"$dict": [[1, "a"]]}],
        },
        "effects": [{"command": "DEL", "args": ["x"]}],
    }


def test_json_for_fanout_return_halt_and_marker_like_dicts() -> None:
    doc = json.loads(run("--json", "[f()] -> j(1)").output)
    assert doc["then"] == {"kind": "fanout", "branches": [{"name": "f", "args": []}],
                           "join": {"name": "j", "args": [1]}}
    doc = json.loads(run("--json", 'return {"$key": "x"}').output)
    assert doc["then"] == {"kind": "return", "value": {"$dict": [["$key", "x"]]}}
    assert json.loads(run("--json", "").output) == {"then": {"kind": "halt"}, "effects": []}


def test_dash_reads_the_text_from_stdin() -> None:
    result = run("-", stdin='func1("from stdin")\n')
    assert result.output == 'call func1("from stdin")\n'


def test_canonical_prints_the_canonical_rendering() -> None:
    assert run("--canonical", "f( 'a' ,1 ) set [('k',2)]").output == 'f("a", 1) SET [("k", 2)]\n'


def test_invalid_string_prints_caret_and_expected_on_stderr_and_exits_1() -> None:
    result = run("func1(say hi)")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: unquoted text 'say'")
    assert lines[0].endswith("(line 1, column 7)")
    assert lines[1:3] == ["func1(say hi)", "      ^"]
    assert lines[3].startswith("expected: a string, a number")


def test_invalid_string_with_json_also_prints_a_json_error() -> None:
    result = run("--json", "f(1) FLUSHALL []")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert (error["line"], error["column"]) == (1, 6)
    assert "not an allowed effect command" in error["message"]


def _pyrecksc() -> str:
    found = Path(sys.executable).with_name("pyrecksc")
    return str(found) if found.exists() else (shutil.which("pyrecksc") or "pyrecksc")


def test_installed_entry_point_runs_as_a_real_process() -> None:
    ok = subprocess.run([_pyrecksc(), "parse", "--json", 'func1("say hi")'],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["then"] == {"kind": "call", "name": "func1", "args": ["say hi"]}
    bad = subprocess.run([_pyrecksc(), "parse", "-"], input='f("x"', capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 1
    assert "never closed" in bad.stderr
    assert "^" in bad.stderr
