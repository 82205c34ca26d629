"""Screenshots of the main screens (pytest-textual-snapshot). Fixed sizes, fixed data (the demo study with
fixed timestamps, times shown in UTC, a frozen clock), so the SVGs only change when the UI does.

Update after an intended UI change with `pytest tests/test_tui_snapshots.py --snapshot-update`, then LOOK at
the new SVGs (snapshot_report.html lists the differences) before committing them.
"""

from __future__ import annotations

import datetime as dt
import time

import orjson
import pytest
from textual.worker import WorkerCancelled

from autotts_tui.app import make_app
from autotts_tui.demo_study import BASE_TIME, build_demo_study
from autotts_tui.widgets.leaderboard import Leaderboard
from autotts_tui.widgets.trace_view import TraceView

FROZEN_NOW = BASE_TIME + 2000.0


@pytest.fixture(autouse=True)
def _sandbox_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's candidates are trusted code: trace them in-process whatever AUTOTTS_SANDBOX says, so the
    screens do not depend on which isolation this machine offers."""
    monkeypatch.setenv("AUTOTTS_SANDBOX", "off")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return build_demo_study(tmp_path_factory.mktemp("tui_snap") / "demo-study", n_seeds=3,
                            sandbox={"level": "off"})


def app_for(study, **kwargs):
    app = make_app(study.folder, tz=dt.UTC, poll_interval=3600, notify_arrivals=False, clock=lambda: FROZEN_NOW,
                   **kwargs)
    app.animation_level = "none"
    return app


async def settle(pilot, rounds: int = 3) -> None:
    for _ in range(rounds):
        for worker in list(pilot.app.workers):
            try:
                await worker.wait()
            except WorkerCancelled:
                pass
        await pilot.pause()


def steps(*keys: str, select: int | None = None, until=None):
    """run_before: settle, optionally put the cursor on a run, press keys, settle again; then, with `until`,
    keep settling until `until(app)` holds (work that hops threads and message queues several times, such as
    a trace, may take more rounds than a fixed count on a busy machine)."""

    async def run(pilot) -> None:
        await settle(pilot)
        if select is not None:
            pilot.app.query_one(Leaderboard).select_id(select)
            await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        if until is not None:
            deadline = time.monotonic() + 60
            while not until(pilot.app):
                assert time.monotonic() < deadline, "the screen never reached the state to snapshot"
                await settle(pilot, rounds=1)
            await settle(pilot)

    return run


def trace_shown(app) -> bool:
    return app.query_one(TraceView).trace is not None


class TestLeaderboard:
    def test_80x24(self, snap_compare, study):
        """Six runs ranked by the objective; the newest (a refused one) starred, the failed ones last."""
        assert snap_compare(app_for(study), terminal_size=(80, 24), run_before=steps())

    def test_wide_light_sorted_newest_first(self, snap_compare, study):
        """Light theme, 130 columns (status messages visible), sorted newest first."""
        assert snap_compare(app_for(study, theme="light"), terminal_size=(130, 30), run_before=steps("s"))

    def test_progress_of_an_evaluation_in_flight(self, snap_compare, study, tmp_path):
        progress = tmp_path / "progress.json"
        progress.write_bytes(orjson.dumps({
            "run": "momentum-lite-v2", "state": "running", "started": FROZEN_NOW - 42, "updated": FROZEN_NOW - 1,
            "done": 630, "total": 1050, "unit": "episodes", "message": "β grid on 1 env"}))
        assert snap_compare(app_for(study, progress_file=progress), terminal_size=(80, 24), run_before=steps())


class TestPlot:
    def test_scaling_plot_80x24(self, snap_compare, study):
        """Baseline curves, the best and the newest candidate, the Pareto frontier."""
        assert snap_compare(app_for(study), terminal_size=(80, 24), run_before=steps("2"))


class TestCandidate:
    def test_source(self, snap_compare, study):
        assert snap_compare(app_for(study), terminal_size=(80, 24), run_before=steps("enter", select=5))

    def test_diff_against_predecessor(self, snap_compare, study):
        assert snap_compare(app_for(study), terminal_size=(100, 30), run_before=steps("enter", "d", select=5))

    def test_error(self, snap_compare, study):
        assert snap_compare(app_for(study), terminal_size=(80, 24), run_before=steps("enter", select=4))


class TestTrace:
    def test_builtin_cmc(self, snap_compare, study):
        """The trace tab's default: CMC at β=0.5 on question 0, seed 0."""
        assert snap_compare(app_for(study), terminal_size=(80, 24), run_before=steps("4", until=trace_shown))

    def test_candidate_wide(self, snap_compare, study):
        """`t` on a candidate: its episode re-run (sandbox level off in this study), 140 × 40."""
        assert snap_compare(app_for(study), terminal_size=(140, 40), run_before=steps("t", select=5, until=trace_shown))


class TestHelp:
    def test_help(self, snap_compare, study):
        assert snap_compare(app_for(study), terminal_size=(80, 24), run_before=steps("question_mark"))
