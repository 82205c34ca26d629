"""Statistics a researcher expects next to a replay score: seed spread, paired comparisons, the accuracy–tokens
Pareto frontier, and token savings relative to SC@64 at matched accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.evaluate import EvalResult


@dataclass(frozen=True)
class Point:
    """One controller setting on the accuracy–tokens plane."""

    tokens: float
    accuracy: float
    label: str = ""


def _t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom.

    `scipy.stats.t.ppf` computes exactly this (`t._ppf` is `stdtrit`), so the value is bit-identical; calling
    the special function directly spares `autotts eval` the second it takes to import `scipy.stats`."""
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.975))


def seed_spread(result: EvalResult) -> dict[str, float]:
    """Spread of accuracy over the shuffles: per-seed std (percent) and the 95% t-interval of the mean."""
    acc = result.per_seed_accuracy
    n = len(acc)
    if n < 2:
        return {"std": 0.0, "ci95_low": float(acc.mean()) if n else 0.0, "ci95_high": float(acc.mean()) if n else 0.0}
    std = float(acc.std(ddof=1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    mean = float(acc.mean())
    return {"std": round(std, 4), "ci95_low": round(mean - half, 4), "ci95_high": round(mean + half, 4)}


def paired_comparison(a: EvalResult, b: EvalResult) -> dict[str, Any]:
    """Compare two controllers on the same environment and shuffles (a − b).

    Per-seed accuracy differences give a paired t-test; per-episode outcomes give the discordant counts
    (questions a gets right and b wrong, and the reverse), which an exact sign test turns into a p-value.
    """
    if a.env != b.env or not np.array_equal(a.seeds, b.seeds) or a.correct.shape != b.correct.shape:
        raise ValueError("paired comparison needs two results on the same environment and seeds")
    from scipy.stats import binomtest, ttest_rel

    diff = a.per_seed_accuracy - b.per_seed_accuracy
    a_only = int((a.correct & ~b.correct).sum())
    b_only = int((~a.correct & b.correct).sum())
    n = len(diff)
    if n >= 2 and float(diff.std(ddof=1)) > 0:
        t_p = float(ttest_rel(a.per_seed_accuracy, b.per_seed_accuracy).pvalue)
        half = _t_quantile(n - 1) * float(diff.std(ddof=1)) / math.sqrt(n)
    else:
        t_p, half = (1.0 if float(diff.mean() if n else 0) == 0 else 0.0), 0.0
    sign_p = float(binomtest(a_only, a_only + b_only).pvalue) if a_only + b_only else 1.0
    mean = float(diff.mean()) if n else 0.0
    return {
        "a": a.controller, "b": b.controller, "env": a.env,
        "accuracy_diff": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)],
        "t_test_p": t_p, "a_right_b_wrong": a_only, "b_right_a_wrong": b_only, "sign_test_p": sign_p,
        "tokens_ratio": (a.avg_tokens / b.avg_tokens) if b.avg_tokens else math.inf,
    }


def pareto_frontier(points: Sequence[Point | tuple[float, float, str]]) -> list[Point]:
    """The non-dominated points (fewer tokens or higher accuracy), sorted by tokens."""
    pts = sorted((p if isinstance(p, Point) else Point(*p) for p in points), key=lambda p: (p.tokens, -p.accuracy))
    frontier: list[Point] = []
    for p in pts:
        if not frontier or p.accuracy > frontier[-1].accuracy:
            frontier.append(p)
    return frontier


def frontier_accuracy_at(frontier: Sequence[Point], tokens: float) -> float | None:
    """Accuracy the frontier reaches at `tokens`, interpolating linearly between its points (None left of it)."""
    if not frontier or tokens < frontier[0].tokens:
        return None
    for lo, hi in zip(frontier, frontier[1:], strict=False):
        if lo.tokens <= tokens < hi.tokens:
            # a frontier is a staircase of achievable settings; mixing two settings gives the line between them
            w = (tokens - lo.tokens) / (hi.tokens - lo.tokens)
            return lo.accuracy + w * (hi.accuracy - lo.accuracy)
    return frontier[-1].accuracy


def tokens_to_reach(curve: Sequence[Point | tuple[float, float, str]], accuracy: float) -> float | None:
    """Fewest tokens at which a curve's frontier reaches `accuracy` (linear between points); None if never."""
    frontier = pareto_frontier(curve)
    for i, p in enumerate(frontier):
        if p.accuracy >= accuracy:
            if i == 0:
                return p.tokens
            lo = frontier[i - 1]
            w = (accuracy - lo.accuracy) / (p.accuracy - lo.accuracy)
            return lo.tokens + w * (p.tokens - lo.tokens)
    return None


