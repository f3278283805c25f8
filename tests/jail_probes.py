"""Escape attempts against a cell, as data: each must FAIL (raise) inside a confined process.

``PROBES`` is a list of ``(name, source)``.  Each source is plain, unguarded Python run with
``exec(source, globals)`` inside a confined process: raising means the attempt was stopped,
completing normally means an escape.  Probes assume the attacker already got past the purity
guards (they import ``os``, ``socket``, ``ctypes``…, which the zygote must have imported
for the import to succeed without a filesystem).  The sources read these globals:

``VM_PID``               pid of the VM (a root process outside the cell)
``SIBLING_PID``          pid of another confined cell
``REDIS_PORT``           a TCP port listening on 127.0.0.1 (Redis, or a stand-in)
``UNIX_SOCKET_PATH``     a listening unix socket anyone may connect to (mode 0777)
``ABSTRACT_SOCKET_NAME`` a listening abstract unix socket, "\\0…"
``SECRET_PATH``          a root-owned 0600 file in a world-searchable directory
``MEMORY_LIMIT_BYTES``   the cell's memory limit

``BLOCKED_BY`` says, for every probe, which layers stop it when applied *alone* (on Landlock
ABI 7, with the namespaces layer chrooting into an empty root); ``LANDLOCK_MIN_ABI`` the ABI a
Landlock entry needs.  Every probe must be stopped by all layers together.

``POSITIVE`` is the other side: ordinary computation that must keep working in a cell
(globals as above plus ``CHANNEL_FD``).
"""

from __future__ import annotations

_LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
_RAISE = "    e = ctypes.get_errno()\n    raise OSError(e, os.strerror(e))\n"

PROBES: list[tuple[str, str]] = [
    ("read_etc_passwd", "open('/etc/passwd').read()"),
    ("read_vm_environ", "open(f'/proc/{VM_PID}/environ', 'rb').read()"),
    ("read_root_secret", "open(SECRET_PATH).read()"),
    (
        "create_tmp_file",
        "import os\n"
        "p = f'/tmp/pyrecks-probe-{os.getpid()}'\n"
        "os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))\n"
        "os.unlink(p)",
    ),
    (
        "write_tmp_file",
        "import os\n"
        "p = f'/tmp/pyrecks-probe-w-{os.getpid()}'\n"
        "fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)\n"
        "try:\n"
        "    os.write(fd, b'escaped')\n"
        "finally:\n"
        "    os.close(fd)\n"
        "    os.unlink(p)",
    ),
    ("list_root_dir", "import os\nos.listdir('/')"),
    ("list_etc_dir", "import os\nos.listdir('/etc')"),
    ("stat_etc_passwd", "import os\nos.stat('/etc/passwd')"),
    ("open_dev_null", "open('/dev/null', 'rb').close()"),
    ("create_socket", "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM).close()"),
    ("socketpair", "import socket\nfor s in socket.socketpair():\n    s.close()"),
    (
        "connect_tcp_redis",
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.connect(('127.0.0.1', REDIS_PORT))\n"
        "s.close()",
    ),
    (
        "connect_unix_path",
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.connect(UNIX_SOCKET_PATH)\n"
        "s.close()",
    ),
    (
        "connect_unix_abstract",
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.connect(ABSTRACT_SOCKET_NAME)\n"
        "s.close()",
    ),
    # If exec succeeds the process is replaced and exits 0 without reporting: an escape.
    ("execve_sh", "import os\nos.execv('/bin/sh', ['sh', '-c', 'exit 0'])"),
    ("fork", "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)"),
    ("signal_vm_existence", "import os\nos.kill(VM_PID, 0)"),
    ("signal_sibling_cell", "import os, signal\nos.kill(SIBLING_PID, signal.SIGCONT)"),
    (
        # PTRACE_SEIZE is PTRACE_ATTACH without stopping the victim: same permission checks,
        # harmless if it gets through (the tracee is detached when the cell exits).
        "ptrace_attach_vm",
        _LIBC + "libc.ptrace.restype = ctypes.c_long\n"
        "if libc.ptrace(ctypes.c_long(0x4206), ctypes.c_long(VM_PID), None, None) != 0:\n"
        + _RAISE,
    ),
    (
        # EFAULT (the address is not mapped in the VM) means the permission check passed.
        "process_vm_readv_vm",
        _LIBC + "import errno\n"
        "class iovec(ctypes.Structure):\n"
        "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "buf = ctypes.create_string_buffer(8)\n"
        "local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)\n"
        "remote = iovec(0x10000, 8)\n"
        "libc.process_vm_readv.restype = ctypes.c_ssize_t\n"
        "n = libc.process_vm_readv(VM_PID, ctypes.byref(local), ctypes.c_ulong(1),\n"
        "                          ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0))\n"
        "if n < 0 and ctypes.get_errno() != errno.EFAULT:\n" + _RAISE,
    ),
    ("alloc_past_memory_limit", "bytearray(MEMORY_LIMIT_BYTES + (32 << 20))"),
    (
        "raise_core_limit",
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
    ),
    (
        "raise_memory_limit",
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
    ),
    ("unshare_user_ns", _LIBC + "if libc.unshare(0x10000000) != 0:\n" + _RAISE),
    ("unshare_mount_ns", _LIBC + "if libc.unshare(0x00020000) != 0:\n" + _RAISE),
    ("mount_tmpfs", _LIBC + "if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0:\n" + _RAISE),
    ("chroot", "import os\nos.chroot('/')"),
    ("setuid_root", "import os\nos.setuid(0)"),
    ("memfd_create", "import os\nos.close(os.memfd_create('probe'))"),
    (
        "io_uring_setup",
        _LIBC + "libc.syscall.restype = ctypes.c_long\n"
        "params = ctypes.create_string_buffer(120)\n"
        "fd = libc.syscall(ctypes.c_long(425), ctypes.c_uint(1), params)\n"
        "if fd < 0:\n" + _RAISE + "os.close(fd)",
    ),
    (
        "bpf_map_create",
        _LIBC + "import struct, sys\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "nr = {'x86_64-linux-gnu': 321, 'aarch64-linux-gnu': 280}[sys.implementation._multiarch]\n"
        "attr = ctypes.create_string_buffer(struct.pack('IIII', 2, 4, 4, 1), 128)  # ARRAY map\n"
        "fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(0), attr, ctypes.c_uint(128))\n"
        "if fd < 0:\n" + _RAISE + "os.close(fd)",
    ),
    (
        # UFFD_USER_MODE_ONLY: the variant unprivileged users may create.
        "userfaultfd",
        _LIBC + "import sys\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "nr = {'x86_64-linux-gnu': 323, 'aarch64-linux-gnu': 282}[sys.implementation._multiarch]\n"
        "fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(os.O_CLOEXEC | 1))\n"
        "if fd < 0:\n" + _RAISE + "os.close(fd)",
    ),
    ("personality", _LIBC + "if libc.personality(ctypes.c_ulong(0x0400000)) == -1:\n" + _RAISE),
    (
        "map_executable_memory",
        _LIBC + "libc.mmap.restype = ctypes.c_void_p\n"
        "addr = libc.mmap(None, ctypes.c_size_t(4096), 7, 0x22, -1, ctypes.c_long(0))\n"
        "if addr in (None, ctypes.c_void_p(-1).value):\n" + _RAISE,
    ),
]

