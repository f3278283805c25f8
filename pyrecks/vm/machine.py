"""The VM: worker threads that run chains step by step.

Shape (one VM process)::

    reader thread ── XREADGROUP starts stream ──► work queue ──► N worker threads
                                                                  │ claim chain (fenced)
                                                                  ▼
               PREPARE (kernel digest + @key values, 1 round trip) → run kernel in sandbox
               → parse return string → COMMIT (effects + checkpoint + log, 1 atomic script)
               → next step … until the chain ends, fails, fans out or is cancelled

A stream entry is acknowledged only when its chain leaves this VM (ended, failed, waiting
for fan-out branches, or handed back on drain), so an entry of a VM that dies stays pending
in the consumer group for another VM to take over.  Every commit is fenced on
(owner, epoch, step): a VM that lost its chain cannot write a stale step.
"""

from __future__ import annotations

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
from typing import Any

import redis

from pyrecks.compiler.instructions import (
    Call,
    FanOut,
    Finish,
    KeyRef,
    Transition,
    thaw,
)
from pyrecks.compiler.parser import parse, parse_value
from pyrecks.compiler.policy import Policy, load_policy
from pyrecks.compiler.render import render, render_call, render_value
from pyrecks.compiler.store import KernelStore
from pyrecks.errors import KernelNotFound, KernelRejected, PyrecksError, ReturnStringError
from pyrecks.keys import Keyspace
from pyrecks.vm.convert import ArgumentError, RedisValue, convert
from pyrecks.vm.effects import KEY_TYPES, EffectRejected, check_patterns, encode_effect
from pyrecks.vm.executors import KernelExecutor, ThreadExecutor
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.loader import KernelLoader, LoadedKernel
from pyrecks.vm.sandbox import OutputBuffer, Sandbox
from pyrecks.vm.scripts import Scripts, pack

log = logging.getLogger("pyrecks.vm")

GROUP = "pyrecks-vms"


