"""Voting primitives shared by the built-in controllers; agent-written controllers may import them too.

All of them follow docs/semantics.md §5: lists are in branch-opening / arrival order, and ties go to the answer
that occurs first in the list (the order `collections.Counter.most_common` gives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

A = TypeVar("A")

__all__ = ["beta_confidence", "beta_confidence_table", "majority", "vote_counts", "vote_stats"]


def vote_counts(answers: Sequence[A]) -> dict[A, int]:
    """Count each answer; the dict keeps first-occurrence order."""
    counts: dict[A, int] = {}
    get = counts.get
    for a in answers:
        counts[a] = get(a, 0) + 1
    return counts


def majority(answers: Sequence[A]) -> A | None:
    """The most frequent answer; ties go to the one that occurs first. None for an empty list."""
    if not answers:
        return None
    counts = vote_counts(answers)
    best, best_n = None, 0
    for a, n in counts.items():
        if n > best_n:
            best, best_n = a, n
    return best


def vote_stats(answers: Sequence[A]) -> tuple[A | None, int, int]:
    """(winner, top1, top2): the majority answer, its count and the count of the runner-up (0 if none)."""
    if not answers:
        return None, 0, 0
    counts = vote_counts(answers)
    best, top1, top2 = None, 0, 0
    for a, n in counts.items():
        if n > top1:
            best, top2, top1 = a, top1, n
        elif n > top2:
            top2 = n
    return best, top1, top2


_TABLE: np.ndarray = np.zeros((0, 0))
_TABLE_LIST: list[list[float]] = []


def beta_confidence_table(size: int = 129) -> np.ndarray:
    """float64[size, size] with entry [top1, top2] = P(p > 0.5) for p ~ Beta(top1+1, top2+1); 0 when top1 = 0.

    Computed as `1 - betainc(top1+1, top2+1, 0.5)` — bit-for-bit what `1 - scipy.stats.beta.cdf(0.5, …)`
    gives (the paper's evaluator), so threshold comparisons decide the same way. The exact rational value
    differs from scipy's in the last bit for about a fifth of the entries, which is why it is not used.
    """
    global _TABLE, _TABLE_LIST
    if _TABLE.shape[0] < size:
        from scipy.special import betainc

        n = max(size, 129)
        top1, top2 = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij")
        table = 1.0 - betainc(top1 + 1.0, top2 + 1.0, 0.5)
        table[0, :] = 0.0
        table.setflags(write=False)
        _TABLE, _TABLE_LIST = table, table.tolist()
    return _TABLE


def beta_confidence(top1: int, top2: int) -> float:
    """P(p > 0.5) for p ~ Beta(top1+1, top2+1): how sure a vote with these top-two counts is of its winner."""
    if top1 < 0 or top2 < 0:
        raise ValueError(f"vote counts must be non-negative, got {top1}, {top2}")
    try:
        return _TABLE_LIST[top1][top2]
    except IndexError:
        beta_confidence_table(max(top1, top2) + 1)
        return _TABLE_LIST[top1][top2]
