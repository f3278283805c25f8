"""``pyrecks ui``: the web view over a real Redis and real VMs (Starlette's TestClient).

The last test starts the real server (``pyrecks ui`` under uvicorn, in a subprocess);
``tests/test_browser.py`` drives that server from a real browser (Chromium, Playwright).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from pyrecks.api import Pyrecks
from pyrecks.ui import create_app

try:  # Starlette 1.x's TestClient is built on httpx2 (and warns when given httpx)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older Starlette
    import httpx  # type: ignore[no-redef]
from pyrecks.vm.records import ChainStatus
from tests.vm_helpers import raw_kernel

VM = {"echo": False, "isolation": "thread"}
TOKEN = "correct horse battery staple"

KERNELS = {
    "split": """
        from pyrecks.kernel import branch, fanout

        def split(n: int):
            print("splitting into", n)
            return fanout([branch("work", i) for i in range(n)], join=branch("merge", "tag"))
    """,
    "work": """
        def work(i: int):
            print("work", i)
            return 'return %d' % (i * 10)
    """,
    "merge": """
        def merge(results: list, tag: str):
            print("merging", results, tag)
            return 'return %d' % sum(results)
    """,
    "boom": """
        def boom(x: int):
            raise ValueError("<b>bad</b> input %d" % x)
    """,
    "spin": """
        def spin(gate: str, n: int):
            if gate == "open":
                return 'return %d' % n
            return 'spin("@gate", %d)' % (n + 1)
    """,
    # A long step that prints, waits, prints: its first line must reach the log at once.
    "slow": """
        import time

        def slow(gate: str):
            print("slow step begins")
            time.sleep(1.5)
            print("slow step ends")
            return 'return "slept"'
    """,
}


@pytest.fixture
def px(r: redis.Redis) -> Pyrecks:
    for name, source in KERNELS.items():
        raw_kernel(r, name, source)
    return Pyrecks(r)


def _client(px: Pyrecks, token: str | None = None) -> TestClient:
    return TestClient(create_app(px, token))


def _events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a server-sent event stream."""
    event, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


def _run(px: Pyrecks, call: str, **vm: Any) -> str:
    with px.local_vm(**{**VM, **vm}):
        chain = px.start(call)
        px.wait(chain, timeout=30)
    return chain


# -- chains: list, filters, paging -----------------------------------------------------


def test_chain_list_filters_by_status_kernel_and_age(px: Pyrecks) -> None:
    with px.local_vm(threads=4, **VM):
        done = [px.start(f"work({i})") for i in range(3)]
        failed = px.start("boom(1)")
        for chain in [*done, failed]:
            px.wait(chain, timeout=30)
    queued = px.start('spin("@gate", 0)')  # no VM runs it
    client = _client(px)

    def ids(**params: Any) -> list[str]:
        got = client.get("/api/chains", params=params)
        assert got.status_code == 200, got.text
        return [c["id"] for c in got.json()["chains"]]

    assert set(ids()) == {*done, failed, queued}
    assert ids()[0] == queued  # newest first
    assert set(ids(status="done")) == set(done)
    assert ids(status="failed") == [failed]
    assert ids(status="queued", kernel="spin") == [queued]
    assert set(ids(kernel="work")) == set(done)
    assert ids(kernel="nope") == []
    # An old chain: its index entry says it was created two hours ago.
    px.r.zadd(px.keyspace.chains, {done[0]: time.time() - 7200})
    assert done[0] not in ids(age="1h")
    assert done[0] in ids(age="3h")
    assert client.get("/api/chains", params={"age": "soon"}).status_code == 400
    assert client.get("/api/chains", params={"status": "bogus"}).status_code == 400

    page = client.get("/", params={"status": "done"})
    assert page.status_code == 200
    for chain in done:
        assert f'data-chain="{chain}"' in page.text
    assert f'data-chain="{failed}"' not in page.text
    assert client.get("/", params={"age": "soon"}).status_code == 400


