"""One sandbox worker: forked by the zygote, locked down, then it runs one cell of candidate episodes and exits.

Order after the fork (the zygote has already imported everything, so nothing needs the filesystem again):
close every inherited descriptor but the two pipes and stderr → own IPC namespace → rlimits → drop to uid 65534
(or drop capabilities inside a user namespace) → die with the zygote (armed after the uid change, which clears
it) → Landlock with no filesystem access at all, no TCP, signals and abstract sockets scoped to this process →
seccomp → self-report → (parent) source → controller loaded → one cell → exit. Nothing the candidate does afterwards can change the report already sent.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import mmap
import os
import resource
import sys
import traceback
from array import array
from typing import Any

from core.sandbox import _landlock, _namespaces, _seccomp
from core.sandbox._episodes import CellFailure, MirrorQuestion, run_cell
from core.sandbox._exec import CandidateFailure, CappedText, load_candidate, solve_episode
from core.sandbox._protocol import FrameReader, encode, encode_tick, write_all

NOBODY = 65534
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Empty effective, permitted and inheritable sets (root inside our own user namespace keeps no power)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _status(fd: int | None) -> dict[str, str]:
    if fd is None:
        return {}
    try:
        raw = os.pread(fd, 8192, 0).decode()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in raw.splitlines())}


def _namespaces_now() -> dict[str, str]:
    out = {}
    for ns in ("mnt", "net", "pid", "ipc", "uts", "user"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            out[ns] = ""
    return out


def lockdown(init: dict[str, Any], keep: tuple[int, ...]) -> dict[str, Any]:
    """Apply every layer that is available; return the self-report (failures are recorded, not raised)."""
    errors: dict[str, str] = {}
    low = 3  # close everything inherited but our pipes and stderr (above all the zygote's control socket)
    for fd in sorted(k for k in keep if k >= 3) + [1 << 16]:
        os.closerange(low, fd)
        low = fd + 1
    zygote = os.getppid()
    if init.get("child_ipc_ns"):
        try:
            _namespaces.unshare(_namespaces.CLONE_NEWIPC)
        except OSError as e:
            errors["ipc_ns"] = str(e)
    report: dict[str, Any] = {"ns": _namespaces_now(), "pid": os.getpid()}
    try:
        status_fd: int | None = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        status_fd = None
        errors["status"] = str(e)

    limits = init["limits"]
    rl: dict[str, int] = {}
    for name, res, soft, hard in (
        ("as_mb", resource.RLIMIT_AS, limits["as_mb"] << 20, limits["as_mb"] << 20),
        ("cpu_s", resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        ("fsize_mb", resource.RLIMIT_FSIZE, 0, 0),
        ("nofile", resource.RLIMIT_NOFILE, limits["nofile"], limits["nofile"]),
        ("core", resource.RLIMIT_CORE, 0, 0),
    ):
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError) as e:
            errors[f"rlimit_{name}"] = str(e)
        cur = resource.getrlimit(res)[0]
        rl[name] = cur >> 20 if name.endswith("_mb") and cur > 0 else cur
    report["rlimits"] = rl

    if os.geteuid() == 0:
        try:
            if init.get("in_user_ns"):
                _drop_capabilities()  # only uid 0 is mapped in our user namespace: keep the uid, lose the powers
            else:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError as e:
            errors["uid"] = str(e)

    try:  # after the uid drop, which clears the parent-death signal
        _namespaces.die_with_parent()
    except OSError as e:
        errors["pdeathsig"] = str(e)
    if os.getppid() != zygote:
        os._exit(1)  # the zygote died before the signal was armed

    abi = 0
    if init.get("landlock"):
        try:
            abi = _landlock.restrict([], [])  # no path at all: the worker needs no file once it runs
        except OSError as e:
            errors["landlock"] = str(e)
    report["landlock_abi"] = abi

    rules = 0
    if init.get("seccomp") and _SECCOMP is not None:
        try:
            if _PROGRAM is not None and abi >= 6:
                # Landlock's signal scope (ABI ≥ 6) already keeps signals inside this process, so the filter
                # needs no per-process rule and the one compiled in the zygote serves every worker.
                _seccomp.load_compiled(_PROGRAM[0])
                rules = _PROGRAM[1]
            else:
                rules = _seccomp.install(_SECCOMP, own_pid=os.getpid())
        except OSError as e:
            errors["seccomp"] = str(e)
    elif init.get("seccomp"):
        errors["seccomp"] = "libseccomp could not be loaded"

    status = _status(status_fd)
    if status_fd is not None:
        os.close(status_fd)
    report.update({
        "uid": os.getuid(), "euid": os.geteuid(), "seccomp_mode": status.get("Seccomp", "?"),
        "seccomp_rules": rules, "no_new_privs": status.get("NoNewPrivs", "?"), "threads": status.get("Threads", "?"),
        "cap_eff": status.get("CapEff", "?"), "errors": errors,
        "vm_mb": int(status["VmSize"].split()[0]) >> 10 if status.get("VmSize") else None,
    })
    return report


_SECCOMP: ctypes.CDLL | None = None
_PROGRAM: tuple[bytes, int] | None = None


def prepare(init: dict[str, Any]) -> None:
    """In the zygote, before any fork: load libseccomp once (children cannot open files) and compile the filter."""
    global _SECCOMP, _PROGRAM
    if init.get("seccomp"):
        try:
            _SECCOMP = _seccomp.load_library(init.get("libseccomp"))
            _PROGRAM = _seccomp.compile_filter(_SECCOMP)
        except OSError:
            _SECCOMP = _PROGRAM = None


class _Channel:
    def __init__(self, fd_in: int, fd_out: int):
        self.out = fd_out
        self.reader = FrameReader(fd_in)

    def send(self, obj: dict[str, Any]) -> None:
        sys.stdout.flush()
        write_all(self.out, encode(obj))

    def recv(self) -> dict[str, Any]:
        msg = self.reader.read()
        if not isinstance(msg, dict):
            os._exit(3)
        return msg

    def tick(self, calls: list[int], done: list[list[Any]]) -> tuple[Any, Any, Any]:
        """Send a tick, return the parent's (flat replies, errors, strings)."""
        sys.stdout.flush()
        write_all(self.out, encode_tick(array("q", calls), done))
        reply = self.reader.read()
        if type(reply) is not tuple:
            os._exit(3)  # the parent gave up on this cell
        return reply


