"""The search objective as numbers: how many tokens a candidate's β curve needs to reach SC@64's accuracy, the same
against CMC's curve, an area under the accuracy-vs-log-tokens curve, and the leaderboard order built from them.

Definitions (all on one environment's curve, or on a mean curve over environments from `mean_curve`):

* **Curve.** A candidate's points (one per β: accuracy %, mean tokens per question), sorted by tokens; at equal
  tokens the more accurate point comes first. Tokens below 1 count as 1 (so that logs exist).
* **Tokens to reach accuracy X** (`tokens_to_accuracy`): walk the sorted points to the first one with
  accuracy ≥ X; if it is the cheapest point, its tokens; otherwise interpolate between it and the point before
  it linearly in log10(tokens) against accuracy (points at equal tokens count once, with their best accuracy). None ("not reached") when no point reaches X. (This differs
  from `core.stats.tokens_to_reach`, which interpolates linearly in tokens along the Pareto frontier.)
* **vs SC@64**: `pct_of_sc64` = tokens to reach SC@64's accuracy / SC@64's tokens × 100.
* **vs CMC**: `pct_of_cmc` = tokens the candidate needs to reach SC@64's accuracy / tokens CMC's β curve needs
  for the same accuracy (same interpolation) × 100; None when either never reaches it (the render says which).
  Beside it, `beta_gaps`: candidate − CMC accuracy at each β both curves have.
* **AUC** (`auc_mean_accuracy`): the curve as a function of x = log10(tokens), linear between its points and held
  flat (at its end points' accuracies) outside them, integrated over x ∈ [4, 6.5] (10^4 … 10^6.5 ≈ 3.16M tokens,
  `TOKEN_RANGE`) and divided by the range's width 2.5: a mean accuracy in percent. Holding the curve flat
  credits a curve with its cheapest accuracy below its cheapest point, so AUC is a secondary figure; the ranking
  leads with tokens-to-SC@64.
* **Ranking** (`rank_key`, `leaderboard`): only full-grid runs on the study's full seeds and questions are
  ranked; probes (a subset of the β grid) and quick runs (fewer seeds or questions) are listed apart. Ranked
  runs that reach SC@64's accuracy come first, fewest `pct_of_sc64` first; then runs that never reach it, highest
  AUC first; ties are broken by higher AUC, then by the order given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.stats import seed_mean

if TYPE_CHECKING:
    from core.evaluate import EvalResult

TOKEN_RANGE: tuple[float, float] = (1e4, 10**6.5)
"""Token range (mean tokens per question) over which the AUC is taken, log10 4 … 6.5."""

PAGE_CHARS = 8_000


@dataclass(frozen=True)
class CurvePoint:
    """One setting (β) of a controller on one environment or averaged over several."""

    accuracy: float
    """Accuracy in percent: the mean over seeds of the per-seed accuracy (mean over questions)."""
    tokens: float
    """Mean tokens per question (mean over seeds of the per-seed mean)."""
    beta: float | None = None
    """The β of this point (None for a baseline point such as SC@64)."""
    seed_accuracy: tuple[float, ...] = field(default=(), repr=False)
    """Per-seed accuracies in percent (empty when not known)."""
    seed_tokens: tuple[float, ...] = field(default=(), repr=False)
    """Per-seed mean tokens per question (empty when not known)."""
    label: str = ""
    """A display label (e.g. `cmc:beta=0.5`)."""

    @property
    def accuracy_se(self) -> float | None:
        """Standard error over seeds of `accuracy` (None without per-seed values)."""
        return seed_mean(self.seed_accuracy).se if self.seed_accuracy else None

    @property
    def tokens_se(self) -> float | None:
        """Standard error over seeds of `tokens` (None without per-seed values)."""
        return seed_mean(self.seed_tokens).se if self.seed_tokens else None


def curve_point(result: EvalResult, beta: float | None = None, label: str | None = None) -> CurvePoint:
    """A CurvePoint from an evaluation result (unrounded accuracy: the mean of its per-seed accuracies)."""
    acc = result.per_seed_accuracy
    tok = result.per_seed_tokens
    return CurvePoint(accuracy=float(acc.mean()), tokens=float(tok.mean()), beta=beta,
                      seed_accuracy=tuple(float(x) for x in acc), seed_tokens=tuple(float(x) for x in tok),
                      label=result.controller if label is None else label)


def mean_points(points: Sequence[CurvePoint]) -> CurvePoint:
    """The mean of one setting's points over environments (equal weight per environment; per seed too)."""
    if not points:
        raise ValueError("mean of no points")
    acc = float(np.mean([p.accuracy for p in points]))
    tok = float(np.mean([p.tokens for p in points]))

    def per_seed(values: list[tuple[float, ...]]) -> tuple[float, ...]:
        if any(not v for v in values) or len({len(v) for v in values}) != 1:
            return ()
        return tuple(float(x) for x in np.mean(np.asarray(values, dtype=np.float64), axis=0))

    return CurvePoint(acc, tok, points[0].beta, per_seed([p.seed_accuracy for p in points]),
                      per_seed([p.seed_tokens for p in points]), points[0].label)


