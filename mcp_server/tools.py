"""The discovery tools as plain functions over a `DiscoveryService`.

The MCP server (`mcp_server.server`) is a thin layer over these, and so is any other agent loop: each function
validates its arguments, raises `AutoTTSError` subclasses with one clear message for bad input, and returns a
pydantic model whose `text()` is the compact, readable form an agent reads (results stay a few KB: tables are
column lists plus rows, long things are paged).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from core import objective as objective_mod
from core.branch_view import (
    action_rows,
    episode_branch_steps,
    episode_branch_view,
    filter_actions,
    render_actions,
    render_branch_view,
)
from core.compare import render_comparison, render_pooled
from core.discovery.records import EpisodeArrays, Run, TraceKey
from core.discovery.service import SC64, CompareSide, DiscoveryService, Progress, ToolInputError
from core.discovery.store import RunStoreError, parse_run_id
from core.errors import ControllerSpecError
from core.load_note import LoadNote, render_load_note
from core.objective import Objective, render_objective
from core.sandbox.reports import sandbox_summary
from core.stops import render_stop_counts, stop_counts
from mcp_server.checks import CandidateSourceError, check_source, declared_branch_budget

MAX_BETAS = 16
MAX_NAME = 80
TRACEBACK_LINES = 14
MAX_CHARS = 8_000
"""Every tool's text stays under this by default (about 2,000 tokens); longer things are paged."""


# ----- result models ---------------------------------------------------------------------------------------------
class Table(BaseModel):
    """A compact table: column names and rows of values."""

    columns: list[str]
    rows: list[list[Any]]


class EnvInfo(BaseModel):
    name: str = Field(description="Environment name to pass to other tools.")
    questions: int
    branches_per_question: str = Field(description="Pre-sampled branches per question (min–max).")
    probe_interval: int = Field(description="Tokens between probes (Δ).")
    median_branch_tokens: int
    synthetic: bool = Field(description="True for generated demo data (not from a real model).")


class EnvironmentList(BaseModel):
    search: list[EnvInfo]
    heldout_count: int = Field(description="Held-out environments exist but are hidden from these tools.")
    betas: list[float] = Field(description="The study's default β grid.")
    max_branches: int = Field(description="Ceiling on branches opened per question.")
    seeds: int = Field(description="Shuffle seeds per evaluation (seeds 0..n-1).")

    def text(self) -> str:
        lines = [f"{len(self.search)} search environment(s); {self.heldout_count} held-out (hidden; evaluated only "
                 f"by a person with `autotts heldout`). β grid {_fmt_betas(self.betas)}, ≤{self.max_branches} "
                 f"branches/question, {self.seeds} seeds."]
        for e in self.search:
            lines.append(f"- {e.name}: {e.questions} questions × {e.branches_per_question} branches, Δ={e.probe_interval}, "
                         f"median branch {e.median_branch_tokens:,} tokens" + (" (synthetic)" if e.synthetic else ""))
        return "\n".join(lines)


class BetaPoint(BaseModel):
    beta: float
    accuracy: float = Field(description="Search-set average accuracy, percent.")
    avg_tokens: float = Field(description="Search-set average of mean tokens per question.")
    dominated: bool = Field(description="A baseline point has ≥ accuracy at ≤ tokens.")
    accuracy_gap: float | None = Field(None, description="Accuracy minus the baseline frontier's at these tokens.")
    vs: str | None = Field(None, description="Cheapest baseline at least as accurate.")
    tokens_saved: float | None = Field(None, description="Fraction of that baseline's tokens saved (negative: more).")
    accuracy_se: float | None = Field(None, description="Standard error over seeds of `accuracy`.")
    tokens_se: float | None = Field(None, description="Standard error over seeds of `avg_tokens`.")
    vs_cmc: float | None = Field(None, description="Accuracy minus CMC's at the same β (points), paired over seeds.")
    vs_cmc_se: float | None = Field(None, description="Standard error of vs_cmc; within noise when |vs_cmc| < 2·SE.")


class BaselinePoint(BaseModel):
    label: str
    accuracy: float
    avg_tokens: float
    on_frontier: bool = False


class ObjectiveInfo(BaseModel):
    """`core.objective.Objective`: the numbers the leaderboard ranks by."""

    target_accuracy: float = Field(description="SC@64's accuracy (%) on the same environments, seeds and questions.")
    sc64_tokens: float = Field(description="SC@64's mean tokens per question.")
    tokens_to_sc64: float | None = Field(None, description="Tokens the β curve needs to reach SC@64's accuracy "
                                                           "(interpolated in log tokens; None: not reached).")
    pct_of_sc64: float | None = Field(None, description="tokens_to_sc64 as % of SC@64's tokens (lower is better).")
    cmc_tokens_to_sc64: float | None = Field(None, description="The same for CMC's β curve (None: CMC does not "
                                                               "reach it).")
    pct_of_cmc: float | None = Field(None, description="tokens_to_sc64 as % of cmc_tokens_to_sc64.")
    auc: float = Field(description="Mean accuracy (%) of the curve over log10 tokens 4…6.5 (flat beyond its ends).")
    cmc_auc: float | None = Field(None, description="The same for CMC's curve.")
    best_accuracy: float
    best_accuracy_tokens: float
    text: str = Field(description="The numbers in words.")

    @classmethod
    def of(cls, obj: Objective) -> ObjectiveInfo:
        d = {k: v for k, v in dataclasses.asdict(obj).items() if k in cls.model_fields}
        # the per-β gaps to CMC are the β table's vs-CMC column, with their noise
        return cls(**d, text=render_objective(dataclasses.replace(obj, beta_gaps=())))


