"""Chaos soak: K ``pyrecks vm`` processes, N chains with effects and fan-out, and faults.

Run it::

    python -m bench.chaos                                  # every fault kind, one phase each
    python -m bench.chaos --vms 3 --chains 2500 --duration 60 --faults vm-kill,zombie
    python -m bench.chaos --quick                          # the smoke test's sizes
    .venv/bin/python bench/chaos.py --faults power-loss --seed 7

Each fault kind gets a *phase* of its own (so every row of the table is about one kind): a
fresh private ``redis-server`` with an AOF, K VM processes, and N chains started at a steady
pace while faults of that kind are injected for ``--duration`` seconds.  Then faults stop,
every VM and Redis are brought back, and the phase waits up to ``--recovery`` seconds for
every chain to end.  The checker then reads every counter and every chain record.

Fault kinds:

* ``vm-kill``       kill -9 a VM and start it again (alternately under its old name, which
                    resumes at once, and a new one, whose chains others take over after the
                    lease);
* ``zombie``        SIGSTOP a VM until its heartbeat key expired and one more lease passed
                    (others take its chains over), then SIGCONT it: it must commit nothing;
* ``redis-kill``    kill -9 Redis (``appendfsync always``) and restart it from its AOF;
* ``script-flush``  a storm of ``SCRIPT FLUSH`` (VMs meet NOSCRIPT mid-batch);
* ``power-loss``    Redis with ``appendfsync everysec``: kill -9 it, cut its AOF (the file
                    Redis appends to: ``appendonly.aof``, or the last INCR file of Redis 7's
                    multi-part AOF) back to the size it had ``--loss-window`` (1 s) earlier —
                    the writes an OS crash loses before the next fsync — and restart it;
* ``mixed``         all of the above in one phase, chosen at random (Redis runs everysec, so
                    a plain kill -9 of Redis counts as a possible loss of its last 2 s);
* ``none``          no faults (a baseline for the checker and the recovery time).

With ``--cluster`` every phase runs on a private Redis Cluster (3 masters, 3 replicas) instead
of one server, and the fault kinds are ``vm-kill``, ``zombie``, ``script-flush`` (on every
master) and ``failover``: kill -9 a master, wait for its replica's promotion, then start the
killed node again (it rejoins as a replica of the new master).  Redis Cluster replicates
asynchronously: writes a killed master acknowledged but had not yet sent to its replica are
lost, which the checker would count (as lost effects, or starts lost, or stuck chains).

Chains.  Chain ``cx<i>`` runs kernel ``cx`` for steps 0..n; step ``f`` fans out into ``b``
branches of ``l`` steps each (kernel ``cx_leaf``) joined by ``cx_join``; every step but the
pure ones (``k % 3 == 2``) applies ``INCRBY <its own counter> 1``.  Each effect has its own
counter key, whose expected value is 1 (0 for a chain whose start was lost), so a lost effect
and a duplicated one never cancel out: lost = Σ max(0, expected - actual), duplicated =
Σ max(0, actual - expected), plus any ``cx:*`` key nobody should have written.  A chain's
result (``10 i + n``) and the branch results its join sees are checked too.

After an ``everysec`` power loss, a start acknowledged in the lost window may be gone: such
chains are counted under "starts lost" (not as lost effects: their counters must be 0), and
a chain whose start was acknowledged *before* the window must still finish.  A chain is
"stuck" if it has not ended ``--recovery`` seconds after the faults stopped; the effects it
has yet to apply are listed in the notes, not counted as lost.

"Recovery" is the time from the end of the faults until the last chain ended (it includes
draining whatever backlog the faults left: compare with a ``none`` row).  "VM errors" counts
the tracebacks the VMs logged ("unexpected error handling ..."): a VM never should.  The
notes under the table name them, explain each stuck chain (its record, whether its owner
still beats, which VM holds its stream entry) and keep the phase's Redis data, AOF, VM logs,
``events.log`` and ``chains.json`` when anything was wrong.

Exit status: 0 when every row shows 0 lost, 0 duplicated, 0 failed and 0 stuck; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script: .venv/bin/python bench/chaos.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from pyrecks.api import Pyrecks
from pyrecks.cluster import adapt
from pyrecks.keys import Keyspace
from pyrecks.testing.cluster import RedisClusterServer
from pyrecks.testing.server import RedisServer

T = TypeVar("T")

KINDS = ("vm-kill", "zombie", "redis-kill", "script-flush", "power-loss")
CLUSTER_KINDS = ("vm-kill", "zombie", "script-flush", "failover")
EXTRA_KINDS = ("mixed", "none")
GROUP = "pyrecks-vms"
KS = Keyspace()
_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)

# -- the kernels -------------------------------------------------------------------------

CX = """
import time
def cx(i: int, k: int, n: int, f: int, b: int, l: int, ms: int):
    time.sleep(ms / 1000)
    if k == n:
        return 'return %d INCRBY [("cx:%d:m%d", 1)]' % (10 * i + n, i, k)
    if k == f:
        leaves = ', '.join('cx_leaf(%d, %d, 0, %d, %d)' % (i, j, l, ms) for j in range(b))
        return '[%s] -> cx_join(%d, %d, %d, %d, %d, %d, %d) INCRBY [("cx:%d:m%d", 1)]' % (
            leaves, i, k, n, f, b, l, ms, i, k)
    nxt = 'cx(%d, %d, %d, %d, %d, %d, %d)' % (i, k + 1, n, f, b, l, ms)
    if k % 3 == 2:
        return nxt
    return '%s INCRBY [("cx:%d:m%d", 1)]' % (nxt, i, k)