def mean_curve(curves: Sequence[Sequence[CurvePoint]]) -> list[CurvePoint]:
    """Per β, the mean over environments of their curves (every curve must have the same βs), sorted by β."""
    if not curves:
        return []
    betas = [sorted(p.beta for p in c) for c in curves]  # type: ignore[type-var]
    if any(b != betas[0] for b in betas):
        raise ValueError(f"curves have different β sets: {betas}")
    by_beta = [{p.beta: p for p in c} for c in curves]
    return [mean_points([m[b] for m in by_beta]) for b in betas[0]]


def _sorted(curve: Sequence[CurvePoint]) -> list[CurvePoint]:
    return sorted(curve, key=lambda p: (p.tokens, -p.accuracy))


def _x(tokens: float) -> float:
    return math.log10(max(1.0, float(tokens)))


def tokens_to_accuracy(curve: Sequence[CurvePoint], target: float) -> float | None:
    """Tokens the curve needs to reach `target` accuracy (module docstring: first crossing along the curve sorted
    by tokens, log-linear interpolation); None when no point reaches it. Points at equal tokens count with their
    best accuracy, as in `accuracy_at_tokens`, so that the curve there is at the target."""
    xs, ys, ts = _knots(curve)
    for k, (x1, y1) in enumerate(zip(xs, ys, strict=True)):
        if y1 >= target:
            if k == 0:
                return ts[0]
            x0, y0 = xs[k - 1], ys[k - 1]
            return 10 ** (x0 + (target - y0) / (y1 - y0) * (x1 - x0))
    return None


def accuracy_at_tokens(curve: Sequence[CurvePoint], tokens: float) -> float:
    """The curve's accuracy at `tokens`: linear in log10(tokens) between points, flat beyond its ends; points at
    equal tokens count with their best accuracy."""
    xs, ys, _ = _knots(curve)
    return float(np.interp(_x(tokens), xs, ys))


def _knots(curve: Sequence[CurvePoint]) -> tuple[list[float], list[float], list[float]]:
    """log10 tokens, accuracy and tokens (at least 1) of the curve's distinct token levels, sorted by tokens."""
    if not curve:
        raise ValueError("empty curve")
    xs: list[float] = []
    ys: list[float] = []
    ts: list[float] = []
    for p in _sorted(curve):
        x = _x(p.tokens)
        if xs and x == xs[-1]:
            ys[-1] = max(ys[-1], p.accuracy)
        else:
            xs.append(x)
            ys.append(float(p.accuracy))
            ts.append(max(1.0, float(p.tokens)))
    return xs, ys, ts


def auc_mean_accuracy(curve: Sequence[CurvePoint], token_range: tuple[float, float] = TOKEN_RANGE) -> float:
    """Area under accuracy vs log10(tokens) over `token_range`, divided by the range's width: a mean accuracy (%).

    Exact for the piecewise-linear curve (trapezoids between its knots)."""
    lo, hi = _x(token_range[0]), _x(token_range[1])
    if not hi > lo:
        raise ValueError(f"token range must be increasing, got {token_range}")
    xs, ys, _ = _knots(curve)
    grid = sorted({lo, hi, *(x for x in xs if lo < x < hi)})
    vals = np.interp(grid, xs, ys)
    area = float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
    return area / (hi - lo)


@dataclass(frozen=True)
class Objective:
    """A candidate's β curve scored against SC@64 and CMC (definitions in the module docstring)."""

    target_accuracy: float
    """SC@64's accuracy (%): the level tokens are counted to."""
    sc64_tokens: float
    """SC@64's mean tokens per question."""
    tokens_to_sc64: float | None
    """Tokens the candidate's curve needs to reach SC@64's accuracy (None: not reached)."""
    pct_of_sc64: float | None
    """tokens_to_sc64 as a percentage of SC@64's tokens (lower is better; None: not reached)."""
    cmc_tokens_to_sc64: float | None
    """Tokens CMC's curve needs for SC@64's accuracy (None: CMC does not reach it, or no CMC curve given)."""
    pct_of_cmc: float | None
    """tokens_to_sc64 as a percentage of cmc_tokens_to_sc64 (None when either is None)."""
    auc: float
    """Mean accuracy (%) of the curve over `auc_range` in log10 tokens."""
    cmc_auc: float | None
    """The same for CMC's curve (None: no CMC curve given)."""
    auc_range: tuple[float, float]
    """The token range of both AUCs."""
    beta_gaps: tuple[tuple[float, float], ...]
    """(β, candidate accuracy − CMC accuracy) for every β both curves have, in β order."""
    best_accuracy: float
    """The curve's highest accuracy (%)."""
    best_accuracy_tokens: float
    """Mean tokens of that point."""
    n_points: int
    """Points on the curve."""

    @property
    def reached(self) -> bool:
        """Whether the curve reaches SC@64's accuracy."""
        return self.tokens_to_sc64 is not None


