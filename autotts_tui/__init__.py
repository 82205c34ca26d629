"""`autotts tui` and `autotts plot`: watch a discovery study live, and draw its scaling curves for a paper.

The package splits like frogmouth: the data side (`model`, `curves`, `traces`, `textplot`, `figure`)
never imports Textual, so `autotts plot` and the tests of the data side run without it; the Textual app lives
in `app` and `widgets/`. Nothing here writes to a study: the run store is opened read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from autotts_tui.app import AutoTTSApp

__all__ = ["make_app"]


def make_app(study: Any, **kwargs: Any) -> AutoTTSApp:
    """Build the TUI for a study folder (see `autotts_tui.app.make_app`); imports Textual on first use."""
    from autotts_tui.app import make_app as _make_app

    return _make_app(study, **kwargs)
