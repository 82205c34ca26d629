"""One-batch momentum: open every branch in one batch, then stop by CMC's confidence-momentum rules
(docs/semantics.md §6).

Found by a discovery study on the AutoTTS paper's split (search on AIME24 of the four Qwen3 models, AIME25 and
HMMT25 held out; README "One-batch momentum"). It keeps CMC's pool, EMA, abandoning and bursts, and changes three
things: every branch the question gets is opened at the start (CMC opens a few and widens while the vote is
unsure, and a branch opened late rarely finishes in time to vote); a junk intermediate answer ("ERR", "") counts
neither for nor against the pool winner; and β sets the batch size and the strictness of the stop rules
separately.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit, prange

from core.controllers.base import BuiltinController, open_branches, register, step_branches
from core.controllers.cmc import CMCSchedule
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

JUNK = ("ERR", "")
"""Intermediate answers that say nothing: they neither agree nor disagree with the pool winner."""


@dataclass(frozen=True)
class OneBatchSchedule:
    """Every internal setting, derived from β (Python `round`: halves go to the even integer)."""

    batch: int
    """Branches opened at the start, and at most: 5 at β=0, 23 at β=0.6, 59 at β=1."""
    strictness: float
    """s = min(1, 0.2 + 1.6β): the stop rules below are CMC's schedule evaluated at β = s."""
    warm_up: int
    abandon_patience: int
    t_ema: int
    ema_alpha: float
    conf_thresh: float
    delta_slack: float
    burst_aligned: int
    min_complete: int

    @classmethod
    def from_beta(cls, beta: float, max_branches: int = 64) -> OneBatchSchedule:
        b = min(1.0, max(0.0, float(beta)))
        s = min(1.0, 0.2 + 1.6 * b)
        stop = CMCSchedule.from_beta(s)
        return cls(
            batch=min(max_branches, round(5 + 30 * b + 150 * max(0.0, b - 0.6) ** 2)),
            strictness=s,
            warm_up=stop.warm_up,
            abandon_patience=stop.abandon_patience,
            t_ema=stop.t_ema,
            ema_alpha=stop.ema_alpha,
            conf_thresh=stop.conf_thresh,
            delta_slack=stop.delta_slack,
            burst_aligned=stop.burst_aligned,
            min_complete=stop.min_complete,
        )


@register
@dataclass(frozen=True)
class OneBatchMomentum(BuiltinController):
    """All branches opened in one batch, CMC's momentum stop; `beta` trades tokens for accuracy monotonically."""

    name: ClassVar[str] = "one-batch"
    summary: ClassVar[str] = "one batch of branches, CMC's momentum stop (found by discovery): one knob beta"

    beta: float = 0.5
    """The single knob, clamped to [0, 1]; the batch size and every stop setting follow from it."""
    max_branches: int = 64
    """Ceiling on the batch (the schedule's own batch is at most 59)."""
    max_rounds: int = 500
    """Rounds at most."""

    def __post_init__(self) -> None:
        if self.max_branches < 1:
            raise ValueError("one-batch: max_branches must be at least 1")

    @property
    def schedule(self) -> OneBatchSchedule:
        return OneBatchSchedule.from_beta(self.beta, self.max_branches)

    def solve(self, question: Any) -> str | None:
        s = self.schedule
        alpha = s.ema_alpha
        latest: list[str] = []       # each branch's latest answer
        finished: list[bool] = []
        abandoned: list[bool] = []
        steps: list[int] = []
        disagree: list[int] = []     # rounds in a row the branch's answer differed from the pool winner
        pool: list[str] = []         # final answers, in the order branches finished
        for ans, _, fin in open_branches(question, s.batch):
            latest.append(ans)
            finished.append(fin)
            abandoned.append(False)
            steps.append(1)
            disagree.append(0)
            if fin:
                pool.append(ans)
        if not latest:
            return None
        ema = 0.0
        window: deque[float] = deque(maxlen=s.t_ema)
        for outer in range(self.max_rounds):
            # 1. the pool's confidence and its momentum
            winner, top1, top2 = vote_stats(pool)
            warm = outer >= s.warm_up
            ema = (1 - alpha) * ema + alpha * beta_confidence(top1, top2)
            window.append(ema)
            # 2. abandon branches that keep disagreeing with the pool winner (always keep two going); a junk
            # intermediate answer leaves the count as it is
            live = [i for i in range(len(latest)) if not abandoned[i] and not finished[i]]
            if warm and winner is not None:
                for i in live:
                    if latest[i] not in JUNK:
                        disagree[i] = disagree[i] + 1 if latest[i] != winner else 0
                stale = sorted((i for i in live if disagree[i] >= s.abandon_patience), key=lambda i: -disagree[i])
                for i in stale[: max(0, len(live) - 2)]:
                    abandoned[i] = True
                live = [i for i in live if not abandoned[i]]
            # 3. advance the live branches, deepest first; those agreeing with the winner take a longer burst.
            # Burst step r advances every branch still due in one batch; finished answers join the pool afterwards
            # in depth order, as if each branch had taken its whole burst in turn (nothing reads the pool meanwhile).
            order = sorted(live, key=lambda i: -steps[i])
            if warm and winner is not None and s.burst_aligned > 1:
                burst = [s.burst_aligned if latest[i] == winner else 1 for i in order]
            else:
                burst = [1] * len(order)
            for r in range(max(burst, default=1)):
                due = [i for i, n in zip(order, burst, strict=True) if n > r and not finished[i]]
                if not due:
                    break
                for i, (ans, fin) in zip(due, step_branches(question, due), strict=True):
                    steps[i] += 1
                    latest[i] = ans
                    finished[i] = fin
            pool.extend([latest[i] for i in order if finished[i]])
            # 4. the confidence after this round replaces the newest window entry; its trend over the window
            winner, top1, top2 = vote_stats(pool)
            ema = (1 - alpha) * ema + alpha * beta_confidence(top1, top2)
            window[-1] = ema
            delta = window[-1] - window[0] if len(window) >= 2 else 0.0
            # 5. answer when confident and the confidence is not falling
            if warm and len(pool) >= s.min_complete and ema >= s.conf_thresh and delta >= -s.delta_slack:
                return winner
            # 6. nothing left to advance
            if all(f or a for f, a in zip(finished, abandoned, strict=True)):
                break
        if pool:
            return majority(pool)
        return majority([latest[i] for i in range(len(latest)) if not abandoned[i]])

    def run_replay(self, env, seeds):
        s = self.schedule
        junk = np.full((env.n_questions, len(JUNK)), -1, dtype=np.int32)
        for q, vocab in enumerate(env.answer_vocab):
            for k, text in enumerate(JUNK):
                if text in vocab:
                    junk[q, k] = vocab.index(text)
        return _run(*env_arrays(env), permutation_table(env, seeds), junk, beta_confidence_table(129),
                    self.max_rounds, s.batch, s.warm_up, s.abandon_patience, s.t_ema, s.ema_alpha, s.conf_thresh,
                    s.delta_slack, s.burst_aligned, s.min_complete)


