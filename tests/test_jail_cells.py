"""The jail, end to end: kernels run in confined cells and a breach buys nothing.

Every test assumes the purity guards have already fallen: the kernels here are stored as
records whose bytecode was compiled *without* the checker and without guards (what anyone
who can write a hash in Redis can store), and several first recover the real builtins the
way an escaped kernel would.  What must hold is the operating-system boundary: no file read
or written, no connection, no other kernel or chain touched, and the VM keeps serving.

Real Redis, real cells; synchronisation by chain status and log entries, never sleeps.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from pyrecks.api import Pyrecks
from pyrecks.compiler.compiler import MAGIC, kernel_filename, source_digest
from pyrecks.compiler.parser import parse_value
from pyrecks.compiler.policy import Policy
from pyrecks.compiler.store import RECORD_FORMAT
from pyrecks.vm.failures import StepFailure
from pyrecks.vm.jail.executor import JailExecutor
from pyrecks.vm.loader import LoadedKernel
from pyrecks.vm.machine import VM
from pyrecks.vm.output import StepOutput
from pyrecks.vm.records import ChainStatus
from tests.jail_probes import PROBES
from tests.vm_helpers import raw_kernel

#: Code that recovers the interpreter's real builtins from inside a cell, as a kernel that
#: escaped the guards would (an object graph walk needs no name the guards refuse).
REAL_BUILTINS = """
def _real_builtins():
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "catch_warnings":
            found = cls()._module.__builtins__
            return found if isinstance(found, dict) else found.__dict__
    raise RuntimeError("no way to the real builtins")
"""


def store_unchecked(
    r: redis.Redis, name: str, source: str, *, timeout: float | None = None
) -> None:
    """Store a kernel record as a hostile client could: unguarded code, no checker run."""
    code = compile(source, kernel_filename(name), "exec", dont_inherit=True)
    fields: dict[str, str | bytes] = {
        "source": source,
        "bytecode": marshal.dumps(code),
        "format": RECORD_FORMAT,
        "magic": MAGIC,
        "digest": source_digest(source),
        "compiled": "1",
        "signature": "[]",
        "lint": "[]",
    }
    if timeout is not None:
        fields["timeout"] = repr(timeout)
    r.hset(name, mapping=fields)
    r.sadd("pyrecks:kernels", name)


def breach(name: str, body: str) -> str:
    """A kernel whose entry runs ``body`` with the real builtins as ``B``; it returns what
    ``body`` leaves in ``out``, or the exception that stopped it."""
    indented = "\n".join("        " + line for line in body.strip("\n").splitlines())
    return (
        REAL_BUILTINS
        + f"""
def {name}():
    B = _real_builtins()
    imp = B["__import__"]
    out = "ESCAPED"
    try:
{indented}
    except BaseException as exc:
        out = "refused " + type(exc).__name__ + ": " + str(exc)
    return "return " + repr(out)
