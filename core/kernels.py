"""Compiled building blocks shared by the built-in controllers' replay fast paths (numba).

Answers are per-question integer ids; the vote helpers break ties by first occurrence in the list, exactly
like `core.primitives`. Each controller module holds its own episode kernel and calls `run_episodes`.

Editing this file: numba keys a kernel's on-disk cache (`cache=True`) on the kernel's own source file only, so the
controllers' kernels that inline these helpers keep their cached machine code until their own file changes —
delete `core/**/__pycache__/*.nbi` and `*.nbc` after changing a helper here.
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


# ----- the momentum controllers' machinery (CMC, one-batch): one implementation, called by both kernels -----------
# An episode's open branches are slots 0 .. n_open-1 of parallel arrays: glob (the branch's global index), depth
# (steps taken), latest (its latest answer id), finished, abandoned, disagree (rounds in a row its answer differed
# from the pool winner). pool[:n_pool] holds finished branches' final answers in finishing order. The helpers
# that step branches take `step_branch`'s trailing arguments as they are (separate arrays, not a tuple: the kernels
# run measurably slower with the arrays packed). All are inlined into the calling kernel.


@njit(cache=True, nogil=True, inline="always")
def branch_slots(size):
    """Per-branch arrays for `size` branches: (glob, depth, latest, finished, abandoned, disagree, pool, live,
    order); the counters and flags start zeroed, live and order are scratch."""
    return (np.empty(size, dtype=np.int64), np.zeros(size, dtype=np.int64), np.empty(size, dtype=np.int32),
            np.zeros(size, dtype=np.bool_), np.zeros(size, dtype=np.bool_), np.zeros(size, dtype=np.int64),
            np.empty(size, dtype=np.int32), np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64))


@njit(cache=True, nogil=True, inline="always")
def open_batch(k, lo, s, perm, n_avail, n_open, n_pool, glob, depth, latest, finished, pool,
               delta, branch_tokens, branch_final, probe_offsets, probe_answers):
    """Open up to k more branches (fewer when the question's n_avail run out), presented in seed s's order; a branch
    finished at its first step joins the pool. Returns (n_open, n_pool, cost)."""
    cost = 0
    for _k in range(k):
        if n_open >= n_avail:
            break
        g = lo + perm[s, lo + n_open]
        a, c, fin = step_branch(g, 0, delta, branch_tokens, branch_final, probe_offsets, probe_answers)
        glob[n_open] = g
        depth[n_open] = 1
        latest[n_open] = a
        finished[n_open] = fin
        cost += c
        if fin:
            pool[n_pool] = a
            n_pool += 1
        n_open += 1
    return n_open, n_pool, cost


@njit(cache=True, nogil=True, inline="always")
def pool_momentum(pool, n_pool, scratch, conf_table, ema, alpha):
    """(winner, ema): the pool's vote winner, and its Beta confidence folded into the exponential moving average."""
    winner, top1, top2 = vote_stats_ids(pool, n_pool, scratch)
    return winner, (1 - alpha) * ema + alpha * conf_table[top1, top2]


@njit(cache=True, nogil=True, inline="always")
def window_push(window, w_start, w_len, x):
    """Append x to the ring buffer window[w_start .. w_start + w_len) (modulo its size), dropping the oldest entry
    when full; returns the new (w_start, w_len)."""
    t = window.shape[0]
    if w_len < t:
        window[(w_start + w_len) % t] = x
        return w_start, w_len + 1
    window[w_start] = x
    return (w_start + 1) % t, w_len


@njit(cache=True, nogil=True, inline="always")
def window_replace_trend(window, w_start, w_len, x):
    """Replace the newest entry of a non-empty window with x; returns the trend, newest minus oldest (0 for one)."""
    newest = (w_start + w_len - 1) % window.shape[0]
    window[newest] = x
    return window[newest] - window[w_start] if w_len >= 2 else 0.0


@njit(cache=True, nogil=True, inline="always")
def collect_live(n_open, abandoned, finished, live):
    """Write the branches neither abandoned nor finished to live[:n_live], in opening order; returns n_live."""
    n_live = 0
    for i in range(n_open):
        if not abandoned[i] and not finished[i]:
            live[n_live] = i
            n_live += 1
    return n_live


@njit(cache=True, nogil=True, inline="always")
def abandon_stale(live, n_live, disagree, patience, abandoned, order):
    """Abandon the live branches that disagreed for `patience` rounds or more, the most persistent first (a stable
    sort: ties in live order), but always keep two live; compacts live[:n_live] and returns the new n_live.
    `order` is scratch."""
    n_stale = 0
    for j in range(n_live):
        if disagree[live[j]] >= patience:
            order[n_stale] = live[j]
            n_stale += 1
    sort_by_key_desc(order, n_stale, disagree)  # the most persistent first
    limit = min(n_stale, max(0, n_live - 2))
    if limit <= 0:
        return n_live
    for x in range(limit):
        abandoned[order[x]] = True
    m = 0
    for j in range(n_live):
        if not abandoned[live[j]]:
            live[m] = live[j]
            m += 1
    return m


@njit(cache=True, nogil=True, inline="always")
def sort_by_key_desc(items, n, key):
    """Stable insertion sort of items[:n] by key[item], largest first (n is small: a question's branches)."""
    for x in range(1, n):
        v = items[x]
        y = x - 1
        while y >= 0 and key[items[y]] < key[v]:
            items[y + 1] = items[y]
            y -= 1
        items[y + 1] = v


@njit(cache=True, nogil=True, inline="always")
def sort_deepest_first(live, n_live, depth):
    """Stable insertion sort of live[:n_live] by depth, deepest first."""
    sort_by_key_desc(live, n_live, depth)


@njit(cache=True, nogil=True, inline="always")
def step_bursts(live, n_live, aligned, winner, burst_aligned, glob, depth, latest, finished, pool, n_pool,
                delta, branch_tokens, branch_final, probe_offsets, probe_answers):
    """Advance live[:n_live] in turn: `burst_aligned` steps for a branch whose latest answer is `winner` when
    `aligned`, else one; a branch that finishes stops there and its final answer joins the pool. Returns
    (n_pool, cost)."""
    cost = 0
    for j in range(n_live):
        i = live[j]
        burst = burst_aligned if (aligned and latest[i] == winner) else 1
        for _b in range(burst):
            a, c, fin = step_branch(glob[i], depth[i], delta, branch_tokens, branch_final, probe_offsets,
                                    probe_answers)
            depth[i] += 1
            cost += c
            latest[i] = a
            if fin:
                finished[i] = True
                pool[n_pool] = a
                n_pool += 1
                break
    return n_pool, cost


@njit(cache=True, nogil=True, inline="always")
def all_settled(n_open, finished, abandoned):
    """Whether every open branch is finished or abandoned (nothing left to advance)."""
    for i in range(n_open):
        if not (finished[i] or abandoned[i]):
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def fallback_answer(pool, n_pool, latest, abandoned, n_open, order, scratch):
    """The answer when no stop rule fired: the pool's majority, or with an empty pool the majority of the latest
    answers of the branches not abandoned. `order` is scratch."""
    if n_pool > 0:
        return vote_stats_ids(pool, n_pool, scratch)[0]
    m = 0
    for i in range(n_open):
        if not abandoned[i]:
            order[m] = latest[i]
            m += 1
    return vote_stats_ids(order, m, scratch)[0]
