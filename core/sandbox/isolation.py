"""What isolation this machine offers, how a worker proved what it got, and what each level leaves open.

Levels (weakest first; a run reports the weakest level any of its workers reported):

* **strong** — own mount, network, pid and IPC namespaces (bubblewrap's, or the sandbox's own `unshare` when
  bubblewrap is missing) + uid 65534 when the server is root + Landlock (no file at all) + seccomp + rlimits;
* **medium** — no namespaces: Landlock + seccomp + rlimits (+ the uid drop);
* **weak** — seccomp + rlimits; **minimal** — rlimits, process-group kill, scrubbed environment.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.sandbox import _landlock
from core.sandbox.reports import LEVELS

MODES = ("strict", "auto", "off")
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
"""The `core` package directory (bound read-only into bubblewrap; workers import from it)."""
WORKER_ENV = {
    "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUTF8": "1",
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}
"""The workers' whole environment (never the server's, which may hold API keys). A fixed hash seed makes set
iteration over strings the same in every worker, so two runs of an honest controller agree."""

ALWAYS_OPEN = ("timing channels between workers (CPU and cache contention, clocks) are not closed at any level: a "
               "candidate can still signal slowly to another worker running at the same time")
OPEN_AT = {
    "medium": ("no namespaces of their own (install bubblewrap, or allow unshare): workers share the host's pid, "
               "network and IPC namespaces — seccomp still denies IPC, sockets and signals"),
    "weak": "no Landlock (Linux ≥ 5.13): files the worker's uid can read are readable",
    "minimal": "no seccomp: sockets, IPC, the page cache and other processes are reachable",
}


def unprotected(level: str | None) -> list[str]:
    """What a level does not protect against, weakest level's gaps included."""
    out = [ALWAYS_OPEN]
    if level in LEVELS:
        for lv in ("medium", "weak", "minimal"):
            if LEVELS.index(level) <= LEVELS.index(lv):
                out.append(OPEN_AT[lv])
    elif level == "off":
        out.append("level off runs the candidate in the server's process: trusted code only")
    return out


def site_dirs() -> list[str]:
    """Where the worker's third-party imports live (numpy, scipy, greenlet, orjson)."""
    import greenlet
    import numpy
    import orjson
    import scipy

    return list(dict.fromkeys(str(Path(str(m.__file__)).resolve().parents[1]) for m in (numpy, scipy, greenlet, orjson)))


def read_paths() -> list[str]:
    paths = [sys.base_prefix, sys.prefix, *site_dirs(), PACKAGE_DIR]
    return list(dict.fromkeys(str(Path(p).resolve()) for p in paths))


def _libseccomp_path() -> str | None:
    """Load libseccomp here once and return the file it came from (the zygote opens it by path)."""
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


