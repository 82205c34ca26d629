"""The scaling-curve figure for a paper (matplotlib, imported lazily; no Textual here).

Accuracy against mean tokens per question on a log axis, one panel per environment (or their mean): the
baselines swept over their budget knob, candidates over β, and the Pareto frontier of everything drawn —
the picture of the AutoTTS paper's Figures 3/4. Input is a study folder or `autotts eval --json` output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotts_tui.curves import (
    Curve,
    candidate_curve,
    compute_baselines,
    curves_from_eval_json,
    frontier,
    mean_curves,
    sort_curves,
)
from autotts_tui.formatting import fmt_tokens

BASELINE_STYLE: dict[str, tuple[str, str]] = {
    "SC@N": ("#1f77b4", "o"),
    "ASC": ("#17becf", "s"),
    "ESC": ("#9467bd", "^"),
    "Parallel-Probe": ("#bcbd22", "D"),
    "CMC": ("#2ca02c", "v"),
}
CANDIDATE_COLOURS = ("#d62728", "#ff7f0e", "#e377c2", "#8c564b", "#7f7f7f", "#000000")
FORMATS = (".png", ".svg", ".pdf")


@dataclass
class Panel:
    title: str
    curves: list[Curve]


@dataclass
class FigureData:
    panels: list[Panel]
    note: str = ""
    """A line under the title, e.g. that the data is synthetic."""


def curve_style(curve: Curve, candidate_index: int) -> tuple[str, str]:
    if curve.kind == "baseline" and curve.label in BASELINE_STYLE:
        return BASELINE_STYLE[curve.label]
    if curve.kind == "baseline":
        return "#7f7f7f", "x"
    return CANDIDATE_COLOURS[candidate_index % len(CANDIDATE_COLOURS)], "*"


def build_figure(data: FigureData, *, title: str | None = None, show_frontier: bool = True,
                 size: tuple[float, float] | None = None) -> Any:
    """A matplotlib Figure (Agg backend; nothing is shown on screen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = data.panels or [Panel("no data", [])]
    n = len(panels)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    default_size = (7.2, 4.4) if n == 1 else (4.6 * ncols, 3.6 * nrows + 1.0)
    fig = Figure(figsize=size or default_size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles: dict[str, Any] = {}
    cand_keys: list[str] = []
    for panel in panels:
        for c in panel.curves:
            if c.kind != "baseline" and c.key not in cand_keys:
                cand_keys.append(c.key)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        panel = panels[k]
        for c in panel.curves:
            # baselines left to right; a candidate in β order, so a non-monotone schedule shows as a fold
            pts = [p for p in c.points if p.tokens > 0]
            if c.kind == "baseline":
                pts.sort(key=lambda p: p.tokens)
            if not pts:
                continue
            colour, marker = curve_style(c, cand_keys.index(c.key) if c.key in cand_keys else 0)
            is_cand = c.kind != "baseline"
            (line,) = ax.plot([p.tokens for p in pts], [p.accuracy for p in pts], marker=marker, color=colour,
                              linewidth=2.0 if is_cand else 1.3, markersize=9 if is_cand else 4.5,
                              label=c.label, zorder=4 if is_cand else 3, linestyle="-" if len(pts) > 1 else "none")
            handles.setdefault(c.label, line)
        if show_frontier:
            fr = frontier(panel.curves)
            if len(fr) > 1:
                (line,) = ax.plot([p.tokens for p in fr], [p.accuracy for p in fr], linestyle="--", color="0.35",
                                  linewidth=1.0, zorder=2, label="Pareto frontier")
                handles.setdefault("Pareto frontier", line)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_tokens(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
        ax.set_title(panel.title, fontsize=10)
        if k % ncols == 0:
            ax.set_ylabel("accuracy (%)")
        if k // ncols == nrows - 1 or k + ncols >= n:
            ax.set_xlabel("tokens per question (mean)")
    if handles and n == 1:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside right center", fontsize=8,
                   frameon=False)
    elif handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(2 * ncols, len(handles)), fontsize=8, frameon=False)
    heading = title or ""
    if data.note:
        heading = f"{heading}\n{data.note}" if heading else data.note
    if heading:
        fig.suptitle(heading, fontsize=11)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write PNG, SVG or PDF (by suffix); SVG and PDF carry no creation date (and SVG fixed ids), so reruns
    give equal files."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{out}: unknown figure format '{suffix}'; use one of {', '.join(FORMATS)}")
    metadata: dict[str, Any] = {"Date": None} if suffix == ".svg" else {"CreationDate": None} if suffix == ".pdf" \
        else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "autotts"}):  # fixed element ids instead of random ones
        fig.savefig(out, dpi=dpi, metadata=metadata)
    return out


# ----- assembling the data ------------------------------------------------------------------------------------------
def _select_panels(per_env: dict[str, list[Curve]], env: str | None, mean: bool) -> list[Panel]:
    if env is not None:
        if env not in per_env:
            raise KeyError(f"no environment '{env}' here; choose one of: {', '.join(per_env)}")
        return [Panel(env, sort_curves(per_env[env]))]
    if mean and len(per_env) > 1:
        return [Panel(f"mean over {len(per_env)} environments", sort_curves(mean_curves(per_env)))]
    return [Panel(name, sort_curves(curves)) for name, curves in per_env.items()]


def figure_data_from_eval_json(doc: dict[str, Any], *, env: str | None = None, mean: bool = False) -> FigureData:
    per_env = curves_from_eval_json(doc)
    synthetic = [e.get("env") for e in doc.get("environments", []) if isinstance(e, dict) and e.get("synthetic")]
    note = "SYNTHETIC data: says nothing about any real model" if synthetic else ""
    return FigureData(_select_panels(per_env, env, mean), note)


def figure_data_from_study(folder: str | os.PathLike, *, candidates: Sequence[str] = (), top: int = 3,
                           env: str | None = None, mean: bool = False, baselines: bool = True) -> FigureData:
    """Curves for a study: the named candidates (run ids; default: the `top` by the discovery objective)
    and the baselines evaluated on every search environment with the study's seeds and β grid."""
    from autotts_tui.model import StudyReader
    from core.discovery.store import parse_run_id

    reader = StudyReader(folder)
    try:
        update = reader.poll()
        by_id = {c.id: c for c in update.candidates}
        if candidates:
            chosen = []
            for rid in candidates:
                c = by_id.get(parse_run_id(rid))
                if c is None:
                    raise KeyError(f"no run {rid} in {reader.folder}")
                chosen.append(c)
        else:
            chosen = sorted((c for c in by_id.values() if c.ok), key=lambda c: c.rank_key())[:top]
        envs = reader.search_envs()
        per_env: dict[str, list[Curve]] = {}
        for e in envs:
            curves = compute_baselines(e, reader.study.seeds, reader.study.betas) if baselines else []
            for c in chosen:
                cc = candidate_curve(c, e.name)
                if cc is not None:
                    curves.append(cc)
            per_env[e.name] = curves
        synthetic = any(e.metadata.get("synthetic") for e in envs)
    finally:
        reader.close()
    note = "SYNTHETIC data: says nothing about any real model" if synthetic else ""
    return FigureData(_select_panels(per_env, env, mean), note)
