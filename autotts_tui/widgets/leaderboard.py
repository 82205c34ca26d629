"""The leaderboard: one row per candidate run, newest marked, sortable by any column."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from autotts_tui.formatting import DASH, fmt_acc, fmt_time, fmt_tokens, truncate
from autotts_tui.model import Candidate

NAME_WIDTH = 12


def _none_last(value: float | None, *, descending: bool) -> tuple[int, float]:
    if value is None:
        return (1, 0.0)
    return (0, -value if descending else value)


def _acc(beta: float) -> Callable[[Candidate], Any]:
    return lambda c: _none_last(None if (s := c.score_at(beta)) is None else s.accuracy, descending=True)


def _tok(beta: float) -> Callable[[Candidate], Any]:
    return lambda c: _none_last(None if (s := c.score_at(beta)) is None else s.tokens, descending=False)


SORTS: dict[str, tuple[str, Callable[[Candidate], Any]]] = {
    "obj": ("tokens to SC@64", lambda c: c.rank_key()),
    "best": ("best accuracy", lambda c: c.objective_key()),
    "id": ("newest", lambda c: -c.id),
    "name": ("name", lambda c: (c.name.lower(), -c.id)),
    "time": ("time", lambda c: -c.finished),
    "acc05": ("acc β=0.5", _acc(0.5)),
    "tok05": ("tokens β=0.5", _tok(0.5)),
    "acc1": ("acc β=1", _acc(1.0)),
    "tok1": ("tokens β=1", _tok(1.0)),
    "mono": ("monotone", lambda c: ({True: 0, False: 1, None: 2}[c.monotone], c.objective_key())),
    "status": ("status", lambda c: (c.status != "ok", c.status, -c.id)),
}
"""Column key → (description, ascending sort key: the natural order, best first)."""
SORT_CYCLE = ("obj", "best", "id", "acc05", "tok05", "acc1", "tok1", "name", "mono", "status")

COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("mark", " ", 3),
    ("id", "run", 5),
    ("name", "name", NAME_WIDTH),
    ("time", "time", 5),
    ("acc05", "acc\nβ.5", 4),
    ("tok05", "tok\nβ.5", 5),
    ("acc1", "acc\nβ1", 4),
    ("tok1", "tok\nβ1", 5),
    ("obj", "tok\n%SC", 5),
    ("best", "best\nacc", 4),
    ("mono", "mono", 4),
    ("status", "status", 40),
)
"""(key, header, width). Everything up to `mono` fits 80 columns; the status message follows."""


class Leaderboard(DataTable):
    """Candidates, ranked by the discovery objective unless sorted otherwise (`s` cycles, `r` reverses,
    or click a column header). `space` adds a candidate to the plot, `enter` opens it, `t` traces it."""

    BINDINGS = [
        Binding("s", "cycle_sort", "Sort"),
        Binding("r", "reverse_sort", "Reverse", show=False),
        Binding("space", "toggle_plot", "Plot ±"),
        Binding("t", "trace", "Trace"),
    ]

    @dataclass
    class Highlighted(Message):
        """The cursor moved to a candidate."""

        candidate_id: int

    @dataclass
    class Open(Message):
        """Enter on a candidate: show its detail."""

        candidate_id: int

    @dataclass
    class Trace(Message):
        """`t` on a candidate: trace one of its episodes."""

        candidate_id: int

    @dataclass
    class PlotToggled(Message):
        candidate_id: int

    def __init__(self, *, tz: _dt.tzinfo | None = None, **kwargs: Any):
        super().__init__(cursor_type="row", zebra_stripes=True, header_height=2, **kwargs)
        self.tz = tz
        self.candidates: dict[int, Candidate] = {}
        self.plotted: set[int] = set()
        self.unseen: set[int] = set()
        """Candidates that arrived while the app was open and whose row the cursor has not visited."""
        self.sort_key = "obj"
        self.sort_reverse = False

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            numeric = key not in ("mark", "id", "name", "time", "mono", "status")
            self.add_column(Text(label, justify="right" if numeric else "left"), key=key, width=width)
        self._update_title()

    # ----- data -----------------------------------------------------------------------------------------------
    @property
    def newest_id(self) -> int | None:
        return max(self.candidates, default=None)

    def upsert(self, candidates: Iterable[Candidate], *, live_new: Iterable[int] = ()) -> None:
        """Add or replace rows, keep the sort order and keep the cursor on the same candidate."""
        current = self.current_id()
        old_newest = self.newest_id
        self.unseen |= set(live_new)
        batch = list(candidates)
        fresh = [c for c in batch if c.id not in self.candidates]
        self.candidates.update((c.id, c) for c in batch)
        for c in fresh:
            self.add_row(*self._cells(c), key=str(c.id))
        changed = {c.id for c in batch} - {c.id for c in fresh}
        if old_newest is not None and old_newest != self.newest_id:
            changed.add(old_newest)
        self.refresh_row_marks(*changed)
        self._apply_sort(current)

    def refresh_row_marks(self, *ids: int) -> None:
        """Re-render the rows of these candidates."""
        for i in ids:
            if i in self.candidates:
                cells = self._cells(self.candidates[i])
                for (col, _, _), value in zip(COLUMNS, cells, strict=True):
                    self.update_cell(str(i), col, value)

    def set_plotted(self, ids: Iterable[int]) -> None:
        old = self.plotted
        self.plotted = set(ids)
        self.refresh_row_marks(*(old ^ self.plotted))

    def current_id(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # cursor outside the table
            return None
        return int(key.value) if key.value is not None else None

    def select_id(self, candidate_id: int) -> None:
        try:
            self.move_cursor(row=self.get_row_index(str(candidate_id)))
        except Exception:  # row not present
            pass

    def _cells(self, c: Candidate) -> list[Any]:
        newest = c.id == self.newest_id
        new_style = "bold" if c.id in self.unseen else ""
        mark = Text()
        mark.append("◼" if c.id in self.plotted else " ", style="bold cyan")
        mark.append("★" if newest else ("•" if c.id in self.unseen else " "), style="bold yellow")
        mark.append({"ok": " ", "error": "✗", "refused": "⊘"}.get(c.status, "?"),
                    style="bold red" if c.status == "error" else "bold yellow")

        def num(text: str, style: str = "") -> Text:
            return Text(text, style=f"{style} {new_style}".strip(), justify="right")

        s05, s1 = c.score_at(0.5), c.score_at(1.0)
        if c.status == "ok":
            status = Text("ok" if c.audit_passed is not False else "ok · audit ✗",
                          style="green" if c.audit_passed is not False else "yellow")
        else:
            status = Text(truncate(f"{c.status}: {c.error or ''}", 80), style="red" if c.status == "error" else
                          "yellow")
        mono = Text(DASH if c.monotone is None else ("✓" if c.monotone else "✗"),
                    style="" if c.monotone is None else ("green" if c.monotone else "red"), justify="center")
        return [
            mark,
            Text(c.run_id, style=new_style or "dim"),
            Text(truncate(c.name, NAME_WIDTH), style=new_style),
            Text(fmt_time(c.finished, self.tz, seconds=False), style="dim"),
            num(fmt_acc(s05.accuracy if s05 else None)),
            num(fmt_tokens(s05.tokens if s05 else None)),
            num(fmt_acc(s1.accuracy if s1 else None)),
            num(fmt_tokens(s1.tokens if s1 else None)),
            num(_pct_of_sc64(c), "bold"),
            num(fmt_acc(c.best.accuracy if c.best else None)),
            mono,
            status,
        ]

    # ----- sorting ---------------------------------------------------------------------------------------------
    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        if key not in SORTS:
            return
        if reverse is None:
            reverse = (not self.sort_reverse) if key == self.sort_key else False
        self.sort_key, self.sort_reverse = key, reverse
        self._apply_sort(self.current_id())

    def _apply_sort(self, keep: int | None) -> None:
        by_run_id = {c.run_id: c for c in self.candidates.values()}
        fn = SORTS[self.sort_key][1]
        self.sort("id", key=lambda run_id: fn(by_run_id[_plain(run_id)]), reverse=self.sort_reverse)
        if keep is not None:
            self.select_id(keep)
        self._update_title()

    def _update_title(self) -> None:
        n = len(self.candidates)
        ok = sum(c.ok for c in self.candidates.values())
        arrow = "↑" if self.sort_reverse else "↓"
        self.border_title = f"Leaderboard · {n} run{'s' if n != 1 else ''} ({ok} scored)"
        self.border_subtitle = f"sort: {SORTS[self.sort_key][0]} {arrow} · s sort · r reverse · space plot"

    def action_cycle_sort(self) -> None:
        k = SORT_CYCLE.index(self.sort_key) if self.sort_key in SORT_CYCLE else -1
        self.sort_by(SORT_CYCLE[(k + 1) % len(SORT_CYCLE)], reverse=False)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_key, reverse=not self.sort_reverse)

    def action_toggle_plot(self) -> None:
        cid = self.current_id()
        if cid is not None:
            self.post_message(self.PlotToggled(cid))

    def action_trace(self) -> None:
        cid = self.current_id()
        if cid is not None:
            self.post_message(self.Trace(cid))

    # ----- events ----------------------------------------------------------------------------------------------
    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value is None:
            return
        cid = int(event.row_key.value)
        if cid in self.unseen:
            self.unseen.discard(cid)
            self.refresh_row_marks(cid)
        self.post_message(self.Highlighted(cid))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.Open(int(event.row_key.value)))


def _pct_of_sc64(c: Candidate) -> str:
    """Tokens to reach SC@64's accuracy as % of SC@64's; `n.r.` when not reached, `q` marks a quick run."""
    o = c.objective
    if o is None:
        return DASH
    text = "n.r." if o.pct_of_sc64 is None else f"{o.pct_of_sc64:.0f}%"
    return text + ("q" if c.quick else "")


def _plain(value: Any) -> str:
    return value.plain if isinstance(value, Text) else str(value)
