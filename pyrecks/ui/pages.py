"""The HTML of the web view, written out by hand (no template engine, no build step).

Every value that comes from Redis (kernel output, errors, results, ids) goes through
:func:`esc`.  Pages load one stylesheet and one script from ``/static`` (package data), so
the view works offline and under a strict Content-Security-Policy (no inline script).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from pyrecks.chaintree import ChainTree, format_duration
from pyrecks.ui.queries import ChainPage
from pyrecks.vm.records import ChainInfo, ChainStatus
from pyrecks.vm.registry import VMInfo

AGES = [("", "any age"), ("5m", "last 5 min"), ("1h", "last hour"), ("24h", "last day"),
        ("7d", "last 7 days")]  # fmt: skip


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    return format_duration(max(0.0, (now or time.time()) - ts)) + " ago"


def badge(status: str) -> str:
    return f'<span class="badge status-{esc(status)}">{esc(status)}</span>'


def layout(title: str, body: str, *, base: str = "", writable: bool = False, nav: str = "") -> str:
    links = [("chains", "/", "Chains"), ("vms", "/vms", "VMs"), ("kernels", "/kernels", "Kernels")]
    menu = "".join(
        f'<a href="{esc(base)}{href}"{" class=here" if key == nav else ""}>{label}</a>'
        for key, href, label in links
    )
    mode = (
        '<span class="mode rw" title="buttons need the token">token</span>'
        if writable
        else '<span class="mode ro" title="start pyrecks ui with --token to enable buttons">'
        "read-only</span>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · pyrecks</title>
<link rel="icon" href="{esc(base)}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{esc(base)}/static/app.css">
<script src="{esc(base)}/static/app.js" defer></script>
</head>
<body data-base="{esc(base)}" data-writable="{"1" if writable else "0"}">
<header><a class="brand" href="{esc(base)}/">pyrecks</a><nav>{menu}</nav>{mode}</header>
<main>
{body}
</main>
</body></html>
"""


def _query(params: dict[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "", 0)}
    return "?" + urlencode(merged) if merged else ""


def chains_page(
    result: ChainPage, filters: dict[str, Any], *, base: str, writable: bool, error: str = ""
) -> str:
    now = time.time()
    status = filters.get("status") or ""
    options = "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s or "any status"}</option>'
        for s in ["", *(s.value for s in ChainStatus)]
    )
    age = filters.get("age") or ""
    age_options = "".join(
        f'<option value="{v}"{" selected" if v == age else ""}>{label}</option>'
        for v, label in AGES
    )
    if age and age not in {v for v, _ in AGES}:
        age_options += f'<option value="{esc(age)}" selected>{esc(age)}</option>'
    form = f"""<form class="filters" method="get" action="{esc(base)}/">
<label>status <select name="status">{options}</select></label>
<label>kernel <input name="kernel" value="{esc(filters.get("kernel") or "")}" size="14"
 placeholder="any kernel"></label>
<label>age <select name="age">{age_options}</select></label>
<label>per page <input name="per_page" type="number" min="1" max="500"
 value="{result.per_page}" size="4"></label>
<button type="submit">Filter</button></form>"""
    rows = []
    for info in result.chains:
        detail = info.error or (info.result if info.status is ChainStatus.DONE else info.call) or ""
        rows.append(
            f'<tr data-chain="{esc(info.id)}"><td><a href="{esc(base)}/chains/{esc(info.id)}">'
            f"<code>{esc(info.id)}</code></a></td><td>{badge(info.status.value)}</td>"
            f"<td class=num>{info.step}</td><td>{esc(info.kernel or '')}</td>"
            f"<td>{esc(ago(info.created, now))}</td>"
            f"<td class=num>{esc(format_duration(info.elapsed))}</td>"
            f'<td class="detail">{esc(detail[:120])}</td></tr>'
        )
    table = (
        "<table class=list><thead><tr><th>chain</th><th>status</th><th>step</th>"
        "<th>kernel</th><th>created</th><th>elapsed</th><th>next / result / error</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No chains match.</p>'
    )
    params = {k: v for k, v in filters.items() if k != "page"}
    pager = ['<nav class="pager">']
    if result.page > 1:
        pager.append(
            f'<a rel="prev" href="{esc(base)}/{esc(_query(params, page=result.page - 1))}">'
            "← newer</a>"
        )
    pager.append(f"<span>page {result.page}</span>")
    if result.has_next:
        pager.append(
            f'<a rel="next" href="{esc(base)}/{esc(_query(params, page=result.page + 1))}">'
            "older →</a>"
        )
    pager.append("</nav>")
    problem = f'<p class="error">{esc(error)}</p>' if error else ""
    # The page's script reloads #chain-list every 3 s (the form is left alone).
    body = f'<h1>Chains</h1>{form}{problem}<div id="chain-list">{table}{"".join(pager)}</div>'
    return layout("Chains", body, base=base, writable=writable, nav="chains")


