"""``pyrecks ui`` in a real browser: Debian's Chromium, driven by Playwright's Python API.

The other UI tests read the HTML the server sends; these check what a user sees once the
page's script has run: the chain list and its filter, the picture laid out (fan-out above its
branches, the join below them), the live log filled by server-sent events while a step is
still running, and the retry button asking for the token and running the chain again.

Playwright cannot download its own browsers here, so it launches the system's ``chromium``
(``executable_path``); ``.ci/run`` installs it with apt-get.  Without chromium or Playwright
the tests are skipped, saying why — except in CI (``CI=true``), where they fail, so that the
browser tests cannot silently stop running.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

import pytest

from pyrecks.api import Pyrecks
from pyrecks.testing import RedisServer
from pyrecks.vm.records import ChainStatus
from tests.test_ui import TOKEN, VM, px, serve_ui  # noqa: F401  (px: a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test extra is not installed
    sync_playwright = None  # type: ignore[assignment]

#: How long Playwright's waits may take before a check fails (ms).  Waits poll the page
#: and return as soon as their condition holds; this only bounds a failing run.
WAIT_MS = 20_000

#: A step that prints, then hangs until its time limit fails it.  Kernels do no I/O, so
#: nothing outside can release a running step early: its own time limit ends it, which
#: also gives the retry button a failed chain.  The limit only bounds how long the live
#: line may take to reach the page (it takes well under a second).
HANG_SECONDS = 6
HANG = f"""
    import time

    PYRECKS_TIMEOUT = {HANG_SECONDS}
    PYRECKS_RETRIES = 0


    def hang(label: str):
        print("hanging", label)
        time.sleep(3600)
        return 'return "never"'
"""
#: The fix stored before pressing Retry.
FIXED = """
    def hang(label: str):
        print("fixed", label)
        return 'return "finished %s"' % label