def bwrap_prefix(bwrap: str, euid: int) -> list[str]:
    """bubblewrap arguments: only the interpreter, the site directories and `core` exist, read-only."""
    # --as-pid-1: the zygote is pid 1 (as with the sandbox's own namespaces), so its workers die with it, and
    # bubblewrap reaps it, so the workers' CPU time reaches the parent's accounting
    args = [bwrap, "--unshare-ipc", "--unshare-pid", "--as-pid-1", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if euid == 0:  # SYS_ADMIN lets each worker make its own IPC namespace, KILL lets the zygote end workers
        # that run as nobody; the uid drop then clears every cap in the worker
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_KILL"]
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
    for p in sorted(read_paths(), key=len):
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
    return args + ["--chdir", "/"]


def _native_namespaces_usable() -> tuple[bool, str | None]:
    """Whether a process here may make its own namespaces (root, or unprivileged user namespaces)."""
    code = "import runpy, sys; runpy.run_path(sys.argv[1])['isolate_tree'](); print('ok')"
    try:
        r = subprocess.run([sys.executable, "-S", "-c", code, str(Path(__file__).with_name("_namespaces.py"))],
                           capture_output=True,
                           timeout=30, env=dict(WORKER_ENV), cwd="/")
    except (OSError, subprocess.SubprocessError) as e:
        return False, str(e)
    if r.returncode == 0 and r.stdout.strip() == b"ok":
        return True, None
    return False, (r.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {r.returncode}"])[-1]


def clean_leftovers(tmp: str | None = None) -> list[str]:
    """Remove what a killed server left in the temporary folder; returns what was removed.

    Workers write nothing anywhere, so the only leftovers are this module's probe folders (named after the pid
    that made them: removed once that process is gone) and the scratch folders of releases whose workers had one
    (`autotts-sbx-*`, removed an hour after their last change)."""
    tmp = tmp or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(tmp)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(tmp, name)
        stale = False
        if name.startswith("autotts-probe-"):
            pid = name.split("-")[2]
            stale = pid.isdigit() and not os.path.exists(f"/proc/{pid}")
        elif name.startswith("autotts-sbx-"):
            with contextlib.suppress(OSError):
                stale = now - os.stat(path).st_mtime > 3600
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@functools.lru_cache(maxsize=1)
def probe_isolation() -> dict[str, Any]:
    """What this machine offers (cached): bubblewrap usable for our interpreter, native namespaces, Landlock ABI,
    libseccomp, euid, and the level a run should reach."""
    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    linux = sys.platform.startswith("linux")
    info: dict[str, Any] = {"platform": sys.platform, "euid": euid, "bwrap": None, "bwrap_usable": False,
                            "bwrap_error": None, "native_namespaces": False, "native_error": None,
                            "landlock_abi": _landlock.abi_version() if linux else 0, "seccomp": False,
                            "libseccomp": None}
    if linux:
        info["libseccomp"] = _libseccomp_path()
        info["seccomp"] = info["libseccomp"] is not None
        info["native_namespaces"], info["native_error"] = _native_namespaces_usable()
        bwrap = shutil.which("bwrap")
        info["bwrap"] = bwrap
        if bwrap is None:
            info["bwrap_error"] = "bubblewrap is not installed (apt-get install bubblewrap)"
        else:
            clean_leftovers()
            scratch = tempfile.mkdtemp(prefix=f"autotts-probe-{os.getpid()}-")
            try:
                cmd = bwrap_prefix(bwrap, euid) + [sys.executable, "-S", "-c", "print('ok')"]
                r = subprocess.run(cmd, capture_output=True, timeout=30, env=dict(WORKER_ENV), cwd=scratch)
                info["bwrap_usable"] = r.returncode == 0 and r.stdout.strip() == b"ok"
                if not info["bwrap_usable"]:
                    info["bwrap_error"] = (r.stderr.decode(errors="replace").strip() or f"exit status {r.returncode}")[:500]
            except (OSError, subprocess.SubprocessError) as e:
                info["bwrap_error"] = str(e)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    info["expected_level"] = expected_level(info, use_bwrap=True, use_native=True)
    return info


def expected_level(info: dict[str, Any], *, use_bwrap: bool, use_native: bool) -> str:
    if not info["platform"].startswith("linux"):
        return "minimal"
    landlock, seccomp = info["landlock_abi"] > 0, info["seccomp"]
    namespaces = (info["bwrap_usable"] and use_bwrap) or (info["native_namespaces"] and use_native)
    if namespaces and landlock and seccomp:
        return "strong"
    if landlock and seccomp:
        return "medium"
    return "weak" if seccomp else "minimal"


def parent_namespaces() -> dict[str, str]:
    out = {}
    for ns in ("mnt", "net", "pid", "ipc"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            out[ns] = ""
    return out


def level_from_report(report: dict[str, Any], parent_ns: dict[str, str], limits: dict[str, int]) -> dict[str, Any]:
    """The level a worker's self-report proves (namespaces compared with the server's own)."""
    ns = report.get("ns", {}) if isinstance(report.get("ns"), dict) else {}

    def differs(k: str) -> bool:
        return bool(ns.get(k)) and bool(parent_ns.get(k)) and ns.get(k) != parent_ns.get(k)

    rl = report.get("rlimits", {}) if isinstance(report.get("rlimits"), dict) else {}
    rlimits_ok = all(rl.get(k) == v for k, v in limits.items())
    landlock = int(report.get("landlock_abi") or 0) > 0
    seccomp = report.get("seccomp_mode") == "2"
    uid_ok = report.get("euid") != 0 or report.get("cap_eff") == "0000000000000000"
    mount_ns, net_ns, pid_ns, ipc_ns = differs("mnt"), differs("net"), differs("pid"), differs("ipc")
    if mount_ns and net_ns and pid_ns and ipc_ns and landlock and seccomp and uid_ok and rlimits_ok:
        level = "strong"
    elif landlock and seccomp and rlimits_ok:
        level = "medium"
    elif seccomp and rlimits_ok:
        level = "weak"
    else:
        level = "minimal"
    errors = report.get("errors", {})
    return {"level": level, "mount_ns": mount_ns, "net_ns": net_ns, "pid_ns": pid_ns, "ipc_ns": ipc_ns,
            "uid": report.get("euid"), "landlock_abi": int(report.get("landlock_abi") or 0), "seccomp": seccomp,
            "no_new_privs": report.get("no_new_privs") == "1", "rlimits": rl,
            "errors": {str(k): str(v)[:300] for k, v in errors.items()} if isinstance(errors, dict) else {}}
