"""The replay environment: compact numpy tables per (model, benchmark) and the question object controllers drive.

Semantics (docs/semantics.md §2). A branch with n probes and T tokens is a list of n + 1 steps:
step k < n reveals probe k and costs the interval Δ; step n reveals the final answer, costs max(0, T − nΔ)
and finishes the branch. Stepping a finished branch again is free. A full read reveals only the final
answer and costs T.

Environments recorded from live runs (`autotts solve --record`, `core.live`) differ in two ways: their branches
are presented in stored (opening) order whatever the seed (metadata `branch_order: "stored"`), and branches
that were still running when the controller stopped are *partial*: their probes are known but their end is not,
so the step that would finish one (or a full read of it) raises `UnrecordedStepError` instead of inventing data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from core.errors import UnrecordedStepError

# Branch states in ReplayQuestion._depth (non-negative values are steps taken); LiveQuestion keeps the same.
UNOPENED = -1
PRUNED = -2
FULL_READ = -3


@dataclass(frozen=True, eq=False)
class ReplayEnvironment:
    """One replay environment (a model on a benchmark) held as flat numpy arrays.

    Answers are interned per question: `answer_vocab[q][id]` is the string of answer id `id` of question q.
    Branch b of question q (stored order) is global branch `branch_offsets[q] + b`.
    """

    name: str
    """Display name, `model/benchmark` (e.g. `Qwen3-0.6B/aime24`)."""
    metadata: dict[str, Any]
    """Model, benchmark, interval, sampling settings, collector version, `synthetic` flag …"""
    questions: tuple[str, ...]
    """Problem texts (never handed to controllers)."""
    gold_answers: tuple[str | None, ...] | None
    """Gold answers as normalised strings; None in a copy made for untrusted code (`without_gold`)."""
    answer_vocab: tuple[tuple[str, ...], ...]
    """Per question, the distinct answer strings; answers are stored as indices into this."""
    gold_ids: np.ndarray
    """int32[Q]: index of the gold answer in the question's vocabulary, −1 when no branch ever says it."""
    interval: np.ndarray
    """int64[Q]: the probe interval Δ in tokens."""
    branch_offsets: np.ndarray
    """int64[Q+1]: question q owns global branches branch_offsets[q] … branch_offsets[q+1]−1."""
    branch_tokens: np.ndarray
    """int64[B]: total tokens T of each branch."""
    branch_final: np.ndarray
    """int32[B]: final answer id of each branch."""
    probe_offsets: np.ndarray
    """int64[B+1]: branch b's probe answers are probe_answers[probe_offsets[b]:probe_offsets[b+1]]."""
    probe_answers: np.ndarray
    """int32[P]: probe answer ids, probe k of a branch taken after (k+1)·Δ tokens."""
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    """Optional per-probe float32[P] signals recorded by the collector (e.g. `mean_logprob`, `group_conf`)."""
    source: str | None = None
    """The file it was loaded from, if any."""
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    """bool[B] (or empty: none): branches recorded live that had not finished when the controller stopped. Their
    probes are real; their token count is what was generated so far and their final answer is unknown."""

    # ----- shape -------------------------------------------------------------------------------------------
    @property
    def n_questions(self) -> int:
        return len(self.questions)

    def n_branches(self, q: int) -> int:
        return int(self.branch_offsets[q + 1] - self.branch_offsets[q])

    @cached_property
    def branch_counts(self) -> np.ndarray:
        return np.diff(self.branch_offsets)

    @cached_property
    def branch_nprobes(self) -> np.ndarray:
        return np.diff(self.probe_offsets).astype(np.int32)

    @property
    def stored_order(self) -> bool:
        """Whether questions present their branches in stored order for every seed (recorded live runs)."""
        return self.metadata.get("branch_order") == "stored"

    @cached_property
    def has_partial(self) -> bool:
        """Whether any branch is partial (see `partial`); the compiled fast paths cannot replay those."""
        return bool(self.partial.size and self.partial.any())

    def partial_branches(self, q: int) -> frozenset[int]:
        """Stored indices of question q's partial branches."""
        if not self.has_partial:
            return frozenset()
        lo, hi = int(self.branch_offsets[q]), int(self.branch_offsets[q + 1])
        return frozenset(np.flatnonzero(self.partial[lo:hi]).tolist())

    # ----- views -------------------------------------------------------------------------------------------
    def without_gold(self) -> ReplayEnvironment:
        """A copy that holds no gold answers and no question texts: what untrusted controller code may see."""
        return replace(
            self,
            gold_answers=None,
            questions=tuple("" for _ in self.questions),
            gold_ids=np.full_like(self.gold_ids, -1),
        )

    def subset(self, question_indices: list[int] | np.ndarray) -> ReplayEnvironment:
        """A new environment holding only the given questions, in the given order."""
        from core.store import environment_from_records, environment_records

        records = environment_records(self)
        return environment_from_records(
            [records[int(i)] for i in question_indices], name=self.name, metadata=dict(self.metadata)
        )

    def branch_answers(self, q: int, b: int) -> tuple[list[str], int, str]:
        """(probe answers, tokens, final answer) of stored branch b of question q, as strings."""
        g = int(self.branch_offsets[q]) + b
        vocab = self.answer_vocab[q]
        lo, hi = int(self.probe_offsets[g]), int(self.probe_offsets[g + 1])
        probes = [vocab[i] for i in self.probe_answers[lo:hi]]
        return probes, int(self.branch_tokens[g]), vocab[int(self.branch_final[g])]

    # ----- step tables for the Python question object --------------------------------------------------------
    def step_tables(self, q: int) -> tuple[list[list[str]], list[list[int]], list[int]]:
        """Per stored branch: answers of steps 0..n, costs of steps 0..n, total tokens. Built once, cached."""
        cache = self._step_table_cache
        tables = cache.get(q)
        if tables is None:
            tables = cache[q] = self._build_step_tables(q)
        return tables

    @cached_property
    def _step_table_cache(self) -> dict[int, tuple[list[list[str]], list[list[int]], list[int]]]:
        return {}

    def _build_step_tables(self, q: int) -> tuple[list[list[str]], list[list[int]], list[int]]:
        vocab = self.answer_vocab[q]
        delta = int(self.interval[q])
        lo_b, hi_b = int(self.branch_offsets[q]), int(self.branch_offsets[q + 1])
        po = self.probe_offsets.tolist()
        pa = self.probe_answers.tolist()
        finals = self.branch_final.tolist()
        tokens = self.branch_tokens[lo_b:hi_b].tolist()
        answers: list[list[str]] = []
        costs: list[list[int]] = []
        for g in range(lo_b, hi_b):
            ids = pa[po[g] : po[g + 1]]
            n = len(ids)
            answers.append([vocab[i] for i in ids] + [vocab[finals[g]]])
            costs.append([delta] * n + [max(0, tokens[g - lo_b] - n * delta)])
        return answers, costs, tokens

    def question(self, q: int, seed: int | None, *, probe_cost: int = 0, trace: bool = False) -> ReplayQuestion:
        """The question object a controller solves: question q with its branches shuffled by `seed`.

        `seed=None`, or an environment with `branch_order: "stored"` in its metadata (a recorded live run), presents
        the branches in stored order: replaying a recorded run then reproduces it exactly."""
        answers, costs, tokens = self.step_tables(q)
        n = self.n_branches(q)
        order = list(range(n)) if seed is None or self.stored_order else shuffle_order(n, seed)
        cls = TracedReplayQuestion if trace else ReplayQuestion
        return cls(answers, costs, tokens, order, int(self.interval[q]), probe_cost,
                   partial=self.partial_branches(q) or None)


