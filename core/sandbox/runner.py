"""The parent side of the sandbox: spawn locked-down workers, feed them evaluation units, audit the result.

See the package docstring for the layers. The parent holds the real replay tables (and the gold answers, which
it never sends); workers get copies without gold, return answers and costs, and the parent re-checks a random
sample of episodes against a worker that holds no replay data at all (the integrity audit).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import core
from core.environment import ReplayEnvironment, TracedReplayQuestion
from core.errors import AutoTTSError
from core.evaluate import Episodes
from core.sandbox import _exec, _landlock
from core.sandbox._protocol import (
    MAX_FRAME_FROM_WORKER,
    FrameReader,
    ProtocolError,
    encode_env,
    fingerprint,
    options_label,
    write_frame,
)

LEVELS = ("minimal", "weak", "medium", "strong")
MODES = ("strict", "auto", "off")
NOBODY = 65534
CORE_DIR = str(Path(core.__file__).resolve().parent)
BOOTSTRAP = str(Path(__file__).resolve().parent / "_bootstrap.py")
WORKER_ENV = {
    "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUTF8": "1",
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}
"""The worker's whole environment (never the parent's). A fixed hash seed makes set iteration over strings the
same in every worker, so the fast run and the audit re-run of an honest controller agree."""
AUDIT_NOTE = ("An episode differs when the controller used data it was not shown (private fields of the question, "
              "the replay tables in memory), changed its costs, keeps state between questions that changes its "
              "decisions, or is not deterministic (unseeded randomness, time).")


class SandboxError(AutoTTSError):
    """The sandbox refused or could not run a candidate; `error` and `traceback` say why."""

    def __init__(self, error: str, traceback_text: str | None = None, isolation: dict[str, Any] | None = None):
        super().__init__(error)
        self.error, self.traceback, self.isolation = error, traceback_text, isolation or {}


@dataclass(frozen=True)
class SandboxSettings:
    """How candidate code is run. The environment variable AUTOTTS_SANDBOX (strict|auto|off) overrides `level`."""

    timeout_s: float = 300.0
    """Wall clock for one whole candidate evaluation (all environments × settings, and the audit)."""
    memory_mb: int = 2048
    """RLIMIT_AS per worker process."""
    level: str = "auto"
    """strict: refuse below `min_level`; auto: run at the best level available and record it; off: in-process,
    no isolation and no timeout (only for tests of trusted code; gold is still never given to the controller)."""
    workers: int | None = None
    """Parallel worker processes; default os.cpu_count()."""
    audit_episodes: int = 30
    """Episodes per environment re-run for the integrity audit (0 turns the audit off)."""
    max_output_bytes: int = 65536
    """Captured stdout/stderr kept per worker (the tail)."""
    max_source_bytes: int = 256 * 1024
    """Larger candidate sources are refused before anything is spawned."""
    min_level: str = "strong"
    """The level `strict` requires."""
    audit_seed: int | None = None
    """Seed of the audit's sample; None draws a fresh one per run (recorded in `audit`), so a controller cannot
    know which episodes will be checked."""
    use_bwrap: bool = True
    """Use bubblewrap when it is usable (False: tests of the medium level)."""


@dataclass
class CandidateRun:
    """Everything a sandboxed candidate evaluation produced. Score `results` with `core.evaluate.score` against
    the original environments, and only when `ok` and `audit['passed']`."""

    ok: bool
    error: str | None
    traceback: str | None
    results: dict[tuple[str, str], Episodes] = field(default_factory=dict)
    opened: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    isolation: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    stdout_tail: str = ""
    seconds: float = 0.0


class _Stop(Exception):
    def __init__(self, error: str, traceback_text: str | None = None, ended_by: str | None = None):
        super().__init__(error)
        self.error, self.traceback_text, self.ended_by = error, traceback_text, ended_by


# ----- capability probe --------------------------------------------------------------------------------------------
def _site_dirs() -> list[str]:
    import numpy
    dirs = [str(Path(numpy.__file__).resolve().parents[1])]
    try:
        import scipy
        dirs.append(str(Path(scipy.__file__).resolve().parents[1]))
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    return list(dict.fromkeys(dirs))


def _read_paths() -> list[str]:
    paths = [sys.base_prefix, sys.prefix, *_site_dirs(), CORE_DIR]
    return list(dict.fromkeys(str(Path(p).resolve()) for p in paths))


def _libseccomp_path() -> str | None:
    """Load libseccomp here once and return the file it came from (the worker opens it by path)."""
    from core.sandbox import _seccomp
    try:
        _seccomp.load_library()
    except OSError:
        return None
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libseccomp.so" in line:
                    return line.split()[-1]
    except OSError:
        pass
    return "libseccomp.so.2"


def _bwrap_prefix(bwrap: str, euid: int, scratch: str) -> list[str]:
    args = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session"]
    if euid == 0:
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    args += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--clearenv"]
    for k, v in WORKER_ENV.items():
        args += ["--setenv", k, v]
    binds: list[str] = []
    for p in sorted(_read_paths(), key=len):
        if p == "/usr" or p.startswith("/usr/") or any(p == b or p.startswith(b + "/") for b in binds):
            continue
        binds.append(p)
    parents: list[str] = []
    for p in binds:
        for parent in reversed(Path(p).parents):
            s = str(parent)
            if s not in ("/", "/tmp") and s not in parents and not any(s == b or s.startswith(b + "/") for b in binds):
                parents.append(s)
    for d in parents:
        args += ["--perms", "0755", "--dir", d]
    for p in binds:
        args += ["--ro-bind", p, p]
    # the worker enters /scratch itself after dropping to nobody (root without capabilities cannot, 0700)
    args += ["--bind", scratch, "/scratch", "--chdir", "/"]
    return args


@functools.lru_cache(maxsize=1)
def probe_isolation() -> dict[str, Any]:
    """What this machine offers (cached): bwrap usable for our interpreter?, Landlock ABI, libseccomp, euid."""
    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    linux = sys.platform.startswith("linux")
    info: dict[str, Any] = {"platform": sys.platform, "euid": euid, "bwrap": None, "bwrap_usable": False,
                            "bwrap_error": None, "landlock_abi": _landlock.abi_version() if linux else 0,
                            "seccomp": False, "libseccomp": None}
    if linux:
        info["libseccomp"] = _libseccomp_path()
        info["seccomp"] = info["libseccomp"] is not None
        bwrap = shutil.which("bwrap")
        info["bwrap"] = bwrap
        if bwrap is None:
            info["bwrap_error"] = "bubblewrap is not installed (apt-get install bubblewrap)"
        else:
            scratch = tempfile.mkdtemp(prefix="autotts-probe-")
            try:
                cmd = _bwrap_prefix(bwrap, euid, scratch) + [sys.executable, "-S", "-c", "import sys; print('ok')"]
                r = subprocess.run(cmd, capture_output=True, timeout=30, env=dict(WORKER_ENV), cwd=scratch)
                info["bwrap_usable"] = r.returncode == 0 and r.stdout.strip() == b"ok"
                if not info["bwrap_usable"]:
                    info["bwrap_error"] = (r.stderr.decode(errors="replace").strip() or f"exit status {r.returncode}")[:500]
            except (OSError, subprocess.SubprocessError) as e:
                info["bwrap_error"] = str(e)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    info["expected_level"] = _expected_level(info)
    return info


def _expected_level(info: dict[str, Any]) -> str:
    if not info["platform"].startswith("linux"):
        return "minimal"
    landlock, seccomp = info["landlock_abi"] > 0, info["seccomp"]
    if info["bwrap_usable"] and landlock and seccomp:
        return "strong"
    if landlock and seccomp:
        return "medium"
    return "weak" if seccomp else "minimal"


def _mode(settings: SandboxSettings) -> str:
    mode = os.environ.get("AUTOTTS_SANDBOX") or settings.level
    mode = mode.strip().lower()
    if mode not in MODES:
        raise SandboxError(f"sandbox level {mode!r} is not one of strict, auto, off (check AUTOTTS_SANDBOX)")
    if settings.min_level not in LEVELS:
        raise SandboxError(f"min_level {settings.min_level!r} is not one of {', '.join(LEVELS)}")
    return mode


def _parent_ns() -> dict[str, str]:
    out = {}
    for ns in ("mnt", "net", "pid"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            out[ns] = ""
    return out


def _level_from_report(report: dict[str, Any], parent_ns: dict[str, str], limits: dict[str, int]) -> dict[str, Any]:
    ns = report.get("ns", {})

    def differs(k: str) -> bool:
        return bool(ns.get(k)) and bool(parent_ns.get(k)) and ns.get(k) != parent_ns.get(k)

    rl = report.get("rlimits", {})
    rlimits_ok = all(rl.get(k) == v for k, v in limits.items())
    landlock = int(report.get("landlock_abi") or 0) > 0
    seccomp = report.get("seccomp_mode") == "2"
    uid_ok = report.get("euid") != 0
    mount_ns, net_ns, pid_ns = differs("mnt"), differs("net"), differs("pid")
    if mount_ns and net_ns and pid_ns and landlock and seccomp and uid_ok and rlimits_ok:
        level = "strong"
    elif landlock and seccomp and rlimits_ok:
        level = "medium"
    elif seccomp and rlimits_ok:
        level = "weak"
    else:
        level = "minimal"
    return {"level": level, "mount_ns": mount_ns, "net_ns": net_ns, "pid_ns": pid_ns, "uid": report.get("euid"),
            "landlock_abi": int(report.get("landlock_abi") or 0), "seccomp": seccomp,
            "no_new_privs": report.get("no_new_privs") == "1", "rlimits": rl, "threads": report.get("threads"),
            "vm_mb": report.get("vm_mb"), "errors": report.get("errors", {})}


# ----- one worker process -----------------------------------------------------------------------------------------
class _TailReader(threading.Thread):
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


def _crash_text(text: str) -> str:
    """The useful end of a dead worker's output: faulthandler's report trimmed to the candidate's frames."""
    at = text.rfind("Fatal Python error")
    if at < 0:
        return text.strip()[-800:]
    lines = text[at:].split("\nExtension modules:")[0].splitlines()
    keep = [ln for ln in lines[1:] if "<candidate>" in ln or ln.startswith(("Current thread", "Thread "))]
    return "\n".join([lines[0], *keep[:20]])