def token_saving(curve: Sequence[Point | tuple[float, float, str]], reference: Point | tuple[float, float, str]) -> float | None:
    """Fraction of the reference's tokens saved at matched accuracy (e.g. vs SC@64): 1 − tokens_needed / tokens_ref.

    None when the curve never reaches the reference's accuracy.
    """
    ref = reference if isinstance(reference, Point) else Point(*reference)
    needed = tokens_to_reach(curve, ref.accuracy)
    if needed is None or ref.tokens <= 0:
        return None
    return 1.0 - needed / ref.tokens


def frontier_position(tokens: float, accuracy: float, frontier: Sequence[Point]) -> dict[str, Any]:
    """Where a point lands against a (baseline) frontier. A point with no correct answer is dominated whatever its
    tokens: answering nothing, for free, does as well."""
    at = frontier_accuracy_at(frontier, tokens)
    dominated = accuracy <= 0 or any(
        p.tokens <= tokens and p.accuracy >= accuracy and (p.tokens, p.accuracy) != (tokens, accuracy)
        for p in frontier)
    cheapest = next((p for p in frontier if p.accuracy >= accuracy), None)
    return {
        "dominated": dominated,
        "frontier_accuracy_at_tokens": None if at is None else round(at, 4),
        "accuracy_gap": None if at is None else round(accuracy - at, 4),
        "cheapest_baseline_at_least_as_accurate": None if cheapest is None else
        {"label": cheapest.label, "tokens": round(cheapest.tokens, 1), "accuracy": cheapest.accuracy},
        "tokens_saved_vs_that_baseline": None if cheapest is None or cheapest.tokens <= 0 else
        round(1.0 - tokens / cheapest.tokens, 4),
    }


def is_monotone(values: Sequence[float]) -> bool:
    """Whether tokens rise (weakly) with β — the single-knob schedule rule."""
    return all(b >= a for a, b in zip(values, values[1:], strict=False))


# ----- standard errors over seeds and the paired test over seeds ------------------------------------------------------
# Seeds are the unit: per seed, a run's accuracy (or mean tokens) is the mean over questions; an average over seeds
# gets the standard error std(ddof=1)/√S of those per-seed values. This measures the noise of the shuffles on the
# given questions, not the noise of which questions the benchmark happens to hold.
@dataclass(frozen=True)
class SeedMean:
    """An average over seeds with its standard error."""

    mean: float
    """Mean of the per-seed values."""
    se: float
    """Standard error of that mean: std(ddof=1) / √n (0 for fewer than 2 seeds)."""
    n: int
    """Number of seeds."""


def seed_mean(per_seed: Sequence[float] | np.ndarray) -> SeedMean:
    """Mean and standard error of per-seed values."""
    x = np.asarray(per_seed, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return SeedMean(math.nan, math.nan, 0)
    se = float(x.std(ddof=1)) / math.sqrt(n) if n >= 2 else 0.0
    return SeedMean(float(x.mean()), se, n)


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of a − b over seeds, the per-seed values of both runs taken on the same shuffles."""

    diff: float
    """Mean over seeds of (a − b)."""
    se: float
    """Standard error of that mean difference (std(ddof=1) of the per-seed differences / √n)."""
    t: float
    """diff / se (±inf when se is 0 and diff is not; 0 when both are)."""
    df: int
    """Degrees of freedom, n − 1."""
    p: float
    """Two-sided p-value of the paired t-test (Student t with df degrees of freedom)."""
    ci95: tuple[float, float]
    """95% t-interval of the mean difference."""
    within_noise: bool
    """|diff| < 2·se: the difference is within about two standard errors of zero (a zero difference always is)."""
    n: int
    """Number of seeds."""


def paired_test(a_per_seed: Sequence[float] | np.ndarray, b_per_seed: Sequence[float] | np.ndarray) -> PairedTest:
    """Paired t-test over seeds of two runs' per-seed values (same seeds, same order).

    Uses `scipy.special.stdtr`/`stdtrit` for the Student t distribution (not `scipy.stats`, which is slow to
    import). With fewer than 2 seeds there is no spread: se = 0, p = 1 for a zero difference and 0 otherwise."""
    a = np.asarray(a_per_seed, dtype=np.float64)
    b = np.asarray(b_per_seed, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired test needs two equal-length 1-d arrays, got shapes {a.shape} and {b.shape}")
    d = a - b
    n = int(d.size)
    if n == 0:
        raise ValueError("paired test needs at least one seed")
    diff = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n) if n >= 2 else 0.0
    df = max(n - 1, 0)
    if se > 0:
        from scipy.special import stdtr, stdtrit

        t = diff / se
        p = float(min(1.0, 2.0 * stdtr(df, -abs(t))))
        half = float(stdtrit(df, 0.975)) * se
    else:
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        half = 0.0
    return PairedTest(diff=diff, se=se, t=t, df=df, p=p, ci95=(diff - half, diff + half),
                      within_noise=abs(diff) < 2 * se or diff == 0, n=n)
