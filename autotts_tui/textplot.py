"""A small line plot drawn in Braille dots, as Rich `Text` (Rich only, no Textual): log-x scaling curves in a
terminal. Each character cell holds 2 × 4 dots; lines are drawn dot by dot, point markers and axis labels are
whole characters. Deterministic for a given size, so it snapshots well."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

from autotts_tui.formatting import fmt_tokens

_BRAILLE = 0x2800
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))  # [x][y] within a cell, y downwards


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    """(tokens, accuracy); drawn in the order given."""
    style: str
    marker: str = "●"
    line: bool = True
    dashed: bool = False


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks within [lo, hi] (values, not logs); thinned to 1-only when there are many decades."""
    ticks = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo <= v <= hi:
                ticks.append(v)
    if len(ticks) > 7:
        ticks = [v for v in ticks if abs(math.log10(v) - round(math.log10(v))) < 1e-9] or ticks
    return ticks


def plot_ranges(series: Sequence[Series]) -> tuple[float, float, float, float] | None:
    xs = [x for s in series for x, _ in s.points if x > 0]
    ys = [y for s in series for x, y in s.points if x > 0]
    if not xs:
        return None
    x_lo, x_hi = math.log10(min(xs)), math.log10(max(xs))
    pad = max(0.08, (x_hi - x_lo) * 0.05)
    y_lo, y_hi = min(ys), max(ys)
    ypad = max(1.0, (y_hi - y_lo) * 0.08)
    return x_lo - pad, x_hi + pad, max(0.0, y_lo - ypad), min(100.0, y_hi + ypad)


def render_plot(series: Sequence[Series], width: int, height: int, *, axis_style: str = "dim",
                empty_message: str = "no points yet") -> Text:
    """Plot `series` (x on a log scale) into a `width` × `height` block of text."""
    width, height = max(20, width), max(6, height)
    ranges = plot_ranges(series)
    if ranges is None:
        pad = "\n" * (height // 2)
        return Text(pad + empty_message.center(width), style=axis_style)
    x_lo, x_hi, y_lo, y_hi = ranges
    y_step = _nice_step(y_hi - y_lo, max(2, (height - 2) // 3))
    y_ticks = []
    t = math.ceil(y_lo / y_step) * y_step
    while t <= y_hi + 1e-9:
        y_ticks.append(t)
        t += y_step
    decimals = 0 if y_step >= 1 else 1
    label_w = max(len(f"{v:.{decimals}f}") for v in y_ticks + [y_hi]) + 1
    pw, ph = width - label_w - 1, height - 2  # plot area in cells
    dots_w, dots_h = pw * 2, ph * 4
    bits = [[0] * pw for _ in range(ph)]
    colour: list[list[str | None]] = [[None] * pw for _ in range(ph)]
    chars: list[list[tuple[str, str] | None]] = [[None] * pw for _ in range(ph)]

    def to_dot(x: float, y: float) -> tuple[int, int]:
        fx = (math.log10(x) - x_lo) / (x_hi - x_lo)
        fy = (y - y_lo) / (y_hi - y_lo) if y_hi > y_lo else 0.5
        return (min(dots_w - 1, max(0, round(fx * (dots_w - 1)))),
                min(dots_h - 1, max(0, round((1 - fy) * (dots_h - 1)))))

    def plot_dot(dx: int, dy: int, style: str) -> None:
        cx, cy = dx // 2, dy // 4
        bits[cy][cx] |= _DOTS[dx % 2][dy % 4]
        colour[cy][cx] = style

    for s in sorted(series, key=lambda s: not s.dashed):  # dashed guides (the frontier) underneath
        pts = [to_dot(x, y) for x, y in s.points if x > 0]
        if s.line:
            for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
                n = max(abs(x1 - x0), abs(y1 - y0), 1)
                for k in range(n + 1):
                    if s.dashed and (k // 2) % 2:
                        continue
                    plot_dot(round(x0 + (x1 - x0) * k / n), round(y0 + (y1 - y0) * k / n), s.style)
    for s in series:
        if s.marker:
            for dx, dy in (to_dot(x, y) for x, y in s.points if x > 0):
                chars[dy // 4][dx // 2] = (s.marker, s.style)

    out = Text(no_wrap=True, overflow="crop")
    tick_rows = {min(ph - 1, max(0, round((1 - (v - y_lo) / (y_hi - y_lo)) * (ph - 1)))): v for v in y_ticks} \
        if y_hi > y_lo else {}
    for r in range(ph):
        label = f"{tick_rows[r]:.{decimals}f}" if r in tick_rows else ""
        out.append(label.rjust(label_w - 1) + " ", style=axis_style)
        out.append("┤" if r in tick_rows else "│", style=axis_style)
        for c in range(pw):
            ch = chars[r][c]
            if ch is not None:
                out.append(ch[0], style=ch[1])
            elif bits[r][c]:
                out.append(chr(_BRAILLE + bits[r][c]), style=colour[r][c] or "")
            else:
                out.append(" ")
        out.append("\n")
    # x axis
    ticks = [v for v in log_ticks(10**x_lo, 10**x_hi)]
    axis = ["─"] * pw
    labels = [" "] * (pw + 8)
    for v in ticks:
        c = min(pw - 1, max(0, round((math.log10(v) - x_lo) / (x_hi - x_lo) * (pw - 1))))
        axis[c] = "┬"
        text = fmt_tokens(v)
        start = max(0, c - len(text) // 2)
        if all(ch == " " for ch in labels[max(0, start - 1): start + len(text) + 1]):
            labels[start:start + len(text)] = list(text)
    out.append(" " * label_w + "└" + "".join(axis) + "\n", style=axis_style)
    out.append(" " * (label_w + 1) + "".join(labels)[:pw], style=axis_style)
    return out
