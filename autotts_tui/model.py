"""What the TUI shows, read from a study folder without writing to it (no Textual here).

`StudyReader` opens the study configuration and its run store read-only and turns runs into `Candidate`
rows. `poll()` returns only what changed since the previous call (new runs, runs that gained result rows,
the progress of an evaluation in flight, new log lines), so a polling worker can call it twice a second.

Two optional files in the study folder feed the live panes (written by whatever evaluates candidates):

* `progress.json` — the evaluation in flight, replaced atomically as it advances::

      {"run": "cand-name", "state": "running", "started": 1700000000.0, "updated": 1700000012.5,
       "done": 120, "total": 700, "unit": "episodes", "message": "cmc β=0.5 on demo[0::2]"}

  `state` is running | done | error; a `running` file not updated for `core.progress.STALE_AFTER_S` seconds is
  shown as stalled (the record is `core.progress.RunProgress`).
* `server.log` — a plain-text log; its new lines are tailed into the log pane.
"""

from __future__ import annotations

import difflib
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.discovery.records import ResultRow, Run, TraceKey
from core.discovery.store import RunStore
from core.discovery.study import Study
from core.environment import ReplayEnvironment
from core.objective import Objective, rank_key
from core.progress import RunProgress, read_run_progress
from core.stats import is_monotone

PROGRESS_FILE = "progress.json"
LOG_FILE = "server.log"
MAX_INITIAL_LOG_LINES = 200


@dataclass(frozen=True)
class BetaScore:
    """A candidate at one β on the search set: means over the search environments."""

    beta: float
    accuracy: float
    """Percent: the mean over environments of each environment's reported accuracy."""
    tokens: float
    """Mean over environments of the mean tokens per question."""
    n_envs: int


@dataclass
class Candidate:
    """One run of the store as a leaderboard row."""

    id: int
    run_id: str
    name: str
    status: str
    """ok | error | refused."""
    created: float
    finished: float
    error: str | None
    sha256: str
    scores: dict[float, BetaScore]
    """β → search-set score (empty for failed runs)."""
    env_scores: dict[str, dict[float, tuple[float, float]]]
    """Search environment → β → (accuracy, tokens), for per-environment plots."""
    best: BetaScore | None
    """The most accurate point: the highest search accuracy over β, fewest tokens on ties (the server's summary
    wins when it records one). The leaderboard ranks by `objective` (`rank_key`)."""
    monotone: bool | None
    """Whether tokens rise with β (the single-knob rule); None with fewer than two β."""
    envs: list[str] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    seconds: float | None = None
    audit_passed: bool | None = None
    objective: Objective | None = None
    """The run's objective as recorded (`RunSummary.objective`; None for failed runs and older stores)."""
    quick: str | None = None
    """The quick-run label (fewer seeds or questions): never ranked with full runs."""
    errors: dict[float, tuple[float, float]] = field(default_factory=dict)
    """β → standard errors over seeds of (accuracy, tokens) of the search average, where recorded."""

    def score_at(self, beta: float) -> BetaScore | None:
        for b, s in self.scores.items():
            if abs(b - beta) < 1e-9:
                return s
        return None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.best is not None

    def objective_key(self) -> tuple[float, float, int]:
        """Ascending sort key: best accuracy first, then fewer tokens, then older."""
        if self.best is None:
            return (math.inf, math.inf, -self.id)
        return (-self.best.accuracy, self.best.tokens, self.id)

    def rank_key(self) -> tuple[int, tuple[int, float, float], int]:
        """Ascending sort key of the search objective (`core.objective.rank_key`): full runs with a recorded
        objective first, then quick runs, then runs without one (best accuracy first), then failed runs."""
        if self.objective is not None:
            return (1 if self.quick else 0, rank_key(self.objective), self.id)
        if self.best is None:
            return (3, (0, 0.0, 0.0), -self.id)
        return (2, (0, -self.best.accuracy, self.best.tokens), self.id)


def beta_scores(results: Iterable[ResultRow]) -> dict[float, BetaScore]:
    """Average search-split result rows over environments, per β (β ascending)."""
    by_beta: dict[float, list[ResultRow]] = defaultdict(list)
    for r in results:
        if r.split == "search":
            by_beta[round(float(r.beta), 9)].append(r)
    return {
        b: BetaScore(b, sum(r.accuracy for r in rows) / len(rows), sum(r.avg_tokens for r in rows) / len(rows),
                     len(rows))
        for b, rows in sorted(by_beta.items())
    }


def candidate_from_run(run: Run, results: list[ResultRow]) -> Candidate:
    """Build a leaderboard row from a run (`RunStore.runs_since`) and its search result rows."""
    assert run.id is not None
    scores = beta_scores(results) if run.status == "ok" else {}
    env_scores: dict[str, dict[float, tuple[float, float]]] = defaultdict(dict)
    if run.status == "ok":
        for r in results:
            if r.split == "search":
                env_scores[r.env][round(float(r.beta), 9)] = (float(r.accuracy), float(r.avg_tokens))
    summary = run.summary
    best = None
    if scores:
        best_b = min(scores.values(), key=lambda s: (-s.accuracy, s.tokens, s.beta))
        if summary is not None:
            best = BetaScore(float(summary.best.beta), float(summary.best.accuracy), float(summary.best.avg_tokens),
                             best_b.n_envs)
        else:
            best = best_b
    monotone = None if summary is None else summary.monotone
    if monotone is None:  # a run without a summary: the single-knob rule on its search averages
        monotone = is_monotone([s.tokens for s in scores.values()]) if len(scores) >= 2 else None
    return Candidate(
        id=run.id, run_id=run.run_id, name=run.name, status=run.status, created=float(run.created),
        finished=float(run.finished), error=run.error, sha256=run.sha256, scores=scores, env_scores=dict(env_scores),
        best=best, monotone=monotone, envs=list(run.envs), betas=[float(b) for b in run.betas],
        seconds=run.seconds, audit_passed=None if run.audit is None else run.audit.passed,
        objective=None if summary is None or run.status != "ok" else summary.objective,
        quick=None if summary is None or summary.scope is None else summary.scope.label(),
        errors={} if summary is None else {round(float(p.beta), 9): (p.accuracy_se, p.tokens_se)
                                            for p in summary.per_beta
                                            if p.accuracy_se is not None and p.tokens_se is not None},
    )


