"""Candidate detail: its source (syntax highlighted) or a diff against its predecessor, and per-environment
results (or the error it raised)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib

from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from autotts_tui.formatting import fmt_beta, fmt_datetime, fmt_duration, fmt_tokens
from autotts_tui.model import CandidateDetail
from core.load_note import render_load_note
from core.objective import render_objective
from core.sandbox.reports import sandbox_summary


def source_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=old_name, tofile=new_name, n=3))


class CandidatePane(Vertical):
    """`d` switches between source and diff against the predecessor."""

    can_focus = True
    BINDINGS = [Binding("d", "toggle_diff", "Source/diff")]
    DEFAULT_CSS = """
    CandidatePane #cand-summary { height: auto; max-height: 5; }
    CandidatePane #cand-code { height: 2fr; border: round $primary-background-lighten-2; }
    CandidatePane #cand-results { height: 1fr; min-height: 5; }
    CandidatePane #cand-error { height: 1fr; min-height: 5; border: round $error; display: none; }
    """

    def __init__(self, *, tz: _dt.tzinfo | None = None, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.tz = tz
        self.detail: CandidateDetail | None = None
        self.show_diff = False

    def compose(self) -> ComposeResult:
        yield Static("select a candidate in the leaderboard", id="cand-summary")
        with VerticalScroll(id="cand-code"):
            yield Static(id="cand-code-body")
        with VerticalScroll(id="cand-error"):
            yield Static(id="cand-error-body")
        table = DataTable(id="cand-results", cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        table = self.query_one("#cand-results", DataTable)
        for key, label in (("split", "split"), ("env", "environment"), ("beta", "β"), ("acc", "acc %"),
                           ("tok", "tokens"), ("opened", "max open")):
            table.add_column(label, key=key)
        self.watch(self.app, "theme", lambda _t: self._render_code(), init=False)

    def show(self, detail: CandidateDetail) -> None:
        self.detail = detail
        run = detail.run
        status = run.status
        s = Text()
        s.append(f"{run.run_id} ", style="bold")
        s.append(run.name, style="bold")
        s.append(f" · {status}", style="green" if status == "ok" else "red")
        if run.summary is not None:
            best = run.summary.best
            s.append(f" · best {best.accuracy:.2f}% @ β={fmt_beta(best.beta)} ({fmt_tokens(best.avg_tokens)} tok)")
        if run.audit is not None and run.audit.skipped is None:  # a failed evaluation skips the audit
            s.append(" · audit " + ("passed" if run.audit.passed else "FAILED"),
                     style="" if run.audit.passed else "bold red")
        s.append(f"\nrecorded {fmt_datetime(run.finished, self.tz)} · took {fmt_duration(run.seconds)}"
                 f" · sha {run.sha256[:12]}", style="dim")
        prev = detail.predecessor
        s.append(" · diff vs " + (f"{prev.run_id} {prev.name} ({detail.predecessor_reason})" if prev else
                                   "nothing (first run)"), style="dim")
        if run.isolation is not None and run.isolation.scoring is not None:  # the level, and what it leaves open
            level = run.isolation.level or "?"
            s.append(f"\n{sandbox_summary(run.isolation, None)}",
                     style="dim" if level == "strong" else "bold yellow")
        summary = run.summary
        if summary is not None and run.status == "ok":
            if summary.scope is not None:
                s.append(f"\n{summary.scope.label()}", style="bold yellow")
            if summary.objective is not None:  # the numbers the leaderboard ranks by, as the agent sees them
                s.append("\n" + render_objective(dataclasses.replace(summary.objective, beta_gaps=())))
            with_se = [p for p in summary.per_beta if p.accuracy_se is not None]
            if with_se:
                s.append("\nsearch average ± SE over seeds: " + " · ".join(
                    f"β{fmt_beta(p.beta)} {p.accuracy:.2f}±{p.accuracy_se:.2f}% {fmt_tokens(p.avg_tokens)}"
                    f"±{fmt_tokens(p.tokens_se)}" for p in with_se), style="dim")
            if summary.load is not None:
                s.append(f"\n{render_load_note(summary.load)}", style="bold yellow" if summary.load.busy else "dim")
        if summary is not None and summary.after_heldout:
            s.append(f"\n{summary.after_heldout}", style="bold yellow")
        self.query_one("#cand-summary", Static).update(s)

        table = self.query_one("#cand-results", DataTable)
        table.clear()
        for r in detail.results:
            table.add_row(r.split, r.env, fmt_beta(r.beta), Text(f"{r.accuracy:.2f}", justify="right"),
                          Text(f"{r.avg_tokens:,.0f}", justify="right"),
                          Text("—" if r.max_opened is None else str(r.max_opened), justify="right"))
        error = status != "ok"
        self.query_one("#cand-error").display = error
        table.display = not error or bool(detail.results)
        if error:
            err = Text(f"{status}: {run.error or ''}\n", style="bold red")
            if run.traceback:
                err.append(run.traceback)
            if run.stdout_tail:
                err.append("\n--- stdout ---\n" + run.stdout_tail, style="dim")
            self.query_one("#cand-error-body", Static).update(err)
        self._render_code()

    def _render_code(self) -> None:
        if self.detail is None:
            return
        dark = self.app.current_theme.dark
        theme = "monokai" if dark else "default"
        run, prev = self.detail.run, self.detail.predecessor
        code = self.query_one("#cand-code", VerticalScroll)
        if self.show_diff:
            if prev is None:
                body: Syntax | Text = Text("no predecessor: this is the study's first run", style="dim")
            else:
                diff = source_diff(prev.source or "", run.source or "",
                                   f"{prev.run_id} {prev.name}", f"{run.run_id} {run.name}")
                body = Syntax(diff, "diff", theme=theme) if diff else Text("identical source", style="dim")
            code.border_title = "diff vs predecessor · d: source"
        else:
            body = Syntax(run.source or "", "python", theme=theme, line_numbers=True, word_wrap=False)
            code.border_title = "source · d: diff"
        self.query_one("#cand-code-body", Static).update(body)

    def action_toggle_diff(self) -> None:
        self.show_diff = not self.show_diff
        self._render_code()
