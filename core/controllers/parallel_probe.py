"""Parallel-Probe: many branches advanced in lockstep, off-track branches pruned, stop on a stable majority."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from core.controllers.base import BuiltinController, open_branches, register, step_branches
from core.kernels import env_arrays, permutation_table, step_branch, vote_stats_ids
from core.primitives import majority


@register
@dataclass(frozen=True)
class ParallelProbe(BuiltinController):
    """Parallel-Probe with the settings of Table 1 (docs/semantics.md §6)."""

    name: ClassVar[str] = "parallel-probe"
    summary: ClassVar[str] = "lockstep branches, prune off-track ones, stop when the majority is stable"

    num_chains: int = 64
    """Branches opened at the start."""
    T: int = 40
    """Stop once the majority has been the same for this many consecutive steps."""
    prune_patience: int = 7
    """Prune an unfinished branch after this many consecutive steps disagreeing with the majority."""
    warm_up: int = 15
    """No off-track counting or pruning before this step."""
    probe_burst: int = 1
    """Steps per branch per round."""
    max_steps: int = 100
    """Rounds at most."""

    def __post_init__(self) -> None:
        if self.num_chains < 1 or self.probe_burst < 1:
            raise ValueError("parallel-probe: num_chains and probe_burst must be at least 1")

    def solve(self, question: Any) -> str | None:
        opened = open_branches(question, self.num_chains)  # all chains open in one batch
        index = [i for _, i, _ in opened]
        latest = [ans for ans, _, _ in opened]
        finished = [fin for _, _, fin in opened]
        n = len(index)
        if n == 0:
            return None
        pruned = [False] * n
        off_track = [0] * n
        stable, prev = 0, None
        for step in range(self.max_steps):
            # 1. every branch neither pruned nor finished takes up to probe_burst steps, one batch per burst step
            for _ in range(self.probe_burst):
                due = [k for k in range(n) if not pruned[k] and not finished[k]]
                if not due:
                    break
                for k, (ans, fin) in zip(due, step_branches(question, [index[k] for k in due]), strict=True):
                    latest[k], finished[k] = ans, fin
            active = [k for k in range(n) if not pruned[k]]
            if not active:
                break
            winner = majority([latest[k] for k in active])
            if step >= self.warm_up and len(active) > 1:
                for k in active:
                    if not finished[k]:
                        off_track[k] = off_track[k] + 1 if latest[k] != winner else 0
                to_prune = [k for k in active if not finished[k] and off_track[k] >= self.prune_patience]
                if to_prune:
                    for k in to_prune:
                        pruned[k] = True
                    active = [k for k in active if not pruned[k]]
                    if not active:
                        return prev
                    winner = majority([latest[k] for k in active])
            stable = stable + 1 if winner == prev else 0
            prev = winner
            if stable >= self.T:
                return winner
            if all(finished[k] or pruned[k] for k in range(n)):
                break
        return prev

    def run_replay(self, env, seeds):
        return _run(*env_arrays(env), permutation_table(env, seeds), self.num_chains, self.T,
                    self.prune_patience, self.warm_up, self.probe_burst, self.max_steps)


@njit(cache=True, nogil=True)
def _episode(lo, n_avail, s, delta, branch_tokens, branch_final, probe_offsets, probe_answers, perm, scratch,
             num_chains, T, patience, warm_up, burst, max_steps):
    n = min(num_chains, n_avail)
    glob = np.empty(n, dtype=np.int64)
    depth = np.ones(n, dtype=np.int64)
    latest = np.empty(n, dtype=np.int32)
    finished = np.zeros(n, dtype=np.bool_)
    pruned = np.zeros(n, dtype=np.bool_)
    off_track = np.zeros(n, dtype=np.int64)
    active = np.empty(n, dtype=np.int64)
    answers = np.empty(n, dtype=np.int32)
    cost = 0
    for k in range(n):
        g = lo + perm[s, lo + k]
        glob[k] = g
        a, c, fin = step_branch(g, 0, delta, branch_tokens, branch_final, probe_offsets, probe_answers)
        latest[k] = a
        finished[k] = fin
        cost += c
    if n == 0:
        return -1, cost
    stable = 0
    prev = -1
    for step in range(max_steps):
        for k in range(n):
            if pruned[k]:
                continue
            for _b in range(burst):
                if finished[k]:
                    break
                a, c, fin = step_branch(glob[k], depth[k], delta, branch_tokens, branch_final, probe_offsets, probe_answers)
                depth[k] += 1
                cost += c
                latest[k] = a
                finished[k] = fin
        n_active = 0
        for k in range(n):
            if not pruned[k]:
                active[n_active] = k
                answers[n_active] = latest[k]
                n_active += 1
        if n_active == 0:
            break
        winner = vote_stats_ids(answers, n_active, scratch)[0]
        if step >= warm_up and n_active > 1:
            any_pruned = False
            for j in range(n_active):
                k = active[j]
                if not finished[k]:
                    if latest[k] != winner:
                        off_track[k] += 1
                    else:
                        off_track[k] = 0
            for j in range(n_active):
                k = active[j]
                if not finished[k] and off_track[k] >= patience:
                    pruned[k] = True
                    any_pruned = True
            if any_pruned:
                m = 0
                for j in range(n_active):
                    k = active[j]
                    if not pruned[k]:
                        active[m] = k
                        answers[m] = latest[k]
                        m += 1
                n_active = m
                if n_active == 0:
                    return prev, cost
                winner = vote_stats_ids(answers, n_active, scratch)[0]
        if winner == prev:
            stable += 1
        else:
            stable = 0
        prev = winner
        if stable >= T:
            return winner, cost
        done = True
        for k in range(n):
            if not (finished[k] or pruned[k]):
                done = False
                break
        if done:
            break
    return prev, cost


@njit(cache=True, parallel=True)
def _run(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes, perm,
         num_chains, T, patience, warm_up, burst, max_steps):
    n_seeds, n_q = perm.shape[0], branch_offsets.shape[0] - 1
    answers = np.empty((n_seeds, n_q), dtype=np.int32)
    costs = np.zeros((n_seeds, n_q), dtype=np.int64)
    for s in prange(n_seeds):
        for q in range(n_q):
            lo = branch_offsets[q]
            scratch = np.zeros(vocab_sizes[q], dtype=np.int64)
            a, c = _episode(lo, branch_offsets[q + 1] - lo, s, interval[q], branch_tokens, branch_final,
                            probe_offsets, probe_answers, perm, scratch, num_chains, T, patience, warm_up, burst,
                            max_steps)
            answers[s, q] = a
            costs[s, q] = c
    return answers, costs
