"""The objective as numbers: tokens to reach SC@64 along a β curve, the same against CMC, AUC, the ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.objective import (
    TOKEN_RANGE,
    CurvePoint,
    LeaderboardEntry,
    accuracy_at_tokens,
    auc_mean_accuracy,
    is_full_grid,
    leaderboard,
    mean_curve,
    mean_points,
    objective,
    rank_key,
    render_curve,
    render_leaderboard,
    render_objective,
    tokens_to_accuracy,
)

P = CurvePoint


def test_tokens_to_accuracy_is_log_linear_first_crossing():
    c = [P(50, 1e4), P(70, 1e6)]
    assert tokens_to_accuracy(c, 60) == pytest.approx(1e5)  # halfway in log tokens, not 505,000
    assert tokens_to_accuracy(c, 50) == 1e4 and tokens_to_accuracy(c, 10) == 1e4
    assert tokens_to_accuracy(c, 70) == pytest.approx(1e6)
    assert tokens_to_accuracy(c, 70.01) is None
    bumpy = [P(60, 1e6), P(50, 1e4), P(80, 1e5)]  # unsorted input; the first crossing of 70 is before 1e5
    assert tokens_to_accuracy(bumpy, 70) == pytest.approx(10 ** (4 + 2 / 3))
    assert tokens_to_accuracy([P(10, 0)], 5) == 1.0  # zero tokens count as one


curves = st.lists(st.tuples(st.floats(0, 100), st.floats(1e3, 1e7)), min_size=1, max_size=8).map(
    lambda pts: [P(a, t) for a, t in pts])


@given(curves, st.floats(0, 100))
def test_tokens_to_accuracy_properties(curve, target):
    need = tokens_to_accuracy(curve, target)
    best = max(p.accuracy for p in curve)
    assert (need is None) == (best < target)
    if need is None:
        return
    lo, hi = min(p.tokens for p in curve), max(p.tokens for p in curve)
    assert lo * (1 - 1e-9) <= need <= hi * (1 + 1e-9)
    # the curve is at the target there, and below it at any fewer tokens
    assert accuracy_at_tokens(curve, need) >= target - 1e-6
    for f in (0.5, 0.9, 0.999):
        t = need * f
        if t >= lo * (1 + 1e-9):
            assert accuracy_at_tokens(curve, t) < target + 1e-9
    # a higher target never needs fewer tokens
    higher = tokens_to_accuracy(curve, min(100.0, target + 1))
    assert higher is None or higher >= need * (1 - 1e-9)


def test_auc_definition():
    lo, hi = (math.log10(t) for t in TOKEN_RANGE)
    assert (lo, hi) == (4.0, 6.5)
    assert auc_mean_accuracy([P(42, 1e5)]) == pytest.approx(42)  # one point: flat everywhere
    ramp = [P(0, 1e4), P(100, 10**6.5)]
    assert auc_mean_accuracy(ramp) == pytest.approx(50)
    # flat beyond the ends: 0 … 10^5 at 20, then a ramp to 80 at 10^6, flat 80 to 10^6.5
    c = [P(20, 1e5), P(80, 1e6)]
    assert auc_mean_accuracy(c) == pytest.approx((20 * 1 + 50 * 1 + 80 * 0.5) / 2.5)
    # points outside the range still shape the curve inside it
    assert auc_mean_accuracy([P(0, 1e3), P(100, 1e5)]) == pytest.approx((75 * 1 + 100 * 1.5) / 2.5)  # 50→100 over 10^4…10^5
    with pytest.raises(ValueError, match="increasing"):
        auc_mean_accuracy(c, (1e6, 1e4))


@given(curves, st.integers(0, 7), st.floats(0, 30))
def test_auc_properties(curve, k, bump):
    auc = auc_mean_accuracy(curve)
    accs = [p.accuracy for p in curve]
    assert min(accs) - 1e-9 <= auc <= max(accs) + 1e-9
    # the exact trapezoid equals a dense numerical integral of the same curve
    xs = np.linspace(4, 6.5, 20001)
    dense = np.mean([accuracy_at_tokens(curve, 10**x) for x in xs[::50]])
    assert auc == pytest.approx(dense, abs=0.6)
    # raising one point never lowers the AUC
    i = k % len(curve)
    raised = [P(p.accuracy + (bump if j == i else 0), p.tokens) for j, p in enumerate(curve)]
    assert auc_mean_accuracy(raised) >= auc - 1e-9


def test_objective_against_baselines():
    sc64 = P(80, 900_000, label="sc:n=64")
    cmc = [P(70, 50_000, 0.0), P(79, 200_000, 0.5), P(82, 450_000, 1.0)]
    cand = [P(75, 40_000, 0.0), P(81, 150_000, 0.5), P(83, 400_000, 1.0)]
    o = objective(cand, sc64, cmc)
    need = 10 ** (math.log10(40_000) + (5 / 6) * (math.log10(150_000) - math.log10(40_000)))
    cmc_need = 10 ** (math.log10(200_000) + (1 / 3) * (math.log10(450_000) - math.log10(200_000)))
    assert o.tokens_to_sc64 == pytest.approx(need) and o.pct_of_sc64 == pytest.approx(100 * need / 900_000)
    assert o.cmc_tokens_to_sc64 == pytest.approx(cmc_need) and o.pct_of_cmc == pytest.approx(100 * need / cmc_need)
    assert o.beta_gaps == ((0.0, 5.0), (0.5, 2.0), (1.0, 1.0)) and o.auc > o.cmc_auc
    assert o.best_accuracy == 83 and o.reached
    text = render_objective(o)
    assert "% of SC@64's 900,000" in text and "above at 3 of 3" in text and "10^4…10^6.5" in text
    assert objective(cmc, sc64, cmc).pct_of_cmc == pytest.approx(100)
    above_cmc = objective(cand, P(82.5, 900_000), cmc)  # the candidate reaches 82.5%, CMC's best is 82%
    assert above_cmc.reached and above_cmc.pct_of_cmc is None and above_cmc.cmc_tokens_to_sc64 is None
    assert "never reaches SC@64's accuracy; the candidate does" in render_objective(above_cmc)
    assert "neither does the candidate" in render_objective(objective(cmc, P(85, 900_000), cmc))
    low = objective([P(60, 1e5, 0.5)], sc64, cand)
    assert low.pct_of_sc64 is None and "not reached" in render_objective(low)
    assert "the candidate does not" in render_objective(low)


def test_leaderboard_ranks_full_grid_runs_only():
    sc64 = P(80, 900_000)
    cheap = objective([P(70, 3e4), P(81, 1e5)], sc64)
    dear = objective([P(70, 3e4), P(81, 5e5)], sc64)
    never_hi = objective([P(79, 3e4), P(79.5, 5e5)], sc64)
    never_lo = objective([P(50, 3e4), P(60, 5e5)], sc64)
    probe = objective([P(90, 2e4)], sc64)  # a single β: never ranked, however good
    entries = [LeaderboardEntry("r1", never_lo, True), LeaderboardEntry("r2", dear, True),
               LeaderboardEntry("r3", probe, False), LeaderboardEntry("r4", cheap, True),
               LeaderboardEntry("r5", never_hi, True), LeaderboardEntry("r6", cheap, True, full_seeds=False)]
    board = leaderboard(entries)
    assert [e.run_id for e in board.ranked] == ["r4", "r2", "r5", "r1"]
    assert [e.run_id for e in board.apart] == ["r3", "r6"]
    keys = [rank_key(e.objective) for e in board.ranked]
    assert keys == sorted(keys)
    text = render_leaderboard(board)
    assert "not reached" in text and "probe" in text and "quick" in text
    many = leaderboard([LeaderboardEntry(f"r{k}", cheap, True) for k in range(500)])
    assert len(render_leaderboard(many)) <= 8000
    assert is_full_grid([0, 0.2, 0.5, 1.0], [0, 0.5, 1.0]) and not is_full_grid([0.5], [0, 0.5, 1.0])


def test_mean_curve():
    a = [P(60, 1e5, 0.0, (50.0, 70.0)), P(80, 3e5, 1.0, (80.0, 80.0))]
    b = [P(40, 3e5, 1.0, (30.0, 50.0)), P(20, 1e5, 0.0, (10.0, 30.0))]
    m = mean_curve([a, b])
    assert [(p.beta, p.accuracy, p.tokens) for p in m] == [(0.0, 40, 1e5), (1.0, 60, 3e5)]
    assert m[0].seed_accuracy == (30.0, 50.0) and m[1].accuracy_se == pytest.approx(5.0)
    assert mean_points([P(1, 2), P(3, 4, seed_accuracy=(1.0,))]).seed_accuracy == ()
    with pytest.raises(ValueError, match="different β"):
        mean_curve([a, a[:1]])
    text = render_curve(m + [P(50, 2e5, label="sc:n=64")])
    assert text.splitlines()[1].split() == ["0", "40.00", "10.00", "100,000", "-"]
    assert text.splitlines()[-1].split()[0] == "sc:n="


@pytest.mark.shared_data
def test_cmc_on_the_paper_data(replay_dir):
    from core.evaluate import evaluate
    from core.objective import curve_point
    from core.store import load_environment

    betas = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    curves, scs = [], []
    for model in ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B"):
        env = load_environment(replay_dir / model / "aime24.json")
        scs.append(curve_point(evaluate(env, "sc:n=64")))
        curves.append([curve_point(evaluate(env, f"cmc:beta={b}"), beta=b) for b in betas])
    # Qwen3-8B: CMC beats SC@64 already at β=0 (81.40% vs 80.37% at 48,796 tokens)
    o8 = objective(curves[3], scs[3], curves[3])
    assert o8.tokens_to_sc64 == pytest.approx(48_796, abs=1) and o8.pct_of_sc64 == pytest.approx(5.357, abs=0.01)
    assert o8.pct_of_cmc == pytest.approx(100.0)
    # Qwen3-0.6B: CMC never reaches SC@64's 21.43% on AIME24
    assert objective(curves[0], scs[0]).pct_of_sc64 is None
    # mean over the four models: about 30% of SC@64's tokens, as the paper reports
    o = objective(mean_curve(curves), mean_points(scs), mean_curve(curves))
    assert o.target_accuracy == pytest.approx(63.58, abs=0.01)
    assert 25 < o.pct_of_sc64 < 35 and o.auc == pytest.approx(o.cmc_auc)
    assert all(g == 0 for _, g in o.beta_gaps) and len(o.beta_gaps) == 7
    se = mean_curve(curves)[3].accuracy_se
    assert se is not None and 0 < se < 1