_ORDER_CACHE: dict[tuple[int, int], list[int]] = {}


def shuffle_order(n: int, seed: int) -> list[int]:
    """Stored indices in the order a seed presents them: `random.Random(seed).shuffle` of the stored list."""
    key = (n, seed)
    order = _ORDER_CACHE.get(key)
    if order is None:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        if len(_ORDER_CACHE) > 4096:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = order
    return order


class ReplayQuestion:
    """One question of one episode, as a controller sees it.

    Two equivalent interfaces over the same state:

    * the paper's API — `probe_new()`, `probe_more(i)`, `get_new_branch_final_answer()`,
      `get_seq_and_total_tokens()` — so controllers written for the paper run unchanged;
    * the step-by-step action API — `branch()` (BRANCH), `extend(i)` (CONTINUE), `probe(i)` (PROBE, costs
      `probe_cost` tokens unless the branch has finished), `prune(i)` (PRUNE); returning from `solve` is ANSWER.

    Branch indices count from 0 in opening order; full reads consume fresh branches too. The object holds no
    gold answer; unrevealed cells live only in private tables (an audit re-runs episodes to catch peeking).

    Batch calls — `probe_new_many(n)`, `probe_more_many(indices)`, `extend_many(indices)`,
    `get_new_branch_final_answers(n)` — do what the same single calls in a loop would do (same answers, costs and
    errors; indices are all checked first, so a bad one raises before anything is stepped). A live question
    (`core.live.LiveQuestion`) decodes the branches of one batch call together, so controllers that advance
    several branches per round should use them.
    """

    __slots__ = ("_answers", "_costs", "_tokens", "_order", "_depth", "_next", "_cost", "probe_freq", "_kappa",
                 "_partial")

    def __init__(
        self,
        answers: list[list[str]],
        costs: list[list[int]],
        tokens: list[int],
        order: list[int],
        interval: int,
        probe_cost: int = 0,
        partial: frozenset[int] | None = None,
    ):
        self._answers = answers
        self._costs = costs
        self._tokens = tokens
        self._order = order
        self._depth = [UNOPENED] * len(order)
        self._next = 0
        self._cost = 0
        self.probe_freq = interval
        self._kappa = probe_cost
        self._partial = partial  # stored indices whose end was not recorded (None: none)

    # ----- the paper's API -----------------------------------------------------------------------------------
    def probe_new(self) -> tuple[str, int, bool]:
        """Open the next fresh branch and take its first step: (answer, branch index, finished)."""
        i = self._next
        if i >= len(self._order):
            raise ValueError(f"no fresh branch left: all {len(self._order)} branches are opened or read")
        b = self._order[i]
        answers = self._answers[b]
        if len(answers) == 1 and self._partial is not None and b in self._partial:
            raise UnrecordedStepError(_unrecorded(i, 0))
        self._next = i + 1
        self._depth[i] = 1
        self._cost += self._costs[b][0]
        return answers[0], i, len(answers) == 1

    def probe_more(self, i: int) -> tuple[str, bool]:
        """Take the next step of opened branch i: (answer, finished). A finished branch answers again for free."""
        try:
            if not 0 <= i < self._next or (d := self._depth[i]) < 0:
                raise ValueError(self._bad_index(i))
        except TypeError:  # a non-integer index; free when nothing is raised
            raise ValueError(self._bad_index(i)) from None
        b = self._order[i]
        answers = self._answers[b]
        n = len(answers) - 1
        if d < n:
            self._cost += self._costs[b][d]
            self._depth[i] = d + 1
            return answers[d], False
        if d == n:
            if self._partial is not None and b in self._partial:
                raise UnrecordedStepError(_unrecorded(i, d))
            self._cost += self._costs[b][d]
            self._depth[i] = d + 1
            return answers[d], True
        return answers[n], True

    def get_new_branch_final_answer(self) -> str:
        """Read the next fresh branch in full (costs its total tokens) and return its final answer."""
        i = self._next
        if i >= len(self._order):
            raise IndexError(f"no fresh branch left: all {len(self._order)} branches are opened or read")
        b = self._order[i]
        if self._partial is not None and b in self._partial:
            raise UnrecordedStepError(f"branch {i} of this recorded run was not finished live, so its full read "
                                      "cannot be replayed (replay only what the recorded controller did)")
        self._next = i + 1
        self._depth[i] = FULL_READ
        self._cost += self._tokens[b]
        return self._answers[b][-1]

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        """(0, tokens spent so far): the paper's signature, whose first element is always 0."""
        return 0, self._cost

    # ----- the action API ------------------------------------------------------------------------------------
    def branch(self) -> int:
        """BRANCH: open the next fresh branch through its first interval; returns its index (nothing revealed)."""
        i = self._next
        if i >= len(self._order):
            raise ValueError(f"no fresh branch left: all {len(self._order)} branches are opened or read")
        b = self._order[i]
        if len(self._answers[b]) == 1 and self._partial is not None and b in self._partial:
            raise UnrecordedStepError(_unrecorded(i, 0))
        self._next = i + 1
        self._depth[i] = 1
        self._cost += self._costs[b][0]
        return i

    def extend(self, i: int) -> bool:
        """CONTINUE(i): advance branch i by one interval; returns whether it has finished."""
        try:
            if not 0 <= i < self._next or (d := self._depth[i]) < 0:
                raise ValueError(self._bad_index(i))
        except TypeError:  # a non-integer index; free when nothing is raised
            raise ValueError(self._bad_index(i)) from None
        b = self._order[i]
        n = len(self._answers[b]) - 1
        if d <= n:
            if d == n and self._partial is not None and b in self._partial:
                raise UnrecordedStepError(_unrecorded(i, d))
            self._cost += self._costs[b][d]
            self._depth[i] = d = d + 1
        return d > n

    def probe(self, i: int) -> str:
        """PROBE(i): the answer branch i gives at its current depth (its final answer once finished)."""
        try:
            if not 0 <= i < self._next or (d := self._depth[i]) < 0:
                raise ValueError(self._bad_index(i))
        except TypeError:  # a non-integer index; free when nothing is raised
            raise ValueError(self._bad_index(i)) from None
        answers = self._answers[self._order[i]]
        if d < len(answers):
            self._cost += self._kappa
        return answers[d - 1]

    def prune(self, i: int) -> None:
        """PRUNE(i): deactivate branch i; it can no longer be extended or probed."""
        try:
            if not 0 <= i < self._next or self._depth[i] < 0:
                raise ValueError(self._bad_index(i))
        except TypeError:
            raise ValueError(self._bad_index(i)) from None
        self._depth[i] = PRUNED

    # ----- batch calls ---------------------------------------------------------------------------------------------
    def probe_new_many(self, n: int) -> list[tuple[str, int, bool]]:
        """Open up to `n` fresh branches (fewer when the pool runs out; never raises for that) and take the first
        step of each: a list of `(answer, branch index, finished)` in opening order, as `probe_new` gives them."""
        k = min(check_count(n), self.fresh_branches_left)
        return [self.probe_new() for _ in range(k)]

    def probe_more_many(self, indices: Any) -> list[tuple[str, bool]]:
        """Take the next step of each named branch: `[(answer, finished), ...]` in the order named, as
        `probe_more` gives them. Raises ValueError (before stepping anything) for a bad or repeated index."""
        idx = self._check_indices(indices)
        if type(self) is not ReplayQuestion or self._partial is not None:
            return [self.probe_more(i) for i in idx]  # subclasses (tracing, remote) see every single step
        # The plain replay question inlines probe_more: the built-ins' Python path steps through here.
        order, tables, costs, depth = self._order, self._answers, self._costs, self._depth
        out = []
        cost = self._cost
        for i in idx:
            d = depth[i]
            b = order[i]
            answers = tables[b]
            n = len(answers) - 1
            if d <= n:
                cost += costs[b][d]
                depth[i] = d + 1
                out.append((answers[d], d == n))
            else:
                out.append((answers[n], True))
        self._cost = cost
        return out

    def extend_many(self, indices: Any) -> list[bool]:
        """CONTINUE each named branch by one interval: whether each has finished, as `extend` gives it. Raises
        ValueError (before stepping anything) for a bad or repeated index."""
        return [self.extend(i) for i in self._check_indices(indices)]

    def get_new_branch_final_answers(self, n: int) -> list[str]:
        """Read up to `n` fresh branches in full (fewer when the pool runs out; never raises for that): their final
        answers in reading order, as `get_new_branch_final_answer` gives them."""
        k = min(check_count(n), self.fresh_branches_left)
        return [self.get_new_branch_final_answer() for _ in range(k)]

    def _check_indices(self, indices: Any) -> list[int]:
        try:
            idx = indices if type(indices) is list else list(indices)
        except TypeError:
            raise ValueError(f"branch indices must be a list of ints, got {type(indices).__name__}") from None
        depth, n_open = self._depth, self._next
        for i in idx:  # the common case costs one comparison chain per index; anything odd gets the full check
            if type(i) is not int or not 0 <= i < n_open or depth[i] < 0:
                self.depth(i)  # raises the ValueError that the single call would raise
        if len(set(idx)) != len(idx):
            twice = next(i for k, i in enumerate(idx) if i in idx[:k])
            raise ValueError(f"branch {twice} is named twice in one batch call")
        return idx

    # ----- what a controller may observe -----------------------------------------------------------------------
    def is_finished(self, i: int) -> bool:
        """Whether opened branch i has produced its final answer."""
        try:
            if not 0 <= i < self._next or (d := self._depth[i]) < 0:
                raise ValueError(self._bad_index(i))
        except TypeError:  # a non-integer index; free when nothing is raised
            raise ValueError(self._bad_index(i)) from None
        return d >= len(self._answers[self._order[i]])

    def depth(self, i: int) -> int:
        """Intervals generated so far by opened branch i."""
        try:
            if not 0 <= i < self._next or (d := self._depth[i]) < 0:
                raise ValueError(self._bad_index(i))
        except TypeError:  # a non-integer index; free when nothing is raised
            raise ValueError(self._bad_index(i)) from None
        return d

    @property
    def fresh_branches_left(self) -> int:
        """How many branches have not been opened or read yet."""
        return len(self._order) - self._next

    @property
    def num_opened(self) -> int:
        """How many branches have been opened or read so far."""
        return self._next

    def _bad_index(self, i: object) -> str:
        return bad_index_message(i, self._next, self._depth)

    def __repr__(self) -> str:
        return f"<ReplayQuestion opened={self._next} tokens={self._cost}>"


