"""Linux namespaces made by the sandbox itself (ctypes `unshare`), for machines without bubblewrap.

`pip install` alone then reaches the strongest level on a stock Linux machine: the worker tree gets its own mount,
network, IPC, UTS and pid namespaces (and a user namespace first when the server is not root), and each worker
child its own IPC namespace on top. Only the calls are here; the zygote decides when to make them.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.unshare.argtypes = [ctypes.c_int]
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        _libc.prctl.restype = ctypes.c_int
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_lib().unshare(flags), f"unshare({flags:#x})")


def die_with_parent(signal_number: int = 9) -> None:
    """Ask the kernel to send this process `signal_number` when its parent dies (PR_SET_PDEATHSIG)."""
    _check(_lib().prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def become_root_in_user_namespace() -> None:
    """unshare(CLONE_NEWUSER) and map our uid/gid to 0 inside: the capabilities to make the other namespaces."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def isolate_tree() -> dict[str, bool]:
    """Own mount (private propagation), network, IPC and UTS namespaces for this process, and a pid namespace for
    its next child (the caller must fork: the child is pid 1 there, and every process of the tree dies with it).
    Returns which namespaces were made; raises OSError when none could be."""
    made = {"user": False, "mnt": False, "net": False, "ipc": False, "uts": False, "pid": False}
    if os.geteuid() != 0:
        become_root_in_user_namespace()
        made["user"] = True
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID)
    made.update(mnt=True, net=True, ipc=True, uts=True, pid=True)
    # Mount events must not propagate back to the host's namespace.
    _check(_lib().mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount(/, MS_PRIVATE)")
    return made
