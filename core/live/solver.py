"""`LiveSolver`: run any controller — built-in or a controller file — against a live model, question by question.

    from core.collect.engine import LlamaEngine
    from core.live import LiveSolver, live_settings

    settings = live_settings(interval=500, max_tokens=40_000)
    with LlamaEngine("Qwen3-0.6B-Q8_0.gguf", parallel=64, branch_tokens=settings.branch_budget(),
                     n_gpu_layers=-1) as engine:
        result = LiveSolver(engine, settings=settings).solve("What is 1+1?", "cmc:beta=0.5")
        print(result.answer, result.tokens, result.branches, result.seconds)

The controller sees a `LiveQuestion`, which offers the replay question API, so the code that is evaluated in replay
is the code that runs in production. With `record=True` every run can be turned into a replay environment
(`recorded_environment`) that replays to the same answers and costs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.collect.backend import Backend
from core.collect.protocol import (
    BRANCHES_PER_QUESTION,
    DEFAULT_INSTRUCTION,
    CollectSettings,
    SamplingParams,
    chat_prompt,
)
from core.environment import ReplayEnvironment
from core.errors import AutoTTSError
from core.evaluate import resolve_controller
from core.live.question import LiveQuestion


def live_settings(
    *,
    interval: int = 500,
    max_tokens: int = 40_000,
    answer_tokens: int = 1_500,
    probe_tokens: int = 48,
    probe_style: str = "boxed",
    instruction: str = DEFAULT_INSTRUCTION,
    sampling: SamplingParams | None = None,
    seed: int = 0,
) -> CollectSettings:
    """The collector's settings object, used for live solving (the `branches` count is unused here)."""
    return CollectSettings(interval=interval, max_tokens=max_tokens, answer_tokens=answer_tokens,
                           probe_tokens=probe_tokens, probe_style=probe_style, instruction=instruction,
                           sampling=sampling or SamplingParams(), seed=seed)


@dataclass
class LiveResult:
    """One question solved live by one controller."""

    question: str
    controller: str
    """The controller's spec (`cmc:beta=0.5`) or name."""
    answer: str | None
    """The controller's answer (a normalised string, as the controller saw it), None for no answer."""
    tokens: int
    """Tokens generated and charged, exactly as replay charges them (probe tokens excluded)."""
    branches: int
    """Branches opened or read."""
    probe_tokens: int
    """Greedy tokens decoded by probes (κ = 0 in the paper's cost, so not in `tokens`)."""
    seconds: float
    """Wall time of the solve (model loading excluded)."""
    record: dict[str, Any] = field(repr=False)
    """The run as one question of a replay store (see `LiveQuestion.record`); {} when recording was off."""
    gold: str | None = None
    correct: bool | None = None
    """answer == gold (both normalised like a collected store), when the gold answer is known."""
    extend_calls: int = 0
    """Batched decode calls (`backend.extend`) made: the fewer per branch, the more batching."""
    probe_calls: int = 0
    question_index: int = 0

    def summary(self) -> dict[str, Any]:
        """The JSON row `autotts solve --json` prints."""
        return {
            "question_index": self.question_index, "question": self.question, "controller": self.controller,
            "answer": self.answer, "gold": self.gold, "correct": self.correct, "tokens": self.tokens,
            "probe_tokens": self.probe_tokens, "branches": self.branches, "seconds": round(self.seconds, 3),
            "extend_calls": self.extend_calls, "probe_calls": self.probe_calls,
        }


class LiveSolver:
    """Solves questions live with any controller over one backend (which it does not own: close it yourself).

    `settings` (see `live_settings`) fix Δ, the caps, the probe, the sampler and the base seed; `max_branches` is
    the pool each question offers; `record=True` keeps each run complete enough to store as a replay environment
    (full reads are then probed too)."""

    def __init__(
        self,
        backend: Backend,
        *,
        settings: CollectSettings | None = None,
        max_branches: int = BRANCHES_PER_QUESTION,
        probe_cost: int = 0,
        record: bool = False,
    ):
        self.backend = backend
        self.settings = settings or live_settings()
        self.max_branches = max_branches
        self.probe_cost = probe_cost
        self.record = record

    def prepare(self, questions: Iterable[str]) -> None:
        """Reserve room in the backend for the longest of these questions' prompts (before the first solve)."""
        prepare = getattr(self.backend, "prepare", None)
        texts = [chat_prompt(q, self.settings.instruction) for q in questions]
        if prepare is not None and texts:
            prepare(max(self.backend.count_tokens(t) for t in texts))

    def question(self, text: str, *, index: int = 0, gold: str | None = None) -> LiveQuestion:
        """A live question object for `text` (close it when done)."""
        return LiveQuestion(self.backend, text, settings=self.settings, question_index=index,
                            max_branches=self.max_branches, probe_cost=self.probe_cost, gold=gold, record=self.record)

    def solve(self, question: str, controller: Any, *, index: int = 0, gold: str | None = None) -> LiveResult:
        """Run `controller` (a spec such as `cmc:beta=0.5`, a ControllerSpec, or any object with `solve(question)`)
        on `question`; `index` enters the branch seeds (question i of a file gets index i)."""
        obj, label = resolve_controller(controller)
        q = self.question(question, index=index, gold=gold)
        start = time.perf_counter()
        try:
            try:
                answer = obj.solve(q)
            except AutoTTSError:  # backend failures, capacity: already say what to do
                raise
            except Exception as e:  # a controller bug: say where, keep the traceback for --debug
                raise AutoTTSError(f"{label} raised {type(e).__name__}: {e} (question {index})") from e
            seconds = time.perf_counter() - start
            if answer is not None and not isinstance(answer, str):
                raise AutoTTSError(f"{label}: solve() returned {type(answer).__name__} {answer!r:.60}; "
                                   "return the answer string (or None)")
            record = q.record() if self.record else {}
        finally:
            q.close()
        return LiveResult(
            question=question, controller=label, answer=answer, tokens=q.tokens, branches=q.num_opened,
            probe_tokens=q.probe_tokens, seconds=seconds, record=record, gold=gold,
            correct=None if gold is None else answer == gold, extend_calls=q.extend_calls,
            probe_calls=q.probe_calls, question_index=index,
        )

    def solve_many(self, questions: Sequence[str], controller: Any, *, golds: Sequence[str | None] | None = None
                   ) -> list[LiveResult]:
        """`solve` every question in order (question i gets index i)."""
        self.prepare(questions)
        golds = list(golds) if golds is not None else [None] * len(questions)
        return [self.solve(text, controller, index=i, gold=g) for i, (text, g) in enumerate(zip(questions, golds, strict=True))]


def recorded_environment(results: Sequence[LiveResult], *, name: str = "live/solve",
                         metadata: dict[str, Any] | None = None) -> ReplayEnvironment:
    """A replay environment holding recorded live runs (one question each, in order): branches in opening order,
    presented in that order whatever the seed (`branch_order: "stored"`), unfinished branches marked partial.

    Replaying a run with the controller that made it gives the same answer and cost; save it with
    `core.store.save_environment` (project format)."""
    from core.store import environment_from_records

    if not results:
        raise AutoTTSError("no live runs to record")
    missing = [r.question_index for r in results if not r.record]
    if missing:
        raise AutoTTSError("these runs were solved without recording; use LiveSolver(..., record=True)")
    md = dict(metadata or {})
    md["branch_order"] = "stored"
    md.setdefault("synthetic", False)
    md["live_runs"] = [
        {**r.summary(), "raw_answers": r.record.get("raw_answers")} for r in results
    ]
    records = [r.record for r in results]
    return environment_from_records(records, name=name, metadata=md)
