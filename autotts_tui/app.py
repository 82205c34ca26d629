"""The Textual app: leaderboard, scaling plot, candidate detail, trace view and log over one study.

A `set_interval` timer starts a thread worker twice a second; the worker asks `StudyReader.poll()` for what
changed (SQLite reads, no UI work) and hands it to the UI thread with `call_from_thread`, so a slow disk
never blocks the screen. Baselines and traces are computed in workers of their own.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, TabbedContent, TabPane

from autotts_tui.curves import compute_baselines
from autotts_tui.formatting import fmt_acc, fmt_beta, fmt_time, fmt_tokens
from autotts_tui.model import Candidate, CandidateDetail, StudyReader, Update
from autotts_tui.traces import (
    branch_steps,
    build_grid,
    builtin_trace,
    candidate_trace,
    sandbox_settings,
    sandbox_trace_function,
)
from autotts_tui.widgets.activity import LogPane, ProgressStrip
from autotts_tui.widgets.candidate import CandidatePane
from autotts_tui.widgets.help import HelpScreen
from autotts_tui.widgets.leaderboard import Leaderboard
from autotts_tui.widgets.scaling_plot import ScalingPlot
from autotts_tui.widgets.trace_view import TraceView
from core.discovery.records import TraceKey
from core.progress import RunProgress
from core.specs import cmc_spec

TABS = ("board", "plot", "candidate", "trace", "log")

CSS = """
TabbedContent { height: 1fr; }
TabPane { padding: 0; }
Leaderboard { height: 1fr; border: round $primary-background-lighten-2; }
Leaderboard:focus { border: round $accent; }
ScalingPlot { height: 1fr; }
"""


class AutoTTSApp(App[None]):
    """`autotts tui`: a live, read-only view of a discovery study."""

    TITLE = "autotts"
    CSS = CSS
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("1", "tab('board')", "Board", show=False),
        Binding("2", "tab('plot')", "Plot", show=False),
        Binding("3", "tab('candidate')", "Candidate", show=False),
        Binding("4", "tab('trace')", "Trace", show=False),
        Binding("5", "tab('log')", "Log", show=False),
        Binding("ctrl+t", "toggle_theme", "Theme", show=False),
    ]

    def __init__(self, reader: StudyReader, *, poll_interval: float = 0.5, tz: _dt.tzinfo | None = None,
                 dark: bool = True, clock: Callable[[], float] = time.time, baselines: bool = True,
                 notify_arrivals: bool = True):
        super().__init__()
        self.reader = reader
        self.poll_interval = poll_interval
        self.tz = tz
        self.clock = clock
        self.want_baselines = baselines
        self.notify_arrivals = notify_arrivals
        self._dark = dark
        self.candidates: dict[int, Candidate] = {}
        self.plot_ids: set[int] = set()
        self.auto_plot = True
        """Plot the best and the newest candidate until the user picks with space."""
        self.polls = 0
        self._loaded = False
        self._polling = False
        self._last_error: str | None = None
        self._last_progress: RunProgress | None = None
        self._detail_id: int | None = None
        study = reader.study
        self.sub_title = (f"{reader.name} · {len(study.search)} search env{'s' if len(study.search) != 1 else ''}"
                          f" · {study.n_seeds} seeds · read-only")

    # ----- layout -----------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        study = self.reader.study
        yield Header(show_clock=False, icon="◆")
        with TabbedContent(initial="board"):
            with TabPane("1 Leaderboard", id="board"):
                yield Leaderboard(tz=self.tz, id="leaderboard")
            with TabPane("2 Plot", id="plot"):
                yield ScalingPlot(id="scaling-plot")
            with TabPane("3 Candidate", id="candidate"):
                yield CandidatePane(tz=self.tz, id="candidate-pane")
            with TabPane("4 Trace", id="trace"):
                yield TraceView(study.search_names, study.betas, id="trace-view")
            with TabPane("5 Log", id="log"):
                yield LogPane(id="log-pane")
        yield ProgressStrip(self.clock, id="progress-strip")
        yield Footer()

    def on_mount(self) -> None:
        # widget references, not queries: app.query_one searches the active screen (the help screen when open)
        self.tabs = self.query_one(TabbedContent)
        self.board = self.query_one(Leaderboard)
        self.plot = self.query_one(ScalingPlot)
        self.candidate_pane = self.query_one(CandidatePane)
        self.trace_view = self.query_one(TraceView)
        self.log_pane = self.query_one(LogPane)
        self.progress_strip = self.query_one(ProgressStrip)
        self.theme = "textual-dark" if self._dark else "textual-light"
        plot = self.plot
        plot.set_envs(self.reader.study.search_names)
        if not self.want_baselines:
            plot.set_baselines(None, "baselines off")
        self.log_line(f"opened {self.reader.folder} read-only · search: {', '.join(self.reader.study.search_names)}",
                      "dim")
        self.board.focus()
        self.poll()
        self.set_interval(self.poll_interval, self.poll)

    # ----- polling ----------------------------------------------------------------------------------------------
    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self._poll_worker()

    @work(thread=True, group="poll")
    def _poll_worker(self) -> None:
        try:
            update = self.reader.poll()
        except Exception as e:  # a locked or vanished store is shown, not fatal
            update = Update(error=f"{type(e).__name__}: {e}")
        try:
            self.call_from_thread(self._apply, update)
        except RuntimeError:  # the app is shutting down
            pass

    def _apply(self, update: Update) -> None:
        self.polls += 1
        self._polling = False
        if update.error:
            if update.error != self._last_error:
                self.log_line(f"reading the run store failed: {update.error}", "red")
            self._last_error = update.error
            return
        self._last_error = None
        first = not self._loaded  # the first successful read: what was there before the app opened
        self._loaded = True
        board = self.board
        if update.candidates:
            live_new = set() if first else update.new_ids
            self.candidates.update((c.id, c) for c in update.candidates)
            board.upsert(update.candidates, live_new=live_new)
            if first:
                n_ok = sum(c.ok for c in update.candidates)
                self.log_line(f"loaded {len(update.candidates)} runs ({n_ok} scored)", "dim")
            for c in sorted(update.candidates, key=lambda c: c.id):
                if c.id in live_new:
                    self._announce(c)
            self._refresh_plot_selection()
            self.trace_view.set_candidates(
                [(f"{c.run_id} {c.name}", f"run:{c.id}") for c in sorted(self.candidates.values(),
                                                                         key=lambda c: -c.id) if c.ok])
            if self._detail_id is None or self._detail_id in {c.id for c in update.candidates}:
                cid = board.current_id() if self._detail_id is None else self._detail_id
                if cid is not None:
                    self.load_detail(cid)
        self._show_progress(update.progress)
        for line in update.log_lines:
            self.log_line(line)
        if first and self.want_baselines:
            self._baselines_worker()

    def _announce(self, c: Candidate) -> None:
        when = fmt_time(c.finished, self.tz)
        if c.ok and c.best is not None:
            msg = (f"{c.run_id} {c.name}: best {fmt_acc(c.best.accuracy)}% at β={fmt_beta(c.best.beta)} "
                   f"({fmt_tokens(c.best.tokens)} tokens)")
            self.log_line(f"[{when}] new candidate {msg}", "green")
        else:
            msg = f"{c.run_id} {c.name}: {c.status}: {c.error or ''}"
            self.log_line(f"[{when}] new candidate {msg}", "red")
        if self.notify_arrivals:
            self.notify(msg, title="new candidate", severity="information" if c.ok else "error", timeout=4)

    def _show_progress(self, progress: RunProgress | None) -> None:
        self.progress_strip.show(progress)
        last = self._last_progress
        if progress is not None and (last is None or (last.run, last.state) != (progress.run, progress.state)):
            if progress.state == "running":
                self.log_line(f"evaluating {progress.run}: {progress.message}".rstrip(": "), "dim")
            else:
                self.log_line(f"evaluation of {progress.run} {progress.state}", "dim")
        self._last_progress = progress

    def log_line(self, text: str, style: str = "") -> None:
        self.log_pane.add(text, style)

    # ----- plot -------------------------------------------------------------------------------------------------
    def _refresh_plot_selection(self) -> None:
        if self.auto_plot:
            ok = [c for c in self.candidates.values() if c.ok]
            ids = set()
            if ok:
                ids.add(min(ok, key=lambda c: c.rank_key()).id)
                ids.add(max(ok, key=lambda c: c.id).id)
            self.plot_ids = ids
        self.board.set_plotted(self.plot_ids)
        chosen = sorted((self.candidates[i] for i in self.plot_ids if i in self.candidates), key=lambda c: c.id)
        self.plot.set_candidates(chosen)

    def on_leaderboard_plot_toggled(self, event: Leaderboard.PlotToggled) -> None:
        self.auto_plot = False
        self.plot_ids ^= {event.candidate_id}
        self._refresh_plot_selection()

    @work(thread=True, group="baselines")
    def _baselines_worker(self) -> None:
        study = self.reader.study
        self.call_from_thread(self.plot.set_baselines, None,
                              f"computing baselines ({study.n_seeds} seeds)…")
        try:
            per_env = {env.name: compute_baselines(env, study.seeds, study.betas) for env in self.reader.search_envs()}
        except Exception as e:
            self.call_from_thread(self.log_line, f"baselines failed: {type(e).__name__}: {e}", "red")
            self.call_from_thread(self.plot.set_baselines, None, "baselines failed (see log)")
            return
        self.call_from_thread(self.plot.set_baselines, per_env, "")

    # ----- candidate detail ----------------------------------------------------------------------------------------
    def on_leaderboard_highlighted(self, event: Leaderboard.Highlighted) -> None:
        self.load_detail(event.candidate_id)

    def on_leaderboard_open(self, event: Leaderboard.Open) -> None:
        self.load_detail(event.candidate_id)
        self.action_tab("candidate")

    def load_detail(self, candidate_id: int) -> None:
        self._detail_id = candidate_id
        self._detail_worker(candidate_id)

    @work(thread=True, exclusive=True, group="detail")
    def _detail_worker(self, candidate_id: int) -> None:
        try:
            detail = self.reader.detail(candidate_id)
        except Exception as e:
            self.call_from_thread(self.log_line, f"could not load r{candidate_id:04d}: {e}", "red")
            return
        self.call_from_thread(self._show_detail, detail)

    def _show_detail(self, detail: CandidateDetail) -> None:
        if detail.run.id == self._detail_id:
            self.candidate_pane.show(detail)

    # ----- traces -------------------------------------------------------------------------------------------------
    def on_leaderboard_trace(self, event: Leaderboard.Trace) -> None:
        c = self.candidates.get(event.candidate_id)
        self.action_tab("trace")
        if c is None or not c.ok:
            self.trace_view.show_message(Text("only scored candidates can be traced", style="yellow"))
            return
        self._trace_start_worker(c)

    @work(thread=True, exclusive=True, group="trace-start")
    def _trace_start_worker(self, c: Candidate) -> None:
        """Trace a candidate at its best β; without the sandbox, start at an episode the store recorded."""
        beta = c.best.beta if c.best is not None else 0.5
        kwargs: dict[str, Any] = {"controller": f"run:{c.id}", "beta": beta}
        if sandbox_trace_function() is None:
            recorded = self.reader.store.recorded_traces(c.id)
            if recorded:
                first = recorded[0]
                kwargs.update(env=first.env, beta=first.beta, seed=first.seed, question=first.question)
        self.call_from_thread(lambda: self.trace_view.choose(**kwargs))

    def on_trace_view_requested(self, event: TraceView.Requested) -> None:
        self._trace_worker(event)

    @work(thread=True, exclusive=True, group="trace")
    def _trace_worker(self, req: TraceView.Requested) -> None:
        view = self.trace_view
        try:
            env = self.reader.search_env(req.env)
            if req.question >= env.n_questions:
                self.call_from_thread(view.show_message, Text(
                    f"{req.env} has questions 0..{env.n_questions - 1}", style="yellow"))
                return
            kind, _, ref = req.controller.partition(":")
            if kind == "spec":
                spec = cmc_spec(float(req.beta)) if ref == "cmc" else ref
                trace = builtin_trace(env, spec, req.question, req.seed)
            else:
                run_id = int(ref)
                run = self.reader.store.run(run_id, with_source=True)
                recorded = self.reader.store.trace(run_id, TraceKey(req.env, req.beta, req.seed, req.question))
                trace = candidate_trace(run.source or "", f"{run.run_id} {run.name}", env, req.beta,
                                        req.question, req.seed, recorded,
                                        sandbox_settings(self.reader.study.sandbox))
                if trace is None:
                    self.call_from_thread(view.show_message, self._no_trace_message(run_id, req))
                    return
            gold = env.gold_answers[req.question] if env.gold_answers is not None else None
            grid = build_grid(trace.events, interval=int(env.interval[req.question]), answer=trace.answer, gold=gold,
                              steps=branch_steps(env, req.question, req.seed), tokens=trace.tokens)
        except Exception as e:
            self.call_from_thread(view.show_message, Text(f"could not trace: {type(e).__name__}: {e}", style="red"))
            return
        if view.current() == req:
            self.call_from_thread(view.show_trace, trace, grid, n_questions=env.n_questions)

    def _no_trace_message(self, run_id: int, req: TraceView.Requested) -> Text:
        recorded = self.reader.store.recorded_traces(run_id)
        t = Text(f"no trace for r{run_id:04d} at β={fmt_beta(req.beta)}, q{req.question}, seed {req.seed}: ",
                 style="yellow")
        t.append("the sandbox (core.sandbox.trace_episode) is not available to re-run the candidate, and the run "
                 "store recorded no trace of this episode. ")
        if recorded:
            shown = ", ".join(f"{k.env} β={fmt_beta(k.beta)} q{k.question} seed {k.seed}" for k in recorded[:4])
            t.append(f"Recorded: {shown}" + (" …" if len(recorded) > 4 else ""), style="dim")
        else:
            t.append("None recorded for this run (an agent records them with inspect_trace).", style="dim")
        return t

    # ----- actions ------------------------------------------------------------------------------------------------
    def action_tab(self, tab: str) -> None:
        if tab not in TABS:
            return
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
        self.tabs.active = tab
        widget = {"board": self.board, "plot": self.plot, "candidate": self.candidate_pane,
                  "trace": self.trace_view.query_one("#trace-grid-box"), "log": self.log_pane}[tab]
        widget.focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id
        if pane in TABS and self.focused is not None and event.pane not in self.focused.ancestors:
            self.call_after_refresh(self.action_tab, pane)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def on_unmount(self) -> None:
        self.reader.close()


def make_app(study: str | os.PathLike | StudyReader, *, poll_interval: float = 0.5, tz: _dt.tzinfo | None = None,
             theme: str = "dark", clock: Callable[[], float] = time.time, baselines: bool = True,
             notify_arrivals: bool = True, progress_file: str | os.PathLike | None = None,
             log_file: str | os.PathLike | None = None) -> AutoTTSApp:
    """The app for a study folder (used by `autotts tui` and the tests).

    Args:
        study: the study folder, or an open StudyReader.
        poll_interval: seconds between polls of the run store.
        tz: time zone of displayed times (None: local); tests pass UTC.
        theme: dark | light.
        clock: the time source for elapsed times (tests freeze it).
        baselines: compute the baseline curves for the plot (tests may skip them).
        notify_arrivals: pop a notification when a candidate arrives.
        progress_file, log_file: override `progress.json` / `server.log` in the study folder.
    """
    if theme not in ("dark", "light"):
        raise ValueError(f"theme must be dark or light, got {theme!r}")
    reader = study if isinstance(study, StudyReader) else StudyReader(study, progress_file=progress_file,
                                                                      log_file=log_file)
    return AutoTTSApp(reader, poll_interval=poll_interval, tz=tz, dark=theme == "dark", clock=clock,
                      baselines=baselines, notify_arrivals=notify_arrivals)