"""

CX_LEAF = """
import time
def cx_leaf(i: int, j: int, k: int, l: int, ms: int):
    time.sleep(ms / 1000)
    if k == l - 1:
        return 'return %d INCRBY [("cx:%d:b%d:%d", 1)]' % (100 * i + j, i, j, k)
    return 'cx_leaf(%d, %d, %d, %d, %d) INCRBY [("cx:%d:b%d:%d", 1)]' % (
        i, j, k + 1, l, ms, i, j, k)
"""

CX_JOIN = """
def cx_join(results: list, i: int, k: int, n: int, f: int, b: int, l: int, ms: int):
    want = [100 * i + j for j in range(b)]
    if list(results) != want:
        raise ValueError('join of chain %d saw branch results %r, expected %r' % (i, results, want))
    return 'cx(%d, %d, %d, %d, %d, %d, %d) INCRBY [("cx:%d:j", 1)]' % (
        i, k + 1, n, f, b, l, ms, i)
"""

KERNELS = {"cx": CX, "cx_leaf": CX_LEAF, "cx_join": CX_JOIN}


@dataclass
class ChainSpec:
    """One chain: its inputs, hence every effect it must apply exactly once."""

    i: int
    n: int
    f: int
    b: int
    lsteps: int
    ms: int
    acked: float | None = None  # wall-clock time the start was acknowledged
    finished: float | None = None  # wall-clock time the VM recorded it ended
    status: str = ""

    @property
    def id(self) -> str:
        return f"cx{self.i}"

    @property
    def call(self) -> str:
        return f"cx({self.i}, 0, {self.n}, {self.f}, {self.b}, {self.lsteps}, {self.ms})"

    @property
    def result(self) -> str:
        return str(10 * self.i + self.n)

    def counters(self) -> list[str]:
        """The key of every effect this chain applies (each exactly once)."""
        keys = []
        for k in range(self.n + 1):
            if k == self.n or k == self.f or k % 3 != 2:
                keys.append(f"cx:{self.i}:m{k}")
        keys.append(f"cx:{self.i}:j")
        keys += [f"cx:{self.i}:b{j}:{k}" for j in range(self.b) for k in range(self.lsteps)]
        return keys


def make_chains(count: int, rng: random.Random, step_ms: int) -> list[ChainSpec]:
    chains = []
    for i in range(count):
        n = rng.randint(2, 6)
        chains.append(ChainSpec(i, n, rng.randrange(n), rng.randint(1, 3), rng.randint(1, 3),
                                step_ms))
    return chains


# -- processes -----------------------------------------------------------------------------


class VMSlot:
    """One of the K VMs: a ``pyrecks vm`` child process, restarted under old or new names."""

    def __init__(self, slot: int, url: str, opts: Options, logdir: Path) -> None:
        self.slot = slot
        self.url = url
        self.opts = opts
        self.log_path = logdir / f"vm-{slot}.log"
        self.generation = 0
        self.name = f"cx-vm{slot}"
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def spawn(self, *, new_name: bool = False) -> None:
        if new_name:
            self.generation += 1
            self.name = f"cx-vm{self.slot}-g{self.generation}"
        with open(self.log_path, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} start {self.name}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyrecks", "vm", "--redis", self.url, "--name", self.name,
                 "--lease", str(self.opts.lease), "--threads", str(self.opts.threads),
                 "--isolation", self.opts.isolation, "--quiet"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.stopped = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.stopped = False

    def pause(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.stopped = False


def current_aof(data_dir: Path) -> Path:
    """The file Redis appends to: ``appendonly.aof`` (Redis 6) or the last INCR file of the
    multi-part AOF that Redis 7 and Valkey keep in ``appendonlydir`` (named by its manifest)."""
    manifest = data_dir / "appendonlydir" / "appendonly.aof.manifest"
    with contextlib.suppress(OSError):
        last = None
        for line in manifest.read_text().splitlines():
            words = line.split()
            fields = dict(zip(words[::2], words[1::2], strict=False))
            if fields.get("type") == "i" and "file" in fields:
                last = fields["file"]
        if last:
            return manifest.parent / last
    return data_dir / "appendonly.aof"


class AOFHistory:
    """Samples the AOF's size every few ms, to cut it back to its size of ``window`` s ago."""

    def __init__(self, data_dir: Path, every: float = 0.02) -> None:
        self.data_dir = data_dir
        self.every = every
        self.samples: list[tuple[float, Path, int]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="aof-sampler")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with self.lock, contextlib.suppress(OSError):
                now = time.time()
                path = current_aof(self.data_dir)
                self.samples.append((now, path, path.stat().st_size))
                while self.samples and self.samples[0][0] < now - 30:
                    self.samples.pop(0)

    def cut(self, killed_at: float, window: float) -> tuple[float, int, int]:
        """Truncate the AOF of a dead Redis to its size ``window`` s before ``killed_at``.

        Returns (time of the sample cut back to, bytes before, bytes after).  The caller holds
        :attr:`lock`, so no sample is taken between the cut and the restart.
        """
        path = current_aof(self.data_dir)
        size = path.stat().st_size
        mine = [(t, n) for t, p, n in self.samples if p == path]
        older = [s for s in mine if s[0] <= killed_at - window]
        # Redis started (or switched files) less than a window ago: cut to the oldest sample.
        at, keep = older[-1] if older else (mine[0] if mine else (killed_at, size))
        keep = min(keep, size)
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        self.samples.clear()
        return at, size, keep


