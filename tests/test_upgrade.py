"""``pyrecksc upgrade``: the seed's Python 2 kernels become Python 3 kernels that behave the same.

Behaviour is checked against Python 2.7 itself (pyenv's, or python2.7 on PATH): each original
runs under 2.7 and its upgrade under this Python over a table of inputs, and what they print
and return must match.  The seed's walkthrough is then run verbatim: its README's SET lines
typed at ``pyrecks redis-cli``'s prompt, ``pyrecksc upgrade --stored --write``, ``run start``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from pyrecks.api import Pyrecks
from pyrecks.cli.embedded_cmds import repl, split_args
from pyrecks.cli.pyrecksc import main as pyrecksc
from pyrecks.compiler.upgrade import escaped_newlines_hint, looks_like_python2, upgrade_source
from pyrecks.vm.records import ChainStatus

# The seed README's lines, verbatim (typed at redis-cli's prompt).
SEED_LINES = [
    r"""SET func0 "def func0(x):\n\tprint 'func0 got %s' % x\n\tx = x + '3'\n\tprint 'func0 says %s' % x\n\treturn 'func1(\"say hi to func1 with %s\")' % x" """,
    r"""SET func1 "def func1(x):\n\tprint 'func1 got %s' % x\n\tx = x * 3\n\tprint 'func1 says %s' % x\n\treturn 'func2(\"say hi to func2 with %s\")' % x\n" """,
    r"""SET func2 "import time \ndef func2(x):\n\tprint 'func2 got %s' % x\n\ttime.sleep(10)\n\tx = x + '-and-we-are-done'\n\tprint 'func2 says %s' % x\n\treturn ''" """,
]
SEED = {split_args(line)[1]: split_args(line)[2] for line in SEED_LINES}
START = "def start():\n    return 'func0(\"start ...\")'\n"


def _python27() -> str | None:
    # pyenv's own binary first: a pyenv shim on PATH may refuse to run ("command not found").
    for candidate in (
        str(Path.home() / ".pyenv/versions/2.7.18/bin/python2.7"),
        shutil.which("python2.7"),
    ):
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                return candidate
    return None


PY27 = _python27()
needs_py27 = pytest.mark.skipif(PY27 is None, reason="no Python 2.7 (pyenv 2.7.18 or PATH)")

# Runs SOURCE's function NAME over INPUTS with time.sleep stubbed out; prints one JSON list
# of [stdout, stderr, repr(return value) or the exception's class name] per input.  Written
# to run unchanged under Python 2.7 and 3.
RUNNER = r"""
import json, sys, types
try:
    from StringIO import StringIO
except ImportError:
    from io import StringIO
fake = types.ModuleType('time'); fake.sleep = lambda s: None
sys.modules['time'] = fake
PY2 = sys.version_info[0] == 2
def native(v):  # Python 2 kernels got byte strings (str), not unicode
    if PY2 and isinstance(v, unicode):
        return v.encode('utf-8')
    if isinstance(v, list):
        return [native(x) for x in v]
    if isinstance(v, dict):
        return dict((native(k), native(x)) for k, x in v.items())
    return v
def text(v):
    if PY2 and isinstance(v, str):
        return v.decode('utf-8')
    return v if isinstance(v, type(u'')) else repr(v)
doc = json.loads(sys.stdin.read())
out = []
for value in doc['inputs']:
    ns = {}
    exec(compile(doc['source'], doc['name'], 'exec'), ns)
    so, se = StringIO(), StringIO()
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = so, se
    try:
        result = text(ns[doc['name']](*native(value)))
    except Exception as exc:
        result = type(exc).__name__
    finally:
        sys.stdout, sys.stderr = real
    out.append([text(so.getvalue()), text(se.getvalue()), result])
