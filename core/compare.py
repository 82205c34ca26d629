"""Comparing two runs evaluated on the same seeds and questions: per-question paired differences in accuracy and
tokens, and paired t-tests over seeds of the accuracy and token differences (`core.stats.paired_test`).

Seeds are the unit of the tests: per seed, a run's accuracy is the mean over questions (in percent) and its
tokens the mean tokens per question; the test is on the per-seed differences a − b. A difference is flagged
*within noise* when |diff| < 2·SE of the difference. Both measure the noise of the shuffles on these questions;
`question_se` beside them is the standard error of the accuracy difference over questions (per-question
differences averaged over seeds), the noise of which questions the benchmark holds, which is usually larger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.stats import PairedTest, SeedMean, paired_test, seed_mean

if TYPE_CHECKING:
    from core.evaluate import EvalResult

PAGE_CHARS = 8_000


@dataclass(frozen=True)
class QuestionDiff:
    """One question: both runs over the seeds, and a − b."""

    question: int
    """Question index in the environment."""
    accuracy_a: float
    """Run a's accuracy on it over seeds (%)."""
    accuracy_b: float
    """Run b's accuracy on it over seeds (%)."""
    tokens_a: float
    """Run a's mean tokens on it over seeds."""
    tokens_b: float
    """Run b's mean tokens on it over seeds."""
    a_right_b_wrong: int
    """Seeds on which a is right and b wrong."""
    b_right_a_wrong: int
    """Seeds on which b is right and a wrong."""

    @property
    def accuracy_diff(self) -> float:
        """accuracy_a − accuracy_b (percentage points)."""
        return self.accuracy_a - self.accuracy_b

    @property
    def tokens_diff(self) -> float:
        """tokens_a − tokens_b."""
        return self.tokens_a - self.tokens_b


@dataclass(frozen=True)
class RunComparison:
    """Run a against run b on the same seeds and questions (differences are a − b)."""

    a: str
    """Label of run a."""
    b: str
    """Label of run b."""
    env: str
    """Environment name (or a description of the pooled environments)."""
    n_seeds: int
    """Seeds both runs share."""
    n_questions: int
    """Questions both runs share."""
    accuracy_a: SeedMean
    """Run a's accuracy (%) with its standard error over seeds."""
    accuracy_b: SeedMean
    """Run b's accuracy (%) with its standard error over seeds."""
    tokens_a: SeedMean
    """Run a's mean tokens per question with its standard error over seeds."""
    tokens_b: SeedMean
    """Run b's mean tokens per question with its standard error over seeds."""
    accuracy: PairedTest
    """Paired t-test over seeds of the accuracy difference (percentage points)."""
    tokens: PairedTest
    """Paired t-test over seeds of the token difference."""
    question_se: float
    """Standard error over questions of the accuracy difference (per-question differences averaged over seeds)."""
    a_right_b_wrong: int
    """Episodes (seed, question) a got right and b wrong."""
    b_right_a_wrong: int
    """Episodes b got right and a wrong."""
    questions: tuple[QuestionDiff, ...]
    """Per-question differences, in question order."""

    @property
    def tokens_ratio(self) -> float:
        """a's mean tokens / b's (inf when b spent none)."""
        return self.tokens_a.mean / self.tokens_b.mean if self.tokens_b.mean else math.inf