class Timing(BaseModel):
    """`core.load_note.LoadNote`: how long the evaluation took and whether the machine was busy."""

    wall_s: float
    cpu_s: float
    episodes: int | None = None
    episodes_per_s: float | None = None
    load1: float = Field(description="The higher 1-minute load average at the start and the end.")
    cores: int
    busy: bool = Field(description="Load average above the core count: times are slower than on an idle machine.")
    text: str

    @classmethod
    def of(cls, note: LoadNote) -> Timing:
        eps = note.episodes_per_s
        return cls(wall_s=round(note.wall_s, 2), cpu_s=round(note.cpu_s, 2), episodes=note.episodes,
                   episodes_per_s=None if eps is None else round(eps, 1), load1=round(note.load1, 2),
                   cores=note.cores, busy=note.busy, text=render_load_note(note))


class RunReport(BaseModel):
    run_id: str = Field(description="Pass to inspect_trace / get_controller.")
    name: str
    status: Literal["ok", "error", "refused"]
    summary: str = Field(description="One-line verdict.")
    error: str | None = None
    traceback: str | None = Field(None, description="The candidate's frames of the traceback.")
    betas: list[float] = []
    envs: list[str] = []
    search_avg: list[BetaPoint] = []
    per_env: Table | None = Field(None, description="accuracy% / mean tokens per environment and β.")
    baselines: list[BaselinePoint] = Field([], description="Search-set averages of the built-in baselines.")
    monotone: bool | None = Field(None, description="Mean tokens never fall as β rises (every environment).")
    monotone_violations: list[str] = []
    seconds: float = 0.0
    queued_s: float = Field(0.0, description="Seconds spent waiting for an earlier evaluation (they run one at a time).")
    sandbox: str | None = Field(None, description="Isolation level and audit outcome.")
    stdout_tail: str | None = None
    duplicate_of: str | None = None
    quick: str | None = Field(None, description="Set for a quick run (fewer seeds or questions): never ranked "
                                                "with full runs.")
    seeds: int | None = Field(None, description="Seeds evaluated per question.")
    objective: ObjectiveInfo | None = Field(None, description="Tokens to reach SC@64's accuracy (% of SC@64 and "
                                                              "of CMC), AUC.")
    timing: Timing | None = Field(None, description="Wall and CPU time, episodes/s, machine load.")

    def text(self) -> str:
        if self.duplicate_of:
            out = ["No new run recorded" + (f" ({self.quick})" if self.quick else "") + f" — {self.summary}"]
        else:
            out = [f"{self.run_id} '{self.name}'" + (f" {self.quick}" if self.quick else "") + f": {self.summary}"]
        if self.duplicate_of:  # the agent has had the full report once; the structured content still carries it
            if self.objective:
                out.append(self.objective.text.splitlines()[0])
            out.append(f"(inspect_trace / compare_runs with run_id={self.duplicate_of} for more)")
            return "\n".join(out)
        if self.error:
            out.append(f"Error: {self.error}")
        if self.traceback:
            out.append(self.traceback)
        if self.objective:
            out.append(f"Objective (search average of {len(self.envs)} env(s); get_history ranks by line 1):")
            out += ["  " + line for line in self.objective.text.splitlines()]
        if self.search_avg:
            seeds = f"{self.seeds} seeds" if self.seeds else "seeds"
            out.append(f"β curve (± = SE over {seeds}; vs CMC = acc − CMC's at this β, paired, noise = within 2 SE; "
                       f"{POSITION_LEGEND}):")
            out.append("  β     acc%  ±SE    tokens    ±SE  vs CMC           vs the baselines")
            for p in self.search_avg:
                out.append(f"  {p.beta:<5g} {p.accuracy:5.2f} {_se(p.accuracy_se, '.2f'):>4} {p.avg_tokens:9,.0f} "
                           f"{_se(p.tokens_se, ',.0f'):>6}  {_vs_cmc_text(p):<16} {_position_text(p)}")
            if len(self.betas) >= 2 and not self.monotone:  # the summary line says monotone or one β otherwise
                out.append("Tokens NOT monotone in β: " + "; ".join(self.monotone_violations))
        if self.per_env and len(self.envs) > 1:
            out.append("Per environment (acc% / tokens) by β " + _fmt_betas(self.betas) + ":")
            for row in self.per_env.rows:
                out.append(f"  {row[0]}: " + "  ".join(row[1:]))
        if self.baselines and self.quick:  # a full run's are get_baselines'; a quick run's are on its episodes
            out.append("Baselines on the same seeds and questions (search avg; * = on frontier): " + " · ".join(
                f"{b.label}{'*' if b.on_frontier else ''} {b.accuracy:.2f}%/{b.avg_tokens:,.0f}" for b in self.baselines))
        tail = [self.timing.text if self.timing else f"{self.seconds:.1f} s"]
        if self.queued_s >= 0.05:
            tail.append(f"waited {self.queued_s:.1f} s for an earlier evaluation")
        if self.sandbox:
            tail.append(self.sandbox)
        out.append("(" + "; ".join(tail) + ")")
        if self.stdout_tail:
            out.append("stdout (tail):\n" + self.stdout_tail)
        return "\n".join(out)


class TraceView(BaseModel):
    run_id: str
    kind: Literal["digest", "episode"]
    view: Literal["digest", "branches", "actions"] = Field(
        description="digest: one row per question; branches: one row per branch of an episode; actions: its actions.")
    env: str
    beta: float
    seed: int | None = None
    question: int | None = None
    summary: str
    table: Table | None = Field(None, description="The digest's rows, or the episode's branch rows.")
    body: str | None = Field(None, description="An episode's branch view or action list as text.")
    page: int
    pages: int
    examples: list[list[int]] = Field([], description="[seed, question] pairs where SC@64 was right and the candidate wrong.")
    legend: str | None = Field(None, description="What the digest's columns mean.")
    answer: str | None = None
    correct: bool | None = None
    tokens: int | None = None
    actions: int | None = Field(None, description="Actions in the episode.")

    def text(self) -> str:
        out = [self.summary]
        if self.body is not None:
            out.append(self.body)
        elif self.table is not None:
            out.append(_render_table(self.table))
        if self.legend:
            out.append(self.legend)
        if self.pages > 1 and self.body is None:
            out.append(f"(page {self.page} of {self.pages}; pass page= for more)")
        if self.examples:
            out.append("Episodes SC@64 got right and the candidate missed [seed, question]: "
                       + ", ".join(f"[{s},{q}]" for s, q in self.examples))
        return "\n".join(out)