"""
    )


HEALTHY = "def healthy(n: int):\n    return 'return %d' % (n + 1)\n"


@pytest.fixture
def px(r: redis.Redis) -> Pyrecks:
    raw_kernel(r, "healthy", HEALTHY)
    return Pyrecks(r)


@pytest.fixture
def vm(px: Pyrecks) -> Iterator[VM]:
    with px.local_vm(echo=False, threads=2, memory_limit_mb=256) as machine:
        assert isinstance(machine.executor, JailExecutor)
        yield machine
    executor = machine.executor
    assert isinstance(executor, JailExecutor)
    assert executor.cell_pids == []
    for pid in executor.started_pids:
        _assert_gone(pid)


def _assert_gone(pid: int) -> None:
    # The zygote reaps its cells; a pid may be reused, but never by a cell of ours still alive.
    with contextlib.suppress(ProcessLookupError, FileNotFoundError):
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        assert "Seccomp:\t2" not in status or "State:\tZ" in status


def _executor(vm: VM) -> JailExecutor:
    assert isinstance(vm.executor, JailExecutor)
    return vm.executor


def _run(px: Pyrecks, call: str) -> tuple[ChainStatus, object, str, str]:
    chain = px.start(call)
    info = px.wait(chain, timeout=60)
    result = px.result(chain) if info.status is ChainStatus.DONE else None
    return info.status, result, info.error_kind or "", info.error or ""


def _assert_still_serving(px: Pyrecks) -> None:
    status, result, _, error = _run(px, "healthy(41)")
    assert status is ChainStatus.DONE, error
    assert result == 42


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# -- the cell itself -------------------------------------------------------------------------


def test_every_cell_is_confined_holds_nothing_and_serves_one_kernel(
    px: Pyrecks, vm: VM
) -> None:
    raw_kernel(px.r, "other", "def other():\n    return 'return 1'\n")
    _assert_still_serving(px)
    _assert_still_serving(px)
    assert _run(px, "other()")[1] == 1
    executor = _executor(vm)
    runs = [s for s in executor.history if s.outcome == "ok"]
    healthy_pids = {s.pid for s in runs if s.kernel == "healthy"}
    other_pids = {s.pid for s in runs if s.kernel == "other"}
    # One cell per kernel version, reused across chains; two kernels never share one.
    assert len(healthy_pids) == 1 and len(other_pids) == 1
    assert healthy_pids.isdisjoint(other_pids)
    my_net = os.readlink("/proc/self/ns/net")
    assert sorted(executor.cell_pids) == sorted(healthy_pids | other_pids)
    for pid in executor.cell_pids:
        status = _proc_status(pid)
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        assert status["Uid"].split()[0] != "0"
        assert os.readlink(f"/proc/{pid}/ns/net") != my_net
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert f.read() == b""
        fds = os.listdir(f"/proc/{pid}/fd")
        assert len(fds) == 1, fds  # the channel to the VM, nothing else
        assert os.readlink(f"/proc/{pid}/fd/{fds[0]}").startswith("socket:")
        # Its root and working directory: an empty directory nobody may write to.
        assert os.readlink(f"/proc/{pid}/root") == os.readlink(f"/proc/{pid}/cwd")
        assert os.listdir(os.readlink(f"/proc/{pid}/root")) == []


def test_hot_patch_gets_a_fresh_cell_and_the_old_code_never_runs_again(
    px: Pyrecks, vm: VM
) -> None:
    assert _run(px, "healthy(1)")[1] == 2
    raw_kernel(px.r, "healthy", "def healthy(n: int):\n    return 'return %d' % (n * 100)\n")
    assert _run(px, "healthy(2)")[1] == 200
    pids = {s.pid for s in _executor(vm).history if s.kernel == "healthy"}
    assert len(pids) == 2


def test_the_cell_pool_is_bounded(px: Pyrecks) -> None:
    for i in range(4):
        raw_kernel(px.r, f"k{i}", f"def k{i}():\n    return 'return {i}'\n")
    with px.local_vm(echo=False, threads=1, max_cells=2) as machine:
        executor = _executor(machine)
        for i in range(4):
            assert _run(px, f"k{i}()")[1] == i
            assert len(executor.cell_pids) <= 2
        assert len(executor.started_pids) == 4


def test_prints_reach_the_log_while_the_step_runs(px: Pyrecks, vm: VM) -> None:
    raw_kernel(
        px.r,
        "slow_printer",
        "import time\nPYRECKS_TIMEOUT = 30\n"
        "def slow_printer():\n"
        "    print('first')\n"
        "    time.sleep(5)\n"
        "    print('second')\n"
        "    return ''\n",
    )
    chain = px.start("slow_printer()")
    seen: list[str] = []
    for entry in px.logs(chain, follow=True):
        if entry.kind == "out":
            seen.append(entry.text)
            break
    assert seen == ["first"]
    # The line arrived while the kernel still sleeps: the chain is running, not done.
    assert px.status(chain).status is ChainStatus.RUNNING
    (line,) = [e for e in px.logs(chain) if e.kind == "out"]
    assert line.attempt.endswith(".1")
    px.cancel(chain)


# -- breaches: unguarded code in a cell achieves nothing ------------------------------------------


def test_files_environment_and_processes_are_out_of_reach(px: Pyrecks, vm: VM) -> None:
    probes = {
        "read_passwd": 'out = B["open"]("/etc/passwd").read()',
        "read_vm_environ": f'out = B["open"]("/proc/{os.getpid()}/environ", "rb").read()',
        "write_file": 'B["open"]("/tmp/pyrecks-escaped", "w").write("x")',
        "list_root": 'out = str(imp("os").listdir("/"))',
        "run_id": 'imp("os").execv("/usr/bin/id", ["id"])',
        "fork": "out = str(imp('os').fork())",
        "signal_vm": f"imp('os').kill({os.getpid()}, 0)",
    }
    for name, body in probes.items():
        store_unchecked(px.r, f"probe_{name}", breach(f"probe_{name}", body))
    for name in probes:
        status, result, _, error = _run(px, f"probe_{name}()")
        assert status is ChainStatus.DONE, error
        assert isinstance(result, str) and result.startswith("refused "), (name, result)
    assert not os.path.exists("/tmp/pyrecks-escaped")
    _assert_still_serving(px)


def test_no_connection_to_redis_and_no_client_to_steal(
    px: Pyrecks, vm: VM, redis_server: object
) -> None:
    port = px.r.connection_pool.connection_kwargs.get("port", 6379)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        probes = {
            "connect_redis": (
                f"s = imp('socket').socket()\ns.connect(('127.0.0.1', {port}))\nout = 'connected'"
            ),
            "connect_listener": (
                "s = imp('socket').socket()\n"
                f"s.connect(('127.0.0.1', {listener.getsockname()[1]}))\nout = 'connected'"
            ),
            "find_redis_client": (
                "gc = imp('gc')\n"
                "found = [o for o in gc.get_objects() if B['type'](o).__name__ in "
                "('Redis', 'ConnectionPool', 'Connection')]\n"
                "out = 'clients: %d' % len(found)"
            ),
        }
        for name, body in probes.items():
            store_unchecked(px.r, f"probe_{name}", breach(f"probe_{name}", body))
        for name in ("connect_redis", "connect_listener"):
            status, result, _, error = _run(px, f"probe_{name}()")
            assert status is ChainStatus.DONE, error
            assert isinstance(result, str) and result.startswith("refused "), (name, result)
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()
        assert _run(px, "probe_find_redis_client()")[1] == "clients: 0"
    finally:
        listener.close()


def test_replacing_a_shared_helper_changes_nothing_for_another_kernel(
    px: Pyrecks, vm: VM
) -> None:
    # The attacker rewrites pyrecks.kernel.call inside its cell so that it redirects effects.
    attacker = breach(
        "attacker",
        "kernel = imp('pyrecks.kernel', fromlist=['call'])\n"
        "def evil(name, *args, set=None, effects=()):\n"
        "    return 'SET [(\"stolen\", %r)] ' % (repr(args),) + name + '()'\n"
        "kernel.call.__code__ = evil.__code__\n"
        "out = 'patched'",
    )
    store_unchecked(px.r, "attacker", attacker)
    assert _run(px, "attacker()")[1] == "patched"
    raw_kernel(
        px.r,
        "pay",
        "from pyrecks.kernel import done\n"
        "def pay(card: str, amount: int):\n"
        "    return done('ok', set={'paid:' + card[-4:]: amount})\n",
    )
    status, result, _, error = _run(px, 'pay("4111-1111-1111-1111", 99)')
    assert status is ChainStatus.DONE, error
    assert result == "ok"
    assert px.r.get("paid:1111") == b"99"
    assert px.r.get("stolen") is None


@pytest.mark.parametrize(
    ("name", "source", "kind", "words"),
    [
        (
            "regex_at_import",
            "import re\n_X = re.match('(a+)+$', 'a' * 40 + 'b')\n"
            "def regex_at_import():\n    return ''\n",
            "timeout",
            "time limit of 1s",
        ),
        (
            "huge_at_import",
            "_X = bytearray(2 * 10**9)\ndef huge_at_import():\n    return ''\n",
            "memory",
            "memory limit of 256 MB",
        ),
        (
            "finalizer",
            "class _F:\n    def __del__(self):\n        while True:\n            pass\n"
            "def finalizer():\n    _F()\n    return ''\n",
            "timeout",
            "time limit of 1s",
        ),
        (
            "swallower",
            "import time\n_B = BaseException\n"
            "def swallower():\n    while True:\n        try:\n            time.sleep(5)\n"
            "        except _B:\n            pass\n",
            "timeout",
            "time limit of 1s",
        ),
        (
            "exits",
            "def exits():\n    raise SystemExit(3)\n",
            "kernel_error",
            "may not stop its process",
        ),
        (
            "interrupts",
            "def interrupts():\n    raise KeyboardInterrupt\n",
            "kernel_error",
            "may not stop its process",
        ),
        (
            "aborts",
            REAL_BUILTINS + "def aborts():\n    _real_builtins()['__import__']('os').abort()\n",
            "crashed",
            "the cell died of signal",
        ),
        (
            "exits_hard",
            REAL_BUILTINS + "def exits_hard():\n    _real_builtins()['__import__']('os')._exit(7)\n",
            "crashed",
            "the cell exited with code 7",
        ),
        (
            "surrogate",
            "def surrogate():\n    return 'return \"\\ud800\"'\n",
            "return_string",
            "lone surrogate",
        ),
    ],
)
def test_a_hostile_kernel_fails_only_its_own_step(
    px: Pyrecks, vm: VM, name: str, source: str, kind: str, words: str
) -> None:
    store_unchecked(px.r, name, source, timeout=1.0)
    status, _, error_kind, error = _run(px, f"{name}()")
    assert status is ChainStatus.FAILED
    assert error_kind == kind, error
    assert words in error
    _assert_still_serving(px)


def test_a_cell_that_writes_garbage_to_its_channel_fails_its_step(
    px: Pyrecks, vm: VM
) -> None:
    for name, frame in {
        "oversized": "b'\\xff\\xff\\xff\\xf0'",
        "bad_utf8": "b'\\x00\\x00\\x00\\x05' + b'\\x92\\xa2ok\\xc0'[:3] + b'\\xa1\\xff'",
        "not_msgpack": "b'\\x00\\x00\\x00\\x02\\xc1\\xc1'",
        "wrong_shape": "b'\\x00\\x00\\x00\\x03\\x92\\x01\\x02'",
    }.items():
        body = (
            "os = imp('os')\n"
            "for fd in range(64):\n"
            "    try:\n"
            f"        os.write(fd, {frame})\n"
            "        break\n"
            "    except OSError:\n"
            "        pass\n"
            "B['__import__']('time').sleep(30)\n"
        )
        store_unchecked(px.r, f"garbage_{name}", breach(f"garbage_{name}", body), timeout=20.0)
        status, _, error_kind, error = _run(px, f"garbage_{name}()")
        assert status is ChainStatus.FAILED, name
        assert error_kind == "crashed", (name, error)
        assert "sent an invalid message" in error or "unexpected message" in error, error
    _assert_still_serving(px)


def test_a_cell_killed_from_outside_fails_its_step_as_crashed(px: Pyrecks) -> None:
    started = threading.Event()
    raw_kernel(
        px.r,
        "waiter",
        "import time\nPYRECKS_TIMEOUT = 60\n"
        "def waiter():\n    print('waiting')\n    time.sleep(55)\n    return ''\n",
    )

    def echo(line: str) -> None:
        if line.endswith(" waiting"):
            started.set()

    with px.local_vm(threads=1, echo_to=echo) as machine:
        executor = _executor(machine)
        chain = px.start("waiter()")
        assert started.wait(30), "the kernel never printed"
        (pid,) = executor.cell_pids
        os.kill(pid, 9)
        info = px.wait(chain, timeout=30)
        assert info.status is ChainStatus.FAILED
        assert info.error_kind == "crashed", info.error
        assert "signal 9 (SIGKILL)" in (info.error or "")
        _assert_still_serving(px)


def test_helper_rendered_instructions_obey_the_language_limits(px: Pyrecks, vm: VM) -> None:
    raw_kernel(
        px.r,
        "wide",
        "from pyrecks.kernel import branch, fanout\n"
        "def wide():\n"
        "    return fanout([branch('healthy', i) for i in range(2000)], 'gather')\n",
    )
    status, _, error_kind, error = _run(px, "wide()")
    assert status is ChainStatus.FAILED
    assert error_kind == "return_string", error
    assert "max_branches" in error


# -- the probe table, run in real cells with unguarded code (test-only: never from Redis) -------


@pytest.fixture(scope="module")
def cells() -> Iterator[JailExecutor]:
    executor = JailExecutor(Policy(), memory_limit_mb=256, max_cells=256)
    try:
        yield executor
    finally:
        executor.close()


def run_unguarded(executor: JailExecutor, name: str, source: str, params: dict[str, object]) -> str:
    """Run ``source`` as plain Python with the real builtins inside a fresh cell.

    This is the "assume a breach" harness: the code object is handed straight to the
    executor, skipping the checker, the guards and Redis altogether.
    """
    kernel_source = breach(name, f"B['exec']({source!r}, {{'__builtins__': B, **{params!r}}})")
    code = compile(kernel_source, kernel_filename(name), "exec", dont_inherit=True)
    kernel = LoadedKernel(
        name, source_digest(kernel_source), (), 5.0, 0, kernel_source, marshal.dumps(code)
    )
    returned = executor.execute(kernel, [], StepOutput(), 5.0, lambda: None)
    assert isinstance(returned, str) and returned.startswith("return ")
    return str(parse_value(returned[len("return ") :]))


def test_every_probe_fails_inside_a_real_cell(cells: JailExecutor, tmp_path: object) -> None:
    sibling = run_unguarded(cells, "sibling", "pass", {})
    assert sibling == "ESCAPED"  # the harness runs code unguarded: no probe fails by accident
    (sibling_pid,) = cells.cell_pids
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    unix_dir = tempfile.mkdtemp()
    os.chmod(unix_dir, 0o755)
    unix_path = os.path.join(unix_dir, "s")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    os.chmod(unix_path, 0o777)
    unix.listen()
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0pyrecks-probe-{os.getpid()}")
    abstract.listen()
    secret = os.path.join(unix_dir, "secret")
    with open(secret, "w") as f:
        f.write("s3cret")
    os.chmod(secret, 0o600)
    params = {
        "VM_PID": os.getpid(),
        "SIBLING_PID": sibling_pid,
        "REDIS_PORT": listener.getsockname()[1],
        "UNIX_SOCKET_PATH": unix_path,
        "ABSTRACT_SOCKET_NAME": f"\0pyrecks-probe-{os.getpid()}",
        "SECRET_PATH": secret,
        "MEMORY_LIMIT_BYTES": 256 << 20,
    }
    try:
        outcomes = {}
        for name, source in PROBES:
            try:
                outcomes[name] = run_unguarded(cells, f"probe_{name}", source, params)
            except StepFailure as failure:  # the cell died of it: also a refusal
                outcomes[name] = f"refused by death: {failure.kind}: {failure}"
        escaped = {n: o for n, o in outcomes.items() if not o.startswith("refused")}
        assert escaped == {}
        # Refused by the jail, not by a missing module: the probes reached their system call.
        unexercised = {n: o for n, o in outcomes.items() if "ModuleNotFoundError" in o}
        assert unexercised == {}
        assert sibling_pid in cells.cell_pids  # the sibling cell survived every probe
    finally:
        for s in (listener, unix, abstract):
            s.close()
        shutil.rmtree(unix_dir)


def test_jail_mode_refuses_to_start_without_a_layer_and_names_the_way_out(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyrecks.errors import PyrecksError
    from pyrecks.vm.jail import confine

    def landlock_missing() -> dict[str, str | None]:
        return {**dict.fromkeys(confine.LAYERS), "landlock": "this kernel has no Landlock"}

    monkeypatch.setattr(confine, "available_layers", landlock_missing)
    with pytest.raises(PyrecksError) as refused:
        VM(r)
    text = str(refused.value)
    assert "landlock: this kernel has no Landlock" in text
    assert "--isolation process" in text and "--isolation thread" in text


def test_the_vm_says_which_layers_are_active(px: Pyrecks) -> None:
    said: list[str] = []
    with px.local_vm(threads=1, echo_to=said.append):
        pass
    assert any(
        "jail isolation: cells with namespaces, no_new_privs, landlock, seccomp, rlimits" in s
        for s in said
    ), said


# -- regressions from the outside attack pass (each reproduced first) -----------------------------

#: Escaped code that finds its own channel (the cell's ``fd``) by walking the frames.
CHANNEL = """
sys = imp('sys')
frame = sys._getframe()
while frame is not None and type(frame.f_locals.get('self')).__name__ != '_Cell':
    frame = frame.f_back
