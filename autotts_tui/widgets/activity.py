"""Live progress of the evaluation in flight (a one-line strip) and the log pane."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, RichLog, Static

from autotts_tui.formatting import fmt_duration, truncate
from core.progress import RunProgress


class ProgressStrip(Horizontal):
    """Shown while `progress.json` says an evaluation is running; hidden otherwise."""

    DEFAULT_CSS = """
    ProgressStrip { height: 1; display: none; background: $boost; }
    ProgressStrip.-active { display: block; }
    ProgressStrip #progress-label { width: 1fr; height: 1; }
    ProgressStrip ProgressBar { width: auto; height: 1; }
    ProgressStrip Bar { width: 20; }
    """

    def __init__(self, clock: Callable[[], float], **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.progress: RunProgress | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="progress-label")
        yield ProgressBar(total=100, show_eta=False, id="progress-bar")

    def show(self, progress: RunProgress | None) -> None:
        self.progress = progress
        active = progress is not None and progress.state == "running"
        self.set_class(active, "-active")
        if not active or progress is None:
            return
        now = self.clock()
        label = Text()
        if progress.stalled(now):
            label.append("⚠ stalled? ", style="bold yellow")
        else:
            label.append("⟳ ", style="bold")
        label.append(truncate(progress.run, 24), style="bold")
        if progress.total > 0:
            label.append(f" {progress.done:,}/{progress.total:,} {progress.unit}")
        if progress.started is not None:
            label.append(f" · {fmt_duration(now - progress.started)}", style="dim")
        if progress.message:
            label.append(f" · {truncate(progress.message, 40)}", style="dim")
        self.query_one("#progress-label", Static).update(label)
        bar = self.query_one(ProgressBar)
        if progress.total > 0:
            bar.update(total=progress.total, progress=min(progress.done, progress.total))
        else:  # not started counting yet: an indeterminate bar
            bar.update(total=None)


class LogPane(RichLog):
    """Arrivals, errors and the server's log lines (server.log in the study folder, when present)."""

    DEFAULT_CSS = "LogPane { height: 1fr; }"

    def __init__(self, **kwargs: object):
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=5000, **kwargs)  # type: ignore[arg-type]
        self.history: list[str] = []
        """Plain text of every line added (the pane itself renders lazily, once it is shown)."""

    def add(self, text: str | Text, style: str = "") -> None:
        line = Text(text, style=style) if isinstance(text, str) else text
        self.history.append(line.plain)
        del self.history[:-5000]
        self.write(line)
