"""Every command and code block of README.md and docs/*.md, run: a doc that drifts turns CI red.

One test per page runs its blocks in order, as a reader following the page would, in a
scratch folder holding a copy of ``kernels/`` and ``bench/`` and a ``.venv`` that is the venv
running the tests (so ``.venv/bin/pyrecks`` and a bare ``pyrecks``, first on ``PATH``, are
the same program), with ``REDIS_URL`` naming a database of its own on the suite's Redis
(flushed first) and ``PYRECKS_HOME`` a fresh folder.  The pages run at the same time
(``PARALLEL_PAGES``): most of their time is spent waiting for the commands they start.

How blocks are run, by their language:

``console``, ``sh``, ``bash``
    Lines starting with ``$ `` are commands (a trailing ``\\`` continues one), run with bash.
    The lines after a command, up to the next, are what it prints (stdout and stderr as a
    terminal shows them); lines that start with a prompt such as ``pyrecks> `` are typed into
    it.  Output that is shown is compared: ``…`` stands for any text (a line of just ``…``
    for any number of lines), ``<name>`` for a word that varies — the first ``<id>`` captures
    it, and a later ``<id>``, in a command or in output, means that same value — and runs of
    spaces match runs of spaces (columns may widen).  A command must exit 0 unless what it
    shows is an error.  ``pyrecks vm`` and ``pyrecks ui`` serve until stopped: they run in the
    background until the block ends (as in another terminal), then get Ctrl-C.  A block
    without any ``$ `` line is a list of commands to copy.
``python``, ``pycon``
    Executed, in one namespace per page.  A block whose first line is ``# some/path.py`` is
    that file: it is written into the scratch folder (later commands use it) and, if the
    repository has that file, must be the same code (docstrings and comments aside).  Blocks
    of ``>>>`` lines are doctests (their output is compared).
``json``
    Parsed.
``yaml``
    Pre-commit configurations: each hook id must be one ``.pre-commit-hooks.yaml`` defines,
    and its ``files`` pattern must match the sample kernels.
``text``
    Diagrams, grammar notation and recorded results: not run, and never holding a ``$ ``
    command.  With ``<!-- doc-test: parse -->`` before it, every line is a return string
    (``# comment`` after it): it must parse, or fail with the message its ``# error: ...``
    comment names.

An HTML comment on the line before a block changes how it runs, visibly:
``<!-- doc-test: skip (REASON) -->`` skips it (only for what cannot run in a test: a second
machine, a fresh venv from PyPI); ``<!-- doc-test: start (REASON) -->`` starts every command
of the block at once and checks that each is still running, or has finished well, after
``START_SECONDS`` (benchmarks that take minutes).  ``<!-- doc-test: embedded (REASON) -->``
anywhere in a page runs the whole page against the embedded server (no ``REDIS_URL``).
``test_blocks_not_run_in_full`` lists every skipped or only started block as a skip.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from pyrecks.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SHELL = {"console", "sh", "bash", "shell"}
LANGUAGES = SHELL | {"python", "pycon", "json", "yaml", "text"}
START_SECONDS = 6.0
#: Pages run at the same time (most of their time is spent waiting for processes).
PARALLEL_PAGES = 4
COMMAND_TIMEOUT = 120.0
#: How long a command whose output does not match yet is retried while a background
#: process (a VM) runs: what it shows may take a moment to appear (a VM's heartbeat).
SETTLE_SECONDS = 30.0
SERVES = re.compile(r"^(?:\w+=\S*\s+)*(?:\S*/)?pyrecks\s+(?:vm|ui)\b")
PROMPT = re.compile(r"^([\w.:-]+> )")
PLACEHOLDER = re.compile(r"<([a-z][a-z0-9_-]*)>")
BLOCK_MARKERS = ("skip", "start", "parse")
MARKER = re.compile(r"<!--\s*doc-test:\s*([a-z-]+)\s*(?:\((.*)\))?\s*-->")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str = ""
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of a page, with the marker comment just before each."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.search(lines[k]) if k >= 0 else None
        if marker and marker[1] not in BLOCK_MARKERS:
            marker = None
        found.append(
            Block(
                page,
                i + 1,
                lang,
                "\n".join(body) + "\n",
                marker[1] if marker else "",
                (marker[2] or "") if marker else "",
            )
        )
        i = j + 1
    return found


def page_markers(page: str) -> set[str]:
    return {m[1] for m in MARKER.finditer((ROOT / page).read_text(encoding="utf-8"))}


# -- output matching ------------------------------------------------------------------------


def _line_pattern(line: str, known: dict[str, str], seen: set[str]) -> str:
    out = []
    pos = 0
    for m in re.finditer(r"…|<([a-z][a-z0-9_-]*)>| +", line):
        out.append(re.escape(line[pos : m.start()]))
        token = m[0]
        if token == "…":
            out.append(r"[^\n]*?")
        elif token.startswith(" "):
            out.append(" +")
        elif m[1] in known:
            out.append(re.escape(known[m[1]]))
        elif m[1] in seen:
            out.append(f"(?P={m[1]})")
        else:
            seen.add(m[1])
            out.append(rf"(?P<{m[1]}>[^\s]+?)")
        pos = m.end()
    out.append(re.escape(line[pos:]))
    return "".join(out)


def _tidy(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def match_output(expected: str, actual: str, known: dict[str, str]) -> dict[str, str] | None:
    """The placeholders' values if ``actual`` is what ``expected`` shows, else ``None``."""
    seen: set[str] = set()
    pattern = []
    for line in _tidy(expected).splitlines():
        if line.strip() == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(_line_pattern(line, known, seen))
            pattern.append(r"\n")
    found = re.fullmatch("".join(pattern), _tidy(actual))
    return None if found is None else {k: v for k, v in found.groupdict().items() if v}


