"""A small ctypes binding for libseccomp: a deny-list filter for the sandbox worker.

Blocked calls fail with EPERM (not a kill, so the controller gets a readable PermissionError): process creation
(fork, vfork, clone without CLONE_THREAD, execve), sockets, ptrace and cross-process memory, namespaces and mounts,
kernel keyrings, BPF, perf, io_uring, resource-limit changes, signals to other processes, sessions and uid changes,
and every channel between workers the machine would otherwise offer: SysV and POSIX IPC (shared memory, message
queues, semaphores) and the page-cache probes and evictions (`fadvise64`, `readahead`, `mincore`, `cachestat`,
`preadv2`/`pwritev2`, and `madvise` with COLD/PAGEOUT/WILLNEED/REMOVE/POPULATE). Timing channels remain.
`clone3` answers ENOSYS (BPF cannot read its flags; glibc then falls back to `clone`). Threads keep working.
The filter is synchronised to every thread of the process (TSYNC) and sets no_new_privs.
"""

from __future__ import annotations

import ctypes
import errno

_ACT_ALLOW = 0x7FFF0000
_FLTATR_CTL_TSYNC = 4
_CMP_MASKED_EQ = 7
_CLONE_THREAD = 0x00010000
_CMP_NE = 1
_CMP_EQ = 4
DENIED_MADVISE = {"MADV_WILLNEED": 3, "MADV_REMOVE": 9, "MADV_COLD": 20, "MADV_PAGEOUT": 21,
                  "MADV_POPULATE_READ": 22, "MADV_POPULATE_WRITE": 23}
"""madvise advice values that evict or load page-cache pages (a channel); malloc's DONTNEED/FREE stay allowed."""

DENIED = (
    "fork", "vfork", "execve", "execveat",
    "socket", "socketpair",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "keyctl", "add_key", "request_key", "userfaultfd", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "setrlimit", "prlimit64",
    "kill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "setsid", "setpgid",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid",
    "capset",
    "mknod", "mknodat", "name_to_handle_at", "open_by_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "fanotify_init", "lookup_dcookie", "iopl", "ioperm", "syslog", "uselib", "personality",
    # channels between workers: SysV/POSIX IPC, the page cache, other processes' descriptors and memory
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "fadvise64", "readahead", "mincore", "cachestat", "preadv2", "pwritev2", "remap_file_pages",
    "process_madvise", "kcmp",
)
"""Calls answered with EPERM. `tgkill` stays allowed: raise() and abort() use it on the process itself."""

LIBRARY_CANDIDATES = (
    "libseccomp.so.2",
    "/usr/lib/x86_64-linux-gnu/libseccomp.so.2",
    "/lib/x86_64-linux-gnu/libseccomp.so.2",
    "/usr/lib/aarch64-linux-gnu/libseccomp.so.2",
    "/usr/lib64/libseccomp.so.2",
    "/usr/lib/libseccomp.so.2",
)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def load_library(extra: str | None = None) -> ctypes.CDLL:
    """libseccomp, looked up without `ctypes.util.find_library` (which needs ldconfig and /etc)."""
    names = ((extra,) if extra else ()) + LIBRARY_CANDIDATES
    last: OSError | None = None
    for name in names:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            last = e
            continue
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_export_bpf.restype = ctypes.c_int
        return lib
    raise OSError(f"libseccomp.so.2 could not be loaded ({last})")


def _build(lib: ctypes.CDLL, own_pid: int | None) -> tuple[int, int]:
    """A filter context holding every rule (the caller releases it) and the number of rules."""
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        if lib.seccomp_attr_set(ctx, _FLTATR_CTL_TSYNC, 1) != 0:
            raise OSError("seccomp: thread synchronisation (TSYNC) is not supported")
        deny = _errno_action(errno.EPERM)
        n = 0

        def add(name: str, action: int, *conds: _ArgCmp) -> None:
            nonlocal n
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == -1:  # __NR_SCMP_ERROR: no such call on this architecture, nothing to block
                return
            arr = (_ArgCmp * len(conds))(*conds) if conds else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), arr)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for {name} failed: rc {rc}")
            n += 1

        for name in DENIED:
            add(name, deny)
        # clone without CLONE_THREAD creates a process; clone for a thread is allowed.
        add("clone", deny, _ArgCmp(arg=0, op=_CMP_MASKED_EQ, datum_a=_CLONE_THREAD, datum_b=0))
        add("clone3", _errno_action(errno.ENOSYS))
        for advice in DENIED_MADVISE.values():
            add("madvise", deny, _ArgCmp(arg=2, op=_CMP_EQ, datum_a=advice, datum_b=0))
        if own_pid is not None:
            add("tgkill", deny, _ArgCmp(arg=0, op=_CMP_NE, datum_a=own_pid, datum_b=0))
        return ctx, n
    except BaseException:
        lib.seccomp_release(ctx)
        raise


def install(lib: ctypes.CDLL, own_pid: int | None = None) -> int:
    """Load the deny-list filter into this process (all threads). Returns how many rules were added.

    With `own_pid`, `tgkill` is allowed only towards this process (raise() and abort() need it; a signal to a
    sibling worker would be a channel)."""
    ctx, n = _build(lib, own_pid)
    try:
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, f"seccomp_load failed: rc {rc}")
        return n
    finally:
        lib.seccomp_release(ctx)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def compile_filter(lib: ctypes.CDLL) -> tuple[bytes, int]:
    """The deny-list filter (without the own-pid rule) as a BPF program, and its number of rules: built once in
    the zygote, loaded by each worker with `load_compiled` in microseconds instead of milliseconds."""
    import os

    ctx, n = _build(lib, None)
    try:
        r, w = os.pipe()
        try:
            if lib.seccomp_export_bpf(ctx, w) != 0:
                raise OSError("seccomp_export_bpf failed")
            os.close(w)
            w = -1
            chunks = []
            while chunk := os.read(r, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        return b"".join(chunks), n
    finally:
        lib.seccomp_release(ctx)


_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_PR_SET_NO_NEW_PRIVS = 38


def load_compiled(program: bytes) -> None:
    """Load a program from `compile_filter` into this process, synchronised to all its threads."""
    import os

    nr = _SYS_SECCOMP.get(os.uname().machine)
    if nr is None:
        raise OSError(f"no seccomp syscall number known for {os.uname().machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS) failed")
    if libc.syscall(ctypes.c_long(nr), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                    ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SET_MODE_FILTER) failed")
