"""`LiveQuestion`: the replay question API (paper API, action API, batch calls) over a live model backend.

A branch advances in steps, exactly as replay charges them (docs/semantics.md §2):

* a step generates the branch's next interval of Δ tokens and then probes it (close the thinking, ask for the
  boxed answer, greedy, rolled back: the collector's probe, `core.collect`), revealing the probe's answer and
  costing Δ;
* a step in which the branch ends — it samples an end-of-generation token, or writes `</think>` and then its answer,
  or reaches the thinking cap, gets `</think>` forced and answers — runs to the end of the branch, reveals the final
  answer (the last `\\boxed{}` after `</think>`) and costs exactly what it generated;
* a full read generates a whole branch and costs all its tokens.

So a branch with n probed steps and T tokens replays as the triple [n probe answers, T, final answer]; the recorder
(`record()`) writes exactly that. Stepping uses the collector's own per-branch state machine and seeds, so branch i
of question q is the same text that `autotts collect` samples for branch i of question q with the same settings.

Batch calls (`probe_new_many`, `probe_more_many`, `extend_many`, `get_new_branch_final_answers`) advance all the
branches they name in one `backend.extend` per decode round and one `backend.probe`; single calls advance one
branch. Probe decode tokens are counted apart (`probe_tokens`): the cost model charges probes κ = 0 (`probe_cost`).
Answers are normalised as the collector normalises them (`core.collect.normalise.AnswerCanon`), so equivalent forms
vote together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.collect.backend import Backend, CapacityError, Chunk
from core.collect.branch import BranchRun
from core.collect.normalise import AnswerCanon
from core.collect.protocol import (
    BRANCHES_PER_QUESTION,
    CollectSettings,
    branch_seed,
    chat_prompt,
    final_answer,
)
from core.collect.signals import interval_signals
from core.environment import FULL_READ, PRUNED, bad_index_message, check_count
from core.errors import AutoTTSError


@dataclass
class _Branch:
    """One live branch: the collector's state machine plus what the controller was shown."""

    run: BranchRun
    answers: list[str] = field(default_factory=list)
    """Canonical answers of its probed (non-finishing) steps, in order."""
    final: str | None = None
    """Canonical final answer, once finished."""
    open: bool = True
    """Still open in the backend."""
    full_read: bool = False