def objective(curve: Sequence[CurvePoint], sc64: CurvePoint, cmc: Sequence[CurvePoint] | None = None, *,
              token_range: tuple[float, float] = TOKEN_RANGE) -> Objective:
    """Score a candidate's curve against the SC@64 point and (optionally) CMC's β curve."""
    if not curve:
        raise ValueError("objective of an empty curve")
    need = tokens_to_accuracy(curve, sc64.accuracy)
    cmc_need = tokens_to_accuracy(cmc, sc64.accuracy) if cmc else None
    cmc_by_beta = {p.beta: p.accuracy for p in cmc or () if p.beta is not None}
    gaps = tuple(sorted((float(p.beta), p.accuracy - cmc_by_beta[p.beta]) for p in curve
                        if p.beta is not None and p.beta in cmc_by_beta))
    best = max(_sorted(curve), key=lambda p: p.accuracy)  # the cheapest among equally accurate points
    return Objective(
        target_accuracy=sc64.accuracy, sc64_tokens=sc64.tokens, tokens_to_sc64=need,
        pct_of_sc64=None if need is None or sc64.tokens <= 0 else 100 * need / sc64.tokens,
        cmc_tokens_to_sc64=cmc_need,
        pct_of_cmc=None if need is None or cmc_need is None else 100 * need / cmc_need,
        auc=auc_mean_accuracy(curve, token_range), cmc_auc=auc_mean_accuracy(cmc, token_range) if cmc else None,
        auc_range=token_range, beta_gaps=gaps, best_accuracy=best.accuracy, best_accuracy_tokens=best.tokens,
        n_points=len(curve),
    )


def _exp(x: float) -> str:
    e = math.log10(x)
    return f"10^{e:g}" if abs(e - round(e, 2)) < 1e-9 else f"{x:,.0f}"


def render_objective(obj: Objective) -> str:
    """A few lines that say what each number compares."""
    lines = []
    if obj.tokens_to_sc64 is None:
        lines.append(f"tokens to reach SC@64's accuracy {obj.target_accuracy:.2f}%: not reached (best "
                     f"{obj.best_accuracy:.2f}% at {obj.best_accuracy_tokens:,.0f} tokens)")
    else:
        lines.append(f"tokens to reach SC@64's accuracy {obj.target_accuracy:.2f}%: {obj.tokens_to_sc64:,.0f} = "
                     f"{obj.pct_of_sc64:.1f}% of SC@64's {obj.sc64_tokens:,.0f} (interpolated along the β curve, "
                     "linear in log tokens)")
    if obj.cmc_auc is not None:
        if obj.cmc_tokens_to_sc64 is None:
            lines.append("vs CMC: CMC's β curve never reaches SC@64's accuracy"
                         + ("; the candidate does" if obj.reached else "; neither does the candidate"))
        elif obj.pct_of_cmc is None:
            lines.append(f"vs CMC: CMC reaches SC@64's accuracy at {obj.cmc_tokens_to_sc64:,.0f} tokens; "
                         "the candidate does not")
        else:
            lines.append(f"vs CMC: {obj.pct_of_cmc:.1f}% of the tokens CMC's β curve needs for SC@64's accuracy "
                         f"({obj.tokens_to_sc64:,.0f} vs {obj.cmc_tokens_to_sc64:,.0f})")
    lo, hi = obj.auc_range
    lines.append(f"AUC: mean accuracy {obj.auc:.2f}% over {_exp(lo)}…{_exp(hi)} tokens (log scale, curve flat "
                 "beyond its end points)" + ("" if obj.cmc_auc is None else f"; CMC {obj.cmc_auc:.2f}%"))
    if obj.beta_gaps:
        above = sum(1 for _, g in obj.beta_gaps if g > 0)
        lines.append("accuracy − CMC's at the same β: " + " ".join(f"β{b:g} {g:+.2f}" for b, g in obj.beta_gaps)
                     + f" (above at {above} of {len(obj.beta_gaps)})")
    return "\n".join(lines)


