"""The parent's handles on sandbox processes: one zygote per evaluation, and the workers it forks.

The zygote is started under bubblewrap when usable (else it makes its own namespaces), in its own session with a
scrubbed environment; its stderr (which every worker's captured output reaches) is read by a thread that keeps
the tail. Killing the zygote's process group ends every worker: they die with it (PR_SET_PDEATHSIG, and pid 1 of
their pid namespace is the zygote).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from core.sandbox._protocol import FrameBuffer, encode, write_all
from core.sandbox.isolation import PACKAGE_DIR, WORKER_ENV, bwrap_prefix, site_dirs

BOOTSTRAP = str(Path(__file__).resolve().parent / "_bootstrap.py")
MAX_CONTROL_BYTES = 60_000
"""Largest control message to the zygote (it reads them 64 KB at a time)."""
GRACE_S = 2.0
"""How long the zygote gets to reap its workers and exit before its process group is killed."""


@contextlib.contextmanager
def batch_scheduling() -> Iterator[None]:
    """Run the calling thread, and the processes it starts (they inherit it), under SCHED_BATCH meanwhile.

    Every reveal wakes the other side of a pipe: under the normal policy the woken process preempts the writer
    before it reaches its own blocking read, two context switches per message instead of one. Batch threads do not
    preempt on wakeup; measured on a 2-core machine, involuntary switches per worker fell tenfold and a search
    evaluation took about 10% less time. Only a thread under the normal policy is changed, and it is restored."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        changed = policy == os.SCHED_OTHER
        if changed:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: the normal policy is only slower
        changed = False
    try:
        yield
    finally:
        if changed:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, policy, param)


class ZygoteError(Exception):
    """The zygote could not be started or stopped answering; the message says why."""


class TailReader(threading.Thread):
    """Reads a pipe to its end, keeping only the last `cap` bytes."""

    def __init__(self, pipe: Any, cap: int):
        super().__init__(daemon=True)
        self.pipe, self.cap, self.buf, self.total = pipe, max(1024, cap), bytearray(), 0
        self.start()

    def run(self) -> None:
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            self.buf += chunk
            if len(self.buf) > 2 * self.cap:
                del self.buf[: len(self.buf) - self.cap]

    def text(self) -> str:
        data = bytes(self.buf[-self.cap:])
        prefix = f"[... {self.total - len(data)} bytes of output dropped ...]\n" if self.total > len(data) else ""
        return prefix + data.decode("utf-8", "replace")


def crash_text(text: str) -> str:
    """The useful end of a dead worker's output: faulthandler's report trimmed to the candidate's frames."""
    at = text.rfind("Fatal Python error")
    if at < 0:
        return text.strip()[-800:]
    lines = text[at:].split("\nExtension modules:")[0].splitlines()
    keep = [ln for ln in lines[1:] if "<candidate>" in ln or ln.startswith(("Current thread", "Thread "))]
    return "\n".join([lines[0], *keep[:20]])


class Worker:
    """One forked worker: its pipes (ours: write `to`, read `fro` and, once it has died, `crash`; non-blocking)
    and a frame buffer."""

    def __init__(self, wid: int, to: int, fro: int, crash: int):
        self.wid, self.to, self.fro, self.crash = wid, to, fro, crash
        for fd in (to, fro, crash):
            os.set_blocking(fd, False)
        self.frames = FrameBuffer()
        self.closed = False

    def send(self, obj: Any, deadline: float) -> None:
        self.send_frame(encode(obj), deadline)

    def send_frame(self, frame: bytes, deadline: float) -> None:
        """Write a frame; nothing happens if the worker has already gone (its closed pipe, read next, says how
        it ended)."""
        try:
            try:
                n = os.write(self.to, frame)  # almost always whole: the worker is waiting for it
            except BlockingIOError:
                n = 0
            if n < len(frame):
                write_all(self.to, memoryview(frame)[n:], deadline)
        except BrokenPipeError:
            pass

    def read(self) -> bytes | None:
        """What the worker sent so far; b"" at its end, None when nothing was there after all."""
        try:
            return os.read(self.fro, 1 << 20)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def crash_report(self) -> str:
        """What faulthandler wrote when the worker died of a fatal signal ("" if nothing)."""
        try:
            return os.read(self.crash, 1 << 16).decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in (self.to, self.fro, self.crash):
                with contextlib.suppress(OSError):
                    os.close(fd)


