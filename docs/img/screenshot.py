"""Regenerate ``docs/img/chain-page.png``: a chain's page in ``pyrecks ui``, as Chromium draws it.

    .venv/bin/python docs/img/screenshot.py [OUT.png]

It starts a private Redis, stores the demo's kernels (those ``pyrecks demo`` runs, from
``kernels/``) and two small kernels of its own that fan the demo's word count out over three
documents and add the counts up, runs that chain on a VM in this process, serves the web view
on a free port and saves the chain's page as Debian's chromium renders it (driven by
Playwright; ``PYRECKS_CHROMIUM`` names another browser).  ``tests/test_browser.py`` runs
:func:`prepare`, :func:`run_chain` and :func:`shoot`, so this script cannot quietly rot.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from pyrecks.api import Pyrecks

OUT = Path(__file__).with_name("chain-page.png")
DOCUMENTS = {
    "doc:1": "The quick brown fox jumps over the lazy dog.",
    "doc:2": "A fox is quick; a dog is lazy; the fox wins the race.",
    "doc:3": "Redis keeps the words, the kernels count the words.",
}
#: The start of the pictured chain: one branch per document, then the join.
START = "wc_docs([{}])".format(", ".join(f'"{k}"' for k in DOCUMENTS))

#: Kernels of this picture only; the branches run the demo's wc_split -> wc_count.
KERNELS = {
    "wc_docs": '''
        """Count each document's words in a branch of its own, then add the counts up."""

        from pyrecks.kernel import branch, fanout, key


        def wc_docs(keys: list[str]) -> str:
            return fanout([branch("wc_split", key(k)) for k in keys], join=branch("wc_total"))
    ''',
    "wc_total": '''
        """The join: the branches' summaries in, one summary out."""

        from pyrecks.kernel import done


        def wc_total(summaries: list[dict]) -> str:
            words = sum(s["words"] for s in summaries)
            print(f"{len(summaries)} documents, {words} words")
            return done({"documents": len(summaries), "words": words})
    ''',
}


def chromium_path() -> str | None:
    """Debian's chromium, or the browser ``PYRECKS_CHROMIUM`` names."""
    return (
        os.environ.get("PYRECKS_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


def prepare(px: Pyrecks) -> None:
    """Store the demo's kernels and this picture's two, and the three documents."""
    from pyrecks.cli.demo import sample_kernels_dir

    for path in sorted(sample_kernels_dir().glob("*.py")):
        px.store_kernel(path.stem, path.read_text())
    for name, source in KERNELS.items():
        px.store_kernel(name, textwrap.dedent(source).lstrip())
    px.r.mset(DOCUMENTS)


def run_chain(px: Pyrecks, **vm: Any) -> str:
    """Run the fan-out chain to its end on a VM in this process; its id."""
    with px.local_vm(**{"threads": 4, "echo": False, **vm}):
        chain = px.start(START)
        info = px.wait(chain, timeout=60)
    if info.status.value != "done":
        raise RuntimeError(f"chain {chain} ended {info.status.value}: {info.error}")
    return chain


def shoot(page: Page, ui_url: str, chain: str, out: Path) -> None:
    """Open the chain's page, let its live log play to the end, save the top of the page
    (the summary, the picture, the result and the first rows of the log)."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1180, "height": 1000})
    page.goto(f"{ui_url}/chains/{chain}")
    expect(page.locator("#log-state")).to_have_text("chain ended")
    expect(page.locator("#outcome section.result")).to_be_visible()
    # Down to the end of a few log rows, not through the middle of one.
    row = page.locator("#log tbody tr").nth(5).bounding_box()
    width = page.viewport_size["width"] if page.viewport_size else 1180
    height = row["y"] + row["height"] + 2 if row else 1000
    clip = {"x": 0, "y": 0, "width": width, "height": height}
    page.screenshot(path=str(out), clip=clip, full_page=True, animations="disabled")


def main(argv: list[str]) -> int:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from pyrecks.api import Pyrecks
    from pyrecks.testing import RedisServer
    from pyrecks.testing.server import free_port
    from pyrecks.ui import create_app

    out = Path(argv[0]) if argv else OUT
    executable = chromium_path()
    if executable is None:
        print("no chromium: apt-get install chromium (or set PYRECKS_CHROMIUM)", file=sys.stderr)
        return 1
    with RedisServer() as server:
        px = Pyrecks(server.client())
        prepare(px)
        chain = run_chain(px)
        port = free_port()
        ui = uvicorn.Server(
            uvicorn.Config(create_app(px), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=ui.run, daemon=True)
        thread.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable)
                try:
                    page = browser.new_page()
                    while not ui.started:  # uvicorn sets it once it listens
                        thread.join(0.05)
                    shoot(page, f"http://127.0.0.1:{port}", chain, out)
                finally:
                    browser.close()
        finally:
            ui.should_exit = True
            thread.join(10)
    print(f"wrote {out} (chain {chain})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
