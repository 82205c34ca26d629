"""The discovery tools as plain functions over a `DiscoveryService`.

The MCP server (`mcp_server.server`) is a thin layer over these, and so is any other agent loop: each function
validates its arguments, raises `AutoTTSError` subclasses with one clear message for bad input, and returns a
pydantic model whose `text()` is the compact, readable form an agent reads (results stay a few KB: tables are
column lists plus rows, long things are paged).
"""

from __future__ import annotations

import ast
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from core.discovery.records import EpisodeArrays, Run, TraceKey
from core.discovery.service import SC64, DiscoveryService, Progress, ToolInputError
from core.discovery.store import RunStoreError, parse_run_id
from core.sandbox.reports import sandbox_summary
from mcp_server.checks import check_source

MAX_BETAS = 16
MAX_NAME = 80
TRACEBACK_LINES = 14


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


class BaselinePoint(BaseModel):
    label: str
    accuracy: float
    avg_tokens: float
    on_frontier: bool = False


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

    def text(self) -> str:
        out = [f"{self.run_id} '{self.name}': {self.summary}"]
        if self.error:
            out.append(f"Error: {self.error}")
        if self.traceback:
            out.append(self.traceback)
        if self.search_avg:
            out.append(f"Search average over {len(self.envs)} env(s):")
            out.append("  β     acc%    tokens   vs baseline frontier")
            for p in self.search_avg:
                out.append(f"  {p.beta:<5g} {p.accuracy:6.2f} {p.avg_tokens:9,.0f}   {_position_text(p)}")
            mono = "yes" if self.monotone else "NO: " + "; ".join(self.monotone_violations)
            out.append(f"Tokens monotone in β: {mono}")
        if self.per_env and len(self.envs) > 1:
            out.append("Per environment (acc% / tokens) by β " + _fmt_betas(self.betas) + ":")
            for row in self.per_env.rows:
                out.append(f"  {row[0]}: " + "  ".join(row[1:]))
        if self.baselines:
            out.append("Baselines (search avg; * = on frontier): " + " · ".join(
                f"{b.label}{'*' if b.on_frontier else ''} {b.accuracy:.2f}%/{b.avg_tokens:,.0f}" for b in self.baselines))
        tail = [f"{self.seconds:.1f} s"]
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
    env: str
    beta: float
    seed: int | None = None
    question: int | None = None
    summary: str
    table: Table
    page: int
    pages: int
    examples: list[list[int]] = Field([], description="[seed, question] pairs where SC@64 was right and the candidate wrong.")
    answer: str | None = None
    correct: bool | None = None
    tokens: int | None = None

    def text(self) -> str:
        out = [self.summary, _render_table(self.table)]
        if self.pages > 1:
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
    table: Table

    def text(self) -> str:
        head = f"{self.total} run(s), best first" + (" — an evaluation is running now" if self.busy else "")
        foot = f"(page {self.page} of {self.pages})" if self.pages > 1 else ""
        return "\n".join(x for x in (head, _render_table(self.table), foot) if x)


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
                   envs: Sequence[str] | None = None, progress: Progress | None = None) -> RunReport:
    """Evaluate candidate source on the search environments at each β; record it; report against the baselines."""
    tree = check_source(code)
    name = _check_name(name) or _default_name(tree)
    beta_list = _check_betas(betas, svc.study.betas)
    env_objs = svc.resolve_envs(envs)
    env_names = [e.name for e in env_objs]
    dup = svc.duplicate_of(code, beta_list, env_names)
    if dup is not None:
        report = report_for_run(svc, dup.run_id)
        report.duplicate_of = dup.run_id
        report.summary = f"identical source already evaluated as {dup.run_id}; its results: " + report.summary
        return report
    ev = svc.evaluate_candidate(code, name, beta_list, env_objs, progress)
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
                               on_frontier=p.label in frontier_labels) for p in svc.baseline_points(env_objs)]
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
    if summary.after_heldout:
        verdict += f" [{summary.after_heldout}]"
    return RunReport(status="ok", summary=verdict, search_avg=points, per_env=per_env, baselines=baselines,
                     monotone=summary.monotone, monotone_violations=summary.monotone_violations, **common)