"""


def _unavailable(reason: str) -> NoReturn:
    """Skip, saying why — or fail in CI, where the browser tests must run."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI (CI=true) must run the browser tests", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """Debian's chromium (``PYRECKS_CHROMIUM`` names another build)."""
    return (
        os.environ.get("PYRECKS_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("Playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        _unavailable(
            "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
        )
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def ui_server(redis_server: RedisServer) -> Iterator[str]:
    """One ``pyrecks ui --token`` for these tests (each test's ``px`` empties its Redis)."""
    with serve_ui(redis_server.url) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab with its own storage (the token is kept per tab)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
        assert errors == []  # the page's script ran without an exception
    finally:
        context.close()


def test_list_filter_and_picture(page: Page, px: Pyrecks, ui_server: str) -> None:  # noqa: F811
    page.goto(f"{ui_server}/")
    expect(page.locator("#chain-list")).to_contain_text("No chains match.")
    with px.local_vm(threads=4, **VM):
        fanned = px.start("split(3)")
        failed = px.start("boom(1)")
        for chain in (fanned, failed):
            px.wait(chain, timeout=30)
    # The open list picks up the new chains by itself (it reloads its rows every 3 s).
    rows = page.locator("table.list tbody tr")
    expect(rows.filter(has=page.locator(f'a[href="/chains/{fanned}"]'))).to_contain_text("done")
    expect(rows.filter(has=page.locator(f'a[href="/chains/{failed}"]'))).to_contain_text("failed")
    # Filter by status, as a user would: choose it and press Filter.
    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"[?&]status=failed"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-chain", failed)
    page.select_option("select[name=status]", "done")
    page.click("form.filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-chain", fanned)

    page.click(f'a[href="/chains/{fanned}"]')
    expect(page).to_have_url(f"{ui_server}/chains/{fanned}")
    picture = page.locator("#picture svg.chain-picture")
    nodes = picture.locator("g.node")
    expect(nodes).to_have_count(5)
    kinds = nodes.evaluate_all(
        "gs => gs.map(g => [g.dataset.kernel, g.classList[2], g.dataset.status])"
    )
    assert sorted(kinds) == sorted(
        [["split", "kind-fanout", "done"], ["merge", "kind-join", "done"]]
        + [["work", "kind-step", "done"]] * 3
    )
    expect(picture.locator('g.node[data-kernel="split"]')).to_contain_text("split · fan-out")
    expect(picture.locator('g.node[data-kernel="merge"]')).to_contain_text("merge · join")
    # Edges: one from the fan-out to each branch, one from each branch's end into the join.
    expect(picture.locator("path.edge.fan")).to_have_count(3)
    expect(picture.locator("path.edge.join")).to_have_count(3)
    for i in range(3):
        expect(picture.locator(f'a.branch-link[href="/chains/{fanned}.{i}"]')).to_have_count(1)
    # Laid out as drawn: the fan-out above its branches, side by side, the join below them.
    boxes = {
        f"{g['chain']}/{g['kernel']}": g
        for g in nodes.evaluate_all(
            """gs => gs.map(g => {
                 const r = g.getBoundingClientRect();
                 return {chain: g.dataset.chain, kernel: g.dataset.kernel,
                         x: r.x, y: r.y, width: r.width, height: r.height};
               })"""
        )
    }
    split, merge = boxes[f"{fanned}/split"], boxes[f"{fanned}/merge"]
    works = [boxes[f"{fanned}.{i}/work"] for i in range(3)]
    assert all(split["y"] + split["height"] < w["y"] for w in works)
    assert all(w["y"] + w["height"] < merge["y"] for w in works)
    assert works[0]["x"] + works[0]["width"] <= works[1]["x"] < works[2]["x"]
    expect(picture.locator("g.end.status-done").last).to_contain_text("result 30")
    # The live log replays the history of the chain and its branches, then ends.
    log = page.locator("#log tbody")
    expect(page.locator("#log-state")).to_have_text("chain ended")
    times = log.locator("tr").evaluate_all("rows => rows.map(r => Number(r.dataset.ts))")
    assert times == sorted(times) and len(times) >= 12  # branches' lines in time order too
    printed = log.locator("tr.kind-out td:last-child").all_inner_texts()
    assert sorted(printed) == sorted(
        ["splitting into 3", "merging [0, 10, 20] tag", "work 0", "work 1", "work 2"]
    )
    expect(page.locator("#outcome section.result pre")).to_have_text("30")


def test_live_log_and_retry(page: Page, px: Pyrecks, ui_server: str) -> None:  # noqa: F811
    px.store_kernel("hang", textwrap.dedent(HANG))
    # The default isolation (jail): the VM writes a long step's lines while it waits for it.
    with px.local_vm(echo=False):
        chain = px.start('hang("once")')
        page.goto(f"{ui_server}/chains/{chain}")
        line = page.locator("#log tbody tr.kind-out", has_text="hanging once")
        expect(line).to_be_visible()
        # The line is on the page and the step has not ended: it came while the step ran.
        info = px.status(chain)
        assert info.status is ChainStatus.RUNNING, info
        assert [e.kind for e in px.logs(chain)] == ["out"]
        expect(page.locator("#log-state")).to_have_text("live")
        expect(page.locator('#picture g.node[data-kernel="hang"]')).to_have_attribute(
            "data-status", "running"
        )
        # The time limit fails the step; the page follows without a reload.
        expect(page.locator("#summary .badge")).to_have_text("failed")
        expect(page.locator("#outcome section.failure")).to_contain_text("timeout")
        retry = page.locator('button[data-action="retry"]')
        expect(retry).to_be_enabled()

        px.store_kernel("hang", textwrap.dedent(FIXED))
        # Retry asks for the token; a wrong one is refused and nothing happens.
        answers = iter(["wrong token", TOKEN])
        page.on("dialog", lambda dialog: dialog.accept(next(answers)))
        retry.click()
        expect(page.locator(".action-result")).to_contain_text("retry refused: missing or wrong")
        assert px.status(chain).status is ChainStatus.FAILED
        retry.click()  # asked again (a refused token is forgotten): the right one this time
        expect(page.locator("#summary .badge")).to_have_text("done")
        expect(page.locator("#outcome section.result pre")).to_have_text('"finished once"')
        expect(page.locator("#log tbody tr.kind-out", has_text="fixed once")).to_be_visible()
        node = page.locator('#picture g.node[data-kernel="hang"]')
        expect(node).to_have_attribute("data-status", "done")
        expect(node).to_contain_text("attempt 2")
    assert px.result(chain) == "finished once"


def test_cancel_button_with_the_token_from_the_address(
    page: Page,
    px: Pyrecks,  # noqa: F811
    ui_server: str,
) -> None:
    chain = px.start("work(1)")  # no VM: it stays queued
    page.goto(f"{ui_server}/chains/{chain}?token={TOKEN}")
    expect(page).to_have_url(f"{ui_server}/chains/{chain}")  # taken out of the address
    cancel = page.locator('button[data-action="cancel"]')
    expect(cancel).to_be_enabled()
    expect(page.locator('button[data-action="retry"]')).to_be_disabled()
    cancel.click()  # no prompt: the token came with the address
    expect(page.locator(".action-result")).to_have_text("cancel: ok (cancelled)")
    expect(page.locator("#summary .badge")).to_have_text("cancelled")
    expect(cancel).to_be_disabled()
    assert px.status(chain).status is ChainStatus.CANCELLED


def _screenshot_script() -> ModuleType:
    """``docs/img/screenshot.py``, which regenerates the README's picture of a chain page."""
    path = Path(__file__).parent.parent / "docs" / "img" / "screenshot.py"
    spec = importlib.util.spec_from_file_location("pyrecks_docs_screenshot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_screenshot_of_the_demo_fan_out(
    page: Page,
    px: Pyrecks,  # noqa: F811
    ui_server: str,
    tmp_path: Path,
) -> None:
    script = _screenshot_script()
    script.prepare(px)
    chain = script.run_chain(px, **VM)
    out = tmp_path / "chain-page.png"
    script.shoot(page, ui_server, chain, out)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # The demo's word count in three branches, joined.
    kernels = page.locator("#picture g.node").evaluate_all("gs => gs.map(g => g.dataset.kernel)")
    assert sorted(kernels) == sorted(["wc_docs", "wc_total"] + ["wc_split", "wc_count"] * 3)
    # Every label fits inside its box, as rendered (long results are shortened).
    overflowing = page.locator("#picture g.node, #picture g.end").evaluate_all(
        """gs => gs.flatMap(g => {
             const box = g.querySelector("rect").getBBox();
             return Array.from(g.querySelectorAll("text")).filter(t => {
               const b = t.getBBox();
               return b.x < box.x || b.x + b.width > box.x + box.width;
             }).map(t => t.textContent);
           })"""
    )
    assert overflowing == []
