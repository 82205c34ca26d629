"""Typed records of everything a study's run store holds, one model per concept.

Every writer (the discovery service, the demo study, `autotts heldout`, the discover loop) builds these and every
reader (the MCP tools, the TUI, `autotts study show`, the discover report) gets them back from `RunStore`; the
JSON in the store is their `to_dict()`. `from_dict` migrates on read what earlier releases wrote: missing
fields take their defaults, and the summaries the TUI's demo study wrote (no frontier position) read as summaries
whose frontier fields are unknown (None). The isolation and audit reports are the sandbox's own records
(`core.sandbox.reports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from core.load_note import LoadNote
from core.sandbox.reports import AuditMismatch, AuditReport, IsolationReport

if TYPE_CHECKING:  # both import the evaluator (numba): read them lazily, as the store is opened by light commands
    from core.evaluate import EvalResult
    from core.objective import Objective

__all__ = [
    "AuditMismatch", "AuditReport", "Baseline", "BestPoint", "BetaSummary", "DiscoveryCall", "DiscoveryRound", "DiscoverySession",
    "EpisodeArrays", "FrontierPoint", "HeldoutSummary", "IsolationReport", "LeaderboardEntry", "ResultRow", "Run",
    "RunSummary", "Scope", "Trace", "TraceKey", "Usage", "format_run_id", "load_from_dict", "objective_from_dict",
]


def format_run_id(run_id: int) -> str:
    """The id agents see: `r0007`."""
    return f"r{run_id:04d}"


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls` (later releases may add keys; older ones lack some)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# ----- results -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeArrays:
    """The per-episode arrays behind one result row (S seeds × Q questions)."""

    seeds: np.ndarray
    """int64[S]: the shuffle seeds."""
    answers: list[list[str | None]]
    """answers[s][q]: the controller's answer (None: it gave none)."""
    tokens: np.ndarray
    """int64[S, Q]: tokens charged per episode."""
    correct: np.ndarray
    """bool[S, Q]: whether the answer matched the gold answer."""
    opened: np.ndarray | None = None
    """int32[S, Q]: branches opened (or read) per episode, when known."""

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": np.asarray(self.seeds).tolist(), "answers": self.answers,
                "tokens": np.asarray(self.tokens).tolist(),
                "correct": np.asarray(self.correct, dtype=np.int8).tolist(),
                "opened": None if self.opened is None else np.asarray(self.opened).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeArrays:
        n = len(d["seeds"])
        return cls(seeds=np.asarray(d["seeds"], dtype=np.int64), answers=d["answers"],
                   tokens=np.asarray(d["tokens"], dtype=np.int64).reshape(n, -1),
                   correct=np.asarray(d["correct"], dtype=bool).reshape(n, -1),
                   opened=None if d.get("opened") is None else np.asarray(d["opened"], dtype=np.int32))

    def select(self, seeds: Sequence[int] | None = None, questions: Sequence[int] | None = None) -> EpisodeArrays:
        """The episodes of the given seeds (values, not positions) and question indices, in that order. Exact for
        a quick run's comparison: an episode depends only on its own question and seed."""
        si = list(range(len(self.seeds))) if seeds is None else [self.seeds.tolist().index(int(s)) for s in seeds]
        qi = list(range(self.tokens.shape[1])) if questions is None else [int(q) for q in questions]
        return EpisodeArrays(self.seeds[si], [[self.answers[s][q] for q in qi] for s in si],
                             self.tokens[np.ix_(si, qi)], self.correct[np.ix_(si, qi)],
                             None if self.opened is None else self.opened[np.ix_(si, qi)])

    def as_result(self, env: str, controller: str) -> EvalResult:
        """These episodes as an `EvalResult` (for `core.objective.curve_point` and `core.compare`)."""
        from core.evaluate import EvalResult, reported_figures

        accuracy, avg_tokens = reported_figures(self.correct, self.tokens)
        return EvalResult(env=env, controller=controller, accuracy=accuracy, avg_tokens=avg_tokens, seeds=self.seeds,
                          answers=self.answers, correct=self.correct, tokens=self.tokens)


@dataclass(frozen=True)
class ResultRow:
    """One (split, environment, β) of a run."""

    env: str
    """Environment name (as the study names it)."""
    beta: float
    """The β the controller was built with."""
    accuracy: float
    """Percent, 2 decimals (the paper's rounding)."""
    avg_tokens: float
    """Mean tokens per question."""
    episodes: EpisodeArrays | None = None
    """The per-episode arrays (read only when asked for)."""
    split: str = "search"
    """search | heldout."""
    max_opened: int | None = None
    """Most branches opened on one question, when known."""