class LiveQuestion:
    """One question solved live: duck-type compatible with `core.environment.ReplayQuestion`.

    `backend` is any `core.collect.backend.Backend` (llama.cpp in-process, or an OpenAI-compatible server);
    `settings` gives Δ (`interval`), the thinking cap (`max_tokens`), `answer_tokens`, the probe, the sampler and the
    base seed (branch i samples with `branch_seed(settings.seed, question_index, i, question)`). The pool holds
    `max_branches` fresh branches. With `record=True` full reads are probed at every interval too (extra probe
    decoding, no extra charged tokens), so that `record()` can store every branch completely; otherwise `record()`
    refuses runs with full reads.

    Errors are replay's: ValueError for a bad index or (probe_new/branch) an exhausted pool, IndexError for a full
    read of an exhausted pool. Backend failures raise `core.collect.BackendError`; a controller keeping more
    branches running than the backend holds raises `CapacityError`. Call `close()` (or use `with`) to free the
    backend's branches.
    """

    def __init__(
        self,
        backend: Backend,
        question: str,
        *,
        settings: CollectSettings | None = None,
        question_index: int = 0,
        max_branches: int = BRANCHES_PER_QUESTION,
        probe_cost: int = 0,
        gold: str | None = None,
        record: bool = False,
    ):
        if max_branches < 1:
            raise ValueError("max_branches must be at least 1")
        self._backend = backend
        self._text = question
        self._s = settings or CollectSettings()
        self._qi = question_index
        self._max = max_branches
        self._kappa = probe_cost
        self._gold = gold
        self._canon = AnswerCanon(gold)
        self._record = record
        self._prompt: int | None = None
        self._branches: list[_Branch] = []
        self._depth: list[int] = []  # steps taken, or PRUNED / FULL_READ (as in ReplayQuestion)
        self._cost = 0
        self.probe_freq = self._s.interval
        self.probe_tokens = 0
        """Greedy tokens decoded by probes (not part of the cost: κ = 0)."""
        self.extend_calls = 0
        """`backend.extend` calls made (one per decode round of a step or batch)."""
        self.probe_calls = 0
        """`backend.probe` calls made."""

    # ----- backend plumbing -----------------------------------------------------------------------------------------
    @property
    def _next(self) -> int:
        return len(self._branches)

    def _open(self, k: int) -> list[int]:
        """Open k fresh branches in the backend (nothing generated yet); their indices."""
        s = self._s
        if self._prompt is None:
            self._prompt = self._backend.add_prompt(chat_prompt(self._text, s.instruction))
        out = []
        for _ in range(k):
            i = len(self._branches)
            seed = branch_seed(s.seed, self._qi, i, self._text)
            try:
                handle = self._backend.open_branch(self._prompt, seed, s.sampling)
            except CapacityError as e:
                running = sum(b.open for b in self._branches)
                raise CapacityError(
                    f"the controller wants more than the {running} branches running at once that the backend holds "
                    f"({e}); raise --parallel (or the KV budget), or use a narrower controller"
                ) from None
            self._branches.append(_Branch(BranchRun(self._qi, i, seed, handle)))
            self._depth.append(0)
            out.append(i)
        return out

    def _step(self, idxs: list[int], probe: bool = True) -> None:
        """Each named open, unfinished branch takes one step: decode rounds (one batched `extend` each) until every
        branch is at its next probe point or finished, then one batched `probe` of those at a probe point."""
        s = self._s
        pending = [self._branches[i] for i in idxs]
        at_probe: list[_Branch] = []
        while pending:
            chunks: dict[int, Chunk] = self._backend.extend({b.run.handle: b.run.request(s) for b in pending})
            self.extend_calls += 1
            still = []
            for b in pending:
                c = chunks[b.run.handle]
                b.run.absorb(c, s)
                self._cost += c.n_tokens
                if b.run.finished:
                    self._finish(b)
                elif b.run.needs_probe(s):
                    at_probe.append(b)
                else:  # past </think> (answering) or at the thinking cap: the step runs on to the branch's end
                    still.append(b)
            pending = still
        if at_probe and probe:
            results = self._backend.probe([b.run.handle for b in at_probe], s.probe_text, s.probe_tokens)
            self.probe_calls += 1
            for b in at_probe:
                r = results[b.run.handle]
                b.run.add_probe(r)
                self.probe_tokens += r.n_tokens
                b.answers.append(self._canon(b.run.probes[-1]))
        for i in idxs:
            b = self._branches[i]
            if self._depth[i] >= 0:
                self._depth[i] = len(b.answers) + (b.final is not None)

    def _finish(self, b: _Branch) -> None:
        b.final = self._canon(final_answer(b.run.text.decode(errors="replace")))
        self._close(b)

    def _close(self, b: _Branch) -> None:
        if b.open:
            b.open = False
            self._backend.close_branch(b.run.handle)

    def _get(self, i: Any) -> _Branch:
        """The opened, steppable branch i, or the ValueError replay raises."""
        try:
            if not 0 <= i < self._next or self._depth[i] < 0:
                raise ValueError(bad_index_message(i, self._next, self._depth))
        except TypeError:
            raise ValueError(bad_index_message(i, self._next, self._depth)) from None
        return self._branches[i]

    def _check_indices(self, indices: Any) -> list[int]:
        try:
            idx = list(indices)
        except TypeError:
            raise ValueError(f"branch indices must be a list of ints, got {type(indices).__name__}") from None
        seen: set[int] = set()
        for i in idx:
            self._get(i)
            if i in seen:
                raise ValueError(f"branch {i} is named twice in one batch call")
            seen.add(i)
        return idx

    def _exhausted(self) -> str:
        return f"no fresh branch left: all {self._max} branches are opened or read"

    def _shown(self, b: _Branch) -> tuple[str, bool]:
        return (b.final, True) if b.final is not None else (b.answers[-1], False)

    # ----- the paper's API --------------------------------------------------------------------------------------------
    def probe_new(self) -> tuple[str, int, bool]:
        """Open the next fresh branch and take its first step: (answer, branch index, finished)."""
        if self._next >= self._max:
            raise ValueError(self._exhausted())
        (i,) = self._open(1)
        self._step([i])
        ans, fin = self._shown(self._branches[i])
        return ans, i, fin

    def probe_more(self, i: int) -> tuple[str, bool]:
        """Take the next step of opened branch i: (answer, finished). A finished branch answers again for free."""
        b = self._get(i)
        if b.final is None:
            self._step([i])
        return self._shown(b)

    def get_new_branch_final_answer(self) -> str:
        """Generate the next fresh branch to its end (costs all its tokens) and return its final answer."""
        if self._next >= self._max:
            raise IndexError(self._exhausted())
        return self._read(1)[0]

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        """(0, tokens generated so far): the paper's signature, whose first element is always 0."""
        return 0, self._cost

    # ----- batch calls ----------------------------------------------------------------------------------------------
    def probe_new_many(self, n: int) -> list[tuple[str, int, bool]]:
        """Open up to n fresh branches (fewer when the pool runs out) and take their first steps together."""
        idxs = self._open(min(check_count(n), self.fresh_branches_left))
        self._step(idxs)
        out = []
        for i in idxs:
            ans, fin = self._shown(self._branches[i])
            out.append((ans, i, fin))
        return out

    def probe_more_many(self, indices: Any) -> list[tuple[str, bool]]:
        """Take the next step of every named branch together: [(answer, finished), ...] in the order named."""
        idx = self._check_indices(indices)
        self._step([i for i in idx if self._branches[i].final is None])
        return [self._shown(self._branches[i]) for i in idx]

    def extend_many(self, indices: Any) -> list[bool]:
        """CONTINUE every named branch by one interval together: whether each has finished."""
        return [fin for _, fin in self.probe_more_many(indices)]

    def get_new_branch_final_answers(self, n: int) -> list[str]:
        """Generate up to n fresh branches to their ends together (fewer when the pool runs out): final answers."""
        return self._read(min(check_count(n), self.fresh_branches_left))

    def _read(self, k: int) -> list[str]:
        idxs = self._open(k)
        for i in idxs:
            self._branches[i].full_read = True
        todo = idxs
        while todo:
            self._step(todo, probe=self._record)
            todo = [i for i in todo if self._branches[i].final is None]
        for i in idxs:
            self._depth[i] = FULL_READ
        return [self._branches[i].final for i in idxs]  # type: ignore[misc]

    # ----- the action API -------------------------------------------------------------------------------------------
    def branch(self) -> int:
        """BRANCH: open the next fresh branch through its first interval (probed, but nothing is revealed)."""
        if self._next >= self._max:
            raise ValueError(self._exhausted())
        (i,) = self._open(1)
        self._step([i])
        return i

    def extend(self, i: int) -> bool:
        """CONTINUE(i): advance branch i by one interval; returns whether it has finished."""
        return self.probe_more(i)[1]

    def probe(self, i: int) -> str:
        """PROBE(i): the answer branch i gives at its current depth (its final answer once finished); costs
        `probe_cost` tokens unless finished. The probe itself was taken when the interval was generated."""
        b = self._get(i)
        if b.final is None:
            self._cost += self._kappa
        return self._shown(b)[0]

    def prune(self, i: int) -> None:
        """PRUNE(i): deactivate branch i (and free it in the backend)."""
        b = self._get(i)
        self._depth[i] = PRUNED
        self._close(b)

    def is_finished(self, i: int) -> bool:
        """Whether opened branch i has produced its final answer."""
        return self._get(i).final is not None

    def depth(self, i: int) -> int:
        """Steps taken so far by opened branch i."""
        self._get(i)
        return self._depth[i]

    @property
    def fresh_branches_left(self) -> int:
        """How many branches have not been opened or read yet."""
        return self._max - self._next

    @property
    def num_opened(self) -> int:
        """How many branches have been opened or read so far."""
        return self._next

    # ----- results ----------------------------------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        """Tokens charged so far (what `get_seq_and_total_tokens()[1]` reports)."""
        return self._cost

    def record(self) -> dict[str, Any]:
        """This run as one question of a replay store (`core.store.environment_from_records`): branches in opening
        order as [probe answers, tokens, final answer]; `partial` names the branches that had not finished (their
        final answer is unknown, stored as ""); `raw_answers` keeps the un-normalised probe and final answers."""
        s = self._s
        if not self._record and any(b.full_read for b in self._branches):
            raise AutoTTSError("this live question read branches in full without probing them; create it with "
                               "record=True (autotts solve --record) to record the run")
        branches, partial, raw, signals = [], [], [], []
        for i, b in enumerate(self._branches):
            r = b.run
            n = len(b.answers)
            branches.append([list(b.answers), int(r.g), b.final if b.final is not None else ""])
            if b.final is None:
                partial.append(i)
            raw.append([*r.probes, final_answer(r.text.decode(errors="replace")) if b.final is not None else None])
            lps = np.concatenate(r.lps) if r.lps else np.zeros(0, np.float32)
            confs = np.concatenate(r.confs) if r.confs else np.zeros(0, np.float32)
            signals.append(interval_signals(lps, confs, [(k + 1) * s.interval for k in range(n)], r.probe_lps[:n],
                                            r.probe_closed[:n]))
        rec: dict[str, Any] = {
            "question": self._text, "gold_answer": self._gold if self._gold is not None else "",
            "interval": s.interval, "branches": branches, "raw_answers": raw,
        }
        if branches:
            rec["signals"] = {name: [sig[name] for sig in signals] for name in signals[0]}
        if partial:
            rec["partial"] = partial
        return rec

    def close(self) -> None:
        """Close every branch still open in the backend and release the prompt. Idempotent."""
        for b in self._branches:
            if b.open:
                b.open = False
                try:
                    self._backend.close_branch(b.run.handle)
                except AutoTTSError:
                    pass
        if self._prompt is not None:
            prompt, self._prompt = self._prompt, None
            try:
                self._backend.release_prompt(prompt)
            except AutoTTSError:
                pass

    def __enter__(self) -> LiveQuestion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LiveQuestion opened={self._next} tokens={self._cost}>"


class BlockingView:
    """A question seen through its single-branch calls only: how a controller written in the blocking style sees
    it (batch calls hidden, so the built-ins fall back to one branch at a time). Used to measure what batching buys."""

    HIDDEN = ("probe_new_many", "probe_more_many", "extend_many", "get_new_branch_final_answers")

    def __init__(self, question: Any):
        self._q = question

    def __getattr__(self, name: str) -> Any:
        if name in self.HIDDEN:
            raise AttributeError(name)
        return getattr(self._q, name)
