"""The sandboxed candidate runner: real worker processes, real attacks, no mocks.

Attack candidates reach past the import guard the way real escapes would (through `object.__subclasses__()` to
`os`'s globals), so these tests exercise the operating-system layers (bubblewrap, Landlock, seccomp, rlimits,
the uid drop), not just the guard. Small synthetic environments and few seeds keep them quick.
"""

from __future__ import annotations

import os
import random
import re
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.environment import ReplayEnvironment
from core.evaluate import evaluate, score
from core.sandbox import (
    CandidateRun,
    SandboxError,
    SandboxSettings,
    probe_isolation,
    run_candidate,
    trace_episode,
)
from core.store import environment_from_records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox layers are Linux-only")

GOLD_MARK = "GOLD-ONLY-IN-PARENT"
QUESTION_MARK = "SECRET QUESTION TEXT"


def make_env(name: str = "toy/synthetic", n_questions: int = 4, seed: int = 0) -> ReplayEnvironment:
    """Questions with 12–20 branches of 0–8 probes; the gold answer is the most common final answer."""
    rng = random.Random(seed)
    records = []
    for q in range(n_questions):
        gold = str(q + 10)
        pool = [gold] * 5 + [str(q + 20), str(q + 30), str(q + 40)]
        branches = []
        for _ in range(rng.randint(12, 20)):
            n = rng.randint(0, 8)
            probes = [rng.choice(pool) for _ in range(n)]
            branches.append([probes, 100 * n + rng.randint(1, 400), rng.choice(pool)])
        records.append({"question": f"{QUESTION_MARK} {q}", "gold_answer": gold, "interval": 100,
                        "branches": branches})
    # One question whose gold answer no branch ever says: it must never reach a worker.
    records.append({"question": f"{QUESTION_MARK} x", "gold_answer": GOLD_MARK, "interval": 100,
                    "branches": [[["1"], 150, "1"], [["2", "1"], 260, "2"], [[], 80, "1"]]})
    return environment_from_records(records, name=name)


ENV = make_env()
# AUTOTTS_TEST_SANDBOX_BWRAP=0 runs the single-level tests without bubblewrap (the sandbox's own namespaces).
USE_BWRAP = os.environ.get("AUTOTTS_TEST_SANDBOX_BWRAP", "1") != "0"
QUICK = SandboxSettings(timeout_s=20, workers=2, audit=False, use_bwrap=USE_BWRAP)
PROBE = probe_isolation()
BWRAP = PROBE["bwrap_usable"] and USE_BWRAP

# Every isolation level this machine can run: the hostile candidates below are run at each.
LEVEL_SETTINGS = {
    "bwrap": replace(QUICK, use_bwrap=True),
    "native": replace(QUICK, use_bwrap=False, use_native_namespaces=True),
    "medium": replace(QUICK, use_bwrap=False, use_native_namespaces=False),
}
EXPECTED_LEVEL = {"bwrap": "strong", "native": "strong", "medium": "medium"}
AVAILABLE = {"bwrap": bool(PROBE["bwrap_usable"]), "native": bool(PROBE["native_namespaces"]),
             "medium": PROBE["landlock_abi"] > 0 and PROBE["seccomp"]}
every_level = pytest.mark.parametrize("level", [
    pytest.param(k, marks=pytest.mark.skipif(not v, reason=f"level {k} is not available on this machine"))
    for k, v in AVAILABLE.items()])


def run(source: str, settings: SandboxSettings = QUICK, seeds=range(2), options=None, env=ENV) -> CandidateRun:
    return run_candidate(source, [env], options or [{}], seeds=seeds, settings=settings)


# ----- candidates -----------------------------------------------------------------------------------------------
# CMC as a standalone candidate (only the standard library and core.primitives): one copy, shared with the
# MCP tests and the run_controller benchmark.
CMC_SOURCE = (Path(__file__).parent / "data" / "cmc_candidate.py").read_text()

DATACLASS_SOURCE = """
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    reads: int


class FirstReads:
    def __init__(self, beta=0.5):
        self.settings = Settings(reads=1 + round(2 * beta))

    def solve(self, question):
        answers = [question.get_new_branch_final_answer() for _ in range(self.settings.reads)]
        return max(answers, key=answers.count)
"""

SIMPLE = '''
from core.primitives import majority

class FirstThree:
    def __init__(self, n=3):
        self.n = n

    def solve(self, question):
        answers = []
        for _ in range(min(self.n, question.fresh_branches_left)):
            answers.append(question.get_new_branch_final_answer())
        return majority(answers)
'''

# Attack candidates get at `os` without importing it, as a real escape would.
ESCAPE = '''
def _find(name):
    for c in ().__class__.__base__.__subclasses__():
        if c.__name__ == name:
            return c
    raise LookupError(name)

OS = _find("_wrap_close").__init__.__globals__
IMPORT = OS["__builtins__"]["__import__"]
'''


