"""Pilot tests that drive `autotts tui`: navigation, sorting, candidate detail, traces, live arrivals."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import orjson
import pytest
from textual.widgets import TabbedContent
from textual.worker import WorkerCancelled

from autotts_tui import traces
from autotts_tui.app import make_app
from autotts_tui.demo_study import (
    BASE_TIME,
    CANDIDATES,
    LOCKSTEP_V2,
    build_demo_study,
    demo_service,
    record_candidate,
)
from autotts_tui.widgets.activity import LogPane, ProgressStrip
from autotts_tui.widgets.candidate import CandidatePane
from autotts_tui.widgets.help import HelpScreen
from autotts_tui.widgets.leaderboard import Leaderboard
from autotts_tui.widgets.scaling_plot import ScalingPlot
from autotts_tui.widgets.trace_view import TraceView

SIZE = (100, 32)
pytestmark = pytest.mark.anyio



@pytest.fixture(autouse=True)
def _sandbox_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's candidates are trusted code: trace them in-process whatever AUTOTTS_SANDBOX says, so the
    screens do not depend on which isolation this machine offers."""
    monkeypatch.setenv("AUTOTTS_SANDBOX", "off")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return build_demo_study(tmp_path_factory.mktemp("tui_app") / "demo-study", n_seeds=3,
                            sandbox={"level": "off"})


def app_for(folder, **kwargs):
    kwargs.setdefault("poll_interval", 3600)
    kwargs.setdefault("notify_arrivals", False)
    app = make_app(folder, tz=dt.UTC, **kwargs)
    app.animation_level = "none"
    return app


async def settle(pilot, rounds: int = 3) -> None:
    """Let workers (which may start other workers) finish and their results render."""
    for _ in range(rounds):
        for worker in list(pilot.app.workers):
            try:
                await worker.wait()
            except WorkerCancelled:  # superseded by a newer request (exclusive workers)
                pass
        await pilot.pause()


def order(board: Leaderboard) -> list[str]:
    return [board.get_row_at(i)[1].plain for i in range(board.row_count)]


