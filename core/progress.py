"""Progress reports: the one record every long-running operation hands its progress callback.

Evaluation (`core.evaluate`), collection (`core.collect`, with `CollectProgress`) and the study's evaluation in
flight (`RunProgress`, the `progress.json` that live viewers read) all report a `Progress`; a callback is a
`ProgressCallback`. Subclasses add what only their operation knows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Progress:
    """How far an operation has got."""

    done: float
    """Units finished so far."""
    total: float | None
    """Units in all; None while unknown."""
    unit: str = ""
    """What is counted (`seeds`, `branches`, `episodes`)."""
    message: str = ""
    """What is being done, in a few words (may be empty)."""

    @property
    def fraction(self) -> float:
        """done / total in [0, 1]; 0 while the total is unknown."""
        return 0.0 if not self.total or self.total <= 0 else min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]
"""What a long operation calls after each step; an exception it raises stops the operation."""


@dataclass(frozen=True)
class ServerProgress:
    """One backend's (server's) share of a collection session."""

    name: str
    """The server (`host:port`), or the backend's kind for one in this process."""
    tokens: int = 0
    """Branch tokens it generated in this session."""
    branches: int = 0
    """Branches it finished (and logged) in this session."""
    active: int = 0
    """Branches it holds open right now."""
    down: str | None = None
    """Why it was given up (its branches went to the others); None while it works."""


@dataclass(frozen=True, kw_only=True)
class CollectProgress(Progress):
    """A collection's progress after every decode round: `done`/`total` count branches."""

    questions_done: int
    questions_total: int
    tokens: int
    """Branch tokens generated in this session (probes not counted)."""
    elapsed: float
    """Seconds since this session started generating."""
    active: int
    """Branches open right now."""
    resumed: int = 0
    """Branches found already logged when this session started."""
    servers: tuple[ServerProgress, ...] = ()
    """Per backend (server): tokens, branches and open branches in this session, and whether it was given up."""
    stage: str = "collecting"
    """"collecting", then "building store" while the store is written."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0


STALE_AFTER_S = 120.0
"""A running evaluation whose progress file is older than this is shown as possibly stalled."""


@dataclass(frozen=True, kw_only=True)
class RunProgress(Progress):
    """A study's evaluation in flight, as `progress.json` holds it (replaced atomically, so never half-written)."""

    run: str
    """The candidate (or baseline) being evaluated."""
    state: str = "running"
    """running | done | error."""
    started: float | None = None
    """Unix time the evaluation started."""
    updated: float | None = None
    """Unix time of the last report."""

    def stalled(self, now: float) -> bool:
        """Whether a running evaluation has not reported for STALE_AFTER_S seconds."""
        return self.state == "running" and self.updated is not None and now - self.updated > STALE_AFTER_S

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunProgress:
        """From a `progress.json` document; missing fields take their defaults (unit: episodes)."""
        return cls(
            run=str(d.get("run", "")), state=str(d.get("state", "running")),
            started=None if d.get("started") is None else float(d["started"]),
            updated=None if d.get("updated") is None else float(d["updated"]),
            done=int(d.get("done", 0)), total=int(d.get("total", 0)), unit=str(d.get("unit", "episodes")),
            message=str(d.get("message", "")),
        )


def read_run_progress(path: str | os.PathLike) -> RunProgress | None:
    """The `progress.json` at `path`; None when absent or unreadable."""
    try:
        return RunProgress.from_json(orjson.loads(Path(path).read_bytes()))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
