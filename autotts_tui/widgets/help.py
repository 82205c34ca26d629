"""The keyboard help (`?`)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Everywhere", (
        ("1 … 5", "leaderboard · plot · candidate · trace · log"),
        ("tab / shift+tab", "move focus"),
        ("ctrl+t", "light / dark theme"),
        ("?", "this help"),
        ("q", "quit"),
    )),
    ("Leaderboard", (
        ("↑ ↓", "move (the candidate pane follows)"),
        ("enter", "open the candidate's source and results"),
        ("space", "add to / remove from the plot"),
        ("t", "trace one of its episodes"),
        ("s / r", "cycle the sort column / reverse it (or click a header)"),
    )),
    ("Plot", (
        ("e", "next environment (search-set mean first)"),
        ("b / f", "hide baselines / the Pareto frontier"),
    )),
    ("Candidate", (("d", "source ↔ diff against its predecessor"),)),
    ("Trace", (
        ("[ ]", "previous / next question"),
        (", .", "previous / next shuffle seed"),
        ("selects", "controller (candidates, then baselines), environment, β"),
    )),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for section, rows in KEYS:
            table.add_row(Text(section, style="bold underline"), "")
            for key, what in rows:
                table.add_row(key, what)
        with VerticalScroll() as box:
            box.border_title = "autotts tui · keys"
            box.border_subtitle = "esc to close"
            yield Static(table)
