"""The sandboxed candidate runner: real worker processes, real attacks, no mocks.

Attack candidates reach past the import guard the way real escapes would (through `object.__subclasses__()` to
`os`'s globals), so these tests exercise the operating-system layers (bubblewrap, Landlock, seccomp, rlimits,
the uid drop), not just the guard. Small synthetic environments and few seeds keep them quick.
"""

from __future__ import annotations

import os
import random
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
# AUTOTTS_TEST_SANDBOX_BWRAP=0 runs every attack at the medium level (no bubblewrap) instead.
USE_BWRAP = os.environ.get("AUTOTTS_TEST_SANDBOX_BWRAP", "1") != "0"
QUICK = SandboxSettings(timeout_s=20, workers=1, audit_episodes=0, use_bwrap=USE_BWRAP)
BWRAP = probe_isolation()["bwrap_usable"] and USE_BWRAP


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


def test_isolation_report_contents():
    r = run(SIMPLE)
    assert r.ok, r.error
    iso = r.isolation
    assert set(iso) >= {"level", "bwrap", "mount_ns", "net_ns", "pid_ns", "uid", "landlock_abi", "seccomp",
                        "rlimits", "timeout_s", "ended_by"}
    assert iso["ended_by"] is None and iso["timeout_s"] == QUICK.timeout_s
    assert iso["rlimits"]["as_mb"] == QUICK.memory_mb and iso["rlimits"]["nofile"] == 64
    assert iso["rlimits"]["cpu_s"] == int(np.ceil(QUICK.timeout_s)) + 1 and iso["rlimits"]["core"] == 0
    assert iso["seccomp"] and iso["no_new_privs"]
    assert iso["landlock_abi"] == probe_isolation()["landlock_abi"] > 0
    assert iso["uid"] != 0  # root drops to nobody
    if BWRAP:
        assert iso["level"] == "strong" and iso["bwrap"]
        assert iso["mount_ns"] and iso["net_ns"] and iso["pid_ns"]
    else:
        assert iso["level"] == "medium"