class _Proc:
    """A worker process: spawned locked down, talked to over its stdin/stdout, killed as a process group."""

    def __init__(self, sess: _Session, role: str, index: int):
        self.sess, self.role, self.index = sess, role, index
        self.scratch = tempfile.mkdtemp(prefix="autotts-sbx-")
        self.killed_by_us = False
        self.envs: set[int] = set()
        self.report: dict[str, Any] | None = None
        if sess.euid == 0:
            os.chown(self.scratch, NOBODY, NOBODY)
        if sess.use_bwrap:
            cmd = _bwrap_prefix(sess.probe["bwrap"], sess.euid, self.scratch)
            inside = "/scratch"
        else:
            cmd, inside = [], self.scratch
        cmd += [sys.executable, "-S", "-s", "-P", "-B", BOOTSTRAP]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(WORKER_ENV), cwd=self.scratch, start_new_session=True, close_fds=True)
        self.fin, self.fout = self.p.stdin.fileno(), self.p.stdout.fileno()  # type: ignore[union-attr]
        self.reader = FrameReader(self.fout, MAX_FRAME_FROM_WORKER)
        self.err = _TailReader(self.p.stderr, sess.settings.max_output_bytes)
        init = {"site_dirs": _site_dirs(), "core_dir": CORE_DIR, "read_paths": _read_paths(), "scratch": inside,
                "limits": sess.limits, "max_output": sess.settings.max_output_bytes,
                "libseccomp": sess.probe.get("libseccomp"), "landlock": True, "seccomp": True, "drop_uid": True}
        try:
            self.send(init)
        except OSError:
            pass  # it died at once; the first recv reports it

    def send(self, obj: dict[str, Any], blob: bytes = b"") -> None:
        write_frame(self.fin, obj, blob)

    def recv(self) -> tuple[dict[str, Any], bytes]:
        return self.reader.read()

    def handshake(self, source: str) -> dict[str, Any]:
        """Wait for the self-report, check the level, send the source, wait for the controller to load."""
        try:
            msg, _ = self.recv()
        except (EOFError, OSError, ProtocolError) as e:
            raise self.died(f"the sandbox worker did not start ({e})") from None
        if msg.get("t") != "ready" or not isinstance(msg.get("report"), dict):
            raise _Stop("the sandbox worker sent a malformed report")
        self.report = msg["report"]
        info = _level_from_report(self.report, self.sess.parent_ns, self.sess.limits)
        info["bwrap"] = self.sess.use_bwrap
        self.sess.record_level(info)
        if self.sess.mode == "strict" and LEVELS.index(info["level"]) < LEVELS.index(self.sess.settings.min_level):
            raise _Stop(f"sandbox level {info['level']!r} is below the required {self.sess.settings.min_level!r} "
                        f"(strict mode): {self.sess.describe_missing(info)}")
        self.send({"t": "source", "source": source})
        msg, _ = self.recv_checked()
        if msg.get("t") == "error":
            raise self.sess.failure(msg)
        if msg.get("t") != "loaded":
            raise _Stop("the sandbox worker sent an unexpected message while loading the controller")
        return info

    def recv_checked(self) -> tuple[dict[str, Any], bytes]:
        try:
            return self.recv()
        except (EOFError, OSError) as e:
            raise self.died(str(e)) from None
        except ProtocolError as e:
            raise _Stop(f"the sandbox worker broke the protocol ({e}); the controller may have written to its "
                        "result channel") from None

    def died(self, what: str) -> _Stop:
        """Why the worker ended without reporting (called after EOF on its channel)."""
        try:
            rc = self.p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.p.returncode
        if self.killed_by_us or self.sess.stopping.is_set():
            return _Stop("stopped", ended_by="stopped")
        sig = -rc if rc is not None and rc < 0 else (rc - 128 if self.sess.use_bwrap and rc is not None and rc > 128
                                                     else None)
        tail = _crash_text(self.err.text())
        if sig == signal.SIGXCPU:
            return _Stop(f"CPU time limit exceeded ({self.sess.limits['cpu_s']} s of CPU)", tail or None, "SIGXCPU")
        if sig == signal.SIGKILL:
            return _Stop(f"the worker was killed (SIGKILL; memory limit {self.sess.settings.memory_mb} MB?)",
                         tail or None, "signal:9")
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return _Stop(f"the worker crashed ({name})", tail or None, f"signal:{sig}")
        return _Stop(f"the sandbox worker exited unexpectedly (exit status {rc}; {what})", tail or None, "exit")

    def kill(self) -> None:
        if self.p.poll() is None:
            self.killed_by_us = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def close(self, graceful: bool = False) -> None:
        if graceful and self.p.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"t": "exit"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(timeout=2)
        self.kill()
        for pipe in (self.p.stdin, self.p.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]
        self.err.join(timeout=2)
        with contextlib.suppress(OSError):
            self.p.stderr.close()  # type: ignore[union-attr]
        shutil.rmtree(self.scratch, ignore_errors=True)


