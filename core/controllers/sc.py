"""SC@N, self-consistency: read N branches in full and return the majority answer."""

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
class SelfConsistency(BuiltinController):
    """Self-consistency (Wang et al.): `n` full reads, majority vote. Table 1 uses n = 64."""

    name: ClassVar[str] = "sc"
    summary: ClassVar[str] = "self-consistency: n full reads, majority vote"

    n: int = 64
    """How many branches to read in full (fewer if the question has fewer)."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("sc: n must be at least 1")

    def solve(self, question: Any) -> str | None:
        # n full reads (fewer if the pool runs out), requested together so a live model decodes them in one batch
        return majority(read_branches(question, self.n))

    def run_replay(self, env, seeds):
        return _run(*env_arrays(env), permutation_table(env, seeds), self.n)


@njit(cache=True, parallel=True)
def _run(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes, perm, n_reads):
    n_seeds, n_q = perm.shape[0], branch_offsets.shape[0] - 1
    answers = np.empty((n_seeds, n_q), dtype=np.int32)
    costs = np.zeros((n_seeds, n_q), dtype=np.int64)
    for s in prange(n_seeds):
        for q in range(n_q):
            lo = branch_offsets[q]
            m = min(n_reads, branch_offsets[q + 1] - lo)
            ids = np.empty(m, dtype=np.int32)
            cost = 0
            for k in range(m):
                g = lo + perm[s, lo + k]
                ids[k] = branch_final[g]
                cost += branch_tokens[g]
            scratch = np.zeros(vocab_sizes[q], dtype=np.int64)
            answers[s, q] = vote_stats_ids(ids, m, scratch)[0]
            costs[s, q] = cost
    return answers, costs