def bad_index_message(i: object, n_opened: int, states: list[int]) -> str:
    """Why index `i` names no steppable branch (`states[i]`: steps taken, or PRUNED / FULL_READ)."""
    if not isinstance(i, int | np.integer) or isinstance(i, bool):
        return f"branch index must be an int, got {type(i).__name__} {i!r:.40}"
    if not 0 <= i < n_opened:
        return f"branch {i} is not open: valid indices are 0..{n_opened - 1} (open one with probe_new/branch)"
    state = states[i]
    if state == PRUNED:
        return f"branch {i} was pruned and cannot be stepped or probed"
    return f"branch {i} was read in full with get_new_branch_final_answer and cannot be stepped"


def check_count(n: object) -> int:
    """A batch size: a non-negative int (ValueError otherwise)."""
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0:
        raise ValueError(f"the number of branches must be a non-negative int, got {n!r:.40}")
    return int(n)


def _unrecorded(i: int, steps: int) -> str:
    return (f"branch {i} of this recorded run has only {steps} recorded steps: it was still running when the live "
            "controller stopped, so its next step was never generated (replay only what the recorded controller did, "
            "or collect complete branches with `autotts collect`)")


class TracedReplayQuestion(ReplayQuestion):
    """A ReplayQuestion that also records every action as `(op, branch, cost, revealed answer or None)`.

    Ops: `open` (probe_new), `step` (probe_more), `read` (full read), `branch`, `extend`, `probe`, `prune`.
    """

    __slots__ = ("events",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, int, int, str | None]] = []

    def _log(self, op: str, i: int, before: int, answer: str | None) -> None:
        self.events.append((op, int(i), self._cost - before, answer))

    def probe_new(self) -> tuple[str, int, bool]:
        before = self._cost
        ans, i, fin = super().probe_new()
        self._log("open", i, before, ans)
        return ans, i, fin

    def probe_more(self, i: int) -> tuple[str, bool]:
        before = self._cost
        ans, fin = super().probe_more(i)
        self._log("step", i, before, ans)
        return ans, fin

    def get_new_branch_final_answer(self) -> str:
        before = self._cost
        ans = super().get_new_branch_final_answer()
        self._log("read", self._next - 1, before, ans)
        return ans

    def branch(self) -> int:
        before = self._cost
        i = super().branch()
        self._log("branch", i, before, None)
        return i

    def extend(self, i: int) -> bool:
        before = self._cost
        fin = super().extend(i)
        self._log("extend", i, before, None)
        return fin

    def probe(self, i: int) -> str:
        before = self._cost
        ans = super().probe(i)
        self._log("probe", i, before, ans)
        return ans

    def prune(self, i: int) -> None:
        super().prune(i)
        self._log("prune", i, self._cost, None)
