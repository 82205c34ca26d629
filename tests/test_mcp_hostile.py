"""Hostile candidates through a real MCP client against `autotts mcp` (stdio), at every isolation level here.

What an agent that wants a higher score would try, submitted the way an agent submits: shared memory and the page
cache as channels between workers, peeking at private state, memory across episodes, filling scratch space,
carrying held-out answers from an `autotts heldout` run to a later search run, and outliving a killed server.
Each is refused or harmless; the numbers recorded are what the candidate's honest actions earn.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_helpers import REPO, make_study, text

from core.sandbox import probe_isolation

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")]

PROBE = probe_isolation()
LEVELS = {
    "bwrap": ({"use_bwrap": True}, PROBE["bwrap_usable"], "strong"),
    "native": ({"use_bwrap": False, "use_native_namespaces": True}, PROBE["native_namespaces"], "strong"),
    "medium": ({"use_bwrap": False, "use_native_namespaces": False}, PROBE["landlock_abi"] > 0 and PROBE["seccomp"],
               "medium"),
}
every_level = pytest.mark.parametrize("level", [
    pytest.param(k, marks=pytest.mark.skipif(not ok, reason=f"level {k} is not available here"))
    for k, (_, ok, _) in LEVELS.items()])

# The server's static check refuses `.__globals__` and friends written as attributes; names computed at run
# time get past it (it is a courtesy, not the boundary), as an agent would find.
ESCAPE = '''
import operator


def dunder(name):
    return "__" + name + "__"


def _find(name):
    base = operator.attrgetter(dunder("class") + "." + dunder("base"))(())
    for c in operator.methodcaller(dunder("subclasses"))(base):
        if operator.attrgetter(dunder("name"))(c) == name:
            return c
    raise LookupError(name)

OS = operator.attrgetter(dunder("init") + "." + dunder("globals"))(_find("_wrap_close"))
IMPORT = OS[dunder("builtins")][dunder("import")]
CTYPES = OS["sys"].modules["ctypes"]
LIBC = CTYPES.CDLL(None, use_errno=True)
LIBC.syscall.restype = CTYPES.c_long
'''

ATTACKS = ESCAPE + '''
import json
import operator

DONE = []


def attempt(fn):
    try:
        r = fn()
        return "ok" if r is None or (isinstance(r, int) and r >= 0) else "denied"
    except Exception:
        return "denied"


def attacks(question):
    gc, sys = IMPORT("gc"), IMPORT("sys")
    out = {}
    out["shmget"] = attempt(lambda: LIBC.syscall(29, 0x5EC, 1 << 20, 0o1666))
    out["msgget"] = attempt(lambda: LIBC.syscall(68, 0x5EC, 0o1666))
    out["fadvise"] = attempt(lambda: OS["posix_fadvise"](0, 0, 0, 4))
    out["preadv2"] = attempt(lambda: OS["preadv"](0, [bytearray(8)], 0, 8))
    out["mincore"] = attempt(lambda: LIBC.syscall(27, 0, 4096, 0))
    out["scratch"] = attempt(lambda: OS["write"](OS["open"]("fill", OS["O_CREAT"] | OS["O_WRONLY"]), b"x" * (1 << 20)))
    out["tmp"] = attempt(lambda: OS["open"]("/tmp/fill", OS["O_CREAT"] | OS["O_WRONLY"]))
    found = []
    for name in ("answers", "order", "tokens", "costs"):
        try:
            found.append(operator.attrgetter("_" + name)(question))
        except AttributeError:
            pass
    frame = operator.attrgetter("_get" + "frame")(sys)()
    while frame is not None:
        found += [v for v in operator.attrgetter("f_" + "locals")(frame).values()
                  if type(v).__name__ in ("ReplayEnvironment", "ReplayQuestion")]
        frame = operator.attrgetter("f_" + "back")(frame)
    found += [o for o in gc.get_objects() if type(o).__name__ in ("ReplayEnvironment", "ReplayQuestion")]
    out["found"] = len(found)
    print("REPORT:" + json.dumps(out, sort_keys=True))


SEEN = {}


class Hostile:
    def __init__(self, beta=0.5):
        self.beta = beta

    def solve(self, question):
        if not DONE:
            DONE.append(1)
            attacks(question)
        a = question.get_new_branch_final_answer()
        b = question.get_new_branch_final_answer()
        key = (a, b, question.fresh_branches_left)
        if key in SEEN:  # the same question met twice in one worker: a memoriser would answer for free here
            print("REPEAT")
        SEEN[key] = True
        return a
'''

HONEST = '''
class Honest:
    def __init__(self, beta=0.5):
        self.beta = beta

    def solve(self, question):
        a = question.get_new_branch_final_answer()
        question.get_new_branch_final_answer()
        return a
'''

LEAK_WRITER = ESCAPE + '''
class Writer:
    """Prints what it is shown and tries to leave it where a later run could find it."""

    def __init__(self, beta=0.5):
        self.beta = beta

    def solve(self, question):
        answers = [question.get_new_branch_final_answer() for _ in range(3)]
        note = ("LEAK:" + ",".join(answers)).encode()
        LIBC.syscall(29, 0xA11, 4096, 0o1666)
        for path in ("/dev/shm/autotts-leak", "/tmp/autotts-leak", "autotts-leak"):
            try:
                OS["write"](OS["open"](path, OS["O_CREAT"] | OS["O_WRONLY"]), note)
            except OSError:
                pass
        print(note.decode())
        return answers[0]
'''

LEAK_READER = ESCAPE + '''
GOT = []


class Reader:
    def __init__(self, beta=0.5):
        self.beta = beta

    def solve(self, question):
        if not GOT:
            GOT.append(LIBC.syscall(29, 0xA11, 4096, 0))
            for path in ("/dev/shm/autotts-leak", "/tmp/autotts-leak", "autotts-leak"):
                try:
                    GOT.append(OS["read"](OS["open"](path, OS["O_RDONLY"]), 200))
                except OSError:
                    pass
            print("GOT:" + repr(GOT))
        return question.get_new_branch_final_answer()
'''


def _study(tmp_path: Path, level: str) -> Path:
    folder = tmp_path / "study"
    study = make_study(folder, n_search=1, n_questions=4, n_branches=24, n_seeds=3, betas=(0.0, 1.0), timeout_s=60)
    study.sandbox = {**study.sandbox, **LEVELS[level][0]}
    study.save()
    return folder


def _server(folder: Path) -> StdioServerParameters:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return StdioServerParameters(command=sys.executable, args=["-m", "autotts", "mcp", str(folder)], env=env,
                                 cwd=str(folder.parent))


async def _run(folder: Path, code: str, name: str) -> str:
    async with Client(_server(folder)) as c:
        r = await c.call_tool("run_controller", {"code": code, "name": name})
        assert not r.is_error, text(r)
        return text(r)


@every_level
async def test_every_trick_is_refused_or_harmless(tmp_path, level):
    folder = _study(tmp_path, level)
    hostile = await _run(folder, ATTACKS, "hostile")
    honest = await _run(folder, HONEST, "honest")
    report = orjson.loads(re.findall(r"REPORT:(\{.*?\})", hostile)[-1])
    assert report == {"shmget": "denied", "msgget": "denied", "fadvise": "denied", "preadv2": "denied",
                      "mincore": "denied", "scratch": "denied", "tmp": "denied", "found": 0}, report
    assert "REPEAT" not in hostile
    assert f"sandbox {LEVELS[level][2]} (scores by construction" in hostile and "audit passed" in hostile
    # the same actions earn the same numbers: nothing the attacks did changed a score
    table = re.compile(r"^\s+\d\S*\s+([\d.]+)\s+([\d,]+)", re.M)
    assert table.findall(hostile) == table.findall(honest) != []


@every_level
async def test_heldout_answers_do_not_reach_a_later_search_run(tmp_path, level):
    folder = _study(tmp_path, level)
    first = await _run(folder, LEAK_WRITER, "writer")
    run_id = re.search(r"(r\d{4}) 'writer'", first).group(1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    held = subprocess.run([sys.executable, "-m", "autotts", "heldout", str(folder), run_id], capture_output=True,
                          text=True, env=env, timeout=300)
    assert held.returncode == 0, held.stderr
    assert "LEAK:" not in held.stdout + held.stderr  # a held-out run's output is discarded
    with sqlite3.connect(folder / "runs.sqlite") as db:
        tails = [row[0] for row in db.execute("SELECT stdout_tail FROM runs")]
    assert all(t is None or "LEAK:" not in t or t in first for t in tails)
    later = await _run(folder, LEAK_READER, "reader")
    assert "GOT:[-1]" in later, later  # no segment, no file: nothing survived either run
    assert "recorded after the held-out evaluation of " + run_id in later
    assert not any(os.path.exists(p) for p in ("/dev/shm/autotts-leak", "/tmp/autotts-leak"))


def _sandbox_processes() -> list[int]:
    from core.sandbox.processes import BOOTSTRAP

    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if BOOTSTRAP.encode() in f.read():
                    with open(f"/proc/{entry}/stat") as g:
                        if g.read().rsplit(")", 1)[1].split()[0] != "Z":
                            out.append(int(entry))
        except (OSError, ValueError):
            continue
    return out


@every_level
def test_no_worker_outlives_a_killed_mcp_server(tmp_path, level):
    folder = _study(tmp_path, level)
    spin = "class Spin:\n    def __init__(self, beta=0.5):\n        pass\n\n    def solve(self, q):\n" \
           "        while True:\n            pass\n"
    script = tmp_path / "client.py"
    script.write_text(f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from mcp import Client
from test_mcp_hostile import _server
from pathlib import Path

async def main():
    async with Client(_server(Path({str(folder)!r}))) as c:
        await c.call_tool("run_controller", {{"code": {spin!r}, "name": "spin"}})

asyncio.run(main())
""")
    client = subprocess.Popen([sys.executable, str(script)], cwd=str(REPO), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_sandbox_processes()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_sandbox_processes()) >= 3
        server = [p for p in _server_pids(folder)]
        assert server, "the autotts mcp server process was not found"
        for pid in server:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _sandbox_processes()
    finally:
        os.killpg(client.pid, signal.SIGKILL)
        client.wait()


def _server_pids(folder: Path) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"mcp" in args and str(folder).encode() in args:
            out.append(int(entry))
    return out