def serve(chan: _Channel, memory_mb: int, compiled: tuple[str, Any] | None) -> None:
    msg = chan.recv()
    if msg.get("t") != "source":
        return
    code = compiled[1] if compiled is not None and compiled[0] == msg["source"] else None
    try:
        target = load_candidate(msg["source"], memory_mb, code)
    except CandidateFailure as f:
        chan.send({"t": "error", **f.as_dict()})
        return
    chan.send({"t": "loaded"})
    msg = chan.recv()
    if msg.get("t") != "cell":
        return
    options = msg["options"]
    where = {slot: f"env {msg['env']}, {msg['label'] or 'default options'}, seed {seed}, question {q}"
             for slot, _, _, seed, q in msg["episodes"]}

    def solve_one(question: MirrorQuestion, slot: int) -> tuple[str, Any]:
        try:
            return "done", solve_episode(target, options, question, where[slot], memory_mb)
        except CandidateFailure as f:
            return "fail", f.as_dict()

    try:
        run_cell(solve_one, [(slot, n, interval) for slot, n, interval, _, _ in msg["episodes"]], chan.tick)
    except CellFailure as f:
        chan.send({"t": "error", **f.failure})


def main(fd_in: int, fd_out: int, fd_crash: int, init: dict[str, Any]) -> None:
    """The forked child's whole life; never returns. A fatal signal's stack goes to `fd_crash`, a pipe of this
    worker's own, so that workers crashing at once do not interleave their reports."""
    faulthandler.enable(file=fd_crash)
    try:
        report = lockdown(init, (0, 1, 2, fd_in, fd_out, fd_crash))
    except BaseException:  # noqa: BLE001 - the parent sees this text and the exit status
        os.write(2, ("sandbox worker setup failed:\n" + traceback.format_exc()).encode())
        os._exit(2)
    gc.collect()
    # Address space freed on MemoryError so that the report can still be written. A mapping, not a bytearray:
    # a bytearray is zero-filled, which would copy 4,096 of the zygote's pages into every worker.
    reserve = mmap.mmap(-1, 16 << 20)
    def sink(text: str) -> None:
        os.write(2, text.encode("utf-8", "replace"))

    out = CappedText(init["max_output"], sink=sink)
    sys.stdout = sys.stderr = out
    chan = _Channel(fd_in, fd_out)
    memory_mb = init["limits"]["as_mb"]
    try:
        chan.send({"t": "ready", "report": report})
        serve(chan, memory_mb, init.get("compiled"))
    except MemoryError:
        reserve.close()
        gc.collect()
        try:
            chan.send({"t": "error", **CandidateFailure("memory", f"memory limit ({memory_mb} MB) exceeded").as_dict()})
        except BaseException:  # noqa: BLE001
            pass
    except (EOFError, BrokenPipeError, SystemExit):
        pass
    except BaseException as e:  # noqa: BLE001 - report what broke the worker itself
        try:
            chan.send({"t": "error", **CandidateFailure(
                "internal", f"sandbox worker failed: {type(e).__name__}: {e}",
                "".join(traceback.format_exception(e))[-3000:]).as_dict()})
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            out.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)