# ----- a run ---------------------------------------------------------------------------------------------------
class _Session:
    def __init__(self, settings: SandboxSettings, mode: str):
        self.settings, self.mode = settings, mode
        self.probe = probe_isolation()
        self.euid = self.probe["euid"]
        self.use_bwrap = bool(self.probe["bwrap_usable"]) and settings.use_bwrap
        self.parent_ns = _parent_ns()
        cpu = int(np.ceil(settings.timeout_s)) + 1
        self.limits = {"as_mb": int(settings.memory_mb), "cpu_s": cpu, "fsize_mb": 16, "nofile": 64}
        self.start = time.monotonic()
        self.deadline = self.start + settings.timeout_s
        self.procs: list[_Proc] = []
        self.levels: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.tails: list[str] = []
        self.notes: list[str] = []
        self.spawned: dict[str, int] = {}
        self.fast: dict[tuple[int, int], tuple] = {}
        """(env, options) → (answers, tokens, opened, fingerprints) of the fast run, for the audit."""
        if not self.use_bwrap:
            self.notes.append(f"no bubblewrap: {self.probe.get('bwrap_error') or 'turned off in the settings'}")

    def check_expected(self) -> None:
        if self.mode == "strict":
            expected = self.probe["expected_level"]
            if expected == "strong" and not self.use_bwrap:
                expected = "medium"
            if LEVELS.index(expected) < LEVELS.index(self.settings.min_level):
                raise _Stop(f"sandbox level {expected!r} is below the required {self.settings.min_level!r} "
                            f"(strict mode): {self.describe_missing(None)}")

    def describe_missing(self, info: dict[str, Any] | None) -> str:
        p = self.probe
        missing = []
        if not self.use_bwrap:
            missing.append(p.get("bwrap_error") or "bubblewrap unusable")
        if p["landlock_abi"] <= 0:
            missing.append("no Landlock (Linux ≥ 5.13 needed)")
        if not p["seccomp"]:
            missing.append("libseccomp not loadable")
        if info is not None:
            missing += [f"{k}: {v}" for k, v in info.get("errors", {}).items()]
        return "; ".join(missing) or "see isolation errors"

    def record_level(self, info: dict[str, Any]) -> None:
        with self.lock:
            self.levels.append(info)

    def spawn(self, role: str) -> _Proc:
        proc = _Proc(self, role, len(self.procs))
        self.procs.append(proc)
        self.spawned[role] = self.spawned.get(role, 0) + 1
        return proc

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def failure(self, msg: dict[str, Any]) -> _Stop:
        kind = msg.get("kind")
        error = str(msg.get("error") or "the controller failed")[:2000]
        tb = msg.get("traceback")
        tb = str(tb)[:6000] if tb else None
        return _Stop(error, tb, "oom" if kind == "memory" else "error")

    def stop_all(self) -> None:
        self.stopping.set()
        for proc in self.procs:
            proc.kill()

    def retire(self, proc: _Proc, graceful: bool = True) -> None:
        proc.close(graceful=graceful)
        text = proc.err.text().strip()
        if text:
            with self.lock:
                self.tails.append(text)

    def close(self) -> None:
        for proc in self.procs:
            if proc.p.returncode is None or os.path.exists(proc.scratch):
                self.retire(proc, graceful=False)

    def isolation(self, ended_by: str | None) -> dict[str, Any]:
        base: dict[str, Any] = {"level": None, "requested": self.mode, "bwrap": self.use_bwrap, "mount_ns": False,
                                "net_ns": False, "pid_ns": False, "uid": None, "landlock_abi": 0, "seccomp": False,
                                "no_new_privs": False, "rlimits": {}, "timeout_s": self.settings.timeout_s,
                                "ended_by": ended_by, "workers": dict(self.spawned), "notes": list(self.notes),
                                "errors": {}}
        if self.levels:
            worst = min(self.levels, key=lambda i: LEVELS.index(i["level"]))
            base.update({k: v for k, v in worst.items() if k != "threads"})
        else:
            base["level"] = "not started"
        base["ended_by"] = ended_by
        return base

    def stdout_tail(self) -> str:
        cap = self.settings.max_output_bytes
        parts = self.tails if len(self.tails) <= 1 else [f"[worker {i}]\n{t}" for i, t in enumerate(self.tails)]
        text = "\n".join(parts)
        if len(text) > cap:
            text = f"[... {len(text) - cap} characters of output dropped ...]\n" + text[-cap:]
        return text