def _fields(pairs: Iterable[tuple[str, str]]) -> str:
    return "<dl class=fields>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def chain_summary(info: ChainInfo, *, base: str) -> str:
    pairs = [
        ("status", badge(info.status.value)),
        ("step", str(info.step)),
        ("kernel", esc(info.kernel or "-")),
    ]
    if info.call and not info.status.finished:
        pairs.append(("next", f"<code>{esc(info.call[:300])}</code>"))
    if info.owner:
        pairs.append(("VM", esc(info.owner)))
    if info.parent:
        pairs.append(
            ("parent", f'<a href="{esc(base)}/chains/{esc(info.parent)}">{esc(info.parent)}</a>')
        )
    pairs += [
        ("created", esc(when(info.created))),
        ("elapsed", esc(format_duration(info.elapsed))),
    ]
    if info.attempts:
        pairs.append(("attempts", str(info.attempts)))
    return _fields(pairs)


def chain_outcome(info: ChainInfo) -> str:
    parts = []
    if info.status is ChainStatus.DONE:
        parts.append(
            f'<section class="result"><h2>Result</h2><pre>{esc(info.result or "(none)")}</pre>'
            "</section>"
        )
    if info.error:
        tb = f"<pre class=traceback>{esc(info.traceback)}</pre>" if info.traceback else ""
        parts.append(
            f'<section class="failure"><h2>Error <small>{esc(info.error_kind or "")}</small>'
            f"</h2><pre>{esc(info.error)}</pre>{tb}</section>"
        )
    return "".join(parts)


def chain_page(info: ChainInfo, tree: ChainTree, svg: str, *, base: str, writable: bool) -> str:
    cid = esc(info.id)
    buttons = ""
    if writable:
        buttons = (
            '<div class="actions">'
            f'<button data-action="retry" data-chain="{cid}"'
            f"{'' if info.status is ChainStatus.FAILED else ' disabled'}>Retry</button>"
            f'<button data-action="cancel" data-chain="{cid}"'
            f"{' disabled' if info.status.finished else ''}>Cancel</button>"
            '<span class="action-result" role="status"></span></div>'
        )
    truncated = (
        '<p class="note">The log lost its oldest entries: the first steps are not shown.</p>'
        if tree.truncated
        else ""
    )
    body = f"""<h1>Chain <code>{cid}</code></h1>
<div id="summary" data-src="{esc(base)}/chains/{cid}/summary">{chain_summary(info, base=base)}</div>
{buttons}
<section class="picture"><h2>Picture</h2>{truncated}
<div id="picture" data-src="{esc(base)}/chains/{cid}/picture">{svg}</div></section>
<div id="outcome">{chain_outcome(info)}</div>
<section class="log"><h2>Log <small id="log-state">connecting…</small></h2>
<table id="log" data-events="{esc(base)}/chains/{cid}/events" data-chain="{cid}">
<thead><tr><th>time</th><th>chain</th><th>step</th><th>kernel</th><th>kind</th><th>text</th>
</tr></thead><tbody></tbody></table></section>"""
    return layout(f"Chain {info.id}", body, base=base, writable=writable, nav="chains")


