"""The VM: worker threads that run chains step by step.

Shape (one VM process)::

    reader thread ── XREADGROUP starts stream ─┐
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
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from pyrecks.compiler.instructions import Call, FanOut, Finish, KeyRef, Transition, thaw
from pyrecks.compiler.parser import parse, parse_value
from pyrecks.compiler.policy import Policy, load_policy
from pyrecks.compiler.render import render, render_call, render_value
from pyrecks.compiler.store import KernelStore
from pyrecks.errors import (
    KernelNotFound,
    KernelRejected,
    PyrecksError,
    RenderError,
    ReturnStringError,
)
from pyrecks.keys import Keyspace
from pyrecks.vm.convert import ArgumentError, RedisValue, convert
from pyrecks.vm.effects import EffectRejected, check_patterns, encode_effect
from pyrecks.vm.executors import KernelExecutor, ThreadExecutor
from pyrecks.vm.failures import RETRYABLE, StepFailure
from pyrecks.vm.freshness import KernelWatch
from pyrecks.vm.groupcommit import GroupCommitter
from pyrecks.vm.loader import KernelLoader, LoadedKernel
from pyrecks.vm.output import StepOutput
from pyrecks.vm.registry import beat, holder_of
from pyrecks.vm.sandbox import Sandbox
from pyrecks.vm.scripts import Scripts, pack

log = logging.getLogger("pyrecks.vm")

GROUP = "pyrecks-vms"
#: Where kernel code runs (see docs/isolation.md); the first is the default.
ISOLATION_MODES = ("jail", "process", "thread")
T = TypeVar("T")
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def default_vm_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class VMConfig:
    """Knobs of one VM process (see docs/vm.md and docs/operations.md)."""

    threads: int = 8
    name: str = field(default_factory=default_vm_name)
    retention: int = 7 * 24 * 3600
    max_log: int = 10_000
    echo: bool = True
    block_ms: int = 500
    timeout_grace: float = 2.0
    echo_to: Callable[[str], None] | None = None
    #: Seconds without a heartbeat after which this VM's chains may be taken over.
    lease: float = 10.0
    #: First retry delay (doubles per attempt, capped by retry_backoff_max).
    retry_backoff: float = 0.5
    retry_backoff_max: float = 30.0
    #: "jail" (default: each kernel in its own confined process, see docs/isolation.md),
    #: "process" (worker processes with time and memory limits, no jail) or "thread"
    #: (in the VM process: for kernels trusted as much as the VM's own code).
    isolation: str = "jail"
    memory_limit_mb: int = 512
    #: With jail isolation: at most this many cells (one kernel version each) live at once.
    max_cells: int = 64
    #: A step without effects needs no commit of its own (a crash re-runs it from the last
    #: checkpoint); checkpoint anyway after this many steps or milliseconds.
    checkpoint_steps: int = 100
    checkpoint_ms: float = 100.0
    #: Learn about hot patches from Redis invalidation messages instead of asking each step.
    track_kernels: bool = True
    #: Send the commits of concurrently running chains together, one round trip per batch.
    group_commit: bool = True
    #: With at most this many chains running, a chain's next kernel runs while its previous
    #: step's commit is on the wire (see _InFlight); above it, group commit takes over.
    pipeline_below: int = 4


@dataclass
class _InFlight:
    """A step commit sent but not yet acknowledged, and how to undo our optimism.

    While it is on the wire the chain's next kernel already runs: kernels are pure and the
    next call reads no ``@key`` (a call that does waits for the commit first), so nothing
    can observe the difference.  If the commit turns out refused or fenced, the next
    step's work is thrown away and the chain is where the commit left it.
    """

    keys: list[str]
    args: list[bytes | str]
    committed_before: int
    step_before: int
    call_before: Call
    logs_before: list[list[str]]
    clear_join_before: bool


@dataclass
class ChainRun:
    """A chain while this VM owns it."""

    id: str
    epoch: str
    step: int
    call: Call
    entry_id: str
    parent: str | None = None
    branch: str | None = None
    clear_join: bool = False
    abandoned: bool = False
    attempts: int = 0
    retries: int = 0
    #: The step Redis has (the last checkpoint); ``step`` may be ahead by pure steps.
    committed_step: int = 0
    checkpoint_at: float = field(default_factory=time.monotonic)
    pending_logs: list[list[str]] = field(default_factory=list)
    inflight: _InFlight | None = None
    #: The first step after a claim always asks Redis for the kernel digest, so a fix made
    #: just before a start or a retry is seen even if its invalidation is still in flight.
    asked: bool = False
    #: The call as the record stored it at the claim: what a failure before the call could
    #: be parsed (a chain started with an invalid call, then retried) records again.
    stored_call: str = ""


class _Lost(Exception):
    """The chain is no longer ours (fenced): stop without acknowledging its entry."""


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _now() -> str:
    return repr(time.time())


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
        self.keyspace = keyspace or Keyspace()
        self.config = config or VMConfig()
        if self.config.isolation not in ISOLATION_MODES:
            raise PyrecksError(
                f"unknown isolation {self.config.isolation!r}: use one of "
                + ", ".join(repr(m) for m in ISOLATION_MODES)
            )
        self.policy = policy or load_policy(r, self.keyspace)
        self.scripts = Scripts(r)
        self.sandbox = Sandbox(
            self.policy.allowed_modules,
            self.policy.forbidden_builtins,
            self.policy.forbidden_attributes,
        )
        self.loader = KernelLoader(
            KernelStore(r, self.keyspace),
            self.policy,
            trust_stored_code=self.config.isolation == "jail",
        )
        self.executor: KernelExecutor = executor or self._make_executor()
        self.watch = KernelWatch(r.connection_pool)
        self.committer = GroupCommitter(self._client)
        self._local = threading.local()
        self._work: queue.Queue[tuple[str, dict[str, str], bool] | None] = queue.Queue()
        self._idle = threading.Semaphore(0)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active: dict[str, ChainRun] = {}
        self._lock = threading.Lock()
        self._echo_lock = threading.Lock()
        self._started_at = time.time()

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
        self._ensure_group()
        self._beat()
        # Entries this VM name left pending (a restart after a crash) resume first.
        for entry_id, fields in self._own_pending():
            self._work.put((entry_id, fields, True))
        for _ in range(self.config.threads):
            self._spawn_worker()
        for target, name in ((self._read_loop, "reader"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"pyrecks-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Drain: take no new chains; running chains finish their step and are handed back."""
        self._stopping.set()
        for _ in range(self.config.threads):
            self._work.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            t.join(left)
        leftovers = []
        while not self._work.empty():
            item = self._work.get_nowait()
            if item is not None:
                leftovers.append(item)
        self._hand_back(leftovers)
        self.executor.close()
        self.watch.stop()
        with contextlib.suppress(*_REDIS_DOWN):  # else our heartbeat key expires on its own
            self._beat(state="stopped")
        self._stopped.set()

    def run_forever(self) -> None:
        """Run until Ctrl-C / SIGTERM, then drain gracefully."""
        self.start()
        try:
            self._stopped.wait()
        except KeyboardInterrupt:
            self._say("draining: running chains finish their step and go back to the queue")
            self.stop()

    def _ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.keyspace.starts, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _spawn_worker(self) -> None:
        t = threading.Thread(target=self._work_loop, name="pyrecks-worker", daemon=True)
        self._threads.append(t)
        t.start()

    def _say(self, line: str) -> None:
        if not self.config.echo:
            return
        with self._echo_lock:
            if self.config.echo_to is not None:
                self.config.echo_to(line)
            else:
                print(line, file=sys.stderr, flush=True)

    # -- heartbeat and takeover ---------------------------------------------------------

    def _beat(self, state: str = "running") -> None:
        pipe = self.r.pipeline(transaction=False)
        beat(
            pipe,
            self.keyspace,
            self.name,
            lease=self.config.lease,
            threads=self.config.threads,
            active=len(self._active),
            isolation=self.config.isolation,
            started=self._started_at,
            state=state,
        )
        with self._lock:
            entries: list[Any] = [run.entry_id for run in self._active.values()]
        if entries:
            # Reset the idle time of our entries: they are not up for takeover.
            pipe.xclaim(self.keyspace.starts, GROUP, self.name, 0, entries, justid=True)
        pipe.execute()

    def _heartbeat_loop(self) -> None:
        interval = max(self.config.lease / 3, 0.05)
        while not self._stopping.wait(interval):
            try:
                self._beat()
            except _REDIS_DOWN as exc:
                self._say(f"heartbeat failed ({exc}); retrying")

    def _own_pending(self) -> list[tuple[str, dict[str, str]]]:
        got: Any = self.r.xreadgroup(GROUP, self.name, {self.keyspace.starts: "0"})
        return [
            (_s(entry_id), {_s(k): _s(v) for k, v in (fields or {}).items()})
            for _stream, entries in got or []
            for entry_id, fields in entries
        ]

    def _reclaim(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """Take up to ``count`` entries idle longer than the lease (their VM stopped beating)."""
        got: Any = self.r.xautoclaim(
            self.keyspace.starts,
            GROUP,
            self.name,
            min_idle_time=int(self.config.lease * 1000),
            start_id="0-0",
            count=count,
        )
        entries = got[1] if got else []
        return [
            (_s(entry_id), {_s(k): _s(v) for k, v in (fields or {}).items()})
            for entry_id, fields in entries
            if fields is not None  # an entry trimmed from the stream
        ]

    # -- reading the starts stream --------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = 0.05
        last_reclaim = 0.0
        while not self._stopping.is_set():
            # Only take as many entries as there are idle workers: an entry we hold but do
            # not run would wait in our pending list for nothing.
            if not self._idle.acquire(timeout=self.config.block_ms / 1000):
                continue
            free = 1
            while self._idle.acquire(blocking=False):
                free += 1
            items: list[tuple[str, dict[str, str], bool]] = []
            try:
                if time.monotonic() - last_reclaim > self.config.lease / 2:
                    last_reclaim = time.monotonic()
                    items += [(e, f, True) for e, f in self._reclaim(free)]
                if len(items) < free:
                    got: Any = self.r.xreadgroup(
                        GROUP,
                        self.name,
                        {self.keyspace.starts: ">"},
                        count=free - len(items),
                        block=self.config.block_ms,
                    )
                    for _stream, entries in got or []:
                        for entry_id, fields in entries:
                            decoded = {_s(k): _s(v) for k, v in fields.items()}
                            items.append((_s(entry_id), decoded, False))
                backoff = 0.05
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (or Redis lost it)
                    self._ensure_group()
                else:
                    self._say(f"reading the starts stream failed: {exc}")
            except _REDIS_DOWN as exc:
                self._say(f"redis unavailable ({exc}); retrying in {backoff:.2f}s")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            if self._stopping.is_set():
                self._hand_back(items)  # read while stopping: nobody here will run them
                return
            for item in items:
                self._work.put(item)
            for _ in range(free - len(items)):
                self._idle.release()

    def _hand_back(self, items: list[tuple[str, dict[str, str], bool]]) -> None:
        """Give stream entries back to the group (a fresh copy, then ack the original).

        A consumer cannot un-read an entry; left pending, it would wait a whole lease for a
        takeover.  Copies are safe: an entry only names a chain, and claiming checks status.
        """
        if not items:
            return
        pipe = self.r.pipeline(transaction=True)
        for entry_id, fields, _reclaimed in items:
            pipe.xadd(self.keyspace.starts, fields)  # type: ignore[arg-type]
            pipe.xack(self.keyspace.starts, GROUP, entry_id)
        with contextlib.suppress(*_REDIS_DOWN):
            pipe.execute()

    # -- workers ----------------------------------------------------------------------------

    def _work_loop(self) -> None:
        me = threading.current_thread()
        while True:
            self._idle.release()
            item = self._work.get()
            if item is None:
                return
            entry_id, fields, reclaimed = item
            try:
                self._handle_entry(entry_id, fields, reclaimed)
            except _Lost:
                pass  # stopping while Redis is down: the entry stays pending for later
            except Exception:  # never let one chain take a worker down
                log.exception("pyrecks VM: unexpected error handling %s", entry_id)
            if getattr(me, "abandoned", False):
                return  # a replacement worker was started; this thread just ends

    def _ack(self, entry_id: str) -> None:
        self._with_redis(lambda: self.r.xack(self.keyspace.starts, GROUP, entry_id))

    def _handle_entry(self, entry_id: str, fields: dict[str, str], reclaimed: bool) -> None:
        chain_id = fields.get("chain")
        if chain_id is None:
            chain_id = self._create_from_entry(entry_id, fields)
            if chain_id is None:
                self._ack(entry_id)
                return
        ks = self.keyspace
        with self._lock:
            running = self._active.get(chain_id)
        if running is not None:
            if running.entry_id != entry_id:
                self._ack(entry_id)  # a stale duplicate of a chain we are running
            return  # (our own entry, reclaimed by ourselves: it stays pending until the end)
        mode = ["reclaim" if reclaimed else "new"]

        def claim() -> Any:
            try:
                return self.scripts.claim(
                    keys=[ks.chain(chain_id), ks.results(chain_id)],
                    args=[self.name, _now(), ks.vm_prefix, mode[0]],
                )
            except _REDIS_DOWN:
                # The claim may have landed without us hearing back: claim again as a
                # takeover, which accepts a chain that is already running under our name.
                mode[0] = "reclaim"
                raise

        got = self._with_redis(claim)
        verdict = _s(got[0])
        if verdict == "alive":
            return  # its owner still beats: it keeps the chain (and acks the entry)
        if verdict != "ok":
            self._ack(entry_id)  # done, cancelled, waiting, duplicate or expired
            return
        epoch, step, call_text, join_text = (_s(x) for x in got[1:5])
        results = [got[i : i + 2] for i in range(5, len(got), 2)]
        parent, branch = self._with_redis(
            lambda: self.r.hmget(ks.chain(chain_id), "parent", "branch")
        )
        run = ChainRun(
            chain_id,
            epoch,
            int(step),
            Call("?"),
            entry_id,
            parent=_s(parent) if parent else None,
            branch=_s(branch) if branch is not None else None,
            clear_join=bool(join_text),
            committed_step=int(step),
            stored_call=call_text,
        )
        if reclaimed:
            self._say(f"[{chain_id}] resuming at step {run.step} (taken over)")
        with self._lock:
            self._active[chain_id] = run
        try:
            try:
                run.call = self._resume_call(call_text, join_text, results)
            except (ReturnStringError, PyrecksError) as exc:
                raise StepFailure("return_string", f"stored call is invalid: {exc}") from None
            finished = self._run_chain(run)
        except StepFailure as failure:
            finished = self._fail(run, failure)
        except _Lost:
            finished = self._lost(run)
        finally:
            if run.inflight is not None:  # never leave a reply unread on this connection
                with contextlib.suppress(Exception):
                    self._settle(run)
            with self._lock:
                self._active.pop(chain_id, None)
        if finished and not run.abandoned:
            self._ack(entry_id)

    def _create_from_entry(self, entry_id: str, fields: dict[str, str]) -> str | None:
        """A raw ``XADD <starts> * call '...' [id X]`` from any client: make its record."""
        chain_id = fields.get("id") or entry_id.replace("-", "")
        text = fields.get("call", "")
        error = ""
        if not chain_id or any(c in chain_id for c in ".{}"):
            error = (
                f"cannot start chain: invalid id {chain_id!r} ('.', '{{' and '}}' are reserved); "
                f"this failed record uses the stream entry id instead"
            )
            chain_id = entry_id.replace("-", "")
        try:
            rendered = render_call(parse_start_call(text))
        except PyrecksError as exc:
            rendered, error = text, error or f"cannot start chain: {exc}"
        ks = self.keyspace
        self._with_redis(
            lambda: self.scripts.create(
                keys=[ks.chain(chain_id), ks.chains, ks.starts],
                args=[
                    chain_id,
                    rendered,
                    _now(),
                    "0",
                    "failed" if error else "queued",
                    error,
                    "bad_call" if error else "",
                    str(self.config.retention),
                ],
            )
        )
        if error:
            self._with_redis(lambda: self.r.zadd(ks.failed, {chain_id: time.time()}))
            return None
        # A duplicate submission (same id) finds the chain past 'queued': the claim skips it.
        return chain_id

    @staticmethod
    def _resume_call(call_text: str, join_text: str, results: list[list[Any]]) -> Call:
        if join_text:
            join = parse(join_text).then
            assert isinstance(join, Call)
            ordered = sorted(((int(_s(i)), parse_value(_s(v))) for i, v in results))
            values = tuple(v for _, v in ordered)
            return Call(join.name, (values, *join.args))
        return parse_start_call(call_text)

    # -- running a chain --------------------------------------------------------------------

    def _run_chain(self, run: ChainRun) -> bool:
        """Run steps until the chain leaves this VM; return True if its entry can be acked."""
        while True:
            if self._stopping.is_set():
                return self._release(run)
            try:
                transition = self._step(run)
            except StepFailure as failure:
                if run.abandoned:
                    return False
                if failure.kind in RETRYABLE and run.attempts < run.retries:
                    run.attempts += 1
                    self._note_retry(run, failure)
                    continue
                raise
            run.attempts = 0
            if transition is None:
                return False  # abandoned by the watchdog
            if not isinstance(transition.then, Call):
                return True

    def _note_retry(self, run: ChainRun, failure: StepFailure) -> None:
        self._settle(run)
        delay = min(
            self.config.retry_backoff * 2 ** (run.attempts - 1), self.config.retry_backoff_max
        )
        text = (
            f"attempt {run.attempts} of {run.retries} retries after {failure.kind}: "
            f"{failure} (next try in {delay:g}s)"
        )
        self._say(f"[{run.id}] retry: {text}")
        run.pending_logs.append(self._log_entry(run, "retry", run.call.name, text, _now()))
        self._flush_logs(run)
        self._stopping.wait(delay)

    def _step(self, run: ChainRun) -> Transition | None:
        call = run.call
        refs = [a.key for a in call.args if isinstance(a, KeyRef)]
        kernel, contents = self._load(run, call, refs)
        run.retries = kernel.retries if kernel.retries is not None else self.policy.default_retries
        values = iter(contents)
        args: list[Any] = []
        for i, arg in enumerate(call.args):
            if isinstance(arg, KeyRef):
                kind, data = next(values)
                if _s(kind) == "none":
                    raise StepFailure(
                        "missing_key",
                        f"argument {i + 1} of {call.name} is @{arg.key}, but key "
                        f"{arg.key!r} does not exist",
                    )
                args.append(RedisValue(arg.key, _s(kind), data))
            else:
                args.append(thaw(arg))
        args = self._convert(kernel, args)
        output = StepOutput(
            echo=self._echo_for(run, call.name) if self.config.echo else None,
            flush=lambda lines: self._write_live(run, call.name, lines),
        )
        try:
            returned = self._execute(run, kernel, args, output)
        except StepFailure:
            # What a failing step printed is usually why it failed: keep it.
            now = _now()
            run.pending_logs += [
                self._log_entry(run, "out", call.name, line, now) for line in output.unwritten
            ]
            raise
        if run.abandoned:
            return None
        if returned is None:
            returned = ""
        if not isinstance(returned, str):
            raise StepFailure(
                "bad_return",
                f"kernel {call.name} returned a {type(returned).__name__}; a kernel must "
                "return a string such as 'next(\"x\")' (use pyrecks.kernel.call) or '' to end",
            )
        try:
            transition = parse(returned)
        except ReturnStringError as exc:
            raise StepFailure(
                "return_string",
                f"kernel {call.name} returned an invalid string: {exc}\n{exc.context()}",
            ) from None
        self._commit(run, kernel, transition, output)
        return transition

    def _load(self, run: ChainRun, call: Call, refs: list[str]) -> tuple[LoadedKernel, list[Any]]:
        """The kernel for ``call`` and the contents of its ``@key`` arguments.

        With no ``@key`` arguments and a kernel digest that Redis' invalidation messages say
        is unchanged, this costs no round trip at all.
        """
        key = self.keyspace.kernel(call.name)
        known = self.loader.known_digest(call.name)
        if not refs and run.asked and known and self.watch.trusted(key) == known:
            cached = self.loader.cached(call.name)
            if cached is not None:
                return cached, []
        self._settle(run)  # @key inputs must see the previous step's effects
        run.asked = True
        rc = self._client()
        prep = self._with_redis(
            lambda: self.scripts.prepare(keys=[key, *refs], args=[known], client=rc)
        )
        try:
            kernel = self.loader.resolve(call.name, _s(prep[0]), prep[1])
        except KernelNotFound as exc:
            raise StepFailure("missing_kernel", str(exc)) from None
        except KernelRejected as exc:
            detail = "; ".join(str(f) for f in exc.findings)
            raise StepFailure("lint", f"kernel {call.name!r} was refused: {detail}") from None
        if self.watch.enabled and self.watch.trusted(key) != kernel.digest:
            self.watch.track(key)
        return kernel, list(prep[2:])

    def _client(self) -> redis.Redis:
        """This thread's own connection: no pool checkout per command on the hot path."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = redis.Redis(
                connection_pool=self.r.connection_pool, single_connection_client=True
            )
            self._local.client = client
        return client

    def _write_live(self, run: ChainRun, kernel: str, lines: list[str]) -> None:
        """Lines of a long-running step, written to the log while it runs (see StepOutput)."""
        self._settle(run)  # after the previous step's log entries, never before them
        now = _now()
        run.pending_logs += [self._log_entry(run, "out", kernel, line, now) for line in lines]
        self._flush_logs(run)

    def _flush_logs(self, run: ChainRun) -> None:
        """Write buffered log entries outside a commit (before a retry's backoff)."""
        if not run.pending_logs:
            return
        pipe = self.r.pipeline(transaction=False)
        for entry in run.pending_logs:
            pipe.xadd(
                self.keyspace.log(run.id),
                dict(zip(entry[::2], entry[1::2], strict=True)),
                maxlen=self.config.max_log,
                approximate=True,
            )
        self._with_redis(pipe.execute)
        run.pending_logs.clear()

    def _echo_for(self, run: ChainRun, kernel: str) -> Callable[[str], None]:
        prefix = f"[{run.id} {run.step + 1} {kernel}]"
        return lambda line: self._say(f"{prefix} {line}")

    def _convert(self, kernel: LoadedKernel, args: list[Any]) -> list[Any]:
        params = [
            p for p in kernel.params if p.kind in ("positional_only", "positional_or_keyword")
        ]
        varargs = any(p.kind == "var_positional" for p in kernel.params)
        required = [p for p in params if not p.has_default]
        if len(args) < len(required) or (len(args) > len(params) and not varargs):
            want = (
                f"{len(required)}"
                if len(required) == len(params)
                else (f"{len(required)} to {len(params)}")
            )
            raise StepFailure(
                "arguments",
                f"kernel {kernel.name} takes {want} argument(s) "
                f"({', '.join(p.name for p in params)}) but the call gave {len(args)}",
            )
        out = []
        for i, value in enumerate(args):
            param = params[i] if i < len(params) else None
            annotation = param.annotation if param else None
            where = f"argument {param.name!r} of {kernel.name}" if param else f"argument {i + 1}"
            try:
                out.append(convert(value, annotation, where))
            except ArgumentError as exc:
                raise StepFailure("arguments", str(exc)) from None
        return out

    def _execute(
        self, run: ChainRun, kernel: LoadedKernel, args: list[Any], output: StepOutput
    ) -> Any:
        limit = kernel.timeout or self.policy.default_timeout
        me = threading.current_thread()

        def abandon() -> None:
            # The kernel ignored its time limit: give its thread up, fail the chain, and
            # start a replacement worker so the VM keeps its capacity.
            run.abandoned = True
            me.abandoned = True  # type: ignore[attr-defined]
            message = (
                f"kernel {kernel.name} exceeded its time limit of {limit:g}s and did not "
                "stop; its thread was abandoned"
            )
            if self._fail(run, StepFailure("timeout", message)):
                self._ack(run.entry_id)
            self._spawn_worker()

        return self.executor.execute(kernel, args, output, limit, abandon)

    # -- talking to Redis through outages -------------------------------------------------

    def _with_redis(self, operation: Callable[[], T]) -> T:
        """Run an idempotent Redis operation, waiting out a Redis outage with backoff.

        If the VM is asked to stop while Redis is down, the chain is left where it is:
        its entry stays pending and it resumes from its checkpoint later.
        """
        backoff = 0.05
        while True:
            try:
                return operation()
            except _REDIS_DOWN as exc:
                if self._stopping.is_set():
                    raise _Lost() from exc
                self._say(f"redis unavailable ({exc}); retrying in {backoff:.2f}s")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _run_fenced(
        self, script: Any, keys: list[str], payload: dict[str, Any], run: ChainRun
    ) -> Any:
        """Run a fenced script; after a lost connection, find out whether it landed."""
        packed = self._commit_args(payload) if script is self.scripts.commit else [pack(payload)]
        try:
            if self.config.group_commit:
                return self.committer.call(script, keys, packed)
            return script(keys=keys, args=packed, client=self._client())
        except _REDIS_DOWN:
            pass
        return self._recover(script, keys, packed, run)

    def _recover(self, script: Any, keys: list[str], packed: list[Any], run: ChainRun) -> Any:
        """The reply was lost: Redis may or may not have run the script.  The fence tells:
        if the chain moved on from our step under our epoch, it did; else send it again."""
        fields = self._with_redis(
            lambda: self.r.hmget(self.keyspace.chain(run.id), "owner", "epoch", "step", "status")
        )
        owner, epoch, step, status = (_s(f) if f is not None else "" for f in fields)
        mine = owner == self.name and epoch == run.epoch
        if mine and step == str(run.committed_step) and status == "running":
            return self._with_redis(lambda: script(keys=keys, args=packed))
        if epoch == run.epoch and step != str(run.committed_step):
            return [b"ok"]
        if epoch == run.epoch and status in ("done", "failed", "waiting"):
            return [b"ok"]
        return [b"fenced", status.encode()]

    def _commit_args(self, payload: dict[str, Any]) -> list[bytes | str]:
        """COMMIT's arguments: the step's payload, then what is the same for every step."""
        return [
            pack(payload),
            self.keyspace.internal_prefix,
            str(self.config.max_log),
            str(self.config.retention),
            self.keyspace.kernel_prefix,
        ]

    def _pipelining(self) -> bool:
        return len(self._active) <= self.config.pipeline_below

    def _send_commit(
        self, run: ChainRun, keys: list[str], args: list[bytes | str], printed: list[list[str]]
    ) -> None:
        """Send a commit without waiting for its reply (see _InFlight)."""
        connection = self._client().connection
        assert connection is not None
        run.inflight = _InFlight(
            keys,
            args,
            run.committed_step,
            run.step,
            run.call,
            [*run.pending_logs, *printed],
            run.clear_join,
        )
        # A failed send is settled like a lost reply: the fence tells whether it landed.
        with contextlib.suppress(*_REDIS_DOWN):
            connection.send_command("EVALSHA", self.scripts.commit.sha, len(keys), *keys, *args)

    def _settle(self, run: ChainRun) -> None:
        """Wait for the chain's in-flight commit; on refusal, put the chain back as it was."""
        flight = run.inflight
        if flight is None:
            return
        run.inflight = None
        got: Any
        try:
            connection = self._client().connection
            assert connection is not None
            got = connection.read_response()
        except redis.exceptions.NoScriptError:
            got = self._with_redis(lambda: self.scripts.commit(keys=flight.keys, args=flight.args))
        except _REDIS_DOWN:
            with contextlib.suppress(Exception):
                self._client().connection.disconnect()  # type: ignore[union-attr]
            committed = run.committed_step
            run.committed_step = flight.committed_before
            got = self._recover(self.scripts.commit, flight.keys, flight.args, run)
            run.committed_step = committed
        status = _s(got[0]) if isinstance(got, list) else "error"
        if status == "ok":
            return
        # Undo: the chain is where this commit found it.
        run.committed_step = flight.committed_before
        run.step = flight.step_before
        run.call = flight.call_before
        run.pending_logs = flight.logs_before
        run.clear_join = flight.clear_join_before
        if status == "rejected":
            raise StepFailure("effect", f"effect refused: {_s(got[1])}")
        if status == "fenced":
            self._say(f"[{run.id}] stopped: the chain is {_s(got[1])} and no longer ours")
            raise _Lost()
        raise StepFailure("commit", f"commit failed: {got!r}")

    # -- committing ------------------------------------------------------------------------

    def _log_entry(self, run: ChainRun, kind: str, kernel: str, text: str, now: str) -> list[str]:
        entry = ["kind", kind, "step", str(run.step + 1), "kernel", kernel, "text", text]
        if kind == "out":
            # Which run of the step printed it: a step re-run after a crash (new epoch) or
            # retried (next try) prints again, and its lines must be told apart.
            entry += ["attempt", f"{run.epoch}.{run.attempts + 1}"]
        return [*entry, "ts", now]

    def _commit(
        self, run: ChainRun, kernel: LoadedKernel, transition: Transition, output: StepOutput
    ) -> None:
        """Apply effects + checkpoint + log atomically; raise _Lost if the chain isn't ours."""
        self._settle(run)
        ks = self.keyspace
        now = _now()
        then = transition.then
        try:
            check_patterns(transition.effects, self.policy.effect_key_patterns)
            effects = [encode_effect(e) for e in transition.effects]
        except EffectRejected as exc:
            raise StepFailure("effect", str(exc)) from None
        step = run.step + 1
        # A new list: if this commit is refused, only what the step printed survives it
        # (not the lines saying where the chain went next).
        printed = [
            self._log_entry(run, "out", kernel.name, line, now) for line in output.unwritten
        ]
        logs = [*run.pending_logs, *printed]
        if isinstance(then, Call) and not effects and not self._checkpoint_due(run, step):
            # A pure step: no commit of its own.  A crash re-runs it from the checkpoint.
            logs.append(self._log_entry(run, "step", kernel.name, f"-> {render_call(then)}", now))
            run.pending_logs = logs
            run.step = step
            run.call = then
            return
        fields: list[str] = ["step", str(step), "kernel", kernel.name, "updated", now]
        if run.clear_join:
            fields += ["join", ""]
        payload: dict[str, Any] = {
            **self._fence(run),
            "effects": effects,
            "now": now,
        }
        if isinstance(then, Call):
            text = render_call(then)
            fields += ["call", text]
            logs.append(self._log_entry(run, "step", kernel.name, f"-> {text}", now))
        elif isinstance(then, FanOut):
            text = render(Transition(then))
            branches = [
                [f"{run.id}.{i}", ks.chain(f"{run.id}.{i}"), render_call(b)]
                for i, b in enumerate(then.branches)
            ]
            count = str(len(branches))
            fields += ["call", text, "status", "waiting", "owner", "", "pending", count]
            fields += ["branches", count, "join", render_call(then.join)]
            payload["fanout"] = {
                "branches": branches,
                "results": ks.results(run.id),
                "parent": run.id,
                "starts": ks.starts,
            }
            logs.append(self._log_entry(run, "fanout", kernel.name, text, now))
        else:
            result = render_value(then.value) if isinstance(then, Finish) else ""
            fields += ["call", "", "status", "done", "owner", "", "finished", now]
            fields += ["result", result]
            done: dict[str, Any] = {"results": ks.results(run.id), "result": result or "None"}
            if run.parent is not None and run.branch is not None:
                done["parent"] = {
                    "key": ks.chain(run.parent),
                    "results": ks.results(run.parent),
                    "index": run.branch,
                    "starts": ks.starts,
                    "id": run.parent,
                }
            payload["done"] = done
            ended = f"result {result}" if isinstance(then, Finish) else "halted"
            logs.append(self._log_entry(run, "step", kernel.name, "-> end", now))
            logs.append(self._log_entry(run, "end", kernel.name, f"done: {ended}", now))
        payload["fields"] = fields
        payload["logs"] = logs
        keys = [ks.chain(run.id), ks.log(run.id), ks.kernels]
        if isinstance(then, Call) and self._pipelining():
            self._send_commit(run, keys, self._commit_args(payload), printed)
            self._advance(run, step, then)
            return
        got = self._run_fenced(self.scripts.commit, keys, payload, run)
        status = _s(got[0])
        if status == "rejected":
            run.pending_logs = [*run.pending_logs, *printed]
            raise StepFailure("effect", f"effect refused: {_s(got[1])}")
        if status == "fenced":
            self._say(f"[{run.id}] stopped: the chain is {_s(got[1])} and no longer ours")
            raise _Lost()
        self._advance(run, step, then)

    def _fence(self, run: ChainRun) -> dict[str, str]:
        """What every fenced script checks: we own the chain, at this epoch and step."""
        return {"owner": self.name, "epoch": run.epoch, "step": str(run.committed_step)}

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

    def _commit_checkpoint(self, run: ChainRun) -> None:
        """Commit the in-memory progress of pure steps (no effects, same next call)."""
        ks = self.keyspace
        now = _now()
        payload: dict[str, Any] = {
            **self._fence(run),
            "effects": [],
            "fields": ["step", str(run.step), "call", render_call(run.call), "updated", now],
            "logs": run.pending_logs,
            "now": now,
        }
        got = self._run_fenced(
            self.scripts.commit, [ks.chain(run.id), ks.log(run.id), ks.kernels], payload, run
        )
        if _s(got[0]) != "ok":
            raise _Lost()
        run.committed_step = run.step
        run.pending_logs = []

    def _fail(self, run: ChainRun, failure: StepFailure) -> bool:
        """Record the failure (fenced); return True if the chain's entry can be acked."""
        try:
            self._settle(run)
        except StepFailure as earlier:
            failure = earlier  # the previous step's commit failed: that is the failure
        except _Lost:
            return self._lost(run)
        ks = self.keyspace
        now = _now()
        text = str(failure)
        detail = text + ("\n" + failure.tb if failure.tb else "")
        attempts = str(run.attempts + 1)
        try:
            call_text = render_call(run.call)
        except RenderError:  # the stored call never parsed: keep it as it was
            call_text = run.stored_call
        payload: dict[str, Any] = {
            **self._fence(run),
            "fields": [
                # The pure steps since the checkpoint are kept: the chain resumes (retry)
                # at the call that failed.
                "step",
                str(run.step),
                "call",
                call_text,
                "status",
                "failed",
                "owner",
                "",
                "error",
                text,
                "error_kind",
                failure.kind,
                "traceback",
                failure.tb,
                "finished",
                now,
                "updated",
                now,
                "kernel",
                run.call.name,
                "attempts",
                attempts,
            ],
            "logs": [*run.pending_logs, self._log_entry(run, "error", run.call.name, detail, now)],
            "maxlog": str(self.config.max_log),
            "retention": str(self.config.retention),
            "results": ks.results(run.id),
            "failed": ks.failed,
            "id": run.id,
            "now": now,
        }
        if run.parent is not None:
            payload["parent"] = {
                "key": ks.chain(run.parent),
                "log": ks.log(run.parent),
                "id": run.parent,
                "error": f"branch {run.id} failed: {text}",
            }
        try:
            got = self._run_fenced(
                self.scripts.fail, [ks.chain(run.id), ks.log(run.id)], payload, run
            )
        except _Lost:
            return False
        if _s(got[0]) == "fenced":
            return self._lost(run)
        self._say(f"[{run.id}] failed ({failure.kind}): {text}")
        return True

    def _lost(self, run: ChainRun) -> bool:
        """We lost the chain; ack its entry only if nobody else will run it any more."""
        try:
            status = self.r.hget(self.keyspace.chain(run.id), "status")
        except _REDIS_DOWN:
            return False
        return _s(status) in ("done", "failed", "cancelled", "") if status else True

    def _release(self, run: ChainRun) -> bool:
        ks = self.keyspace
        try:
            self._settle(run)
        except (_Lost, StepFailure):
            return self._lost(run)
        if run.step != run.committed_step:
            # Keep the progress of pure steps: checkpoint before handing the chain back.
            try:
                self._commit_checkpoint(run)
            except (_Lost, StepFailure):
                return self._lost(run)
        payload = {
            **self._fence(run),
            "now": _now(),
        }
        try:
            got = self._run_fenced(
                self.scripts.release, [ks.chain(run.id), ks.starts], payload, run
            )
        except _Lost:
            return False
        return _s(got[0]) == "ok" or self._lost(run)


def parse_start_call(text: str) -> Call:
    """A chain's first call: ``'func0("x")'`` or a bare kernel name ``start``."""
    stripped = text.strip()
    if stripped.isidentifier():
        return Call(stripped, ())
    transition = parse(stripped)
    if not isinstance(transition.then, Call) or transition.effects:
        raise PyrecksError(
            f"a chain starts with one call such as 'func0(\"x\")' or a kernel name, "
            f"not {stripped!r}"
        )
    return transition.then


__all__ = ["VM", "VMConfig", "parse_start_call"]