def _check_inputs(source: Any, envs: list[ReplayEnvironment], options_grid: list[dict[str, Any]],
                  settings: SandboxSettings) -> str | None:
    if not envs:
        raise ValueError("run_candidate needs at least one environment")
    if not options_grid:
        raise ValueError("options_grid is empty: pass [{}] for the controller's defaults")
    names = [e.name for e in envs]
    if len(set(names)) != len(names):
        raise ValueError(f"environment names must be unique: {names}")
    labels = [options_label(o) for o in options_grid]
    if len(set(labels)) != len(labels):
        raise ValueError(f"options_grid has duplicate settings: {labels}")
    for o in options_grid:
        try:
            json.dumps(o, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"options must be JSON values (numbers, strings, lists): {o!r}: {e}") from None
    if not isinstance(source, str):
        return f"the controller source must be a string, got {type(source).__name__}"
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > settings.max_source_bytes:
        return (f"the controller source is {size} bytes; the limit is {settings.max_source_bytes} bytes "
                f"({settings.max_source_bytes // 1024} KB)")
    if not source.strip():
        return "the controller source is empty"
    return None


def _validate_result(msg: dict[str, Any], blob: bytes, n_s: int, n_q: int) -> tuple[list, np.ndarray, np.ndarray,
                                                                                     np.ndarray, float]:
    answers = msg.get("answers")
    if not isinstance(answers, list) or len(answers) != n_s or any(
            not isinstance(row, list) or len(row) != n_q for row in answers):
        raise ProtocolError("result has the wrong shape")
    for row in answers:
        for a in row:
            if a is not None and (not isinstance(a, str) or len(a) > _exec.MAX_ANSWER_CHARS):
                raise ProtocolError("result holds a bad answer")
    n = n_s * n_q
    if len(blob) != n * 20:
        raise ProtocolError("result arrays have the wrong size")
    tokens = np.frombuffer(blob, "<i8", n, 0).reshape(n_s, n_q).astype(np.int64)
    opened = np.frombuffer(blob, "<i4", n, 8 * n).reshape(n_s, n_q).astype(np.int32)
    fps = np.frombuffer(blob, "<i8", n, 12 * n).reshape(n_s, n_q).astype(np.int64)
    seconds = msg.get("seconds")
    return answers, tokens, opened, fps, float(seconds) if isinstance(seconds, int | float) else 0.0


