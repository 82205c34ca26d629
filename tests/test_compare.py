"""Standard errors over seeds, the paired test over seeds, and compare_runs' per-question differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.compare import compare_arrays, compare_pooled, compare_runs, render_comparison, render_pooled
from core.evaluate import EvalResult
from core.stats import paired_test, seed_mean


def result(correct, tokens, name="x", env="e", seeds=None):
    correct = np.asarray(correct, dtype=bool)
    tokens = np.asarray(tokens, dtype=np.int64)
    return EvalResult(env=env, controller=name, accuracy=round(100 * float(correct.mean()), 2),
                      avg_tokens=float(tokens.mean()),
                      seeds=np.arange(correct.shape[0]) if seeds is None else np.asarray(seeds),
                      answers=[], correct=correct, tokens=tokens)


def test_seed_mean():
    m = seed_mean([1.0, 2.0, 3.0, 6.0])
    assert m.mean == 3.0 and m.n == 4
    assert m.se == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
    assert seed_mean([5.0]).se == 0.0 and math.isnan(seed_mean([]).mean)


def test_paired_test_matches_scipy_stats():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = rng.normal(80, 2, 100)
    b = a - 0.3 + rng.normal(0, 1, 100)
    t = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert t.t == pytest.approx(ref.statistic) and t.p == pytest.approx(ref.pvalue)
    assert t.df == 99 and t.n == 100
    assert t.ci95[1] - t.diff == pytest.approx(1.9842169515864 * t.se)
    assert t.within_noise == (abs(t.diff) < 2 * t.se)


def test_paired_test_degenerate_cases():
    same = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.diff == 0 and same.p == 1.0 and same.within_noise and same.t == 0
    shift = paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # the same difference on every seed: no noise at all
    assert shift.diff == 1 and shift.se == 0 and shift.p == 0.0 and not shift.within_noise and shift.t == math.inf
    one = paired_test([1.0], [0.0])
    assert one.df == 0 and one.p == 0.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_test([1.0, 2.0], [1.0])


@given(arrays(np.float64, st.integers(2, 30), elements=st.floats(0, 100)),
       arrays(np.float64, 30, elements=st.floats(-5, 5)))
def test_paired_test_properties(a, noise):
    b = a + noise[: a.size]
    ab, ba = paired_test(a, b), paired_test(b, a)
    assert ab.diff == pytest.approx(-ba.diff, abs=1e-9) and ab.se == pytest.approx(ba.se)
    assert ab.p == pytest.approx(ba.p) and ab.within_noise == ba.within_noise
    assert 0.0 <= ab.p <= 1.0 and ab.ci95[0] <= ab.diff <= ab.ci95[1]


@st.composite
def run_pairs(draw):
    s, q = draw(st.integers(1, 8)), draw(st.integers(1, 12))
    ca = draw(arrays(np.bool_, (s, q)))
    cb = draw(arrays(np.bool_, (s, q)))
    ta = draw(arrays(np.int64, (s, q), elements=st.integers(0, 10**6)))
    tb = draw(arrays(np.int64, (s, q), elements=st.integers(0, 10**6)))
    return ca, ta, cb, tb


@given(run_pairs())
@settings(max_examples=150, deadline=None)
def test_comparison_is_consistent(pair):
    ca, ta, cb, tb = pair
    c = compare_arrays(ca, ta, cb, tb)
    # the per-question differences average to the per-seed paired difference (questions weigh equally)
    assert np.mean([d.accuracy_diff for d in c.questions]) == pytest.approx(c.accuracy.diff, abs=1e-9)
    assert np.mean([d.tokens_diff for d in c.questions]) == pytest.approx(c.tokens.diff, rel=1e-9, abs=1e-6)
    assert c.accuracy_a.mean - c.accuracy_b.mean == pytest.approx(c.accuracy.diff, abs=1e-9)
    assert sum(d.a_right_b_wrong for d in c.questions) == c.a_right_b_wrong == int((ca & ~cb).sum())
    assert sum(d.b_right_a_wrong for d in c.questions) == c.b_right_a_wrong
    assert (c.a_right_b_wrong - c.b_right_a_wrong) / ca.size * 100 == pytest.approx(c.accuracy.diff, abs=1e-9)
    assert len(render_comparison(c)) <= 8000
    same = compare_arrays(ca, ta, ca, ta)
    assert same.accuracy.within_noise and same.tokens.within_noise and same.accuracy.diff == 0


def test_render_stays_within_limit_and_lists_biggest_first():
    rng = np.random.default_rng(0)
    ca, cb = rng.random((20, 600)) < 0.5, rng.random((20, 600)) < 0.5
    ta, tb = rng.integers(0, 10**6, (20, 600)), rng.integers(0, 10**6, (20, 600))
    c = compare_arrays(ca, ta, cb, tb, a="new", b="old", env="demo")
    text = render_comparison(c)
    assert len(text) <= 8000 and "more differing questions not shown" in text
    rows = [line.split() for line in text.splitlines()[7:] if line.split() and line.split()[0].isdigit()]
    diffs = [abs(float(r[3])) for r in rows]
    assert diffs == sorted(diffs, reverse=True)
    assert "more differing" in render_comparison(c, max_questions=3)
    bare = render_comparison(c, max_questions=3, tests=False)  # the table alone, for a pooled comparison
    assert bare.startswith("demo: per question (") and "paired t" not in bare
    assert bare.splitlines()[2:5] == text.splitlines()[7:10]  # the same three biggest rows


def test_compare_runs_refuses_mismatched_runs():
    c = np.ones((3, 2), dtype=bool)
    t = np.ones((3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="different environments"):
        compare_runs(result(c, t, env="a"), result(c, t, env="b"))
    with pytest.raises(ValueError, match="different seeds"):
        compare_runs(result(c, t), result(c, t, seeds=[5, 6, 7]))
    with pytest.raises(ValueError, match="different questions"):
        compare_runs(result(c, t), result(np.ones((3, 3)), np.ones((3, 3))))


@pytest.mark.shared_data
def test_paper_data_signal_and_noise(replay_dir):
    from core.evaluate import evaluate
    from core.store import load_environment

    env = load_environment(replay_dir / "Qwen3-8B" / "aime24.json")
    sc = evaluate(env, "sc:n=64")
    cmc05, cmc06 = evaluate(env, "cmc:beta=0.5"), evaluate(env, "cmc:beta=0.6")
    big = compare_runs(cmc05, sc)
    assert big.accuracy.diff == pytest.approx(84.27 - 80.37, abs=0.01) and not big.accuracy.within_noise
    assert big.tokens_ratio == pytest.approx(255_294 / 910_813, rel=1e-4) and not big.tokens.within_noise
    # a 0.1-point difference on 30 questions is within the shuffles' noise
    small = compare_runs(cmc06, cmc05)
    assert abs(small.accuracy.diff) < 0.2 and small.accuracy.within_noise
    assert not small.tokens.within_noise  # but β=0.6 clearly spends more
    text = render_comparison(small)
    assert "within noise" in text and len(text) <= 8000
    # SE over seeds of the reported averages
    assert big.accuracy_a.mean == pytest.approx(cmc05.accuracy, abs=0.005)
    assert big.accuracy_a.se == pytest.approx(cmc05.per_seed_accuracy.std(ddof=1) / 10)

    pairs = []
    for model in ("Qwen3-0.6B", "Qwen3-8B"):
        e = load_environment(replay_dir / model / "aime24.json")
        pairs.append((evaluate(e, "cmc:beta=0.5"), evaluate(e, "sc:n=64")))
    pooled = compare_pooled(pairs)
    mean_diff = np.mean([a.per_seed_accuracy.mean() - b.per_seed_accuracy.mean() for a, b in pairs])
    assert pooled.accuracy.diff == pytest.approx(mean_diff)
    assert len(pooled.per_env) == 2 and "Qwen3-0.6B/aime24" in render_pooled(pooled)


def test_identical_runs_say_so_in_one_line():
    c = np.array([[True, False, True]] * 4)
    t = np.full((4, 3), 500, dtype=np.int64)
    text = render_comparison(compare_runs(result(c, t), result(c, t)))
    assert text.splitlines()[-1] == "all 3 questions identical" and "acc a%" not in text
    assert render_comparison(compare_runs(result(c, t), result(c, t)), tests=False) == "e: all 3 questions identical"