# -- one phase -------------------------------------------------------------------------


@dataclass
class Options:
    vms: int = 3
    chains: int = 1000
    duration: float = 30.0
    interval: float = 2.0
    lease: float = 1.5
    threads: int = 8
    isolation: str = "thread"
    step_ms: int = 20
    recovery: float = 60.0
    loss_window: float = 1.0
    #: One script-flush fault is a storm of this many SCRIPT FLUSHes, this far apart.
    flushes: int = 5
    flush_gap_ms: float = 20.0
    seed: int = 1
    #: The redis-server binary (default: the one pyrecks.testing finds).
    redis_server: str | None = None
    keep: bool = False
    verbose: bool = True
    #: Run each phase on a 3+3 Redis Cluster (fault kinds: CLUSTER_KINDS).
    cluster: bool = False


@dataclass
class PowerLoss:
    cut_to: float  # wall-clock time of the AOF size kept
    killed: float
    dropped_bytes: int


@dataclass
class Row:
    kind: str
    faults: dict[str, int] = field(default_factory=dict)
    chains: int = 0
    starts_lost: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    stuck: int = 0
    recovery: float | None = None
    vm_errors: int = 0
    notes: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def count(self) -> int:
        return sum(self.faults.values())

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.failed == 0 and self.stuck == 0

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "count": self.count, "ok": self.ok}