class _Units:
    """Hands out (env, options) units, preferring environments a worker already holds and ones nobody holds."""

    def __init__(self, units: list[tuple[int, int]]):
        self.pending = list(units)
        self.lock = threading.Lock()
        self.held: dict[int, set[int]] = {}

    def next(self, proc: _Proc) -> tuple[int, int] | None:
        with self.lock:
            if not self.pending:
                return None
            mine = proc.envs
            others = set().union(*(v for k, v in self.held.items() if k != proc.index)) if self.held else set()
            pick = next((u for u in self.pending if u[0] in mine), None)
            if pick is None:
                pick = next((u for u in self.pending if u[0] not in others), self.pending[0])
            self.pending.remove(pick)
            self.held.setdefault(proc.index, set()).add(pick[0])
            return pick


def _drive_fast(sess: _Session, proc: _Proc, source: str, units: _Units, envs: list[ReplayEnvironment],
                encoded: Callable[[int], tuple[dict, bytes]], grid: list[dict[str, Any]], seeds: list[int],
                events: queue.Queue) -> None:
    try:
        proc.handshake(source)
        while not sess.stopping.is_set():
            unit = units.next(proc)
            if unit is None:
                break
            ei, oi = unit
            if ei not in proc.envs:
                header, blob = encoded(ei)
                proc.send({"t": "env", "id": ei, "env": header}, blob)
                proc.envs.add(ei)
            proc.send({"t": "unit", "unit": [ei, oi], "env": ei, "options": grid[oi], "seeds": seeds})
            msg, blob = proc.recv_checked()
            if msg.get("t") == "error":
                raise sess.failure(msg)
            if msg.get("t") != "result":
                raise _Stop("the sandbox worker sent an unexpected message")
            try:
                parsed = _validate_result(msg, blob, len(seeds), envs[ei].n_questions)
            except ProtocolError as e:
                raise _Stop(f"the sandbox worker returned a malformed result ({e})") from None
            events.put(("unit", unit, parsed))
        events.put(("idle", proc, None))
    except _Stop as stop:
        events.put(("stop", proc, stop))
    except (OSError, EOFError) as e:
        events.put(("stop", proc, proc.died(str(e))))
    except Exception as e:  # noqa: BLE001 - a bug here must not hang the caller
        events.put(("stop", proc, _Stop(f"sandbox error: {type(e).__name__}: {e}")))


def _remote_episode(proc: _Proc, question: TracedReplayQuestion, options: dict[str, Any], interval: int,
                    episode_id: int) -> tuple[str | None, dict[str, Any] | None]:
    """Drive one audit episode: answer the worker's question calls from the real question until it is done."""
    proc.send({"t": "episode", "id": episode_id, "options": options, "interval": interval})
    while True:
        msg, _ = proc.recv_checked()
        t = msg.get("t")
        if t == "call":
            ok, result = _exec.answer_call(question, msg.get("op"), msg.get("args"))
            proc.send({"t": "reply", "ok": ok, "r": result})
        elif t == "episode_done" and msg.get("id") == episode_id:
            failure = msg.get("failure")
            if failure is not None:
                return None, failure if isinstance(failure, dict) else {"error": str(failure)}
            answer = msg.get("answer")
            if answer is not None and (not isinstance(answer, str) or len(answer) > _exec.MAX_ANSWER_CHARS):
                return None, {"error": "solve() returned a bad answer"}
            return answer, None
        elif t == "error":
            raise proc.sess.failure(msg)
        else:
            raise _Stop("the sandbox worker sent an unexpected message during the audit")


def _audit_sample(envs: list[ReplayEnvironment], n_options: int, n_seeds: int, per_env: int,
                  seed: int) -> list[tuple[int, int, int, int]]:
    sample = []
    for ei, env in enumerate(envs):
        n_q = env.n_questions
        total = n_options * n_seeds * n_q
        k = min(per_env, total)
        rng = np.random.default_rng([seed, ei])
        for flat in sorted(rng.choice(total, size=k, replace=False).tolist()):
            oi, rest = divmod(flat, n_seeds * n_q)
            si, q = divmod(rest, n_q)
            sample.append((ei, oi, si, q))
    return sample


def _compare(fast: dict[str, Any], answer: str | None, failure: dict[str, Any] | None,
             question: TracedReplayQuestion) -> str | None:
    """Why an audited episode disagrees with the fast run, or None when it agrees."""
    reasons = []
    if failure is not None:
        err = str(failure.get("error", "failed"))
        hint = " (the controller reads the question's private state)" if "attribute '_" in err else ""
        reasons.append(f"the re-run without replay data failed: {err}{hint}")
    else:
        revealed = {e[3] for e in question.events if e[3] is not None}
        if answer != fast["answer"]:
            reasons.append(f"answer {fast['answer']!r} in the fast run, {answer!r} in the re-run")
        if question._cost != fast["tokens"]:
            reasons.append(f"tokens {fast['tokens']} reported by the fast run, {question._cost} charged in the re-run")
        if question.num_opened != fast["opened"]:
            reasons.append(f"{fast['opened']} branches opened in the fast run, {question.num_opened} in the re-run")
        elif fingerprint(question) != fast["fp"]:
            reasons.append("the branches were advanced differently")
        for a in dict.fromkeys((fast["answer"], answer)):
            if a is not None and a not in revealed:
                reasons.append(f"returned {a!r}, which was never revealed in this episode")
    return "; ".join(reasons) if reasons else None