def attack(body: str) -> str:
    """A controller whose solve() runs `body` and reports what happened by raising RuntimeError(repr(result))."""
    return ESCAPE + "\nclass Attack:\n    def solve(self, question):\n" + textwrap.indent(textwrap.dedent(body), " " * 8)


def attack_result(r: CandidateRun) -> str:
    assert not r.ok
    assert r.error is not None and r.traceback is not None
    return r.traceback.strip().splitlines()[-1]


# ----- isolation --------------------------------------------------------------------------------------------------
def test_probe_isolation_reports_capabilities():
    info = probe_isolation()
    assert info is probe_isolation()  # cached
    assert set(info) >= {"bwrap", "bwrap_usable", "landlock_abi", "seccomp", "euid", "expected_level"}
    assert info["expected_level"] in ("strong", "medium", "weak", "minimal")


@every_level
def test_isolation_report_contents(level):
    r = run(SIMPLE, LEVEL_SETTINGS[level])
    assert r.ok, r.error
    iso = r.isolation
    assert iso.ended_by is None and iso.timeout_s == QUICK.timeout_s and iso.scoring == "by construction"
    assert iso.rlimits["as_mb"] == QUICK.memory_mb and iso.rlimits["nofile"] == 64 and iso.rlimits["fsize_mb"] == 0
    assert iso.rlimits["cpu_s"] == int(np.ceil(QUICK.timeout_s)) + 1 and iso.rlimits["core"] == 0
    assert iso.seccomp and iso.no_new_privs
    assert iso.landlock_abi == PROBE["landlock_abi"] > 0
    assert iso.uid != 0 or PROBE["euid"] != 0  # root drops to nobody
    assert iso.level == EXPECTED_LEVEL[level]
    assert any("timing channels" in u for u in iso.unprotected)
    if iso.level == "strong":
        assert iso.mount_ns and iso.net_ns and iso.pid_ns and iso.ipc_ns
        assert iso.namespaces == ("bwrap" if level == "bwrap" else "native") and iso.bwrap == (level == "bwrap")
    else:
        assert not (iso.mount_ns or iso.net_ns or iso.pid_ns) and iso.namespaces is None
        assert any("below the strongest level" in n for n in iso.notes)
        assert any("no namespaces of their own" in u for u in iso.unprotected)


