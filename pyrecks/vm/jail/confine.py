"""OS confinement of a cell: after :func:`confine` a forked child can only compute and talk.

The layers (DESIGN.md §8), applied in this order because each needs what the next takes away:
fd/environment hygiene; ``namespaces`` (drop to uid 65534, new user/net/IPC/mount namespaces,
chroot into an empty directory, drop every capability); ``rlimits``; ``no_new_privs``;
``landlock`` (no filesystem, no TCP, no abstract sockets or signals outside the cell);
``seccomp`` (syscall allowlist) last, because every step before it makes syscalls it forbids.

Seccomp binding: the filter is a hand-assembled classic-BPF program installed with
``prctl(PR_SET_SECCOMP)`` through ctypes (:mod:`pyrecks.vm.jail.seccomp`), not libseccomp via
the PyPI ``pyseccomp`` binding.  The allowlist is ~30 syscalls plus one argument check
(no PROT_EXEC), about 80 instructions that can be read and tested line by line; it is
assembled once when the zygote imports the module, so a cell installs it with one prctl
(libseccomp would compile it again in every cell); it needs no dependency or shared library
at run time; and the foreign-ABI and x32 checks are explicit.  The price is per-architecture
syscall tables (x86_64, aarch64), which a test checks against libseccomp's own.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from pyrecks.errors import PyrecksError
from pyrecks.vm.jail import landlock
from pyrecks.vm.jail import seccomp as _seccomp

LAYERS: tuple[str, ...] = ("namespaces", "no_new_privs", "landlock", "seccomp", "rlimits")

#: The uid and gid of every cell (``nobody``/``nogroup``): owns nothing, is in no group.
CELL_UID = 65534
CELL_GID = 65534
#: RLIMIT_NOFILE of a cell.  The limit caps new fd *numbers*, not open fds: the channel stays
#: usable whatever its number, and poll() needs nfds <= the limit, so 1 lets select.poll watch
#: the channel while no new fd can get a number above 0.
NOFILE_LIMIT = 1

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_GET_SECCOMP = 21
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_MM = 35
_PR_SET_MM_MAP = 14
_PR_CAPBSET_READ = 23
_CAP_SYS_RESOURCE = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock, and
# SECBIT_KEEP_CAPS_LOCKED: uid 0 would mean nothing any more, capabilities cannot come back.
_SECUREBITS_LOCKED = 0b1110_1111
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Every libc function is looked up here, at import in the zygote, not in each cell.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.sbrk.restype = ctypes.c_void_p
_libc.capget.restype = ctypes.c_int
_libc.capset.restype = ctypes.c_int


class JailUnavailable(PyrecksError):
    """A jail layer cannot be applied (or is unavailable on this host).

    ``layer`` names it (one of :data:`LAYERS`); the message says what is missing and how to
    fix it.  Jail mode refuses to start rather than run a cell without one of its layers.
    """

    def __init__(self, layer: str, message: str) -> None:
        super().__init__(f"jail layer {layer!r} is unavailable: {message}")
        self.layer = layer
        self.message = message


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns its result, -1 with ctypes' errno set on failure."""
    return int(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        )
    )


