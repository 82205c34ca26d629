"""Level "off": the candidate runs in the calling process on the real question objects, with no isolation.

Only for tests of trusted code (and the TUI's demo): nothing here protects the caller. Results have the same
shape as a sandboxed run; each episode gets a fresh controller, as in a worker.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from core.environment import ReplayEnvironment
from core.evaluate import Episodes
from core.progress import Progress, ProgressCallback
from core.sandbox import _exec, isolation
from core.sandbox.reports import AuditReport, IsolationReport
from core.specs import format_options


def _report(ended_by: str | None) -> IsolationReport:
    return IsolationReport(level="off", requested="off", uid=os.geteuid() if hasattr(os, "geteuid") else None,
                           ended_by=ended_by, notes=["in-process: no isolation, no timeout"],
                           unprotected=isolation.unprotected("off"), scoring="in-process (trusted code only)")


@contextlib.contextmanager
def _captured(out: _exec.CappedText) -> Iterator[None]:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield


def run_in_process(source: str, envs: list[ReplayEnvironment], grid: list[dict[str, Any]], seeds: list[int],
                   settings: Any, progress: ProgressCallback | None, t0: float) -> Any:
    from core.sandbox.runner import CandidateRun

    run = CandidateRun(False, None, None, isolation=_report(None),
                       audit=AuditReport(passed=True, skipped="level off runs trusted code in-process: no audit"))
    out = _exec.CappedText(settings.max_output_bytes)
    units = [(ei, oi) for ei in range(len(envs)) for oi in range(len(grid))]
    try:
        with _captured(out):
            target = _exec.load_candidate(source, None)
        for n, (ei, oi) in enumerate(units, 1):
            env, options = envs[ei], grid[oi]
            label = format_options(options)
            tokens = np.zeros((len(seeds), env.n_questions), dtype=np.int64)
            opened = np.zeros((len(seeds), env.n_questions), dtype=np.int32)
            answers: list[list[str | None]] = []
            start = time.perf_counter()
            for si, seed in enumerate(seeds):
                row = []
                for q in range(env.n_questions):
                    question = env.question(q, seed)
                    where = f"env {env.name}, {label or 'default options'}, seed {seed}, question {q}"
                    with _captured(out):
                        row.append(_exec.solve_episode(target, options, question, where))
                    tokens[si, q], opened[si, q] = question._cost, question._next
                answers.append(row)
            run.results[(env.name, label)] = Episodes(np.asarray(seeds, dtype=np.int64), answers, tokens, None,
                                                      time.perf_counter() - start)
            run.opened[(env.name, label)] = opened
            run.episodes += len(seeds) * env.n_questions
            if progress is not None:
                progress(Progress(n * len(seeds), len(units) * len(seeds), "cells"))
        run.ok = True
    except _exec.CandidateFailure as f:
        run.error, run.traceback = f.message, f.traceback_text
        run.isolation = _report("oom" if f.kind == "memory" else "error")
        run.audit = AuditReport(error="the evaluation did not complete")
    finally:
        sys.modules.pop(_exec.MODULE_NAME, None)
    run.stdout_tail = out.take()
    run.seconds = time.perf_counter() - t0
    return run


def trace_in_process(source: str, env: ReplayEnvironment, options: dict[str, Any], seed: int, question: int,
                     settings: Any) -> tuple[str | None, int, list[tuple[str, int, int, str | None]]]:
    from core.sandbox.runner import SandboxError

    out = _exec.CappedText(settings.max_output_bytes)
    real = env.question(question, seed, trace=True)
    try:
        with _captured(out):
            target = _exec.load_candidate(source, None)
            answer = _exec.solve_episode(target, options, real, f"seed {seed}, question {question}")
    except _exec.CandidateFailure as f:
        raise SandboxError(f.message, f.traceback_text, _report("error")) from None
    finally:
        sys.modules.pop(_exec.MODULE_NAME, None)
    return answer, real._cost, list(real.events)  # type: ignore[attr-defined]
