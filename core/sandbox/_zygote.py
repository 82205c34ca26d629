"""The zygote: a trusted fork server that never runs candidate code.

Started by the parent (under bubblewrap when usable) through `_bootstrap.py`. It imports everything a worker may
need while files can still be read, makes its own namespaces when bubblewrap did not (`_namespaces.isolate_tree`:
mount, network, IPC, UTS and a pid namespace whose pid 1 is the zygote, so every worker dies with it), then serves
the parent over a SOCK_SEQPACKET control socket:

* `fork` + three pipe descriptors (SCM_RIGHTS: its input, its output, its crash report) → a fresh worker (`_child.main`) on those pipes (no reply: the
  worker's first frame on its pipe says it is up, so the parent never waits for a fork);
* `wait` → that worker's exit status (`signal:N`, `exit:N`, or `fork-failed:why`), once it has ended;
* `kill` → SIGKILL to a worker;
* `compile` + a source → its code object, which every worker forked after it inherits instead of compiling the
  source itself (compiling runs none of the candidate's code; a source that does not compile is left to the
  workers, which report why);
* end of the socket → kill and reap every worker left, then exit, so that the workers' CPU time reaches the
  parent's accounting (a process killed before it reaps its children loses theirs).

Forking costs about a millisecond where a fresh interpreter costs a hundred, so every cell gets a new process.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import socket
import sys
import traceback
from typing import Any

import orjson

from core.sandbox import _child, _exec, _guard, _namespaces


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal:{os.WTERMSIG(status)}"
    return f"exit:{os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:  # ended already; or no right to (the parent then kills the whole process group)
        pass


class _Server:
    def __init__(self, ctrl: socket.socket, init: dict[str, Any]):
        self.ctrl, self.init = ctrl, init
        self.pids: dict[int, int] = {}
        """Live workers: id → pid (an ended one moves to `ended`, so a long run's bookkeeping stays small)."""
        self.wids: dict[int, int] = {}
        self.ended: dict[int, str] = {}

    def reply(self, obj: dict[str, Any]) -> None:
        self.ctrl.send(orjson.dumps(obj))

    def reap(self, block_for: int | None = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(block_for if block_for is not None else -1,
                                         0 if block_for is not None else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            wid = self.wids.pop(pid, None)
            if wid is not None:
                del self.pids[wid]
                self.ended[wid] = _status_text(status)
            if block_for is not None:
                return

    def fork(self, wid: int, fds: list[int]) -> None:
        fd_in, fd_out, fd_crash = fds
        try:
            pid = os.fork()
        except OSError as e:
            self.ended[wid] = f"fork-failed:{e.strerror or e}"
            pid = -1
        if pid == 0:
            try:
                self.ctrl.close()
                _child.main(fd_in, fd_out, fd_crash, self.init)
            finally:
                os._exit(4)
        for fd in fds:  # the worker's pipes end here for us (and at once for a worker that never started)
            os.close(fd)
        if pid > 0:
            self.pids[wid] = pid
            self.wids[pid] = wid

    def shutdown(self) -> None:
        for pid in self.pids.values():
            _kill(pid)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def serve(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.ctrl, 65536, 4)
            except OSError:
                data, fds = b"", []
            if not data:
                self.shutdown()
                return
            msg = orjson.loads(data)
            wid = int(msg.get("id", -1))
            kind = msg.get("t")
            if kind == "fork" and len(fds) == 3:
                self.fork(wid, fds)
            elif kind == "compile" and isinstance(msg.get("source"), str):
                try:
                    self.init["compiled"] = (msg["source"], _exec.compile_candidate(msg["source"]))
                except _exec.CandidateFailure:
                    pass
            elif kind == "kill":
                pid = self.pids.get(wid)
                if pid is not None:
                    _kill(pid)
            elif kind == "wait":
                pid = self.pids.get(wid)
                if pid is not None:
                    self.reap(block_for=pid)
                self.reply({"t": "ended", "id": wid, "status": self.ended.pop(wid, "unknown")})
            else:
                for fd in fds:
                    os.close(fd)
            self.reap()


def _isolate(init: dict[str, Any]) -> dict[str, Any]:
    """Native namespaces for the worker tree; returns what was made (or why not). Forks: the caller continues as
    pid 1 of the new pid namespace while the original process waits for it and exits with its status."""
    try:
        made = _namespaces.isolate_tree()
    except OSError as e:
        return {"made": {}, "error": str(e)}
    pid = os.fork()
    if pid:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _, status = os.waitpid(pid, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
    return {"made": made, "error": None}


def main(ctrl_fd: int, init: dict[str, Any]) -> None:
    ctrl = socket.socket(fileno=ctrl_fd)
    try:
        faulthandler.enable(file=2)  # a worker crash (SIGSEGV in C code reached through ctypes) shows its stack
        _namespaces.die_with_parent()
        if os.getppid() != init["parent_pid"] and not init.get("under_bwrap"):
            os._exit(1)  # the server died before we armed the signal
        _guard.preimport()
        import core.primitives

        core.primitives.beta_confidence_table()
        _child.prepare(init)
        ns: dict[str, Any] = {"made": {}, "error": None}
        if init.get("native_namespaces"):
            ns = _isolate(init)
            _namespaces.die_with_parent()  # our parent is now the waiting first process
        init["child_ipc_ns"] = os.geteuid() == 0  # root (or root in our user namespace) may unshare again
        init["in_user_ns"] = bool(ns["made"].get("user"))
        gc.collect()
        gc.freeze()  # forked workers then share these pages instead of copying them on the first collection
        ctrl.send(orjson.dumps({"t": "zygote", "namespaces": ns, "pid": os.getpid(), "euid": os.geteuid()}))
    except BaseException:  # noqa: BLE001 - the parent shows this text
        os.write(2, ("sandbox zygote setup failed:\n" + traceback.format_exc()).encode())
        os._exit(2)
    sys.stdout.flush()
    _Server(ctrl, init).serve()
    os._exit(0)