def default_vm_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class VMConfig:
    """Knobs of one VM process (see docs/vm.md)."""

    threads: int = 8
    name: str = field(default_factory=default_vm_name)
    retention: int = 7 * 24 * 3600
    max_log: int = 10_000
    echo: bool = True
    block_ms: int = 500
    timeout_grace: float = 2.0
    echo_to: Callable[[str], None] | None = None


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
        self.policy = policy or load_policy(r, self.keyspace)
        self.scripts = Scripts(r)
        self.sandbox = Sandbox(
            self.policy.allowed_modules,
            self.policy.forbidden_builtins,
            self.policy.forbidden_attributes,
        )
        self.loader = KernelLoader(KernelStore(r, self.keyspace), self.policy, self.sandbox)
        self.executor: KernelExecutor = executor or ThreadExecutor(self.config.timeout_grace)
        self._work: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue()
        self._idle = threading.Semaphore(0)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active: dict[str, ChainRun] = {}
        self._lock = threading.Lock()
        self._echo_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> VM:
        self._ensure_group()
        for _ in range(self.config.threads):
            self._spawn_worker()
        reader = threading.Thread(target=self._read_loop, name="pyrecks-reader", daemon=True)
        reader.start()
        self._threads.append(reader)
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
        self.executor.close()
        self._stopped.set()

    def run_forever(self) -> None:
        """Run until Ctrl-C / SIGTERM, then drain gracefully."""
        self.start()
        try:
            self._stopped.wait()
        except KeyboardInterrupt:
            self._say("draining: running chains finish their step and go back to the queue")
            self.stop()

    @property
    def active_chains(self) -> list[str]:
        with self._lock:
            return list(self._active)

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

    # -- reading the starts stream --------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            # Only take as many entries as there are idle workers: an entry we hold but do
            # not run would wait in our pending list for nothing.
            if not self._idle.acquire(timeout=self.config.block_ms / 1000):
                continue
            free = 1
            while self._idle.acquire(blocking=False):
                free += 1
            got: Any
            try:
                got = self.r.xreadgroup(
                    GROUP,
                    self.name,
                    {self.keyspace.starts: ">"},
                    count=free,
                    block=self.config.block_ms,
                )
                backoff = 0.05
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._ensure_group()
                got = []
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._say(f"redis unavailable ({exc}); retrying in {backoff:.2f}s")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                got = []
            taken = 0
            for _stream, entries in got or []:
                for entry_id, fields in entries:
                    taken += 1
                    self._work.put((_s(entry_id), {_s(k): _s(v) for k, v in fields.items()}))
            for _ in range(free - taken):
                self._idle.release()

    # -- workers ----------------------------------------------------------------------------

    def _work_loop(self) -> None:
        me = threading.current_thread()
        while True:
            self._idle.release()
            item = self._work.get()
            if item is None:
                return
            entry_id, fields = item
            try:
                self._handle_entry(entry_id, fields)
            except Exception:  # never let one chain take a worker down
                log.exception("pyrecks VM: unexpected error handling %s", entry_id)
            if getattr(me, "abandoned", False):
                return  # a replacement worker was started; this thread just ends

    def _ack(self, entry_id: str) -> None:
        self.r.xack(self.keyspace.starts, GROUP, entry_id)

    def _handle_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        chain_id = fields.get("chain")
        if chain_id is None:
            chain_id = self._create_from_entry(entry_id, fields)
            if chain_id is None:
                self._ack(entry_id)
                return
        ks = self.keyspace
        got = self.scripts.claim(
            keys=[ks.chain(chain_id), ks.results(chain_id)], args=[self.name, _now()]
        )
        if _s(got[0]) != "ok":
            self._ack(entry_id)  # done, cancelled, already running elsewhere or expired
            return
        epoch, step, call_text, join_text = (_s(x) for x in got[1:5])
        results = [got[i : i + 2] for i in range(5, len(got), 2)]
        parent, branch = self.r.hmget(ks.chain(chain_id), "parent", "branch")
        try:
            call = self._resume_call(call_text, join_text, results)
        except ReturnStringError as exc:
            run = ChainRun(chain_id, epoch, int(step), Call("?"), entry_id)
            self._fail(run, StepFailure("return_string", f"stored call is invalid: {exc}"))
            self._ack(entry_id)
            return
        run = ChainRun(
            chain_id,
            epoch,
            int(step),
            call,
            entry_id,
            parent=_s(parent) if parent else None,
            branch=_s(branch) if branch is not None else None,
            clear_join=bool(join_text),
        )
        with self._lock:
            self._active[chain_id] = run
        try:
            self._run_chain(run)
        finally:
            with self._lock:
                self._active.pop(chain_id, None)
        if not run.abandoned:
            self._ack(entry_id)

    def _create_from_entry(self, entry_id: str, fields: dict[str, str]) -> str | None:
        """A raw ``XADD <starts> * call '...' [id X]`` from any client: make its record."""
        chain_id = fields.get("id") or entry_id.replace("-", "")
        if "." in chain_id or not chain_id:
            chain_id = entry_id.replace("-", "")
        text = fields.get("call", "")
        error = ""
        try:
            call = parse_start_call(text)
            rendered = render_call(call)
        except (ReturnStringError, PyrecksError) as exc:
            rendered, error = text, f"cannot start chain: {exc}"
        ks = self.keyspace
        created = self.scripts.create(
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
        if error:
            return None
        if not created and fields.get("id"):
            pass  # duplicate submission: the claim below skips it unless still queued
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

    def _run_chain(self, run: ChainRun) -> None:
        while True:
            if self._stopping.is_set():
                self._release(run)
                return
            try:
                transition = self._step(run)
            except StepFailure as failure:
                if not run.abandoned:
                    self._fail(run, failure)
                return
            if transition is None or not isinstance(transition.then, Call):
                return

    def _step(self, run: ChainRun) -> Transition | None:
        call = run.call
        ks = self.keyspace
        refs = [a.key for a in call.args if isinstance(a, KeyRef)]
        prep = self.scripts.prepare(
            keys=[ks.kernel(call.name), *refs],
            args=[self.loader.known_digest(call.name)],
        )
        try:
            kernel = self.loader.resolve(call.name, _s(prep[0]), prep[1])
        except KernelNotFound as exc:
            raise StepFailure("missing_kernel", str(exc)) from None
        except KernelRejected as exc:
            detail = "; ".join(str(f) for f in exc.findings)
            raise StepFailure("lint", f"kernel {call.name!r} was refused: {detail}") from None
        values = iter(prep[2:])
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
        output = OutputBuffer(echo=self._echo_for(run, call.name) if self.config.echo else None)
        returned = self._execute(run, kernel, args, output)
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
        if not self._commit(run, kernel, transition, output):
            return None
        return transition

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
        self, run: ChainRun, kernel: LoadedKernel, args: list[Any], output: OutputBuffer
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
            self._fail(run, StepFailure("timeout", message))
            self._ack(run.entry_id)
            self._spawn_worker()

        return self.executor.execute(kernel, args, output, limit, abandon)

    # -- committing ------------------------------------------------------------------------

    def _log_entry(self, run: ChainRun, kind: str, kernel: str, text: str, now: str) -> list[str]:
        return ["kind", kind, "step", str(run.step + 1), "kernel", kernel, "text", text, "ts", now]

    def _commit(
        self, run: ChainRun, kernel: LoadedKernel, transition: Transition, output: OutputBuffer
    ) -> bool:
        """Apply effects + checkpoint + log atomically; False if the chain is not ours."""
        ks = self.keyspace
        now = _now()
        then = transition.then
        try:
            check_patterns(transition.effects, self.policy.effect_key_patterns)
            effects = [encode_effect(e) for e in transition.effects]
        except EffectRejected as exc:
            raise StepFailure("effect", str(exc)) from None
        step = run.step + 1
        fields: list[str] = ["step", str(step), "kernel", kernel.name, "updated", now]
        if run.clear_join:
            fields += ["join", ""]
        logs = [self._log_entry(run, "out", kernel.name, line, now) for line in output.lines]
        payload: dict[str, Any] = {
            "owner": self.name,
            "epoch": run.epoch,
            "step": str(run.step),
            "prefix": ks.internal_prefix,
            "types": KEY_TYPES,
            "effects": effects,
            "maxlog": str(self.config.max_log),
            "retention": str(self.config.retention),
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
            fields += [
                "call",
                text,
                "status",
                "waiting",
                "owner",
                "",
                "pending",
                str(len(branches)),
                "branches",
                str(len(branches)),
                "join",
                render_call(then.join),
            ]
            payload["fanout"] = {
                "branches": branches,
                "results": ks.results(run.id),
                "parent": run.id,
                "starts": ks.starts,
            }
            logs.append(self._log_entry(run, "fanout", kernel.name, text, now))
        else:
            result = render_value(then.value) if isinstance(then, Finish) else ""
            fields += ["call", "", "status", "done", "owner", "", "finished", now, "result", result]
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
        got = self.scripts.commit(
            keys=[ks.chain(run.id), ks.log(run.id), ks.kernels], args=[pack(payload)]
        )
        status = _s(got[0])
        if status == "rejected":
            raise StepFailure("effect", f"effect refused: {_s(got[1])}")
        if status == "fenced":
            self._say(f"[{run.id}] stopped: the chain is {_s(got[1])} and no longer ours")
            return False
        run.step = step
        run.clear_join = False
        if isinstance(then, Call):
            run.call = then
        return True

    def _fail(self, run: ChainRun, failure: StepFailure) -> None:
        ks = self.keyspace
        now = _now()
        text = str(failure)
        payload: dict[str, Any] = {
            "owner": self.name,
            "epoch": run.epoch,
            "step": str(run.step),
            "fields": [
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
            ],
            "logs": [
                self._log_entry(
                    run,
                    "error",
                    run.call.name,
                    text + ("\n" + failure.tb if failure.tb else ""),
                    now,
                )
            ],
            "maxlog": str(self.config.max_log),
            "retention": str(self.config.retention),
            "results": ks.results(run.id),
            "now": now,
        }
        if run.parent is not None:
            payload["parent"] = {
                "key": ks.chain(run.parent),
                "log": ks.log(run.parent),
                "error": f"branch {run.id} failed: {text}",
            }
        self.scripts.fail(keys=[ks.chain(run.id), ks.log(run.id)], args=[pack(payload)])
        self._say(f"[{run.id}] failed ({failure.kind}): {text}")

    def _release(self, run: ChainRun) -> None:
        ks = self.keyspace
        payload = {"owner": self.name, "epoch": run.epoch, "step": str(run.step), "now": _now()}
        self.scripts.release(keys=[ks.chain(run.id), ks.starts], args=[pack(payload)])


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