def render_curve(curve: Sequence[CurvePoint]) -> str:
    """One line per point, sorted by β (then tokens): accuracy and tokens with their standard errors over seeds."""
    lines = [f"{'β':>5} {'accuracy %':>10} {'± SE':>6} {'avg tokens':>11} {'± SE':>8}"]
    for p in sorted(curve, key=lambda p: (p.beta is None, p.beta or 0.0, p.tokens)):
        a_se, t_se = p.accuracy_se, p.tokens_se
        beta = p.label[:5] if p.beta is None else f"{p.beta:g}"
        lines.append(f"{beta:>5} {p.accuracy:>10.2f} {'-' if a_se is None else f'{a_se:.2f}':>6} {p.tokens:>11,.0f} "
                     f"{'-' if t_se is None else f'{t_se:,.0f}':>8}")
    return "\n".join(lines)


# ----- leaderboard ---------------------------------------------------------------------------------------------------
def is_full_grid(betas: Sequence[float], grid: Sequence[float], tol: float = 1e-9) -> bool:
    """Whether a run's βs cover every β of the study's grid."""
    return all(any(abs(b - g) <= tol for b in betas) for g in grid)


def rank_key(obj: Objective) -> tuple[int, float, float]:
    """Sort key of the ranking (ascending = better): reached SC@64 first by pct_of_sc64, then by AUC."""
    if obj.pct_of_sc64 is not None:
        return (0, obj.pct_of_sc64, -obj.auc)
    return (1, -obj.auc, 0.0)


@dataclass(frozen=True)
class LeaderboardEntry:
    """One run as the leaderboard sees it."""

    run_id: str
    """The run's id."""
    objective: Objective
    """Its objective on the environments the leaderboard is about."""
    full_grid: bool
    """Evaluated at every β of the study's grid (False: a probe)."""
    full_seeds: bool = True
    """Evaluated on the study's full seeds and questions (False: a quick run)."""
    label: str = ""
    """The run's name."""

    @property
    def rankable(self) -> bool:
        """Whether it is ranked (a full-grid, full-seed run)."""
        return self.full_grid and self.full_seeds


@dataclass(frozen=True)
class Leaderboard:
    """Runs ranked by the objective, and the probes and quick runs listed apart."""

    ranked: tuple[LeaderboardEntry, ...]
    """Full-grid, full-seed runs, best first (`rank_key`)."""
    apart: tuple[LeaderboardEntry, ...]
    """Probes and quick runs, in the same order but not ranked."""


def leaderboard(entries: Sequence[LeaderboardEntry]) -> Leaderboard:
    """Split entries into ranked and apart, each sorted by `rank_key` (stable: ties keep the order given)."""
    ranked = sorted((e for e in entries if e.rankable), key=lambda e: rank_key(e.objective))
    apart = sorted((e for e in entries if not e.rankable), key=lambda e: rank_key(e.objective))
    return Leaderboard(tuple(ranked), tuple(apart))


NAME_CHARS = 34
"""Width of the leaderboard's name column: variants of one idea differ at the end of their names."""


def _entry_line(pos: str, e: LeaderboardEntry) -> str:
    o = e.objective
    sc = "not reached" if o.pct_of_sc64 is None else f"{o.pct_of_sc64:.1f}%"
    cmc = "-" if o.pct_of_cmc is None else f"{o.pct_of_cmc:.1f}%"
    kind = "" if e.rankable else (" probe" if not e.full_grid else "") + (" quick" if not e.full_seeds else "")
    name = e.label if len(e.label) <= NAME_CHARS else e.label[: NAME_CHARS - 1] + "…"
    return (f"{pos:>4} {e.run_id[:8]:<8} {name:<{NAME_CHARS}} {sc:>11} {cmc:>7} {o.auc:>6.2f} "
            f"{o.best_accuracy:>6.2f} {o.best_accuracy_tokens:>10,.0f}{kind}")


def render_leaderboard(board: Leaderboard, *, max_chars: int = PAGE_CHARS, first_rank: int = 1) -> str:
    """The leaderboard as text of at most `max_chars` characters (rows beyond it are counted, not shown).
    `first_rank`: the rank of `board.ranked[0]`, for a page of a longer leaderboard."""
    head = [
        "rank: full-grid runs, fewest tokens to reach SC@64's accuracy (% of SC@64's tokens) first; runs that never "
        "reach it after them by AUC. Probes and quick runs are listed apart, unranked.",
        f"{'#':>4} {'run':<8} {'name':<{NAME_CHARS}} {'tok/SC@64':>11} {'tok/CMC':>7} {'AUC':>6} {'best%':>6} {'at tokens':>10}",
    ]
    body = [_entry_line(str(k + first_rank), e) for k, e in enumerate(board.ranked)]
    if board.apart:
        body.append("not ranked (probes: not the full β grid; quick: fewer seeds or questions):")
        body += [_entry_line("-", e) for e in board.apart]
    out = list(head)
    used = sum(len(x) + 1 for x in head)
    for k, line in enumerate(body):
        if used + len(line) + 1 > max_chars - 60:
            out.append(f"… {len(body) - k} more rows not shown")
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)