_ALL_BUT_RLIMITS = frozenset({"namespaces", "landlock", "seccomp"})
_SECCOMP = frozenset({"seccomp"})
_NS_SECCOMP = frozenset({"namespaces", "seccomp"})

BLOCKED_BY: dict[str, frozenset[str]] = {
    "read_etc_passwd": _ALL_BUT_RLIMITS,
    "read_vm_environ": _ALL_BUT_RLIMITS,
    "read_root_secret": _ALL_BUT_RLIMITS,
    "create_tmp_file": _ALL_BUT_RLIMITS,
    "write_tmp_file": _ALL_BUT_RLIMITS | {"rlimits"},  # RLIMIT_FSIZE 0: EFBIG
    # The empty root is mode 0111: searchable, not readable, so not even listable as [].
    "list_root_dir": _ALL_BUT_RLIMITS,
    "list_etc_dir": _ALL_BUT_RLIMITS,
    "stat_etc_passwd": _NS_SECCOMP,  # Landlock does not cover stat/path walks
    "open_dev_null": _ALL_BUT_RLIMITS,
    "create_socket": _SECCOMP,
    "socketpair": _SECCOMP | {"rlimits"},  # RLIMIT_NOFILE 1: no room for two fds
    "connect_tcp_redis": _ALL_BUT_RLIMITS,  # namespaces: lo is down
    "connect_unix_path": _NS_SECCOMP,  # Landlock (ABI 7) does not cover connect by path
    "connect_unix_abstract": _ALL_BUT_RLIMITS,  # namespaces: abstract names are per netns
    "execve_sh": _ALL_BUT_RLIMITS,
    "fork": _SECCOMP,  # RLIMIT_NPROC does not bind root; see NAMESPACES_AND_RLIMITS
    "signal_vm_existence": _ALL_BUT_RLIMITS,
    # Every cell is uid 65534, so the uid alone does not keep cells from signalling each other.
    "signal_sibling_cell": frozenset({"landlock", "seccomp"}),
    "ptrace_attach_vm": _ALL_BUT_RLIMITS,
    "process_vm_readv_vm": _ALL_BUT_RLIMITS,
    "alloc_past_memory_limit": frozenset({"rlimits"}),
    # The rlimits layer sets hard limits and drops CAP_SYS_RESOURCE; without it they are
    # unlimited, so the uid drop alone changes nothing.
    "raise_core_limit": frozenset({"rlimits", "seccomp"}),
    "raise_memory_limit": frozenset({"rlimits", "seccomp"}),
    "unshare_user_ns": _NS_SECCOMP,
    "unshare_mount_ns": _NS_SECCOMP,
    "mount_tmpfs": _ALL_BUT_RLIMITS,
    "chroot": _NS_SECCOMP,
    "setuid_root": _NS_SECCOMP,
    "memfd_create": _SECCOMP,
    "io_uring_setup": _SECCOMP,
    "bpf_map_create": _NS_SECCOMP,
    "userfaultfd": _SECCOMP,
    "personality": _SECCOMP,
    "map_executable_memory": _SECCOMP,
}

