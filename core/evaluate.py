"""The evaluation protocol (docs/semantics.md §4): 100 seeded shuffles, every question, exact accuracy and mean tokens.

Episodes are run without gold (`run_episodes`, what a sandboxed worker does) and scored separately (`score`),
so untrusted code never needs the gold answers in its process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.controllers.base import BuiltinController, ControllerSpec, parse_spec
from core.environment import ReplayEnvironment
from core.errors import AutoTTSError, ControllerSpecError
from core.progress import Progress, ProgressCallback

DEFAULT_SEEDS: tuple[int, ...] = tuple(range(100))

Trace = list[tuple[str, int, int, str | None]]
"""One episode's actions: (op, branch index, tokens charged, revealed answer or None)."""


class ControllerRunError(AutoTTSError):
    """A controller raised or returned something that is not an answer; names the seed and question."""

    def __init__(self, message: str, *, seed: int, question: int, traceback_text: str = ""):
        super().__init__(message)
        self.seed, self.question, self.traceback_text = seed, question, traceback_text


@dataclass
class Episodes:
    """What running a controller produces, before scoring: answers and token costs per (seed, question)."""

    seeds: np.ndarray
    """int64[S]: the shuffle seeds, in run order."""
    answers: list[list[str | None]]
    """answers[s][q]: the answer returned for question q under seed index s (None: no answer)."""
    tokens: np.ndarray
    """int64[S, Q]: tokens spent per episode."""
    traces: dict[tuple[int, int], Trace] | None = None
    """(seed, question) → actions, when traces were requested."""
    seconds: float = 0.0
    """Wall time spent running them."""


@dataclass
class EvalResult:
    """A controller scored on one environment: the reported figures and every episode behind them."""

    env: str
    """Environment name, `model/benchmark`."""
    controller: str
    """The controller spec (`cmc:beta=0.5`) or the name of a custom controller."""
    accuracy: float
    """Percent, rounded to 2 decimals like the paper's evaluator."""
    avg_tokens: float
    """Mean over seeds of the per-seed mean tokens per question."""
    seeds: np.ndarray
    answers: list[list[str | None]]
    correct: np.ndarray
    """bool[S, Q]."""
    tokens: np.ndarray
    """int64[S, Q]."""
    traces: dict[tuple[int, int], Trace] | None = None
    seconds: float = 0.0

    @property
    def per_seed_accuracy(self) -> np.ndarray:
        """float64[S]: percent correct per seed."""
        return 100.0 * self.correct.mean(axis=1)

    @property
    def per_seed_tokens(self) -> np.ndarray:
        """float64[S]: mean tokens per question per seed."""
        return self.tokens.sum(axis=1) / self.tokens.shape[1]

    def episodes(self) -> list[dict[str, Any]]:
        """Per-episode rows: seed, question, answer, correct, tokens."""
        return [
            {"seed": int(seed), "question": q, "answer": self.answers[si][q],
             "correct": bool(self.correct[si, q]), "tokens": int(self.tokens[si, q])}
            for si, seed in enumerate(self.seeds) for q in range(self.tokens.shape[1])
        ]


def resolve_controller(controller: str | ControllerSpec | Any) -> tuple[Any, str]:
    """A controller object and its display spec from a spec string, a ControllerSpec or an object with solve()."""
    if isinstance(controller, str):
        specs = parse_spec(controller)
        if len(specs) != 1:
            raise ControllerSpecError(f"'{controller}' is a sweep of {len(specs)} settings; evaluate them one by one")
        controller = specs[0]
    if isinstance(controller, ControllerSpec):
        return controller.build(), str(controller)
    if isinstance(controller, BuiltinController):
        return controller, str(controller.spec)
    if not callable(getattr(controller, "solve", None)):
        raise ControllerSpecError(f"{controller!r} has no solve(question) method")
    return controller, getattr(controller, "name", None) or type(controller).__name__


