"""Orchestration of a collection: questions × branches through a backend, probing, durable logging, resume.

The loop keeps up to `backend.max_branches` branches open, taking (question, branch) pairs in order and skipping
those already in the log, so one question's last long branches overlap with the next question's first ones.
Each round every open branch advances by at most Δ tokens in one batched `extend`; since branches open only
between rounds and a thinking branch always advances by exactly Δ, all thinking branches reach their probe
points together and are probed in one batched `probe`. A finished branch is logged (fsync'd) at once and its
slot refilled. Interrupting loses only the branches in flight; rerunning resumes, and because every branch has
its own seed and (on the llama.cpp backend, per-branch KV layout) does not depend on its batch neighbours, the
final store equals that of an uninterrupted run.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from core.atomic import write_atomic
from core.collect.backend import Backend, CapacityError, CollectError
from core.collect.branch import BranchRun
from core.collect.protocol import (
    CollectSettings,
    branch_seed,
    chat_prompt,
)
from core.collect.questions import QuestionItem
from core.collect.writer import (
    STORE_NAME,
    build_store,
    open_log,
    questions_sha256,
)
from core.progress import CollectProgress, ProgressCallback


@dataclass
class CollectResult:
    folder: Path
    store_path: Path | None
    """None when the collection was stopped before every branch finished."""
    branches_done: int
    branches_total: int
    tokens: int
    elapsed: float


def collect(
    backend: Backend,
    questions: list[QuestionItem],
    settings: CollectSettings,
    folder: str | Path,
    *,
    identity: dict[str, Any] | None = None,
    store_metadata: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    keep_text: bool = False,
    max_seconds: float | None = None,
) -> CollectResult:
    """Collect `settings.branches` branches for every question into `folder` (resuming what is there).

    `identity` holds what must match on resume besides the settings (`model_sha256`, `backend_kind`,
    `results_affecting`); `store_metadata` goes into the store; `session` (parallelism, hardware) only into the
    log's manifest. Stops early, leaving a resumable collection, after `max_seconds` (or on KeyboardInterrupt,
    which propagates after the log is closed). Returns the store path once every branch is logged."""
    folder = Path(folder)
    qpairs: list[tuple[str, str]] = []
    for i, item in enumerate(questions):
        if item.gold_answer is None:
            raise CollectError(f"question {i} has no gold answer; a collection stores every question's")
        qpairs.append((item.question, item.gold_answer))
    manifest = {
        "settings": settings.to_dict(),
        "questions_sha256": questions_sha256(qpairs),
        "n_questions": len(questions),
        **(identity or {}),
        "store_metadata": store_metadata or {},
        "session": session or {},
    }
    manifest["settings"].pop("probe_text", None)
    manifest["settings"].pop("forced_think_end", None)
    for key in ("model_sha256", "backend_kind", "results_affecting"):
        manifest.setdefault(key, None)
    total = len(questions) * settings.branches
    prompts_text = [chat_prompt(q.question, settings.instruction) for q in questions]
    log = open_log(folder, manifest)
    t0 = time.perf_counter()
    tokens = 0
    resumed = len(log.done)
    try:
        prepare = getattr(backend, "prepare", None)
        if prepare is not None and log.done != {(q, b) for q in range(len(questions)) for b in range(settings.branches)}:
            prepare(max(backend.count_tokens(p) for p in prompts_text))
        pending = deque((q, b) for q in range(len(questions)) for b in range(settings.branches) if (q, b) not in log.done)
        left_per_q = [sum(1 for (qq, _) in pending if qq == q) for q in range(len(questions))]
        prompts: dict[int, int] = {}
        runs: dict[int, BranchRun] = {}

        def report() -> None:
            if progress is not None:
                qdone = sum(1 for x in left_per_q if x == 0)
                progress(CollectProgress(len(log.done), total, "branches", questions_done=qdone,
                                         questions_total=len(questions), tokens=tokens,
                                         elapsed=time.perf_counter() - t0, active=len(runs), resumed=resumed))

        report()
        while pending or runs:
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
            # refill free slots, in (question, branch) order
            while pending and len(runs) < backend.max_branches:
                q, b = pending[0]
                if q not in prompts:
                    try:
                        prompts[q] = backend.add_prompt(prompts_text[q])
                    except CapacityError:
                        if runs:
                            break  # wait for a question to drain
                        raise
                seed = branch_seed(settings.seed, q, b, questions[q].question)
                handle = backend.open_branch(prompts[q], seed, settings.sampling)
                runs[handle] = BranchRun(q, b, seed, handle)
                pending.popleft()
            requests = {h: r.request(settings) for h, r in runs.items()}
            chunks = backend.extend({h: req for h, req in requests.items() if req is not None})
            for h, c in chunks.items():
                runs[h].absorb(c, settings)
                tokens += c.n_tokens
            to_probe = [h for h, r in runs.items() if r.needs_probe(settings)]
            if to_probe:
                for h, res in backend.probe(to_probe, settings.probe_text, settings.probe_tokens).items():
                    runs[h].add_probe(res)
            for h in [h for h, r in runs.items() if r.finished]:
                r = runs.pop(h)
                log.append(r.record(settings, keep_text))
                backend.close_branch(h)
                left_per_q[r.q] -= 1
                if left_per_q[r.q] == 0 and r.q in prompts and not any(x.q == r.q for x in runs.values()):
                    backend.release_prompt(prompts.pop(r.q))
            report()
        elapsed = time.perf_counter() - t0
        store_path = None
        if len(log.done) == total:
            store = build_store(log.manifest, log.records, qpairs)
            store_path = write_atomic(folder / STORE_NAME, orjson.dumps(store, option=orjson.OPT_SERIALIZE_NUMPY))
        return CollectResult(folder, store_path, len(log.done), total, tokens, elapsed)
    finally:
        log.close()