class History(BaseModel):
    total: int
    page: int
    pages: int
    busy: bool = Field(description="An evaluation is running now.")
    table: Table = Field(description="rank (None: listed apart or failed), kind: ranked | probe (not the full β grid "
                                     "or not every search environment) | quick (fewer seeds or questions) | the "
                                     "failure status; pct_of_sc64 / pct_of_cmc: tokens to reach SC@64's accuracy as "
                                     "% of SC@64's / of CMC's; auc: mean accuracy over log tokens 10^4…10^6.5.")
    board: str | None = Field(None, description="The leaderboard as text.")
    failed: list[str] = Field([], description="Failed and refused runs on this page, newest first.")

    def text(self) -> str:
        head = (f"{self.total} run(s)" + (" — an evaluation is running now" if self.busy else "")
                + ". tok/SC@64 = tokens the β curve needs to reach SC@64's search accuracy, % of SC@64's tokens; "
                "tok/CMC = the same as % of the tokens CMC's β curve needs for it; AUC = mean accuracy over log "
                "tokens 10^4…10^6.5; best% at tokens = the curve's most accurate point.")
        parts = [head, self.board or ""]
        if self.failed:
            parts.append("failed or refused:\n" + "\n".join("  " + f for f in self.failed))
        if self.pages > 1:
            parts.append(f"(page {self.page} of {self.pages}; pass page= for more)")
        return "\n".join(x for x in parts if x)


class ControllerSource(BaseModel):
    run_id: str
    name: str
    status: str
    sha256: str
    lines: int
    page: int
    pages: int
    source: str

    def text(self) -> str:
        head = f"# {self.run_id} '{self.name}' ({self.status}, sha256 {self.sha256[:12]}, {self.lines} lines)"
        foot = f"\n# (page {self.page} of {self.pages})" if self.pages > 1 else ""
        return f"{head}\n{self.source}{foot}"


class Baselines(BaseModel):
    envs: list[str]
    average: list[BaselinePoint]
    per_env: Table = Field(description="accuracy% / mean tokens of each baseline on each environment.")

    def text(self) -> str:
        out = [f"Baselines on {len(self.envs)} search env(s), search average (* = on the accuracy–tokens frontier):"]
        out += [f"  {b.label:<16} {b.accuracy:6.2f}% {b.avg_tokens:10,.0f} tokens{' *' if b.on_frontier else ''}"
                for b in self.average]
        if len(self.envs) > 1:
            out.append("Per environment (acc% / tokens):")
            out.append(_render_table(self.per_env))
        return "\n".join(out)


class PairedDiff(BaseModel):
    """`core.stats.PairedTest` of a − b over seeds."""

    diff: float
    se: float
    p: float
    within_noise: bool = Field(description="|diff| < 2·SE: not distinguishable from shuffle noise.")


class Comparison(BaseModel):
    run_a: str
    run_b: str
    beta: float
    envs: list[str]
    seeds: int
    accuracy: PairedDiff = Field(description="Accuracy (points) a − b, pooled over the environments.")
    tokens: PairedDiff = Field(description="Mean tokens per question a − b, pooled over the environments.")
    at_other_betas: list[list[Any]] = Field([], description="[β, accuracy diff, SE, within noise] at every other β "
                                                            "both runs have.")
    body: str

    def text(self) -> str:
        return self.body


def _paired(t: Any) -> PairedDiff:
    return PairedDiff(diff=round(t.diff, 4), se=round(t.se, 4), p=float(f"{t.p:.4g}"), within_noise=t.within_noise)


# ----- tools -------------------------------------------------------------------------------------------------------
def list_environments(svc: DiscoveryService) -> EnvironmentList:
    """The search environments an agent may evaluate and trace (held-out ones are only counted)."""
    infos = []
    for env in svc.study.search_envs():
        counts = env.branch_counts
        lo, hi = int(counts.min()), int(counts.max())
        infos.append(EnvInfo(
            name=env.name, questions=env.n_questions, branches_per_question=str(lo) if lo == hi else f"{lo}–{hi}",
            probe_interval=int(np.median(env.interval)), median_branch_tokens=int(np.median(env.branch_tokens)),
            synthetic=bool(env.metadata.get("synthetic", False))))
    st = svc.study
    return EnvironmentList(search=infos, heldout_count=len(st.heldout), betas=list(st.betas),
                           max_branches=st.max_branches, seeds=st.n_seeds)


def run_controller(svc: DiscoveryService, code: str, name: str | None = None, betas: Sequence[float] | None = None,
                   envs: Sequence[str] | None = None, progress: Progress | None = None, seeds: int | None = None,
                   questions: Sequence[int] | None = None) -> RunReport:
    """Evaluate candidate source on the search environments at each β; record it; report against the baselines.
    `seeds` (the first n) and `questions` (indices) make a quick run, labelled and never ranked with full runs."""
    tree = check_source(code)
    name = _check_name(name) or _default_name(tree)
    beta_list = _check_betas(betas, svc.study.betas)
    env_objs = svc.resolve_envs(envs)
    env_names = [e.name for e in env_objs]
    scope = svc.scope(seeds, list(questions) if isinstance(questions, tuple) else questions)
    dup = svc.duplicate_of(code, beta_list, env_names, scope)
    if dup is not None:
        report = report_for_run(svc, dup.run_id)
        report.duplicate_of = dup.run_id
        report.summary = (f"identical source already evaluated on the same grid as {dup.run_id} '{report.name}'; "
                          "its results: " + report.summary)
        return report
    ev = svc.evaluate_candidate(code, name, beta_list, env_objs, progress, scope)
    report = report_for_run(svc, ev.run_id)
    report.queued_s = ev.queued_s
    return report