@dataclass(frozen=True)
class Baseline:
    """A built-in controller's result on a search environment, cached in the store."""

    accuracy: float
    """Percent."""
    avg_tokens: float
    """Mean tokens per question."""
    episodes: EpisodeArrays | None = None
    """The per-episode arrays (read only when asked for)."""


# ----- summaries -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BetaSummary:
    """A run at one β, averaged over the environments, and where that point lies against the baselines."""

    beta: float
    """The β."""
    accuracy: float
    """Mean over the environments of their accuracy, percent, 2 decimals."""
    avg_tokens: float
    """Mean over the environments of the mean tokens per question, 1 decimal."""
    dominated: bool | None = None
    """A baseline point has ≥ accuracy at ≤ tokens (None: not compared, summaries of the TUI's old demo study)."""
    accuracy_gap: float | None = None
    """Accuracy minus the baseline frontier's at these tokens (None: cheaper than every baseline, or unknown)."""
    vs: str | None = None
    """Label of the cheapest baseline at least as accurate."""
    tokens_saved: float | None = None
    """Fraction of that baseline's tokens saved (negative: more)."""
    accuracy_se: float | None = None
    """Standard error over seeds of `accuracy` (per seed: the mean over environments; None: not recorded)."""
    tokens_se: float | None = None
    """Standard error over seeds of `avg_tokens` (None: not recorded)."""
    vs_cmc: float | None = None
    """Accuracy minus CMC's at the same β, paired over seeds (percentage points; None: not recorded)."""
    vs_cmc_se: float | None = None
    """Standard error of `vs_cmc` over seeds; |vs_cmc| < 2·vs_cmc_se reads as within noise."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BetaSummary:
        return cls(**_known(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return _without_none(asdict(self), _ADDED_BETA)


_ADDED_BETA = ("accuracy_se", "tokens_se", "vs_cmc", "vs_cmc_se")


def _without_none(d: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Drop added fields that are unset, so a record read from an older store writes back exactly what it read."""
    for key in keys:
        if d.get(key) is None:
            d.pop(key, None)
    return d


@dataclass(frozen=True)
class BestPoint:
    """The discovery objective's point of a run: the highest accuracy over β, fewest tokens on ties."""

    beta: float
    """Its β."""
    accuracy: float
    """Search-set average accuracy, percent."""
    avg_tokens: float
    """Search-set average of the mean tokens per question."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BestPoint:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class FrontierPoint:
    """A baseline's search-set (or held-out) average: a point of the accuracy–tokens plane."""

    label: str
    """e.g. `SC@64`, `CMC β=0.5`."""
    accuracy: float
    """Percent."""
    avg_tokens: float
    """Mean tokens per question, 1 decimal."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontierPoint:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class HeldoutSummary:
    """A run evaluated on the held-out environments (`autotts heldout`), averaged over them."""

    envs: list[str]
    """The held-out environments."""
    per_beta: list[BetaSummary]
    """Held-out averages per β, against the held-out baseline frontier."""
    baselines: list[FrontierPoint]
    """The baselines' held-out averages."""
    evaluated: float
    """Unix time of the evaluation."""
    objective: Objective | None = None
    """The held-out average β curve scored against the held-out SC@64 and CMC (None: an earlier release)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeldoutSummary:
        return cls(envs=list(d.get("envs", [])), per_beta=[BetaSummary.from_dict(p) for p in d.get("per_beta", [])],
                   baselines=[FrontierPoint.from_dict(b) for b in d.get("baselines", [])],
                   evaluated=float(d.get("evaluated", 0.0)),
                   objective=None if d.get("objective") is None else objective_from_dict(d["objective"]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_beta"] = [p.to_dict() for p in self.per_beta]
        return _without_none(d, ("objective",))


@dataclass(frozen=True)
class Scope:
    """What a quick run evaluated, when less than the study's full seeds and questions."""

    seeds: list[int]
    """The shuffle seeds evaluated."""
    questions: list[int] | None = None
    """The question indices evaluated on every environment (None: all)."""
    full_seeds: int = 0
    """How many seeds the study's full runs use."""

    def label(self) -> str:
        """`QUICK (2 of 6 seeds; questions 0,3,7)`."""
        qs = "" if self.questions is None else "; questions " + ",".join(str(q) for q in self.questions[:12]) + (
            f",… ({len(self.questions)})" if len(self.questions) > 12 else "")
        return f"QUICK ({len(self.seeds)} of {self.full_seeds} seeds{qs}; never ranked with full runs)"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scope:
        return cls(**_known(cls, d))