def compare_arrays(correct_a: np.ndarray, tokens_a: np.ndarray, correct_b: np.ndarray, tokens_b: np.ndarray, *,
                   a: str = "a", b: str = "b", env: str = "") -> RunComparison:
    """Compare from per-episode arrays: bool[S, Q] correctness and int[S, Q] tokens of both runs, rows the same
    seeds in the same order, columns the same questions."""
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    ta, tb = np.asarray(tokens_a, dtype=np.float64), np.asarray(tokens_b, dtype=np.float64)
    if not (ca.shape == cb.shape == ta.shape == tb.shape) or ca.ndim != 2 or 0 in ca.shape:
        raise ValueError(f"both runs need the same non-empty seeds × questions arrays, got {ca.shape}, {ta.shape}, "
                         f"{cb.shape}, {tb.shape}")
    s, q = ca.shape
    acc_a, acc_b = 100.0 * ca.mean(axis=1), 100.0 * cb.mean(axis=1)
    tok_a, tok_b = ta.mean(axis=1), tb.mean(axis=1)
    per_q_diff = 100.0 * (ca.mean(axis=0) - cb.mean(axis=0))
    question_se = float(per_q_diff.std(ddof=1)) / math.sqrt(q) if q >= 2 else 0.0
    a_only = ca & ~cb
    b_only = cb & ~ca
    questions = tuple(
        QuestionDiff(question=j, accuracy_a=float(100.0 * ca[:, j].mean()), accuracy_b=float(100.0 * cb[:, j].mean()),
                     tokens_a=float(ta[:, j].mean()), tokens_b=float(tb[:, j].mean()),
                     a_right_b_wrong=int(a_only[:, j].sum()), b_right_a_wrong=int(b_only[:, j].sum()))
        for j in range(q))
    return RunComparison(
        a=a, b=b, env=env, n_seeds=s, n_questions=q, accuracy_a=seed_mean(acc_a), accuracy_b=seed_mean(acc_b),
        tokens_a=seed_mean(tok_a), tokens_b=seed_mean(tok_b), accuracy=paired_test(acc_a, acc_b),
        tokens=paired_test(tok_a, tok_b), question_se=question_se, a_right_b_wrong=int(a_only.sum()),
        b_right_a_wrong=int(b_only.sum()), questions=questions)


def compare_runs(a: EvalResult, b: EvalResult) -> RunComparison:
    """Compare two evaluation results of the same environment on the same seeds (a − b)."""
    if a.env != b.env:
        raise ValueError(f"runs are on different environments: {a.env} and {b.env}")
    if not np.array_equal(a.seeds, b.seeds):
        raise ValueError("runs were evaluated on different seeds; a paired comparison needs the same shuffles")
    if a.correct.shape != b.correct.shape:
        raise ValueError(f"runs cover different questions: {a.correct.shape} and {b.correct.shape}")
    return compare_arrays(a.correct, a.tokens, b.correct, b.tokens, a=a.controller, b=b.controller, env=a.env)


@dataclass(frozen=True)
class PooledComparison:
    """Two runs compared over several environments: per environment, and pooled per seed."""

    per_env: tuple[RunComparison, ...]
    """One comparison per environment, in the order given."""
    accuracy: PairedTest
    """Paired test over seeds of the mean over environments of the per-seed accuracy difference."""
    tokens: PairedTest
    """Paired test over seeds of the mean over environments of the per-seed token difference."""


def compare_pooled(pairs: Sequence[tuple[EvalResult, EvalResult]]) -> PooledComparison:
    """Compare run a with run b on several environments (pairs of results, one pair per environment, all on the
    same seeds). The pooled tests weigh environments equally, as a mean over benchmarks does."""
    if not pairs:
        raise ValueError("no environments to compare on")
    per_env = tuple(compare_runs(a, b) for a, b in pairs)
    seeds = pairs[0][0].seeds
    if any(not np.array_equal(a.seeds, seeds) for a, _ in pairs):
        raise ValueError("all environments must be evaluated on the same seeds to pool them")
    acc_a = np.mean([a.per_seed_accuracy for a, _ in pairs], axis=0)
    acc_b = np.mean([b.per_seed_accuracy for _, b in pairs], axis=0)
    tok_a = np.mean([a.per_seed_tokens for a, _ in pairs], axis=0)
    tok_b = np.mean([b.per_seed_tokens for _, b in pairs], axis=0)
    return PooledComparison(per_env, paired_test(acc_a, acc_b), paired_test(tok_a, tok_b))


def _test_line(name: str, t: PairedTest, unit: str, fmt: str) -> str:
    verdict = "within noise (|diff| < 2·SE)" if t.within_noise else "more than noise"
    return (f"{name}: a − b = {t.diff:+{fmt}}{unit} ± {t.se:{fmt}} SE (95% CI {t.ci95[0]:+{fmt}} … "
            f"{t.ci95[1]:+{fmt}}), paired t over {t.n} seeds p = {t.p:.3g}: {verdict}")


