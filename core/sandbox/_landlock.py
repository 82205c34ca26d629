"""A small ctypes binding for Landlock (Linux ≥ 5.13): restrict this process to an allowlist of paths.

Used by the sandbox worker before it runs candidate code, and by `probe_isolation` to read the ABI version.
Handles every filesystem right the running kernel knows, TCP bind/connect (ABI ≥ 4, no rules: all denied) and
the abstract-unix-socket and signal scopes (ABI ≥ 6). Apply it while the process has a single thread: threads
that already exist stay unrestricted.
"""

from __future__ import annotations

import ctypes
import os
import sys

# The Landlock syscalls have the same numbers on every architecture.
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_EXEC = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
        _libc.prctl.restype = ctypes.c_int
    return _libc


def _syscall(*args: object) -> int:
    return int(_lib().syscall(*args))


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        r = _syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.c_void_p(None), ctypes.c_size_t(0),
                     ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return r if r > 0 else 0


def fs_rights(abi: int) -> int:
    """Every filesystem right the given ABI knows."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"landlock {what}: {os.strerror(e)}")


def restrict(read_paths: list[str], write_paths: list[str], abi: int | None = None) -> int:
    """Allow reading/executing beneath `read_paths`, everything beneath `write_paths`, nothing else.

    Also denies TCP bind and connect (ABI ≥ 4) and scopes abstract unix sockets and signals (ABI ≥ 6).
    Sets no_new_privs. Returns the ABI applied; raises OSError when Landlock is unavailable or fails.
    Missing paths are skipped.
    """
    abi = abi_version() if abi is None else abi
    if abi <= 0:
        raise OSError(38, "landlock is not available on this kernel")
    handled = fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    ruleset = _syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                       ctypes.c_uint32(0))
    if ruleset < 0:
        raise _err("create_ruleset")
    try:
        rules = [(p, READ_EXEC) for p in read_paths] + [(p, handled) for p in write_paths]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not os.path.isdir(path):
                    rights &= _FILE_RIGHTS
                rule = _PathBeneathAttr(allowed_access=rights & handled, parent_fd=fd)
                r = _syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                             ctypes.byref(rule), ctypes.c_uint32(0))
                if r < 0:
                    raise _err(f"add_rule({path})")
            finally:
                os.close(fd)
        if _lib().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _err("prctl(NO_NEW_PRIVS)")
        if _syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise _err("restrict_self")
    finally:
        os.close(ruleset)
    return abi