def _drive_audit(sess: _Session, proc: _Proc, source: str, todo: list[tuple[int, tuple[int, int, int, int]]],
                 envs: list[ReplayEnvironment], grid: list[dict[str, Any]], seeds: list[int],
                 fast: Callable[[tuple[int, int, int, int]], dict[str, Any]], events: queue.Queue) -> None:
    try:
        proc.handshake(source)
        for k, (ei, oi, si, q) in todo:
            if sess.stopping.is_set():
                break
            env = envs[ei]
            question = env.question(q, seeds[si], trace=True)
            answer, failure = _remote_episode(proc, question, grid[oi], int(env.interval[q]), k)  # type: ignore[arg-type]
            reason = _compare(fast((ei, oi, si, q)), answer, failure, question)  # type: ignore[arg-type]
            events.put(("audited", (ei, oi, si, q), reason))
        events.put(("idle", proc, None))
    except _Stop as stop:
        events.put(("stop", proc, stop))
    except (OSError, EOFError) as e:
        events.put(("stop", proc, proc.died(str(e))))
    except Exception as e:  # noqa: BLE001
        events.put(("stop", proc, _Stop(f"sandbox error: {type(e).__name__}: {e}")))


def _wait(sess: _Session, events: queue.Queue, what: str) -> tuple[str, Any, Any]:
    remaining = sess.remaining()
    try:
        if remaining <= 0:
            raise queue.Empty
        return events.get(timeout=remaining)
    except queue.Empty:
        raise _Stop(f"timed out after {sess.settings.timeout_s:g} s{what}", None, "timeout") from None


def run_candidate(
    source: str,
    envs: list[ReplayEnvironment],
    options_grid: list[dict[str, Any]],
    seeds: Iterable[int] = range(100),
    settings: SandboxSettings = SandboxSettings(),  # noqa: B008 - frozen
    progress: Callable[[int, int], None] | None = None,
) -> CandidateRun:
    """Evaluate candidate controller source on every (environment, options) pair in sandboxed workers.

    Never raises for anything the candidate does; `ok`/`error`/`traceback` say what happened. Raises ValueError
    for bad arguments and SandboxError for a bad sandbox setting. An exception raised by `progress` stops the run
    (workers are killed) and propagates.
    """
    t0 = time.perf_counter()
    mode = _mode(settings)
    seed_list = [int(s) for s in seeds]
    envs = list(envs)
    grid = [dict(o) for o in options_grid]
    problem = _check_inputs(source, envs, grid, settings)
    if problem is not None:
        return CandidateRun(False, problem, None, isolation={"level": "not started", "requested": mode,
                                                             "ended_by": "refused", "timeout_s": settings.timeout_s},
                            audit={"checked": 0, "mismatches": [], "passed": False}, seconds=time.perf_counter() - t0)
    if mode == "off":
        return _run_in_process(source, envs, grid, seed_list, settings, progress, t0)
    sess = _Session(settings, mode)
    run = CandidateRun(False, None, None)
    ended_by: str | None = None
    try:
        sess.check_expected()
        _fast_phase(sess, source, envs, grid, seed_list, progress, run)
        run.audit = _audit_phase(sess, source, envs, grid, seed_list, run)
        run.ok = True
    except _Stop as stop:
        run.ok, run.error, run.traceback, ended_by = False, stop.error, stop.traceback_text, stop.ended_by
        if not run.audit:
            run.audit = {"checked": 0, "mismatches": [], "passed": False,
                         "skipped": "the evaluation did not complete"}
    finally:
        sess.stop_all()
        sess.close()
    run.isolation = sess.isolation(ended_by)
    run.stdout_tail = sess.stdout_tail()
    run.seconds = time.perf_counter() - t0
    return run


def _fast_phase(sess: _Session, source: str, envs: list[ReplayEnvironment], grid: list[dict[str, Any]],
                seeds: list[int], progress: Callable[[int, int], None] | None, run: CandidateRun) -> None:
    unit_list = [(ei, oi) for ei in range(len(envs)) for oi in range(len(grid))]
    n_workers = max(1, min(sess.settings.workers or os.cpu_count() or 1, len(unit_list)))
    procs = [sess.spawn("fast") for _ in range(n_workers)]
    cache: dict[int, tuple[dict, bytes]] = {}
    cache_lock = threading.Lock()

    def encoded(ei: int) -> tuple[dict, bytes]:
        with cache_lock:
            if ei not in cache:
                cache[ei] = encode_env(envs[ei])
            return cache[ei]

    units = _Units(unit_list)
    events: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_drive_fast, daemon=True,
                                args=(sess, p, source, units, envs, encoded, grid, seeds, events)) for p in procs]
    for t in threads:
        t.start()
    run.results, run.opened = {}, {}
    done, idle = 0, 0
    try:
        while done < len(unit_list):
            where = f" ({done} of {len(unit_list)} environment × setting units done)" if done else ""
            kind, a, b = _wait(sess, events, where)
            if kind == "unit":
                (ei, oi), (answers, tokens, opened, fps, secs) = a, b
                key = (envs[ei].name, options_label(grid[oi]))
                run.results[key] = Episodes(np.asarray(seeds, dtype=np.int64), answers, tokens, None, secs)
                run.opened[key] = opened
                sess.fast[(ei, oi)] = (answers, tokens, opened, fps)
                done += 1
                if progress is not None:
                    progress(done, len(unit_list))
            elif kind == "stop":
                raise b
            elif kind == "idle":
                idle += 1
                if idle == len(procs) and done < len(unit_list):
                    raise _Stop("the sandbox workers stopped before finishing")
    finally:
        complete = done == len(unit_list)
        if not complete:
            sess.stopping.set()
        for p in procs:
            sess.retire(p, graceful=complete)
        for t in threads:
            t.join(timeout=2)
        if complete:
            sess.stopping.clear()


