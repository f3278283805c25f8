"""Landlock for cells: a ruleset that handles every right the kernel's ABI knows and grants none.

With no rules, every handled access is denied: no file or directory can be opened, executed,
created, removed, renamed or truncated (ABI 1-3), no device ioctl (ABI 5), no TCP bind or
connect (ABI 4), no connection to an abstract unix socket and no signal to a process outside
the cell's own domain (scopes, ABI 6).  Landlock also always forbids a sandboxed process to
ptrace anything outside its domain and to mount anything.

Rights newer than ABI 7 are unknown to this module and therefore not handled; review this
table when a kernel adds one.  What Landlock does not cover at ABI 7, and other layers must:
``stat`` and path walks, connecting to a unix socket by its path, creating sockets (including
UDP), ``chroot``, ``unshare``, ``setuid``.
"""

from __future__ import annotations

import ctypes
import errno
import os

# The three syscalls share one number on every architecture (after the 2019 unification).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0

#: Filesystem rights added by each ABI version (``LANDLOCK_ACCESS_FS_*``).
FS_RIGHTS_ADDED: dict[int, int] = {
    1: (1 << 13) - 1,  # EXECUTE .. MAKE_SYM (bits 0-12)
    2: 1 << 13,  # REFER
    3: 1 << 14,  # TRUNCATE
    5: 1 << 15,  # IOCTL_DEV
}
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
#: The newest ABI whose rights this module knows.
KNOWN_ABI = 7

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def abi_version() -> int:
    """The kernel's Landlock ABI version.

    Raises OSError: ENOSYS when the kernel is built without Landlock, EOPNOTSUPP when it is
    built in but not enabled at boot (missing from the ``lsm=`` list).
    """
    ret = _syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(CREATE_RULESET_VERSION),
    )
    if ret < 0:
        _raise_errno("landlock_create_ruleset(VERSION)")
    return int(ret)


def handled_rights(abi: int) -> tuple[int, int, int]:
    """``(fs, net, scoped)`` bit masks for ``abi``: all the rights it knows, masked to it."""
    fs = 0
    for version, bits in FS_RIGHTS_ADDED.items():
        if abi >= version:
            fs |= bits
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scoped


def restrict_self(abi: int) -> None:
    """Put the calling thread under a rule-less ruleset handling every right of ``abi``.

    Needs no_new_privs or CAP_SYS_ADMIN (EPERM otherwise).  The kernel reads the attribute
    with ``copy_struct_from_user``, so passing the full 24-byte struct to an older kernel is
    fine as long as the fields it does not know are zero, which the masking guarantees.
    """
    fs, net, scoped = handled_rights(abi)
    attr = _RulesetAttr(fs, net, scoped)
    fd = _syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        ctypes.c_uint32(0),
    )
    if fd < 0:
        _raise_errno("landlock_create_ruleset")
    try:
        ret = _syscall(
            ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)
        )
        if ret < 0:
            _raise_errno("landlock_restrict_self")
    finally:
        os.close(fd)


def unavailable_reason() -> str | None:
    """None when Landlock can be used here, else what is missing and how to get it."""
    try:
        abi = abi_version()
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return (
                "the kernel has no Landlock (Linux >= 5.13 built with "
                "CONFIG_SECURITY_LANDLOCK=y is needed; >= 6.12 for the full cell policy)"
            )
        if exc.errno == errno.EOPNOTSUPP:
            return (
                "Landlock is built into the kernel but not enabled: add 'landlock' to the "
                "lsm= kernel boot parameter (see /sys/kernel/security/lsm for the current list)"
            )
        return f"Landlock cannot be queried: {exc}"
    if abi < 1:
        return f"unexpected Landlock ABI version {abi}"
    return None
