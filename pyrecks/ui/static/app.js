// pyrecks ui: the live parts of the pages, hand-written, no framework, no build step.
// * the chain page follows /chains/<id>/events (server-sent events): log rows appear as the
//   VM writes them; a "status" event refreshes the picture and the summary; "end" closes.
// * retry / cancel buttons POST with the token in X-Pyrecks-Token (asked once, kept for
//   the tab in sessionStorage; a ?token=... in the address is taken and removed from it);
//   each status event enables the ones that apply (Retry once the chain has failed).
// * the chain list reloads its rows every 3 s (the filters are left as they are).
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base || "";

  function takeTokenFromAddress() {
    const url = new URL(window.location.href);
    const token = url.searchParams.get("token");
    if (token) {
      sessionStorage.setItem("pyrecks-token", token);
      url.searchParams.delete("token");
      history.replaceState(null, "", url.toString());
    }
  }

  function token() {
    let t = sessionStorage.getItem("pyrecks-token");
    if (!t) {
      t = window.prompt("Token of this pyrecks ui (from --token / PYRECKS_UI_TOKEN):") || "";
      if (t) sessionStorage.setItem("pyrecks-token", t);
    }
    return t;
  }

  function fmtTime(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." +
      String(d.getMilliseconds()).padStart(3, "0");
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  let refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(refresh, 300);
  }

  async function refresh() {
    refreshTimer = null;
    for (const id of ["picture", "summary"]) {
      const el = document.getElementById(id);
      if (!el || !el.dataset.src) continue;
      try {
        const res = await fetch(el.dataset.src, { cache: "no-store" });
        if (!res.ok) continue;
        const html = await res.text();
        if (id === "picture") {
          // Redrawn only when it changed: no flicker, and a hovered box keeps its tooltip.
          const fresh = document.createElement("div");
          fresh.innerHTML = html;
          if (fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
        } else {
          // the summary fragment also carries the result / error sections
          const tmp = document.createElement("div");
          tmp.innerHTML = html;
          const outcome = document.getElementById("outcome");
          const parts = Array.from(tmp.children);
          el.innerHTML = "";
          if (outcome) outcome.innerHTML = "";
          for (const p of parts) {
            (p.tagName === "SECTION" && outcome ? outcome : el).appendChild(p);
          }
        }
      } catch (e) { /* the next status event tries again */ }
    }
  }

  function followLog() {
    const table = document.getElementById("log");
    if (!table || !window.EventSource) return;
    const tbody = table.tBodies[0];
    const state = document.getElementById("log-state");
    const seen = new Set();
    const source = new EventSource(table.dataset.events);
    source.addEventListener("open", () => { if (state) state.textContent = "live"; });
    source.addEventListener("log", (ev) => {
      const e = JSON.parse(ev.data);
      const key = e.chain + "/" + e.id;
      if (seen.has(key)) return;   // a reconnect sends the history again
      seen.add(key);
      const tr = document.createElement("tr");
      tr.className = "kind-" + e.kind;
      tr.dataset.chain = e.chain;
      tr.dataset.ts = String(e.ts);
      tr.append(cell(fmtTime(e.ts)), cell(e.chain === table.dataset.chain ? "" : e.chain),
                cell(String(e.step)), cell(e.kernel), cell(e.kind + (e.attempt ? " " + e.attempt : "")),
                cell(e.text));
      // In time order: the history comes one log after the other (the chain's, then each
      // branch's), and branches write while their parent waits.
      let before = null;
      for (let row = tbody.lastElementChild; row && Number(row.dataset.ts) > e.ts;
           row = row.previousElementSibling) before = row;
      tbody.insertBefore(tr, before);
      if (e.kind !== "out") refreshSoon();
    });
    source.addEventListener("status", (ev) => {
      const info = JSON.parse(ev.data);
      body.dataset.chainStatus = info.status;
      enableButtons(info.status);
      refreshSoon();
    });
    source.addEventListener("end", () => {
      source.close();
      if (state) state.textContent = "chain ended";
      refreshSoon();
    });
    source.addEventListener("error", () => {
      if (state && source.readyState !== EventSource.CLOSED) state.textContent = "reconnecting…";
    });
  }

  const FINISHED = new Set(["done", "failed", "cancelled"]);

  // The page was drawn with the buttons of the status it had then: a chain that fails while
  // the page is open must get its Retry button without a reload.
  function enableButtons(status) {
    for (const button of document.querySelectorAll("button[data-action]")) {
      if (button.dataset.action === "retry") button.disabled = status !== "failed";
      else if (button.dataset.action === "cancel") button.disabled = FINISHED.has(status);
    }
  }

  function refreshList() {
    const list = document.getElementById("chain-list");
    if (!list) return;
    setInterval(async () => {
      if (document.hidden) return;
      try {
        const res = await fetch(window.location.href, { cache: "no-store" });
        if (!res.ok) return;
        const page = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = page.getElementById("chain-list");
        if (fresh) list.innerHTML = fresh.innerHTML;
      } catch (e) { /* the next tick tries again */ }
    }, 3000);
  }

  function buttons() {
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        const out = button.parentElement.querySelector(".action-result");
        const t = token();
        if (!t) return;
        const action = button.dataset.action;
        const res = await fetch(base + "/api/chains/" + encodeURIComponent(button.dataset.chain) +
                                "/" + action, { method: "POST", headers: { "X-Pyrecks-Token": t } });
        let data = {};
        try { data = await res.json(); } catch (e) { /* not JSON */ }
        if (res.status === 401) sessionStorage.removeItem("pyrecks-token");
        if (out) out.textContent = res.ok ? action + ": ok (" + data.status + ")" :
          action + " refused: " + (data.error || res.status);
        // A retried chain runs again: reload to follow its log anew (the stream had ended).
        if (res.ok && action === "retry") window.location.reload();
        else refreshSoon();
      });
    }
  }

  takeTokenFromAddress();
  function start() { followLog(); buttons(); refreshList(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