def _audit_phase(sess: _Session, source: str, envs: list[ReplayEnvironment], grid: list[dict[str, Any]],
                 seeds: list[int], run: CandidateRun) -> dict[str, Any]:
    per_env = max(0, int(sess.settings.audit_episodes))
    seed = sess.settings.audit_seed if sess.settings.audit_seed is not None else secrets.randbits(63)
    audit: dict[str, Any] = {"checked": 0, "mismatches": [], "passed": True, "sample_seed": seed,
                             "per_env": per_env, "seconds": 0.0}
    if per_env == 0:
        audit["skipped"] = "audit_episodes is 0"
        return audit
    t0 = time.perf_counter()
    sample = _audit_sample(envs, len(grid), len(seeds), per_env, seed)
    if not sample:
        return audit
    fast_data = sess.fast

    def fast(ep: tuple[int, int, int, int]) -> dict[str, Any]:
        ei, oi, si, q = ep
        answers, tokens, opened, fps = fast_data[(ei, oi)]
        return {"answer": answers[si][q], "tokens": int(tokens[si, q]), "opened": int(opened[si, q]),
                "fp": int(fps[si, q])}

    n_workers = max(1, min(sess.settings.workers or os.cpu_count() or 1, len(sample)))
    procs = [sess.spawn("audit") for _ in range(n_workers)]
    shares = [[(k, ep) for k, ep in enumerate(sample) if k % n_workers == w] for w in range(n_workers)]
    events: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_drive_audit, daemon=True,
                                args=(sess, p, source, share, envs, grid, seeds, fast, events))
               for p, share in zip(procs, shares, strict=True)]
    for t in threads:
        t.start()
    checked, idle = 0, 0
    try:
        while checked < len(sample):
            kind, a, b = _wait(sess, events, " (during the integrity audit)")
            if kind == "audited":
                checked += 1
                if b is not None:
                    ei, oi, si, q = a
                    audit["mismatches"].append({"env": envs[ei].name, "options": options_label(grid[oi]),
                                                "seed": seeds[si], "question": q, "reason": b})
            elif kind == "stop":
                stop: _Stop = b
                if stop.ended_by in ("timeout",):
                    raise stop
                audit["error"] = f"the audit re-run failed: {stop.error}"
                if stop.traceback_text:
                    audit["traceback"] = stop.traceback_text
                break
            elif kind == "idle":
                idle += 1
                if idle == len(procs):
                    break
    finally:
        complete = checked == len(sample)
        sess.stopping.set()
        for p in procs:
            sess.retire(p, graceful=complete)
        for t in threads:
            t.join(timeout=2)
    audit["checked"] = checked
    audit["passed"] = checked == len(sample) and not audit["mismatches"] and "error" not in audit
    audit["seconds"] = round(time.perf_counter() - t0, 3)
    if audit["mismatches"] or "error" in audit:
        audit["note"] = AUDIT_NOTE
    return audit


# ----- level "off": in-process, for tests of trusted code ----------------------------------------------------------
def _direct_call(question: TracedReplayQuestion) -> Callable[..., Any]:
    def call(op: str, *args: int) -> Any:
        ok, result = _exec.answer_call(question, op, list(args))
        if not ok:
            _exec.raise_remote(result)
        return result

    return call


def _run_in_process(source: str, envs: list[ReplayEnvironment], grid: list[dict[str, Any]], seeds: list[int],
                    settings: SandboxSettings, progress: Callable[[int, int], None] | None, t0: float) -> CandidateRun:
    run = CandidateRun(False, None, None)
    run.isolation = {"level": "off", "requested": "off", "bwrap": False, "mount_ns": False, "net_ns": False,
                     "pid_ns": False, "uid": os.geteuid() if hasattr(os, "geteuid") else None, "landlock_abi": 0,
                     "seccomp": False, "no_new_privs": False, "rlimits": {}, "timeout_s": None, "ended_by": None,
                     "workers": {}, "notes": ["in-process: no isolation, no timeout"], "errors": {}}
    out = _exec.CappedText(settings.max_output_bytes)

    @contextlib.contextmanager
    def captured() -> Any:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield

    fast_data: dict[tuple[int, int], tuple] = {}
    try:
        with captured():
            target = _exec.load_candidate(source, None)
        safe = [e.without_gold() for e in envs]
        units = [(ei, oi) for ei in range(len(envs)) for oi in range(len(grid))]
        for n, (ei, oi) in enumerate(units, 1):
            with captured():
                res = _exec.run_unit(safe[ei], target, grid[oi], seeds, None)
            key = (envs[ei].name, options_label(grid[oi]))
            run.results[key] = Episodes(np.asarray(seeds, dtype=np.int64), res["answers"], res["tokens"], None,
                                        res["seconds"])
            run.opened[key] = res["opened"]
            fast_data[(ei, oi)] = (res["answers"], res["tokens"], res["opened"], res["fp"])
            if progress is not None:
                progress(n, len(units))
        with captured():
            run.audit = _audit_in_process(target, envs, grid, seeds, settings, fast_data)
        run.ok = True
    except _exec.CandidateFailure as f:
        run.error, run.traceback = f.message, f.traceback_text
        run.isolation["ended_by"] = "oom" if f.kind == "memory" else "error"
        run.audit = run.audit or {"checked": 0, "mismatches": [], "passed": False,
                                  "skipped": "the evaluation did not complete"}
    finally:
        sys.modules.pop(_exec.MODULE_NAME, None)
    run.stdout_tail = out.take()
    run.seconds = time.perf_counter() - t0
    return run