def objective_from_dict(d: dict[str, Any]) -> Objective:
    """`core.objective.Objective` from its `asdict` JSON (tuples come back as lists)."""
    from core.objective import Objective

    d = _known(Objective, d)
    d["auc_range"] = tuple(d["auc_range"])
    d["beta_gaps"] = tuple(tuple(g) for g in d["beta_gaps"])
    return Objective(**d)


def load_from_dict(d: dict[str, Any]) -> LoadNote:
    """`core.load_note.LoadNote` from its `asdict` JSON."""
    return LoadNote(**_known(LoadNote, d))


@dataclass(frozen=True)
class RunSummary:
    """A scored run on the search set: its curve over β, its best point, and its position against the baselines."""

    per_beta: list[BetaSummary]
    """Search-set averages per β, in the order evaluated."""
    best: BestPoint
    """The highest search accuracy over β (fewest tokens on ties)."""
    monotone: bool | None = None
    """Mean tokens never fall as β rises, on every search environment and on the search average (the
    single-knob rule). Summaries the TUI's old demo study wrote checked the search average only."""
    monotone_violations: list[str] = field(default_factory=list)
    """The first few β steps where tokens fell, in words."""
    on_frontier: int | None = None
    """How many β points no baseline dominates (None: not compared)."""
    above_frontier: int | None = None
    """How many β points lie above the baselines' frontier (None: not compared)."""
    frontier: list[FrontierPoint] = field(default_factory=list)
    """The baselines' accuracy–tokens frontier on the same environments."""
    heldout: HeldoutSummary | None = None
    """The held-out evaluation, once `autotts heldout` ran (never shown to the MCP tools)."""
    after_heldout: str | None = None
    """Set when the run was recorded after a held-out evaluation in this study (which one, and when): its search
    could in principle have been informed by held-out results, so a reviewer must know."""
    objective: Objective | None = None
    """The search-average β curve scored against SC@64 and CMC on the same seeds and questions
    (`core.objective`; None: recorded by an earlier release, computed on read from `per_beta`)."""
    scope: Scope | None = None
    """Set for a quick run (fewer seeds or questions than the study's); None: the full seeds and questions."""
    load: LoadNote | None = None
    """Wall and CPU time of the evaluation and the machine's load (None: not recorded)."""

    @property
    def quick(self) -> bool:
        """A quick run: fewer seeds or questions than the study's full runs."""
        return self.scope is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        d = dict(d)
        d["per_beta"] = [BetaSummary.from_dict(p) for p in d.get("per_beta", [])]
        for key, read in (("objective", objective_from_dict), ("scope", Scope.from_dict), ("load", load_from_dict)):
            d[key] = None if d.get(key) is None else read(d[key])
        d["best"] = BestPoint.from_dict(d["best"])
        d["frontier"] = [FrontierPoint.from_dict(f) for f in d.get("frontier", [])]
        d["heldout"] = None if d.get("heldout") is None else HeldoutSummary.from_dict(d["heldout"])
        return cls(**_known(cls, d))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_beta"] = [p.to_dict() for p in self.per_beta]
        if self.heldout is not None:
            d["heldout"] = self.heldout.to_dict()
        # heldout/after_heldout: set once a held-out evaluation exists; the rest were added since schema 2
        return _without_none(d, ("heldout", "after_heldout", "objective", "scope", "load"))


# ----- runs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One candidate evaluation: what `RunStore.record_run` writes (with its result rows) and `RunStore.run` reads."""

    name: str
    """The candidate's name (not unique: a revision keeps its name)."""
    status: str
    """ok | error | refused."""
    created: float
    """Unix time the evaluation started."""
    finished: float
    """Unix time it was recorded."""
    betas: list[float]
    """The β evaluated."""
    envs: list[str]
    """The search environments evaluated."""
    error: str | None = None
    """Short message (error / refused)."""
    traceback: str | None = None
    """The candidate's frames of the traceback of an error."""
    summary: RunSummary | None = None
    """Search averages, monotonicity, frontier position (scored runs only)."""
    isolation: IsolationReport | None = None
    """How the sandbox isolated the candidate."""
    audit: AuditReport | None = None
    """The integrity audit."""
    seconds: float | None = None
    """Wall time of the evaluation."""
    stdout_tail: str | None = None
    """The end of what the candidate printed."""
    source: str | None = None
    """The candidate's source (None when read without it)."""
    sha256: str = ""
    """Hash of the source, set by the store."""
    id: int | None = None
    """The store's id, set when recorded."""

    @property
    def run_id(self) -> str:
        """The id agents see: `r0007`."""
        if self.id is None:
            raise ValueError("this run has not been recorded yet")
        return format_run_id(self.id)


