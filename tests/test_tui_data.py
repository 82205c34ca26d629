"""The TUI's data side (no Textual): reading a study, curves, traces as grids, the text plot."""

from __future__ import annotations

import sys

import orjson
import pytest

from autotts_tui import curves, traces
from autotts_tui.demo_study import BASE_TIME, SC_BUDGET, build_demo_study, demo_service, record_candidate
from autotts_tui.formatting import fmt_acc, fmt_tokens
from autotts_tui.model import StudyReader
from autotts_tui.textplot import Series, render_plot
from core.discovery.records import HeldoutSummary, ResultRow, Trace, TraceKey
from core.discovery.store import RunStore, RunStoreError
from core.progress import read_run_progress


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return build_demo_study(tmp_path_factory.mktemp("tui_data") / "demo-study", n_seeds=3, count=5)


def test_reader_turns_runs_into_candidates_and_polls_only_changes(study):
    reader = StudyReader(study.folder)
    try:
        first = reader.poll()
        assert [c.run_id for c in first.candidates] == ["r0001", "r0002", "r0003", "r0004", "r0005"]
        assert first.new_ids == {1, 2, 3, 4, 5}
        by_name = {c.run_id: c for c in first.candidates}
        sc = by_name["r0001"]
        assert sc.ok and sc.monotone is True and sc.best is not None
        assert sc.score_at(0.5) is not None and sc.score_at(0.33) is None
        assert set(sc.env_scores) == set(study.search_names)
        broken = by_name["r0004"]
        assert broken.status == "error" and not broken.ok and broken.best is None
        assert "ZeroDivisionError" in (broken.error or "")
        assert reader.poll().candidates == []  # nothing changed
        detail = reader.detail(5)
        assert detail.predecessor is not None and detail.predecessor.run_id == "r0002"  # same name
        assert detail.recorded_traces and detail.run.source.startswith("from core.primitives")
        d3 = reader.detail(3)  # no same-name run: the earlier run whose source is most alike
        assert d3.predecessor.run_id == "r0002" and d3.predecessor_reason == "most similar earlier source"
    finally:
        reader.close()


def test_reader_never_writes(study):
    before = study.store_path.read_bytes()
    reader = StudyReader(study.folder)
    reader.poll()
    reader.detail(1)
    with pytest.raises(RunStoreError):
        reader.store.record_trace(1, TraceKey("x", 0.5, 0, 0), Trace(None, 0, []))
    reader.close()
    assert study.store_path.read_bytes() == before


def test_progress_file_and_log_tail(study, tmp_path):
    progress, log = tmp_path / "progress.json", tmp_path / "server.log"
    reader = StudyReader(study.folder, progress_file=progress, log_file=log)
    try:
        reader.poll()
        assert reader.poll().progress is None
        progress.write_bytes(orjson.dumps({"run": "cand", "state": "running", "started": 10.0, "updated": 20.0,
                                           "done": 30, "total": 120}))
        log.write_text("one\ntwo\npartial")
        u = reader.poll()
        assert u.progress is not None and u.progress.fraction == 0.25 and u.progress.stalled(20.0 + 1000)
        assert u.log_lines == ["one", "two"]
        with log.open("a") as f:
            f.write(" line\nthree\n")
        assert reader.poll().log_lines == ["partial line", "three"]
        progress.write_text("{not json")
        assert read_run_progress(progress) is None
    finally:
        reader.close()


def test_live_writes_are_seen_by_the_next_poll(tmp_path):
    study = build_demo_study(tmp_path / "s", n_seeds=2, count=0)
    reader = StudyReader(study.folder)
    try:
        assert reader.poll().candidates == []
        svc = demo_service(study, seconds=1.0)
        with svc.store:
            record_candidate(svc, "late", SC_BUDGET, created=BASE_TIME, traces=0)
        u = reader.poll()
        assert [c.name for c in u.candidates] == ["late"] and u.new_ids == {1}
        with RunStore(study.store_path) as store:  # a held-out row added later refreshes that run
            held = HeldoutSummary(study.heldout_names, [], [], BASE_TIME)
            store.record_heldout(1, [ResultRow(study.heldout_names[0], 0.5, 50.0, 1234.0, None, "heldout")], held)
        again = reader.poll()
        assert [c.id for c in again.candidates] == [1] and again.new_ids == set()
    finally:
        reader.close()


def test_curves_from_eval_json_group_families():
    doc = {"rows": [
        {"env": "m/a", "controller": c, "accuracy": acc, "avg_tokens": tok}
        for c, acc, tok in [("sc:n=1", 50, 1e4), ("sc:n=64", 70, 6e5), ("asc", 69, 2e5), ("cmc:beta=0", 60, 4e4),
                            ("cmc:beta=1", 71, 3e5), ("x/my_ctrl.py:beta=0.5", 72, 1e5)]]}
    got = curves.curves_from_eval_json(doc)["m/a"]
    assert [(c.label, c.kind, len(c.points)) for c in got] == [
        ("SC@N", "baseline", 2), ("ASC", "baseline", 1), ("CMC", "baseline", 2), ("my_ctrl", "candidate", 1)]
    assert [p.label for p in curves.frontier(got)] == ["n=1", "beta=0", "beta=0.5"]
    with pytest.raises(ValueError):
        curves.curves_from_eval_json({"rows": []})


