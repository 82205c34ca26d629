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

import bisect
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.collect.backend import (
    Backend,
    BackendError,
    CapacityError,
    Chunk,
    CollectError,
    Extend,
    ProbeResult,
)
from core.collect.folder import check_output_folder, folder_lock
from core.collect.protocol import (
    FORCED_THINK_END,
    CollectSettings,
    branch_seed,
    chat_prompt,
    final_answer,
    probe_answer,
)
from core.collect.signals import interval_signals
from core.collect.writer import (
    STORE_NAME,
    build_store,
    open_log,
    questions_sha256,
    write_json_atomic,
)


@dataclass(frozen=True)
class QuestionItem:
    """One question to collect: its text and gold answer (a normalised string)."""

    question: str
    gold_answer: str


def load_questions(path: str | Path, limit: int | None = None) -> list[QuestionItem]:
    """Read questions from JSONL (one object per line) or a JSON list (a paper-format replay file works too).

    Each object needs `question` (or `problem`) and `gold_answer` (or `answer`)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CollectError(f"{p}: cannot read the questions file ({e.strerror})") from None
    objs: list[Any]
    try:
        doc = orjson.loads(raw)
        objs = doc if isinstance(doc, list) else [doc]
    except orjson.JSONDecodeError:
        objs = []
        for i, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                objs.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise CollectError(f"{p}, line {i}: not JSON; the questions file must be JSONL or a JSON list") from None
    items = []
    for i, o in enumerate(objs):
        if not isinstance(o, dict):
            raise CollectError(f"{p}, question {i}: expected an object with \"question\" and \"gold_answer\"")
        q = o.get("question", o.get("problem"))
        gold = o.get("gold_answer", o.get("answer"))
        if not isinstance(q, str) or not q:
            raise CollectError(f"{p}, question {i}: missing \"question\" text")
        if gold is None:
            raise CollectError(f"{p}, question {i}: missing \"gold_answer\" (or \"answer\")")
        items.append(QuestionItem(q, str(gold)))
    if not items:
        raise CollectError(f"{p}: holds no questions")
    return items[:limit] if limit else items


@dataclass
class ServerProgress:
    """One backend's (server's) share of a collection session."""

    name: str
    tokens: int = 0
    branches: int = 0
    active: int = 0
    down: str | None = None
    """Why this server was given up (its branches went to the others), None while it works."""


@dataclass
class Progress:
    """A snapshot handed to the progress callback after every round."""

    questions_done: int
    questions_total: int
    branches_done: int
    branches_total: int
    tokens: int
    """Branch tokens generated in this session (probes not counted)."""
    elapsed: float
    """Seconds since this session started generating."""
    active: int
    """Branches open right now."""
    resumed: int = 0
    """Branches found already logged when this session started."""
    servers: list[ServerProgress] = field(default_factory=list)
    """Per backend (server): tokens, branches and open branches in this session, and whether it was given up."""
    stage: str = "collecting"
    """"collecting", then "building store" while the store is written."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0


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


