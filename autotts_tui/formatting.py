"""Short, fixed-width renderings of numbers and times for narrow terminal columns."""

from __future__ import annotations

import datetime as _dt
import math

DASH = "—"


def fmt_tokens(value: float | None) -> str:
    """Token counts in at most 5 characters: 812, 9.4k, 267k, 1.21M."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    v = float(value)
    if abs(v) < 1000:
        return f"{v:.0f}"
    if abs(v) < 10_000:
        return f"{v / 1000:.1f}".removesuffix(".0") + "k"
    if abs(v) < 1_000_000:
        return f"{v / 1000:.0f}k"
    if abs(v) < 10_000_000:
        return f"{v / 1e6:.2f}".rstrip("0").rstrip(".") + "M"
    return f"{v / 1e6:.0f}M"


def fmt_acc(value: float | None) -> str:
    """Accuracy in percent in at most 4 characters (74.7, 100) — the 2-decimal figure is in the detail view."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return "100" if value >= 99.95 else f"{value:.1f}"


def fmt_beta(value: float | None) -> str:
    if value is None:
        return DASH
    return format(float(value), "g")


def fmt_time(ts: float | None, tz: _dt.tzinfo | None = None, *, seconds: bool = True) -> str:
    """HH:MM:SS (or HH:MM) of a unix time in `tz` (None: the local zone)."""
    if ts is None:
        return DASH
    return _dt.datetime.fromtimestamp(float(ts), tz).strftime("%H:%M:%S" if seconds else "%H:%M")


def fmt_datetime(ts: float | None, tz: _dt.tzinfo | None = None) -> str:
    if ts is None:
        return DASH
    return _dt.datetime.fromtimestamp(float(ts), tz).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """12.3s, 4m05s, 1h02m."""
    if seconds is None:
        return DASH
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def truncate(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
