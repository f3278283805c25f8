"""The step: from a chain's next call to the transition its kernel returned.

Resume (the stored call, or a fan-out's join with its branches' results), load (PREPARE:
the kernel record unless its digest is known current, and every ``@key`` in one round
trip), convert the arguments by the kernel's annotations, execute in the executor (jail
cell, worker process or thread sandbox), parse the return string — then hand the
transition to the committer.  Everything that can go wrong here is a
:class:`~pyrecks.vm.failures.StepFailure` with its ``error_kind``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from pyrecks.compiler.instructions import Call, KeyRef, Transition, thaw
from pyrecks.compiler.parser import parse, parse_value
from pyrecks.compiler.policy import Policy
from pyrecks.errors import KernelNotFound, KernelRejected, PyrecksError, ReturnStringError
from pyrecks.vm.chainrun import ChainRun, RedisAccess, parse_start_call, text
from pyrecks.vm.chainstore import ChainStore
from pyrecks.vm.committer import Committer
from pyrecks.vm.convert import ArgumentError, RedisValue, convert
from pyrecks.vm.executors import KernelExecutor
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.freshness import ClusterKernelWatch, KernelWatch
from pyrecks.vm.inputs import check_inputs, refused_input
from pyrecks.vm.loader import KernelLoader, LoadedKernel
from pyrecks.vm.output import StepOutput


class StepRunner:
    """Runs one step of a chain this VM owns (see the module docstring)."""

    def __init__(
        self,
        store: ChainStore,
        access: RedisAccess,
        committer: Committer,
        loader: KernelLoader,
        watch: KernelWatch | ClusterKernelWatch,
        executor: Callable[[], KernelExecutor],
        policy: Callable[[], Policy],
        echo: bool,
    ) -> None:
        self.store = store
        self.access = access
        self.committer = committer
        self.loader = loader
        self.watch = watch
        self._executor = executor
        self._policy = policy
        self.echo = echo
        self._source_sha1: dict[str, str] = {}  # kernel digest -> sha1 of its source

    # -- resume -----------------------------------------------------------------------------

    @staticmethod
    def resume(run: ChainRun) -> None:
        """Set ``run.call`` from what the claim read: the stored call, or the join."""
        try:
            if run.stored_join:
                join = parse(run.stored_join).then
                assert isinstance(join, Call)
                ordered = sorted((int(text(i)), parse_value(text(v))) for i, v in run.results)
                values = tuple(v for _, v in ordered)
                run.call = Call(join.name, (values, *join.args))
            else:
                run.call = parse_start_call(run.stored_call)
        except (ReturnStringError, PyrecksError) as exc:
            raise StepFailure("return_string", f"stored call is invalid: {exc}") from None

    # -- one step ---------------------------------------------------------------------------

    def run(self, run: ChainRun, on_abandon: Callable[[], None]) -> Transition | None:
        """Run ``run``'s next call and commit it; None if the kernel's thread was abandoned."""
        call = run.call
        run.step_began = time.time()
        refs = [a.key for a in call.args if isinstance(a, KeyRef)]
        kernel, contents = self.load(run, call, refs)
        policy = self._policy()
        run.retries = kernel.retries if kernel.retries is not None else policy.default_retries
        values = iter(contents)
        args: list[Any] = []
        for i, arg in enumerate(call.args):
            if isinstance(arg, KeyRef):
                kind, data = next(values)
                if text(kind) == "none":
                    raise StepFailure(
                        "missing_key",
                        f"argument {i + 1} of {call.name} is @{arg.key}, but key "
                        f"{arg.key!r} does not exist",
                    )
                args.append(RedisValue(arg.key, text(kind), data))
            else:
                args.append(thaw(arg))
        args = self.convert(kernel, args)
        output = StepOutput(
            echo=self._echo_for(run, call.name) if self.echo else None,
            flush=lambda lines: self.committer.write_live(run, call.name, lines),
            log_keeps=self.store.max_log,
        )
        run.limit = limit = kernel.timeout or policy.default_timeout
        try:
            returned = self._executor().execute(kernel, args, output, limit, on_abandon)
        except StepFailure:
            # What a failing step printed is usually why it failed: keep it.
            self.committer.keep_printed(run, call.name, output.unwritten)
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
        self.committer.commit(run, kernel.name, transition, output.unwritten)
        return transition

    def _echo_for(self, run: ChainRun, kernel: str) -> Callable[[str], None]:
        prefix = f"[{run.id} {run.step + 1} {kernel}]"
        say = self.access.say
        fields = {"chain": run.id, "step": run.step + 1, "kernel": kernel}
        return lambda line: say(f"{prefix} {line}", kernel_output=True, **fields)

    # -- load ---------------------------------------------------------------------------------

    def load(self, run: ChainRun, call: Call, refs: list[str]) -> tuple[LoadedKernel, list[Any]]:
        """The kernel for ``call`` and the contents of its ``@key`` arguments.

        With no ``@key`` arguments and a kernel digest that Redis' invalidation messages say
        is unchanged, this costs no round trip at all.
        """
        key = self.store.keyspace.kernel(call.name)
        known = self.loader.known_digest(call.name)
        if not refs and run.asked and known and self.watch.trusted(key) == known:
            cached = self.loader.cached(call.name)
            if cached is not None:
                return cached, []
        self.committer.settle(run)  # @key inputs must see the previous step's effects
        run.asked = True
        check_inputs(call.name, refs, self._policy().input_key_patterns)
        rc = self.access.client()
        sha1 = self._sha1_of(call.name)
        prep = self.access.retrying(lambda: self.store.load(call.name, refs, known, sha1, rc))
        if prep.status == "refused":
            raise StepFailure("input", refused_input(call.name, prep.text(0), prep.text(1)))
        try:
            kernel = self.loader.resolve(call.name, prep.text(0), prep.values[1])
        except KernelNotFound as exc:
            near = self.loader.near_names(call.name)
            raise StepFailure("missing_kernel", f"{exc}{near}") from None
        except KernelRejected as exc:
            detail = "; ".join(str(f) for f in exc.findings)
            hint = self.loader.source_hint(call.name)
            raise StepFailure(
                "lint", f"kernel {call.name!r} was refused: {detail}{hint}"
            ) from None
        if self.watch.enabled and self.watch.trusted(key) != kernel.digest:
            self.watch.track(key)
        return kernel, list(prep.values[2:])

    def _sha1_of(self, name: str) -> str:
        """sha1 of the source of the version we have cached (what PREPARE can compute)."""
        cached = self.loader.cached(name)
        if cached is None:
            return ""
        sha1 = self._source_sha1.get(cached.digest)
        if sha1 is None:
            sha1 = hashlib.sha1(cached.source.encode("utf-8")).hexdigest()
            self._source_sha1[cached.digest] = sha1
        return sha1

    # -- convert -------------------------------------------------------------------------------

    @staticmethod
    def convert(kernel: LoadedKernel, args: list[Any]) -> list[Any]:
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