@dataclass
class _Run:
    """One branch in flight, from the collector's point of view."""

    q: int
    b: int
    seed: int
    handle: int
    g: int = 0  # tokens generated so far (forced included)
    thinking: bool = True
    think_end_at: int | None = None  # generated tokens up to and including </think>
    answer_left: int = 0
    forced: bool = False
    finished: bool = False
    stop: str = ""
    text: bytearray = field(default_factory=bytearray)
    lps: list[np.ndarray] = field(default_factory=list)
    confs: list[np.ndarray] = field(default_factory=list)
    probes: list[str | None] = field(default_factory=list)
    probe_texts: list[str] = field(default_factory=list)
    probe_lps: list[float] = field(default_factory=list)
    probe_closed: list[bool] = field(default_factory=list)
    answer_lp: float = math.nan

    def request(self, s: CollectSettings) -> Extend | None:
        if self.thinking:
            if self.g >= s.max_tokens:
                self.thinking, self.forced = False, True
                return Extend(min(s.interval, s.answer_tokens), force_text=FORCED_THINK_END)
            return Extend(min(s.interval, s.max_tokens - self.g), answer_budget=s.answer_tokens)
        return Extend(min(s.interval, self.answer_left))

    def absorb(self, c: Chunk, s: CollectSettings) -> None:
        self.text += c.text
        if c.n_forced:
            self.lps.append(np.full(c.n_forced, np.nan, np.float32))
            self.confs.append(np.full(c.n_forced, np.nan, np.float32))
        self.lps.append(c.logprobs)
        self.confs.append(c.confidences)
        start = self.g
        self.g += c.n_tokens
        if c.n_forced and self.think_end_at is None:  # the forced </think> at the thinking cap
            self.think_end_at = start + c.n_forced
            self.answer_left = s.answer_tokens - c.n_sampled
        elif self.thinking and c.think_end is not None:
            self.thinking = False
            self.think_end_at = start + c.n_forced + c.think_end + 1
            self.answer_left = s.answer_tokens - (c.n_sampled - c.think_end - 1)
        elif not self.thinking:
            self.answer_left -= c.n_sampled
        if c.eog:
            self.finished, self.stop = True, "eog"
        elif not self.thinking and self.answer_left <= 0:
            self.finished, self.stop = True, "answer_cap"

    def needs_probe(self, s: CollectSettings) -> bool:
        return self.thinking and not self.finished and self.g % s.interval == 0 and 0 < self.g < s.max_tokens

    def add_probe(self, r: ProbeResult) -> None:
        self.probes.append(probe_answer(r.text) if r.closed else None)
        self.probe_texts.append(r.text)
        self.probe_lps.append(float(r.logprobs.mean()) if r.n_tokens else math.nan)
        self.probe_closed.append(r.closed)

    def record(self, s: CollectSettings, keep_text: bool) -> dict[str, Any]:
        text = self.text.decode(errors="replace")
        final = final_answer(text)
        lps = np.concatenate(self.lps) if self.lps else np.zeros(0, np.float32)
        confs = np.concatenate(self.confs) if self.confs else np.zeros(0, np.float32)
        n = len(self.probes)
        ends = [(k + 1) * s.interval for k in range(n)] + [self.g]
        if self.think_end_at is not None:
            after = lps[self.think_end_at:]
            after = after[~np.isnan(after)]
            answer_lp = float(after.mean()) if after.size else math.nan
        else:
            answer_lp = math.nan
        signals = interval_signals(lps, confs, ends, [*self.probe_lps, answer_lp], [*self.probe_closed, final is not None])
        cut = text.rfind("</think>")
        rec: dict[str, Any] = {
            "q": self.q, "b": self.b, "seed": self.seed, "tokens": self.g,
            "thinking_tokens": self.think_end_at if self.think_end_at is not None else self.g,
            "stop": self.stop, "forced_think_end": self.forced,
            "probes": self.probes, "final": final,
            "probe_texts": self.probe_texts,
            "answer_text": text[cut + len("</think>"):] if cut >= 0 else "",
            "signals": signals,
        }
        if keep_text:
            rec["text"] = text
        return rec


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
    progress: Callable[[Progress], None] | None = None,
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
    check_output_folder(folder, allowed_files)
    backends = _backends(backend)
    qpairs = [(q.question, q.gold_answer) for q in questions]
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
    servers = [ServerProgress(_backend_name(b, i)) for i, b in enumerate(backends)]
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

        def snapshot(stage: str = "collecting") -> Progress:
            qdone = sum(1 for x in left_per_q if x == 0)
            tokens = sum(s.tokens for s in servers)
            return Progress(qdone, len(questions), len(log.done), total, tokens, time.perf_counter() - t0,
                            sum(s.active for s in servers), resumed, servers=[dataclasses.replace(s) for s in servers],
                            stage=stage)

        def report() -> None:
            if progress is not None:
                progress(snapshot())

        def work(i: int, bk: Backend, single: bool) -> None:
            me = servers[i]
            prompts: dict[int, int] = {}
            runs: dict[int, _Run] = {}
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
                        runs[handle] = _Run(q, b, seed, handle)
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
            store_path = write_json_atomic(doc, folder / STORE_NAME)
        return CollectResult(folder, store_path, len(log.done), total, sum(s.tokens for s in servers), elapsed,
                             servers=servers)
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