def _audit_in_process(target: Any, envs: list[ReplayEnvironment], grid: list[dict[str, Any]], seeds: list[int],
                      settings: SandboxSettings, fast_data: dict) -> dict[str, Any]:
    per_env = max(0, int(settings.audit_episodes))
    seed = settings.audit_seed if settings.audit_seed is not None else secrets.randbits(63)
    audit: dict[str, Any] = {"checked": 0, "mismatches": [], "passed": True, "sample_seed": seed,
                             "per_env": per_env, "seconds": 0.0}
    if per_env == 0:
        audit["skipped"] = "audit_episodes is 0"
        return audit
    t0 = time.perf_counter()
    for ei, oi, si, q in _audit_sample(envs, len(grid), len(seeds), per_env, seed):
        env = envs[ei]
        question = env.question(q, seeds[si], trace=True)
        try:
            answer, failure = _exec.run_audit_episode(target, grid[oi], _direct_call(question),  # type: ignore[arg-type]
                                                      int(env.interval[q])), None
        except _exec.CandidateFailure as f:
            answer, failure = None, f.as_dict()
        answers, tokens, opened, fps = fast_data[(ei, oi)]
        fast = {"answer": answers[si][q], "tokens": int(tokens[si, q]), "opened": int(opened[si, q]),
                "fp": int(fps[si, q])}
        reason = _compare(fast, answer, failure, question)  # type: ignore[arg-type]
        audit["checked"] += 1
        if reason is not None:
            audit["mismatches"].append({"env": env.name, "options": options_label(grid[oi]), "seed": seeds[si],
                                        "question": q, "reason": reason})
    audit["passed"] = not audit["mismatches"]
    audit["seconds"] = round(time.perf_counter() - t0, 3)
    if audit["mismatches"]:
        audit["note"] = AUDIT_NOTE
    return audit


# ----- one traced episode ---------------------------------------------------------------------------------------
def trace_episode(
    source: str,
    env: ReplayEnvironment,
    options: dict[str, Any],
    seed: int,
    question: int,
    settings: SandboxSettings = SandboxSettings(),  # noqa: B008
) -> tuple[str | None, int, list[tuple[str, int, int, str | None]]]:
    """(answer, tokens, events) of one episode, the controller running in a sandbox worker that holds no replay
    data: the parent answers each call from the real question, so the events and costs are the parent's own
    record. Raises SandboxError when the candidate fails or the sandbox refuses."""
    mode = _mode(settings)
    options = dict(options)
    problem = _check_inputs(source, [env], [options], settings)
    if problem is not None:
        raise SandboxError(problem)
    if not 0 <= int(question) < env.n_questions:
        raise ValueError(f"question {question} is out of range: {env.name} has {env.n_questions} questions")
    real = env.question(int(question), int(seed), trace=True)
    interval = int(env.interval[int(question)])
    if mode == "off":
        out = _exec.CappedText(settings.max_output_bytes)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                target = _exec.load_candidate(source, None)
                answer = _exec.run_audit_episode(target, options, _direct_call(real), interval)  # type: ignore[arg-type]
        except _exec.CandidateFailure as f:
            raise SandboxError(f.message, f.traceback_text, {"level": "off"}) from None
        finally:
            sys.modules.pop(_exec.MODULE_NAME, None)
        return answer, real._cost, list(real.events)  # type: ignore[attr-defined]
    sess = _Session(settings, mode)
    proc: _Proc | None = None
    result: tuple[str | None, dict[str, Any] | None] | None = None
    error: _Stop | None = None
    done = threading.Event()

    def work() -> None:
        nonlocal result, error
        try:
            assert proc is not None
            proc.handshake(source)
            result = _remote_episode(proc, real, options, interval, 0)  # type: ignore[arg-type]
        except _Stop as e:
            error = e
        except (OSError, EOFError) as e:
            error = proc.died(str(e)) if proc is not None else _Stop(str(e))
        except Exception as e:  # noqa: BLE001
            error = _Stop(f"sandbox error: {type(e).__name__}: {e}")
        finally:
            done.set()

    try:
        sess.check_expected()
        proc = sess.spawn("trace")
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        if not done.wait(timeout=max(0.0, sess.remaining())):
            error = _Stop(f"timed out after {settings.timeout_s:g} s", None, "timeout")
            sess.stop_all()
        thread.join(timeout=2)
    except _Stop as e:
        error = e
    finally:
        sess.stop_all()
        sess.close()
    if error is None and result is not None and result[1] is not None:
        f = result[1]
        error = _Stop(str(f.get("error")), f.get("traceback"), "error")
    if error is not None or result is None:
        err = error or _Stop("the episode did not complete")
        iso = sess.isolation(err.ended_by)
        tail = sess.stdout_tail()
        raise SandboxError(err.error, (err.traceback_text or "") + (f"\n[output]\n{tail}" if tail else "") or None, iso)
    return result[0], real._cost, list(real.events)
