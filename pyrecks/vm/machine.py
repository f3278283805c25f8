"""The VM: worker threads that run chains step by step.

Shape (one VM process)::

    reader thread ── XREADGROUP resume, then starts ─┐
                 └─ XAUTOCLAIM entries of dead VMs ─► work queue ──► N worker threads
                                                                      │ claim (fenced)
                                                                      ▼
               PREPARE (kernel digest + @key values, 1 round trip) → run kernel (executor)
               → parse return string → COMMIT (effects + checkpoint + log, 1 atomic script)
               → next step … until the chain ends, fails, fans out or is cancelled

    heartbeat thread: keeps pyrecks:vm:<name> alive (TTL = lease) and touches the stream
    entries of the chains it runs, so nobody takes them over while this VM lives.

A stream entry is acknowledged only when its chain leaves this VM (ended, failed, waiting
for fan-out branches, or handed back on drain), so the entry of a VM that dies stays
pending in the consumer group; once its lease expired, another VM (or the same one,
restarted under the same name) claims it and resumes the chain at its last checkpoint.
Every commit is fenced on (owner, epoch, step): a VM that lost its chain cannot write a
stale step, and effects therefore apply exactly once per step.

The VM is cut by ownership into three parts it wires together and drives; none of them
imports this module (what they share is in :mod:`pyrecks.vm.chainrun`, the Redis contract
in :mod:`pyrecks.vm.chainstore`):

* :class:`~pyrecks.vm.consumer.StreamConsumer` — the starts stream: read loop, takeover
  (XAUTOCLAIM), hand-back, acknowledgement, heartbeat;
* :class:`~pyrecks.vm.step.StepRunner` — one step: resume, load, convert, execute;
* :class:`~pyrecks.vm.committer.Committer` — the chain's state and every write that moves
  it: claim, commits (pipelined, grouped), checkpoints, recovery, failure, release.

This module keeps the life cycle: start, the worker threads and what they do with an
entry (claim, steps until the chain leaves, retries), stop and drain.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from pyrecks.cluster import adapt, for_cluster
from pyrecks.compiler.instructions import Call
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.render import render_call
from pyrecks.compiler.store import KernelStore
from pyrecks.errors import PyrecksError
from pyrecks.keys import Keyspace, chain_id_problem
from pyrecks.logsetup import KERNEL_LOGGER, VM_LOGGER
from pyrecks.observe import NOOP, Observer, attach, combine
from pyrecks.vm.chainrun import (
    REDIS_DOWN,
    ChainRun,
    Lost,
    RedisAccess,
    Roster,
    now,
    parse_start_call,
    text,
)
from pyrecks.vm.chainstore import ChainStore
from pyrecks.vm.committer import Claimed, Committer
from pyrecks.vm.config import ISOLATION_MODES, VMConfig, default_vm_name
from pyrecks.vm.consumer import StreamConsumer
from pyrecks.vm.executors import KernelExecutor, ThreadExecutor
from pyrecks.vm.failures import RETRYABLE, StepFailure, internal_failure
from pyrecks.vm.freshness import ClusterKernelWatch, KernelWatch
from pyrecks.vm.loader import KernelLoader
from pyrecks.vm.registry import holder_of
from pyrecks.vm.sandbox import Sandbox
from pyrecks.vm.step import StepRunner

log = logging.getLogger(VM_LOGGER)
_kernel_log = logging.getLogger(KERNEL_LOGGER)


class VM:
    """A pool of worker threads executing chains from the starts stream."""

    def __init__(
        self,
        r: redis.Redis,
        keyspace: Keyspace | None = None,
        config: VMConfig | None = None,
        policy: Policy | None = None,
        executor: KernelExecutor | None = None,
    ) -> None:
        self.r = r
        self.keyspace = adapt(r, keyspace or Keyspace())
        self.config = config or VMConfig()
        if self.keyspace.sharded:
            self.config = for_cluster(self.config)
        if self.config.isolation not in ISOLATION_MODES:
            raise PyrecksError(
                f"unknown isolation {self.config.isolation!r}: use one of "
                + ", ".join(repr(m) for m in ISOLATION_MODES)
            )
        #: A policy given by the caller is kept; one read from Redis follows Redis.
        self._follow_policy = policy is None
        if policy is None:
            self.policy_id, policy = _read_policy(r, self.keyspace)
        else:
            self.policy_id = "given"
        self.policy = policy
        self.sandbox = self._make_sandbox()
        self.loader = self._make_loader()
        self._own_executor = executor is None
        self.executor: KernelExecutor = executor or self._make_executor()
        self._retired: list[KernelExecutor] = []
        self.observer: Observer = NOOP  # see observe()
        #: Chains waiting out a retry's backoff: (due, order, run).  They hold no thread.
        self._delayed: list[tuple[float, int, ChainRun]] = []
        self._delay_order = itertools.count()
        self._delay_wake = threading.Condition()
        self.watch: KernelWatch | ClusterKernelWatch = (
            ClusterKernelWatch(r) if self.keyspace.sharded else KernelWatch(r.connection_pool)
        )
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._echo_lock = threading.Lock()
        self._started_at = time.time()
        self.store = ChainStore(
            r, self.keyspace, retention=self.config.retention, max_log=self.config.max_log
        )
        self.access = RedisAccess(r, self._stopping, self._say)
        self.roster = Roster()
        self.consumer = StreamConsumer(
            self.store,
            self.access,
            self.config,
            self.roster,
            started=self._started_at,
            record=lambda: {"policy": self.policy_id, "running": self._running_now()},
        )
        self.committer = Committer(
            self.store,
            self.access,
            self.config,
            self.roster,
            lambda: self.policy.effect_key_patterns,
            max_descendants=lambda: self.policy.max_descendants,
        )
        self.steps = StepRunner(
            self.store,
            self.access,
            self.committer,
            self.loader,
            self.watch,
            lambda: self.executor,
            lambda: self.policy,
            self.config.echo,
        )

    def _make_sandbox(self) -> Sandbox:
        return Sandbox(
            self.policy.allowed_modules,
            self.policy.forbidden_builtins,
            self.policy.forbidden_attributes,
        )

    def _make_loader(self) -> KernelLoader:
        return KernelLoader(
            KernelStore(self.r, self.keyspace),
            self.policy,
            trust_stored_code=self.config.isolation == "jail",
        )

    def _make_executor(self) -> KernelExecutor:
        if self.config.isolation == "jail":
            from pyrecks.vm.jail.executor import JailExecutor, require_jail

            require_jail()
            return JailExecutor(
                self.policy,
                memory_limit_mb=self.config.memory_limit_mb,
                max_cells=self.config.max_cells,
            )
        if self.config.isolation == "process":
            from pyrecks.vm.isolation import ProcessExecutor

            return ProcessExecutor(self.policy, memory_limit_mb=self.config.memory_limit_mb)
        return ThreadExecutor(self.sandbox, self.config.timeout_grace)

    def observe(self, *observers: Observer) -> VM:
        """Subscribe ``observers`` (metrics, traces: pyrecks/observe) to this VM's events."""
        self.observer = combine(self.observer, *observers)
        for part in (self.consumer, self.committer, self.committer.group, self.executor):
            attach(part, self.observer)
        return self

    # -- life cycle ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> VM:
        holder = holder_of(self.r, self.keyspace, self.name, self.config.lease)
        if holder is not None:
            self.executor.close()
            raise PyrecksError(
                f"a VM named {self.name!r} is already running (host {holder.get('host', '?')}, "
                f"pid {holder.get('pid', '?')}): two VMs under one name would run the same "
                "steps twice. Choose another --name, or stop that VM (its name frees itself "
                f"within its lease of {self.config.lease:g}s after it stops beating)"
            )
        start_executor = getattr(self.executor, "start", None)
        if start_executor is not None:
            start_executor()
            self._say(f"{self.name}: {self.executor}")
        if self.config.track_kernels:
            self.watch.start()
        self.consumer.ensure_group()
        self.consumer.beat()
        # Entries this VM name left pending (a restart after a crash) resume first.
        self.consumer.queue_own_pending()
        for _ in range(self.config.threads):
            self._spawn_worker()
        reader = threading.Thread(
            target=self.consumer.read_loop, name="pyrecks-reader", daemon=True
        )
        heart = threading.Thread(
            target=self.consumer.heartbeat_loop,
            args=(self.follow_policy,),
            name="pyrecks-heartbeat",
            daemon=True,
        )
        timer = threading.Thread(target=self._delay_loop, name="pyrecks-retries", daemon=True)
        for t in (reader, heart, timer):
            t.start()
            self._threads.append(t)
        return self

    def follow_policy(self) -> bool:
        """Take up the policy stored in Redis if it changed (called at every heartbeat).

        ``pyrecksc policy set`` promises that running VMs follow: a changed policy gets a
        new loader (kernels are checked and compiled again under it) and, unless the
        caller supplied its own, a new executor; steps already running finish under the
        old one, which is closed when the VM stops.  Returns whether it changed.
        """
        if not self._follow_policy:
            return False
        policy_id, policy = _read_policy(self.r, self.keyspace)
        if policy_id == self.policy_id:
            return False
        self.policy = policy
        self.sandbox = self._make_sandbox()
        self.loader = self.steps.loader = self._make_loader()
        if self._own_executor:
            fresh = self._make_executor()
            attach(fresh, self.observer)
            start_executor = getattr(fresh, "start", None)
            if start_executor is not None:
                start_executor()
            self._retired.append(self.executor)
            self.executor = fresh
        self.policy_id = policy_id
        self._say(f"{self.name}: policy {policy_id} loaded")
        return True

    def stop(self, timeout: float | None = 30.0) -> None:
        """Drain: take no new chains; running chains finish their step and are handed back."""
        self._stopping.set()
        with self._delay_wake:
            self._delay_wake.notify_all()
        for _ in range(self.config.threads):
            self.consumer.work.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            if t.ident is None:  # a Ctrl-C in start() came between spawning and starting it
                continue
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            t.join(left)
        entries = []
        with self._delay_wake:
            parked = [run for _due, _n, run in self._delayed]
            self._delayed.clear()
        for item in self.consumer.leftovers():
            if isinstance(item, ChainRun):
                parked.append(item)
            else:
                entries.append(item)
        for run in parked:  # waiting out a retry's backoff: back to the queue at its step
            with contextlib.suppress(Lost, *REDIS_DOWN):
                self._finish(run, self.committer.release(run))
        self.consumer.hand_back(entries)
        for executor in (*self._retired, self.executor):
            executor.close()
        self.watch.stop()
        with contextlib.suppress(*REDIS_DOWN):  # else our heartbeat key expires on its own
            self.consumer.beat(state="stopped")
        self.observer.vm_stopped()
        self._stopped.set()

    def run_forever(self) -> None:
        """Run until Ctrl-C / SIGTERM, then drain gracefully (also if it comes mid-start)."""
        try:
            self.start()
            self._stopped.wait()
        except KeyboardInterrupt:
            self._say("draining: running chains finish their step and go back to the queue")
            self.stop()

    def _running_now(self) -> dict[str, dict[str, Any]]:
        """The step each chain runs now, for the heartbeat record (``pyrecks status``):
        read once per beat from memory, so it costs no write per step."""
        return {
            run.id: {"step": run.step + 1, "kernel": run.call.name, "since": run.step_began}
            for run in self.roster.runs()
        }

    def _spawn_worker(self) -> None:
        t = threading.Thread(target=self._work_loop, name="pyrecks-worker", daemon=True)
        self._threads.append(t)
        t.start()

    def _say(
        self, line: str, level: int = logging.INFO, *, kernel_output: bool = False, **fields: Any
    ) -> None:
        """What the VM has to say, with the chain's fields (see :mod:`pyrecks.logsetup`):
        to ``echo_to`` if the caller gave one, else to ``logging`` — ``pyrecks.vm``, and
        ``pyrecks.kernel`` for the lines kernels print."""
        if self.config.echo_to is not None:
            if self.config.echo:
                with self._echo_lock:
                    self.config.echo_to(line)
            return
        logger = _kernel_log if kernel_output else log
        logger.log(level, line, extra={"vm": self.name, **fields})

    # -- workers ----------------------------------------------------------------------------

    def _work_loop(self) -> None:
        me = threading.current_thread()
        while True:
            item = self.consumer.next()
            if item is None:
                return
            try:
                if isinstance(item, ChainRun):
                    self._drive(item)  # back from a retry's backoff
                else:
                    self._handle_entry(*item)
            except Lost:
                pass  # stopping while Redis is down: the entry stays pending for later
            except Exception:  # never let one chain take a worker down
                log.exception("pyrecks VM: unexpected error handling %s", item)
            if getattr(me, "abandoned", False):
                return  # a replacement worker was started; this thread just ends

    def _handle_entry(
        self, stream: str, entry_id: str, fields: dict[str, str], reclaimed: bool
    ) -> None:
        chain_id = fields.get("chain")
        if chain_id is None:
            chain_id = self._create_from_entry(entry_id, fields)
            if chain_id is None:
                self.consumer.ack(stream, entry_id)
                return
        if self.roster.hold(chain_id, stream, entry_id):
            # We run it already: the entry (ours again, or another naming the chain) stays
            # pending until the chain leaves.  Acknowledged now, it could be the last entry
            # naming the chain if Redis forgot our claim (power loss): stranded.
            return
        claimed = self.committer.claim(chain_id, entry_id, reclaimed, stream)
        if isinstance(claimed, Claimed):
            if claimed.verdict == "pinned":  # another VM's to run, while it beats
                self.consumer.hand_over(stream, entry_id, claimed.detail)
            elif claimed.verdict == "skip" and claimed.detail == "running":
                # Running elsewhere — maybe started by this very entry, whose delivery Redis
                # forgot (power loss): never acknowledged away, it goes to the owner (ours:
                # left for our heartbeat to take up).
                if claimed.owner and claimed.owner != self.name:
                    self.consumer.give(stream, entry_id, claimed.owner)
            elif claimed.verdict != "alive":  # done, cancelled, waiting, duplicate or expired
                self.consumer.ack(stream, entry_id)
            return  # alive: its owner still beats, keeps the chain (and acks its entry)
        run = claimed
        if reclaimed:
            self._say(f"[{chain_id}] resuming at step {run.step} (taken over)", chain=chain_id)
        try:
            self.steps.resume(run)
        except StepFailure as failure:
            self._finish(run, self.committer.fail(run, failure))
            return
        except REDIS_DOWN:
            self.committer.left(run)
            raise
        except Exception as exc:
            log.exception("pyrecks VM: unexpected error resuming chain %s", run.id)
            self._finish(run, self.committer.fail(run, internal_failure(exc)))
            return
        self._drive(run)

    def _drive(self, run: ChainRun) -> None:
        """Run the chain's steps on this thread until it leaves the VM or waits to retry."""
        try:
            outcome = self._run_chain(run)
        except StepFailure as failure:
            outcome = self.committer.fail(run, failure)
        except Lost:
            outcome = self.committer.lost(run)
        except REDIS_DOWN:
            self.committer.left(run)
            raise
        except Exception as exc:
            # A bug of ours, or input nothing foresaw: fail this chain with the reason
            # rather than leave it 'running' under a live owner for ever.
            log.exception("pyrecks VM: unexpected error in chain %s", run.id)
            outcome = self.committer.fail(run, internal_failure(exc))
        except BaseException:
            self.committer.left(run)
            raise
        if outcome is not None:
            self._finish(run, outcome)

    def _finish(self, run: ChainRun, ack: bool) -> None:
        """The chain left this VM: forget it, and acknowledge its entries if nobody needs
        them (or hand them back, if Redis has it queued and forgot we held it)."""
        self.committer.left(run)
        entries = [(run.stream, run.entry_id), *run.duplicates]
        if ack and not run.abandoned:
            for stream, entry_id in entries:
                self.consumer.ack(stream, entry_id)
        elif run.requeue:
            self.consumer.hand_back([(stream, entry_id, {}, False) for stream, entry_id in entries])

    def _create_from_entry(self, entry_id: str, fields: dict[str, str]) -> str | None:
        """A raw ``XADD <starts> * call '...' [id X]`` from any client: make its record."""
        chain_id = fields.get("id") or entry_id.replace("-", "")
        source = fields.get("call", "")
        error = ""
        problem = chain_id_problem(chain_id)
        if problem:
            error = (
                f"cannot start chain: {problem}; this failed record uses the stream entry id "
                "instead"
            )
            chain_id = entry_id.replace("-", "")
        try:
            rendered = render_call(parse_start_call(source))
        except PyrecksError as exc:
            rendered, error = source, error or f"cannot start chain: {exc}"
        invocation = self.store.create(
            chain_id,
            rendered,
            now(),
            enqueue=False,
            error=error,
            error_kind="bad_call" if error else "",
        )
        self.access.retrying(lambda: invocation.run(self.access.client()))
        if error:
            return None
        # A duplicate submission (same id) finds the chain past 'queued': the claim skips it.
        return chain_id

    # -- running a chain --------------------------------------------------------------------

    def _run_chain(self, run: ChainRun) -> bool | None:
        """Run steps until the chain leaves this VM (True: its entry can be acked) or waits
        out a retry's backoff (None: it stays ours, parked without a thread)."""
        while True:
            if self._stopping.is_set():
                return self.committer.release(run)
            self.observer.step_started(run)
            try:
                transition = self.steps.run(run, self._on_abandon(run))
            except StepFailure as failure:
                self.observer.step_finished(run, failure.kind)
                if run.abandoned:
                    return False
                if failure.kind in RETRYABLE and run.attempts < run.retries:
                    run.attempts += 1
                    delay = min(
                        self.config.retry_backoff * 2 ** (run.attempts - 1),
                        self.config.retry_backoff_max,
                    )
                    self.committer.note_retry(run, failure, delay)
                    self._park(run, delay)
                    return None
                raise
            self.observer.step_finished(run, "ok", transition)
            run.attempts = 0
            if transition is None:
                return False  # abandoned by the watchdog
            if not isinstance(transition.then, Call):
                return True

    # -- retries wait without a thread ------------------------------------------------------

    def _park(self, run: ChainRun, delay: float) -> None:
        """Wait ``delay`` seconds before the chain's next try, holding no worker thread.

        The chain stays ours (running, its entry pending and kept fresh by the heartbeat);
        only the thread is given back, so always-failing kernels with long backoffs cannot
        starve the VM.  A drain hands parked chains back to the queue at once.
        """
        with self._delay_wake:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._delay_order), run))
            self._delay_wake.notify()

    def _delay_loop(self) -> None:
        """Put each parked chain back in the work queue when its backoff is over."""
        with self._delay_wake:
            while not self._stopping.is_set():
                if not self._delayed:
                    self._delay_wake.wait()
                    continue
                due = self._delayed[0][0] - time.monotonic()
                if due > 0:
                    self._delay_wake.wait(due)
                    continue
                _due, _n, run = heapq.heappop(self._delayed)
                self.consumer.work.put(run)

    def _on_abandon(self, run: ChainRun) -> Callable[[], None]:
        me = threading.current_thread()

        def abandon() -> None:
            # The kernel ignored its time limit: give its thread up, fail the chain, and
            # start a replacement worker so the VM keeps its capacity.
            run.abandoned = True
            me.abandoned = True  # type: ignore[attr-defined]
            message = (
                f"kernel {run.call.name} exceeded its time limit of {run.limit:g}s and did "
                "not stop; its thread was abandoned"
            )
            if self.committer.fail(run, StepFailure("timeout", message)):
                self.consumer.ack(run.stream, run.entry_id)
            self._spawn_worker()

        return abandon


def _read_policy(r: redis.Redis, keyspace: Keyspace) -> tuple[str, Policy]:
    """The stored policy and a short id of its fields (what ``pyrecks vms`` shows)."""
    raw: Any = r.hgetall(keyspace.policy)
    fields = {text(k): text(v) for k, v in raw.items()}
    if not fields:
        return "default", Policy()
    digest = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:12]
    return digest, Policy.from_fields(fields)


__all__ = ["ISOLATION_MODES", "VM", "VMConfig", "default_vm_name", "parse_start_call"]