@dataclass
class Update:
    """What changed since the previous poll."""

    candidates: list[Candidate] = field(default_factory=list)
    """New runs and runs that gained result rows (replace any row with the same id)."""
    new_ids: set[int] = field(default_factory=set)
    """Which of `candidates` are new runs."""
    progress: RunProgress | None = None
    log_lines: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class CandidateDetail:
    """Everything the candidate pane shows for one run."""

    run: Run
    """The run, with its source."""
    results: list[ResultRow]
    """All splits."""
    predecessor: Run | None
    """The run it most likely revised (see `StudyReader.predecessor`), with source."""
    recorded_traces: list[TraceKey]
    """The episodes of this run with a recorded trace."""
    predecessor_reason: str = ""
    """Why that run: `same name` or `most similar earlier source`."""


class StudyReader:
    """Read-only access to one study folder. `poll()` is meant for one worker thread at a time."""

    def __init__(self, folder: str | os.PathLike, *, progress_file: str | os.PathLike | None = None,
                 log_file: str | os.PathLike | None = None):
        self.study = Study.open(folder)
        self.folder = self.study.folder
        self.store = RunStore(self.study.store_path, readonly=True)
        self.progress_path = Path(progress_file) if progress_file else self.folder / PROGRESS_FILE
        self.log_path = Path(log_file) if log_file else self.folder / LOG_FILE
        self._last_run_id = 0
        self._last_result_rowid = 0
        self._log_offset: int | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    def close(self) -> None:
        self.store.close()

    # ----- polling -----------------------------------------------------------------------------------------
    def poll(self) -> Update:
        update = Update()
        runs = []
        while True:  # page through a large backlog on the first poll
            batch = self.store.runs_since(self._last_run_id)
            if not batch:
                break
            runs.extend(batch)
            self._last_run_id = int(batch[-1].id or 0)
        touched, top = self.store.results_touched_since(self._last_result_rowid)
        self._last_result_rowid = top
        new_ids = {int(r.id or 0) for r in runs}
        for run in runs:
            update.candidates.append(candidate_from_run(run, self.store.results(run.run_id, split="search")))
        for rid in sorted(touched - new_ids):
            if rid <= self._last_run_id:
                run = self.store.run(rid, with_source=False)
                update.candidates.append(candidate_from_run(run, self.store.results(rid, split="search")))
        update.new_ids = new_ids
        update.progress = read_run_progress(self.progress_path)
        update.log_lines = self._tail_log()
        return update

    def _tail_log(self) -> list[str]:
        try:
            size = self.log_path.stat().st_size
        except OSError:
            return []
        first = self._log_offset is None
        if first or size < (self._log_offset or 0):
            self._log_offset = 0
        if size == self._log_offset:
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset or 0)
            data = f.read(size - (self._log_offset or 0))
        cut = data.rfind(b"\n")
        if cut < 0:
            return []  # wait for a complete line
        self._log_offset = (self._log_offset or 0) + cut + 1
        lines = data[:cut].decode("utf-8", "replace").splitlines()
        return lines[-MAX_INITIAL_LOG_LINES:] if first else lines

    # ----- on demand ----------------------------------------------------------------------------------------
    def detail(self, run_id: int) -> CandidateDetail:
        run = self.store.run(run_id, with_source=True)
        results = self.store.results(run_id, split=None)
        prev_id, reason = self.predecessor(run_id, run.name, run.source or "")
        prev = self.store.run(prev_id, with_source=True) if prev_id is not None else None
        return CandidateDetail(run, results, prev, self.store.recorded_traces(run_id), reason)

    def predecessor(self, run_id: int, name: str, source: str) -> tuple[int | None, str]:
        """The run a candidate most likely revised. The store records no parent, so: the last earlier run with
        the same name, else the earlier run (of the last 200) whose source shares the most lines with it."""
        same = self.store.same_name_before(run_id, name)
        if same is not None:
            return same, "same name"
        lines = source.splitlines()
        best, best_ratio = None, 0.0
        for rid, other in self.store.sources_before(run_id):
            matcher = difflib.SequenceMatcher(None, lines, other.splitlines(), autojunk=False)
            if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
                continue
            ratio = matcher.ratio()
            if ratio > best_ratio:
                best, best_ratio = rid, ratio
        return best, "most similar earlier source" if best is not None else ""

    def search_env(self, name: str) -> ReplayEnvironment:
        """A search environment by name (held-out environments are never loaded by the TUI)."""
        entry = self.study.entry(name)
        if entry is None:
            raise KeyError(f"{name} is not a search environment of this study")
        return self.study.load(entry)

    def search_envs(self) -> list[ReplayEnvironment]:
        return self.study.search_envs()