def _read_small(path: str) -> bytes:
    """Read a small /proc file with raw fds (no Python file object left holding an fd)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


class _MmMap(ctypes.Structure):
    """``struct prctl_mm_map`` (<linux/prctl.h>)."""

    _fields_ = [
        *((name, ctypes.c_uint64) for name in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
            "start_stack", "arg_start", "arg_end", "env_start", "env_end",
        )),
        ("auxv", ctypes.c_void_p),
        ("auxv_size", ctypes.c_uint32),
        ("exe_fd", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class _SelfInfo:
    """What confine must learn from /proc before the chroot takes /proc away."""

    threads: int
    vm_bytes: int
    mm: _MmMap  # the current memory map bounds, env_start/env_end among them


def _read_self() -> _SelfInfo:
    # /proc/self/stat: after the ")" closing the command name, fields start at number 3
    # (proc(5): num_threads 20, startcode 26, endcode 27, startstack 28, start_data 45 …
    # env_end 51).
    fields = _read_small("/proc/self/stat").rsplit(b")", 1)[1].split()

    def field(number: int) -> int:
        return int(fields[number - 3])

    statm = _read_small("/proc/self/statm").split()
    mm = _MmMap(
        start_code=field(26), end_code=field(27), start_data=field(45), end_data=field(46),
        start_brk=field(47), brk=_libc.sbrk(ctypes.c_long(0)) or field(47),
        start_stack=field(28), arg_start=field(48), arg_end=field(49),
        env_start=field(50), env_end=field(51), auxv=None, auxv_size=0, exe_fd=0xFFFFFFFF,
    )
    return _SelfInfo(
        threads=field(20), vm_bytes=int(statm[0]) * os.sysconf("SC_PAGE_SIZE"), mm=mm
    )


def _validate_layers(layers: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(layers)
    unknown = wanted - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown jail layers {sorted(unknown)}; known: {', '.join(LAYERS)}")
    return wanted


def _close_fds_except(keep: int) -> None:
    """Close every fd but ``keep``; CPython uses close_range(2), two syscalls in all."""
    os.closerange(0, keep)
    os.closerange(keep + 1, 2**31 - 1)


def _scrub_environment(info: _SelfInfo) -> None:
    """Empty the environment the cell can see and the one /proc/<pid>/environ shows.

    ``os.environ.clear()`` unsets every variable in the C library too, but /proc/<pid>/environ
    shows the memory area the kernel filled at exec (the zygote's exec), and the strings stay
    readable in the cell's own memory.  So the area is zeroed, then declared empty with
    PR_SET_MM_MAP (which needs no capability, unlike PR_SET_MM_ENV_END, but a kernel with
    CONFIG_CHECKPOINT_RESTORE: without it /proc shows only NUL bytes).  The real cure is to
    exec the zygote with an empty environment; this is the second line.
    """
    os.environ.clear()
    mm = info.mm
    if mm.env_end > mm.env_start:
        ctypes.memset(mm.env_start, 0, mm.env_end - mm.env_start)
        mm.env_end = mm.env_start
        _prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.addressof(mm), ctypes.sizeof(mm))


def _check_empty_root(path: str) -> None:
    """Refuse an empty root the cell could write to or that is not empty.

    A cell inside a user namespace gets no DAC override over files owned by unmapped users,
    so it needs ``o+x`` on the directory itself (nothing on its parents: the chroot is done
    on "." after a chdir made as root).
    """
    try:
        st = os.stat(path)
        entries = os.listdir(path)
    except OSError as exc:
        raise JailUnavailable(
            "namespaces", f"the cells' empty root {path!r} cannot be used: {exc}"
        ) from None
    fix = f"create it with: install -d -o root -g root -m 0111 {path}"
    if not stat.S_ISDIR(st.st_mode):
        raise JailUnavailable(
            "namespaces", f"the cells' empty root {path!r} is not a directory; {fix}"
        )
    if entries:
        raise JailUnavailable(
            "namespaces",
            f"the cells' empty root {path!r} is not empty ({len(entries)} entries); {fix}",
        )
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise JailUnavailable(
            "namespaces",
            f"the cells' empty root {path!r} must be owned by root (or the VM's user) and "
            "writable by nobody "
            f"else (owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); {fix}",
        )
    if not st.st_mode & 0o001:
        raise JailUnavailable(
            "namespaces",
            f"the cells' empty root {path!r} must be searchable by others (o+x) so that "
            f"uid {CELL_UID} can chroot into it (mode {stat.filemode(st.st_mode)}); {fix}",
        )


def _unshare_failure(err: int) -> str:
    hints = {
        errno.EPERM: "user namespaces are refused to unprivileged users here: check sysctl "
        "kernel.unprivileged_userns_clone=1 (Debian/Ubuntu kernels), "
        "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu >= 23.10), and that the VM "
        "is not itself in a seccomp profile that forbids unshare (docker: --security-opt "
        "seccomp=unconfined or a profile allowing unshare/CLONE_NEWUSER)",
        errno.ENOSPC: "the namespace limit is reached: raise sysctl user.max_user_namespaces, "
        "user.max_net_namespaces, user.max_ipc_namespaces and user.max_mnt_namespaces",
        errno.EINVAL: "the kernel lacks user, network, IPC or mount namespaces "
        "(CONFIG_USER_NS/CONFIG_NET_NS/CONFIG_IPC_NS), or the process is multi-threaded",
        errno.ENOMEM: "the kernel is out of memory or the namespace nesting limit (32) is hit",
    }
    return hints.get(err, os.strerror(err))


def _enter_namespaces(empty_root: str | None) -> None:
    """Become uid/gid 65534 in fresh user/net/IPC/mount namespaces, chrooted, with no capability.

    Credentials drop *before* the unshare so that the new user namespace is owned by 65534
    and the capabilities it grants count only inside it (they let us chroot, cap nested user
    namespaces and drop the rest).  The new network namespace has only ``lo``, down.
    """
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setresgid(CELL_GID, CELL_GID, CELL_GID)
            os.setresuid(CELL_UID, CELL_UID, CELL_UID)
        except PermissionError as exc:
            raise JailUnavailable(
                "namespaces", f"cannot switch to uid/gid {CELL_UID} ({exc})"
            ) from None
    # A VM run by an ordinary user: its cells keep that uid (they cannot switch to another
    # without privileges).  The new user namespace still takes every capability on the host,
    # and Landlock and seccomp deny the user's files as they deny everyone's.
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise JailUnavailable(
            "namespaces", f"unshare(user|net|ipc|mount) failed: {_unshare_failure(err)}"
        )
    # No nested user namespace from inside a cell (the main kernel attack surface reachable
    # without privileges).  The chroot below forbids them as well; this also covers cells
    # without an empty root.  The per-namespace sysctl is writable by the namespace's owner.
    try:
        fd = os.open("/proc/sys/user/max_user_namespaces", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError as exc:
        raise JailUnavailable(
            "namespaces",
            f"cannot forbid nested user namespaces in the cell ({exc}); /proc must be mounted",
        ) from None
    if empty_root is not None:
        try:
            os.chroot(".")  # the cwd is empty_root, entered as root
            os.chdir("/")
        except OSError as exc:
            raise JailUnavailable(
                "namespaces", f"cannot chroot into the empty root {empty_root!r}: {exc}"
            ) from None
    _drop_capabilities()


def _drop_capabilities() -> None:
    """Lock the securebits, empty the bounding and ambient sets, then zero all capability sets."""
    if _prctl(_PR_SET_SECUREBITS, _SECUREBITS_LOCKED) != 0:
        raise JailUnavailable("namespaces", str(_errno_error("prctl(PR_SET_SECUREBITS)")))
    for cap in range(64):
        if _prctl(_PR_CAPBSET_DROP, cap) != 0:
            if ctypes.get_errno() == errno.EINVAL:  # past CAP_LAST_CAP
                break
            raise JailUnavailable("namespaces", str(_errno_error(f"PR_CAPBSET_DROP({cap})")))
    if _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL) != 0:
        raise JailUnavailable("namespaces", str(_errno_error("PR_CAP_AMBIENT_CLEAR_ALL")))
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise JailUnavailable("namespaces", str(_errno_error("capset(0)")))


def _drop_capability(cap: int) -> None:
    """Remove one capability from the bounding, effective, permitted and inheritable sets."""
    if _prctl(_PR_CAPBSET_READ, cap) == 1 and _prctl(_PR_CAPBSET_DROP, cap) != 0:
        raise JailUnavailable("rlimits", str(_errno_error(f"PR_CAPBSET_DROP({cap})")))
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise JailUnavailable("rlimits", str(_errno_error("capget")))
    mask = ~(1 << (cap % 32)) & 0xFFFFFFFF
    word = data[cap // 32]
    word.effective &= mask
    word.permitted &= mask
    word.inheritable &= mask
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise JailUnavailable("rlimits", str(_errno_error(f"capset without capability {cap}")))


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the zygote dies.  Set after the uid change, which clears it.

    If the zygote died before this call the signal will never come: act as if it had.
    """
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise _errno_error("prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _apply_rlimits(vm_bytes: int, memory_limit_bytes: int | None) -> None:
    """Memory, processes, core files, file writes and fds; soft = hard so they cannot grow.

    Raising a hard limit needs CAP_SYS_RESOURCE, so this layer drops it (a no-op after the
    namespaces layer, which drops everything): even a cell still running as root cannot
    undo its limits.  RLIMIT_NPROC does not bind uid 0 (the kernel exempts the root user
    whatever its capabilities): fork is stopped by seccomp, and by this limit only together
    with the uid drop of the namespaces layer.
    """
    limits = [
        (resource.RLIMIT_NPROC, 0),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_MEMLOCK, 0),
        (resource.RLIMIT_MSGQUEUE, 0),
        (resource.RLIMIT_NOFILE, NOFILE_LIMIT),
    ]
    if memory_limit_bytes is not None:
        limits.append((resource.RLIMIT_AS, vm_bytes + memory_limit_bytes))
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as exc:
            raise JailUnavailable("rlimits", f"setrlimit({which}, {value}) failed: {exc}") from None
    _drop_capability(_CAP_SYS_RESOURCE)
    # No core dump whatever the core_pattern (a pipe handler ignores RLIMIT_CORE), and no
    # ptrace or /proc/<pid>/mem access by other processes running as the same uid.
    if _prctl(_PR_SET_DUMPABLE, 0) != 0:
        raise JailUnavailable("rlimits", str(_errno_error("prctl(PR_SET_DUMPABLE, 0)")))


def _set_no_new_privs() -> None:
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise JailUnavailable(
            "no_new_privs", f"{_errno_error('prctl(PR_SET_NO_NEW_PRIVS)')} (needs Linux >= 3.5)"
        )


def _apply_landlock() -> None:
    reason = landlock.unavailable_reason()
    if reason is not None:
        raise JailUnavailable("landlock", reason)
    try:
        landlock.restrict_self(landlock.abi_version())
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EPERM:
            hint = (
                " (Landlock needs no_new_privs or CAP_SYS_ADMIN: include the 'no_new_privs' layer)"
            )
        raise JailUnavailable("landlock", f"{exc}{hint}") from None


def _apply_seccomp() -> None:
    if _seccomp.NATIVE is None:
        raise JailUnavailable("seccomp", _seccomp_arch_reason())
    try:
        _seccomp.NATIVE.install()
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EACCES:
            hint = (
                " (seccomp needs no_new_privs or CAP_SYS_ADMIN: include the 'no_new_privs' layer)"
            )
        elif exc.errno == errno.EINVAL:
            hint = " (kernel without CONFIG_SECCOMP_FILTER)"
        raise JailUnavailable("seccomp", f"{exc}{hint}") from None


def _seccomp_arch_reason() -> str:
    known = ", ".join(_seccomp.SYSCALL_NUMBERS)
    return (
        f"no syscall allowlist for this architecture ({os.uname().machine}); "
        f"the cell filter is written for {known}"
    )


def confine(
    channel_fd: int,
    *,
    memory_limit_bytes: int | None,
    layers: Iterable[str] = LAYERS,
    empty_root: str | None = None,
) -> None:
    """Confine the calling process, a freshly forked single-threaded child running as root.

    Afterwards it can only compute and use ``channel_fd``.  Always: every other fd is closed
    (0, 1 and 2 included — replace ``sys.std*`` before printing), the environment is emptied,
    the cwd is ``empty_root`` (or "/").  Then each requested layer, in the order that works
    (see the module docstring).  ``empty_root`` must be an empty directory owned by root,
    mode 0111 or 0555; with the namespaces layer the cell is chrooted into it.

    Raises JailUnavailable (the child should then exit) if a requested layer cannot be
    applied, ValueError for unknown layer names, RuntimeError if the process has threads
    (seccomp, Landlock and unshare act on the calling thread only).  A failure can leave the
    process half-confined and without its other fds: exit, never continue.

    Python objects that wrapped the closed fds (sockets, files) must not be used or garbage
    collected afterwards, or they may close an fd that a later call reuses; keep raw fds.
    """
    wanted = _validate_layers(layers)
    if memory_limit_bytes is not None and memory_limit_bytes <= 0:
        raise ValueError(f"memory_limit_bytes must be positive or None, not {memory_limit_bytes}")
    os.fstat(channel_fd)  # EBADF now rather than a cell that cannot talk
    if empty_root is not None and "namespaces" in wanted:
        _check_empty_root(empty_root)
    info = _read_self()
    if info.threads != 1:
        raise RuntimeError(
            f"confine() needs a single-threaded process (a fork of the zygote); "
            f"this one has {info.threads} threads"
        )
    parent = os.getppid()
    _close_fds_except(channel_fd)
    _scrub_environment(info)
    os.chdir(empty_root if empty_root is not None else "/")
    if "namespaces" in wanted:
        _enter_namespaces(empty_root)
    _die_with_parent(parent)
    if "rlimits" in wanted:
        _apply_rlimits(info.vm_bytes, memory_limit_bytes)
    if "no_new_privs" in wanted:
        _set_no_new_privs()
    if "landlock" in wanted:
        _apply_landlock()
    if "seccomp" in wanted:
        _apply_seccomp()


def _read_int(path: str) -> int | None:
    try:
        return int(_read_small(path))
    except (OSError, ValueError):
        return None


def _namespaces_reason() -> str | None:
    for kind, config in (("user", "USER"), ("net", "NET"), ("ipc", "IPC"), ("mnt", "")):
        if not os.path.exists(f"/proc/self/ns/{kind}"):
            option = f"CONFIG_{config}_NS" if config else "mount namespaces"
            return f"the kernel has no {kind} namespaces ({option})"
    for name in ("user", "net", "ipc", "mnt"):
        limit = _read_int(f"/proc/sys/user/max_{name}_namespaces")
        if limit is not None and limit <= 0:
            return (
                f"sysctl user.max_{name}_namespaces is {limit}: set it to a positive number "
                f"(e.g. sysctl -w user.max_{name}_namespaces=10000)"
            )
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return (
            "unprivileged user namespaces are disabled: sysctl -w "
            "kernel.unprivileged_userns_clone=1 (cells create theirs as uid 65534)"
        )
    if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
        return (
            "AppArmor restricts unprivileged user namespaces: sysctl -w "
            "kernel.apparmor_restrict_unprivileged_userns=0, or give the VM an AppArmor "
            "profile with the 'userns' permission"
        )
    return None


def _no_new_privs_reason() -> str | None:
    if _prctl(_PR_GET_NO_NEW_PRIVS) < 0:
        return "prctl(PR_GET_NO_NEW_PRIVS) is not supported: Linux >= 3.5 is needed"
    return None


def _seccomp_reason() -> str | None:
    if _seccomp.NATIVE is None:
        return _seccomp_arch_reason()
    if _prctl(_PR_GET_SECCOMP) < 0:
        return "the kernel has no seccomp (CONFIG_SECCOMP)"
    try:
        actions = _read_small("/proc/sys/kernel/seccomp/actions_avail").split()
    except OSError:
        return "the kernel has no seccomp filters (CONFIG_SECCOMP_FILTER)"
    missing = {b"errno", b"kill_process", b"allow"} - set(actions)
    if missing:
        names = ", ".join(sorted(m.decode() for m in missing))
        return f"the kernel's seccomp lacks the actions {names} (Linux >= 4.14 is needed)"
    return None


def available_layers() -> dict[str, str | None]:
    """Which layers this host can apply: layer -> None if usable, else what is missing.

    Runs in the VM process at start-up and does not confine it: it reads sysctls and asks
    the kernel (Landlock ABI, prctl queries), it does not fork.  A few conditions only show
    when a cell is made (a container's own seccomp profile forbidding unshare, for one);
    :func:`confine` then raises JailUnavailable naming the layer.
    """
    if sys.platform != "linux":
        reason = f"the jail needs Linux (this is {sys.platform}); use --isolation process or thread"
        return {layer: reason for layer in LAYERS}
    return {
        "namespaces": _namespaces_reason(),
        "no_new_privs": _no_new_privs_reason(),
        "landlock": landlock.unavailable_reason(),
        "seccomp": _seccomp_reason(),
        "rlimits": None,
    }