def vms_page(rows: list[tuple[VMInfo, list[str]]], *, base: str, writable: bool) -> str:
    now = time.time()
    out = []
    for vm, running in rows:
        chains = " ".join(
            f'<a href="{esc(base)}/chains/{esc(c)}"><code>{esc(c)}</code></a>' for c in running[:20]
        )
        if len(running) > 20:
            chains += f" … +{len(running) - 20}"
        out.append(
            f'<tr data-vm="{esc(vm.name)}"><td>{esc(vm.name)}</td><td>{badge(vm.state)}</td>'
            f"<td>{esc(vm.host)}:{vm.pid}</td><td class=num>{vm.active}/{vm.threads}</td>"
            f"<td>{esc(vm.isolation)}</td><td>{esc(ago(vm.beat, now))}</td>"
            f"<td>{esc(when(vm.started))}</td><td>{chains or '-'}</td></tr>"
        )
    table = (
        "<table class=list><thead><tr><th>VM</th><th>state</th><th>host:pid</th>"
        "<th>busy/threads</th><th>isolation</th><th>heartbeat</th><th>started</th>"
        f"<th>running chains</th></tr></thead><tbody>{''.join(out)}</tbody></table>"
        if out
        else '<p class="empty">No VM has run against this Redis.</p>'
    )
    return layout("VMs", f"<h1>VMs</h1>{table}", base=base, writable=writable, nav="vms")


def kernels_page(rows: list[dict[str, Any]], *, base: str, writable: bool) -> str:
    out = []
    for k in rows:
        lint = k["lint"]
        lint_text = (
            f'<span class="warn">{len(lint)} warning{"s" if len(lint) != 1 else ""}</span>'
            if lint
            else "clean"
        )
        name = esc(k["name"])
        out.append(
            f'<tr data-kernel="{name}"><td><a href="{esc(base)}/kernels/{name}">{name}</a></td>'
            f"<td class=num>{k['version'] or '-'}</td><td>{'yes' if k['compiled'] else 'no'}</td>"
            f"<td><code>{esc(k['digest'][:12])}</code></td><td>{esc(when(k['updated']))}</td>"
            f"<td>{lint_text}</td></tr>"
        )
    table = (
        "<table class=list><thead><tr><th>kernel</th><th>version</th><th>compiled</th>"
        f"<th>digest</th><th>updated</th><th>lint</th></tr></thead><tbody>{''.join(out)}"
        "</tbody></table>"
        if out
        else '<p class="empty">No kernels stored yet (pyrecksc compile kernels/).</p>'
    )
    return layout(
        "Kernels", f"<h1>Kernels</h1>{table}", base=base, writable=writable, nav="kernels"
    )


def kernel_page(k: dict[str, Any], *, base: str, writable: bool) -> str:
    pairs = [
        ("version", str(k["version"] or "-")),
        ("compiled", "yes" if k["compiled"] else "no (the VM compiles it on first use)"),
        ("key", f"<code>{esc(k['key'])}</code>"),
        ("digest", f"<code>{esc(k['digest'])}</code>"),
        ("updated", esc(when(k["updated"]))),
        ("timeout", esc(f"{k['timeout']:g}s" if k["timeout"] else "policy default")),
        ("retries", esc(k["retries"] if k["retries"] is not None else "policy default")),
    ]
    findings = "".join(
        f'<li class="{esc(f["severity"])}"><code>{esc(f["code"])}</code> line {f["line"]}:'
        f"{f['column']} {esc(f['message'])}</li>"
        for f in k["lint"]
    )
    note = " (checked now: this kernel was never compiled)" if k["checked_now"] else ""
    lint = f"<ul class=findings>{findings}</ul>" if findings else "<p>No findings.</p>"
    body = (
        f"<h1>Kernel <code>{esc(k['name'])}</code></h1>{_fields(pairs)}"
        f"<h2>Lint{esc(note)}</h2>{lint}<h2>Source</h2><pre class=source>{esc(k['source'])}</pre>"
    )
    return layout(f"Kernel {k['name']}", body, base=base, writable=writable, nav="kernels")


def not_found(what: str, *, base: str, writable: bool) -> str:
    return layout("Not found", f"<h1>Not found</h1><p>{esc(what)}</p>", base=base,
                  writable=writable)  # fmt: skip
