"""CMC, the Confidence Momentum Controller the AutoTTS paper discovered (its Appendix D; docs/semantics.md §6).

One knob β ∈ [0, 1] schedules every internal setting: small β stops early on few branches, large β opens more
branches, probes deeper and demands more confidence. The controller keeps a pool of finished branches' answers,
tracks an exponential moving average (EMA) of the pool's Beta confidence, abandons branches that keep disagreeing
with the pool winner, gives aligned branches longer bursts, and widens only while confidence is low and not rising.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from core.controllers.base import BuiltinController, open_branches, register, step_branches
from core.kernels import (
    NO_ANSWER,
    abandon_stale,
    all_settled,
    branch_slots,
    collect_live,
    env_arrays,
    fallback_answer,
    open_batch,
    permutation_table,
    pool_momentum,
    sort_deepest_first,
    step_bursts,
    window_push,
    window_replace_trend,
)
from core.primitives import beta_confidence, beta_confidence_table, majority, vote_stats


@dataclass(frozen=True)
class CMCSchedule:
    """Every internal setting of CMC, derived from β (Python `round`: halves go to the even integer)."""

    n_init: int
    max_branch_use: int
    warm_up: int
    abandon_patience: int
    t_ema: int
    ema_alpha: float
    conf_thresh: float
    delta_slack: float
    burst_aligned: int
    widen_burst: int
    trend_thresh: float
    min_complete: int

    @classmethod
    def from_beta(cls, beta: float, max_branches: int = 64) -> CMCSchedule:
        b = min(1.0, max(0.0, float(beta)))
        return cls(
            n_init=max(2, round(2 + 6 * b)),
            max_branch_use=min(max_branches, round(4 + 60 * b)),
            warm_up=max(2, round(2 + 8 * b)),
            abandon_patience=max(3, round(3 + 9 * b)),
            t_ema=max(2, round(2 + 6 * b)),
            ema_alpha=round(0.70 - 0.40 * b, 4),
            conf_thresh=round(0.85 + 0.12 * b, 4),
            delta_slack=round(0.04 - 0.03 * b, 4),
            burst_aligned=max(1, round(1 + 2 * b)),
            widen_burst=max(1, round(1 + 3 * b)),
            trend_thresh=round(0.04 - 0.03 * b, 4),
            min_complete=max(2, round(2 + 3 * b)),
        )


@register
@dataclass(frozen=True)
class ConfidenceMomentumController(BuiltinController):
    """The paper's discovered controller; `beta` trades tokens for accuracy monotonically."""

    name: ClassVar[str] = "cmc"
    summary: ClassVar[str] = "Confidence Momentum Controller (AutoTTS): one knob beta in [0, 1]"

    beta: float = 0.5
    """The single knob, clamped to [0, 1]; every internal setting follows from it."""
    max_branches: int = 64
    """Ceiling on branches opened per question."""
    max_rounds: int = 500
    """Outer rounds at most."""

    @property
    def schedule(self) -> CMCSchedule:
        return CMCSchedule.from_beta(self.beta, self.max_branches)

    def solve(self, question: Any) -> str | None:
        s = self.schedule
        alpha = s.ema_alpha
        latest: list[str] = []
        finished: list[bool] = []
        abandoned: list[bool] = []
        probes: list[int] = []
        disagree: list[int] = []
        pool: list[str] = []  # final answers of finished branches, in finishing order

        def open_many(k: int) -> int:
            """Open up to k branches in one batch (fewer when the pool runs out); returns how many opened."""
            opened = open_branches(question, k)
            for ans, _, fin in opened:
                latest.append(ans)
                finished.append(fin)
                abandoned.append(False)
                probes.append(1)
                disagree.append(0)
                if fin:
                    pool.append(ans)
            return len(opened)

        open_many(s.n_init)
        if not latest:
            return None
        spawned = len(latest)
        ema = 0.0
        window: deque[float] = deque(maxlen=s.t_ema)
        for outer in range(self.max_rounds):
            # 1. pool confidence and its momentum
            winner, top1, top2 = vote_stats(pool)
            warm = outer >= s.warm_up
            ema = (1 - alpha) * ema + alpha * beta_confidence(top1, top2)
            window.append(ema)
            # 2. abandon branches that keep disagreeing with the pool winner (always keep two alive)
            live = [i for i in range(len(latest)) if not abandoned[i] and not finished[i]]
            if warm and winner is not None:
                for i in live:
                    disagree[i] = disagree[i] + 1 if latest[i] != winner else 0
                stale = sorted((i for i in live if disagree[i] >= s.abandon_patience), key=lambda i: -disagree[i])
                for i in stale[: max(0, len(live) - 2)]:
                    abandoned[i] = True
                live = [i for i in live if not abandoned[i]]
            # 3. depth: deepest first; branches agreeing with the winner get longer bursts. Burst step r advances
            # every branch still due in one batch; finished answers join the pool afterwards in depth order, as if
            # each branch had taken its whole burst in turn (nothing reads the pool during this phase).
            order = sorted(live, key=lambda i: -probes[i])
            if warm and winner is not None and s.burst_aligned > 1:
                burst = [s.burst_aligned if latest[i] == winner else 1 for i in order]
            else:
                burst = None  # every branch takes one step
            due = order
            for r in range(s.burst_aligned if burst else 1):
                if r:
                    due = [i for i, b in zip(order, burst, strict=True) if b > r and not finished[i]]  # type: ignore[arg-type]
                if not due:
                    break
                for i, (ans, fin) in zip(due, step_branches(question, due), strict=True):
                    probes[i] += 1
                    latest[i] = ans
                    finished[i] = fin
            pool.extend([latest[i] for i in order if finished[i]])
            # 4. second EMA update this round replaces the newest window entry
            winner, top1, top2 = vote_stats(pool)
            ema = (1 - alpha) * ema + alpha * beta_confidence(top1, top2)
            window[-1] = ema
            delta = window[-1] - window[0] if len(window) >= 2 else 0.0
            # 5. stop when confident and confidence is not falling
            if warm and len(pool) >= s.min_complete and ema >= s.conf_thresh and delta >= -s.delta_slack:
                return winner
            # 6. nothing left to advance
            if all(f or a for f, a in zip(finished, abandoned, strict=True)):
                break
            # 7. widen while confidence is low and not rising
            if (spawned < s.max_branch_use and delta <= s.trend_thresh and outer >= max(1, s.warm_up // 2)
                    and ema < s.conf_thresh):
                spawned += open_many(min(s.widen_burst, max(0, min(s.max_branch_use, 64) - spawned)))
        if pool:
            return majority(pool)
        return majority([latest[i] for i in range(len(latest)) if not abandoned[i]])

    def run_replay(self, env, seeds):
        s = self.schedule
        table = beta_confidence_table(129)
        cap = min(s.max_branch_use, 64)
        return _run(*env_arrays(env), permutation_table(env, seeds), table, self.max_rounds, s.n_init, cap,
                    s.max_branch_use, s.warm_up, s.abandon_patience, s.t_ema, s.ema_alpha, s.conf_thresh,
                    s.delta_slack, s.burst_aligned, s.widen_burst, s.trend_thresh, s.min_complete)


@njit(cache=True, nogil=True)
def _episode(lo, n_avail, s, delta, branch_tokens, branch_final, probe_offsets, probe_answers, perm, scratch,
             conf_table, max_rounds, n_init, cap, max_branch_use, warm_up, abandon_patience, t_ema, alpha,
             conf_thresh, delta_slack, burst_aligned, widen_burst, trend_thresh, min_complete):
    """solve() over answer ids, on the shared momentum machinery of core.kernels (one slot per opened branch)."""
    size = max(n_init, cap) + widen_burst
    glob, depth, latest, finished, abandoned, disagree, pool, live, order = branch_slots(size)
    window = np.empty(t_ema, dtype=np.float64)
    n_open, n_pool, cost = open_batch(n_init, lo, s, perm, n_avail, 0, 0, glob, depth, latest, finished, pool,
                                      delta, branch_tokens, branch_final, probe_offsets, probe_answers)
    if n_open == 0:
        return NO_ANSWER, cost
    ema = 0.0
    w_start = 0
    w_len = 0
    for outer in range(max_rounds):
        # 1. pool confidence and its momentum
        winner, ema = pool_momentum(pool, n_pool, scratch, conf_table, ema, alpha)
        w_start, w_len = window_push(window, w_start, w_len, ema)
        warm = outer >= warm_up
        # 2. abandon branches that keep disagreeing with the pool winner
        n_live = collect_live(n_open, abandoned, finished, live)
        if warm and winner >= 0:
            for j in range(n_live):
                i = live[j]
                disagree[i] = disagree[i] + 1 if latest[i] != winner else 0
            n_live = abandon_stale(live, n_live, disagree, abandon_patience, abandoned, order)
        # 3. deepest first; aligned branches take longer bursts
        sort_deepest_first(live, n_live, depth)
        n_pool, c = step_bursts(live, n_live, warm and winner >= 0, winner, burst_aligned, glob, depth, latest,
                                finished, pool, n_pool, delta, branch_tokens, branch_final, probe_offsets,
                                probe_answers)
        cost += c
        # 4. second EMA update replaces the newest window entry
        winner, ema = pool_momentum(pool, n_pool, scratch, conf_table, ema, alpha)
        trend = window_replace_trend(window, w_start, w_len, ema)
        # 5. stop; 6. nothing left to advance
        if warm and n_pool >= min_complete and ema >= conf_thresh and trend >= -delta_slack:
            return winner, cost
        if all_settled(n_open, finished, abandoned):
            break
        # 7. widen (n_open counts the branches spawned)
        if n_open < max_branch_use and trend <= trend_thresh and outer >= max(1, warm_up // 2) and ema < conf_thresh:
            n_open, n_pool, c = open_batch(min(widen_burst, cap - n_open), lo, s, perm, n_avail, n_open, n_pool,
                                           glob, depth, latest, finished, pool, delta, branch_tokens,
                                           branch_final, probe_offsets, probe_answers)
            cost += c
    return fallback_answer(pool, n_pool, latest, abandoned, n_open, order, scratch), cost


@njit(cache=True, parallel=True)
def _run(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes, perm,
         conf_table, max_rounds, n_init, cap, max_branch_use, warm_up, abandon_patience, t_ema, alpha, conf_thresh,
         delta_slack, burst_aligned, widen_burst, trend_thresh, min_complete):
    n_seeds, n_q = perm.shape[0], branch_offsets.shape[0] - 1
    answers = np.empty((n_seeds, n_q), dtype=np.int32)
    costs = np.zeros((n_seeds, n_q), dtype=np.int64)
    for s in prange(n_seeds):
        for q in range(n_q):
            lo = branch_offsets[q]
            scratch = np.zeros(vocab_sizes[q], dtype=np.int64)
            a, c = _episode(lo, branch_offsets[q + 1] - lo, s, interval[q], branch_tokens, branch_final,
                            probe_offsets, probe_answers, perm, scratch, conf_table, max_rounds, n_init, cap,
                            max_branch_use, warm_up, abandon_patience, t_ema, alpha, conf_thresh, delta_slack,
                            burst_aligned, widen_burst, trend_thresh, min_complete)
            answers[s, q] = a
            costs[s, q] = c
    return answers, costs
