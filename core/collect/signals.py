"""Per-interval confidence signals from token log-probabilities (DeepConf, Fu et al. 2025; collection-protocol §5).

A branch's probe slots are its Δ-intervals: slot k < n−1 covers generated tokens [kΔ, (k+1)Δ) and the final slot
covers the rest up to T. For each slot the store gets one value per signal (`SIGNAL_NAMES`), aligned with the
slot's answer, so a controller stepping a replayed branch sees exactly what it would have seen live:

* `mean_logprob`: mean log-probability of the sampled tokens in the slot (raw logits);
* `mean_conf`, `min_conf`: mean and minimum token confidence C in the slot (C = −mean of the top-20 log-probs);
* `lowest_group_conf`: lowest group confidence so far (group = mean C over a sliding window of 2,048 sampled
  tokens, stride 1; a branch shorter than the window has one group: its mean);
* `bottom10_group_conf`: mean of the lowest 10% of those windows so far;
* `tail_conf`: mean C over the last 2,048 sampled tokens at the slot's end;
* `answer_logprob`: mean log-probability of the probe's greedy answer tokens (final slot: of the tokens after
  `</think>`); `answer_closed`: 1.0 if the probe's box closed (final slot: a boxed final answer exists), else 0.0.

Forced tokens carry NaN and are skipped. Empty slots repeat the previous slot's value (0.0 for the first), so
every value is a finite float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

WINDOW = 2048
SIGNAL_NAMES = (
    "mean_logprob", "mean_conf", "min_conf", "lowest_group_conf", "bottom10_group_conf", "tail_conf",
    "answer_logprob", "answer_closed",
)


def _finite(x: float, fallback: float) -> float:
    return float(x) if math.isfinite(x) else fallback


def interval_signals(
    logprobs: np.ndarray,
    confidences: np.ndarray,
    slot_ends: Sequence[int],
    answer_logprobs: Sequence[float],
    answer_closed: Sequence[bool],
    window: int = WINDOW,
) -> dict[str, list[float]]:
    """Signals per slot. `logprobs`/`confidences` are per generated token (NaN for forced ones); slot k covers
    tokens [slot_ends[k−1], slot_ends[k]); `answer_logprobs`/`answer_closed` give one value per slot."""
    n_slots = len(slot_ends)
    lp = np.asarray(logprobs, np.float64)
    cf = np.asarray(confidences, np.float64)
    sampled = ~np.isnan(cf)
    # index of each generated position among the sampled tokens (for the group windows)
    n_sampled_before = np.concatenate([[0], np.cumsum(sampled)])
    c = cf[sampled]
    cs = np.concatenate([[0.0], np.cumsum(c)])
    out: dict[str, list[float]] = {k: [] for k in SIGNAL_NAMES}
    prev = dict.fromkeys(SIGNAL_NAMES, 0.0)
    start = 0
    for k in range(n_slots):
        end = int(slot_ends[k])
        seg_lp = lp[start:end][sampled[start:end]]
        seg_cf = cf[start:end][sampled[start:end]]
        vals: dict[str, float] = {}
        if seg_cf.size:
            vals["mean_logprob"] = float(seg_lp.mean())
            vals["mean_conf"] = float(seg_cf.mean())
            vals["min_conf"] = float(seg_cf.min())
        m = int(n_sampled_before[min(end, len(n_sampled_before) - 1)])
        if m:
            if m <= window:
                groups = np.array([cs[m] / m])
            else:
                groups = (cs[window:m + 1] - cs[:m + 1 - window]) / window
            vals["lowest_group_conf"] = float(groups.min())
            q = max(1, int(math.ceil(0.1 * groups.size)))
            vals["bottom10_group_conf"] = float(np.partition(groups, q - 1)[:q].mean())
            w = min(window, m)
            vals["tail_conf"] = float((cs[m] - cs[m - w]) / w)
        vals["answer_logprob"] = float(answer_logprobs[k])
        vals["answer_closed"] = 1.0 if answer_closed[k] else 0.0
        for name in SIGNAL_NAMES:
            v = _finite(vals.get(name, math.nan), prev[name])
            out[name].append(v)
            prev[name] = v
        start = end
    return out
