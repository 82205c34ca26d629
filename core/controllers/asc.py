"""ASC, adaptive consistency: read branches one at a time until the Beta confidence of the vote is high."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from core.controllers.base import BuiltinController, register
from core.kernels import env_arrays, permutation_table, vote_stats_ids
from core.primitives import beta_confidence, beta_confidence_table, majority, vote_stats


@register
@dataclass(frozen=True)
class AdaptiveConsistency(BuiltinController):
    """Adaptive consistency (Aggarwal et al.): stop once P(winner is the majority) > threshold."""

    name: ClassVar[str] = "asc"
    summary: ClassVar[str] = "adaptive consistency: full reads until Beta confidence > threshold"

    max_samples: int = 64
    """Most full reads before falling back to the majority."""
    threshold: float = 0.95
    """Stop when the Beta confidence of the current vote exceeds this."""

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError("asc: max_samples must be at least 1")

    def solve(self, question: Any) -> str | None:
        answers: list[str] = []
        for _ in range(self.max_samples):
            try:
                answers.append(question.get_new_branch_final_answer())
            except IndexError:
                break
            if len(answers) >= 2:
                winner, top1, top2 = vote_stats(answers)
                if beta_confidence(top1, top2) > self.threshold:
                    return winner
        return majority(answers)

    def run_replay(self, env, seeds):
        table = beta_confidence_table(self.max_samples + 1)
        return _run(*env_arrays(env), permutation_table(env, seeds), self.max_samples, self.threshold, table)


@njit(cache=True, parallel=True)
def _run(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes, perm,
         max_samples, threshold, conf_table):
    n_seeds, n_q = perm.shape[0], branch_offsets.shape[0] - 1
    answers = np.empty((n_seeds, n_q), dtype=np.int32)
    costs = np.zeros((n_seeds, n_q), dtype=np.int64)
    for s in prange(n_seeds):
        for q in range(n_q):
            lo = branch_offsets[q]
            m = min(max_samples, branch_offsets[q + 1] - lo)
            ids = np.empty(m, dtype=np.int32)
            scratch = np.zeros(vocab_sizes[q], dtype=np.int64)
            cost = 0
            answer = -1
            stopped = False
            for k in range(m):
                g = lo + perm[s, lo + k]
                ids[k] = branch_final[g]
                cost += branch_tokens[g]
                if k >= 1:
                    winner, top1, top2 = vote_stats_ids(ids, k + 1, scratch)
                    if conf_table[top1, top2] > threshold:
                        answer = winner
                        stopped = True
                        break
            if not stopped:
                answer = vote_stats_ids(ids, m, scratch)[0]
            answers[s, q] = answer
            costs[s, q] = cost
    return answers, costs
