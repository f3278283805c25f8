"""Watching a VM: one small interface the VM calls at its events, and its subscribers.

The VM calls an :class:`Observer` at a handful of events — a chain claimed, a step started
and finished, a fan-out committed, a chain failed or leaving the VM, a batch of commits sent,
a heartbeat, a jail cell started or retired, the VM stopped.  The default observer,
:data:`NOOP`, does nothing, so a VM nobody watches pays one empty method call per event.
Prometheus metrics (:mod:`pyrecks.observe.metrics`) and OpenTelemetry traces
(:mod:`pyrecks.observe.tracing`) are two subscribers; ``VM.observe(a, b)`` attaches them.

Imports run one way: the VM imports this package, this package never imports the VM.  What
an observer learns arrives as arguments — a running chain is read through :class:`RunView`,
a transition through the compiler's instruction types — and an observer must not change the
VM's state.  The one exception is deliberate and small: ``propose_trace`` and
``fanout_trace`` return the W3C ``traceparent`` text that the chain store keeps in a chain's
record so that any VM continues the chain's trace (see ``TRACE`` in
:mod:`pyrecks.vm.chainstore`).

Hooks run on the VM's worker, heartbeat and pool threads: they must be quick and must not
raise.  :class:`Observers` (what ``VM.observe`` builds) keeps a broken subscriber from
reaching the VM: an exception is logged once per hook and the VM goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

log = logging.getLogger("pyrecks.observe")


class CallView(Protocol):
    @property
    def name(self) -> str: ...


class RunView(Protocol):
    """What observers read of a running chain (``pyrecks.vm.chainrun.ChainRun``)."""

    @property
    def id(self) -> str: ...
    @property
    def epoch(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def call(self) -> CallView: ...
    @property
    def attempts(self) -> int: ...
    @property
    def parent(self) -> str | None: ...
    @property
    def branch(self) -> str | None: ...
    @property
    def clear_join(self) -> bool: ...


class Observer:
    """Every event the VM reports; each hook does nothing here (subclass what you need).

    ``run`` is the chain (see :class:`RunView`); ``kind``/``outcome`` are ``ok`` or an
    ``error_kind`` (docs/vm.md).  Chain events:

    * ``propose_trace(chain_id)`` just before a claim: a ``traceparent`` the claim stores if
      the chain has none yet ('' proposes nothing);
    * ``chain_claimed(run, trace, trace_join)``: the chain is ours; ``trace`` is the
      ``traceparent`` stored in its record (ours if the proposal won), ``trace_join`` the one
      its pending join continues ('' when none);
    * ``claim_refused(chain_id)``: the claim did not give us the chain;
    * ``step_started(run)`` / ``step_finished(run, outcome, transition)``: one step (the
      transition the kernel returned, None when it failed);
    * ``fanout_trace(run)``: the step being committed fans out; a ``traceparent`` its
      branches and its join continue ('' for none);
    * ``chain_failed(run, kind)``: the failure was recorded;
    * ``chain_left(run)``: the chain left this VM (ended, failed, waiting for its branches,
      handed back, lost) — a step still open there was interrupted.
    """

    # -- chains ---------------------------------------------------------------------------

    def propose_trace(self, chain_id: str) -> str:
        return ""

    def chain_claimed(self, run: RunView, trace: str, trace_join: str) -> None:
        pass

    def claim_refused(self, chain_id: str) -> None:
        pass

    def step_started(self, run: RunView) -> None:
        pass

    def step_finished(self, run: RunView, outcome: str, transition: Any = None) -> None:
        pass

    def fanout_trace(self, run: RunView) -> str:
        return ""

    def chain_failed(self, run: RunView, kind: str) -> None:
        pass

    def chain_left(self, run: RunView) -> None:
        pass

    # -- the VM around them -----------------------------------------------------------------

    def commit_batch(self, size: int) -> None:
        """``size`` fenced scripts (commits, failures, hand-backs) sent in one round trip."""

    def heartbeat(self, r: Any, streams: Sequence[str], group: str) -> None:
        """After each heartbeat: ``r`` the VM's Redis client, the streams it reads, its group.
        The place for slow reads (queue depth, round-trip time): never per step."""

    def cell_started(self) -> None:
        """A jail cell was forked."""

    def cells(self, idle: int, retired: int = 0) -> None:
        """The jail pool changed: ``idle`` (stopped) cells now, ``retired`` cells just killed."""

    def vm_stopped(self) -> None:
        """The VM stopped: flush and close what the observer holds."""


#: The observer of a VM nobody watches.
NOOP = Observer()


def _broadcast(hook: str) -> Any:
    """An :class:`Observers` hook that calls ``hook`` of every member."""

    def broadcast(self: Observers, *args: Any, **kwargs: Any) -> None:
        for member in self.members:
            try:
                getattr(member, hook)(*args, **kwargs)
            except Exception:
                self._broken(hook, member)

    broadcast.__name__ = hook
    return broadcast


def _first_answer(hook: str) -> Any:
    """An :class:`Observers` hook that returns the first member's non-empty answer."""

    def first(self: Observers, *args: Any, **kwargs: Any) -> str:
        for member in self.members:
            try:
                answer = getattr(member, hook)(*args, **kwargs)
            except Exception:
                self._broken(hook, member)
                continue
            if answer:
                return str(answer)
        return ""

    first.__name__ = hook
    return first


class Observers(Observer):
    """Several observers as one; a subscriber that raises is logged, never felt by the VM."""

    def __init__(self, members: Sequence[Observer]) -> None:
        self.members = tuple(members)
        self._complained: set[str] = set()

    def _broken(self, hook: str, member: Observer) -> None:
        key = f"{type(member).__name__}.{hook}"
        if key not in self._complained:
            self._complained.add(key)
            log.exception("pyrecks observer %s failed (reported once)", key)

    propose_trace = _first_answer("propose_trace")
    fanout_trace = _first_answer("fanout_trace")
    chain_claimed = _broadcast("chain_claimed")
    claim_refused = _broadcast("claim_refused")
    step_started = _broadcast("step_started")
    step_finished = _broadcast("step_finished")
    chain_failed = _broadcast("chain_failed")
    chain_left = _broadcast("chain_left")
    commit_batch = _broadcast("commit_batch")
    heartbeat = _broadcast("heartbeat")
    cell_started = _broadcast("cell_started")
    cells = _broadcast("cells")
    vm_stopped = _broadcast("vm_stopped")


def combine(current: Observer, *more: Observer) -> Observer:
    """``current`` with ``more`` subscribed too (what ``VM.observe`` keeps)."""
    members: list[Observer] = []
    for o in (current, *more):
        if isinstance(o, Observers):
            members += o.members
        elif o is not NOOP:
            members.append(o)
    return Observers(members) if members else NOOP


def attach(part: object, observer: Observer) -> None:
    """Give ``part`` of a VM (consumer, committer, pool …) its observer, if it reports any."""
    if hasattr(part, "observer"):
        setattr(part, "observer", observer)  # noqa: B010 (any part that has one)


__all__ = ["NOOP", "Observer", "Observers", "RunView", "attach", "combine"]
