"""Statistics: frontier, interpolation, savings, seed spread and paired comparison."""

from __future__ import annotations

import numpy as np
import pytest

from core.evaluate import EvalResult
from core.stats import (
    Point,
    frontier_accuracy_at,
    frontier_position,
    is_monotone,
    paired_comparison,
    pareto_frontier,
    seed_spread,
    token_saving,
    tokens_to_reach,
)


def result(correct, tokens=None, name="x", env="e"):
    correct = np.asarray(correct, dtype=bool)
    tokens = np.full(correct.shape, 100, dtype=np.int64) if tokens is None else np.asarray(tokens)
    acc = round(100 * float(correct.mean()), 2)
    return EvalResult(env=env, controller=name, accuracy=acc, avg_tokens=float(tokens.mean()),
                      seeds=np.arange(correct.shape[0]), answers=[], correct=correct, tokens=tokens)


def test_pareto_frontier_drops_dominated_points():
    pts = [Point(100, 50, "a"), Point(200, 40, "dominated"), Point(300, 60, "b"), Point(300, 55, "worse-same-cost"),
           Point(50, 30, "c")]
    assert [p.label for p in pareto_frontier(pts)] == ["c", "a", "b"]


def test_frontier_interpolation_and_reach():
    f = pareto_frontier([Point(100, 50), Point(300, 70)])
    assert frontier_accuracy_at(f, 50) is None
    assert frontier_accuracy_at(f, 200) == pytest.approx(60)
    assert frontier_accuracy_at(f, 1000) == 70
    assert tokens_to_reach(f, 60) == pytest.approx(200)
    assert tokens_to_reach(f, 40) == 100
    assert tokens_to_reach(f, 71) is None


def test_token_saving_at_matched_accuracy():
    curve = [(100, 50, "b0"), (300, 70, "b1")]
    assert token_saving(curve, (1000, 60, "sc")) == pytest.approx(0.8)
    assert token_saving(curve, (1000, 75, "sc")) is None


def test_frontier_position():
    f = pareto_frontier([Point(100, 50, "asc"), Point(300, 70, "sc")])
    below = frontier_position(200, 55, f)
    assert below["accuracy_gap"] == pytest.approx(-5) and below["dominated"] is False
    dominated = frontier_position(400, 60, f)
    assert dominated["dominated"] is True
    assert dominated["cheapest_baseline_at_least_as_accurate"]["label"] == "sc"
    assert dominated["tokens_saved_vs_that_baseline"] == pytest.approx(1 - 400 / 300, abs=1e-4)


def test_monotone():
    assert is_monotone([1, 2, 2, 5]) and not is_monotone([1, 3, 2])


def test_seed_spread_matches_t_interval():
    rng = np.random.default_rng(0)
    r = result(rng.random((100, 30)) < 0.6)
    s = seed_spread(r)
    acc = r.per_seed_accuracy
    assert s["std"] == pytest.approx(acc.std(ddof=1), abs=1e-4)
    assert s["ci95_low"] < acc.mean() < s["ci95_high"]
    assert s["ci95_high"] - s["ci95_low"] == pytest.approx(2 * 1.984 * acc.std(ddof=1) / 10, rel=1e-3)


def test_t_quantile_is_bit_identical_to_scipy_stats():
    from scipy.stats import t

    from core.stats import _t_quantile

    for df in [*range(1, 300), 499, 999, 9999]:
        assert _t_quantile(df) == float(t.ppf(0.975, df)), df


def test_paired_comparison_counts_discordant_episodes():
    a = np.ones((10, 4), dtype=bool)
    b = a.copy()
    b[:, 0] = False  # a right, b wrong on question 0 every seed
    b[0, 1] = False
    out = paired_comparison(result(a, name="a"), result(b, name="b"))
    assert out["a_right_b_wrong"] == 11 and out["b_right_a_wrong"] == 0
    assert out["accuracy_diff"] > 0 and out["sign_test_p"] < 0.01
    same = paired_comparison(result(a, name="a"), result(a, name="a2"))
    assert same["accuracy_diff"] == 0 and same["sign_test_p"] == 1.0


def test_paired_comparison_refuses_different_envs():
    with pytest.raises(ValueError, match="same environment"):
        paired_comparison(result(np.ones((2, 2)), env="e1"), result(np.ones((2, 2)), env="e2"))


def test_no_correct_answer_at_no_tokens_is_not_undominated():
    from core.stats import Point, frontier_position

    frontier = [Point(1000.0, 20.0, "SC@1"), Point(64000.0, 40.0, "SC@64")]
    assert frontier_position(0.0, 0.0, frontier)["dominated"]
    assert not frontier_position(500.0, 25.0, frontier)["dominated"]