def test_medium_level_without_namespaces_still_blocks_files():
    r = run(attack('''
        out = []
        for p in ("/etc/passwd", "/proc/1/environ"):
            try:
                out.append(OS["read"](OS["open"](p, OS["O_RDONLY"]), 20))
            except OSError as e:
                out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''), LEVEL_SETTINGS["medium"])
    assert r.isolation.level == "medium" and not r.isolation.bwrap and not r.isolation.mount_ns
    assert attack_result(r) == "RuntimeError: ['PermissionError', 'PermissionError']"


def test_strict_refuses_below_required_level_before_spawning():
    t = time.perf_counter()
    r = run(SIMPLE, SandboxSettings(level="strict", use_bwrap=False, use_native_namespaces=False,
                                    min_level="strong", audit=False))
    assert not r.ok and "below the required 'strong'" in r.error
    assert r.isolation.workers == {"zygote": 0, "cells": 0} and time.perf_counter() - t < 1.0


def test_environment_variable_overrides_level(monkeypatch):
    monkeypatch.setenv("AUTOTTS_SANDBOX", "off")
    r = run(SIMPLE)
    assert r.ok and r.isolation.level == "off"
    monkeypatch.setenv("AUTOTTS_SANDBOX", "bogus")
    with pytest.raises(SandboxError, match="not one of strict, auto, off"):
        run(SIMPLE)


# ----- exactness ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cmc_candidate_matches_builtin_and_passes_audit():
    seeds = range(4)
    env2 = make_env("toy/second", n_questions=3, seed=1)
    settings = replace(QUICK, timeout_s=60, workers=3, audit=True)
    calls = []
    r = run_candidate(CMC_SOURCE, [ENV, env2], [{"beta": 0.5}, {"beta": 0.2}], seeds=seeds, settings=settings,
                      progress=lambda p: calls.append((p.done, p.total)))
    assert r.ok, (r.error, r.traceback)
    # 2 envs × 2 β × 4 seeds = 16 cells, every one run twice by the audit (a small run is audited whole)
    assert calls == [(k, 32) for k in range(1, 33)]
    for env in (ENV, env2):
        for beta in ("0.5", "0.2"):
            ref = evaluate(env, f"cmc:beta={beta}", seeds)
            episodes = r.results[(env.name, f"beta={beta}")]
            assert episodes.answers == ref.answers
            assert (episodes.tokens == ref.tokens).all()
            mine = score(env, episodes)
            assert (mine.accuracy, mine.avg_tokens) == (ref.accuracy, ref.avg_tokens)
            opened = r.opened[(env.name, f"beta={beta}")]
            assert opened.dtype == np.int32 and opened.shape == (4, env.n_questions) and (opened >= 2).all()
    assert r.audit.passed and r.audit.checked == r.audit.sample_size == 4 * 2 * (ENV.n_questions + env2.n_questions)
    assert r.audit.mismatches == [] and r.cells == 32


def test_off_level_runs_in_process_with_same_results():
    a = run(CMC_SOURCE, replace(QUICK, level="off"), options=[{"beta": 0.4}])
    b = run(CMC_SOURCE, replace(QUICK, workers=1, audit=False), options=[{"beta": 0.4}])
    assert a.ok and b.ok and a.isolation.level == "off" and a.isolation.scoring.startswith("in-process")
    key = (ENV.name, "beta=0.4")
    assert a.results[key].answers == b.results[key].answers
    assert (a.results[key].tokens == b.results[key].tokens).all()
    assert a.audit.passed and a.audit.skipped


def test_trace_episode_records_the_parents_view():
    answer, tokens, events = trace_episode(CMC_SOURCE, ENV, {"beta": 0.5}, seed=3, question=1,
                                           settings=replace(QUICK, timeout_s=20))
    ref = evaluate(ENV, "cmc:beta=0.5", [3])
    assert answer == ref.answers[0][1] and tokens == ref.tokens[0, 1]
    question = ENV.question(1, 3, trace=True)
    from core.controllers.cmc import ConfidenceMomentumController
    ConfidenceMomentumController(beta=0.5).solve(question)
    assert events == question.events and sum(e[2] for e in events) == tokens


def test_trace_episode_reports_failures():
    with pytest.raises(SandboxError, match=r"solve\(\) raised KeyError: 'boom'") as info:
        trace_episode("class C:\n    def solve(self, q):\n        raise KeyError('boom')\n", ENV, {}, 0, 0,
                      replace(QUICK, timeout_s=20))
    assert "line 3, in solve" in info.value.traceback and info.value.isolation.level in ("strong", "medium")
    assert "seed 0, question 0" in str(info.value)  # a trace runs its one episode
    with pytest.raises(SandboxError, match="import of 'socket' is not allowed"):
        trace_episode("import socket\n", ENV, {}, 0, 0, replace(QUICK, timeout_s=20))


@every_level
def test_no_replay_data_reaches_the_worker(level):
    """No environment, no table, no gold, no unrevealed answer string exists anywhere in the worker's memory."""
    r = run(attack('''
        gc = IMPORT("gc")
        envs, tables, strings = 0, 0, set()
        for o in gc.get_objects():
            name = type(o).__name__
            envs += name == "ReplayEnvironment"
            tables += name == "ndarray" and getattr(o, "size", 0) > 100
            if isinstance(o, list):
                strings.update(x for x in o if isinstance(x, str) and x.isdigit())
        raise RuntimeError(repr((envs, tables, sorted(strings))))
    '''), LEVEL_SETTINGS[level])
    envs, tables, strings = eval(attack_result(r).removeprefix("RuntimeError: "))  # noqa: S307 - our own repr
    assert envs == 0 and tables == 0
    assert not {"10", "20", "30", "40", "1", "2"} & set(strings), strings  # no answer of the toy environment


# ----- candidate errors -----------------------------------------------------------------------------------------
def test_syntax_error_names_the_line():
    r = run("class C:\n    def solve(self, q):\n        return q.probe_new(\n")
    assert not r.ok and r.error == "SyntaxError at line 3: '(' was never closed"
    assert "return q.probe_new(" in r.traceback and r.isolation.ended_by == "error"
    r = run("x = 1\x00\n")
    assert not r.ok and r.error == "SyntaxError: source code string cannot contain null bytes"


def test_forbidden_import_at_module_level():
    r = run("import socket\n\nclass C:\n    def solve(self, q):\n        return None\n")
    assert not r.ok
    assert r.error.startswith("import of 'socket' is not allowed in controllers; allowed: ")
    assert "numpy" in r.error and "core.primitives" in r.error
    assert 'File "<candidate>", line 1' in r.traceback


@pytest.mark.parametrize("stmt, name", [("import os", "os"), ("import subprocess", "subprocess"),
                                        ("import ctypes", "ctypes"), ("from numpy import ctypeslib", "numpy.ctypeslib"),
                                        ("from core import store", "core.store"), ("import importlib", "importlib")])
def test_forbidden_import_inside_solve(stmt, name):
    r = run(f"class C:\n    def solve(self, q):\n        {stmt}\n        return None\n")
    assert not r.ok and r.error.startswith(f"import of '{name}' is not allowed in controllers")
    assert re.search(r"seed [01], question 0\)$", r.error), r.error


def test_allowed_imports_work_at_every_level():
    src = (
        "import math, statistics, heapq, json, re\nimport numpy as np\nimport numpy.lib.recfunctions\n"
        "from core.primitives import vote_stats\nfrom core.environment import ReplayQuestion\n" + SIMPLE
    )
    for level in ("auto", "off"):
        r = run(src, replace(QUICK, level=level))
        assert r.ok, (level, r.error)


def test_open_builtin_is_unavailable():
    r = run("class C:\n    def solve(self, q):\n        return open('/etc/passwd').read()\n")
    assert not r.ok and "open() is not available to controllers" in r.error


def test_exception_on_first_question_says_where():
    r = run("class C:\n    def solve(self, q):\n        raise KeyError('boom')\n")
    assert not r.ok
    assert re.fullmatch(rf"solve\(\) raised KeyError: 'boom' \(env {ENV.name}, default options, seed [01], question 0\)",
                        r.error), r.error
    assert r.traceback.startswith("Traceback (candidate frames):")
    assert 'File "<candidate>", line 3, in solve' in r.traceback and "raise KeyError('boom')" in r.traceback
    assert "core/evaluate.py" not in r.traceback and "_exec.py" not in r.traceback


def test_exception_on_last_question_says_where():
    last = ENV.n_questions - 1
    src = '''
class C:
    def solve(self, q):
        if q.fresh_branches_left == 3:  # only the last question has three branches
            return [1, 2][5]
        return q.get_new_branch_final_answer()
'''
    r = run(src, seeds=[7, 8, 9])
    assert not r.ok and r.error.startswith("solve() raised IndexError: list index out of range")
    assert re.search(rf"seed [789], question {last}\)$", r.error), r.error


def test_non_string_answer():
    r = run("class C:\n    def solve(self, q):\n        return 42\n")
    assert not r.ok and r.error.startswith("solve() returned int 42")
    assert re.search(r"seed [01], question 0", r.error) and "return the answer string" in r.error


def test_system_exit_in_solve_is_reported():
    r = run("class C:\n    def solve(self, q):\n        raise SystemExit(3)\n")
    assert not r.ok and r.error.startswith("solve() raised SystemExit: 3") and re.search(r"seed [01], question 0", r.error)


def test_no_controller_and_bad_options():
    r = run("x = 1\n")
    assert not r.ok and "no controller found" in r.error
    r = run(SIMPLE, options=[{"beta": 0.5}])
    assert not r.ok and r.error.startswith("options beta=0.5: FirstThree accepts no option beta")


def test_source_too_large_is_refused_before_spawning():
    t = time.perf_counter()
    r = run("x = 1\n" + "#" * (5 << 20))
    assert not r.ok and "bytes; the limit is 262144 bytes (256 KB)" in r.error
    assert r.isolation.level == "not started" and time.perf_counter() - t < 0.5


def test_printing_megabytes_is_capped_not_an_error():
    src = SIMPLE.replace("answers = []", "answers = []\n        print('x' * 3_000_000)\n        print('END-MARK')")
    settings = replace(QUICK, timeout_s=20, workers=1, audit=False, max_output_bytes=4096)
    r = run(src, settings)
    assert r.ok, r.error
    assert len(r.stdout_tail) < 4096 + 200 and "END-MARK" in r.stdout_tail and "dropped" in r.stdout_tail


def test_writing_to_the_result_channel_cannot_corrupt_it():
    r = run(ESCAPE + SIMPLE.replace("answers = []", "answers = []\n        OS['write'](1, b'\\x00\\xff' * 5000)"))
    assert r.ok, r.error


# ----- resource attacks -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_infinite_loop_times_out():
    t = time.perf_counter()
    r = run("class C:\n    def solve(self, q):\n        while True:\n            pass\n",
            replace(QUICK, timeout_s=2, workers=1))
    assert not r.ok and r.error == "timed out after 2 s (0 of 2 cells done)" and r.isolation.ended_by == "timeout"
    assert time.perf_counter() - t < 4


def test_memory_bomb_hits_the_memory_limit():
    r = run("class C:\n    def solve(self, q):\n        x = []\n        while True:\n"
            "            x.append(bytearray(1 << 24))\n", replace(QUICK, timeout_s=20, workers=1, memory_mb=768))
    assert not r.ok and r.error.startswith("memory limit (768 MB) exceeded") and re.search(r"seed [01], question 0", r.error)
    assert r.isolation.ended_by == "oom" and "MemoryError" in r.traceback


@pytest.mark.slow
def test_catching_memory_error_and_looping_is_still_killed():
    r = run(attack('''
        keep = []
        while True:
            try:
                keep.append(bytearray(64 << 20))
            except MemoryError:
                keep = keep[:-1]
    '''), replace(QUICK, timeout_s=2, workers=1, memory_mb=512))
    assert not r.ok and r.isolation.ended_by == "timeout"


@pytest.mark.slow
def test_signal_handlers_do_not_stop_the_timeout():
    r = run(attack('''
        signal = IMPORT("signal")
        for s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    '''), replace(QUICK, timeout_s=2, workers=1))
    assert not r.ok and r.isolation.ended_by == "timeout"


# ----- escapes ------------------------------------------------------------------------------------------------------
def test_fork_is_blocked():
    r = run(attack('OS["fork"]()'))
    assert attack_result(r) == "PermissionError: [Errno 1] Operation not permitted"


def test_subprocess_and_system_are_blocked(tmp_path):
    marker = tmp_path / "pwned"
    r = run(attack(f'''
        out = [OS["system"]("touch {marker}")]
        try:
            IMPORT("subprocess").run(["/usr/bin/touch", "{marker}"])
            out.append("ran")
        except Exception as e:
            out.append(type(e).__name__)
        try:
            OS["execv"]("/usr/bin/touch", ["touch", "{marker}"])
        except Exception as e:
            out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    result = attack_result(r)
    assert result.startswith("RuntimeError: [32512, ") and "ran" not in result
    assert result.endswith("'PermissionError']") and not marker.exists()


def test_fork_bomb_through_threads_and_multiprocessing_is_blocked():
    r = run(attack('''
        out = []
        t = IMPORT("threading").Thread(target=lambda: out.append("thread ok"))
        t.start()
        t.join()
        for _ in range(3):
            try:
                OS["fork"]()
                out.append("forked")
            except OSError as e:
                out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    assert attack_result(r) == "RuntimeError: ['thread ok', 'PermissionError', 'PermissionError', 'PermissionError']"


def test_reading_host_files_is_blocked():
    import core
    repo = __import__("pathlib").Path(core.__file__).resolve().parents[1]
    paths = ["/etc/passwd", "/etc/shadow", str(repo / "pyproject.toml"), str(repo.parent / "shared"),
             str(repo / "tests" / "test_sandbox.py"), "/proc/1/environ", "/root/.bashrc"]
    r = run(attack(f'''
        out = []
        for p in {paths!r}:
            try:
                out.append(OS["read"](OS["open"](p, OS["O_RDONLY"]), 20))
            except OSError as e:
                out.append(type(e).__name__)
        try:
            out.append(OS["listdir"]("/"))
        except OSError as e:
            out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    result = eval(attack_result(r).removeprefix("RuntimeError: "))  # noqa: S307 - our own repr of names
    assert all(x in ("FileNotFoundError", "PermissionError") for x in result), result


def test_replay_files_are_not_readable(tmp_path):
    replay = tmp_path / "replay.json"
    replay.write_text('[{"gold_answer": "secret"}]')
    r = run(attack(f'''
        try:
            data = OS["read"](OS["open"]({str(replay)!r}, OS["O_RDONLY"]), 100)
        except OSError as e:
            data = type(e).__name__
        raise RuntimeError(repr(data))
    '''))
    assert attack_result(r) in ("RuntimeError: 'FileNotFoundError'", "RuntimeError: 'PermissionError'")


def test_no_file_can_be_written():
    import core
    target = __import__("pathlib").Path(core.__file__).resolve().parent / "evil_sandbox_test.py"
    r = run(attack(f'''
        out = []
        for p in ({str(target)!r}, "/tmp/evil", "/usr/evil", "/dev/shm/evil", "cwd-file"):
            try:
                fd = OS["open"](p, OS["O_WRONLY"] | OS["O_CREAT"])
                OS["write"](fd, b"x")
                out.append("written")
            except OSError as e:
                out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    result = eval(attack_result(r).removeprefix("RuntimeError: "))  # noqa: S307
    assert "written" not in result, result  # no scratch either: a worker writes no file at all
    assert not target.exists()


def test_sockets_are_blocked():
    r = run(attack('''
        socket = IMPORT("socket")
        out = []
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                s = socket.socket(socket.AF_INET, kind)
                s.connect(("127.0.0.1", 22))
                out.append("connected")
            except OSError as e:
                out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    assert attack_result(r) == "RuntimeError: ['PermissionError', 'PermissionError']"


def test_signals_and_rlimit_changes_are_blocked():
    r = run(attack('''
        resource = IMPORT("resource")
        out = []
        for pid in (1, OS["getppid"]()):
            try:
                OS["kill"](pid, 9)
                out.append("sent")
            except OSError as e:
                out.append(type(e).__name__)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (-1, -1))
            out.append("raised")
        except (OSError, ValueError) as e:
            out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    assert attack_result(r) == "RuntimeError: ['PermissionError', 'PermissionError', 'ValueError']"


def test_a_crashing_worker_is_reported_with_the_candidate_line():
    r = run(attack('IMPORT("ctypes").string_at(0)'))
    assert not r.ok and r.error == "the worker crashed (SIGSEGV)" and r.isolation.ended_by == "signal:11"
    assert 'File "<candidate>", line' in r.traceback


def test_raw_syscalls_through_ctypes_are_blocked():
    r = run(attack('''
        libc = IMPORT("ctypes").CDLL(None)
        raise RuntimeError(repr([libc.syscall(41, 2, 1, 0), libc.fork()]))
    '''))
    assert attack_result(r) == "RuntimeError: [-1, -1]"


# ----- scoring by construction and the audit --------------------------------------------------------------------
AUDIT = replace(QUICK, timeout_s=30, workers=2, audit=True)

HONEST_FALLBACK = "question.probe_new()\n        return question.get_new_branch_final_answer()"
PEEKING = ESCAPE + """
import operator

gc, sys = IMPORT("gc"), IMPORT("sys")


class Peek:
    \"\"\"Looks everywhere for the unrevealed finals; returns their majority after paying for two branches.\"\"\"

    def solve(self, question):
        finals = []
        for name in ("_answers", "_order", "_costs", "_tokens"):
            try:
                finals.append(operator.attrgetter(name)(question))
            except AttributeError:
                pass
            try:
                finals.append(getattr(question, name))
            except AttributeError:
                pass
        try:
            finals.append(vars(question))
        except TypeError:
            pass
        frame = sys._getframe()
        while frame is not None:  # walk up to whatever called solve()
            finals += [v for v in frame.f_locals.values() if type(v).__name__ in ("ReplayEnvironment", "ReplayQuestion")]
            frame = frame.f_back
        finals += [o for o in gc.get_objects() if type(o).__name__ in ("ReplayEnvironment", "TracedReplayQuestion")]
        if finals:
            return "FOUND:" + repr(finals)[:40]
        HONEST
""".replace("HONEST", HONEST_FALLBACK)
HONEST = "class C:\n    def solve(self, question):\n        " + HONEST_FALLBACK + "\n"

TAMPERING = SIMPLE.replace("        return majority(answers)", """        question._cost = 0  # the bill lives in the parent; this changes only the worker's mirror
        question._next = 0
        return majority(answers)""")

MEMORISER = """
SEEN = {}


class Memo:
    \"\"\"Pays for every final once, keyed by the question's multiset of finals: would answer free on a repeat.\"\"\"

    def solve(self, q):
        finals = tuple(sorted(q.get_new_branch_final_answers(q.fresh_branches_left)))
        if finals in SEEN:
            return "REPEAT"
        SEEN[finals] = True
        return max(set(finals), key=finals.count)
"""

NONDETERMINISTIC = """
import time


class Coin:
    def solve(self, q):
        a = q.get_new_branch_final_answer()
        if time.perf_counter_ns() // 1000 % 2:
            q.get_new_branch_final_answer()
        return a
"""


def test_audit_passes_an_honest_controller():
    r = run(SIMPLE, AUDIT, seeds=range(3))
    assert r.ok and r.audit.passed and r.audit.checked == r.audit.sample_size == 3 * ENV.n_questions
    assert r.audit.mismatches == [] and isinstance(r.audit.sample_seed, int)
    assert (r.audit.cheat_rate, r.audit.detection_probability) == (0.02, 0.99)


@every_level
def test_a_peeking_candidate_gains_nothing(level):
    """By construction there is nothing to peek at: its score is what its honest actions earn."""
    settings = replace(LEVEL_SETTINGS[level], audit=True)
    peek, honest = run(PEEKING, settings, seeds=range(3)), run(HONEST, settings, seeds=range(3))
    assert peek.ok and honest.ok and peek.audit.passed, (peek.error, peek.traceback)
    key = (ENV.name, "")
    assert peek.results[key].answers == honest.results[key].answers
    assert (peek.results[key].tokens == honest.results[key].tokens).all()
    assert not any(a.startswith("FOUND") for row in peek.results[key].answers for a in row if a)


def test_cost_tampering_changes_nothing_but_the_mirror():
    a, b = run(TAMPERING, seeds=range(3)), run(SIMPLE, seeds=range(3))
    assert a.ok and b.ok
    assert (a.results[(ENV.name, "")].tokens == b.results[(ENV.name, "")].tokens).all()
    assert a.results[(ENV.name, "")].tokens.min() > 0


def test_memory_across_episodes_cannot_pay_off():
    """A worker runs one cell: each question once. A memoriser never meets a question again, across seeds and
    settings (the previous design ran all seeds of a setting in one worker, where it would have)."""
    r = run(MEMORISER, seeds=range(4), options=[{}])
    assert r.ok, r.error
    answers = [a for row in r.results[(ENV.name, "")].answers for a in row]
    assert "REPEAT" not in answers and len(answers) == 4 * ENV.n_questions


def test_audit_catches_a_nondeterministic_controller():
    r = run(NONDETERMINISTIC, AUDIT, seeds=range(6))
    assert r.ok and not r.audit.passed and r.audit.mismatches
    m = r.audit.mismatches[0]
    assert m.env == ENV.name and "in one run" in m.reason and r.audit.note


def test_audit_passes_a_controller_that_depends_on_set_order():
    """Workers share one string-hash seed, so iteration over a set of answers is the same in both runs."""
    src = ("class C:\n    def solve(self, q):\n        seen = {q.get_new_branch_final_answer() for _ in range(3)}\n"
           "        return next(iter(seen))\n")
    r = run(src, AUDIT, seeds=range(3))
    assert r.ok and r.audit.passed, r.audit


def test_audit_sample_size_meets_the_detection_target():
    from core.sandbox import audit

    # a full search run: 4 environments × 7 β × 100 seeds, 30 questions each
    k = audit.cells_needed(2800, 30, 30, 0.02, 0.99)
    assert k == 228 and (1 - 0.02) ** k <= 0.01 < (1 - 0.02) ** (k - 1)
    assert audit.cells_needed(10, 30, 30, 0.02, 0.99) == 10  # small runs are audited whole
    assert audit.cells_needed(5000, 15, 30, 0.02, 0.99) > k  # uneven cells: the worst case needs more
    settings = replace(AUDIT, audit_seed=1234)
    a, b = run(SIMPLE, settings, seeds=range(3)), run(SIMPLE, settings, seeds=range(3))
    assert a.audit.sample_seed == b.audit.sample_seed == 1234 and a.audit.passed and b.audit.passed


# ----- channels between workers, at every level -----------------------------------------------------------------
def _sysv_segments() -> set[str]:
    try:
        with open("/proc/sysvipc/shm") as f:
            return {line.split()[1] for line in f.readlines()[1:]}
    except OSError:
        return set()


CHANNELS = '''
ctypes = OS["sys"].modules["ctypes"]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    r = libc.syscall(*args)
    return "ok" if r >= 0 else OS["strerror"](ctypes.get_errno())
def errno_of(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return OS["strerror"](e.errno)
page = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(bytearray(8192))) & ~4095)
vec = (ctypes.c_ubyte * 4)()
'''


@every_level
def test_ipc_page_cache_and_cross_process_calls_are_denied(level):
    before = _sysv_segments()
    r = run(attack('''
        out = {
            "shmget": call(29, 0, 1 << 20, 0o1666),          # SysV shared memory (IPC_PRIVATE | IPC_CREAT)
            "msgget": call(68, 0x1234, 0o1666),
            "semget": call(64, 0x1234, 1, 0o1666),
            "mq_open": call(240, b"/autotts", 0o100, 0o666, None),
            "fadvise": errno_of(lambda: OS["posix_fadvise"](0, 0, 0, 4)),    # POSIX_FADV_DONTNEED on /dev/null
            "readahead": call(187, 0, 0, 4096),
            "mincore": call(27, page, 4096, vec),
            "cachestat": call(451, 0, None, None, 0),
            "preadv2": errno_of(lambda: OS["preadv"](0, [bytearray(8)], 0, 8)),  # RWF_NOWAIT
            "madvise_pageout": call(28, page, 4096, 21),
            "madvise_cold": call(28, page, 4096, 20),
            "process_vm_readv": call(310, 1, None, 0, None, 0, 0),
            "pidfd_open": call(434, 1, 0),
            "pidfd_getfd": call(438, 0, 0, 0),
            "kill_other": errno_of(lambda: OS["kill"](OS["getpid"]() + 1, 0)),
            "tgkill_other": call(234, OS["getpid"]() + 1, OS["getpid"]() + 1, 0),
            "dev_shm": errno_of(lambda: OS["open"]("/dev/shm/autotts", OS["O_CREAT"] | OS["O_RDWR"])),
            "tmp_file": errno_of(lambda: OS["open"]("/tmp/autotts-channel", OS["O_CREAT"] | OS["O_RDWR"])),
            "read_lib": errno_of(lambda: OS["open"](OS["sys"].executable, OS["O_RDONLY"])),
        }
        raise RuntimeError(repr(out))
    '''.replace("out = {", CHANNELS.replace("\n", "\n        ") + "out = {")), LEVEL_SETTINGS[level])
    out = eval(attack_result(r).removeprefix("RuntimeError: "))  # noqa: S307 - our own repr
    assert all(v != "ok" for v in out.values()), out
    assert _sysv_segments() <= before  # nothing left behind (and nothing made)


@every_level
def test_nothing_one_run_leaves_reaches_a_later_run(level):
    """Held-out exfiltration needs a place that outlives a worker: try every one, then look from a new run."""
    secret = "HELDOUT-ANSWERS-7-11-13"
    writer = attack(f'''
        tried = []
        ctypes = OS["sys"].modules["ctypes"]
        libc = ctypes.CDLL(None, use_errno=True)
        tried.append(libc.syscall(29, 0x5EC, 4096, 0o1666))             # shmget(key, 4096, IPC_CREAT | 0666)
        for path in ("/dev/shm/leak", "/tmp/leak", "/var/tmp/leak", "leak"):
            try:
                fd = OS["open"](path, OS["O_CREAT"] | OS["O_WRONLY"])
                OS["write"](fd, {secret!r}.encode())
                tried.append(path)
            except OSError:
                pass
        raise RuntimeError(repr(tried))
    ''')
    reader = attack('''
        found = []
        ctypes = OS["sys"].modules["ctypes"]
        libc = ctypes.CDLL(None, use_errno=True)
        found.append(libc.syscall(29, 0x5EC, 4096, 0))                   # shmget(key) of an existing segment
        for path in ("/dev/shm/leak", "/tmp/leak", "/var/tmp/leak", "leak"):
            try:
                found.append(OS["read"](OS["open"](path, OS["O_RDONLY"]), 100))
            except OSError:
                pass
        raise RuntimeError(repr(found))
    ''')
    assert attack_result(run(writer, LEVEL_SETTINGS[level])) == "RuntimeError: [-1]"
    assert attack_result(run(reader, LEVEL_SETTINGS[level])) == "RuntimeError: [-1]"
    assert not any(os.path.exists(p) for p in ("/dev/shm/leak", "/tmp/leak", "/var/tmp/leak"))


def test_candidate_may_use_dataclasses():
    r = run(DATACLASS_SOURCE, options=[{"beta": 1.0}])
    assert r.ok, r.error
    assert r.results[(ENV.name, "beta=1")].tokens.min() > 0


# ----- orphans ------------------------------------------------------------------------------------------------------
def _sandbox_processes() -> list[int]:
    """Live processes started from the sandbox's bootstrap (the zygote, its workers, bubblewrap around them)."""
    from core.sandbox.processes import BOOTSTRAP

    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if BOOTSTRAP.encode() in cmd and state != "Z":
            out.append(int(entry))
    return out


@every_level
def test_no_worker_survives_a_killed_server(level, tmp_path):
    import signal
    import subprocess

    assert not _sandbox_processes()
    s = LEVEL_SETTINGS[level]
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_sandbox import ENV
        from core.sandbox import SandboxSettings, run_candidate
        spin = "class C:\\n    def solve(self, q):\\n        while True:\\n            pass\\n"
        run_candidate(spin, [ENV], [{{}}], seeds=range(8), settings=SandboxSettings(
            timeout_s=120, workers=4, use_bwrap={s.use_bwrap}, use_native_namespaces={s.use_native_namespaces}))
    """))
    server = subprocess.Popen([sys.executable, str(script)], cwd=str(Path(__file__).parents[1]))
    try:
        deadline = time.monotonic() + 60
        while len(_sandbox_processes()) < 3 and time.monotonic() < deadline:  # the zygote and spinning workers
            time.sleep(0.1)
        assert len(_sandbox_processes()) >= 3
        server.send_signal(signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 5
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _sandbox_processes()
    finally:
        if server.poll() is None:
            server.kill()


def test_a_restarted_server_cleans_what_a_killed_one_left(tmp_path):
    from core.sandbox.isolation import clean_leftovers

    dead = subprocess_pid_that_has_exited()
    (tmp_path / f"autotts-probe-{dead}-x").mkdir()
    (tmp_path / f"autotts-probe-{os.getpid()}-y").mkdir()  # ours: still in use
    old = tmp_path / "autotts-sbx-old"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (tmp_path / "someone-elses").mkdir()
    removed = clean_leftovers(str(tmp_path))
    assert sorted(Path(p).name for p in removed) == [f"autotts-probe-{dead}-x", "autotts-sbx-old"]
    assert (tmp_path / "someone-elses").exists() and (tmp_path / f"autotts-probe-{os.getpid()}-y").exists()


def subprocess_pid_that_has_exited() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_evaluations_run_batch_scheduled_on_their_own_thread_only():
    import subprocess
    import threading

    from core.sandbox.processes import batch_scheduling

    probe = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]
    seen: dict[str, int] = {}

    def evaluation_thread() -> None:
        with batch_scheduling():
            seen["inside"] = os.sched_getscheduler(0)
            seen["main while inside"] = os.sched_getscheduler(main_tid)
            seen["child"] = int(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)
        seen["after"] = os.sched_getscheduler(0)

    main_tid = threading.get_native_id()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    t = threading.Thread(target=evaluation_thread)
    t.start()
    t.join()
    assert seen == {"inside": os.SCHED_BATCH, "main while inside": os.SCHED_OTHER, "child": os.SCHED_BATCH,
                    "after": os.SCHED_OTHER}