def report_for_run(svc: DiscoveryService, run_id: int | str) -> RunReport:
    """A RunReport rebuilt from the store (what run_controller returns)."""
    run = svc.store.run(run_id, with_source=False)
    sandbox = sandbox_summary(run.isolation, run.audit)
    stdout = run.stdout_tail
    common = dict(run_id=run.run_id, name=run.name, betas=run.betas, envs=run.envs,
                  seconds=round(run.seconds or 0.0, 2), sandbox=sandbox,
                  stdout_tail=stdout[-1500:] if stdout else None)
    if run.status == "error":
        return RunReport(status="error", summary="FAILED (fix the error below and call run_controller again)",
                         error=run.error, traceback=_trim_traceback(run.traceback), **common)
    if run.status == "refused":
        return RunReport(status="refused", summary="REFUSED (no score is shown)", error=run.error, **common)
    summary = run.summary
    assert summary is not None, "every writer records an ok run with its summary"
    env_objs = svc.study.search_envs(run.envs)
    frontier_labels = {f.label for f in summary.frontier}
    baselines = [BaselinePoint(label=p.label, accuracy=p.accuracy, avg_tokens=round(p.tokens, 1),
                               on_frontier=p.label in frontier_labels)
                 for p in svc.baseline_points(env_objs, summary.scope)]
    rows = svc.store.results(run.run_id)
    by = {(r.env, r.beta): r for r in rows}
    per_env = Table(columns=["env"] + [f"β={b:g}" for b in run.betas],
                    rows=[[e] + [f"{by[(e, b)].accuracy:.2f}/{by[(e, b)].avg_tokens:,.0f}" for b in run.betas]
                          for e in run.envs])
    points = [BetaPoint(**p.to_dict()) for p in summary.per_beta]
    best = summary.best
    verdict = (f"ok. Best {best.accuracy:.2f}% at {best.avg_tokens:,.0f} tokens (β={best.beta:g}); "
               f"{summary.on_frontier or 0} of {len(points)} β points undominated by the baselines, "
               f"{summary.above_frontier or 0} above their frontier; "
               f"tokens {'monotone' if summary.monotone else 'NOT monotone'} in β")
    if len(run.betas) < 2:
        verdict = verdict.replace("tokens monotone in β", "one β (monotonicity not checked)").replace(
            "tokens NOT monotone in β", "one β (monotonicity not checked)")
    if summary.after_heldout:
        verdict += f" [{summary.after_heldout}]"
    obj = svc.run_objective(run)
    scope = summary.scope
    return RunReport(status="ok", summary=verdict, search_avg=points, per_env=per_env, baselines=baselines,
                     monotone=summary.monotone, monotone_violations=summary.monotone_violations,
                     quick=None if scope is None else scope.label(),
                     seeds=svc.study.n_seeds if scope is None else len(scope.seeds),
                     objective=None if obj is None else ObjectiveInfo.of(obj),
                     timing=None if summary.load is None else Timing.of(summary.load), **common)


def inspect_trace(svc: DiscoveryService, run_id: str | int, env: str | None = None, beta: float | None = None,
                  question: int | None = None, seed: int | None = None, page: int = 1,
                  page_size: int | None = None, view: str = "branches", only: str | None = None) -> TraceView:
    """Without `question`: a per-question digest of one (environment, β). With it: that episode branch by branch
    (`view="branches"`, the default) or action by action (`view="actions"`, filtered by `only`), paged."""
    rid = _run_id(run_id)
    run = svc.store.run(rid)
    if run.status == "error":
        raise ToolInputError(f"{run.run_id} failed ({run.error}); there is no trace to inspect. Fix the error "
                             "and call run_controller again")
    if run.status == "refused":
        raise ToolInputError(f"{run.run_id} was refused ({(run.error or '')[:200]}); refused runs cannot be inspected")
    if view not in ("branches", "actions"):
        raise ToolInputError(f"view must be 'branches' or 'actions', got {str(view)[:40]!r}")
    if only not in (None, "finishes", "changes", "finishes+changes"):
        raise ToolInputError(f"only must be 'finishes', 'changes' or 'finishes+changes', got {str(only)[:40]!r}")
    if env is None:
        env = run.envs[0]
    svc.check_env_names([env])
    if env not in run.envs:
        raise ToolInputError(f"{run.run_id} was not evaluated on '{env}'; it ran on: {', '.join(run.envs)}")
    beta = _pick_beta(run, beta)
    env_obj = svc.study.search_envs([env])[0]
    rows = svc.store.results(rid, env=env, beta=beta, with_episodes=True)
    ep = rows[0].episodes
    assert ep is not None
    scope = run.summary.scope if run.summary else None
    sc = svc.baseline(env_obj, SC64).episodes
    assert sc is not None
    if scope is not None:
        sc = sc.select(scope.seeds, scope.questions)
    qids = list(range(env_obj.n_questions)) if scope is None or scope.questions is None else list(scope.questions)
    seeds = ep.seeds.tolist()
    if seed is not None and seed not in seeds:
        raise ToolInputError(f"seed {seed} is not one of this run's seeds ({_ranges(seeds)})")
    if question is None:
        return _digest(svc, run, env_obj, beta, ep, sc, qids, seed, page, page_size)
    if not isinstance(question, int) or isinstance(question, bool) or question not in qids:
        raise ToolInputError(f"question must be one of this run's question indices of {env} ({_ranges(qids)}), "
                             f"got {question!r}")
    return _episode(svc, run, env_obj, beta, ep, sc, qids.index(question), question, seed, page, page_size, view,
                    only)