sys.stdout.write(json.dumps(out))
"""


def _run(python: str, source: str, name: str, inputs: list[list[Any]]) -> Any:
    doc = json.dumps({"source": source, "name": name, "inputs": inputs})
    proc = subprocess.run(
        [python, "-c", RUNNER], input=doc, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


INPUTS = [["start ..."], ["x"], [""], ["quote ' and \" and (paren)"], ["ünïcode"]]


@needs_py27
@pytest.mark.parametrize("name", sorted(SEED))
def test_the_seeds_kernels_upgrade_and_behave_as_under_python27(name: str) -> None:
    original = SEED[name]
    result = upgrade_source(original, name)
    assert result.ok and result.changed and result.flags == []
    assert "\t" not in result.source and "print(" in result.source
    assert PY27 is not None
    assert _run(sys.executable, result.source, name, INPUTS) == _run(PY27, original, name, INPUTS)


# (name, Python 2 source, inputs): one construct of the seed's era each.
CASES: list[tuple[str, str, list[list[Any]]]] = [
    (
        "p_trailing",
        "def p_trailing(a, b):\n\tprint a,\n\tprint b\n\tprint\n\tprint 'x', a, 'y'\n\treturn ''\n",
        [["1", "2"], ["", "z"]],
    ),
    (
        "p_file",
        "import sys\ndef p_file(a):\n    print >>sys.stderr, 'err %s' % a\n    print >>sys.stdout, a, a\n    return a\n",
        [["q"]],
    ),
    (
        "has",
        "def has(d, k):\n  if d.has_key(k): return 'yes'\n  if not d.has_key(k + 'x'): return 'no'\n  return 'x' + str(d.has_key(k) and 1)\n",
        [[{"a": 1}, "a"], [{"ax": 1}, "a"], [{}, "b"]],
    ),
    (
        "iters",
        "def iters(d):\n\tout = []\n\tfor k, v in sorted(d.iteritems()):\n\t\tout.append('%s=%s' % (k, v))\n\tfor i in xrange(len(d)):\n\t\tout.append(`i`)\n\treturn ','.join(out) + str(sorted(d.iterkeys())) + str(sorted(d.itervalues()))\n",
        [[{"a": 1, "b": 2}], [{}]],
    ),
    (
        "cmp",
        "def cmp_(a, b):\n    return a <> b\n".replace("cmp_", "cmp"),
        [[1, 2], [3, 3]],
    ),
    (
        "exc",
        "def exc(d, k):\n\ttry:\n\t\treturn d[k]\n\texcept (KeyError, IndexError), e:\n\t\treturn 'missing %s' % e\n",
        [[{"a": "1"}, "a"], [{}, "b"]],
    ),
    (
        "texts",
        "def texts(x):\n    if isinstance(x, basestring):\n        return unicode(x).upper()\n    return str(long(x) + 10L)\n",
        [["abc"], [5]],
    ),
    (
        "octal",
        "def octal(x):\n    return x + 0777\n",
        [[1]],
    ),
]


@needs_py27
@pytest.mark.parametrize("name,source,inputs", CASES, ids=[c[0] for c in CASES])
def test_each_python2_construct_upgrades_to_the_same_behaviour(
    name: str, source: str, inputs: list[list[Any]]
) -> None:
    result = upgrade_source(source, name)
    assert result.ok, result.flags
    assert result.changed
    assert PY27 is not None
    assert _run(sys.executable, result.source, name, inputs) == _run(PY27, source, name, inputs)


def test_has_key_not_reads_as_not_in() -> None:
    assert "if not k + 'x' in d" in upgrade_source(
        "def f(d, k):\n  if not d.has_key(k + 'x'): return 1\n"
    ).source.replace("(k + 'x')", "k + 'x'")


@needs_py27
def test_integer_division_is_flagged_not_rewritten() -> None:
    source = "def half(n):\n\treturn n / 2\n"
    result = upgrade_source(source, "half")
    assert "n / 2" in result.source  # not guessed
    assert [(f.line, f.code) for f in result.flags] == [(2, "PY201")]
    assert "//" in result.flags[0].message
    # ... because it does change the result:
    assert PY27 is not None
    assert _run(PY27, source, "half", [[7]])[0][2] == "3"
    assert _run(sys.executable, result.source, "half", [[7]])[0][2] == "3.5"
    fixed = result.source.replace("n / 2", "n // 2")
    assert _run(sys.executable, fixed, "half", [[7], [-7]]) == _run(
        PY27, source, "half", [[7], [-7]]
    )


def test_division_by_a_float_or_under_future_division_is_not_flagged() -> None:
    assert upgrade_source("def f(n):\n    return n / 2.0\n").flags == []
    assert (
        upgrade_source("from __future__ import division\ndef f(n):\n    return n / 2\n").flags == []
    )
    assert upgrade_source("def f(n):\n    return n // 2\n").flags == []


def test_strings_and_comments_are_left_alone() -> None:
    source = (
        "def f(x):\n    # print x, <> `x` d.has_key(k)\n    return 'print x <> `y` xrange(3) 7/2'\n"
    )
    result = upgrade_source(source)
    assert result.source == source and result.flags == []


def test_python3_kernels_are_unchanged() -> None:
    for path in sorted((Path(__file__).parent.parent / "kernels").glob("*.py")):
        source = path.read_text()
        result = upgrade_source(source, path.stem)
        assert result.source == source and not result.changed, path
        assert not looks_like_python2(source)


def test_a_tuple_print_is_flagged() -> None:
    result = upgrade_source("def f(a, b):\n    print (a, b)\n    return ''\n")
    assert [f.code for f in result.flags] == ["PY202"]


def test_an_unfixable_kernel_is_reported_not_valid() -> None:
    result = upgrade_source("def f(x):\n    exec 'x = 1' in {}\n    return x\n")
    assert not result.ok
    assert result.flags[-1].code == "PY300"


# ---------------------------------------------------------------------------- shell escapes

SHELL_TYPED = "def func0(x):\\n\\tprint 'func0 got %s' % x\\n\\treturn ''"


def test_a_kernel_typed_on_a_shell_line_gets_a_hint_and_is_repaired() -> None:
    hint = escaped_newlines_hint(SHELL_TYPED, "func0")
    assert hint is not None and "backslash-n" in hint and "pyrecksc compile" in hint
    assert escaped_newlines_hint(SEED["func0"], "func0") is None  # real line breaks
    assert escaped_newlines_hint("just a value with \\n in it", "k") is None
    result = upgrade_source(SHELL_TYPED, "func0")
    assert result.ok
    assert result.source == "def func0(x):\n    print('func0 got %s' % x)\n    return ''"


# ------------------------------------------------------------------------------ the CLI


def test_upgrade_files_shows_a_diff_and_writes_with_write(tmp_path: Path) -> None:
    kernel = tmp_path / "func1.py"
    kernel.write_text(SEED["func1"])
    runner = CliRunner()
    shown = runner.invoke(pyrecksc, ["upgrade", str(kernel)])
    assert shown.exit_code == 0, shown.output
    assert "-\tprint 'func1 got %s' % x" in shown.stdout
    assert "+    print('func1 got %s' % x)" in shown.stdout
    assert "add --write to apply" in shown.stderr
    assert kernel.read_text() == SEED["func1"]  # nothing written
    written = runner.invoke(pyrecksc, ["upgrade", "--write", str(kernel)])
    assert written.exit_code == 0
    assert kernel.read_text() == upgrade_source(SEED["func1"]).source
    again = runner.invoke(pyrecksc, ["upgrade", str(kernel)])
    assert again.stdout == "" and "0 to upgrade, 1 unchanged" in again.stderr
    lint = runner.invoke(pyrecksc, ["lint", str(kernel)])
    assert lint.exit_code == 0, lint.output


def test_upgrade_reads_stdin_and_reports_flags_and_broken_kernels() -> None:
    runner = CliRunner()
    out = runner.invoke(pyrecksc, ["upgrade", "-", "--write"], input="def h(n):\n\treturn n/2\n")
    assert out.exit_code == 0
    assert out.stdout == "def h(n):\n    return n/2\n"
    assert "<stdin>:2:10: PY201" in out.stderr
    bad = runner.invoke(pyrecksc, ["upgrade", "-"], input="def h(n):\n    exec 'n'\n")
    assert bad.exit_code == 1 and "PY300" in bad.stderr


def test_lint_stored_and_did_you_mean(r: redis.Redis, redis_url: str) -> None:
    r.set("func0", SHELL_TYPED)
    r.set("func1", SEED["func1"])
    runner = CliRunner()
    out = runner.invoke(pyrecksc, ["lint", "--stored", "--redis", redis_url])
    assert out.exit_code == 1
    assert "redis:func1:2:1: PK901" in out.stdout
    assert "func0 holds the two characters backslash-n" in out.stderr
    assert "func1 looks like Python 2: 'pyrecksc upgrade --stored func1'" in out.stderr
    typo = runner.invoke(pyrecksc, ["lint", "--stored", "fucn1", "--redis", redis_url])
    assert typo.exit_code == 1 and "did you mean func1?" in typo.stderr
    show = runner.invoke(pyrecksc, ["show", "fucn1", "--redis", redis_url])
    assert show.exit_code == 1 and "did you mean func1?" in show.stderr
    rm = runner.invoke(pyrecksc, ["rm", "func1", "fucn0", "--redis", redis_url])
    assert rm.exit_code == 1 and "did you mean func0?" in rm.stderr
    assert r.exists("func1")


@pytest.mark.slow
def test_the_seed_walkthrough_verbatim(r: redis.Redis, redis_url: str) -> None:
    # 1. The README's SET lines, typed at the prompt of pyrecks' own redis-cli.
    raw = redis.Redis.from_url(redis_url)
    raw.response_callbacks.clear()
    typed = io.StringIO("\n".join(SEED_LINES) + "\n" + f"SET start {json.dumps(START)}\n")
    printed = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(printed):
        repl(raw, "", stdin=typed)
    assert printed.getvalue().split() == ["OK"] * 4
    assert r.get("func0") == SEED["func0"].encode()
    # 2. The Python 2 kernels are upgraded in place.
    runner = CliRunner()
    out = runner.invoke(pyrecksc, ["upgrade", "--stored", "--write", "--redis", redis_url])
    assert out.exit_code == 0, out.output
    assert "3 upgraded, 1 unchanged" in out.stderr
    # 3. PYLD.pyrun start start -> pyrecks run start: the same lines the seed printed.
    px = Pyrecks(r)
    with px.local_vm(echo=False):
        info = px.wait(px.start("start"), timeout=60)
    assert info.status is ChainStatus.DONE, info.error
    lines = [e.text for e in px.logs(info.id) if e.kind == "out"]
    x0 = "start ...3"
    x1 = ("say hi to func1 with " + x0) * 3
    assert lines == [
        "func0 got start ...",
        "func0 says " + x0,
        "func1 got say hi to func1 with " + x0,
        "func1 says " + x1,
        "func2 got say hi to func2 with " + x1,
        "func2 says say hi to func2 with " + x1 + "-and-we-are-done",
    ]
    if PY27 is not None:  # what the originals print under Python 2.7, chained by hand
        out0 = _run(PY27, SEED["func0"], "func0", [["start ..."]])[0]
        out1 = _run(PY27, SEED["func1"], "func1", [["say hi to func1 with " + x0]])[0]
        out2 = _run(PY27, SEED["func2"], "func2", [["say hi to func2 with " + x1]])[0]
        assert (out0[0] + out1[0] + out2[0]).splitlines() == lines


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="no redis-cli on PATH")
def test_the_builtin_cli_splits_arguments_as_redis_cli_does(
    r: redis.Redis, redis_server: Any
) -> None:
    lines = [
        *SEED_LINES,
        r"""SET a 'it\'s' """,
        r"""SET b "tab\there \x41\x42 back\\slash \"q\"" """,
        "SET c plain",
    ]
    cli = ["redis-cli", "-p", str(redis_server.port)]
    subprocess.run(cli, input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    theirs = {k: r.get(k) for k in ("func0", "func1", "func2", "a", "b", "c")}
    r.flushall()
    raw = redis.Redis.from_url(redis_server.url)
    raw.response_callbacks.clear()
    repl(raw, "", stdin=io.StringIO("\n".join(lines) + "\n"))
    assert {k: r.get(k) for k in theirs} == theirs
    assert theirs["a"] == b"it's"


def test_builtin_redis_cli_command_runs_one_command(r: redis.Redis, redis_url: str) -> None:
    import pyrecks.cli.embedded_cmds  # noqa: F401 - registers redis-cli on pyrecks
    from pyrecks.cli.pyrecks_main import main

    runner = CliRunner()
    out = runner.invoke(main, ["redis-cli", "--builtin", "--redis", redis_url, "SET", "k", "v"])
    assert out.exit_code == 0 and out.stdout.strip() == "OK"
    out = runner.invoke(main, ["redis-cli", "--builtin", "--redis", redis_url, "GET", "k"])
    assert out.stdout.strip() == '"v"'
    out = runner.invoke(main, ["redis-cli", "--builtin", "--redis", redis_url, "NOPE"])
    assert out.exit_code == 1 and out.stdout.startswith("(error) ERR unknown command")
    typed = runner.invoke(
        main, ["redis-cli", "--builtin", "--redis", redis_url, "SET", "func9", SHELL_TYPED]
    )
    assert "hint: func9 holds the two characters backslash-n" in typed.stderr


def test_compile_reads_one_kernel_from_stdin(r: redis.Redis, redis_url: str) -> None:
    upgraded = upgrade_source(SEED["func1"], "func1").source
    runner = CliRunner()
    out = runner.invoke(pyrecksc, ["compile", "-", "--redis", redis_url], input=upgraded)
    assert out.exit_code == 0, out.output
    assert r.hget("func1", "source") == upgraded.encode()
    two = runner.invoke(
        pyrecksc,
        ["compile", "-", "--redis", redis_url],
        input="def a():\n    return ''\ndef b():\n    return ''\n",
    )
    assert two.exit_code == 1 and "pass --name NAME" in two.stderr
    named = runner.invoke(
        pyrecksc,
        ["compile", "-", "--name", "b", "--redis", redis_url],
        input="def a():\n    return ''\ndef b():\n    return ''\n",
    )
    assert named.exit_code == 0, named.output
    assert r.exists("b")
