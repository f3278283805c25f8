"""What the web view reads from Redis: filtered, paged chain lists, VMs and kernels.

Everything here is a plain function of a :class:`~pyrecks.api.Pyrecks` handle, so the pages
and the JSON API (and the tests) share one implementation.
"""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyrecks.api import Pyrecks
from pyrecks.vm.records import ChainInfo, ChainStatus
from pyrecks.vm.registry import VMInfo

#: ``30s``, ``5m``, ``2h``, ``7d`` or plain seconds.
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BATCH = 200


def parse_age(text: str | None) -> float | None:
    """Seconds from ``30s``/``5m``/``2h``/``7d``/``90``; None for empty; ValueError if bad."""
    if not text:
        return None
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"age {text!r}: write e.g. 90, 30s, 5m, 2h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def call_kernel(call: str | None) -> str:
    """The kernel a call text names (``func1("x")`` -> ``func1``; fan-outs: ``''``)."""
    if not call:
        return ""
    match = re.match(r"\s*([A-Za-z_]\w*)\s*\(", call)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class ChainPage:
    chains: list[ChainInfo]
    page: int
    per_page: int
    has_next: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "chains": [c.to_json() for c in self.chains],
            "page": self.page,
            "per_page": self.per_page,
            "has_next": self.has_next,
        }


def matches(info: ChainInfo, status: str | None, kernel: str | None) -> bool:
    """``status`` exactly; ``kernel``: the kernel of the last step or of the next call."""
    if status and info.status.value != status:
        return False
    if kernel:
        kernels = {info.kernel or "", call_kernel(info.call), call_kernel(info.raw.get("join"))}
        if kernel not in kernels:
            return False
    return True


def list_chains(
    px: Pyrecks,
    *,
    status: str | None = None,
    kernel: str | None = None,
    max_age: float | None = None,
    page: int = 1,
    per_page: int = 25,
    now: float | None = None,
) -> ChainPage:
    """Root chains, newest first, filtered; ``page`` counts from 1.

    Reads the chains index (``pyrecks:chains``, scored by creation time) newer than
    ``max_age`` in batches of records, one pipelined round trip per batch.
    """
    if status is not None and status not in {s.value for s in ChainStatus}:
        raise ValueError(f"unknown status {status!r}")
    page = max(1, page)
    per_page = max(1, min(per_page, 500))
    ks = px.keyspace
    low: float | str = "-inf" if max_age is None else (now or time.time()) - max_age
    skip = (page - 1) * per_page
    out: list[ChainInfo] = []
    has_next = False
    stale: list[str] = []
    newest = _newest_first(px, low)
    while not has_next:
        ids = list(itertools.islice(newest, _BATCH))
        if not ids:
            break
        pipe = px.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hgetall(ks.chain(cid))
        for cid, data in zip(ids, pipe.execute(), strict=True):
            if not data:
                stale.append(cid)
                continue
            info = ChainInfo.from_hash(cid, data)
            if not matches(info, status, kernel):
                continue
            if skip:
                skip -= 1
                continue
            if len(out) == per_page:
                has_next = True
                break
            out.append(info)
    for cid in stale:
        px.r.zrem(ks.for_chain(cid).chains, cid)  # records that expired
    return ChainPage(out, page, per_page, has_next)


def _newest_first(px: Pyrecks, low: float | str) -> Iterator[str]:
    """Ids of the chains index scored from ``low``, newest first, read in batches.  On a
    cluster every shard has its own index: their batches are merged by score."""

    def one(index: str) -> Iterator[tuple[float, str]]:
        offset = 0
        while True:
            raw: Any = px.r.zrevrangebyscore(
                index, "+inf", low, start=offset, num=_BATCH, withscores=True
            )
            for member, score in raw:
                yield -float(score), member.decode() if isinstance(member, bytes) else member
            if len(raw) < _BATCH:
                return
            offset += len(raw)

    indexes = [one(shard.chains) for shard in px.keyspace.every_shard()]
    for _score, cid in heapq.merge(*indexes) if len(indexes) > 1 else indexes[0]:
        yield cid


def running_by_vm(px: Pyrecks, *, scan: int = 1000) -> dict[str, list[str]]:
    """VM name -> ids of the chains (and branches) it runs now, from the newest ``scan``
    chains of the index and the branches of those waiting on a fan-out."""
    ks = px.keyspace
    ids = list(itertools.islice(_newest_first(px, "-inf"), scan))
    out: dict[str, list[str]] = {}
    todo = ids
    depth = 0
    while todo and depth < 4:
        pipe = px.r.pipeline(transaction=False)
        for cid in todo:
            pipe.hmget(ks.chain(cid), "status", "owner", "branches")
        nxt: list[str] = []
        for cid, row in zip(todo, pipe.execute(), strict=True):
            st, owner, branches = (v.decode() if isinstance(v, bytes) else v for v in row)
            if st == "running" and owner:
                out.setdefault(owner, []).append(cid)
            elif st == "waiting" and branches:
                nxt += [f"{cid}.{i}" for i in range(min(int(branches), 256))]
        todo = nxt
        depth += 1
    return out


def vms(px: Pyrecks) -> list[tuple[VMInfo, list[str]]]:
    running = running_by_vm(px)
    return [(v, running.get(v.name, [])) for v in px.vms()]


def kernels(px: Pyrecks) -> list[dict[str, Any]]:
    """Every listed kernel: name, version, compiled, digest, updated, lint warnings."""
    from pyrecks.compiler.store import KernelStore

    store = KernelStore(px.r, px.keyspace)
    out = []
    for summary in store.summaries():
        record = store.get(summary["name"])
        lint = [f.to_dict() for f in record.lint] if record is not None else []
        out.append({**summary, "lint": lint, "seed_style": bool(record and record.seed_style)})
    return out


def kernel_detail(px: Pyrecks, name: str) -> dict[str, Any] | None:
    """One kernel's record with its source and lint findings (checked now if never stored
    through the compiler: a seed-style string, or a record marked ``compiled 0``)."""
    from pyrecks.compiler.checker import check
    from pyrecks.compiler.policy import load_policy
    from pyrecks.compiler.store import KernelStore

    record = KernelStore(px.r, px.keyspace).get(name)
    if record is None:
        return None
    findings = [f.to_dict() for f in record.lint]
    checked_now = False
    if record.needs_compile:
        findings = [f.to_dict() for f in check(record.source, name, load_policy(px.r, px.keyspace))]
        checked_now = True
    return {
        "name": record.name,
        "key": record.key,
        "version": record.version,
        "compiled": record.compiled and not record.needs_compile,
        "seed_style": record.seed_style,
        "digest": record.digest,
        "updated": record.updated,
        "timeout": record.timeout,
        "retries": record.retries,
        "lint": findings,
        "checked_now": checked_now,
        "source": record.source,
    }