def test_chain_list_pages(px: Pyrecks) -> None:
    chains = [px.start(f"work({i})") for i in range(7)]  # queued: no VM
    newest_first = list(reversed(chains))
    client = _client(px)
    seen: list[str] = []
    for page in (1, 2, 3):
        got = client.get("/api/chains", params={"per_page": 3, "page": page}).json()
        seen += [c["id"] for c in got["chains"]]
        assert got["has_next"] is (page < 3)
    assert seen == newest_first
    html = client.get("/", params={"per_page": 3, "page": 2}).text
    assert 'rel="prev"' in html and 'rel="next"' in html
    assert "page=3" in html and "per_page=3" in html
    last = client.get("/", params={"per_page": 3, "page": 3}).text
    assert 'rel="next"' not in last
    assert f'data-chain="{newest_first[-1]}"' in last


# -- a chain's page --------------------------------------------------------------------


def test_chain_page_draws_steps_branches_and_join(px: Pyrecks) -> None:
    chain = _run(px, "split(3)", threads=4)
    assert px.status(chain).status is ChainStatus.DONE
    client = _client(px)
    page = client.get(f"/chains/{chain}")
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    html = page.text
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chain-picture"' in html
    kernels = re.findall(r'<g class="node status-(\w+) kind-(\w+)"[^>]*data-kernel="(\w+)"', html)
    assert ("done", "fanout", "split") in kernels
    assert ("done", "join", "merge") in kernels
    assert kernels.count(("done", "step", "work")) == 3
    for i in range(3):
        assert f'href="/chains/{chain}.{i}"' in html  # each branch links to its own page
    assert "result 30" in html  # the end of the picture
    assert "<h2>Result</h2><pre>30</pre>" in html
    assert f'data-events="/chains/{chain}/events"' in html
    assert "data-action" not in html  # read-only: no buttons
    svg = client.get(f"/chains/{chain}/picture")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.count('class="node ') == 5
    tree = client.get(f"/api/chains/{chain}/tree").json()
    assert [s["kernel"] for s in tree["steps"]] == ["split", "merge"]
    assert len(tree["steps"][0]["branches"]) == 3
    branch = client.get(f"/chains/{chain}.1")
    assert branch.status_code == 200 and f'href="/chains/{chain}"' in branch.text  # parent
    logs = client.get(f"/api/chains/{chain}/logs").json()
    assert [e["kind"] for e in logs][:2] == ["out", "fanout"]


def test_failed_chain_page_shows_error_and_traceback_escaped(px: Pyrecks) -> None:
    chain = _run(px, "boom(3)")
    client = _client(px, TOKEN)
    html = client.get(f"/chains/{chain}").text
    assert "kernel_error" in html
    assert "&lt;b&gt;bad&lt;/b&gt; input 3" in html
    assert "<b>bad</b>" not in html
    assert "class=traceback" in html and "ValueError" in html
    assert re.search(r'<g class="node status-failed kind-step"[^>]*data-kernel="boom"', html)
    assert 'data-action="retry"' in html and 'data-action="cancel"' in html
    summary = client.get(f"/chains/{chain}/summary").text
    assert "failed" in summary and "ValueError" in summary


def test_unknown_chain_and_kernel_are_404(px: Pyrecks) -> None:
    client = _client(px)
    assert client.get("/chains/nope").status_code == 404
    assert client.get("/chains/nope/picture").status_code == 404
    assert client.get("/chains/nope/events").status_code == 404
    assert client.get("/api/chains/nope").status_code == 404
    assert client.get("/kernels/nope").status_code == 404


# -- live log (server-sent events) -------------------------------------------------------


