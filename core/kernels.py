"""Compiled building blocks shared by the built-in controllers' replay fast paths (numba).

Answers are per-question integer ids; the vote helpers break ties by first occurrence in the list, exactly
like `core.primitives`. Each controller module holds its own episode kernel and calls `run_episodes`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from core.environment import ReplayEnvironment, shuffle_order

# Episode kernels all take the same environment arrays, in this order (see `env_arrays`).
NO_ANSWER = -1


def env_arrays(env: ReplayEnvironment) -> tuple[np.ndarray, ...]:
    """(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes)."""
    vocab_sizes = np.asarray([len(v) for v in env.answer_vocab], dtype=np.int64)
    return (env.branch_offsets, env.interval, env.branch_tokens, env.branch_final, env.probe_offsets,
            env.probe_answers, vocab_sizes)


def permutation_table(env: ReplayEnvironment, seeds: np.ndarray) -> np.ndarray:
    """int32[S, B]: entry [s, offset_q + k] is the stored index of the k-th branch question q presents under seed s
    (stored order for every seed in an environment with `branch_order: "stored"`)."""
    counts = env.branch_counts
    table = np.empty((len(seeds), int(env.branch_offsets[-1])), dtype=np.int32)
    if env.stored_order:
        for q in range(env.n_questions):
            lo = int(env.branch_offsets[q])
            table[:, lo : lo + int(counts[q])] = np.arange(int(counts[q]), dtype=np.int32)
        return table
    for si, seed in enumerate(seeds):
        by_length: dict[int, list[int]] = {}
        for q in range(env.n_questions):
            n = int(counts[q])
            order = by_length.get(n)
            if order is None:
                order = by_length[n] = shuffle_order(n, int(seed))
            lo = int(env.branch_offsets[q])
            table[si, lo : lo + n] = order
    return table


@njit(cache=True, nogil=True)
def vote_stats_ids(ids, n, scratch):
    """(winner, top1, top2) of ids[:n]; `scratch` is a zeroed int array over the vocabulary, left zeroed."""
    for k in range(n):
        scratch[ids[k]] += 1
    winner = NO_ANSWER
    top1 = 0
    top2 = 0
    for k in range(n):  # visit distinct answers in first-occurrence order; zeroing marks them visited
        a = ids[k]
        c = scratch[a]
        if c > 0:
            if c > top1:
                top2 = top1
                top1 = c
                winner = a
            elif c > top2:
                top2 = c
            scratch[a] = 0
    return winner, top1, top2


@njit(cache=True, nogil=True)
def step_branch(g, depth, delta, branch_tokens, branch_final, probe_offsets, probe_answers):
    """Take the next step of global branch g at `depth` steps taken: (answer, cost, finished)."""
    lo = probe_offsets[g]
    n = probe_offsets[g + 1] - lo
    if depth < n:
        return probe_answers[lo + depth], delta, False
    if depth == n:
        return branch_final[g], max(0, branch_tokens[g] - n * delta), True
    return branch_final[g], 0, True
