"""The trace view: one episode as a width × depth grid (a row per branch, a column per 500-token interval)
beside its action timeline, with the answer, the gold answer, the stop reason and the tokens spent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select, Static

from autotts_tui.formatting import fmt_beta, fmt_tokens, truncate
from autotts_tui.traces import (
    CONTINUED,
    FINISHED,
    GOLD,
    LEFT_RUNNING,
    NONE,
    OPEN,
    OTHER,
    PICK,
    PICK_GOLD,
    PROBED,
    PRUNED,
    READ,
    EpisodeTrace,
    TraceGrid,
    classify,
)

GLYPHS = {OPEN: "▸", CONTINUED: "─", PROBED: "•", FINISHED: "■", PRUNED: "✗", LEFT_RUNNING: "✗", READ: "═", "": " "}
ANSWER_STYLES = {PICK_GOLD: "bold green3", PICK: "bold red1", GOLD: "bold dodger_blue1", OTHER: "grey62",
                 NONE: "grey50"}
MARK_STYLES = {PRUNED: "bold dark_orange", LEFT_RUNNING: "grey50"}
BASELINE_CHOICES = (("SC@64 (sc:n=64)", "spec:sc:n=64"), ("ASC", "spec:asc"), ("ESC", "spec:esc"),
                    ("Parallel-Probe", "spec:parallel-probe"), ("CMC (β)", "spec:cmc"))


def legend() -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    for kind, name in ((OPEN, "opened"), (PROBED, "probed"), (CONTINUED, "continued"), (READ, "full read"),
                       (FINISHED, "finished")):
        t.append(f"{GLYPHS[kind]} {name}  ")
    t.append("✗", style=MARK_STYLES[PRUNED])
    t.append(" pruned  ")
    t.append("✗", style=MARK_STYLES[LEFT_RUNNING])
    t.append(" running\n")
    t.append("answer ", style="dim")
    for cls, name in ((PICK_GOLD, "pick = gold"), (PICK, "pick ≠ gold"), (GOLD, "gold, not picked"),
                      (OTHER, "other")):
        t.append("■ ", style=ANSWER_STYLES[cls])
        t.append(f"{name}  ")
    return t


def render_grid(grid: TraceGrid, max_rows: int = 128) -> Text:
    """The grid as text: a token ruler, then one line per branch."""
    label_w = max(4, len(str(max((r.index for r in grid.rows), default=0))) + 2)
    out = Text(no_wrap=True, overflow="crop")
    ruler = [" "] * grid.n_columns
    for c in range(0, grid.n_columns, 10):
        mark = fmt_tokens(c * grid.interval) if c else "0"
        for k, ch in enumerate(mark):
            if c + k < grid.n_columns:
                ruler[c + k] = ch
    out.append(" " * label_w + "".join(ruler) + "\n", style="dim")
    for row in grid.rows[:max_rows]:
        out.append(f"b{row.index}".ljust(label_w), style="dim")
        for cell in row.cells:
            style = MARK_STYLES.get(cell.kind) or ANSWER_STYLES.get(cell.answer_class, "")
            out.append(GLYPHS.get(cell.kind, "?"), style=style)
        tail = f"  {row.state}"
        if row.last_answer is not None:
            tail += f" · {truncate(row.last_answer, 14)}"
        out.append(tail + "\n", style=ANSWER_STYLES[classify(row.last_answer, grid.answer, grid.gold)]
                   if row.state in ("finished", "read") else "dim")
    if len(grid.rows) > max_rows:
        out.append(f"… {len(grid.rows) - max_rows} more branches\n", style="dim")
    return out


TIMELINE_COLUMNS = (("op", "op"), ("br", "br"), ("tok", "+tok"), ("ans", "answer"))
"""(key, header) of the actions table's columns."""


