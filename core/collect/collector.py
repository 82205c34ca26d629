"""Orchestration of a collection: questions × branches through a backend, probing, durable logging, resume.

The loop keeps up to `backend.max_branches` branches open, taking (question, branch) pairs in order and skipping
those already in the log, so one question's last long branches overlap with the next question's first ones.
Each round every open branch advances by at most Δ tokens in one batched `extend`; since branches open only
between rounds and a thinking branch always advances by exactly Δ, all thinking branches reach their probe
points together and are probed in one batched `probe`. A finished branch is logged (fsync'd) at once and its
slot refilled. Interrupting loses only the branches in flight; rerunning resumes, and because every branch has
its own seed and (on the llama.cpp backend, per-branch KV layout) does not depend on its batch neighbours, the
final store equals that of an uninterrupted run.

With several backends (servers) each runs this loop in its own thread, taking pairs from one shared `_Scheduler`
(a question's branches stay with the server that holds its prompt; idle servers steal), and a server given up
hands its unfinished branches back to the others.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from core.atomic import write_atomic
from core.collect.backend import Backend, BackendError, CapacityError, CollectError
from core.collect.branch import BranchRun
from core.collect.folder import check_output_folder, folder_lock
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
from core.progress import CollectProgress, ProgressCallback, ServerProgress


@dataclass
class CollectResult:
    folder: Path
    store_path: Path | None
    """None when the collection was stopped before every branch finished."""
    branches_done: int
    branches_total: int
    tokens: int
    elapsed: float
    servers: list[ServerProgress] = field(default_factory=list)
    """Each backend's (server's) share of this session, as at the end."""


@dataclass
class _Server:
    """One backend's running tally (updated by its loop; reported as a `ServerProgress` snapshot)."""

    name: str
    tokens: int = 0
    branches: int = 0
    active: int = 0
    down: str | None = None

    def snapshot(self) -> ServerProgress:
        return ServerProgress(self.name, tokens=self.tokens, branches=self.branches, active=self.active,
                              down=self.down)


class _Scheduler:
    """Hands (question, branch) pairs to the servers' loops. A loop first takes more branches of a question it already
    holds (its prompt, and the server's prefix cache, are warm), then the next question nobody holds, and when none is
    left it steals branches of the question with the most still waiting. Pairs a failed server held go back."""

    def __init__(self, pairs: list[tuple[int, int]]):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.pending: dict[int, list[int]] = {}
        for q, b in pairs:
            self.pending.setdefault(q, []).append(b)
        self.owner: dict[int, int] = {}
        self.in_flight = 0

    def take(self, worker: int, holding: set[int]) -> tuple[int, int] | None:
        with self.lock:
            for q in sorted(holding):
                if self.pending.get(q):
                    return self._pop(q)
            for q in sorted(self.pending):
                if self.pending[q] and q not in self.owner:
                    self.owner[q] = worker
                    return self._pop(q)
            waiting = [q for q, bs in self.pending.items() if bs]
            if waiting:
                return self._pop(max(waiting, key=lambda q: (len(self.pending[q]), -q)))
            return None

    def _pop(self, q: int) -> tuple[int, int]:
        self.in_flight += 1
        return q, self.pending[q].pop(0)

    def waiting(self, q: int) -> int:
        with self.lock:
            return len(self.pending.get(q, ()))

    def done(self, n: int = 1) -> None:
        with self.changed:
            self.in_flight -= n
            self.changed.notify_all()

    def give_back(self, worker: int, pairs: list[tuple[int, int]]) -> None:
        with self.changed:
            for q, b in pairs:
                bisect.insort(self.pending.setdefault(q, []), b)
            self.in_flight -= len(pairs)
            for q in [q for q, w in self.owner.items() if w == worker]:
                del self.owner[q]
            self.changed.notify_all()

    def finished(self) -> bool:
        with self.lock:
            return self.in_flight == 0 and not any(self.pending.values())


def _backends(backend: Backend | list[Backend]) -> list[Backend]:
    if isinstance(backend, list):
        return backend
    split = getattr(backend, "split", None)
    if split is not None and len(getattr(backend, "clients", ())) > 1:
        return split()
    return [backend]


