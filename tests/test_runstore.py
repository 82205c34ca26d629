"""The study run store: schema and migrations, one-transaction writes, WAL readers, crash safety, the reader API."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from core.discovery.records import (
    AuditReport,
    Baseline,
    BestPoint,
    BetaSummary,
    EpisodeArrays,
    HeldoutSummary,
    IsolationReport,
    ResultRow,
    Run,
    RunSummary,
    Trace,
    TraceKey,
    format_run_id,
)
from core.discovery.store import RUN_STORE_SCHEMA_VERSION, RunStore, RunStoreError, parse_run_id


def _episodes(s: int = 4, q: int = 3, seed: int = 0) -> EpisodeArrays:
    rng = np.random.default_rng(seed)
    answers = [[None if (i + j) % 5 == 0 else str(rng.integers(0, 9)) for j in range(q)] for i in range(s)]
    return EpisodeArrays(np.arange(s), answers, rng.integers(100, 10_000, size=(s, q)),
                         rng.random((s, q)) < 0.5, rng.integers(1, 64, size=(s, q)).astype(np.int32))


def _record(name: str = "cand", status: str = "ok", acc: float = 50.0, tokens: float = 1000.0,
            envs: tuple[str, ...] = ("e1", "e2"), betas: tuple[float, ...] = (0.0, 1.0)
            ) -> tuple[Run, list[ResultRow]]:
    rows = [ResultRow(e, b, acc, tokens, _episodes(), "search", 12) for e in envs for b in betas]
    summary = None if status != "ok" else RunSummary(
        per_beta=[BetaSummary(b, acc, tokens, False) for b in betas], best=BestPoint(1.0, acc, tokens),
        monotone=True, on_frontier=1)
    run = Run(name=name, source=f"# {name}\nclass C:\n    def solve(self, q):\n        return None\n",
              status=status, created=time.time(), finished=time.time(), betas=list(betas), envs=list(envs),
              summary=summary, error=None if status == "ok" else "controller raised ValueError: boom",
              isolation=IsolationReport(level="strong"), audit=AuditReport(checked=30, passed=True))
    return run, rows if status == "ok" else []


def test_schema_created_and_versioned(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    assert store.schema_version() == RUN_STORE_SCHEMA_VERSION
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "runs", "results", "traces", "baselines"} <= tables
    store.close()
    # reopening is a no-op migration
    again = RunStore(tmp_path / "runs.sqlite")
    assert again.schema_version() == RUN_STORE_SCHEMA_VERSION and again.count_runs() == 0


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RunStoreError, match="newer than this autotts"):
        RunStore(path)


def test_readonly_needs_existing_store_and_cannot_write(tmp_path):
    with pytest.raises(RunStoreError, match="no run store"):
        RunStore(tmp_path / "missing.sqlite", readonly=True)
    RunStore(tmp_path / "runs.sqlite").close()
    ro = RunStore(tmp_path / "runs.sqlite", readonly=True)
    assert ro.runs_since(0) == [] and ro.leaderboard() == []  # works with no writer attached (no -wal/-shm)
    with pytest.raises(RunStoreError, match="read-only"):
        ro.record_run(*_record())


def test_record_and_read_back(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rec, rows = _record()
    rid = store.record_run(rec, rows)
    run = store.run(format_run_id(rid))
    assert run.run_id == "r0001" and run.name == "cand" and run.status == "ok"
    assert run.source == rec.source and len(run.sha256) == 64
    assert run.betas == [0.0, 1.0] and run.envs == ["e1", "e2"]
    assert run.isolation == rec.isolation and run.audit == rec.audit and run.summary == rec.summary
    rows = store.results(rid, with_episodes=True)
    assert [(r.env, r.beta) for r in rows] == [("e1", 0.0), ("e1", 1.0), ("e2", 0.0), ("e2", 1.0)]
    want = _episodes()
    got = rows[0].episodes
    assert got.answers == want.answers
    assert np.array_equal(got.tokens, want.tokens) and np.array_equal(got.correct, want.correct)
    assert np.array_equal(got.opened, want.opened) and np.array_equal(got.seeds, want.seeds)
    assert store.results(rid, env="e2", beta=1.0)[0].max_opened == 12


def test_run_ids(tmp_path):
    assert [parse_run_id(x) for x in ("r0007", "R7", "7", 7, " r12 ")] == [7, 7, 7, 7, 12]
    for bad in ("abc", "r", "", "r-1", True, "r" + "9" * 20):
        with pytest.raises(RunStoreError, match="not a run id"):
            parse_run_id(bad)
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(RunStoreError, match="no run r0003.*no run has been recorded"):
        store.run("r3")
    store.record_run(*_record())
    with pytest.raises(RunStoreError, match="ids run from r0001 to r0001"):
        store.run(3)


def test_runs_since_and_leaderboard(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    a = store.record_run(*_record("a", acc=60.0, tokens=5000))
    b = store.record_run(*_record("b", status="error"))
    c = store.record_run(*_record("c", acc=70.0, tokens=9000))
    d = store.record_run(*_record("d", acc=70.0, tokens=4000))
    assert [r.name for r in store.runs_since(0)] == ["a", "b", "c", "d"]
    assert [r.id for r in store.runs_since(b)] == [c, d]
    assert store.runs_since(0)[0].source is None
    board = store.leaderboard()
    assert [r.name for r in board] == ["d", "c", "a", "b"]
    assert board[0].run_id == format_run_id(d) and board[-1].best_accuracy is None
    assert board[0].on_frontier == 1 and board[0].monotone is True and board[-1].on_frontier is None
    assert [r.name for r in store.leaderboard(include_failed=False)] == ["d", "c", "a"]
    assert store.last_run_id() == d and a == 1


def test_heldout_results_added_in_one_transaction(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.record_run(*_record())
    held = HeldoutSummary(["h1"], [BetaSummary(1.0, 80.0, 2000.0, False)], [], 1.0)
    store.record_heldout(rid, [ResultRow("h1", 1.0, 80.0, 2000.0, _episodes(), "heldout")], held)
    assert len(store.results(rid)) == 4  # the default split is search: held-out rows stay apart
    assert [r.env for r in store.results(rid, split="heldout")] == ["h1"]
    summary = store.run(rid).summary
    assert summary is not None and summary.heldout == held and summary.best.accuracy == 50.0
    with pytest.raises(RunStoreError, match="no run r0099"):
        store.record_heldout(99, [], held)
    failed = store.record_run(*_record("failed", status="error"))
    with pytest.raises(RunStoreError, match="only scored runs"):
        store.record_heldout(failed, [], held)


def test_failed_transaction_leaves_nothing(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    store.record_run(*_record("kept"))

    def rows():
        yield ResultRow("e1", 0.0, 1.0, 1.0, _episodes())
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.record_run(_record("lost")[0], rows())
    assert [r.name for r in store.runs_since(0)] == ["kept"]
    assert store._db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4


def test_traces_and_baselines(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.record_run(*_record())
    events = [["open", 0, 500, "12"], ["step", 0, 300, "12"]]
    store.record_trace(rid, TraceKey("e1", 0.5, 3, 2), Trace("12", 800, events))
    assert store.trace(rid, TraceKey("e1", 0.5, 3, 2)) == Trace("12", 800, events)
    assert store.trace(rid, TraceKey("e1", 0.5, 3, 1)) is None
    assert store.recorded_traces(rid) == [TraceKey("e1", 0.5, 3, 2)]
    store.record_baseline("k", "e1", "sc:n=64", "range(4)", Baseline(70.0, 9e5, _episodes()))
    got = store.baseline("k", "sc:n=64", "range(4)", with_episodes=True)
    assert (got.accuracy, got.avg_tokens) == (70.0, 9e5) and got.episodes.answers == _episodes().answers
    assert store.baseline("k", "sc:n=64", "range(4)").episodes is None
    assert store.baseline("other", "sc:n=64", "range(4)") is None


def test_run_lookups_of_the_candidate_pane(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    a = store.record_run(*_record("a"))
    store.record_run(*_record("b"))
    c = store.record_run(*_record("a"))
    assert store.same_name_before(c, "a") == a and store.same_name_before(a, "a") is None
    assert [i for i, _ in store.sources_before(c)] == [2, 1]
    touched, top = store.results_touched_since(0)
    assert touched == {1, 2, 3} and top == 12
    assert store.results_touched_since(top) == (set(), top)


def test_wal_reader_sees_committed_runs_while_writer_is_mid_transaction(tmp_path):
    path = tmp_path / "runs.sqlite"
    writer = RunStore(path)
    writer.record_run(*_record("first"))
    reader = RunStore(path, readonly=True)
    writer._db.execute("BEGIN IMMEDIATE")
    writer._db.execute("INSERT INTO runs (name, source, sha256, created, finished, status, betas, envs) "
                       "VALUES ('half', '', '', 0, 0, 'ok', '[]', '[]')")
    t0 = time.perf_counter()
    assert [r.name for r in reader.runs_since(0)] == ["first"]  # not blocked, and sees no half-written run
    assert time.perf_counter() - t0 < 1.0
    writer._db.execute("ROLLBACK")
    writer.record_run(*_record("second"))
    assert [r.name for r in reader.runs_since(0)] == ["first", "second"]


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_runstore import _record, _episodes
    from core.discovery.records import ResultRow
    from core.discovery.store import RunStore
    store = RunStore({path!r})
    store.record_run(*_record("survivor"))
    def rows():
        for i in range(50):
            yield ResultRow(f"e{{i}}", 0.5, 1.0, 1.0, _episodes(50, 30, i))
            if i == 25:
                print("mid-transaction", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    store.record_run(_record("victim")[0], rows())
""")


def test_kill_mid_evaluation_loses_nothing_and_leaves_no_half_row(tmp_path):
    path = tmp_path / "runs.sqlite"
    script = CRASH_SCRIPT.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "mid-transaction" in proc.stdout
    store = RunStore(path)
    assert [r.name for r in store.runs_since(0)] == ["survivor"]
    assert store._db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store.record_run(*_record("after")) == 2