def _pick_beta(run: Run, beta: float | None) -> float:
    betas = list(run.betas)
    if beta is None:
        return 0.5 if 0.5 in betas else betas[len(betas) // 2]
    match = [b for b in betas if abs(b - float(beta)) < 1e-9]
    if not match:
        raise ToolInputError(f"{run.run_id} was not evaluated at β={beta:g}; its β values are {_fmt_betas(betas)}")
    return match[0]


def get_history(svc: DiscoveryService, page: int = 1, page_size: int = 20, include_failed: bool = True) -> History:
    """The leaderboard (`core.objective`): full runs ranked by tokens to reach SC@64's accuracy, probes and quick
    runs listed apart, failed and refused runs after."""
    page_size = _check_int(page_size, "page_size", 1, 100)
    ranked, failed = svc.leaderboard(include_failed=include_failed)
    best = {r.run_id: r for r in svc.store.leaderboard(include_failed=False)}  # each run's BestPoint row
    rows: list[tuple[str, objective_mod.LeaderboardEntry | Any]] = (
        [(str(k + 1), e) for k, e in enumerate(ranked.ranked)] + [("-", e) for e in ranked.apart]
        + [("x", r) for r in failed])
    chunk, page, pages = _page(rows, page, page_size)
    part = objective_mod.Leaderboard(tuple(e for k, e in chunk if k not in ("-", "x")),
                                     tuple(e for k, e in chunk if k == "-"))
    first = next((int(k) for k, _ in chunk if k not in ("-", "x")), 1)
    fails = [r for k, r in chunk if k == "x"]
    table = Table(columns=["rank", "run", "name", "kind", "pct_of_sc64", "pct_of_cmc", "auc", "best_acc%", "tokens",
                           "β", "monotone", "error"], rows=[])
    for k, e in chunk:
        if k == "x":
            table.rows.append([None, e.run_id, e.name[:40], e.status, None, None, None, None, None, None, None,
                               None if not e.error else e.error[:90]])
            continue
        o, b = e.objective, best[e.run_id]
        table.rows.append([None if k == "-" else int(k), e.run_id, e.label[:40],
                           "ranked" if e.rankable else ("probe" if not e.full_grid else "quick"),
                           _round(o.pct_of_sc64, 1), _round(o.pct_of_cmc, 1), round(o.auc, 2),
                           b.best_accuracy, None if b.tokens_at_best is None else round(b.tokens_at_best),
                           b.beta_at_best, b.monotone, None])
    return History(total=len(rows), page=page, pages=pages, busy=svc.busy_since is not None, table=table,
                   board=objective_mod.render_leaderboard(part, max_chars=MAX_CHARS - 1500, first_rank=first)
                   if part.ranked or part.apart else None,
                   failed=[f"{r.run_id} {r.name[:30]} {r.status}: {(r.error or '')[:110]}" for r in fails])


def compare_runs(svc: DiscoveryService, run_a: str | int, run_b: str | int, env: str | None = None,
                 beta: float | None = None) -> Comparison:
    """Two scored runs — or a run and a built-in (`cmc`, `one-batch`, `sc:n=64`), run here on the same seeds — at one
    β, paired on the seeds and questions both evaluated: per-question differences in accuracy and tokens and paired
    t-tests over seeds (`core.compare`), on one environment or pooled over all both ran on; one line per other β
    both have."""
    a, b = (_compare_side(svc, ref) for ref in (run_a, run_b))
    if a.run is None and b.run is None:
        raise ToolInputError("compare a run with a built-in or with another run: at least one side must be a run id")
    common_envs = [e for e in a.envs if e in b.envs]
    if env is not None:
        svc.check_env_names([env])
        if env not in common_envs:
            raise ToolInputError(f"both sides must have been evaluated on '{env}'; in common: "
                                 f"{', '.join(common_envs) or 'none'}")
        common_envs = [env]
    if not common_envs:
        raise ToolInputError(f"{a.ref} and {b.ref} share no environment")
    a_betas = a.betas if a.betas is not None else b.betas
    b_betas = b.betas if b.betas is not None else a_betas
    assert a_betas is not None and b_betas is not None
    betas = [x for x in a_betas if any(abs(x - y) < 1e-9 for y in b_betas)]
    if not betas:
        raise ToolInputError(f"{a.ref} (β {_fmt_betas(a_betas)}) and {b.ref} (β {_fmt_betas(b_betas)}) share no β")
    if beta is None:
        beta = 0.5 if 0.5 in betas else betas[len(betas) // 2]
    elif not any(abs(float(beta) - x) < 1e-9 for x in betas):
        raise ToolInputError(f"β={beta:g} is not a β both sides have; in common: {_fmt_betas(betas)}")
    beta = next(x for x in betas if abs(float(beta) - x) < 1e-9)
    pooled = svc.compare(a, b, common_envs, beta)
    first = pooled.per_env[0]
    others = []
    for x in betas:
        if x != beta:
            t = svc.compare(a, b, common_envs, x).accuracy
            others.append([x, round(t.diff, 3), round(t.se, 3), t.within_noise])
    lines = [f"a = {a.ref} '{a.label[:40]}', b = {b.ref} '{b.label[:40]}', β={beta:g}; paired on the "
             f"{first.n_seeds} seeds and {sum(c.n_questions for c in pooled.per_env)} questions both evaluated"
             " (± = SE over seeds; 'within noise' = |diff| < 2·SE)."]
    if len(pooled.per_env) > 1:
        lines.append(render_pooled(pooled))
    if others:
        lines.append("accuracy a − b at the other common β (pooled): " + " · ".join(
            f"β{x:g} {d:+.2f}±{se:.2f}{' noise' if n else ''}" for x, d, se, n in others))
    used = sum(len(x) + 1 for x in lines)
    per = (MAX_CHARS - used - 100) // len(pooled.per_env)
    # pooled over several environments: each one's three most different questions (env= for all of them)
    top = None if len(pooled.per_env) == 1 else 3
    for c in pooled.per_env:
        lines.append(render_comparison(c, max_chars=max(per, 600), max_questions=top, tests=top is None))
    if top:
        lines.append("(env= shows every differing question of one environment)")
    body = "\n".join(lines)
    return Comparison(run_a=a.ref, run_b=b.ref, beta=beta, envs=common_envs, seeds=first.n_seeds,
                      accuracy=_paired(pooled.accuracy), tokens=_paired(pooled.tokens), at_other_betas=others,
                      body=body)


def get_controller(svc: DiscoveryService, run_id: str | int, page: int = 1, page_size: int = 300) -> ControllerSource:
    """A recorded candidate's source, paged by lines."""
    run = svc.store.run(_run_id(run_id))
    lines = (run.source or "").splitlines()
    page_size = _check_int(page_size, "page_size", 20, 1000)
    chunk, page, pages = _page(lines, page, page_size)
    text = "\n".join(chunk)
    if len(text) > 40_000:
        text = text[:40_000] + "\n# … (page cut at 40,000 characters; use a smaller page_size)"
    return ControllerSource(run_id=run.run_id, name=run.name, status=run.status, sha256=run.sha256,
                            lines=len(lines), page=page, pages=pages, source=text)


def get_baselines(svc: DiscoveryService, envs: Sequence[str] | None = None) -> Baselines:
    """SC@64, ASC, ESC, Parallel-Probe and the CMC curve on the search environments (cached)."""
    env_objs = svc.resolve_envs(envs)
    points = svc.baseline_points(env_objs)
    from core.stats import pareto_frontier

    on = {p.label for p in pareto_frontier(points)}
    average = [BaselinePoint(label=p.label, accuracy=p.accuracy, avg_tokens=round(p.tokens, 1), on_frontier=p.label in on)
               for p in points]
    specs = svc.baseline_specs()
    table = Table(columns=["baseline"] + [e.name for e in env_objs], rows=[
        [label] + [f"{b.accuracy:.2f}/{b.avg_tokens:,.0f}" for b in (svc.baseline(e, spec) for e in env_objs)]
        for spec, label in specs])
    return Baselines(envs=[e.name for e in env_objs], average=average, per_env=table)


# ----- inspect_trace helpers ---------------------------------------------------------------------------------------
def _stops_legend(own: int | None) -> str:
    budget = (f"opened the {own} branches its self.max_branches allows at this β (read from its __init__)"
              if own is not None else "used its self.max_branches (unknown here: __init__ does not set it by "
              "simple arithmetic of β)")
    return (f"stops: own stop = stopped with branches still allowed; own budget = {budget}; ceiling = the "
            "study's ceiling on branches per question; pool used up = opened every branch of the question")


def _own_budget(run: Run, beta: float) -> int | None:
    """The branch cap the candidate declares at β (`declared_branch_budget`), None when unknown."""
    try:
        return declared_branch_budget(check_source(run.source or ""), beta)
    except CandidateSourceError:  # a source an earlier release accepted and this one would not
        return None


def _stops(opened: np.ndarray, pool: int, ceiling: int, own: int | None) -> str:
    """The digest's stops cell (`core.stops`)."""
    return render_stop_counts(stop_counts([int(o) for o in opened], pool, ceiling=ceiling, own_budget=own))


def _digest(svc: DiscoveryService, run: Run, env: Any, beta: float, ep: EpisodeArrays, sc: EpisodeArrays,
            qids: list[int], seed: int | None, page: int, page_size: int | None) -> TraceView:
    page_size = _check_int(page_size if page_size is not None else 30, "page_size", 1, 200)
    ceiling = svc.study.max_branches
    own = _own_budget(run, beta)
    lost_mask = sc.correct & ~ep.correct
    won_mask = ep.correct & ~sc.correct
    seeds = ep.seeds.tolist()
    n_q = len(qids)
    quick = "" if run.summary is None or run.summary.scope is None else f" {run.summary.scope.label()}"
    if seed is not None:
        si = seeds.index(seed)
        columns = ["q", "correct", "sc64_correct", "tokens", "opened", "stop", "answer"]
        rows = [[q, bool(ep.correct[si, j]), bool(sc.correct[si, j]), int(ep.tokens[si, j]),
                 None if ep.opened is None else int(ep.opened[si, j]),
                 None if ep.opened is None else _stops(ep.opened[si:si + 1, j], env.n_branches(q), ceiling, own),
                 _short(ep.answers[si][j])] for j, q in enumerate(qids)]
        head = (f"{run.run_id}{quick} on {env.name}, β={beta:g}, seed {seed}: {int(ep.correct[si].sum())}/{n_q} "
                f"correct, {float(ep.tokens[si].mean()):,.0f} tokens/question (SC@64: {int(sc.correct[si].sum())}/"
                f"{n_q}).")
        legend = f"{_stops_legend(own)}. Pass question= for an episode branch by branch."
    else:
        columns = ["q", "acc%", "sc64%", "lost", "won", "tokens", "opened", "max_open", "stops", "top_answer"]
        rows = []
        for j, q in enumerate(qids):
            opened = None if ep.opened is None else ep.opened[:, j]
            answers = Counter(ep.answers[si][j] for si in range(len(seeds)))
            top, top_n = answers.most_common(1)[0]
            rows.append([q, round(100 * float(ep.correct[:, j].mean()), 1),
                         round(100 * float(sc.correct[:, j].mean()), 1),
                         int(lost_mask[:, j].sum()), int(won_mask[:, j].sum()), round(float(ep.tokens[:, j].mean())),
                         None if opened is None else round(float(opened.mean()), 1),
                         None if opened is None else int(opened.max()),
                         "?" if opened is None else _stops(opened, env.n_branches(q), ceiling, own),
                         f"{_short(top, 16)} ({100 * top_n // len(seeds)}%)"])
        acc = 100 * float(ep.correct.mean())
        worst = np.argsort(-lost_mask.sum(axis=0), kind="stable")[:5]
        worst = [qids[int(j)] for j in worst if lost_mask[:, j].sum() > 0]
        head = (f"{run.run_id}{quick} on {env.name}, β={beta:g}: {acc:.2f}% at {float(ep.tokens.mean()):,.0f} "
                f"tokens/question over {len(seeds)} seeds; SC@64 {100 * float(sc.correct.mean()):.2f}% at "
                f"{float(sc.tokens.mean()):,.0f}. Lost {int(lost_mask.sum())} episodes SC@64 got right, won "
                f"{int(won_mask.sum())}" + (f"; most lost on questions {worst}" if worst else "") + ".")
        legend = ("Columns: acc% / sc64% = % of seeds right (SC@64 on the same seeds and questions), lost / won = "
                  "seeds where SC@64 was right and this wrong / the reverse, tokens and opened = means over seeds, "
                  f"max_open = most opened, top_answer = most common answer. {_stops_legend(own)}. Pass question= "
                  "for an episode branch by branch.")
    chunk, page, pages = _page_to_fit(rows, page, page_size, lambda c: len(head) + len(legend) + len(_render_table(
        Table(columns=columns, rows=c))) + 400)
    examples = [[int(seeds[s]), qids[int(j)]] for s, j in zip(*np.nonzero(lost_mask), strict=True)][:8]
    return TraceView(run_id=run.run_id, kind="digest", view="digest", env=env.name, beta=beta, seed=seed,
                     summary=head, table=Table(columns=columns, rows=chunk), page=page, pages=pages,
                     examples=examples, legend=legend)


def _episode(svc: DiscoveryService, run: Run, env: Any, beta: float, ep: EpisodeArrays, sc: EpisodeArrays,
             j: int, q: int, seed: int | None, page: int, page_size: int | None, view: str,
             only: str | None) -> TraceView:
    seeds = ep.seeds.tolist()
    why = ""
    if seed is None:
        lost = [i for i in range(len(seeds)) if sc.correct[i, j] and not ep.correct[i, j]]
        wrong = [i for i in range(len(seeds)) if not ep.correct[i, j]]
        si = (lost or wrong or [0])[0]
        seed = seeds[si]
        why = (" (first seed where SC@64 was right and the candidate wrong)" if lost else
               " (first seed where the candidate was wrong)" if wrong else " (the candidate is right on every seed)")
    si = seeds.index(seed)
    trace = svc.trace_episode(run, env, TraceKey(env.name, beta, seed, q))
    answer, tokens, events = trace.answer, trace.tokens, [tuple(e) for e in trace.events]
    note = ""
    if answer != ep.answers[si][j] or int(tokens) != int(ep.tokens[si, j]):
        note = (f" NOTE: this re-run answered {_short(answer)!r} with {tokens:,} tokens but the recorded run answered "
                f"{_short(ep.answers[si][j])!r} with {int(ep.tokens[si, j]):,}: the controller is not deterministic "
                "(seed any randomness with random.Random(fixed_seed)).")
    correct = bool(ep.correct[si, j])
    head = (f"{run.run_id} on {env.name}, β={beta:g}, seed {seed}{why}, question {q}: answered {_short(answer)!r} "
            f"({'correct' if correct else 'wrong'}; SC@64 {'right' if sc.correct[si, j] else 'wrong'}) with "
            f"{int(tokens):,} tokens in {len(events):,} actions.{note} Answers are compared as exact strings.")
    table = None
    try:
        if view == "branches":
            bv = episode_branch_view(env, q, seed, events, answer, ceiling=svc.study.max_branches,  # type: ignore[arg-type]
                                     own_budget=_own_budget(run, beta))
            head += " view=actions (only='finishes' or 'changes') lists the actions instead."
            body = render_branch_view(bv, max_chars=MAX_CHARS - len(head) - 120, page=page)
            table = Table(columns=["branch", "finish_order", "tokens", "steps", "status", "final_answer"],
                          rows=[[r.branch, r.finish_order, r.tokens, r.steps, r.status.value,
                                 _short(r.final_answer, 24)] for r in bv.rows])
        else:
            acts = action_rows(events, episode_branch_steps(env, q, seed))  # type: ignore[arg-type]
            picked = filter_actions(acts, finishes=only in ("finishes", "finishes+changes"),
                                    changes=only in ("changes", "finishes+changes"))
            head += (f" Actions{'' if only is None else f' ({only} only: {len(picked):,} of {len(acts):,})'}: "
                     "op (open=probe_new, step=probe_more, read=full read, branch/extend/probe/prune), br = branch, "
                     "cost = tokens charged (a final step costs the branch's remainder, which may exceed Δ), "
                     "d = steps the branch has taken, fin = finished its branch, chg = changed its answer.")
            body = render_actions(picked, max_chars=MAX_CHARS - len(head) - 120, page=page)
    except ValueError as e:  # a page out of range (the renderers say how many there are)
        raise ToolInputError(str(e)) from None
    m = re.search(r"^page (\d+)/(\d+)", body.splitlines()[-1]) if body else None
    pages = int(m.group(2)) if m else 1
    return TraceView(run_id=run.run_id, kind="episode", view=view, env=env.name, beta=beta, seed=seed,  # type: ignore[arg-type]
                     question=q, summary=head, table=table, body=body, page=page, pages=pages, answer=answer,
                     correct=correct, tokens=int(tokens), actions=len(events))


# ----- small helpers -----------------------------------------------------------------------------------------------
def _compare_side(svc: DiscoveryService, ref: str | int) -> CompareSide:
    """A run id (`r0007`, 7) as its scored run, anything else as a built-in spec (never a file: no code runs)."""
    try:
        run_id = parse_run_id(ref)
    except RunStoreError:
        if not isinstance(ref, str) or ref.strip().split(":")[0].endswith(".py"):
            raise ToolInputError(f"'{ref}' is neither a run id (r0007) nor a built-in (cmc, one-batch, sc:n=64)") \
                from None
        try:
            return svc.builtin_side(ref)
        except ControllerSpecError as e:
            raise ToolInputError(f"'{ref}' is neither a run id (r0007) nor a built-in: {e}") from None
    run = svc.store.run(run_id, with_source=False)
    if run.status != "ok":
        raise ToolInputError(f"{run.run_id} is not a scored run ({run.status}); compare runs that scored")
    return svc.run_side(run)


def _run_id(value: Any) -> int:
    try:
        return parse_run_id(value)
    except RunStoreError as e:
        raise ToolInputError(str(e)) from None


def _check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise ToolInputError(f"name must be a string, got {type(name).__name__}")
    name = " ".join(name.split())
    if len(name) > MAX_NAME:
        raise ToolInputError(f"name is {len(name)} characters; keep it under {MAX_NAME}")
    return name or None


def _default_name(tree: ast.Module) -> str:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.FunctionDef) and b.name == "solve" for b in node.body):
            return node.name
    return "candidate"


