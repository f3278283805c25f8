"""The ``pyrecks ui`` web application (Starlette).

``create_app(px, token=None)`` builds it around one :class:`~pyrecks.api.Pyrecks` handle.

Pages: ``/`` (chains, with ``status``/``kernel``/``age`` filters and ``page``/``per_page``),
``/chains/<id>`` (summary, picture, live log, result or error, retry/cancel),
``/vms``, ``/kernels``, ``/kernels/<name>``.  Fragments the page's script refreshes:
``/chains/<id>/picture`` (SVG) and ``/chains/<id>/summary``.  Live log:
``/chains/<id>/events`` (server-sent events ``log``, ``status`` and ``end``; the log of the
chain and of its fan-out branches).  JSON: ``/api/chains``, ``/api/chains/<id>``,
``/api/chains/<id>/tree``, ``/api/vms``, ``/api/kernels``, ``/api/kernels/<name>``.

Actions: ``POST /api/chains/<id>/retry`` and ``/cancel``.  Without a token the view is
read-only and refuses them (403); with one they need it in ``X-Pyrecks-Token`` (or
``Authorization: Bearer …``), compared in constant time (401 if missing or wrong).
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pyrecks.api import Pyrecks
from pyrecks.chaintree import build_tree
from pyrecks.errors import ChainNotFound, PyrecksError
from pyrecks.ui import pages, queries
from pyrecks.ui.picture import render_svg
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry
from pyrecks.watching import entry_record

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-pyrecks-token"
#: How long one blocking read of the live log waits (ms) before re-reading the record.
BLOCK_MS = 1000
#: Branch logs followed by one live-log stream, at most.
MAX_FOLLOWED = 64

T = TypeVar("T")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def _thread(fn: Callable[[], T]) -> T:
    """Run a blocking Redis call off the event loop; a closed request does not wait for it."""
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)


def _sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def create_app(
    px: Pyrecks,
    token: str | None = None,
    *,
    allowed_hosts: list[str] | None = None,
    root_path: str = "",
) -> Starlette:
    """The web view of the deployment ``px``; ``token`` enables the retry/cancel buttons.

    ``allowed_hosts`` (e.g. ``["127.0.0.1", "localhost"]``) refuses requests for other Host
    names, which protects a view bound to the loopback interface from DNS rebinding.
    """
    secret = token.encode() if token else None
    writable = secret is not None
    base = root_path.rstrip("/")

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": CSP})

    def authorize(request: Request) -> Response | None:
        """None if the request may act; else the refusal."""
        if secret is None:
            return JSONResponse(
                {"error": "this view is read-only: start 'pyrecks ui' with --token to act"},
                status_code=403,
            )
        given = request.headers.get(TOKEN_HEADER, "")
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), secret):
            return JSONResponse(
                {"error": "missing or wrong token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="pyrecks"'},
            )
        return None

    # -- chains ---------------------------------------------------------------------------

    def _filters(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        q = request.query_params
        filters: dict[str, Any] = {
            "status": q.get("status") or None,
            "kernel": (q.get("kernel") or "").strip() or None,
            "age": q.get("age") or None,
            "page": _int(q.get("page"), 1),
            "per_page": _int(q.get("per_page"), 25),
        }
        args = {
            "status": filters["status"],
            "kernel": filters["kernel"],
            "max_age": queries.parse_age(q.get("age")),
            "page": filters["page"],
            "per_page": filters["per_page"],
        }
        return filters, args

    def chains_html(request: Request) -> Response:
        try:
            filters, args = _filters(request)
            result = queries.list_chains(px, **args)
        except ValueError as exc:
            empty = queries.ChainPage([], 1, 25, False)
            body = pages.chains_page(
                empty, dict(request.query_params), base=base, writable=writable, error=str(exc)
            )
            return html(body, 400)
        return html(pages.chains_page(result, filters, base=base, writable=writable))

    def chains_json(request: Request) -> Response:
        try:
            args = _filters(request)[1]
            result = queries.list_chains(px, **args)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result.to_json())

    def _status(chain_id: str) -> ChainInfo | None:
        try:
            return px.status(chain_id)
        except ChainNotFound:
            return None

    def chain_html(request: Request) -> Response:
        cid = request.path_params["chain"]
        try:
            tree = build_tree(px, cid)
        except ChainNotFound:
            return html(pages.not_found(f"no chain {cid!r}", base=base, writable=writable), 404)
        svg = render_svg(tree, base=base)
        return html(pages.chain_page(tree.info, tree, svg, base=base, writable=writable))

    def chain_picture(request: Request) -> Response:
        cid = request.path_params["chain"]
        try:
            tree = build_tree(px, cid)
        except ChainNotFound:
            return Response("no such chain", status_code=404)
        return Response(render_svg(tree, base=base), media_type="image/svg+xml")

    def chain_summary(request: Request) -> Response:
        info = _status(request.path_params["chain"])
        if info is None:
            return Response("no such chain", status_code=404)
        return html(pages.chain_summary(info, base=base) + pages.chain_outcome(info))

    def chain_json(request: Request) -> Response:
        info = _status(request.path_params["chain"])
        if info is None:
            return JSONResponse({"error": "no such chain"}, status_code=404)
        return JSONResponse(info.to_json())

    def tree_json(request: Request) -> Response:
        try:
            tree = build_tree(px, request.path_params["chain"])
        except ChainNotFound:
            return JSONResponse({"error": "no such chain"}, status_code=404)
        return JSONResponse(tree.to_json())

    def logs_json(request: Request) -> Response:
        cid = request.path_params["chain"]
        if _status(cid) is None:
            return JSONResponse({"error": "no such chain"}, status_code=404)
        return JSONResponse([entry_record(e, cid) for e in px.logs(cid)])

    def act(request: Request, action: Callable[[str], bool], verb: str) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        cid = request.path_params["chain"]
        try:
            done = action(cid)
            info = px.status(cid)
        except ChainNotFound:
            return JSONResponse({"error": "no such chain"}, status_code=404)
        except PyrecksError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        if not done:
            return JSONResponse(
                {"ok": False, "status": info.status.value,
                 "error": f"chain {cid} is {info.status.value}; nothing to {verb}"},
                status_code=409,
            )  # fmt: skip
        return JSONResponse({"ok": True, "status": info.status.value})

    def retry(request: Request) -> Response:
        return act(request, px.retry, "retry")

    def cancel(request: Request) -> Response:
        return act(request, px.cancel, "cancel")

    async def events(request: Request) -> Response:
        cid = request.path_params["chain"]
        info = await _thread(lambda: _status(cid))
        if info is None:
            return Response("no such chain", status_code=404)
        return StreamingResponse(
            _follow(px, cid, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- VMs and kernels ------------------------------------------------------------------

    def vms_html(request: Request) -> Response:
        return html(pages.vms_page(queries.vms(px), base=base, writable=writable))

    def vms_json(request: Request) -> Response:
        return JSONResponse(
            [{**vm.to_json(), "running": running} for vm, running in queries.vms(px)]
        )

    def kernels_html(request: Request) -> Response:
        return html(pages.kernels_page(queries.kernels(px), base=base, writable=writable))

    def kernels_json(request: Request) -> Response:
        return JSONResponse(queries.kernels(px))

    def kernel_html(request: Request) -> Response:
        name = request.path_params["name"]
        detail = queries.kernel_detail(px, name)
        if detail is None:
            return html(pages.not_found(f"no kernel {name!r}", base=base, writable=writable), 404)
        return html(pages.kernel_page(detail, base=base, writable=writable))

    def kernel_json(request: Request) -> Response:
        detail = queries.kernel_detail(px, request.path_params["name"])
        if detail is None:
            return JSONResponse({"error": "no such kernel"}, status_code=404)
        return JSONResponse(detail)

    routes = [
        Route("/", chains_html),
        Route("/chains/{chain}", chain_html),
        Route("/chains/{chain}/picture", chain_picture),
        Route("/chains/{chain}/summary", chain_summary),
        Route("/chains/{chain}/events", events),
        Route("/vms", vms_html),
        Route("/kernels", kernels_html),
        Route("/kernels/{name}", kernel_html),
        Route("/api/chains", chains_json),
        Route("/api/chains/{chain}", chain_json),
        Route("/api/chains/{chain}/tree", tree_json),
        Route("/api/chains/{chain}/logs", logs_json),
        Route("/api/chains/{chain}/retry", retry, methods=["POST"]),
        Route("/api/chains/{chain}/cancel", cancel, methods=["POST"]),
        Route("/api/vms", vms_json),
        Route("/api/kernels", kernels_json),
        Route("/api/kernels/{name}", kernel_json),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.px = px
    app.state.writable = writable
    return app


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


async def _follow(px: Pyrecks, chain_id: str, request: Request) -> AsyncIterator[str]:
    """Server-sent events: every log entry of the chain and its branches, as they come.

    ``log`` events carry one entry each (``chain`` says whose log); a ``status`` event goes
    out whenever the chain record changes (status, step); ``end`` closes the stream once
    the chain has finished and its log has been read to the end.
    """
    ks = px.keyspace
    positions: dict[str, str] = {ks.log(chain_id): "0-0"}
    owners: dict[str, str] = {ks.log(chain_id): chain_id}
    last_state: tuple[str, int, str] | None = None
    yield "retry: 3000\n\n"

    def read(block: int | None) -> Any:
        streams: dict[Any, Any] = dict(positions)
        return px.r.xread(streams, count=500, block=block)

    def state() -> tuple[ChainInfo | None, list[str]]:
        """The record, and the ids of every known chain's branches (for their logs)."""
        try:
            info = px.status(chain_id)
        except ChainNotFound:
            return None, []
        found: list[str] = []
        todo = [chain_id]
        while todo and len(found) < MAX_FOLLOWED:
            pipe = px.r.pipeline(transaction=False)
            for cid in todo:
                pipe.hget(ks.chain(cid), "branches")
            nxt = []
            for cid, count in zip(todo, pipe.execute(), strict=True):
                for i in range(int(count or 0)):
                    if len(found) < MAX_FOLLOWED:
                        found.append(f"{cid}.{i}")
                        nxt.append(f"{cid}.{i}")
            todo = nxt
        return info, found

    block: int | None = None  # history first, without blocking
    while True:
        if await request.is_disconnected():
            return
        got = await _thread(functools.partial(read, block))
        block = BLOCK_MS
        for key, entries in got or []:
            name = key.decode() if isinstance(key, bytes) else str(key)
            for entry_id, fields in entries:
                entry = LogEntry.from_stream(entry_id, fields)
                positions[name] = entry.id
                owner = owners.get(name, chain_id)
                yield _sse("log", entry_record(entry, owner), f"{owner}/{entry.id}")
        info, branches = await _thread(state)
        if info is None:
            yield _sse("end", {"chain": chain_id, "status": "missing"})
            return
        for branch in branches:
            key = ks.log(branch)
            if key not in positions:
                positions[key] = "0-0"
                owners[key] = branch
        # A finished chain has nothing more to wait for: read the rest without blocking.
        block = None if info.status.finished else BLOCK_MS
        current = (info.status.value, info.step, info.raw.get("updated", ""))
        if current != last_state:
            last_state = current
            yield _sse("status", info.to_json())
        if info.status.finished and not got:
            tail = await _thread(lambda: read(None))
            if not tail:
                yield _sse("end", {"chain": chain_id, "status": info.status.value,
                                   "at": time.time()})  # fmt: skip
                return
            for key, entries in tail:
                name = key.decode() if isinstance(key, bytes) else str(key)
                for entry_id, fields in entries:
                    entry = LogEntry.from_stream(entry_id, fields)
                    positions[name] = entry.id
                    owner = owners.get(name, chain_id)
                    yield _sse("log", entry_record(entry, owner), f"{owner}/{entry.id}")


__all__ = ["ChainStatus", "create_app"]
