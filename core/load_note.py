"""A note on how long an evaluation took and whether the machine was busy, so that a slow result explains itself.

`measure()` wraps a call: wall time (`time.perf_counter`), CPU time of this process and of its waited-for children
(`resource.getrusage` RUSAGE_SELF + RUSAGE_CHILDREN, user + system), and the 1-minute load average at the start
and the end. The machine counts as *busy* when the higher of the two load averages exceeds the number of CPU
cores (`os.cpu_count()`): more runnable processes than cores, so the evaluation shared them.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class LoadNote:
    """Timing of one evaluation and the machine's load around it."""

    wall_s: float
    """Wall-clock seconds."""
    cpu_s: float
    """CPU seconds (user + system) of this process and its waited-for children during the call."""
    episodes: int | None
    """Episodes run (seeds × questions × settings), if given."""
    load1: float
    """The higher of the 1-minute load averages at the start and at the end."""
    cores: int
    """CPU cores of the machine."""

    @property
    def episodes_per_s(self) -> float | None:
        """Episodes per wall-clock second (None without an episode count or with no time elapsed)."""
        if self.episodes is None or self.wall_s <= 0:
            return None
        return self.episodes / self.wall_s

    @property
    def busy(self) -> bool:
        """Whether the load average exceeded the core count."""
        return self.load1 > self.cores


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _load1() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not available on this platform
        return 0.0


class measure:
    """Context manager timing a block: `with measure() as m: ...`, then `m.note(episodes=n)`.

    `loadavg` and `cores` can be replaced (tests, or a remote machine's figures)."""

    def __init__(self, *, loadavg: Callable[[], float] = _load1, cores: int | None = None):
        self._loadavg = loadavg
        self._cores = cores if cores is not None else (os.cpu_count() or 1)
        self._t0 = self._c0 = self._l0 = 0.0
        self._wall: float | None = None
        self._cpu = 0.0
        self._load = 0.0

    def __enter__(self) -> measure:
        self._l0 = self._loadavg()
        self._c0 = _cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._wall = time.perf_counter() - self._t0
        self._cpu = _cpu_seconds() - self._c0
        self._load = max(self._l0, self._loadavg())

    def note(self, episodes: int | None = None) -> LoadNote:
        """The note for the finished block."""
        if self._wall is None:
            raise RuntimeError("measure().note() is available after the with-block has ended")
        return LoadNote(wall_s=self._wall, cpu_s=self._cpu, episodes=episodes, load1=self._load, cores=self._cores)


def timed_call(fn: Callable[[], T], *, episodes: int | None = None) -> tuple[T, LoadNote]:
    """Call `fn()` under `measure` and return its result with the note."""
    with measure() as m:
        out = fn()
    return out, m.note(episodes)


def render_load_note(note: LoadNote) -> str:
    """`wall 57.2 s · CPU 55.1 s · 1,750 episodes/s · load 1.2 on 2 cores`, plus a warning when busy."""
    parts = [f"wall {note.wall_s:.2f} s", f"CPU {note.cpu_s:.2f} s"]
    eps = note.episodes_per_s
    if eps is not None:
        parts.append(f"{eps:,.0f} episodes/s")
    parts.append(f"load {note.load1:.2f} on {note.cores} cores")
    text = " · ".join(parts)
    if note.busy:
        text += (" — the machine was busy (load average above its core count): times are slower than on an idle "
                 "machine")
    return text
