"""The scaling plot: accuracy against tokens (log x) for the plotted candidates, the baselines and the Pareto
frontier, redrawn whenever a candidate arrives or the selection changes."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from autotts_tui.curves import Curve, candidate_curve, frontier, mean_curves, sort_curves
from autotts_tui.formatting import fmt_acc, fmt_tokens, truncate
from autotts_tui.model import Candidate
from autotts_tui.textplot import Series, render_plot

BASELINE_COLOURS = {"SC@N": "dodger_blue1", "ASC": "dark_cyan", "ESC": "medium_purple", "Parallel-Probe": "gold3",
                    "CMC": "green3"}
BASELINE_MARKERS = {"SC@N": "●", "ASC": "■", "ESC": "▲", "Parallel-Probe": "◆", "CMC": "▼"}
CANDIDATE_COLOURS = ("red1", "dark_orange", "deep_pink2", "orange_red1", "magenta", "yellow3")
FRONTIER_STYLE = "grey50"


class PlotCanvas(Widget):
    """Draws the series it is given at whatever size it has."""

    DEFAULT_CSS = "PlotCanvas { width: 1fr; height: 1fr; }"

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.series: list[Series] = []
        self.empty_message = "computing baselines…"

    def set_series(self, series: list[Series], empty_message: str = "") -> None:
        self.series = series
        if empty_message:
            self.empty_message = empty_message
        self.refresh()

    def render(self) -> Text:
        return render_plot(self.series, self.size.width, self.size.height, empty_message=self.empty_message)


class ScalingPlot(Vertical):
    """`e` cycles the environment (search-set mean first), `b` hides baselines, `f` the frontier."""

    can_focus = True
    BINDINGS = [
        Binding("e", "next_env", "Env"),
        Binding("b", "toggle_baselines", "Baselines"),
        Binding("f", "toggle_frontier", "Frontier"),
    ]
    DEFAULT_CSS = """
    ScalingPlot #plot-title { height: 1; }
    ScalingPlot #plot-legend { width: 24; height: 1fr; padding-left: 1; }
    """

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.baselines: dict[str, list[Curve]] = {}
        self.env_names: list[str] = []
        self.candidates: list[Candidate] = []
        self.env_index = 0
        self.show_baselines = True
        self.show_frontier = True
        self.baseline_status = "computing baselines…"

    def compose(self) -> ComposeResult:
        yield Static(id="plot-title")
        with Horizontal():
            yield PlotCanvas(id="plot-canvas")
            yield Static(id="plot-legend")

    def on_mount(self) -> None:
        self.redraw()

    # ----- data ---------------------------------------------------------------------------------------------
    def set_envs(self, names: Sequence[str]) -> None:
        self.env_names = list(names)
        self.redraw()

    def set_baselines(self, per_env: dict[str, list[Curve]] | None, status: str = "") -> None:
        self.baselines = per_env or {}
        self.baseline_status = status
        self.redraw()

    def set_candidates(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.redraw()

    @property
    def env(self) -> str | None:
        """None for the search-set mean."""
        views: list[str | None] = [None, *self.env_names] if len(self.env_names) > 1 else list(self.env_names)
        if not views:
            return None
        return views[self.env_index % len(views)]

    def curves(self) -> list[Curve]:
        env = self.env
        out: list[Curve] = []
        if self.show_baselines and self.baselines:
            out += mean_curves(self.baselines) if env is None else self.baselines.get(env, [])
        for c in self.candidates:
            cc = candidate_curve(c, env)
            if cc is not None:
                out.append(cc)
        return sort_curves(out)

    # ----- drawing --------------------------------------------------------------------------------------------
    def redraw(self) -> None:
        if not self.is_mounted:
            return
        curves = self.curves()
        series: list[Series] = []
        legend = Text(no_wrap=True, overflow="ellipsis")
        k = 0
        for c in curves:
            if c.kind == "baseline":
                style, marker = BASELINE_COLOURS.get(c.label, "grey70"), BASELINE_MARKERS.get(c.label, "×")
            else:
                style, marker = CANDIDATE_COLOURS[k % len(CANDIDATE_COLOURS)], "★"
                k += 1
            series.append(Series(c.label, [(p.tokens, p.accuracy) for p in c.points], style, marker))
            legend.append(f"{marker} ", style=style)
            legend.append(truncate(c.label, 21) + "\n", style="bold" if c.kind != "baseline" else "")
        fr = frontier(curves) if self.show_frontier else []
        if len(fr) > 1:
            series.insert(0, Series("frontier", [(p.tokens, p.accuracy) for p in fr], FRONTIER_STYLE, "",
                                    dashed=True))
            legend.append("┄ ", style=FRONTIER_STYLE)
            legend.append("Pareto frontier\n")
        if fr:
            legend.append("\nfrontier points\n", style="dim")
            for p in fr[-6:]:
                legend.append(f"{fmt_acc(p.accuracy):>4} {fmt_tokens(p.tokens):>5} ", style="dim")
                legend.append(truncate(p.label, 13) + "\n", style="dim")
        env = self.env
        title = Text()
        title.append("accuracy % vs tokens/question (log) · ", style="bold")
        title.append(truncate(f"mean over {len(self.env_names)} search environments" if env is None else env, 40))
        if not self.show_baselines:
            title.append(" · baselines hidden", style="dim")
        if self.baseline_status:
            title.append(f" · {self.baseline_status}", style="dim italic")
        self.query_one("#plot-title", Static).update(title)
        self.query_one("#plot-legend", Static).update(legend)
        empty = self.baseline_status or "no candidate selected (space in the leaderboard) and no baselines"
        self.query_one(PlotCanvas).set_series(series, empty)

    def action_next_env(self) -> None:
        self.env_index += 1
        self.redraw()

    def action_toggle_baselines(self) -> None:
        self.show_baselines = not self.show_baselines
        self.redraw()

    def action_toggle_frontier(self) -> None:
        self.show_frontier = not self.show_frontier
        self.redraw()