cell = frame.f_locals['self']
"""


def _store_record(
    r: redis.Redis, name: str, source: str, code_source: str, **extra: str
) -> None:
    """A record pairing ``source`` with the code of ``code_source`` (no checker, no guards)."""
    store_unchecked(r, name, source)
    code = compile(code_source, kernel_filename(name), "exec", dont_inherit=True)
    r.hset(name, mapping={"bytecode": marshal.dumps(code), **extra})


def test_a_cell_whose_step_was_abandoned_never_serves_another_chain(px: Pyrecks) -> None:
    # With one chain running, the next kernel runs while the previous commit is on the
    # wire; here that commit is refused while kernel b is still sleeping in its cell.
    px.r.set("notnum", "hello")
    raw_kernel(px.r, "ka", "def ka(x: str):\n    return 'kb(%r) INCRBY [(\"notnum\", 1)]' % x\n")
    raw_kernel(
        px.r,
        "kb",
        "import time\ndef kb(x: str):\n    print('kb starts with', x)\n    time.sleep(1)\n"
        "    return 'return %r' % ('kb computed from ' + x)\n",
    )
    with px.local_vm(echo=False, threads=2):
        assert _run(px, 'kb("warm-up")')[0] is ChainStatus.DONE
        assert _run(px, 'ka("warm-up")')[0] is ChainStatus.FAILED
        status, _, error_kind, _ = _run(px, 'ka("chain-1-secret")')
        assert status is ChainStatus.FAILED and error_kind == "effect"
        assert _run(px, 'kb("chain-2")')[1] == "kb computed from chain-2"


def test_a_cell_that_answers_by_itself_and_stops_reading_cannot_hang_the_vm(
    px: Pyrecks, vm: VM
) -> None:
    body = (
        CHANNEL
        + "if len(x) < 100:\n"
        + "    msgpack, struct = imp('msgpack'), imp('struct')\n"
        + "    reply = msgpack.packb(['ok', 'hang(\"' + 'A' * 900000 + '\")'])\n"
        + "    imp('os').write(cell.fd, struct.pack('>I', len(reply)) + reply)\n"
        + "    while True:\n        pass\n"
        + "out = 'fine'"
    )
    source = breach("hang", body).replace("def hang():", "def hang(x):")
    store_unchecked(px.r, "hang", source, timeout=3.0)
    px.r.hset("hang", "signature", '[{"name": "x", "kind": "positional_or_keyword"}]')
    status, _, error_kind, error = _run(px, 'hang("a")')
    # The forged answer starts a step whose 900 kB argument the spinning cell never reads:
    # sending it is bounded by the step's deadline, so the chain fails on time instead of
    # holding a VM thread for ever, and the VM serves on.
    assert status is ChainStatus.FAILED
    assert error_kind == "timeout", error
    outcomes = [s.outcome for s in _executor(vm).history if s.kernel == "hang"]
    assert outcomes == ["ok", "timeout"]
    _assert_still_serving(px)


def test_one_source_with_two_codes_never_shares_a_cell(px: Pyrecks, vm: VM) -> None:
    # One source that defines both names (the VM runs a record only if its source defines
    # its name), paired in the "evil" record with other code.
    source = (
        "def victim():\n    return 'return \"honest\"'\n"
        "def evil():\n    return 'return \"honest\"'\n"
    )
    raw_kernel(px.r, "victim", source)
    _store_record(px.r, "evil", source, "def evil():\n    return 'return \"evil\"'\n")
    assert _run(px, "evil()")[1] == "evil"
    assert _run(px, "victim()")[1] == "honest"
    assert _run(px, "evil()")[1] == "evil"


def test_stored_code_is_never_unmarshalled_by_the_vm(px: Pyrecks, vm: VM) -> None:
    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM")).split()[1])

    before = rss_kb()
    bomb = (b"(" + (2**27 - 1).to_bytes(4, "little")) * 4  # asks marshal for 4 GB
    store_unchecked(px.r, "bomb", "def bomb():\n    return ''\n")
    px.r.hset("bomb", "bytecode", bomb)
    status, _, error_kind, _ = _run(px, "bomb()")
    assert status is ChainStatus.FAILED and error_kind == "memory"
    assert rss_kb() - before < 512 * 1024  # the cell paid, not the VM


def test_record_limits_are_capped_by_the_policy(px: Pyrecks, vm: VM) -> None:
    store_unchecked(px.r, "greedy", "def greedy():\n    return 'return 1'\n")
    px.r.hset("greedy", mapping={"timeout": "1e300", "retries": "1000000000"})
    assert _run(px, "greedy()")[1] == 1
    loaded = vm.loader.cached("greedy")
    assert loaded is not None
    assert (loaded.timeout, loaded.retries) == (vm.policy.max_timeout, vm.policy.max_retries)


def test_idle_cells_cannot_compute_and_printed_control_characters_are_escaped(
    px: Pyrecks, vm: VM
) -> None:
    raw_kernel(px.r, "forger", "def forger():\n    print('a\\x1b[2Jb\\rc')\n    return ''\n")
    chain = px.start("forger()")
    assert px.wait(chain, timeout=30).status is ChainStatus.DONE
    # (print splits lines at \r itself; what is left of the escape sequence shows as text)
    assert [e.text for e in px.logs(chain) if e.kind == "out"] == ["a\\x1b[2Jb", "c"]
    (pid,) = _executor(vm).cell_pids
    # SIGSTOP was sent when it answered; its delivery is asynchronous: poll the state.
    deadline = time.monotonic() + 10
    while not _proc_status(pid)["State"].startswith("T") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _proc_status(pid)["State"].startswith("T")  # stopped while idle