@dataclass(frozen=True)
class LeaderboardEntry:
    """A run as a leaderboard row: ranked by best search accuracy over β, then fewer tokens there."""

    id: int
    """The store's run id."""
    run_id: str
    """`r0007`."""
    name: str
    """The candidate's name."""
    status: str
    """ok | error | refused."""
    created: float
    """Unix time the evaluation started."""
    sha256: str
    """First 12 hex digits of the source hash."""
    best_accuracy: float | None
    """Best search-set accuracy over β (None: not scored)."""
    tokens_at_best: float | None
    """Mean tokens per question at that β."""
    beta_at_best: float | None
    """That β."""
    monotone: bool | None
    """`RunSummary.monotone` (None: not scored)."""
    on_frontier: int | None
    """`RunSummary.on_frontier`: how many β points no baseline dominates."""
    error: str | None
    """Why it failed or was refused."""
    after_heldout: bool = False
    """Recorded after a held-out evaluation of this study (`RunSummary.after_heldout`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- traces --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceKey:
    """Which episode a recorded trace is of."""

    env: str
    """Environment name."""
    beta: float
    """The β."""
    seed: int
    """Shuffle seed."""
    question: int
    """Question index."""


@dataclass(frozen=True)
class Trace:
    """One episode's actions, recorded by `inspect_trace` (re-run in the sandbox on demand)."""

    answer: str | None
    """The controller's answer."""
    tokens: int
    """Tokens charged."""
    events: list[list[Any]]
    """[op, branch, cost, revealed answer | None] per action."""


# ----- discovery sessions --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    """Tokens of one API response (or a sum of them) and what they cost."""

    input_tokens: int = 0
    """Uncached input tokens."""
    output_tokens: int = 0
    """Output tokens."""
    cache_write_tokens: int = 0
    """`cache_creation_input_tokens`: input written to the prompt cache."""
    cache_read_tokens: int = 0
    """`cache_read_input_tokens`: input read from the prompt cache."""
    cost_usd: float = 0.0
    """Dollars."""

    @property
    def prompt_tokens(self) -> int:
        """Everything the request sent: uncached + cache writes + cache reads."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_write_tokens + other.cache_write_tokens,
                     self.cache_read_tokens + other.cache_read_tokens, self.cost_usd + other.cost_usd)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Usage:
        return cls(**_known(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cost_usd": round(self.cost_usd, 6)}


@dataclass(frozen=True)
class DiscoverySession:
    """One unattended `autotts discover` loop over a study."""

    id: str
    """d0001, d0002, …"""
    created: float
    """Unix time it started."""
    updated: float
    """Unix time of its last change."""
    status: str
    """running | done | budget | interrupted | failed."""
    model: str
    """Explorer model of the latest start."""
    rounds: int
    """Rounds requested."""
    config: dict[str, Any]
    """The options of the latest start."""
    final_run: int | None = None
    """The selected controller's run id."""
    report: dict[str, Any] | None = None
    """The report `mcp_server.discover.report.build_report` assembled: selection, held-out table, cost."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoverySession:
        return cls(**_known(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DiscoveryCall:
    """One API response of a session, written as it returns (so money spent is known even if the round is not)."""

    session: str
    """The session id."""
    round: int
    """The round it belongs to."""
    model: str
    """The model that answered."""
    stop_reason: str | None
    """Why the response ended (the API's stop_reason)."""
    usage: Usage
    """Its tokens and cost."""
    seconds: float
    """Wall time including retries."""
    retries: int
    """Retries before it succeeded."""


@dataclass(frozen=True)
class DiscoveryRound:
    """A completed round of a session: its outcome and what its API calls cost."""

    session: str
    """The session id."""
    round: int
    """From 1."""
    status: str
    """done | partial (stopped by the budget cap)."""
    candidate: int | None
    """The round's final candidate run (None: none)."""
    how: str
    """How the candidate was chosen: named | best-of-round | last-run | from-reply | none."""
    started: float
    """Unix time the round started."""
    finished: float
    """Unix time it was recorded."""
    turns: int
    """Explorer replies."""
    tool_calls: int
    """Tool calls made."""
    usage: Usage
    """All calls of this round, interrupted attempts included."""
    note: str | None = None
    """Why the round ended, the explorer's closing words."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoveryRound:
        d = dict(d)
        d["usage"] = Usage.from_dict(d["usage"]) if "usage" in d else Usage.from_dict(d)  # a flat SQL row
        return cls(**_known(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usage": self.usage.to_dict()}
