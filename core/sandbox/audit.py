"""The integrity audit: a random sample of cells run twice, in fresh workers at independent random times.

Scores are by construction (workers hold no unrevealed cell), so the audit does not look for peeking. It checks
that every sampled episode does the same thing in both runs: same answer, same tokens, same branches opened,
same final state of every branch. An honest, deterministic controller always agrees with itself; one that keeps
state between episodes, reads a side channel or depends on timing does not, whenever that changes what it does.
The two copies of a cell are indistinguishable to the worker (same shape, same zygote, shuffled among all cells),
so it cannot behave for the audit only.

Sample size from a stated target: a controller that acts differently in a fraction `cheat_rate` of episodes is
caught with probability ≥ `probability`. Cheating concentrated in as few cells as possible is the worst case: a
cell holds at most `max_cell` episodes, so at least `cheat_rate · min_cell / max_cell` of the cells contain a
differing episode, and k cells drawn without replacement all miss them with probability ≤ (1 − that)^k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpisodeOutcome:
    """What the parent observed of one episode (never what the worker claimed)."""

    answer: str | None
    tokens: int
    opened: int
    fingerprint: int


def cells_needed(n_cells: int, min_cell: int, max_cell: int, cheat_rate: float, probability: float) -> int:
    """How many cells to run twice so that the detection target holds (all of them when the run is small)."""
    if n_cells <= 0 or cheat_rate <= 0 or probability <= 0:
        return 0
    if probability >= 1 or cheat_rate >= 1:
        return n_cells
    p_cell = cheat_rate * min_cell / max(1, max_cell)
    return min(n_cells, math.ceil(math.log(1 - probability) / math.log(1 - p_cell)))


def sample_cells(n_cells: int, k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_cells, size=k, replace=False).tolist()) if k else []


def difference(a: EpisodeOutcome, b: EpisodeOutcome) -> str | None:
    """Why two runs of one episode disagree, or None when they agree."""
    reasons = []
    if a.answer != b.answer:
        reasons.append(f"answer {a.answer!r:.60} in one run, {b.answer!r:.60} in the other")
    if a.tokens != b.tokens:
        reasons.append(f"{a.tokens} tokens in one run, {b.tokens} in the other")
    if a.opened != b.opened:
        reasons.append(f"{a.opened} branches opened in one run, {b.opened} in the other")
    elif a.fingerprint != b.fingerprint:
        reasons.append("the branches were advanced differently")
    return "; ".join(reasons) or None


NOTE = ("An episode differs between two runs when the controller keeps state between episodes that changes its "
        "decisions, reads a side channel, depends on timing, or is not deterministic (unseeded randomness). "
        "Seed any randomness and decide only from what the question's methods return.")
