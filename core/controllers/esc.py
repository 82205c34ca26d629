"""ESC, early-stopping consistency: read windows of full answers and stop at the first unanimous window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from core.controllers.base import BuiltinController, read_branches, register
from core.kernels import env_arrays, permutation_table, vote_stats_ids
from core.primitives import majority


@register
@dataclass(frozen=True)
class EarlyStoppingConsistency(BuiltinController):
    """Early-stopping self-consistency (Li et al.): windows of `window` reads, stop when one is unanimous."""

    name: ClassVar[str] = "esc"
    summary: ClassVar[str] = "early-stopping consistency: stop at the first unanimous window"

    max_samples: int = 64
    """Reads at most (max_samples // window) windows."""
    window: int = 8
    """Full reads per window."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.max_samples < 1:
            raise ValueError("esc: max_samples and window must be at least 1")

    def solve(self, question: Any) -> str | None:
        pool: list[str] = []
        for _ in range(self.max_samples // self.window):
            current = read_branches(question, self.window)  # one window, read together (fewer if exhausted)
            if not current:
                continue
            pool.extend(current)
            if len(set(current)) == 1:
                return current[0]
        return majority(pool)

    def run_replay(self, env, seeds):
        return _run(*env_arrays(env), permutation_table(env, seeds), self.max_samples, self.window)


@njit(cache=True, parallel=True)
def _run(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes, perm,
         max_samples, window):
    n_seeds, n_q = perm.shape[0], branch_offsets.shape[0] - 1
    answers = np.empty((n_seeds, n_q), dtype=np.int32)
    costs = np.zeros((n_seeds, n_q), dtype=np.int64)
    for s in prange(n_seeds):
        for q in range(n_q):
            lo = branch_offsets[q]
            available = branch_offsets[q + 1] - lo
            n_windows = max_samples // window
            ids = np.empty(n_windows * window, dtype=np.int32)
            read = 0
            cost = 0
            answer = -1
            stopped = False
            for _w in range(n_windows):
                start = read
                while read < available and read - start < window:
                    g = lo + perm[s, lo + read]
                    ids[read] = branch_final[g]
                    cost += branch_tokens[g]
                    read += 1
                if read == start:
                    continue
                unanimous = True
                for k in range(start + 1, read):
                    if ids[k] != ids[start]:
                        unanimous = False
                        break
                if unanimous:
                    answer = ids[start]
                    stopped = True
                    break
            if not stopped:
                scratch = np.zeros(vocab_sizes[q], dtype=np.int64)
                answer = vote_stats_ids(ids, read, scratch)[0]
            answers[s, q] = answer
            costs[s, q] = cost
    return answers, costs