def _retry(operation: Callable[[], T], timeout: float = 60.0) -> T:
    """Run a harness Redis command, waiting out a Redis restart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return operation()
        except (*_DOWN, redis.exceptions.NoScriptError):
            # NOSCRIPT: a SCRIPT FLUSH landed between redis-py's SCRIPT LOAD and its EVALSHA.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class Phase:
    """One fault kind (or ``mixed``/``none``) against a fresh Redis and fresh VMs."""

    def __init__(self, kind: str, opts: Options, seed: int) -> None:
        self.kind = kind
        self.opts = opts
        every = CLUSTER_KINDS if opts.cluster else KINDS
        self.kinds = list(every) if kind == "mixed" else ([] if kind == "none" else [kind])
        self.rng = random.Random(seed)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pyrecks-chaos-{kind}-"))
        everysec = "power-loss" in self.kinds
        #: --cluster: the cluster the phase runs on (self.server is then not started).
        self.cluster = (
            RedisClusterServer(masters=3, replicas=1, executable=opts.redis_server)
            if opts.cluster
            else None
        )
        self.ks = KS  # on a cluster: the sharded keyspace, once the cluster is up
        self.server = RedisServer(
            executable=opts.redis_server,
            data_dir=self.workdir / "redis",
            appendonly=True,
            config={
                "appendfsync": "everysec" if everysec else "always",
                "auto-aof-rewrite-percentage": "0",  # one AOF file, cut back as it was written
                "aof-load-truncated": "yes",
            },
        )
        (self.workdir / "redis").mkdir()
        self.aof = AOFHistory(self.workdir / "redis") if everysec else None
        self.chains = make_chains(opts.chains, self.rng, opts.step_ms)
        self.vms: list[VMSlot] = []
        self.row = Row(kind, {k: 0 for k in self.kinds}, workdir=str(self.workdir))
        self.losses: list[PowerLoss] = []
        self.stop_faults = threading.Event()
        self.redis_lock = threading.Lock()  # held while Redis is down on purpose
        self.start_error: BaseException | None = None

    def say(self, text: str) -> None:
        """Report progress; each line also goes to events.log (wall-clock time: post-mortems)."""
        line = f"[{time.strftime('%H:%M:%S')} {self.kind}] {text}"
        with open(self.workdir / "events.log", "a") as f:
            f.write(f"{time.time():.3f} {text}\n")
        if self.opts.verbose:
            print(line, file=sys.stderr, flush=True)

    # -- set-up ----------------------------------------------------------------------------

    def client(self) -> redis.Redis:
        if self.cluster is not None:
            return redis.RedisCluster.from_url(self.url, socket_timeout=10)  # type: ignore[return-value]
        return redis.Redis.from_url(self.server.url, socket_timeout=10)

    @property
    def url(self) -> str:
        return self.cluster.url if self.cluster is not None else self.server.url

    @property
    def home(self) -> Keyspace:
        """Where VM heartbeats are read (on a cluster: the first shard's copies)."""
        return self.ks.every_shard()[0]

    def _setup(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
        else:
            self.server.start()
        r = self.client()
        self.ks = adapt(r, KS)
        for name, source in KERNELS.items():
            r.set(name, source.lstrip("\n"))
        r.close()
        if self.aof is not None:
            self.aof.start()
        self.vms = [VMSlot(i, self.url, self.opts, self.workdir) for i in range(self.opts.vms)]
        for vm in self.vms:
            vm.spawn()
        self._wait_for_vms()

    def _wait_for_vms(self, timeout: float = 60.0) -> None:
        """Until every VM process has taken its name (its heartbeat key names its pid)."""
        r = self.client()
        deadline = time.monotonic() + timeout
        try:
            for vm in self.vms:
                while True:
                    if not vm.alive:
                        raise RuntimeError(
                            f"VM {vm.name} exited at start-up:\n{vm.log_path.read_text()[-2000:]}"
                        )
                    raw = _retry(lambda v=vm: r.get(self.home.vm(v.name)))  # type: ignore[misc]
                    assert vm.process is not None
                    if raw and json.loads(raw).get("pid") == vm.process.pid:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"VM {vm.name} did not start within {timeout}s")
                    time.sleep(0.05)
        finally:
            r.close()

    # -- starting chains ---------------------------------------------------------------------

    def _start_chains(self) -> None:
        try:
            r = self.client()
            px = Pyrecks(r)
            # Half of the chains at once (a backlog in the starts stream), the rest at a steady
            # pace over the whole fault period: chains are running when the last fault hits.
            window = max(self.opts.duration, 0.1)
            upfront = len(self.chains) // 2
            paced = max(len(self.chains) - upfront, 1)
            t0 = time.monotonic()
            for idx, spec in enumerate(self.chains):
                delay = t0 + window * max(idx - upfront, 0) / paced - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # deliberate pacing: starts keep arriving during faults
                _retry(lambda s=spec: px.start(s.call, chain_id=s.id), timeout=120)  # type: ignore[misc]
                spec.acked = time.time()
            r.close()
        except BaseException as exc:  # reported by run(); the phase cannot be checked
            self.start_error = exc

    # -- faults ------------------------------------------------------------------------------

    def _inject(self, kind: str) -> None:
        opts = self.opts
        if kind == "vm-kill":
            vm = self.rng.choice([v for v in self.vms if not v.stopped] or self.vms)
            vm.kill()
            new_name = bool(self.row.faults[kind] % 2)
            vm.spawn(new_name=new_name)
            self.say(f"kill -9 VM slot {vm.slot}, restarted as {vm.name}")
        elif kind == "zombie":
            candidates = [v for v in self.vms if v.alive and not v.stopped]
            if len(candidates) < 2 and len(self.vms) > 1:
                return
            vm = self.rng.choice(candidates)
            vm.pause()
            self.say(f"SIGSTOP {vm.name}")
            r = self.client()
            deadline = time.monotonic() + 5 * opts.lease + 30
            while _retry(lambda: r.exists(self.home.vm(vm.name))) and time.monotonic() < deadline:
                time.sleep(0.05)
            r.close()
            # Deliberate: one more lease, so the others take its chains over (XAUTOCLAIM).
            self.stop_faults.wait(opts.lease * 1.5)
            vm.resume()
            self.say(f"SIGCONT {vm.name} (its heartbeat had expired)")
        elif kind == "redis-kill":
            with self.redis_lock:
                self._note_fsync()
                killed = time.time()
                self.server.kill()
                if self.aof is not None:  # mixed: everysec may lose up to 2 s even here
                    # (a reply may still arrive between time.time() and the kill: the window
                    # ends once the process is gone)
                    self.losses.append(PowerLoss(killed - 2.0, time.time(), 0))
                time.sleep(self.rng.uniform(0.0, 0.5))  # deliberate: Redis stays down a moment
                self.server.start()
            self.say(f"kill -9 Redis (appendfsync {self.server.config['appendfsync']}), "
                     "restarted from its AOF")
        elif kind == "failover":
            self._failover()
        elif kind == "script-flush":
            r = self.client()
            for _ in range(opts.flushes):
                _retry(r.script_flush)
                time.sleep(opts.flush_gap_ms / 1000)  # deliberate: a storm, not one flush
            r.close()
            self.say(f"SCRIPT FLUSH x{opts.flushes}, {opts.flush_gap_ms:g} ms apart")
        elif kind == "power-loss":
            assert self.aof is not None
            with self.redis_lock, self.aof.lock:
                self._note_fsync()
                killed = time.time()
                self.server.kill()
                cut_to, before, after = self.aof.cut(killed, opts.loss_window)
                # Starts acknowledged from cut_to until the process was gone may be lost.
                self.losses.append(PowerLoss(cut_to, time.time(), before - after))
                self.server.start()
            self.say(
                f"power loss: kill -9 Redis (everysec), AOF cut back {before - after} bytes "
                f"to its size {killed - cut_to:.2f}s before the crash, restarted"
            )
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.row.faults[kind] += 1

    def _failover(self) -> None:
        """kill -9 a master whose replica is in sync, wait for the promotion, start the
        killed node again and wait until it has synced as the new master's replica (a
        replica that never finished its sync refuses to stand in the next failover)."""
        cluster = self.cluster
        assert cluster is not None
        candidates = [
            m for m in cluster.masters_now()
            if any(self._replica_of(n, m) and cluster._synced(n) for n in cluster.live_nodes())
        ]
        if not candidates:
            self.say("no master has a replica in sync: no failover this time")
            return
        master = self.rng.choice(candidates)
        try:
            promoted = cluster.kill_master_and_wait_for_failover(master)
        finally:
            master.server.start()
        deadline = time.monotonic() + 60
        while not cluster._synced(master) and time.monotonic() < deadline:
            time.sleep(0.05)  # the restarted node's sync has no event to wait on
        self.say(f"kill -9 master {master.port}, replica {promoted.port} promoted; "
                 f"{master.port} restarted as its replica")

    def _replica_of(self, node: Any, master: Any) -> bool:
        assert self.cluster is not None
        with contextlib.suppress(*_DOWN):
            role = node.client().execute_command("ROLE")
            return bool(role) and _s(role[0]) == "slave" and int(role[2]) == master.port
        return False

    def _note_fsync(self) -> None:
        """Log whether everysec fsyncs were late (Redis then postpones writes, and replies)."""
        with contextlib.suppress(*_DOWN):
            r = self.client()
            info: Any = r.info("persistence")
            r.close()
            self.say(f"before kill: aof_delayed_fsync={info.get('aof_delayed_fsync')} "
                     f"aof_pending_bio_fsync={info.get('aof_pending_bio_fsync')} "
                     f"aof_buffer_length={info.get('aof_buffer_length')}")

    def _faults(self) -> None:
        end = time.monotonic() + self.opts.duration
        while self.kinds:
            wait = self.rng.uniform(0.5, 1.5) * self.opts.interval
            if time.monotonic() + wait > end or self.stop_faults.wait(wait):
                break
            for vm in self.vms:  # a restart while Redis was down exits: start it again
                if not vm.alive:
                    vm.spawn()
            self._inject(self.rng.choice(self.kinds))
        left = end - time.monotonic()
        if left > 0:
            self.stop_faults.wait(left)

    def _restore(self) -> None:
        """Faults over: Redis up, every VM running and resumed."""
        with self.redis_lock:
            if self.cluster is not None:
                for node in self.cluster.nodes:
                    if node.server.process is None or node.server.process.poll() is not None:
                        node.server.start()
            elif self.server.process is None or self.server.process.poll() is not None:
                self.server.start()
        for vm in self.vms:
            vm.resume()
            if not vm.alive:
                vm.spawn()

    # -- waiting and checking --------------------------------------------------------------

    def _start_may_be_lost(self, spec: ChainSpec) -> bool:
        assert spec.acked is not None
        return any(loss.cut_to <= spec.acked <= loss.killed for loss in self.losses)

    def _wait_for_chains(self, stopped_wall: float, stopped: float) -> None:
        r = self.client()
        open_ = [c for c in self.chains if c.acked is not None]
        deadline = stopped + self.opts.recovery
        last_report = 0.0
        while open_:
            still = []
            for chunk in _chunks(open_, 2000):
                pipe = r.pipeline(transaction=False)
                for spec in chunk:
                    pipe.hmget(self.ks.chain(spec.id), "status", "finished")
                got = _retry(pipe.execute)
                for spec, (status, finished) in zip(chunk, got, strict=True):
                    spec.status = _s(status)
                    if spec.status in ("done", "failed", "cancelled"):
                        spec.finished = float(_s(finished) or 0) or time.time()
                    elif status is None and self._start_may_be_lost(spec):
                        spec.status = "start-lost"
                    else:
                        still.append(spec)
            open_ = still
            now = time.monotonic()
            if not open_ or now > deadline:
                break
            if now - last_report > 5:
                last_report = now
                self.say(f"waiting for {len(open_)} chains to end")
            time.sleep(0.1)  # polling the chain records is how we observe them end
        r.close()
        ended = [c.finished for c in self.chains if c.finished is not None]
        if not open_:
            self.row.recovery = max([0.0, *(t - stopped_wall for t in ended)])

    def _check(self) -> None:
        r = self.client()
        row = self.row
        started = [c for c in self.chains if c.acked is not None]
        row.chains = len(started)
        expected: dict[str, int] = {}
        for spec in started:
            for key in spec.counters():
                expected[key] = 0 if spec.status == "start-lost" else 1
        keys = sorted(expected)
        actual: dict[str, int] = {}
        read = r.mget_nonatomic if self.cluster is not None else r.mget  # type: ignore[attr-defined]
        for chunk in _chunks(keys, 5000):
            for key, value in zip(chunk, _retry(lambda c=chunk: read(c)), strict=True):  # type: ignore[misc]
                actual[key] = int(value or 0)
        stray = [
            _s(k) for k in _retry(lambda: list(r.scan_iter("cx:*", count=5000)))
            if _s(k) not in expected
        ]
        for key in stray:
            actual[key] = int(_retry(lambda k=key: r.get(k)) or 0)  # type: ignore[misc]
            expected[key] = 0
        # A stuck chain has not applied its remaining effects yet: that is counted as stuck,
        # not as lost.  Every chain that ended (or whose start was lost) must be exact.
        unfinished = {k for s in started if s.finished is None and s.status != "start-lost"
                      for k in s.counters()}
        row.lost = sum(max(0, expected[k] - actual.get(k, 0)) for k in expected
                       if k not in unfinished)
        row.duplicated = sum(max(0, actual.get(k, 0) - expected[k]) for k in expected)
        if unfinished:
            row.notes.append("effects the stuck chains have yet to apply: "
                             f"{sum(max(0, expected[k] - actual.get(k, 0)) for k in unfinished)}")
        per_chain_bad = [
            s.id for s in started
            if any(actual.get(k, 0) != expected[k] for k in s.counters())
        ]
        if per_chain_bad:
            row.notes.append(f"chains with wrong counters: {len(per_chain_bad)}, e.g. "
                             + ", ".join(per_chain_bad[:5]))
        if stray:
            row.notes.append(f"stray counter keys: {stray[:5]}")
        row.starts_lost = sum(1 for s in started if s.status == "start-lost")
        with open(self.workdir / "chains.json", "w") as f:
            json.dump([{**s.__dict__, "id": s.id} for s in self.chains], f)
        results = {}
        done = [s for s in started if s.status == "done"]
        for batch in _chunks(done, 2000):
            pipe = r.pipeline(transaction=False)
            for spec in batch:
                pipe.hget(self.ks.chain(spec.id), "result")
            for spec, value in zip(batch, _retry(pipe.execute), strict=True):
                results[spec.id] = _s(value)
        wrong = [s.id for s in done if results[s.id] != s.result]
        failed = [s for s in started if s.status in ("failed", "cancelled")]
        row.failed = len(failed) + len(wrong)
        for spec in failed[:3]:
            rec = _retry(lambda s=spec: r.hmget(self.ks.chain(s.id), "error_kind", "error"))  # type: ignore[misc]
            row.notes.append(f"{spec.id} {spec.status}: {_s(rec[0])}: {_s(rec[1])[:200]}")
        if wrong:
            row.notes.append(f"wrong results: {wrong[:5]}")
        stuck = [s for s in started if s.finished is None and s.status != "start-lost"]
        row.stuck = len(stuck)
        if stuck:
            row.notes += self._explain_stuck(r, stuck)
        r.close()

    def _explain_stuck(self, r: redis.Redis, stuck: list[ChainSpec]) -> list[str]:
        """Who holds the stuck chains: record, owner's heartbeat, pending stream entries."""
        notes = []
        by_status: dict[str, int] = {}
        for spec in stuck:
            by_status[spec.status or "missing"] = by_status.get(spec.status or "missing", 0) + 1
        notes.append(f"stuck by status: {by_status}")
        holder: dict[str, list[str]] = {}
        for starts in (shard.starts for shard in self.ks.every_shard()):
            pending: Any = _retry(lambda s=starts: r.xpending_range(s, GROUP, "-", "+", 100_000))  # type: ignore[misc]
            if not pending:
                continue
            pipe = r.pipeline(transaction=False)
            for p in pending:
                pipe.xrange(starts, p["message_id"], p["message_id"])
            for p, entries in zip(pending, _retry(pipe.execute), strict=True):
                for _id, fields in entries:
                    chain = _s(fields.get(b"chain") or fields.get(b"id"))
                    holder.setdefault(chain, []).append(
                        f"{_s(p['message_id'])} pending at {_s(p['consumer'])} "
                        f"(idle {p['time_since_delivered'] / 1000:.1f}s, "
                        f"{p['times_delivered']} deliveries)"
                    )
        for spec in stuck[:4]:
            rec: Any = _retry(lambda s=spec: r.hgetall(self.ks.chain(s.id)))  # type: ignore[misc]
            fields = {_s(k): _s(v) for k, v in rec.items()}
            owner = fields.get("owner", "")
            beat = bool(owner) and bool(_retry(lambda o=owner: r.exists(self.home.vm(o))))  # type: ignore[misc]
            keep = ("status", "step", "epoch", "owner", "call")
            notes.append(
                f"stuck {spec.id}: " + " ".join(f"{k}={fields.get(k, '')!r}" for k in keep)
                + f" owner_alive={beat}; entries: {holder.get(spec.id) or 'none pending'}"
            )
            if fields.get("status") == "waiting":
                for b in range(int(fields.get("branches") or 0)):
                    bid = f"{spec.id}.{b}"
                    brec: Any = _retry(lambda x=bid: r.hmget(  # type: ignore[misc]
                        self.ks.chain(x), "status", "step", "epoch", "owner"))
                    bst, bstep, bepoch, bowner = (_s(v) for v in brec)
                    if bst == "done":
                        continue
                    balive = bool(bowner) and bool(
                        _retry(lambda o=bowner: r.exists(self.home.vm(o))))  # type: ignore[misc]
                    notes.append(
                        f"  branch {bid}: status={bst!r} step={bstep!r} epoch={bepoch!r} "
                        f"owner={bowner!r} owner_alive={balive}; entries: "
                        f"{holder.get(bid) or 'none pending'}"
                    )
        return notes

    def _count_vm_errors(self) -> None:
        """Tracebacks the VMs logged (never expected): how many, and their distinct errors."""
        kinds: dict[str, int] = {}
        for vm in self.vms:
            with contextlib.suppress(OSError):
                text = vm.log_path.read_text(errors="replace")
                for error, where in _tracebacks(text.splitlines()):
                    key = f"{error[:200]} (in {where})"
                    kinds[key] = kinds.get(key, 0) + 1
        self.row.vm_errors = sum(kinds.values())
        self.row.notes += [f"VM traceback x{n}: {k}" for k, n in sorted(kinds.items())]

    # -- the whole phase -------------------------------------------------------------------

    def run(self) -> Row:
        self.say(f"{self.opts.vms} VMs, {len(self.chains)} chains, {self.opts.duration:g}s of "
                 f"faults, lease {self.opts.lease:g}s; workdir {self.workdir}")
        try:
            self._setup()
            starter = threading.Thread(target=self._start_chains, daemon=True, name="starter")
            starter.start()
            self._faults()
            self._restore()
            stopped_wall, stopped = time.time(), time.monotonic()
            starter.join()
            if self.start_error is not None:
                raise RuntimeError(f"starting chains failed: {self.start_error!r}")
            self.say("faults stopped; waiting for every chain to end")
            self._wait_for_chains(stopped_wall, stopped)
            self._check()
            self._count_vm_errors()
        finally:
            self.close()
        return self.row

    def close(self) -> None:
        for vm in self.vms:
            vm.resume()
            vm.kill()
        if self.aof is not None:
            self.aof.close()
        if self.cluster is not None:
            self.cluster.close()
        self.server.kill()
        if self.row.ok and not self.opts.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.row.workdir = ""


def _tracebacks(lines: list[str]) -> Iterator[tuple[str, str]]:
    """(final exception line, innermost pyrecks frame) of each (chained) traceback in a log."""
    n = 0
    while n < len(lines):
        if not lines[n].startswith("Traceback"):
            n += 1
            continue
        where = "?"
        while True:
            n += 1
            while n < len(lines) and lines[n].startswith(" "):
                frame = lines[n].strip()
                if frame.startswith("File") and "/pyrecks/" in frame:
                    where = frame.split("/pyrecks/", 1)[1].replace('", line ', ":")
                n += 1
            error = lines[n] if n < len(lines) else "?"
            m = n + 1
            while m < len(lines) and not lines[m].strip():
                m += 1
            if m < len(lines) and lines[m].startswith(("During handling", "The above exception")):
                n = m + 1
                while n < len(lines) and not lines[n].startswith("Traceback"):
                    n += 1
                if n < len(lines):
                    continue
            break
        yield error, where
        n += 1


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- the report ------------------------------------------------------------------------------

HEADER = ("fault kind", "count", "chains", "lost effects", "dup effects", "failed", "stuck",
          "starts lost", "recovery", "VM errors")


def format_table(rows: Sequence[Row]) -> str:
    lines = [HEADER]
    for row in rows:
        recovery = f"{row.recovery:.1f}s" if row.recovery is not None else "-"
        starts_lost = str(row.starts_lost) if "power-loss" in row.faults else "-"
        lines.append((row.kind, str(row.count), str(row.chains), str(row.lost),
                      str(row.duplicated), str(row.failed), str(row.stuck), starts_lost,
                      recovery, str(row.vm_errors)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:],
                                                                         strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_notes(rows: Sequence[Row]) -> str:
    out = []
    for row in rows:
        head = f"{row.kind}: " + ", ".join(f"{k} x{v}" for k, v in row.faults.items())
        if row.vm_errors:
            head += f"; {row.vm_errors} tracebacks in VM logs"
        if row.workdir:
            head += f"; logs and AOF kept in {row.workdir}"
        out.append(head)
        out += [f"  {note}" for note in row.notes]
    return "\n".join(out)


def run_soak(opts: Options, kinds: Sequence[str]) -> list[Row]:
    rows = []
    for n, kind in enumerate(kinds):
        rows.append(Phase(kind, opts, opts.seed * 1000 + n).run())
    return rows


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, list[str], str | None]:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Chaos soak: run K VMs and N chains with effects and fan-out while "
        "injecting faults, then check every effect and every chain (exit 1 on any lost or "
        "duplicated effect, failed or stuck chain).",
    )
    p.add_argument("--vms", type=int, default=None, help="VM processes (3; quick: 2)")
    p.add_argument("--chains", type=int, default=None,
                   help="chains per fault kind (1000; quick: 60)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of faults per fault kind (30; quick: 6)")
    p.add_argument("--faults", default=",".join(KINDS),
                   help=f"comma-separated fault kinds, one phase each: {', '.join(KINDS)}, "
                   "mixed (all in one phase), none (default: the five kinds)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="a small run: the sizes of tests/test_chaos_smoke.py")
    p.add_argument("--interval", type=float, default=None,
                   help="mean seconds between faults (2; quick: 1.5)")
    p.add_argument("--lease", type=float, default=None, help="VM lease in seconds (1.5; quick: 1)")
    p.add_argument("--threads", type=int, default=None, help="threads per VM (8; quick: 4)")
    p.add_argument("--isolation", default="thread", choices=("thread", "process", "jail"))
    p.add_argument("--step-ms", type=int, default=20,
                   help="milliseconds each kernel sleeps (keeps chains in flight while faults hit)")
    p.add_argument("--recovery", type=float, default=None,
                   help="seconds after the faults stop by which every chain must end "
                   "(60; quick: 6)")
    p.add_argument("--loss-window", type=float, default=1.0,
                   help="seconds of AOF writes a power loss drops (everysec)")
    p.add_argument("--flushes", type=int, default=5,
                   help="SCRIPT FLUSHes per script-flush fault (a storm)")
    p.add_argument("--flush-gap-ms", type=float, default=20.0,
                   help="milliseconds between the flushes of a storm")
    p.add_argument("--redis-server", default=None, metavar="PATH",
                   help="redis-server (or valkey-server) binary to run; default: the one "
                   "pyrecks' test servers use")
    p.add_argument("--keep", action="store_true", help="keep every phase's Redis data and logs")
    p.add_argument("--cluster", action="store_true",
                   help="run each phase on a 3-master + 3-replica Redis Cluster (fault kinds: "
                   f"{', '.join(CLUSTER_KINDS)}, mixed, none)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    a = p.parse_args(argv)
    if a.cluster and a.faults == ",".join(KINDS):
        a.faults = ",".join(CLUSTER_KINDS)
    kinds = [k.strip() for k in a.faults.split(",") if k.strip()]
    known = (CLUSTER_KINDS if a.cluster else KINDS) + EXTRA_KINDS
    for k in kinds:
        if k not in known:
            where = " on a cluster" if a.cluster else ""
            p.error(f"unknown fault kind {k!r}{where}: use {', '.join(known)}")

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if a.quick else full)

    opts = Options(
        vms=pick(a.vms, 3, 2),
        chains=pick(a.chains, 1000, 60),
        duration=pick(a.duration, 30.0, 6.0),
        interval=pick(a.interval, 2.0, 1.5),
        lease=pick(a.lease, 1.5, 1.0),
        threads=pick(a.threads, 8, 4),
        isolation=a.isolation,
        step_ms=a.step_ms,
        recovery=pick(a.recovery, 60.0, 6.0),
        loss_window=a.loss_window,
        flushes=a.flushes,
        flush_gap_ms=a.flush_gap_ms,
        seed=a.seed,
        redis_server=a.redis_server,
        keep=a.keep,
        verbose=not a.quiet,
        cluster=a.cluster,
    )
    return opts, kinds, a.json_path


def main(argv: Sequence[str] | None = None) -> int:
    opts, kinds, json_path = parse_args(argv)
    started = time.monotonic()
    rows = run_soak(opts, kinds)
    print(format_table(rows))
    notes = format_notes(rows)
    if notes:
        print()
        print(notes)
    print(f"\n{opts.vms} VMs x {opts.threads} threads ({opts.isolation}), lease {opts.lease:g}s, "
          f"{opts.chains} chains and {opts.duration:g}s of faults per kind, seed {opts.seed}; "
          f"{time.monotonic() - started:.0f}s in all")
    if json_path:
        with open(json_path, "w") as f:
            json.dump([r.as_json() for r in rows], f, indent=2)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