def _check_betas(betas: Any, default: Sequence[float]) -> list[float]:
    if betas is None:
        return list(default)
    if isinstance(betas, int | float) and not isinstance(betas, bool):
        betas = [betas]
    if not isinstance(betas, list | tuple) or not betas:
        raise ToolInputError("betas must be a non-empty list of numbers in [0, 1], e.g. [0, 0.5, 1]")
    out = []
    for b in betas:
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or not 0.0 <= b <= 1.0:
            raise ToolInputError(f"betas must be numbers in [0, 1]; got {b!r}")
        out.append(float(b))
    out = sorted(set(out))
    if len(out) > MAX_BETAS:
        raise ToolInputError(f"at most {MAX_BETAS} β values per run, got {len(out)}")
    return out


def _check_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ToolInputError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _page(items: Sequence[Any], page: Any, page_size: int) -> tuple[list[Any], int, int]:
    pages = max(1, math.ceil(len(items) / page_size))
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ToolInputError(f"page must be an integer ≥ 1, got {page!r}")
    if page > pages:
        raise ToolInputError(f"page {page} does not exist; there are {pages} page(s)")
    return list(items[(page - 1) * page_size: page * page_size]), page, pages


def _page_to_fit(items: Sequence[Any], page: Any, page_size: int, size: Any) -> tuple[list[Any], int, int]:
    """`_page`, with the page size lowered until `size(chunk)` (the rendered characters) fits in MAX_CHARS."""
    while True:
        chunk, got, pages = _page(items, page, page_size)
        if size(chunk) <= MAX_CHARS or page_size == 1:
            return chunk, got, pages
        page_size = max(1, page_size * MAX_CHARS // size(chunk) - 1)


def _ranges(values: Sequence[int]) -> str:
    """`0..29` for a contiguous list, else the first few values."""
    v = list(values)
    if v == list(range(v[0], v[0] + len(v))):
        return f"{v[0]}..{v[-1]}"
    return ", ".join(map(str, v[:12])) + (", …" if len(v) > 12 else "")


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def _se(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _vs_cmc_text(p: BetaPoint) -> str:
    """`+0.32±0.40 noise`: accuracy minus CMC's at the same β, its SE, and whether it is within 2 SE."""
    if p.vs_cmc is None or p.vs_cmc_se is None:
        return "-"
    noise = abs(p.vs_cmc) < 2 * p.vs_cmc_se or p.vs_cmc == 0
    return f"{round(p.vs_cmc, 2) + 0.0:+.2f}±{p.vs_cmc_se:.2f} {'noise' if noise else 'real'}"  # + 0.0: no "-0.00"


def _short(value: Any, n: int = 30) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt_betas(betas: Sequence[float]) -> str:
    return "[" + ", ".join(f"{b:g}" for b in betas) + "]"


POSITION_LEGEND = ("dominated = a baseline is as accurate for no more tokens; frontier = acc − the baselines' "
                   "frontier at equal tokens; then the cheapest baseline at least as accurate and tokens vs it")


def _position_text(p: BetaPoint) -> str:
    """Where one β point lies against the baselines (`POSITION_LEGEND` says what each part compares)."""
    parts = ["dominated" if p.dominated else "undominated"]
    parts.append("below every baseline's tokens" if p.accuracy_gap is None
                 else f"frontier {round(p.accuracy_gap, 2) + 0.0:+.2f}")  # + 0.0: no "-0.00"
    if p.vs and p.tokens_saved is not None:
        parts.append(f"{p.vs} {0.0 - 100 * p.tokens_saved:+.0f}% tokens")  # 0.0 −: no "-0%"
    else:
        parts.append("no baseline as accurate")
    return "; ".join(parts)


def _render_table(t: Table) -> str:
    cells = [[str(c) for c in t.columns]] + [["-" if v is None else str(v) for v in r] for r in t.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(t.columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)




def _trim_traceback(tb: str | None) -> str | None:
    """The sandbox already keeps only the candidate's frames; cap what reaches the agent."""
    if not tb:
        return None
    lines = tb.rstrip().splitlines()
    if len(lines) > TRACEBACK_LINES:
        lines = lines[:2] + [f"  ... ({len(lines) - TRACEBACK_LINES} lines omitted) ..."] + lines[-(TRACEBACK_LINES - 2):]
    text = "\n".join(lines)
    return text if len(text) <= 2500 else text[:800] + "\n  ...\n" + text[-1600:]
