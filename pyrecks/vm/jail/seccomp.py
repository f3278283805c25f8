"""The cell's seccomp-bpf allowlist, assembled by hand as a classic BPF program.

A cell only computes and talks over one already-open socket, so the allowlist is short
(:data:`ALLOWED`, each entry with the reason it is there).  Everything else returns EPERM
rather than killing the process: a kernel that tries ``open`` gets an ``OSError`` and its
step fails with an ordinary error.  Two things do kill at once, because no honest CPython
ever does them and they are the classic ways around a syscall allowlist: a syscall made
through another ABI than the native one (``int 0x80`` i386 on x86_64, AArch32 on arm64) and
an x32 syscall (numbers with bit 30 set).

The program is built once per process (the zygote, at import) and installing it in a cell is
one ``prctl``.  Syscall numbers are written out per architecture; ``tests/test_jail_layers.py``
checks them against libseccomp's own tables.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# <linux/audit.h>, <linux/seccomp.h>, <linux/filter.h>
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_JGE_K = 0x05 | 0x30 | 0x00
_BPF_JSET_K = 0x05 | 0x40 | 0x00
_BPF_RET_K = 0x06 | 0x00

# Offsets in struct seccomp_data {int nr; u32 arch; u64 instruction_pointer; u64 args[6];}.
_OFF_NR = 0
_OFF_ARCH = 4
_PROT_EXEC = 0x4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of syscall argument ``index`` (both arches are little-endian)."""
    return 16 + 8 * index


ALLOWED: dict[str, str] = {
    "read": "os.read on the channel",
    "write": "os.write on the channel (results, prints)",
    "readv": "vectored channel reads by the C library or extension modules",
    "writev": "vectored channel writes by the C library or extension modules",
    "close": "closing the channel at the end; closing an fd never opens anything",
    "poll": "select.poll on the channel (x86_64 only; arm64 has only ppoll)",
    "ppoll": "select.poll on the channel (arm64), or by the C library",
    "mmap": "obmalloc arenas and large allocations (anonymous; PROT_EXEC refused)",
    "mprotect": "the C library's malloc and guard pages (PROT_EXEC refused)",
    "munmap": "freeing arenas and large allocations",
    "mremap": "realloc of large blocks (bytearray/list growth)",
    "brk": "the C library's main malloc heap",
    "madvise": "the C library's malloc returning freed pages to the kernel",
    "futex": "locks inside CPython and the C library (uncontended in a one-thread cell)",
    "clock_gettime": "time.time/monotonic/perf_counter when the vDSO falls back to a syscall",
    "clock_getres": "time.get_clock_info",
    "gettimeofday": "old time sources in the C library (vDSO fallback)",
    "clock_nanosleep": "time.sleep (CPython 3.11 sleeps with clock_nanosleep)",
    "nanosleep": "time.sleep fallback in the C library",
    "sched_yield": "spin-then-yield loops in the C library",
    "restart_syscall": "the kernel restarts an interrupted sleep through it",
    "getpid": "os.getpid; CPython's signal and fork-safety checks",
    "gettid": "the C library's locks and thread ids",
    "getrandom": "os.urandom, random.Random() without a seed, hash secrets",
    "rt_sigaction": "signal dispositions (CPython installs and restores handlers)",
    "rt_sigprocmask": "signal masks around critical sections in the C library",
    "rt_sigreturn": "returning from a signal handler",
    "sigaltstack": "CPython's and the C library's alternate signal stacks",
    "exit": "a thread's end (the C library may use it)",
    "exit_group": "the cell's end",
}

#: Syscalls allowed only when their arguments pass a check (see :func:`build_program`).
ARGUMENT_CHECKED = ("mmap", "mprotect")

SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "read": 0, "write": 1, "close": 3, "poll": 7, "mmap": 9, "mprotect": 10,
        "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14,
        "rt_sigreturn": 15, "readv": 19, "writev": 20, "sched_yield": 24, "mremap": 25,
        "madvise": 28, "nanosleep": 35, "getpid": 39, "exit": 60, "gettimeofday": 96,
        "sigaltstack": 131, "gettid": 186, "futex": 202, "restart_syscall": 219,
        "clock_gettime": 228, "clock_getres": 229, "clock_nanosleep": 230,
        "exit_group": 231, "ppoll": 271, "getrandom": 318,
    },
    "aarch64": {
        "close": 57, "read": 63, "write": 64, "readv": 65, "writev": 66, "ppoll": 73,
        "exit": 93, "exit_group": 94, "futex": 98, "nanosleep": 101, "clock_gettime": 113,
        "clock_getres": 114, "clock_nanosleep": 115, "sched_yield": 124,
        "restart_syscall": 128, "sigaltstack": 132, "rt_sigaction": 134,
        "rt_sigprocmask": 135, "rt_sigreturn": 139, "gettimeofday": 169, "getpid": 172,
        "gettid": 178, "brk": 214, "munmap": 215, "mremap": 216, "mmap": 222,
        "mprotect": 226, "madvise": 233, "getrandom": 278,
    },
}

AUDIT_ARCH: dict[str, int] = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}


def native_arch() -> str | None:
    """The running architecture's name in :data:`SYSCALL_NUMBERS`, or None if unsupported."""
    machine = platform.machine()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    return machine if machine in SYSCALL_NUMBERS else None


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    """One ``struct sock_filter {u16 code; u8 jt; u8 jf; u32 k;}`` in native byte order."""
    return struct.pack("=HBBI", code, jt, jf, k)


def build_program(arch: str) -> bytes:
    """Assemble the allowlist for ``arch`` as raw ``sock_filter`` instructions.

    Layout: check the ABI (kill if foreign), load the number, kill x32 numbers (x86_64), then
    one ``jeq nr → allow`` pair per allowed syscall, the argument-checked ones, and finally
    ``ERRNO(EPERM)``.  Every jump is short and forward, so the program needs no label
    resolution and reads top to bottom.
    """
    numbers = SYSCALL_NUMBERS[arch]
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    out = [
        _insn(_BPF_LD_W_ABS, _OFF_ARCH),
        _insn(_BPF_JEQ_K, AUDIT_ARCH[arch], jt=1, jf=0),
        _insn(_BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        _insn(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if arch == "x86_64":
        out += [
            _insn(_BPF_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1),
            _insn(_BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        ]
    for name in ALLOWED:
        if name in ARGUMENT_CHECKED or name not in numbers:
            continue
        out += [
            _insn(_BPF_JEQ_K, numbers[name], jt=0, jf=1),
            _insn(_BPF_RET_K, SECCOMP_RET_ALLOW),
        ]
    for name in ARGUMENT_CHECKED:
        # mmap(addr, len, prot, ...) and mprotect(addr, len, prot): prot is argument 2.  No
        # executable memory: a cell never needs to create code, and refusing it takes away
        # the easy path from a memory-corruption bug to running injected machine code.
        out += [
            _insn(_BPF_JEQ_K, numbers[name], jt=0, jf=4),
            _insn(_BPF_LD_W_ABS, _arg_low(2)),
            _insn(_BPF_JSET_K, _PROT_EXEC, jt=0, jf=1),
            _insn(_BPF_RET_K, deny),
            _insn(_BPF_RET_K, SECCOMP_RET_ALLOW),
        ]
    out.append(_insn(_BPF_RET_K, deny))
    return b"".join(out)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.restype = ctypes.c_int  # resolved now, in the zygote


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Prepared:
    """A program ready to install: the buffers stay alive as long as this object does."""

    def __init__(self, program: bytes) -> None:
        self.program = program
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))

    def install(self) -> None:
        """Install the filter on the calling thread; raises OSError on failure.

        Needs no_new_privs or CAP_SYS_ADMIN (kernel rule: otherwise a setuid program could be
        run under a filter that makes it misbehave).
        """
        ret = _libc.prctl(
            ctypes.c_int(_PR_SET_SECCOMP),
            ctypes.c_ulong(_SECCOMP_MODE_FILTER),
            ctypes.c_void_p(ctypes.addressof(self._fprog)),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(err, err)}")


_NATIVE = native_arch()
#: The native program, assembled when the zygote imports this module; None off x86_64/arm64.
NATIVE: Prepared | None = Prepared(build_program(_NATIVE)) if _NATIVE else None