def inspect_trace(svc: DiscoveryService, run_id: str | int, env: str | None = None, beta: float | None = None,
                  question: int | None = None, seed: int | None = None, page: int = 1,
                  page_size: int | None = None) -> TraceView:
    """Without `question`: a per-question digest of one (environment, β). With it: that episode's actions, paged."""
    rid = _run_id(run_id)
    run = svc.store.run(rid)
    if run.status == "error":
        raise ToolInputError(f"{run.run_id} failed ({run.error}); there is no trace to inspect. Fix the error "
                             "and call run_controller again")
    if run.status == "refused":
        raise ToolInputError(f"{run.run_id} was refused ({(run.error or '')[:200]}); refused runs cannot be inspected")
    if env is None:
        env = run.envs[0]
    svc.check_env_names([env])
    if env not in run.envs:
        raise ToolInputError(f"{run.run_id} was not evaluated on '{env}'; it ran on: {', '.join(run.envs)}")
    betas = list(run.betas)
    if beta is None:
        beta = 0.5 if 0.5 in betas else betas[len(betas) // 2]
    match = [b for b in betas if abs(b - float(beta)) < 1e-9]
    if not match:
        raise ToolInputError(f"{run.run_id} was not evaluated at β={beta:g}; its β values are {_fmt_betas(betas)}")
    beta = match[0]
    env_obj = svc.study.search_envs([env])[0]
    rows = svc.store.results(rid, env=env, beta=beta, with_episodes=True)
    ep = rows[0].episodes
    assert ep is not None
    sc = svc.baseline(env_obj, SC64).episodes
    assert sc is not None
    seeds = ep.seeds.tolist()
    if seed is not None and seed not in seeds:
        raise ToolInputError(f"seed {seed} is not one of this study's seeds (0..{len(seeds) - 1})")
    if question is None:
        return _digest(svc, run, env_obj, beta, ep, sc, seed, page, page_size)
    if not isinstance(question, int) or not 0 <= question < env_obj.n_questions:
        raise ToolInputError(f"question must be an index 0..{env_obj.n_questions - 1} of {env}, got {question!r}")
    return _episode(svc, run, env_obj, beta, ep, sc, question, seed, page, page_size)


def get_history(svc: DiscoveryService, page: int = 1, page_size: int = 20, include_failed: bool = True) -> History:
    """The leaderboard of earlier candidates, best first (accuracy first, then tokens), failed ones after."""
    board = svc.store.leaderboard(include_failed=include_failed)
    page_size = _check_int(page_size, "page_size", 1, 100)
    chunk, page, pages = _page(board, page, page_size)
    table = Table(columns=["run", "name", "status", "best_acc%", "tokens", "β", "monotone", "undominated", "error"],
                  rows=[[r.run_id, r.name[:40], r.status, r.best_accuracy,
                         None if r.tokens_at_best is None else round(r.tokens_at_best),
                         r.beta_at_best, r.monotone, r.on_frontier,
                         None if not r.error else r.error[:90]] for r in chunk])
    return History(total=len(board), page=page, pages=pages, busy=svc.busy_since is not None, table=table)


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
def _stop(opened: int, n_branches: int, ceiling: int) -> str:
    if opened >= n_branches:
        return "all"
    if opened >= ceiling:
        return "ceiling"
    return "early"


def _digest(svc: DiscoveryService, run: Run, env: Any, beta: float, ep: EpisodeArrays, sc: EpisodeArrays,
            seed: int | None, page: int, page_size: int | None) -> TraceView:
    page_size = _check_int(page_size if page_size is not None else 30, "page_size", 1, 200)
    ceiling = svc.study.max_branches
    n_q = env.n_questions
    lost_mask = sc.correct & ~ep.correct
    won_mask = ep.correct & ~sc.correct
    seeds = ep.seeds.tolist()
    if seed is not None:
        si = seeds.index(seed)
        columns = ["q", "correct", "sc64_correct", "tokens", "opened", "stop", "answer"]
        rows = [[q, bool(ep.correct[si, q]), bool(sc.correct[si, q]), int(ep.tokens[si, q]),
                 None if ep.opened is None else int(ep.opened[si, q]),
                 None if ep.opened is None else _stop(int(ep.opened[si, q]), env.n_branches(q), ceiling),
                 _short(ep.answers[si][q])] for q in range(n_q)]
        head = (f"{run.run_id} on {env.name}, β={beta:g}, seed {seed}: {int(ep.correct[si].sum())}/{n_q} correct, "
                f"{float(ep.tokens[si].mean()):,.0f} tokens/question (SC@64: {int(sc.correct[si].sum())}/{n_q}). "
                "Pass question= for the action-by-action trace.")
    else:
        columns = ["q", "acc%", "sc64%", "lost", "won", "tokens", "opened", "max_open", "stops", "top_answer"]
        rows = []
        for q in range(n_q):
            opened = None if ep.opened is None else ep.opened[:, q]
            stops = "?" if opened is None else ", ".join(
                f"{k} {v}" for k, v in Counter(_stop(int(o), env.n_branches(q), ceiling) for o in opened).most_common())
            answers = Counter(ep.answers[si][q] for si in range(len(seeds)))
            top, top_n = answers.most_common(1)[0]
            rows.append([q, round(100 * float(ep.correct[:, q].mean()), 1), round(100 * float(sc.correct[:, q].mean()), 1),
                         int(lost_mask[:, q].sum()), int(won_mask[:, q].sum()), round(float(ep.tokens[:, q].mean())),
                         None if opened is None else round(float(opened.mean()), 1),
                         None if opened is None else int(opened.max()), stops,
                         f"{_short(top, 16)} ({100 * top_n // len(seeds)}%)"])
        acc = 100 * float(ep.correct.mean())
        worst = np.argsort(-lost_mask.sum(axis=0), kind="stable")[:5]
        worst = [int(q) for q in worst if lost_mask[:, q].sum() > 0]
        head = (f"{run.run_id} on {env.name}, β={beta:g}: {acc:.2f}% at {float(ep.tokens.mean()):,.0f} tokens/question "
                f"over {len(seeds)} seeds; SC@64 {100 * float(sc.correct.mean()):.2f}% at "
                f"{float(sc.tokens.mean()):,.0f}. Lost {int(lost_mask.sum())} episodes SC@64 got right, won "
                f"{int(won_mask.sum())}" + (f"; most lost on questions {worst}" if worst else "") +
                ". stops: early = stopped on its own, ceiling = hit the branch cap, all = used every branch.")
    chunk, page, pages = _page(rows, page, page_size)
    examples = [[int(seeds[s]), int(q)] for s, q in zip(*np.nonzero(lost_mask), strict=True)][:8]
    return TraceView(run_id=run.run_id, kind="digest", env=env.name, beta=beta, seed=seed, summary=head,
                     table=Table(columns=columns, rows=chunk), page=page, pages=pages, examples=examples)


def _episode(svc: DiscoveryService, run: Run, env: Any, beta: float, ep: EpisodeArrays, sc: EpisodeArrays,
             q: int, seed: int | None, page: int, page_size: int | None) -> TraceView:
    page_size = _check_int(page_size if page_size is not None else 60, "page_size", 1, 300)
    seeds = ep.seeds.tolist()
    why = ""
    if seed is None:
        lost = [i for i in range(len(seeds)) if sc.correct[i, q] and not ep.correct[i, q]]
        wrong = [i for i in range(len(seeds)) if not ep.correct[i, q]]
        si = (lost or wrong or [0])[0]
        seed = seeds[si]
        why = (" (first seed where SC@64 was right and the candidate wrong)" if lost else
               " (first seed where the candidate was wrong)" if wrong else " (the candidate is right on every seed)")
    si = seeds.index(seed)
    trace = svc.trace_episode(run, env, TraceKey(env.name, beta, seed, q))
    answer, tokens, events = trace.answer, trace.tokens, trace.events
    note = ""
    if answer != ep.answers[si][q] or int(tokens) != int(ep.tokens[si, q]):
        note = (f" NOTE: this re-run answered {_short(answer)!r} with {tokens:,} tokens but the recorded run answered "
                f"{_short(ep.answers[si][q])!r} with {int(ep.tokens[si, q]):,}: the controller is not deterministic "
                "(seed any randomness with random.Random(fixed_seed)).")
    rows, cum = [], 0
    for i, (op, b, c, a) in enumerate(events):
        cum += c
        rows.append([i, op, b, c, None if a is None else _short(a, 24), cum])
    chunk, page, pages = _page(rows, page, page_size)
    opened = None if ep.opened is None else int(ep.opened[si, q])
    correct = bool(ep.correct[si, q])
    head = (f"{run.run_id} on {env.name}, β={beta:g}, seed {seed}{why}, question {q}: answered {_short(answer)!r} "
            f"({'correct' if correct else 'wrong'}; SC@64 {'right' if sc.correct[si, q] else 'wrong'}) with "
            f"{int(tokens):,} tokens, {len(events)} actions, {opened if opened is not None else '?'} branches opened."
            f"{note} Columns: action index, op (open=probe_new, step=probe_more, read=full read, branch/extend/probe/"
            "prune), branch, tokens charged, revealed answer, cumulative tokens.")
    return TraceView(run_id=run.run_id, kind="episode", env=env.name, beta=beta, seed=seed, question=q,
                     summary=head, table=Table(columns=["i", "op", "branch", "cost", "answer", "total"], rows=chunk),
                     page=page, pages=pages, answer=answer, correct=correct, tokens=int(tokens))


# ----- small helpers -----------------------------------------------------------------------------------------------
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


def _short(value: Any, n: int = 30) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt_betas(betas: Sequence[float]) -> str:
    return "[" + ", ".join(f"{b:g}" for b in betas) + "]"


def _position_text(p: BetaPoint) -> str:
    gap = "" if p.accuracy_gap is None else f"{p.accuracy_gap:+.2f} pts vs frontier"
    parts = ["dominated" if p.dominated else "undominated"]
    if gap:
        parts.append(gap)
    else:
        parts.append("cheaper than every baseline")
    if p.vs and p.tokens_saved is not None:
        saved = 100 * p.tokens_saved
        parts.append(f"saves {saved:.0f}% tokens vs {p.vs}" if saved >= 0 else f"{-saved:.0f}% more tokens than {p.vs}")
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
