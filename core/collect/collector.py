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

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.collect.backend import Backend, CapacityError, Chunk, CollectError, Extend, ProbeResult
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

    def request(self, s: CollectSettings) -> Extend:
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


def collect(
    backend: Backend,
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
) -> CollectResult:
    """Collect `settings.branches` branches for every question into `folder` (resuming what is there).

    `identity` holds what must match on resume besides the settings (`model_sha256`, `backend_kind`,
    `results_affecting`); `store_metadata` goes into the store; `session` (parallelism, hardware) only into the
    log's manifest. Stops early, leaving a resumable collection, after `max_seconds` (or on KeyboardInterrupt,
    which propagates after the log is closed). Returns the store path once every branch is logged."""
    folder = Path(folder)
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
        runs: dict[int, _Run] = {}

        def report() -> None:
            if progress is not None:
                qdone = sum(1 for x in left_per_q if x == 0)
                progress(Progress(qdone, len(questions), len(log.done), total, tokens, time.perf_counter() - t0,
                                  len(runs), resumed))

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
                runs[handle] = _Run(q, b, seed, handle)
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
            store_path = write_json_atomic(build_store(log.manifest, log.records, qpairs), folder / STORE_NAME)
        return CollectResult(folder, store_path, len(log.done), total, tokens, elapsed)
    finally:
        log.close()
