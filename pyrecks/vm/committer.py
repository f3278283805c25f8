"""The committer: a running chain's state, and every write that moves it.

It owns :class:`~pyrecks.vm.chainrun.ChainRun` from the claim to the moment the chain
leaves the VM: it claims the chain (fenced, epoch + 1), commits steps (effects, checkpoint
and log in one script), batches pure steps into checkpoints, pipelines a commit while the
next kernel runs (and undoes that optimism when the commit is refused), sends commits of
concurrent chains together (group commit), finds out after a lost reply whether a commit
landed (recovery), and records failures and hand-backs.

It runs no thread and reads no stream: a test can drive it step by step against a real
Redis (``tests/test_committer.py``).  Which thread calls it, and when, is the VM's business.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from logging import WARNING
from typing import Any

import redis

from pyrecks.compiler.instructions import Call, FanOut, Finish, Transition
from pyrecks.compiler.render import render, render_call, render_value
from pyrecks.errors import RenderError
from pyrecks.keys import root_of
from pyrecks.observe import NOOP, Observer
from pyrecks.vm.chainrun import (
    REDIS_DOWN,
    ChainRun,
    InFlight,
    Lost,
    RedisAccess,
    Roster,
    now,
    text,
)
from pyrecks.vm.chainstore import (
    BranchOf,
    ChainStore,
    Commit,
    Failure,
    Fence,
    Invocation,
    Reply,
)
from pyrecks.vm.config import VMConfig
from pyrecks.vm.effects import EffectRejected, check_patterns, encode_effect
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.groupcommit import GroupCommitter
from pyrecks.vm.outbox import Outbox


class Claimed:
    """What a claim that did not give us the chain says: ``verdict`` is the reply status."""

    def __init__(self, verdict: str, detail: str = "", owner: str = "") -> None:
        self.verdict = verdict
        self.detail = detail
        #: For ``skip``: the chain's owner, if it is running (see GIVE).
        self.owner = owner


class Committer:
    """Chain state and its writes for one VM (see the module docstring)."""

    def __init__(
        self,
        store: ChainStore,
        access: RedisAccess,
        config: VMConfig,
        roster: Roster,
        effect_key_patterns: Callable[[], list[str] | tuple[str, ...]],
        *,
        max_descendants: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.store = store
        self.access = access
        self.config = config
        self.roster = roster
        self.name = config.name
        self._patterns = effect_key_patterns
        self._max_descendants = max_descendants
        self.group = GroupCommitter(access.client)
        #: On a cluster, effects go through the outbox (see pyrecks/vm/outbox.py).
        self.outbox = Outbox(store, access) if store.keyspace.sharded else None
        self.observer: Observer = NOOP  # metrics, traces (pyrecks/observe): VM.observe

    @property
    def say(self) -> Callable[..., None]:
        return self.access.say

    # -- claiming --------------------------------------------------------------------------

    def claim(
        self, chain_id: str, entry_id: str, reclaimed: bool, stream: str = ""
    ) -> ChainRun | Claimed:
        """Make the chain ours (status running, owner = us, epoch + 1), or say why not.

        A takeover (``reclaimed``) names the owner it expects: the claim checks that
        owner's heartbeat (a key of the claim) and, if it lives, asks it to confirm it runs
        the chain.  The chain enters the roster as *claiming* first, so our own heartbeat
        never takes a claim in flight for a chain we forgot.
        """
        self.roster.claiming(chain_id)
        try:
            reply = self._claim(chain_id, reclaimed)
        except BaseException:
            self.roster.done(chain_id)
            self.observer.claim_refused(chain_id)
            raise
        if not reply.ok:
            self.roster.done(chain_id)
            self.observer.claim_refused(chain_id)
            return Claimed(reply.status, reply.text(0), reply.text(1))
        epoch, step, call_text, join_text, parent, branch, trace, trace_join, pin = (
            reply.text(i) for i in range(9)
        )
        results = [list(reply.values[i : i + 2]) for i in range(9, len(reply.values), 2)]
        run = ChainRun(
            chain_id,
            epoch,
            int(step),
            Call("?"),
            entry_id,
            parent=parent or None,
            branch=branch if parent else None,
            clear_join=bool(join_text),
            committed_step=int(step),
            stored_call=call_text,
            stored_join=join_text,
            results=results,
            stream=stream or self.store.keyspace.for_chain(chain_id).starts,
            pin=pin,
        )
        if self.outbox is not None:
            # What a VM that died after its commit still owed lands before our next step:
            # the chain's own last step, the fan-out step that queued this branch, the last
            # steps of the branches this join follows.
            owing = [chain_id, *([parent] if parent else [])]
            if join_text:
                owing += [f"{chain_id}.{text(index)}" for index, _value in results]
            try:
                for owner_id in owing:
                    self.outbox.flush(owner_id)
            except BaseException:
                self.roster.done(chain_id)
                raise
        self.roster.running(run)
        self.observer.chain_claimed(run, trace, trace_join)
        return run

    def _claim(self, chain_id: str, reclaimed: bool) -> Reply:
        mode = [reclaimed]
        asks_ttl = max(int(self.config.lease * 3), 1)
        trace = self.observer.propose_trace(chain_id)  # kept only if the chain has none

        def once() -> Reply:
            owner = pin = ""
            for _ in range(4):
                if mode[0]:
                    raw: Any = self.access.client().hget(
                        self.store.keyspace.chain(chain_id), "owner"
                    )
                    owner = text(raw) if raw else ""
                try:
                    reply = self.store.claim(
                        chain_id,
                        self.name,
                        now(),
                        reclaim=mode[0],
                        owner=owner,
                        asks_ttl=asks_ttl,
                        trace=trace,
                        pin=pin,
                    ).run(self.access.client())
                except REDIS_DOWN:
                    # The claim may have landed without us hearing back: claim again as a
                    # takeover, which accepts a chain that is already running under our name.
                    mode[0] = True
                    raise
                if reply.status == "pin":  # pinned: ask again with its VM's heartbeat
                    pin = reply.text(0)
                elif reply.status != "moved":
                    return reply
            return Reply("alive", (owner,))  # owners keep changing: leave it to them

        return self.access.retrying(once)

    def left(self, run: ChainRun) -> None:
        """The chain left this VM (ended, failed, lost, handed back)."""
        if run.inflight is not None:  # never leave a reply unread on this connection
            with contextlib.suppress(Exception):
                self.settle(run)
        self.roster.done(run.id)
        self.observer.chain_left(run)

    # -- running fenced scripts -------------------------------------------------------------

    def fence(self, run: ChainRun) -> Fence:
        """What every fenced script checks: we own the chain, at this epoch and step."""
        return Fence(self.name, run.epoch, str(run.committed_step))

    def run_fenced(self, invocation: Invocation, run: ChainRun) -> Reply:
        """Run a fenced script; after a lost connection, find out whether it landed."""
        try:
            if self.config.group_commit:
                raw = self.group.call(invocation.script, invocation.keys, invocation.args)
            else:
                raw = invocation.raw(self.access.client())
                self.observer.commit_batch(1)
            return Reply.of(raw)
        except REDIS_DOWN:
            pass
        return self.recover(invocation, run)

    def recover(self, invocation: Invocation, run: ChainRun) -> Reply:
        """The reply was lost: Redis may or may not have run the script.  The fence tells:
        if the chain moved on from our step under our epoch, it did; else send it again."""
        fields = self.access.retrying(
            lambda: self.access.r.hmget(
                self.store.keyspace.chain(run.id), "owner", "epoch", "step", "status"
            )
        )
        owner, epoch, step, status = (text(f) if f is not None else "" for f in fields)
        mine = owner == self.name and epoch == run.epoch
        if mine and step == str(run.committed_step) and status == "running":
            return self.access.retrying(lambda: invocation.run())
        if epoch == run.epoch and step.isdigit() and int(step) > run.committed_step:
            return Reply("ok")  # (a step *behind* ours: Redis lost our commits, see lost)
        if epoch == run.epoch and status in ("done", "failed", "waiting"):
            return Reply("ok")
        return Reply("fenced", (status,))

    # -- pipelining ----------------------------------------------------------------------------

    def pipelining(self) -> bool:
        return len(self.roster) <= self.config.pipeline_below

    def _send(self, run: ChainRun, invocation: Invocation, printed: list[list[str]]) -> None:
        """Send a commit without waiting for its reply (see InFlight)."""
        connection = self.access.client().connection
        assert connection is not None
        run.inflight = InFlight(
            invocation,
            run.committed_step,
            run.step,
            run.call,
            [*run.pending_logs, *printed],
            run.clear_join,
        )
        self.observer.commit_batch(1)
        # A failed send is settled like a lost reply: the fence tells whether it landed.
        with contextlib.suppress(*REDIS_DOWN):
            connection.send_command(
                "EVALSHA",
                invocation.script.sha,
                len(invocation.keys),
                *invocation.keys,
                *invocation.args,
            )

    def settle(self, run: ChainRun) -> None:
        """Wait for the chain's in-flight commit; on refusal, put the chain back as it was."""
        flight = run.inflight
        if flight is None:
            return
        run.inflight = None
        reply: Reply
        try:
            connection = self.access.client().connection
            assert connection is not None
            reply = Reply.of(connection.read_response())
        except redis.exceptions.NoScriptError:
            reply = self.access.retrying(lambda: flight.invocation.run(self.access.client()))
        except REDIS_DOWN:
            with contextlib.suppress(Exception):
                self.access.client().connection.disconnect()  # type: ignore[union-attr]
            committed = run.committed_step
            run.committed_step = flight.committed_before
            reply = self.recover(flight.invocation, run)
            run.committed_step = committed
        if reply.ok:
            return
        # Undo: the chain is where this commit found it.
        run.committed_step = flight.committed_before
        run.step = flight.step_before
        run.call = flight.call_before
        run.pending_logs = flight.logs_before
        run.clear_join = flight.clear_join_before
        self._refused(run, reply)

    def _refused(self, run: ChainRun, reply: Reply) -> None:
        if reply.status == "rejected":
            raise StepFailure("effect", f"effect refused: {reply.text(0)}")
        if reply.status == "budget":
            raise StepFailure(
                "fanout",
                f"fan-out refused: chain {root_of(run.id)} and its branches may create at "
                f"most {reply.text(0)} branches in all (policy max_descendants; raise it with "
                "'pyrecksc policy set --max-descendants N', or fan out less deeply)",
            )
        if reply.status == "fenced":
            self.say(
                f"[{run.id}] stopped: the chain is {reply.text(0)} and no longer ours",
                WARNING,
                chain=run.id,
            )
            raise Lost()
        raise StepFailure("commit", f"commit failed: {reply!r}")

    # -- committing ----------------------------------------------------------------------------

    def log_entry(self, run: ChainRun, kind: str, kernel: str, line: str, at: str) -> list[str]:
        entry = ["kind", kind, "step", str(run.step + 1), "kernel", kernel, "text", line]
        if kind == "out":
            # Which run of the step printed it: a step re-run after a crash (new epoch) or
            # retried (next try) prints again, and its lines must be told apart.
            entry += ["attempt", f"{run.epoch}.{run.attempts + 1}"]
        return [*entry, "ts", at]

    def commit(
        self, run: ChainRun, kernel: str, transition: Transition, printed_lines: list[str]
    ) -> None:
        """Apply effects + checkpoint + log atomically; raise Lost if the chain isn't ours."""
        self.settle(run)
        at = now()
        then = transition.then
        try:
            check_patterns(transition.effects, self._patterns())
            effects = [encode_effect(e) for e in transition.effects]
            if self.outbox is not None and effects:
                self.outbox.check(effects)
        except EffectRejected as exc:
            raise StepFailure("effect", str(exc)) from None
        step = run.step + 1
        # A new list: if this commit is refused, only what the step printed survives it
        # (not the lines saying where the chain went next).
        printed = [self.log_entry(run, "out", kernel, line, at) for line in printed_lines]
        logs = [*run.pending_logs, *printed]
        if isinstance(then, Call) and not effects and not self._checkpoint_due(run, step):
            # A pure step: no commit of its own.  A crash re-runs it from the checkpoint.
            logs.append(self.log_entry(run, "step", kernel, f"-> {render_call(then)}", at))
            run.pending_logs = logs
            run.step = step
            run.call = then
            return
        fields: list[str] = ["step", str(step), "kernel", kernel, "updated", at]
        if run.clear_join:
            fields += ["join", ""]
        commit = Commit(self.fence(run), at, fields, logs, effects, delivered=run.delivered_step)
        if isinstance(then, Call):
            rendered = render_call(then)
            fields += ["call", rendered]
            logs.append(self.log_entry(run, "step", kernel, f"-> {rendered}", at))
        elif isinstance(then, FanOut):
            rendered = render(Transition(then))
            commit.fanout = [render_call(b) for b in then.branches]
            commit.budget = self._max_descendants()
            commit.trace = self.observer.fanout_trace(run) or None
            count = str(len(then.branches))
            fields += ["call", rendered, "status", "waiting", "owner", "", "pending", count]
            fields += ["branches", count, "join", render_call(then.join)]
            logs.append(self.log_entry(run, "fanout", kernel, rendered, at))
        else:
            result = render_value(then.value) if isinstance(then, Finish) else ""
            fields += ["call", "", "status", "done", "owner", "", "finished", at]
            fields += ["result", result]
            commit.done = result or "None"
            if run.parent is not None and run.branch is not None:
                commit.branch_of = BranchOf(run.parent, run.branch)
            ended = f"result {result}" if isinstance(then, Finish) else "halted"
            logs.append(self.log_entry(run, "step", kernel, "-> end", at))
            logs.append(self.log_entry(run, "end", kernel, f"done: {ended}", at))
        # A chain pinned to us keeps its branches and its join with us.
        pinned_to = self.name if run.pin == self.name else ""
        invocation = self.store.commit(run.id, commit, pinned_to=pinned_to)
        if isinstance(then, Call) and self.pipelining():
            self._send(run, invocation, printed)
            self._advance(run, step, then)
            return
        reply = self.run_fenced(invocation, run)
        if not reply.ok:
            if reply.status in ("rejected", "budget"):
                run.pending_logs = [*run.pending_logs, *printed]
            self._refused(run, reply)
        self._advance(run, step, then)
        run.delivered_step = None  # (this commit cleared it)
        if self.outbox is not None and effects:
            # A chain that goes on clears the entry with its next commit; one that ended or
            # waits for its branches clears it now (waiters wait for it).
            goes_on = isinstance(then, Call)
            self.outbox.deliver(run.id, str(step), effects, clear=not goes_on)
            run.delivered_step = str(step) if goes_on else None

    @staticmethod
    def _advance(run: ChainRun, step: int, then: Any) -> None:
        """The chain's state once ``step`` is committed (or, pipelined, sent)."""
        run.step = run.committed_step = step
        run.pending_logs = []
        run.checkpoint_at = time.monotonic()
        run.clear_join = False
        if isinstance(then, Call):
            run.call = then

    def _checkpoint_due(self, run: ChainRun, step: int) -> bool:
        if run.clear_join or step - run.committed_step >= self.config.checkpoint_steps:
            return True
        return (time.monotonic() - run.checkpoint_at) * 1000 >= self.config.checkpoint_ms

    def checkpoint(self, run: ChainRun) -> None:
        """Commit the in-memory progress of pure steps (no effects, same next call)."""
        at = now()
        commit = Commit(
            self.fence(run),
            at,
            ["step", str(run.step), "call", render_call(run.call), "updated", at],
            run.pending_logs,
            delivered=run.delivered_step,
        )
        if not self.run_fenced(self.store.commit(run.id, commit), run).ok:
            raise Lost()
        run.delivered_step = None
        run.committed_step = run.step
        run.pending_logs = []

    # -- logs outside commits -------------------------------------------------------------------

    def write_live(self, run: ChainRun, kernel: str, lines: list[str]) -> None:
        """Lines of a long-running step, written to the log while it runs (see StepOutput)."""
        self.settle(run)  # after the previous step's log entries, never before them
        at = now()
        run.pending_logs += [self.log_entry(run, "out", kernel, line, at) for line in lines]
        self.flush_logs(run)

    def keep_printed(self, run: ChainRun, kernel: str, lines: list[str]) -> None:
        """What a failing step printed is usually why it failed: keep it for the record."""
        at = now()
        run.pending_logs += [self.log_entry(run, "out", kernel, line, at) for line in lines]

    def note_retry(self, run: ChainRun, failure: StepFailure, delay: float) -> None:
        """Log that the step will be tried again in ``delay`` seconds."""
        self.settle(run)
        line = (
            f"attempt {run.attempts} of {run.retries} retries after {failure.kind}: "
            f"{failure} (next try in {delay:g}s)"
        )
        self.say(f"[{run.id}] retry: {line}", WARNING, chain=run.id, step=run.step + 1)
        run.pending_logs.append(self.log_entry(run, "retry", run.call.name, line, now()))
        self.flush_logs(run)

    def flush_logs(self, run: ChainRun) -> None:
        """Write buffered log entries outside a commit (before a retry's backoff)."""
        if not run.pending_logs:
            return
        pipe = self.access.r.pipeline(transaction=False)
        for entry in run.pending_logs:
            pipe.xadd(
                self.store.keyspace.log(run.id),
                dict(zip(entry[::2], entry[1::2], strict=True)),
                maxlen=self.config.max_log,
                approximate=True,
            )
        self.access.retrying(pipe.execute)
        run.pending_logs.clear()

    # -- leaving: failure, loss, hand-back -------------------------------------------------------

    def fail(self, run: ChainRun, failure: StepFailure) -> bool:
        """Record the failure (fenced); return True if the chain's entry can be acked."""
        try:
            self.settle(run)
        except StepFailure as earlier:
            failure = earlier  # the previous step's commit failed: that is the failure
        except Lost:
            return self.lost(run)
        at = now()
        message = str(failure)
        detail = message + ("\n" + failure.tb if failure.tb else "")
        try:
            call_text = render_call(run.call)
        except RenderError:  # the stored call never parsed: keep it as it was
            call_text = run.stored_call
        fields = [
            # The pure steps since the checkpoint are kept: the chain resumes (retry) at the
            # call that failed.
            *("step", str(run.step), "call", call_text, "status", "failed", "owner", ""),
            *("error", message, "error_kind", failure.kind, "traceback", failure.tb),
            *("finished", at, "updated", at, "kernel", run.call.name),
            *("attempts", str(run.attempts + 1)),
        ]
        logs = [*run.pending_logs, self.log_entry(run, "error", run.call.name, detail, at)]
        record = Failure(self.fence(run), at, fields, logs)
        if run.parent is not None:
            record.parent = run.parent
            record.parent_error = f"branch {run.id} failed: {message}"
        try:
            reply = self.run_fenced(self.store.fail(run.id, record), run)
        except Lost:
            return False
        if reply.status == "fenced":
            return self.lost(run)
        self.say(
            f"[{run.id}] failed ({failure.kind}): {message}",
            WARNING,
            chain=run.id,
            step=run.step + 1,
            kernel=run.call.name,
        )
        self.observer.chain_failed(run, failure.kind)
        return True

    def lost(self, run: ChainRun) -> bool:
        """We lost the chain; ack its entry only if nobody else will run it any more.

        A chain lost while Redis has it *queued* was not taken by anyone: Redis forgot our
        claim (the last second of an ``everysec`` AOF).  Our entries may be the only ones
        naming it, so they go back to the queue when it leaves (``run.requeue``), at once
        rather than a lease later; a claim elsewhere meanwhile is harmless (CLAIM skips a
        running chain).

        A chain Redis still has *running under us at our epoch* (but at another step: Redis
        lost our last commits) would wait a lease for a takeover, and then for us to answer
        its question: we give it back at once (DISOWN, fenced on that epoch), at the step
        Redis has; the resume entry DISOWN adds names it, so ours may go.
        """
        try:
            raw = self.access.r.hmget(self.store.keyspace.chain(run.id), "status", "owner", "epoch")
        except REDIS_DOWN:
            return False
        status, owner, epoch = (text(v) if v is not None else None for v in raw)
        if status == "running" and owner == self.name and epoch == run.epoch:
            with contextlib.suppress(*REDIS_DOWN):
                if self.store.disown(run.id, self.name, epoch, now()).run().ok:
                    self.say(f"[{run.id}] given back: Redis lost our last commits")
                    return True
            return False
        run.requeue = status == "queued"
        return status in ("done", "failed", "cancelled", "") if status else True

    def release(self, run: ChainRun) -> bool:
        """Hand the chain back to the queue at its progress (drain); True: ack its entry."""
        try:
            self.settle(run)
        except (Lost, StepFailure):
            return self.lost(run)
        if run.step != run.committed_step:
            # Keep the progress of pure steps: checkpoint before handing the chain back.
            try:
                self.checkpoint(run)
            except (Lost, StepFailure):
                return self.lost(run)
        try:
            reply = self.run_fenced(self.store.release(run.id, self.fence(run), now()), run)
        except Lost:
            return False
        return reply.ok or self.lost(run)


__all__ = ["Claimed", "Committer"]
