"""``pyrecksc graph``: which kernel may call which, from helpers and return-string templates."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from pyrecks.api import Pyrecks
from pyrecks.cli.graph_cmd import graph as graph_command
from pyrecks.cli.pyrecksc import main
from pyrecks.compiler.graph import build_graph, extract, layout, to_dot, to_svg, to_text

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def _edges(source: str, name: str) -> set[tuple[str, str, bool]]:
    edges, _ends, _errors = extract(textwrap.dedent(source), name)
    return {(e.target, e.kind, e.dynamic) for e in edges}


def test_helper_calls_however_imported() -> None:
    assert _edges(
        """
        from pyrecks.kernel import call as go

        def a(x):
            return go("b", x)
        """,
        "a",
    ) == {("b", "call", False)}
    assert _edges(
        """
        import pyrecks.kernel as k

        def a(xs):
            return k.fanout([k.branch("w", x) for x in xs], join=k.branch("m", "tag"))
        """,
        "a",
    ) == {("w", "fanout", False), ("m", "join", False)}
    assert _edges(
        """
        from pyrecks.kernel import branch, fanout

        def a():
            return fanout([branch("w", 1), "v"], "m")
        """,
        "a",
    ) == {("w", "fanout", False), ("v", "fanout", False), ("m", "join", False)}


def test_a_local_function_named_call_is_not_the_helper() -> None:
    assert (
        _edges(
            """
        def call(name, x):
            return x

        def a(x):
            call("b", x)
            return ''
        """,
            "a",
        )
        == set()
    )


def test_returned_strings_and_templates() -> None:
    assert _edges(
        """
        def a(x: int):
            if x > 3:
                return 'b("big")'
            if x > 2:
                return '[c(1), c(2)] -> d()'
            if x > 1:
                return 'a(%d)' % (x - 1)
            if x > 0:
                return f'e({x}, "{x}")'
            return 'f(1)' if x else 'g(2)'
        """,
        "a",
    ) == {
        ("b", "call", False),
        ("c", "fanout", False),
        ("d", "join", False),
        ("a", "call", False),
        ("e", "call", False),
        ("f", "call", False),
        ("g", "call", False),
    }


def test_computed_names_are_dynamic() -> None:
    assert _edges(
        """
        from pyrecks.kernel import call

        def a(nxt: str, n: int):
            if n == 1:
                return call(nxt, n)
            if n == 2:
                return f"{nxt}({n})"
            if n == 3:
                return "step_%s(%d)" % (nxt, n)
            return "{}(1)".format(nxt)
        """,
        "a",
    ) == {("?", "call", True), ("step_*", "call", True)}


def test_ends_and_checker_errors() -> None:
    _, ends, errors = extract("def a(x):\n    return ''\n", "a")
    assert ends and errors == 0
    _, ends, errors = extract(
        "from pyrecks.kernel import done\ndef a(x):\n    return done(x)\n", "a"
    )
    assert ends
    _, ends, errors = extract("import os\ndef a(x):\n    return 'b(1)'\n", "a")
    assert errors == 1 and not ends
    assert extract("def a(:\n", "a") == ([], False, 1)


def test_sample_kernels() -> None:
    graph = build_graph(
        [(p.stem, p.read_text(encoding="utf-8"), str(p)) for p in sorted(KERNELS.glob("*.py"))]
    )
    pairs = {(e.source, e.target) for e in graph.edges}
    assert {("start", "func0"), ("func0", "func1"), ("func1", "func2")} <= pairs
    assert ("wc_split", "wc_count") in pairs
    assert graph.missing == []
    assert graph.nodes["func2"].ends


def _missing_graph():  # type: ignore[no-untyped-def]
    return build_graph(
        [
            ("a", "def a(x):\n    return 'b(1)'\n", "a.py"),
            ("b", "def b(x):\n    return 'ghost(1)'\n", "b.py"),
            ("c", "from pyrecks.kernel import call\ndef c(n):\n    return call(n)\n", "c.py"),
        ],
        known={"stored"},
    )


def test_missing_kernels_are_flagged_in_every_format() -> None:
    graph = _missing_graph()
    assert [(e.source, e.target) for e in graph.missing] == [("b", "ghost")]
    text = to_text(graph)
    assert re.search(r"-> ghost\s+call\s+b\.py:2  MISSING", text)
    assert "1 call to missing kernels:" in text and "b -> ghost  (b.py:2)" in text
    assert "(name computed at run time)" in text
    dot = to_dot(graph)
    assert '"ghost" [style="rounded,dashed", color="red"' in dot
    assert '"b" -> "ghost" [label="call", color="red"];' in dot
    assert '"c" -> "?@c"' in dot and '"?@c" [label="?"' in dot
    svg = to_svg(graph, engine="builtin")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert '<g class="kernel missing" data-kernel="ghost">' in svg
    assert '<g class="kernel dynamic" data-kernel="?">' in svg
    assert svg.count('class="edge ') == 3
    doc = graph.to_json()
    assert {"from": "b", "to": "ghost", "kind": "call", "line": 2, "dynamic": False,
            "via": "return", "missing": True} in doc["edges"]  # fmt: skip


def test_layout_layers_and_cycles() -> None:
    lay = layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("c", "a"), ("d", "d"), ("a", "c")])
    assert set(lay.positions) == {"a", "b", "c", "d"}
    ya, yb, yc = (lay.positions[n][1] for n in "abc")
    assert ya < yb < yc  # the cycle is broken at its back edge c -> a
    assert ("c", "a") in lay.back_edges
    xs = {lay.positions[n] for n in "abcd"}
    assert len(xs) == 4  # no two nodes on the same spot


@pytest.mark.skipif(shutil.which("dot") is not None, reason="Graphviz is installed")
def test_svg_without_graphviz() -> None:
    graph = _missing_graph()
    assert to_svg(graph) == to_svg(graph, engine="builtin")
    with pytest.raises(FileNotFoundError):
        to_svg(graph, engine="dot")


def _runner() -> CliRunner:
    main.add_command(graph_command)
    return CliRunner()


def test_graph_command_formats(tmp_path: Path) -> None:
    runner = _runner()
    got = runner.invoke(main, ["graph", str(KERNELS)])
    assert got.exit_code == 0, got.output
    assert re.search(r"start\n  -> func0\s+call", got.output)
    got = runner.invoke(main, ["graph", str(KERNELS), "--format", "dot"])
    assert got.exit_code == 0 and got.output.startswith("digraph kernels {")
    out = tmp_path / "kernels.svg"
    got = runner.invoke(
        main, ["graph", str(KERNELS), "--format", "svg", "--layout", "builtin", "-o", str(out)]
    )
    assert got.exit_code == 0, got.output
    assert 'data-kernel="wc_count"' in out.read_text()
    got = runner.invoke(main, ["graph", str(KERNELS), "--format", "json"])
    edges = json.loads(got.output)["edges"]
    assert any(e["from"] == "start" and e["to"] == "func0" for e in edges)


def test_graph_command_strict_and_redis(tmp_path: Path, r: redis.Redis, redis_url: str) -> None:
    (tmp_path / "a.py").write_text("def a(x):\n    return 'stored_one(1)'\n")
    (tmp_path / "b.py").write_text("def b(x):\n    return 'ghost(1)'\n")
    runner = _runner()
    got = runner.invoke(main, ["graph", str(tmp_path), "--strict"])
    assert got.exit_code == 1
    assert "2 calls to missing kernels" in got.output
    Pyrecks(r).store_kernel("stored_one", "def stored_one(x):\n    return ''\n")
    got = runner.invoke(main, ["graph", str(tmp_path), "--redis", redis_url, "--strict"])
    assert got.exit_code == 1  # ghost is still missing
    assert "1 call to missing kernels" in got.output and "b -> ghost" in got.output
    got = runner.invoke(main, ["graph", str(tmp_path / "a.py"), "--redis", redis_url, "--strict"])
    assert got.exit_code == 0, got.output
    # Without paths: the kernels stored in Redis.
    got = runner.invoke(main, ["graph", "--redis", redis_url])
    assert got.exit_code == 0 and got.output.startswith("stored_one  (can end the chain)")
    empty = runner.invoke(main, ["graph", str(tmp_path / "nothing")])
    assert empty.exit_code == 1 and "no such file or folder" in empty.output