LANDLOCK_MIN_ABI: dict[str, int] = {
    "connect_tcp_redis": 4,
    "connect_unix_abstract": 6,
    "signal_vm_existence": 6,
    "signal_sibling_cell": 6,
}

#: Probes that the namespaces and rlimits layers stop *together* though neither stops fork
#: alone (RLIMIT_NPROC binds uid 65534, not root), checked with exactly those two layers.
NAMESPACES_AND_RLIMITS: tuple[str, ...] = ("fork", "raise_core_limit", "raise_memory_limit")

POSITIVE: list[tuple[str, str]] = [
    (
        "json_round_trip",
        "import json\nv = {'a': [1, 2.5, 'x', None], 'b': {'c': True}}\n"
        "assert json.loads(json.dumps(v)) == v",
    ),
    (
        "regex",
        "import re\np = re.compile(r'(\\w+)@(\\w+)\\.com')\n"
        "assert p.findall('a@b.com, c@d.com') == [('a', 'b'), ('c', 'd')]",
    ),
    (
        "strptime",
        "import datetime, time\n"
        "assert datetime.datetime.strptime('2024-03-01 12:30', '%Y-%m-%d %H:%M').minute == 30\n"
        "assert time.strptime('2024-02-29', '%Y-%m-%d').tm_yday == 60",
    ),
    (
        "sleep",
        "import time\nt = time.monotonic()\ntime.sleep(0.01)\nassert time.monotonic() - t >= 0.01",
    ),
    ("clocks", "import datetime, time\ndatetime.datetime.now()\ntime.time()\ntime.localtime()\ntime.perf_counter()"),
    ("seeded_random", "import random\nassert random.Random(5).random() == random.Random(5).random()"),
    ("entropy", "import os, random\nrandom.Random().random()\nassert len(os.urandom(16)) == 16"),
    (
        "decimal_fractions_statistics",
        "import decimal, fractions, statistics\n"
        "assert str(decimal.Decimal(1) / decimal.Decimal(8)) == '0.125'\n"
        "assert fractions.Fraction(1, 3) * 3 == 1\n"
        "assert statistics.median([3, 1, 2]) == 2",
    ),
    (
        "hashlib",
        "import hashlib\n"
        "assert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf')\n"
        "hashlib.md5(b'x').hexdigest()\nhashlib.blake2b(b'x').hexdigest()",
    ),
    ("big_int", "x = 3 ** 100000\nassert x % 1000003 == pow(3, 100000, 1000003)\nassert len(str(2 ** 4000)) == 1205"),
    (
        "memory_error_then_recover",
        "try:\n    bytearray(MEMORY_LIMIT_BYTES * 2)\nexcept MemoryError:\n    pass\n"
        "else:\n    raise AssertionError('an allocation past the memory limit succeeded')\n"
        "x = [0] * 100000\nassert len(x) == 100000",
    ),
    (
        "write_to_channel",
        "import os\nos.write(CHANNEL_FD, b'{\"kind\": \"print\", \"text\": \"hello from the cell\"}\\n')",
    ),
    (
        "poll_channel",
        "import select\np = select.poll()\np.register(CHANNEL_FD, select.POLLOUT)\nassert p.poll(0)",
    ),
    ("msgpack", "import msgpack\nassert msgpack.unpackb(msgpack.packb({'a': [1, 2]})) == {'a': [1, 2]}"),
    (
        "stdlib_mix",
        "import base64, bisect, collections, copy, functools, heapq, itertools, operator, string\n"
        "import textwrap, unicodedata\n"
        "assert collections.Counter('abca')['a'] == 2\n"
        "assert list(itertools.islice(itertools.count(), 3)) == [0, 1, 2]\n"
        "assert functools.reduce(operator.add, range(5)) == 10\n"
        "assert base64.b64decode(base64.b64encode(b'x')) == b'x'\n"
        "h = [3, 1, 2]\nheapq.heapify(h)\nassert h[0] == 1\nassert bisect.bisect([1, 3], 2) == 1\n"
        "assert copy.deepcopy({'a': [1]}) == {'a': [1]}\n"
        "assert unicodedata.normalize('NFC', 'e\\u0301') == '\\u00e9'\n"
        "assert textwrap.shorten(string.ascii_letters * 3, 20)",
    ),
    (
        "dataclass_enum_typing",
        "import dataclasses, enum, typing\n"
        "@dataclasses.dataclass(frozen=True)\nclass P:\n    x: int\n    y: typing.Optional[int] = None\n"
        "class C(enum.Enum):\n    A = 1\n"
        "assert P(1) == P(1) and C(1) is C.A",
    ),
    ("pyrecks_kernel", "import pyrecks.kernel"),
    (
        "traceback_without_sources",
        "import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    assert 'ZeroDivisionError' in traceback.format_exc()",
    ),
]