def test_the_matcher_understands_the_placeholders() -> None:
    known: dict[str, str] = {}
    assert match_output("<id>\n", "0b5e91\n", known) == {"id": "0b5e91"}
    assert match_output("chain <id> done  …ms\n", "chain ab  done   30ms\n", known) is not None
    assert match_output("a\n…\nz\n", "a\nb\nc\nz\n", known) == {}
    assert match_output("a\n…\nz\n", "a\nz\n", known) == {}
    assert match_output("a\nz\n", "a\nb\nz\n", known) is None
    assert match_output("<id> and <id>\n", "x and y\n", known) is None
    assert match_output("<id>\n", "x y\n", known) is None
    assert match_output("see <id>\n", "see 7\n", {"id": "7"}) == {}
    assert match_output("see <id>\n", "see 8\n", {"id": "7"}) is None


# -- running a page -------------------------------------------------------------------------


@dataclass
class Command:
    text: str
    line: int
    output: list[str] = field(default_factory=list)
    stdin: list[str] = field(default_factory=list)


def commands(block: Block) -> list[Command]:
    lines = block.text.splitlines()
    if not any(line.startswith("$ ") or line == "$" for line in lines):
        # A list of commands to copy, without prompts or output.
        return [
            Command(line, block.line + 1 + n)
            for n, line in enumerate(lines)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    found: list[Command] = []
    current: Command | None = None
    continued = False
    for n, line in enumerate(lines):
        if continued and current is not None:
            current.text += "\n" + line
            continued = line.endswith("\\")
            continue
        if line.startswith("$ "):
            current = Command(line[2:], block.line + 1 + n)
            found.append(current)
            continued = line.endswith("\\")
        elif current is None:
            assert not line.strip() or line.startswith("#"), (
                f"{block.where}: output before the first command: {line!r}"
            )
        elif PROMPT.match(line):
            current.stdin.append(line[PROMPT.match(line).end() :])  # type: ignore[union-attr]
        else:
            current.output.append(line)
    return found


class Page:
    """Runs one page's blocks in order, sharing a folder, an environment and placeholders."""

    def __init__(self, page: str, workdir: Path, env: dict[str, str]) -> None:
        self.page = page
        self.workdir = workdir
        self.env = env
        self.values: dict[str, str] = {}
        self.background: list[tuple[Command, subprocess.Popen[str], Path]] = []
        self.log: list[str] = []
        self.worker: subprocess.Popen[str] | None = None
        self.worker_log = workdir.parent / "python.log"

    def close(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(OSError):
                self.worker.stdin.close()  # type: ignore[union-attr]
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()

    # shell -------------------------------------------------------------------------------

    def substitute(self, command: Command, block: Block) -> str:
        def value(m: re.Match[str]) -> str:
            assert m[1] in self.values, (
                f"{block.where}: {command.text!r} uses <{m[1]}> before any output showed it"
            )
            return self.values[m[1]]

        return PLACEHOLDER.sub(value, command.text)

    def popen(self, text: str, log: Path, stdin: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-c", text],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(self, text: str, stdin: str | None) -> tuple[int, str]:
        done = subprocess.run(
            ["bash", "-c", text],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        return done.returncode, done.stdout

    def shell(self, block: Block) -> None:
        if block.marker == "start":
            self.start_only(block)
            return
        try:
            for command in commands(block):
                text = self.substitute(command, block)
                stdin = "".join(line + "\n" for line in command.stdin) if command.stdin else None
                if SERVES.match(text):
                    self.serve(command, text, block)
                    continue
                self.one(command, text, stdin, block)
        finally:
            self.stop_background(block)

    def one(self, command: Command, text: str, stdin: str | None, block: Block) -> None:
        expected = "\n".join(command.output)
        began = time.monotonic()
        deadline = began + (SETTLE_SECONDS if self.background else 0)
        while True:
            code, out = self.run(text, stdin)
            found = match_output(expected, out, self.values) if expected.strip() else {}
            if found is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        where = f"{self.page}:{command.line}: $ {command.text}"
        self.log.append(f"{time.monotonic() - began:6.2f}s  {where}")
        assert found is not None, f"{where}\n--- the doc shows ---\n{expected}\n--- it printed ---\n{out}"
        if code != 0:
            assert "error" in expected.lower(), f"{where}\nexit status {code}:\n{out}"
        self.values.update(found)

    def serve(self, command: Command, text: str, block: Block) -> None:
        log = self.workdir.parent / f"serve-{len(self.background)}-{command.line}.log"
        process = self.popen(text, log)
        self.background.append((command, process, log))
        deadline = time.monotonic() + 30
        while not log.read_text().strip() and process.poll() is None:
            assert time.monotonic() < deadline, f"{block.where}: {text!r} printed nothing in 30 s"
            time.sleep(0.1)
        time.sleep(0.3)
        assert process.poll() is None, (
            f"{self.page}:{command.line}: $ {command.text} exited ({process.returncode}):\n"
            + log.read_text()
        )

    def stop_background(self, block: Block) -> None:
        failures = []
        while self.background:
            command, process, log = self.background.pop()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                failures.append(f"{self.page}:{command.line}: Ctrl-C did not stop it in 30 s")
            out = log.read_text()
            if command.output and match_output("\n".join(command.output), out, self.values) is None:
                failures.append(
                    f"{self.page}:{command.line}: $ {command.text}\n--- the doc shows ---\n"
                    + "\n".join(command.output)
                    + f"\n--- it printed ---\n{out}"
                )
        assert not failures, "\n".join(failures)

    def start_only(self, block: Block) -> None:
        started = []
        for n, command in enumerate(commands(block)):
            log = self.workdir.parent / f"start-{block.line}-{n}.log"
            started.append((command, self.popen(self.substitute(command, block), log), log))
        time.sleep(START_SECONDS)
        failures = []
        for command, process, log in started:
            code = process.poll()
            if code is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            elif code != 0:
                failures.append(
                    f"{self.page}:{command.line}: $ {command.text}\nexit status {code}:\n"
                    + log.read_text()[-3000:]
                )
        assert not failures, "\n".join(failures)

    # python ------------------------------------------------------------------------------

    def python(self, block: Block) -> None:
        first = block.text.splitlines()[0] if block.text.strip() else ""
        path = re.fullmatch(r"#\s*([\w./-]+\.py)\s*", first)
        if path:
            self.file(block, path[1])
        elif re.search(r"^>>> ", block.text, re.M):
            self.ask("doctest", block.text, block.where, line=block.line)
        else:
            self.ask("exec", block.text, block.where)

    def ask(self, kind: str, code: str, where: str, **extra: Any) -> None:
        """Run code in the page's Python process (one namespace for the page)."""
        if self.worker is None:
            self.worker = subprocess.Popen(
                [sys.executable, "-c", WORKER],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.worker_log.open("w"),
                text=True,
            )
        assert self.worker.stdin is not None and self.worker.stdout is not None
        request = {"kind": kind, "code": code, "where": where, "page": self.page, **extra}
        self.worker.stdin.write(json.dumps(request) + "\n")
        self.worker.stdin.flush()
        ready, _, _ = select.select([self.worker.stdout], [], [], COMMAND_TIMEOUT)
        answer = self.worker.stdout.readline() if ready else ""
        printed = self.worker_log.read_text()[-4000:]
        assert answer, f"{where}: no answer from Python in {COMMAND_TIMEOUT:g} s:\n{printed}"
        reply = json.loads(answer)
        assert reply["ok"], f"{where}:\n{reply['report']}\n--- it printed ---\n{printed}"

    def file(self, block: Block, relative: str) -> None:
        source = block.text.split("\n", 1)[1]
        shipped = ROOT / relative
        if shipped.exists():
            assert _code(source) == _code(shipped.read_text(encoding="utf-8")), (
                f"{block.where}: the block is not the code of {relative}"
            )
        target = self.workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
        self.ask("module", source, block.where, path=str(target), name=Path(relative).stem)

    # the rest ----------------------------------------------------------------------------

    def other(self, block: Block) -> None:
        if block.lang == "json":
            json.loads(block.text)
        elif block.lang == "yaml":
            hooks = re.findall(r"^\s*- id: (\S+)", (ROOT / ".pre-commit-hooks.yaml").read_text(), re.M)
            ids = re.findall(r"- id: (\S+)", block.text)
            assert ids and set(ids) <= set(hooks), f"{block.where}: unknown hook ids {ids}"
            for pattern in re.findall(r"files: (\S+)", block.text):
                assert re.search(pattern, "kernels/func0.py"), f"{block.where}: {pattern}"
        elif block.lang == "text":
            assert not re.search(r"^\$ ", block.text, re.M), (
                f"{block.where}: a command in a text block: make it a console block"
            )
            if block.marker == "parse":
                self.return_strings(block)

    def return_strings(self, block: Block) -> None:
        from pyrecks.compiler.parser import parse
        from pyrecks.errors import ReturnStringError

        for n, line in enumerate(block.text.splitlines()):
            text, _, comment = line.partition("  #")
            if not text.strip():
                continue
            where = f"{self.page}:{block.line + 1 + n}: {text.strip()!r}"
            error = re.match(r"\s*error:\s*(.*)", comment)
            if error:
                with pytest.raises(ReturnStringError) as raised:
                    parse(text.strip())
                assert error[1].strip() in str(raised.value), f"{where}: {raised.value}"
            else:
                parse(text.strip())

    def run_block(self, block: Block) -> None:
        if block.marker == "skip":
            self.log.append(f"skipped  {block.where}: {block.reason}")
            return
        began = time.monotonic()
        try:
            self._run_block(block)
        finally:
            self.log.append(f"{time.monotonic() - began:6.2f}s  {block.where} ({block.lang})")

    def _run_block(self, block: Block) -> None:
        if block.lang in SHELL:
            self.shell(block)
        elif block.lang in ("python", "pycon"):
            self.python(block)
        else:
            self.other(block)


#: The page's Python process: runs the page's python blocks in one namespace, one JSON
#: request a line on stdin, one JSON answer a line on its own copy of stdout (what the code
#: prints goes to stderr, a log file).
WORKER = r"""
import doctest, json, os, sys, traceback

answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
namespace = {"__name__": "__doc_page__"}
for line in sys.stdin:
    request = json.loads(line)
    report = []
    ok = True
    try:
        if request["kind"] == "exec":
            exec(compile(request["code"], request["where"], "exec"), namespace)
        elif request["kind"] == "module":
            module = {"__name__": request["name"], "__file__": request["path"]}
            exec(compile(request["code"], request["path"], "exec"), module)
        else:
            test = doctest.DocTestParser().get_doctest(
                request["code"], namespace, request["where"], request["page"], request["line"]
            )
            runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
            runner.run(test, out=report.append, clear_globs=False)
            ok = runner.failures == 0
    except BaseException:
        ok = False
        report.append(traceback.format_exc())
    sys.stdout.flush()
    answers.write(json.dumps({"ok": ok, "report": "".join(report)}) + "\n")
    answers.flush()
"""


def _code(source: str) -> str:
    """The code of a module without its docstrings: what a file block must share."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body.pop(0)
    return ast.dump(tree)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    # Short: the embedded server's unix socket lives in PYRECKS_HOME, and socket paths are
    # limited to ~100 characters.
    base = Path(tempfile.mkdtemp(prefix="pyd-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _environment(home: Path, redis_url: str | None) -> dict[str, str]:
    scripts = sysconfig.get_path("scripts")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "PYRECKS_HOME") and not key.startswith("PYTEST")
    }
    env.update(
        PATH=f"{scripts}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        PYRECKS_HOME=str(home),
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        COLUMNS="80",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def _workdir(base: Path) -> Path:
    work = base / "w"
    work.mkdir()
    for folder in ("kernels", "bench"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if sys.prefix != sys.base_prefix:
        # The venv itself (its pyvenv.cfg makes .venv/bin/python find its packages).
        (work / ".venv").symlink_to(sys.prefix)
    else:
        (work / ".venv").mkdir()
        (work / ".venv" / "bin").symlink_to(sysconfig.get_path("scripts"))
    return work


@dataclass
class Outcome:
    log: list[str]
    error: BaseException | None
    seconds: float


def run_page(page: str, redis_url: str) -> Outcome:
    """Run one page in a scratch folder of its own; never raises."""
    began = time.monotonic()
    embedded = "embedded" in page_markers(page)
    runner: Page | None = None
    with scratch() as base:
        home = base / "h"
        try:
            runner = Page(page, _workdir(base), _environment(home, None if embedded else redis_url))
            for block in blocks(page):
                runner.run_block(block)
        except BaseException as exc:  # reported by the page's test
            return Outcome(runner.log if runner else [], exc, time.monotonic() - began)
        finally:
            if runner is not None:
                runner.close()
            from pyrecks.connection import EmbeddedServer

            EmbeddedServer(home).stop()
    return Outcome(runner.log, None, time.monotonic() - began)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, redis_server: RedisServer) -> dict[str, Outcome]:
    """Every selected page, run at once: each has its own folder, its own database on the
    suite's Redis (``/1``, ``/2``, …, flushed first) or its own embedded server."""
    selected = [
        page
        for page in PAGES
        if any(item.name == f"test_page[{page}]" for item in request.session.items)
    ]
    urls = {}
    for n, page in enumerate(selected, start=1):
        assert n < 16, "more pages than the server has databases"
        urls[page] = redis_server.url.rsplit("/", 1)[0] + f"/{n}"
        redis.Redis.from_url(urls[page]).flushdb()
    with ThreadPoolExecutor(max_workers=PARALLEL_PAGES) as pool:
        futures = {page: pool.submit(run_page, page, urls[page]) for page in selected}
        return {page: future.result() for page, future in futures.items()}


@pytest.mark.parametrize("page", PAGES)
def test_page(page: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[page]
    print("\n".join(outcome.log))  # shown with -s, and with a failure
    print(f"{outcome.seconds:6.2f}s  {page} (the pages run at the same time)")
    if outcome.error is not None:
        raise outcome.error


def test_every_block_has_a_language_the_doc_tests_know() -> None:
    unknown = [
        f"{b.where}: {b.lang or '(none)'}"
        for page in PAGES
        for b in blocks(page)
        if b.lang not in LANGUAGES
    ]
    assert not unknown, f"give these blocks one of {sorted(LANGUAGES)}: {unknown}"


def test_markers_are_known_and_say_why() -> None:
    for page in PAGES:
        for b in blocks(page):
            if b.marker:
                assert b.marker in BLOCK_MARKERS, f"{b.where}: {b.marker}"
                assert b.marker == "parse" or b.reason.strip(), f"{b.where}: say why"


NOT_RUN = [b for page in PAGES for b in blocks(page) if b.marker in ("skip", "start")]


@pytest.mark.parametrize("block", NOT_RUN, ids=[b.where for b in NOT_RUN])
def test_blocks_not_run_in_full(block: Block) -> None:
    """Listed in pytest's summary (-ra): what the doc tests do not run to the end, and why."""
    what = "skipped" if block.marker == "skip" else f"only started for {START_SECONDS:g} s"
    pytest.skip(f"{block.where} {what}: {block.reason}")


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    readme = [b for b in blocks("README.md") if "pytest" in b.text and b.lang in SHELL]
    assert readme and all(
        b.text.strip() in (ROOT / ".ci" / "run").read_text() for b in readme
    ), "README's test command must be the one .ci/run runs verbatim"