def render_comparison(c: RunComparison, *, max_chars: int = PAGE_CHARS, max_questions: int | None = None,
                      tests: bool = True) -> str:
    """The comparison as text: the two tests, then the questions that differ most (by |accuracy diff|, then by
    |token diff|), as many as fit in `max_chars` (or `max_questions`). `tests=False` leaves out the summary and
    the tests (`render_pooled` gives them per environment)."""
    lines = [] if not tests else [
        f"compare {c.a} (a) with {c.b} (b) on {c.env or 'one environment'}: {c.n_questions} questions × "
        f"{c.n_seeds} seeds, paired",
        f"a: {c.accuracy_a.mean:.2f}% ± {c.accuracy_a.se:.2f} at {c.tokens_a.mean:,.0f} ± {c.tokens_a.se:,.0f} tokens"
        f" · b: {c.accuracy_b.mean:.2f}% ± {c.accuracy_b.se:.2f} at {c.tokens_b.mean:,.0f} ± "
        f"{c.tokens_b.se:,.0f} tokens (± = SE over seeds)",
        _test_line("accuracy", c.accuracy, " pts", ".2f"),
        _test_line("tokens", c.tokens, "", ",.0f") + f"; a/b = {c.tokens_ratio:.3f}",
        f"episodes a right & b wrong: {c.a_right_b_wrong}, b right & a wrong: {c.b_right_a_wrong}; SE of the "
        f"accuracy diff over questions: {c.question_se:.2f} pts (question sampling, not in the test)",
    ]
    differing = [d for d in c.questions if d.accuracy_diff != 0 or d.tokens_diff != 0]
    order = sorted(differing, key=lambda d: (-abs(d.accuracy_diff), -abs(d.tokens_diff), d.question))
    same = c.n_questions - len(differing)
    if not differing:
        lines.append(("" if tests else f"{c.env}: ") + f"all {same} questions identical")
        return "\n".join(lines)
    lines.append(("" if tests else f"{c.env}: ") + f"per question ({len(differing)} differ, {same} identical), "
                 "largest accuracy differences first:")
    lines.append(f"{'q':>4} {'acc a%':>7} {'acc b%':>7} {'diff':>7} {'tok a':>10} {'tok b':>10} {'tok diff':>10} "
                 f"{'a>b':>4} {'b>a':>4}")
    used = sum(len(x) + 1 for x in lines)
    limit = len(order) if max_questions is None else min(max_questions, len(order))
    for k, d in enumerate(order[:limit]):
        line = (f"{d.question:>4} {d.accuracy_a:>7.1f} {d.accuracy_b:>7.1f} {d.accuracy_diff:>+7.1f} "
                f"{d.tokens_a:>10,.0f} {d.tokens_b:>10,.0f} {d.tokens_diff:>+10,.0f} {d.a_right_b_wrong:>4} "
                f"{d.b_right_a_wrong:>4}")
        if used + len(line) + 1 > max_chars - 50:
            lines.append(f"… {len(order) - k} more differing questions not shown")
            break
        lines.append(line)
        used += len(line) + 1
    else:
        if limit < len(order):
            lines.append(f"… {len(order) - limit} more differing questions not shown")
    return "\n".join(lines)


def render_pooled(p: PooledComparison) -> str:
    """The pooled tests and one line per environment."""
    first = p.per_env[0]
    lines = [f"compare {first.a} (a) with {first.b} (b) on {len(p.per_env)} environments (equal weight), paired "
             "over seeds",
             _test_line("accuracy", p.accuracy, " pts", ".2f"), _test_line("tokens", p.tokens, "", ",.0f")]
    for c in p.per_env:
        lines.append(f"  {c.env}: accuracy {c.accuracy.diff:+.2f} ± {c.accuracy.se:.2f} "
                     f"({'noise' if c.accuracy.within_noise else 'real'}), tokens {c.tokens.diff:+,.0f} ± "
                     f"{c.tokens.se:,.0f} ({'noise' if c.tokens.within_noise else 'real'})")
    return "\n".join(lines)
