"""The sandbox worker: lock the process down, report how, then run candidate code on request.

Started by `_bootstrap.py` (which sets up the import path) as `python -S -s -P -B _bootstrap.py`, under bwrap
when it is usable. Order: imports → rlimits → Landlock → uid drop → seccomp → self-report → (parent sends the
source only if the level is acceptable) → compile and run the candidate. Nothing the candidate does afterwards
can change the report, which was already sent.

Messages in (parent → worker): `source`, `env`, `unit`, `episode`, `reply` (to a `call`), `exit`.
Messages out: `ready` (report), `loaded`, `result` (+ arrays), `call`, `episode_done`, `error`.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

import core.primitives
from core.sandbox import _guard, _landlock, _seccomp
from core.sandbox._exec import (
    CandidateFailure,
    CappedText,
    load_candidate,
    raise_remote,
    run_audit_episode,
    run_unit,
)
from core.sandbox._protocol import FrameReader, decode_env, write_frame

NOBODY = 65534


def _status_fields(fd: int | None) -> dict[str, str]:
    if fd is None:
        return {}
    try:
        raw = os.pread(fd, 8192, 0).decode()
    except OSError:
        return {}
    fields = {}
    for line in raw.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _namespaces() -> dict[str, str]:
    out = {}
    for ns in ("mnt", "net", "pid", "user", "ipc", "uts"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            out[ns] = ""
    return out


def lockdown(init: dict[str, Any]) -> dict[str, Any]:
    """Apply every layer that is available; return the self-report (errors are recorded, not raised)."""
    errors: dict[str, str] = {}
    report: dict[str, Any] = {"ns": _namespaces(), "pid": os.getpid()}
    try:
        status_fd: int | None = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        status_fd = None
        errors["status"] = str(e)
    lib = None
    if init.get("seccomp", True):
        try:
            lib = _seccomp.load_library(init.get("libseccomp"))
        except OSError as e:
            errors["seccomp"] = str(e)
    threads_before = _status_fields(status_fd).get("Threads", "?")

    # rlimits (hard = soft; CPU gets one more second of hard limit so SIGXCPU comes first)
    limits = init["limits"]
    rl: dict[str, Any] = {}
    for name, res, soft, hard in (
        ("as_mb", resource.RLIMIT_AS, limits["as_mb"] << 20, limits["as_mb"] << 20),
        ("cpu_s", resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        ("fsize_mb", resource.RLIMIT_FSIZE, limits["fsize_mb"] << 20, limits["fsize_mb"] << 20),
        ("nofile", resource.RLIMIT_NOFILE, limits["nofile"], limits["nofile"]),
        ("core", resource.RLIMIT_CORE, 0, 0),
    ):
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError) as e:
            errors[f"rlimit_{name}"] = str(e)
        cur = resource.getrlimit(res)[0]
        rl[name] = (cur >> 20 if name.endswith("_mb") and cur >= 0 else cur)
    report["rlimits"] = rl

    # Landlock (as root it can still open every allowed path; applied while there is one thread)
    abi = 0
    if init.get("landlock", True):
        try:
            abi = _landlock.restrict(init["read_paths"], [init["scratch"]])
        except OSError as e:
            errors["landlock"] = str(e)
    report["landlock_abi"] = abi

    # drop to nobody when root
    if os.geteuid() == 0 and init.get("drop_uid", True):
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError as e:
            errors["uid"] = str(e)

    try:
        os.chdir(init["scratch"])
    except OSError as e:
        errors["scratch"] = str(e)

    # seccomp, synchronised to all threads
    seccomp_rules = 0
    if lib is not None:
        try:
            seccomp_rules = _seccomp.install(lib)
        except OSError as e:
            errors["seccomp"] = str(e)

    status = _status_fields(status_fd)
    report.update({
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "seccomp_mode": status.get("Seccomp", "?"), "seccomp_rules": seccomp_rules,
        "no_new_privs": status.get("NoNewPrivs", "?"), "threads": status.get("Threads", "?"),
        "threads_at_landlock": threads_before, "cap_eff": status.get("CapEff", "?"), "errors": errors,
        "vm_mb": int(status.get("VmSize", "0 kB").split()[0]) >> 10 if status.get("VmSize") else None,
    })
    if status_fd is not None:
        os.close(status_fd)
    return report


class Worker:
    def __init__(self, chan_in: int, chan_out: int, init: dict[str, Any]):
        self.cin, self.cout, self.init = chan_in, chan_out, init
        self.reader = FrameReader(chan_in)
        self.memory_mb = init["limits"]["as_mb"]
        self.envs: dict[int, Any] = {}
        self.target: Any = None

    def send(self, obj: dict[str, Any], blob: bytes = b"") -> None:
        write_frame(self.cout, obj, blob)

    def recv(self) -> tuple[dict[str, Any], bytes]:
        return self.reader.read()

    def fail(self, failure: CandidateFailure, **extra: Any) -> None:
        sys.stdout.flush()
        self.send({"t": "error", **failure.as_dict(), **extra})

    def call(self, op: str, *args: int) -> Any:
        """A RemoteQuestion call: ask the parent, wait for its reply."""
        self.send({"t": "call", "op": op, "args": list(args)})
        msg, _ = self.recv()
        if msg.get("t") != "reply":
            os._exit(3)  # the parent gave up on this episode
        if msg.get("ok"):
            result = msg.get("r")
            return tuple(result) if isinstance(result, list) else result
        raise_remote(msg["r"])

    def serve(self) -> None:
        msg, _ = self.recv()
        if msg.get("t") != "source":
            return
        try:
            self.target = load_candidate(msg["source"], self.memory_mb)
        except CandidateFailure as f:
            self.fail(f)
            return
        sys.stdout.flush()
        self.send({"t": "loaded", "controller": getattr(self.target, "__name__", "?")})
        while True:
            msg, blob = self.recv()
            kind = msg.get("t")
            if kind == "env":
                self.envs[msg["id"]] = decode_env(msg["env"], blob)
            elif kind == "unit":
                self.unit(msg)
            elif kind == "episode":
                self.episode(msg)
            else:
                return

    def unit(self, msg: dict[str, Any]) -> None:
        env = self.envs[msg["env"]]
        try:
            out = run_unit(env, self.target, msg["options"], msg["seeds"], self.memory_mb)
        except CandidateFailure as f:
            self.fail(f, unit=msg["unit"])
            raise SystemExit(0) from None
        sys.stdout.flush()
        blob = out["tokens"].tobytes() + out["opened"].astype("<i4").tobytes() + out["fp"].astype("<i8").tobytes()
        self.send({"t": "result", "unit": msg["unit"], "answers": out["answers"], "seconds": out["seconds"]}, blob)

    def episode(self, msg: dict[str, Any]) -> None:
        try:
            answer = run_audit_episode(self.target, msg["options"], self.call, msg["interval"], self.memory_mb)
        except CandidateFailure as f:
            sys.stdout.flush()
            self.send({"t": "episode_done", "id": msg["id"], "failure": f.as_dict()})
            return
        sys.stdout.flush()
        self.send({"t": "episode_done", "id": msg["id"], "answer": answer})


def main(chan_in: int, chan_out: int, init: dict[str, Any]) -> None:
    try:
        faulthandler.enable(file=2)  # a crash (SIGSEGV in C code reached through ctypes…) shows the Python stack
        _guard.preimport()
        core.primitives.beta_confidence_table()
        gc.collect()
        report = lockdown(init)
    except BaseException:  # noqa: BLE001 - the parent reports the exit status and this text
        os.write(2, ("sandbox worker setup failed:\n" + traceback.format_exc()).encode())
        os._exit(2)
    reserve = bytearray(16 << 20)  # freed on MemoryError so that the report can still be written
    out = CappedText(init["max_output"], sink=lambda s: os.write(2, s.encode("utf-8", "replace")))
    sys.stdout = sys.stderr = out
    worker = Worker(chan_in, chan_out, init)
    worker.send({"t": "ready", "report": report})
    try:
        worker.serve()
    except MemoryError:
        del reserve
        gc.collect()
        worker.fail(CandidateFailure("memory", f"memory limit ({worker.memory_mb} MB) exceeded"))
    except (EOFError, BrokenPipeError):
        pass
    except SystemExit:
        pass
    except BaseException as e:  # noqa: BLE001 - report what broke the worker itself
        try:
            worker.fail(CandidateFailure("internal", f"sandbox worker failed: {type(e).__name__}: {e}",
                                         "".join(traceback.format_exception(e))[-3000:]))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        out.flush()
        time.sleep(0)
    os._exit(0)


_ = np  # numpy is imported before the lockdown on purpose