def run_episodes(
    env: ReplayEnvironment,
    controller: Any,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    probe_cost: int = 0,
    traces: bool = False,
    fast: bool = True,
    progress: ProgressCallback | None = None,
) -> Episodes:
    """Run `controller` on every (seed, question) of `env`; needs no gold answers.

    Built-in controllers use their compiled replay path unless traces or a probe cost are asked for (or
    `fast=False`, or the environment holds partial branches of a recorded live run, which only the question API
    guards); any other controller is driven through the question API, seeds outer, questions in file order.
    A recorded live run (`branch_order: "stored"`) presents its branches in stored order under every seed.
    """
    seed_arr = np.asarray(list(seeds), dtype=np.int64)
    start = time.perf_counter()
    if (fast and not traces and probe_cost == 0 and isinstance(controller, BuiltinController)
            and not env.has_partial):
        ids, tokens = controller.run_replay(env, seed_arr)
        vocab = env.answer_vocab
        answers: list[list[str | None]] = [[vocab[q][a] if a >= 0 else None for q, a in enumerate(row)]
                                           for row in ids.tolist()]
        if progress is not None:
            progress(Progress(len(seed_arr), len(seed_arr), "seeds"))
        return Episodes(seed_arr, answers, tokens.astype(np.int64), None, time.perf_counter() - start)

    n_q = env.n_questions
    tokens = np.zeros((len(seed_arr), n_q), dtype=np.int64)
    answers = []
    recorded: dict[tuple[int, int], Trace] | None = {} if traces else None
    solve = controller.solve
    for si, seed in enumerate(seed_arr.tolist()):
        row: list[str | None] = []
        for q in range(n_q):
            question = env.question(q, seed, probe_cost=probe_cost, trace=traces)
            try:
                answer = solve(question)
            except Exception as e:  # a controller bug is reported with where it happened
                import traceback

                raise ControllerRunError(
                    f"controller raised {type(e).__name__}: {e} (seed {seed}, question {q})",
                    seed=seed, question=q, traceback_text=traceback.format_exc(),
                ) from e
            if answer is not None and not isinstance(answer, str):
                raise ControllerRunError(
                    f"solve() returned {type(answer).__name__} {answer!r:.60} (seed {seed}, question {q}); "
                    "return the answer string (or None for no answer)",
                    seed=seed, question=q,
                )
            row.append(answer)
            tokens[si, q] = question._cost
            if recorded is not None:
                recorded[(seed, q)] = question.events  # type: ignore[attr-defined]
        answers.append(row)
        if progress is not None:
            progress(Progress(si + 1, len(seed_arr), "seeds"))
    return Episodes(seed_arr, answers, tokens, recorded, time.perf_counter() - start)


def reported_figures(correct: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    """(accuracy %, mean tokens per question) of bool[S, Q] correctness and int[S, Q] tokens, with the same
    arithmetic, in the same order, as the paper's evaluator: per-seed means, then their mean."""
    n_q = correct.shape[1]
    per_seed_acc = [int(c) / n_q for c in correct.sum(axis=1).tolist()]
    per_seed_cost = [int(t) / n_q for t in tokens.sum(axis=1).tolist()]
    accuracy = round(100 * float(np.mean(per_seed_acc)), 2) if per_seed_acc else 0.0
    avg_tokens = sum(per_seed_cost) / len(per_seed_cost) if per_seed_cost else 0.0
    return accuracy, avg_tokens


def score(env: ReplayEnvironment, episodes: Episodes, *, controller: str = "") -> EvalResult:
    """Score episodes against the gold answers exactly as the paper's evaluator reports them."""
    if env.gold_answers is None:
        raise AutoTTSError(f"{env.name}: this copy holds no gold answers; score with the original environment")
    gold = env.gold_answers
    correct = np.array([[a is not None and a == gold[q] for q, a in enumerate(row)] for row in episodes.answers],
                       dtype=bool).reshape(len(episodes.seeds), env.n_questions)
    accuracy, avg_tokens = reported_figures(correct, episodes.tokens)
    return EvalResult(
        env=env.name, controller=controller, accuracy=accuracy, avg_tokens=avg_tokens, seeds=episodes.seeds,
        answers=episodes.answers, correct=correct, tokens=episodes.tokens, traces=episodes.traces,
        seconds=episodes.seconds,
    )


def evaluate(
    env: ReplayEnvironment,
    controller: str | ControllerSpec | Any,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    probe_cost: int = 0,
    traces: bool = False,
    fast: bool = True,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Evaluate one controller on one environment under the paper's protocol (100 shuffles by default)."""
    obj, label = resolve_controller(controller)
    episodes = run_episodes(env, obj, seeds, probe_cost=probe_cost, traces=traces, fast=fast, progress=progress)
    return score(env, episodes, controller=label)