class TraceView(Vertical):
    """Choose controller, environment, question, shuffle seed and β; `[` `]` step the question, `,` `.` the
    seed."""

    BINDINGS = [
        Binding("left_square_bracket", "question(-1)", "Question −", show=False),
        Binding("right_square_bracket", "question(1)", "Question +"),
        Binding("comma", "seed(-1)", "Seed −", show=False),
        Binding("full_stop", "seed(1)", "Seed +"),
    ]
    DEFAULT_CSS = """
    TraceView #trace-controls { height: 1; }
    TraceView #trace-controls Label { width: auto; padding: 0 1; color: $text-muted; }
    TraceView #trace-controls Select { width: 1fr; }
    TraceView #trace-controls SelectCurrent #label { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    TraceView #trace-controls Input { width: 6; }
    TraceView #trace-controls #trace-beta { width: 9; }
    TraceView #trace-summary { height: auto; max-height: 3; }
    TraceView #trace-grid-box { width: 1fr; height: 1fr; border: round $primary-background-lighten-2; }
    TraceView #trace-grid-box:focus-within { border: round $accent; }
    TraceView #trace-grid { width: auto; height: auto; }
    TraceView #trace-timeline { width: 34; height: 1fr; }
    TraceView #trace-legend { height: 2; }
    """

    @dataclass
    class Requested(Message):
        """The user asked for this episode's trace."""

        controller: str
        """`run:<id>` or `spec:<controller spec>`."""
        env: str
        question: int
        seed: int
        beta: float

    def __init__(self, env_names: Sequence[str], betas: Sequence[float], **kwargs: Any):
        super().__init__(**kwargs)
        self.env_names = list(env_names)
        self.betas = list(betas)
        self._candidate_choices: list[tuple[str, str]] = []
        self._suspend = False
        self.grid: TraceGrid | None = None
        self.trace: EpisodeTrace | None = None

    def compose(self) -> ComposeResult:
        default_beta = 0.5 if any(abs(b - 0.5) < 1e-9 for b in self.betas) else self.betas[len(self.betas) // 2]
        with Horizontal(id="trace-controls"):
            yield Select(list(BASELINE_CHOICES), id="trace-controller", prompt="controller",
                         value="spec:cmc", allow_blank=False, compact=True)
            yield Label("env")
            yield Select([(n, n) for n in self.env_names], id="trace-env", value=self.env_names[0],
                         allow_blank=False, compact=True)
            yield Label("q")
            yield Input("0", id="trace-question", type="integer", compact=True)
            yield Label("seed")
            yield Input("0", id="trace-seed", type="integer", compact=True)
            yield Select([(f"β={fmt_beta(b)}", b) for b in self.betas], id="trace-beta", value=default_beta,
                         allow_blank=False, compact=True)
        yield Static("pick a controller, environment, question and seed", id="trace-summary")
        with Horizontal():
            with ScrollableContainer(id="trace-grid-box"):
                yield Static(id="trace-grid")
            yield DataTable(id="trace-timeline", cursor_type="row", zebra_stripes=True)
        yield Static(legend(), id="trace-legend")

    def on_mount(self) -> None:
        self.query_one("#trace-grid-box").border_title = "branches × 500-token intervals"
        self._reset_timeline()
        self.query_one("#trace-timeline", DataTable).border_title = "actions"

    def _reset_timeline(self, rows: Sequence[tuple[str | Text, ...]] = ()) -> None:
        """The actions table with just these rows. Columns are rebuilt at widths measured from the rows: a cleared
        DataTable keeps each column's width from rows already gone, and measures new rows only once idle, so the
        table would otherwise look different depending on what was shown before and when it is drawn."""
        tl = self.query_one("#trace-timeline", DataTable)
        tl.clear(columns=True)
        for k, (key, label) in enumerate(TIMELINE_COLUMNS):
            width = max([cell_len(label), *(cell_len(row[k]) if isinstance(row[k], str) else row[k].cell_len
                                             for row in rows)])
            tl.add_column(label, key=key, width=width)
        tl.add_rows(rows)

    # ----- choices ----------------------------------------------------------------------------------------------
    def set_candidates(self, choices: Sequence[tuple[str, str]]) -> None:
        """(label, `run:<id>`) of the candidates that can be traced, shown above the baselines."""
        choices = list(choices)
        if choices == self._candidate_choices:
            return
        self._candidate_choices = choices
        select = self.query_one("#trace-controller", Select)
        current = select.value
        self._suspend = True
        try:
            select.set_options(choices + list(BASELINE_CHOICES))
            values = {v for _, v in choices} | {v for _, v in BASELINE_CHOICES}
            select.value = current if current in values else "spec:cmc"
        finally:
            self._suspend = False

    def choose(self, *, controller: str | None = None, env: str | None = None, question: int | None = None,
               seed: int | None = None, beta: float | None = None) -> None:
        """Set some controls and request the trace once."""
        self._suspend = True
        try:
            if controller is not None:
                self.query_one("#trace-controller", Select).value = controller
            if env is not None and env in self.env_names:
                self.query_one("#trace-env", Select).value = env
            if question is not None:
                self.query_one("#trace-question", Input).value = str(question)
            if seed is not None:
                self.query_one("#trace-seed", Input).value = str(seed)
            if beta is not None:
                near = min(self.betas, key=lambda b: abs(b - beta))
                self.query_one("#trace-beta", Select).value = near
        finally:
            self._suspend = False
        self.request()

    def current(self) -> TraceView.Requested | None:
        try:
            q = int(self.query_one("#trace-question", Input).value or "0")
            s = int(self.query_one("#trace-seed", Input).value or "0")
        except ValueError:
            return None
        controller = self.query_one("#trace-controller", Select).value
        env = self.query_one("#trace-env", Select).value
        beta = self.query_one("#trace-beta", Select).value
        if not isinstance(controller, str) or not isinstance(env, str) or not isinstance(beta, float | int):
            return None
        return self.Requested(controller, env, max(0, q), max(0, s), float(beta))

    def request(self) -> None:
        req = self.current()
        if req is not None:
            self.query_one("#trace-summary", Static).update(Text("tracing…", style="dim italic"))
            self.post_message(req)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if not self._suspend:
            self.request()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if not self._suspend and event.value.strip().lstrip("-").isdigit():
            self.request()

    def action_question(self, step: int) -> None:
        self._bump("#trace-question", step)

    def action_seed(self, step: int) -> None:
        self._bump("#trace-seed", step)

    def _bump(self, selector: str, step: int) -> None:
        box = self.query_one(selector, Input)
        try:
            value = int(box.value or "0")
        except ValueError:
            value = 0
        self._suspend = True
        try:
            box.value = str(max(0, value + step))
        finally:
            self._suspend = False
        self.request()

    # ----- results ----------------------------------------------------------------------------------------------
    def show_message(self, text: str | Text) -> None:
        self.trace, self.grid = None, None
        self.query_one("#trace-summary", Static).update(text)
        self.query_one("#trace-grid", Static).update("")
        self._reset_timeline()

    def show_trace(self, trace: EpisodeTrace, grid: TraceGrid, *, n_questions: int | None = None) -> None:
        self.trace, self.grid = trace, grid
        s = Text(no_wrap=False)
        s.append("answer ", style="dim")
        s.append(str(trace.answer), style=ANSWER_STYLES[PICK_GOLD if grid.correct else PICK])
        s.append(" ✓" if grid.correct else " ✗", style="green3" if grid.correct else "red1")
        s.append(" · gold ", style="dim")
        s.append(str(grid.gold), style=ANSWER_STYLES[PICK_GOLD if grid.correct else GOLD])
        c = grid.counts
        s.append(f" · {grid.tokens:,} tokens · {c['events']} actions\n")
        states = ", ".join(f"{c[k]} {k}" for k in ("finished", "read", "pruned", "running") if c[k])
        s.append(f"{c['opened']} branches" + (f" ({states})" if states else "") + " · ")
        s.append("stop: ", style="dim")
        s.append(grid.stop_reason + "\n")
        what = trace.controller + (f" at β={fmt_beta(trace.beta)}" if trace.beta is not None else "")
        qn = f" of {n_questions}" if n_questions else ""
        s.append(f"{trace.source} of {what}, question {trace.question}{qn}, seed {trace.seed}", style="dim")
        self.query_one("#trace-summary", Static).update(s)
        self.query_one("#trace-grid", Static).update(render_grid(grid))
        rows: list[tuple[str | Text, ...]] = []
        for ev in trace.events:
            op, br, cost, ans = ev[0], ev[1], int(ev[2]), ev[3]
            style = ANSWER_STYLES[classify(ans, grid.answer, grid.gold)]
            rows.append((op, Text(str(br), justify="right"), Text(str(cost), justify="right"),
                         Text("—" if ans is None else truncate(str(ans), 10), style=style if ans is not None else "dim")))
        self._reset_timeline(rows)