class Zygote:
    """Start the zygote, fork workers from it, learn how they ended, and kill the whole tree."""

    def __init__(self, *, probe: dict[str, Any], use_bwrap: bool, native_namespaces: bool, limits: dict[str, int],
                 max_output: int, deadline: float):
        self.deadline = deadline
        self.lock = threading.Lock()
        self.next_id = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctrl = ours
        cmd = bwrap_prefix(probe["bwrap"], probe["euid"]) if use_bwrap else []
        cmd += [sys.executable, "-S", "-s", "-P", "-B", BOOTSTRAP, str(theirs.fileno())]
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=dict(WORKER_ENV), cwd="/", start_new_session=True,
                                  pass_fds=[theirs.fileno()])
        theirs.close()
        self.err = TailReader(self.p.stderr, max_output)
        init = {"site_dirs": site_dirs(), "package_root": str(Path(PACKAGE_DIR).parent), "limits": limits,
                "max_output": max_output, "libseccomp": probe.get("libseccomp"), "seccomp": bool(probe["seccomp"]),
                "landlock": probe["landlock_abi"] > 0, "native_namespaces": native_namespaces and not use_bwrap,
                "under_bwrap": use_bwrap, "parent_pid": os.getpid()}
        try:
            self.ctrl.send(orjson.dumps(init))
            self.hello = self._recv()
        except (OSError, ZygoteError) as e:
            self.close()
            raise ZygoteError(f"the sandbox did not start ({e}): {crash_text(self.err.text())}") from None
        if self.hello.get("t") != "zygote":
            self.close()
            raise ZygoteError("the sandbox zygote sent a malformed greeting")

    def _recv(self) -> dict[str, Any]:
        self.ctrl.settimeout(max(0.05, self.deadline - time.monotonic()))
        try:
            data = self.ctrl.recv(65536)
        except TimeoutError:
            raise ZygoteError("the zygote did not answer in time") from None
        if not data:
            self.p.wait(timeout=2) if self.p.poll() is None else None
            raise ZygoteError(f"the zygote ended (exit status {self.p.returncode})")
        return orjson.loads(data)

    def fork(self) -> Worker:
        """Ask for a worker and return at once: its first frame (or its pipe's end) tells how it started."""
        with self.lock:
            wid = self.next_id
            self.next_id += 1
            to_r, to_w = os.pipe()
            fro_r, fro_w = os.pipe()
            crash_r, crash_w = os.pipe()
            try:
                socket.send_fds(self.ctrl, [orjson.dumps({"t": "fork", "id": wid})], [to_r, fro_w, crash_w])
            except OSError:
                for fd in (to_w, fro_r, crash_r):
                    os.close(fd)
                raise
            finally:
                for fd in (to_r, fro_w, crash_w):
                    os.close(fd)
            return Worker(wid, to_w, fro_r, crash_r)

    def precompile(self, source: str) -> None:
        """Have the zygote compile the source once for all its workers (skipped for a source too large for one
        control message; workers then compile it themselves)."""
        msg = orjson.dumps({"t": "compile", "source": source})
        if len(msg) <= MAX_CONTROL_BYTES:
            with self.lock, contextlib.suppress(OSError):
                self.ctrl.send(msg)

    def ended(self, worker: Worker) -> str:
        """How a worker ended: `exit:N`, `signal:N` or `unknown` (waits for it; call after its pipe closed)."""
        with self.lock:
            try:
                self.ctrl.send(orjson.dumps({"t": "wait", "id": worker.wid}))
                return str(self._recv().get("status", "unknown"))
            except (OSError, ZygoteError):
                return "unknown"

    def kill(self, worker: Worker) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.ctrl.send(orjson.dumps({"t": "kill", "id": worker.wid}))

    def close(self) -> None:
        """End the whole tree and reap the zygote: closing its socket makes it kill and reap its workers and exit
        (so their CPU time is counted as ours); a zygote that has not exited soon after is killed with its
        process group (workers die with it)."""
        with contextlib.suppress(OSError):
            self.ctrl.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(timeout=GRACE_S)
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(timeout=5)
        self.err.join(timeout=2)
        with contextlib.suppress(OSError):
            self.p.stderr.close()  # type: ignore[union-attr]