async def test_tabs_help_and_quit(study):
    app = app_for(study.folder, baselines=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tabs = app.query_one(TabbedContent)
        for key, tab in (("2", "plot"), ("3", "candidate"), ("4", "trace"), ("5", "log"), ("1", "board")):
            await pilot.press(key)
            assert tabs.active == tab
        assert app.focused is app.query_one(Leaderboard)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_leaderboard_ranks_marks_and_sorts(study):
    app = app_for(study.folder, baselines=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        board = app.query_one(Leaderboard)
        assert board.row_count == len(CANDIDATES)
        ranked = order(board)
        scored = [c for c in board.candidates.values() if c.ok]
        best = min(scored, key=lambda c: c.rank_key())  # by the search objective, as get_history ranks
        assert all(c.objective is not None for c in scored) and "%" in board.get_row(str(best.id))[8].plain
        assert ranked[0] == best.run_id and set(ranked[-2:]) == {"r0004", "r0006"}  # failed runs last
        newest_mark = board.get_row("6")[0].plain
        assert "★" in newest_mark and "⊘" in newest_mark  # newest, refused
        assert "✗" in board.get_row("4")[0].plain  # error
        assert "◼" in board.get_row(str(best.id))[0].plain  # the best is plotted by default

        await pilot.press("s")  # best accuracy
        assert board.sort_key == "best" and order(board)[0] == min(scored, key=lambda c: c.objective_key()).run_id
        await pilot.press("s")  # newest first
        assert board.sort_key == "id" and order(board) == [f"r{i:04d}" for i in range(6, 0, -1)]
        await pilot.press("r")
        assert order(board) == [f"r{i:04d}" for i in range(1, 7)]
        await pilot.press("s", "s")  # accuracy at β = 0.5, best first, unscored last
        assert board.sort_key == "tok05" or board.sort_key == "acc05"
        board.sort_by("acc05", reverse=False)
        accs = [board.candidates[int(k)].score_at(0.5) for k in (r.value for r in board.rows)]
        shown = [board.candidates[int(board.coordinate_to_cell_key((i, 0)).row_key.value)].score_at(0.5)
                 for i in range(board.row_count)]
        vals = [s.accuracy for s in shown if s is not None]
        assert vals == sorted(vals, reverse=True) and len(vals) == sum(a is not None for a in accs)

        # clicking a header sorts by that column; the cursor stays on the same candidate
        board.move_cursor(row=2)
        keep = board.current_id()
        await pilot.click(Leaderboard, offset=(14, 1))  # the "name" header
        assert board.sort_key == "name" and board.current_id() == keep
        names = [board.candidates[int(board.coordinate_to_cell_key((i, 0)).row_key.value)].name.lower()
                 for i in range(board.row_count)]
        assert names == sorted(names)

        # space toggles a candidate on the plot (and ends the automatic best + newest choice)
        board.select_id(1)
        await pilot.press("space")
        await pilot.pause()
        assert 1 in app.plot_ids and not app.auto_plot
        assert any(c.id == 1 for c in app.query_one(ScalingPlot).candidates)


async def test_enter_opens_source_and_diff(study):
    app = app_for(study.folder, baselines=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        board = app.query_one(Leaderboard)
        board.select_id(5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.query_one(TabbedContent).active == "candidate"
        pane = app.query_one(CandidatePane)
        assert pane.detail is not None and pane.detail.run.id == 5
        body = pane.query_one("#cand-code-body").content
        assert body.code == LOCKSTEP_V2 and body.lexer.name == "Python"
        await pilot.press("d")
        diff = pane.query_one("#cand-code-body").content.code
        assert diff.startswith("--- r0002 lockstep-vote") and "+                    question.prune(i)" in diff
        assert pane.query_one("#cand-results").row_count == len(study.betas)
        # an error run shows its error and traceback
        await pilot.press("1")
        board.select_id(4)
        await settle(pilot)
        assert pane.detail.run.status == "error"
        assert "ZeroDivisionError" in pane.query_one("#cand-error-body").content.plain


async def test_trace_of_a_baseline_follows_the_controls(study):
    app = app_for(study.folder, baselines=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("4")
        view = app.query_one(TraceView)
        view.request()  # the defaults: CMC at β=0.5, question 0, seed 0
        await settle(pilot)
        assert view.trace is not None and view.trace.controller == "cmc:beta=0.5"
        assert (view.trace.question, view.trace.seed) == (0, 0) and view.trace.source == "built-in re-run"
        env = study.search_envs()[0]
        assert view.grid is not None and view.grid.gold == env.gold_answers[0]
        await pilot.press("right_square_bracket", "full_stop", "full_stop")
        await settle(pilot)
        assert (view.trace.question, view.trace.seed) == (1, 2)
        view.choose(controller="spec:sc:n=64", question=3, seed=0)
        await settle(pilot)
        assert view.grid.counts["read"] == 64 and "64 full reads" in view.grid.stop_reason
        timeline = view.query_one("#trace-timeline")
        assert timeline.row_count == len(view.trace.events) == 64
        view.choose(question=999)
        await settle(pilot)
        assert view.trace is None and "has questions 0.." in view.query_one("#trace-summary").content.plain


async def test_t_traces_the_highlighted_candidate(study, monkeypatch):
    app = app_for(study.folder, baselines=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        board = app.query_one(Leaderboard)
        board.select_id(3)
        await pilot.press("t")
        await settle(pilot)
        view = app.query_one(TraceView)
        assert app.query_one(TabbedContent).active == "trace"
        assert view.trace is not None and view.trace.source == "sandbox re-run"
        assert view.trace.controller == "r0003 momentum-lite"
        assert view.trace.beta == board.candidates[3].best.beta
        assert view.grid.counts["opened"] >= 2

        # without the sandbox, it starts at an episode the store recorded
        monkeypatch.setattr(traces, "sandbox_trace_function", lambda: None)
        monkeypatch.setattr("autotts_tui.app.sandbox_trace_function", lambda: None)
        await pilot.press("1")
        board.select_id(1)
        await pilot.press("t")
        await settle(pilot)
        assert view.trace is not None and view.trace.source == "recorded trace"
        assert view.trace.controller == "r0001 sc-budget"
        view.choose(seed=7)
        await settle(pilot)
        assert view.trace is None
        assert "no trace for r0001" in view.query_one("#trace-summary").content.plain


async def test_new_candidates_appear_while_the_app_runs(tmp_path):
    study = build_demo_study(tmp_path / "live", n_seeds=2, count=2)
    progress = tmp_path / "progress.json"
    app = app_for(study.folder, poll_interval=0.2, baselines=False, progress_file=progress)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        board = app.query_one(Leaderboard)
        assert board.row_count == 2

        progress.write_bytes(orjson.dumps({"run": "lockstep-vote", "state": "running", "started": time.time(),
                                           "updated": time.time(), "done": 40, "total": 160}))
        svc = demo_service(study, seconds=1.0)
        with svc.store:  # the service writes, as the MCP server would
            for k, (name, source) in enumerate(CANDIDATES[2:4]):
                await asyncio.to_thread(record_candidate, svc, name, source, created=BASE_TIME + 1000 + k, traces=0)
        written = time.monotonic()
        while board.row_count < 4 and time.monotonic() - written < 10:
            await pilot.pause(0.05)
        seen_after = time.monotonic() - written
        assert board.row_count == 4, "new candidates did not appear"
        assert seen_after < 3.0  # polled every 0.2 s; generous for a loaded CI machine
        await settle(pilot)
        assert "★" in board.get_row("4")[0].plain and "★" not in board.get_row("2")[0].plain
        assert board.unseen == {3, 4}
        assert "•" in board.get_row("3")[0].plain  # arrived live, not yet visited
        strip = app.query_one(ProgressStrip)
        assert strip.has_class("-active") and "lockstep-vote" in strip.query_one("#progress-label").content.plain
        log_text = "\n".join(app.query_one(LogPane).history)
        assert "new candidate r0003 momentum-lite" in log_text and "new candidate r0004 broken-idea" in log_text
        assert app.query_one(TraceView)._candidate_choices[0] == ("r0003 momentum-lite", "run:3")

        progress.write_bytes(orjson.dumps({"run": "lockstep-vote", "state": "done", "done": 160, "total": 160}))
        for _ in range(40):
            await pilot.pause(0.05)
            if not strip.has_class("-active"):
                break
        assert not strip.has_class("-active")


def test_cli_tui_opens_the_study_read_only(study, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from autotts.cli import main
    from autotts_tui.app import AutoTTSApp

    seen = {}
    monkeypatch.setattr(AutoTTSApp, "run", lambda self: seen.update(app=self))
    result = CliRunner().invoke(main, ["tui", str(study.folder), "--theme", "light", "--utc", "--poll", "1"])
    assert result.exit_code == 0, result.output
    app = seen["app"]
    assert app.reader.store.readonly and app.poll_interval == 1 and app.tz is dt.UTC and not app._dark
    app.reader.close()
    result = CliRunner().invoke(main, ["tui", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2 and "no study at" in result.output
    monkeypatch.setenv("AUTOTTS_STUDY", str(study.folder))
    assert CliRunner().invoke(main, ["tui"]).exit_code == 0 and seen["app"].reader.folder == study.folder
    seen["app"].reader.close()


async def test_the_actions_table_is_as_wide_as_its_own_trace(study):
    """A cleared DataTable keeps old column widths: after a trace with `prune` (5 letters), one with only `read`
    steps must not keep a 5-wide op column."""
    app = app_for(study.folder, baselines=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("4")
        view = app.query_one(TraceView)
        episodes = [(ref, q) for _, ref in view._candidate_choices for q in range(3)]
        for ref, q in episodes:
            view.choose(controller=ref, question=q, seed=0)
            await settle(pilot)
            if view.trace is not None and any(ev[0] == "prune" for ev in view.trace.events):
                break
        else:
            pytest.fail("no demo candidate prunes in its first episode")
        timeline = view.query_one("#trace-timeline")

        def op_width() -> int:  # what is drawn, auto-sized or not
            return timeline.ordered_columns[0].get_render_width(timeline) - 2 * timeline.cell_padding

        assert op_width() == 5
        view.choose(controller="spec:sc:n=64", question=3, seed=0)
        await settle(pilot)
        assert {ev[0] for ev in view.trace.events} == {"read"}
        assert op_width() == 4