def collect(
    backend: Backend | list[Backend],
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
    allowed_files: Iterable[str] = (),
) -> CollectResult:
    """Collect `settings.branches` branches for every question into `folder` (resuming what is there).

    `backend` is one backend, a list of backends (one per server: each runs its own loop and they share the work),
    or a multi-server `OpenAIBackend` (split into one per server). A backend that fails (after its own retries)
    is given up and its unfinished branches are redone on the others; the collection stops only when every
    backend has failed. Branch results depend only on their seeds, so the store is the same whichever backend
    sampled which branch.

    `identity` holds what must match on resume besides the settings (`model_sha256`, `backend_kind`,
    `results_affecting`); `store_metadata` goes into the store; `session` (parallelism, hardware) only into the
    log's manifest. A folder holding files other than a collection's (and `allowed_files`) is refused. Stops early,
    leaving a resumable collection, after `max_seconds` (or on KeyboardInterrupt, which propagates after the log is
    closed). Returns the store path once every branch is logged."""
    folder = Path(folder)
    qpairs: list[tuple[str, str]] = []
    for i, item in enumerate(questions):
        if item.gold_answer is None:
            raise CollectError(f"question {i} has no gold answer; a collection stores every question's")
        qpairs.append((item.question, item.gold_answer))
    check_output_folder(folder, allowed_files)
    backends = _backends(backend)
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
    lock = folder_lock(folder)
    try:
        log = open_log(folder, manifest)
    except BaseException:
        lock.close()
        raise
    t0 = time.perf_counter()
    resumed = len(log.done)
    servers = [_Server(_backend_name(b, i)) for i, b in enumerate(backends)]
    log_lock = threading.Lock()
    stop = threading.Event()
    deadline = None if max_seconds is None else t0 + max_seconds
    try:
        everything = {(q, b) for q in range(len(questions)) for b in range(settings.branches)}
        if log.done != everything:
            longest = max(backends[0].count_tokens(p) for p in prompts_text)
            for bk in backends:
                prepare = getattr(bk, "prepare", None)
                if prepare is not None:
                    prepare(longest)
        sched = _Scheduler(sorted(everything - log.done))
        left_per_q = [settings.branches - sum(1 for (qq, _) in log.done if qq == q) for q in range(len(questions))]

        def snapshot(stage: str = "collecting") -> CollectProgress:
            qdone = sum(1 for x in left_per_q if x == 0)
            return CollectProgress(len(log.done), total, "branches", questions_done=qdone,
                                   questions_total=len(questions), tokens=sum(s.tokens for s in servers),
                                   elapsed=time.perf_counter() - t0, active=sum(s.active for s in servers),
                                   resumed=resumed, servers=tuple(s.snapshot() for s in servers), stage=stage)

        def report() -> None:
            if progress is not None:
                progress(snapshot())

        def work(i: int, bk: Backend, single: bool) -> None:
            me = servers[i]
            prompts: dict[int, int] = {}
            runs: dict[int, BranchRun] = {}
            drift = getattr(bk, "token_drift", None) if getattr(bk, "token_mode", "ids") == "text" else None
            try:
                while not stop.is_set():
                    if deadline is not None and time.perf_counter() > deadline:
                        break
                    while len(runs) < bk.max_branches:  # refill free slots
                        item = sched.take(i, set(prompts))
                        if item is None:
                            break
                        q, b = item
                        if q not in prompts:
                            try:
                                prompts[q] = bk.add_prompt(prompts_text[q])
                            except CapacityError:
                                sched.give_back(i, [(q, b)])
                                if runs:
                                    break  # wait for a question to drain
                                raise
                        seed = branch_seed(settings.seed, q, b, questions[q].question)
                        handle = bk.open_branch(prompts[q], seed, settings.sampling)
                        runs[handle] = BranchRun(q, b, seed, handle)
                    me.active = len(runs)
                    if not runs:
                        if sched.finished() or single:
                            break
                        with sched.changed:  # others still hold branches: one of them may fail and give some back
                            sched.changed.wait(0.2)
                        continue
                    requests = {h: r.request(settings) for h, r in runs.items()}
                    chunks = bk.extend({h: req for h, req in requests.items() if req is not None})
                    for h, c in chunks.items():
                        runs[h].absorb(c, settings)
                        me.tokens += c.n_tokens
                    to_probe = [h for h, r in runs.items() if r.needs_probe(settings)]
                    if to_probe:
                        for h, res in bk.probe(to_probe, settings.probe_text, settings.probe_tokens).items():
                            runs[h].add_probe(res)
                    ended = [h for h, r in runs.items() if r.finished]
                    drifts = drift(ended) if drift is not None and ended else {}
                    for h in ended:
                        r = runs.pop(h)
                        rec = r.record(settings, keep_text)
                        if h in drifts:
                            rec["token_drift"] = int(drifts[h])
                        with log_lock:
                            if stop.is_set():
                                runs[h] = r
                                break
                            log.append(rec)
                            left_per_q[r.q] -= 1
                            me.branches += 1
                        sched.done()
                        bk.close_branch(h)
                    for q in [q for q in prompts if not any(x.q == q for x in runs.values()) and not sched.waiting(q)]:
                        bk.release_prompt(prompts.pop(q))
                    me.active = len(runs)
                    if single:
                        report()
            except BackendError as e:
                me.down = str(e)
                sched.give_back(i, [(r.q, r.b) for r in runs.values()])
                runs.clear()
                with sched.lock:
                    others = running - {i}
                if single or not others:
                    raise
            except BaseException:
                stop.set()
                raise
            finally:
                with sched.lock:
                    running.discard(i)
                if runs:
                    sched.give_back(i, [(r.q, r.b) for r in runs.values()])
                me.active = 0
                for h in list(runs):
                    _quietly(bk.close_branch, h)
                for p in prompts.values():
                    _quietly(bk.release_prompt, p)

        running = set(range(len(backends)))
        report()
        if len(backends) == 1:
            work(0, backends[0], True)
        else:
            errors: list[BaseException] = []

            def run(i: int, bk: Backend) -> None:
                try:
                    work(i, bk, False)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    errors.append(e)
                    with sched.changed:
                        sched.changed.notify_all()

            threads = [threading.Thread(target=run, args=(i, bk), name=f"collect-{i}", daemon=True)
                       for i, bk in enumerate(backends)]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    with sched.changed:
                        sched.changed.wait(0.25)
                    report()
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            if errors:
                raise errors[0]
        elapsed = time.perf_counter() - t0
        store_path = None
        if len(log.done) == total:
            if progress is not None:
                progress(snapshot("building store"))
            doc = build_store(log.manifest, log.records, qpairs)
            doc["metadata"].update(token_exactness(log.records, log.manifest))
            store_path = write_atomic(folder / STORE_NAME, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
        return CollectResult(folder, store_path, len(log.done), total, sum(s.tokens for s in servers), elapsed,
                             servers=[s.snapshot() for s in servers])
    finally:
        stop.set()
        with log_lock:
            log.close()
        lock.close()


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - cleanup after a failure
        pass


def _backend_name(bk: Backend, i: int) -> str:
    info: dict[str, Any] = {}
    try:
        info = bk.info()
    except Exception:  # noqa: BLE001 - info never matters for results
        pass
    url = info.get("base_url")
    if url:
        return str(url).removeprefix("http://").removeprefix("https://")
    return str(info.get("backend", f"backend {i}"))


def token_exactness(records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    """Store metadata saying whether branch tokens are exactly what was sampled: `token_ids` (llama.cpp in
    process, or servers taking and returning token ids) or `text` with the measured re-tokenisation drift."""
    mode = (manifest.get("results_affecting") or {}).get("token_mode")
    drifts = [int(r["token_drift"]) for r in records if "token_drift" in r]
    if mode != "text" and not drifts:
        return {"token_exactness": {"mode": "token_ids"}}
    drifted = [d for d in drifts if d]
    return {"token_exactness": {
        "mode": "text", "branches_checked": len(drifts), "branches_drifted": len(drifted),
        "max_abs_drift": max((abs(d) for d in drifts), default=0), "total_drift": sum(drifts),
        "note": "the server took text, not token ids: it re-tokenised each branch on every call; drift = tokens of "
                "the re-tokenised branch minus tokens sampled",
    }}