@njit(cache=True, nogil=True)
def _episode(lo, n_avail, s, delta, branch_tokens, branch_final, probe_offsets, probe_answers, perm, scratch,
             junk, conf_table, max_rounds, batch, warm_up, abandon_patience, t_ema, alpha, conf_thresh, delta_slack,
             burst_aligned, min_complete):
    """solve() over answer ids, on CMC's momentum machinery in core.kernels (one slot per branch of the batch)."""
    glob, depth, latest, finished, abandoned, disagree, pool, live, order = branch_slots(max(batch, 1))
    window = np.empty(t_ema, dtype=np.float64)
    n_open, n_pool, cost = open_batch(batch, lo, s, perm, n_avail, 0, 0, glob, depth, latest, finished, pool,
                                      delta, branch_tokens, branch_final, probe_offsets, probe_answers)
    if n_open == 0:
        return NO_ANSWER, cost
    ema = 0.0
    w_start = 0
    w_len = 0
    for outer in range(max_rounds):
        # 1. the pool's confidence and its momentum
        winner, ema = pool_momentum(pool, n_pool, scratch, conf_table, ema, alpha)
        w_start, w_len = window_push(window, w_start, w_len, ema)
        warm = outer >= warm_up
        # 2. abandon branches that keep disagreeing with the pool winner; a junk answer leaves the count as it is
        n_live = collect_live(n_open, abandoned, finished, live)
        if warm and winner >= 0:
            for j in range(n_live):
                i = live[j]
                a = latest[i]
                if a != junk[0] and a != junk[1]:
                    disagree[i] = disagree[i] + 1 if a != winner else 0
            n_live = abandon_stale(live, n_live, disagree, abandon_patience, abandoned, order)
        # 3. deepest first; aligned branches take longer bursts
        sort_deepest_first(live, n_live, depth)
        n_pool, c = step_bursts(live, n_live, warm and winner >= 0, winner, burst_aligned, glob, depth, latest,
                                finished, pool, n_pool, delta, branch_tokens, branch_final, probe_offsets,
                                probe_answers)
        cost += c
        # 4. the confidence after this round replaces the newest window entry
        winner, ema = pool_momentum(pool, n_pool, scratch, conf_table, ema, alpha)
        trend = window_replace_trend(window, w_start, w_len, ema)
        # 5. answer when confident and not falling; 6. nothing left to advance
        if warm and n_pool >= min_complete and ema >= conf_thresh and trend >= -delta_slack:
            return winner, cost
        if all_settled(n_open, finished, abandoned):
            break
    return fallback_answer(pool, n_pool, latest, abandoned, n_open, order, scratch), cost


@njit(cache=True, parallel=True)
def _run(branch_offsets, interval, branch_tokens, branch_final, probe_offsets, probe_answers, vocab_sizes, perm,
         junk, conf_table, max_rounds, batch, warm_up, abandon_patience, t_ema, alpha, conf_thresh, delta_slack,
         burst_aligned, min_complete):
    n_seeds, n_q = perm.shape[0], branch_offsets.shape[0] - 1
    answers = np.empty((n_seeds, n_q), dtype=np.int32)
    costs = np.zeros((n_seeds, n_q), dtype=np.int64)
    for s in prange(n_seeds):
        for q in range(n_q):
            lo = branch_offsets[q]
            scratch = np.zeros(vocab_sizes[q], dtype=np.int64)
            a, c = _episode(lo, branch_offsets[q + 1] - lo, s, interval[q], branch_tokens, branch_final,
                            probe_offsets, probe_answers, perm, scratch, junk[q], conf_table, max_rounds, batch,
                            warm_up, abandon_patience, t_ema, alpha, conf_thresh, delta_slack, burst_aligned,
                            min_complete)
            answers[s, q] = a
            costs[s, q] = c
    return answers, costs