def test_events_of_a_finished_chain_end_with_branch_logs(px: Pyrecks) -> None:
    chain = _run(px, "split(2)", threads=4)
    client = _client(px)
    with client.stream("GET", f"/chains/{chain}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response))
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["status"] == "done"
    assert "status" in kinds
    logs = [d for e, d in events if e == "log"]
    printed = {(d["chain"], d["text"]) for d in logs if d["kind"] == "out"}
    assert (chain, "splitting into 2") in printed
    assert (f"{chain}.0", "work 0") in printed and (f"{chain}.1", "work 1") in printed
    assert any(d["kind"] == "end" and d["chain"] == chain for d in logs)


def test_events_stream_prints_while_the_step_runs(px: Pyrecks) -> None:
    client = _client(px)
    # The default isolation (jail): the VM writes a long step's lines while it waits for it.
    with px.local_vm(echo=False):
        chain = px.start('slow("x")')
        with client.stream("GET", f"/chains/{chain}/events") as response:
            for event, data in _events(response):
                if event == "log":
                    # The first entry to arrive is the first line, not the step's end.
                    assert (data["kind"], data["text"]) == ("out", "slow step begins")
                    assert data["attempt"]
                    first_seen = data
                    break
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    entries = list(px.logs(chain))
    assert [e.text for e in entries if e.kind == "out"] == ["slow step begins", "slow step ends"]
    (step,) = [e for e in entries if e.kind == "step"]
    # It was written while the step ran (the kernel sleeps 1.5 s after printing it).
    assert step.ts - first_seen["ts"] >= 1.0


# -- buttons and the token -------------------------------------------------------------


def test_buttons_refused_without_token(px: Pyrecks) -> None:
    chain = px.start("work(1)")  # queued, no VM
    read_only = _client(px)
    got = read_only.post(f"/api/chains/{chain}/cancel")
    assert got.status_code == 403
    got = read_only.post(f"/api/chains/{chain}/cancel", headers={"X-Pyrecks-Token": TOKEN})
    assert got.status_code == 403  # no token configured: nothing can act
    assert px.status(chain).status is ChainStatus.QUEUED

    client = _client(px, TOKEN)
    assert client.post(f"/api/chains/{chain}/cancel").status_code == 401
    wrong = client.post(f"/api/chains/{chain}/cancel", headers={"X-Pyrecks-Token": "nope"})
    assert wrong.status_code == 401
    assert px.status(chain).status is ChainStatus.QUEUED
    ok = client.post(f"/api/chains/{chain}/cancel", headers={"X-Pyrecks-Token": TOKEN})
    assert ok.status_code == 200 and ok.json() == {"ok": True, "status": "cancelled"}
    again = client.post(f"/api/chains/{chain}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 409  # already cancelled
    assert client.get(f"/api/chains/{chain}/retry").status_code == 405


def test_retry_button_requeues_a_failed_chain(px: Pyrecks, r: redis.Redis) -> None:
    chain = _run(px, "boom(2)")
    client = _client(px, TOKEN)
    assert client.post(f"/api/chains/{chain}/retry").status_code == 401
    raw_kernel(r, "boom", "def boom(x: int):\n    return 'return %d' % x\n")  # the fix
    got = client.post(f"/api/chains/{chain}/retry", headers={"X-Pyrecks-Token": TOKEN})
    assert got.status_code == 200 and got.json()["status"] == "queued"
    with px.local_vm(**VM):
        assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    assert px.result(chain) == 2
    html = client.get(f"/chains/{chain}").text
    assert "attempt 2" in html


# -- VMs and kernels ---------------------------------------------------------------------


def test_vms_page_shows_threads_running_chains_and_isolation(px: Pyrecks, r: redis.Redis) -> None:
    r.set("gate", "closed")
    client = _client(px)
    with px.local_vm(name="ui-test-vm", threads=3, **VM):
        chain = px.start('spin("@gate", 0)')
        for entry in px.logs(chain, follow=True):
            if entry.step >= 2:
                break
        vms = client.get("/api/vms").json()
        (vm,) = [v for v in vms if v["name"] == "ui-test-vm"]
        assert vm["alive"] and vm["threads"] == 3 and vm["isolation"] == "thread"
        assert vm["running"] == [chain]
        html = client.get("/vms").text
        assert 'data-vm="ui-test-vm"' in html and f'href="/chains/{chain}"' in html
        assert "thread" in html and "ago" in html
        r.set("gate", "open")
        px.wait(chain, timeout=30)
    (vm,) = [v for v in client.get("/api/vms").json() if v["name"] == "ui-test-vm"]
    assert not vm["alive"] and vm["running"] == []


def test_kernels_page_shows_versions_and_lint(px: Pyrecks) -> None:
    px.store_kernel("hop", "def hop(n: int):\n    return 'hop(%d)' % n\n")
    px.store_kernel("hop", "def hop(n: int):\n    return 'hop(%d)' % (n + 1)\n")
    client = _client(px)
    kernels = {k["name"]: k for k in client.get("/api/kernels").json()}
    assert kernels["hop"]["version"] == 2 and kernels["hop"]["compiled"]
    assert [f["code"] for f in kernels["hop"]["lint"]] == ["PK602"]
    html = client.get("/kernels").text
    assert 'data-kernel="hop"' in html and "1 warning" in html
    page = client.get("/kernels/hop").text
    assert "PK602" in page and "return &#x27;hop(%d)&#x27; % (n + 1)" in page
    # A seed-style kernel (plain SET, never compiled) is checked when shown.
    detail = client.get("/api/kernels/spin").json()
    assert detail["seed_style"] and detail["checked_now"] and not detail["compiled"]


def test_static_assets_and_trusted_hosts(px: Pyrecks) -> None:
    client = _client(px)
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "EventSource" in js.text
    assert client.get("/static/app.css").status_code == 200
    icon = client.get("/static/favicon.svg")  # linked by every page: no 404 in the console
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
    assert 'rel="icon" href="/static/favicon.svg"' in client.get("/vms").text
    local_only = TestClient(create_app(px, allowed_hosts=["127.0.0.1", "localhost"]))
    assert local_only.get("/").status_code == 400  # Host: testserver
    assert local_only.get("/", headers={"host": "127.0.0.1:8765"}).status_code == 200


# -- the real server, and a real browser ---------------------------------------------------


@contextmanager
def serve_ui(redis_url: str) -> Iterator[str]:
    """``pyrecks ui --token`` in a subprocess on a free port; yields its base URL."""
    code = (
        "import sys\n"
        "from pyrecks.cli.pyrecks_main import main\n"
        "from pyrecks.ui.cli import ui\n"
        "main.add_command(ui)\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "PYRECKS_UI_LOG_LEVEL": "info", "PYRECKS_UI_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "ui", "--port", "0", "--redis", redis_url],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    url = None
    seen: list[str] = []
    for line in proc.stderr:  # uvicorn says where it listens once the socket is bound
        seen.append(line)
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
            break
    # Keep reading what it says (kept for a failing assertion): a full pipe would stall it.
    drain = threading.Thread(target=lambda: seen.extend(proc.stderr or ()), daemon=True)
    drain.start()
    try:
        assert url is not None, "".join(seen)
        assert "buttons need the token" in "".join(seen)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def ui_server(redis_url: str) -> Iterator[str]:
    with serve_ui(redis_url) as url:
        yield url


def test_ui_command_serves_the_pages(px: Pyrecks, ui_server: str) -> None:
    chain = _run(px, "split(2)", threads=4)
    with httpx.Client(base_url=ui_server, timeout=30) as http:
        assert f'data-chain="{chain}"' in http.get("/").text
        page = http.get(f"/chains/{chain}").text
        assert 'data-kernel="merge"' in page and 'data-action="retry"' in page
        refused = http.post(f"/api/chains/{chain}/cancel")
        assert refused.status_code == 401
        evil = http.get("/", headers={"host": "evil.example"})
        assert evil.status_code == 400