def test_mean_curves_average_matching_settings():
    a = curves.Curve("base:X", "X", "baseline", (curves.Point(100, 50, "s1"), curves.Point(200, 60, "s2")))
    b = curves.Curve("base:X", "X", "baseline", (curves.Point(300, 70, "s1"),))
    (m,) = curves.mean_curves({"e1": [a], "e2": [b]})
    assert m.points == (curves.Point(200, 60, "s1"),)  # s2 is missing in e2, so it is left out


def test_grid_from_a_builtin_trace_accounts_for_every_token(study):
    env = study.search_envs()[0]
    for spec in ("cmc:beta=0.5", "sc:n=8", "parallel-probe:num_chains=8"):
        t = traces.builtin_trace(env, spec, question=2, seed=3)
        steps = traces.branch_steps(env, 2, 3)
        grid = traces.build_grid(t.events, interval=500, answer=t.answer, gold=env.gold_answers[2], steps=steps,
                                 tokens=t.tokens)
        assert grid.tokens == sum(e[2] for e in t.events) == t.tokens
        assert sum(r.tokens for r in grid.rows) == t.tokens
        assert grid.counts["opened"] == len({e[1] for e in t.events})
        # a branch's cells never outrun its tokens by more than the one column a short last step takes
        for r in grid.rows:
            assert len(r.cells) <= r.tokens // 500 + 2
        if spec.startswith("sc"):
            assert grid.counts["read"] == 8 and "full read" in grid.stop_reason
            assert all(c.kind in (traces.READ, traces.FINISHED) for r in grid.rows for c in r.cells)


def test_grid_cell_kinds_and_answer_classes():
    events = [("branch", 0, 500, None), ("probe", 0, 0, "7"), ("open", 1, 500, "9"), ("extend", 0, 500, None),
              ("step", 1, 500, "9"), ("step", 1, 1200, "9"), ("prune", 0, 0, None), ("open", 2, 500, "3")]
    steps = [(5, 4), (6, 3), (7, 9)]  # branch 1 finishes on its third step
    grid = traces.build_grid(events, interval=500, answer="9", gold="7", steps=steps)
    rows = {r.index: r for r in grid.rows}
    assert [c.kind for c in rows[0].cells] == [traces.PROBED, traces.CONTINUED, traces.PRUNED]
    assert rows[0].cells[0].answer_class == traces.GOLD
    assert [c.kind for c in rows[1].cells] == [traces.OPEN, traces.PROBED, traces.CONTINUED, traces.CONTINUED,
                                               traces.FINISHED]
    assert rows[1].cells[-1].answer_class == traces.PICK and rows[1].state == "finished"
    assert rows[2].state == "running" and rows[2].cells[-1].kind == traces.LEFT_RUNNING
    assert rows[2].cells[0].answer_class == traces.OTHER
    assert grid.counts == {"opened": 3, "finished": 1, "read": 0, "pruned": 1, "running": 1, "events": 8}
    assert "answered with 1 still running" in grid.stop_reason and grid.correct is False


def test_candidate_trace_prefers_the_sandbox_and_falls_back_to_the_record(study, monkeypatch):
    env = study.search_envs()[0]
    recorded = {"answer": "1", "tokens": 500, "events": [["open", 0, 500, "1"]]}
    monkeypatch.setattr(traces, "sandbox_trace_function", lambda: None)
    t = traces.candidate_trace(SC_BUDGET, "c", env, 0.5, 0, 0, recorded)
    assert t is not None and t.source == "recorded trace" and t.events == [("open", 0, 500, "1")]
    assert traces.candidate_trace(SC_BUDGET, "c", env, 0.5, 0, 0, None) is None
    monkeypatch.setattr(traces, "sandbox_trace_function", lambda: lambda *a: ("2", 1000, [("read", 0, 1000, "2")]))
    t = traces.candidate_trace(SC_BUDGET, "c", env, 0.5, 0, 0, recorded)
    assert t is not None and t.source == "sandbox re-run" and t.answer == "2" and t.tokens == 1000


def test_text_plot_is_deterministic_and_sized():
    s = [Series("a", [(1e4, 50.0), (1e5, 70.0)], "red"), Series("b", [(3e4, 60.0)], "blue", marker="■")]
    one, two = render_plot(s, 60, 16), render_plot(s, 60, 16)
    assert one.plain == two.plain
    lines = one.plain.split("\n")
    assert len(lines) == 16 and max(len(line) for line in lines) <= 60
    assert "■" in one.plain and "●" in one.plain and "10k" in one.plain
    assert "no points" in render_plot([], 40, 8).plain


def test_formatting():
    assert [fmt_tokens(x) for x in (None, 812, 2000, 9400, 267_000, 1_000_000, 1_210_000)] == [
        "—", "812", "2k", "9.4k", "267k", "1M", "1.21M"]
    assert [fmt_acc(x) for x in (None, 74.666, 100.0, 5)] == ["—", "74.7", "100", "5.0"]


def test_data_side_never_imports_textual():
    import subprocess

    code = ("import sys, autotts_tui.model, autotts_tui.curves, autotts_tui.traces, autotts_tui.figure, "
            "autotts_tui.textplot, autotts_tui.demo_study; assert 'textual' not in sys.modules, 'textual imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