def test_medium_level_without_bwrap_still_blocks_files():
    r = run(attack('''
        out = []
        for p in ("/etc/passwd", "/proc/1/environ"):
            try:
                out.append(OS["read"](OS["open"](p, OS["O_RDONLY"]), 20))
            except OSError as e:
                out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''), SandboxSettings(timeout_s=20, workers=1, audit_episodes=0, use_bwrap=False))
    assert r.isolation["level"] == "medium" and not r.isolation["bwrap"] and not r.isolation["mount_ns"]
    assert attack_result(r) == "RuntimeError: ['PermissionError', 'PermissionError']"


def test_strict_refuses_below_required_level_before_spawning():
    t = time.perf_counter()
    r = run(SIMPLE, SandboxSettings(level="strict", use_bwrap=False, min_level="strong", audit_episodes=0))
    assert not r.ok and "below the required 'strong'" in r.error
    assert r.isolation["workers"] == {} and time.perf_counter() - t < 1.0


def test_environment_variable_overrides_level(monkeypatch):
    monkeypatch.setenv("AUTOTTS_SANDBOX", "off")
    r = run(SIMPLE)
    assert r.ok and r.isolation["level"] == "off"
    monkeypatch.setenv("AUTOTTS_SANDBOX", "bogus")
    with pytest.raises(SandboxError, match="not one of strict, auto, off"):
        run(SIMPLE)


# ----- exactness ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cmc_candidate_matches_builtin_and_passes_audit():
    seeds = range(4)
    env2 = make_env("toy/second", n_questions=3, seed=1)
    settings = replace(QUICK, timeout_s=60, workers=2, audit_episodes=12)
    calls = []
    r = run_candidate(CMC_SOURCE, [ENV, env2], [{"beta": 0.5}, {"beta": 0.2}], seeds=seeds, settings=settings,
                      progress=lambda d, n: calls.append((d, n)))
    assert r.ok, (r.error, r.traceback)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
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
    assert r.audit["passed"] and r.audit["checked"] == 24 and r.audit["mismatches"] == []


def test_off_level_runs_in_process_with_same_results():
    a = run(CMC_SOURCE, replace(QUICK, level="off", audit_episodes=10), options=[{"beta": 0.4}])
    b = run(CMC_SOURCE, replace(QUICK, workers=1, audit_episodes=0), options=[{"beta": 0.4}])
    assert a.ok and b.ok and a.isolation["level"] == "off"
    key = (ENV.name, "beta=0.4")
    assert a.results[key].answers == b.results[key].answers
    assert (a.results[key].tokens == b.results[key].tokens).all()
    assert a.audit["passed"] and a.audit["checked"] == 10


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
    assert "line 3, in solve" in info.value.traceback and info.value.isolation["level"] in ("strong", "medium")
    with pytest.raises(SandboxError, match="import of 'socket' is not allowed"):
        trace_episode("import socket\n", ENV, {}, 0, 0, replace(QUICK, timeout_s=20))


def test_gold_and_question_texts_never_reach_the_worker():
    r = run(attack('''
        gc = IMPORT("gc")
        found = []
        for o in gc.get_objects():
            if type(o).__name__ == "ReplayEnvironment":
                found.append((o.gold_answers, set(o.questions), int((o.gold_ids >= 0).sum()),
                              "GOLD-ONLY-IN-PARENT" in repr(o.answer_vocab)))
        raise RuntimeError(repr(found))
    '''))
    assert attack_result(r) == "RuntimeError: [(None, {''}, 0, False)]"


# ----- candidate errors -----------------------------------------------------------------------------------------
def test_syntax_error_names_the_line():
    r = run("class C:\n    def solve(self, q):\n        return q.probe_new(\n")
    assert not r.ok and r.error == "SyntaxError at line 3: '(' was never closed"
    assert "return q.probe_new(" in r.traceback and r.isolation["ended_by"] == "error"
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
    assert "seed 0, question 0" in r.error


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
    assert r.error == f"solve() raised KeyError: 'boom' (env {ENV.name}, default options, seed 0, question 0)"
    assert r.traceback.startswith("Traceback (candidate frames):")
    assert 'File "<candidate>", line 3, in solve' in r.traceback and "raise KeyError('boom')" in r.traceback
    assert "core/evaluate.py" not in r.traceback and "_exec.py" not in r.traceback


def test_exception_on_last_question_says_where():
    last = ENV.n_questions - 1
    src = f'''
class C:
    def __init__(self):
        self.calls = 0

    def solve(self, q):
        self.calls += 1
        if self.calls == 3 * {ENV.n_questions}:
            return [1, 2][5]
        return q.get_new_branch_final_answer()
'''
    r = run(src, seeds=[7, 8, 9])
    assert not r.ok and r.error.startswith("solve() raised IndexError: list index out of range")
    assert r.error.endswith(f"seed 9, question {last})")


def test_non_string_answer():
    r = run("class C:\n    def solve(self, q):\n        return 42\n")
    assert not r.ok and r.error.startswith("solve() returned int 42")
    assert "seed 0, question 0" in r.error and "return the answer string" in r.error


def test_system_exit_in_solve_is_reported():
    r = run("class C:\n    def solve(self, q):\n        raise SystemExit(3)\n")
    assert not r.ok and r.error.startswith("solve() raised SystemExit: 3") and "seed 0, question 0" in r.error


def test_no_controller_and_bad_options():
    r = run("x = 1\n")
    assert not r.ok and "no controller found" in r.error
    r = run(SIMPLE, options=[{"beta": 0.5}])
    assert not r.ok and r.error.startswith("options beta=0.5: FirstThree accepts no option beta")


def test_source_too_large_is_refused_before_spawning():
    t = time.perf_counter()
    r = run("x = 1\n" + "#" * (5 << 20))
    assert not r.ok and "bytes; the limit is 262144 bytes (256 KB)" in r.error
    assert r.isolation["level"] == "not started" and time.perf_counter() - t < 0.5


def test_printing_megabytes_is_capped_not_an_error():
    src = SIMPLE.replace("answers = []", "answers = []\n        print('x' * 3_000_000)\n        print('END-MARK')")
    settings = replace(QUICK, timeout_s=20, workers=1, audit_episodes=0, max_output_bytes=4096)
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
    assert not r.ok and r.error == "timed out after 2 s" and r.isolation["ended_by"] == "timeout"
    assert time.perf_counter() - t < 4


def test_memory_bomb_hits_the_memory_limit():
    r = run("class C:\n    def solve(self, q):\n        x = []\n        while True:\n"
            "            x.append(bytearray(1 << 24))\n", replace(QUICK, timeout_s=20, workers=1, memory_mb=768))
    assert not r.ok and r.error.startswith("memory limit (768 MB) exceeded") and "seed 0, question 0" in r.error
    assert r.isolation["ended_by"] == "oom" and "MemoryError" in r.traceback


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
    assert not r.ok and r.isolation["ended_by"] == "timeout"


@pytest.mark.slow
def test_signal_handlers_do_not_stop_the_timeout():
    r = run(attack('''
        signal = IMPORT("signal")
        for s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    '''), replace(QUICK, timeout_s=2, workers=1))
    assert not r.ok and r.isolation["ended_by"] == "timeout"


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


def test_writes_outside_scratch_are_blocked():
    import core
    target = __import__("pathlib").Path(core.__file__).resolve().parent / "evil_sandbox_test.py"
    r = run(attack(f'''
        out = []
        for p in ({str(target)!r}, "/tmp/evil", "/usr/evil", "scratch-file-ok"):
            try:
                fd = OS["open"](p, OS["O_WRONLY"] | OS["O_CREAT"])
                OS["write"](fd, b"x")
                out.append("written")
            except OSError as e:
                out.append(type(e).__name__)
        raise RuntimeError(repr(out))
    '''))
    result = eval(attack_result(r).removeprefix("RuntimeError: "))  # noqa: S307
    assert result[-1] == "written" and "written" not in result[:3], result
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
    assert not r.ok and r.error == "the worker crashed (SIGSEGV)" and r.isolation["ended_by"] == "signal:11"
    assert 'File "<candidate>", line' in r.traceback


def test_raw_syscalls_through_ctypes_are_blocked():
    r = run(attack('''
        libc = IMPORT("ctypes").CDLL(None)
        raise RuntimeError(repr([libc.syscall(41, 2, 1, 0), libc.fork()]))
    '''))
    assert attack_result(r) == "RuntimeError: [-1, -1]"


# ----- integrity audit ----------------------------------------------------------------------------------------------
AUDIT = replace(QUICK, timeout_s=30, workers=1, audit_episodes=12)

PEEKING = '''
from core.primitives import majority

class Peek:
    """Reads the unrevealed finals and returns the most popular one after paying for a single branch."""

    def solve(self, question):
        question.probe_new()
        try:
            finals = [question._answers[b][-1] for b in question._order]
        except AttributeError:  # nothing to peek at: behave
            return question.get_new_branch_final_answer()
        return majority(finals)
'''

TAMPERING = SIMPLE.replace("        return majority(answers)", """        try:
            question._cost //= 2  # halve the bill where the question object allows it
        except AttributeError:
            pass
        return majority(answers)""")

GUESSING = "class C:\n    def solve(self, q):\n        q.probe_new()\n        return 'never-revealed'\n"


def test_audit_passes_an_honest_controller():
    r = run(SIMPLE, AUDIT, seeds=range(3))
    assert r.ok and r.audit["passed"] and r.audit["checked"] == 12 and r.audit["mismatches"] == []
    assert isinstance(r.audit["sample_seed"], int)


def test_audit_catches_a_peeking_controller():
    r = run(PEEKING, AUDIT, seeds=range(3))
    assert r.ok and not r.audit["passed"]
    assert len(r.audit["mismatches"]) >= 10
    m = r.audit["mismatches"][0]
    assert set(m) == {"env", "options", "seed", "question", "reason"} and m["env"] == ENV.name
    assert "in the fast run" in m["reason"]
    assert "note" in r.audit


def test_audit_catches_cost_tampering():
    r = run(TAMPERING, AUDIT, seeds=range(3))
    assert r.ok and not r.audit["passed"] and len(r.audit["mismatches"]) == 12
    assert all("reported by the fast run" in m["reason"] for m in r.audit["mismatches"])
    blunt = SIMPLE.replace("        return majority(answers)", "        question._cost = 0\n        return majority(answers)")
    r = run(blunt, AUDIT, seeds=range(3))
    assert not r.audit["passed"] and all("tokens 0 reported by the fast run" in m["reason"]
                                         for m in r.audit["mismatches"])


def test_audit_flags_answers_that_were_never_revealed():
    r = run(GUESSING, AUDIT)
    assert r.ok and not r.audit["passed"]
    assert all("'never-revealed', which was never revealed" in m["reason"] for m in r.audit["mismatches"])


def test_audit_passes_a_controller_that_depends_on_set_order():
    """Workers share one string-hash seed, so iteration over a set of answers is the same in the re-run."""
    src = ("class C:\n    def solve(self, q):\n        seen = {q.get_new_branch_final_answer() for _ in range(3)}\n"
           "        return next(iter(seen))\n")
    r = run(src, AUDIT, seeds=range(3))
    assert r.ok and r.audit["passed"], r.audit


def test_audit_sample_is_reproducible_with_a_seed():
    settings = replace(QUICK, timeout_s=30, workers=1, audit_episodes=5, audit_seed=1234, level="off")
    a, b = run(PEEKING, settings, seeds=range(3)), run(PEEKING, settings, seeds=range(3))
    assert a.audit["sample_seed"] == 1234 and a.audit["mismatches"] == b.audit["mismatches"]


def test_candidate_may_use_dataclasses():
    r = run(DATACLASS_SOURCE, options=[{"beta": 1.0}])
    assert r.ok, r.error
    assert r.results[(ENV.name, "beta=1")].tokens.min() > 0
