"""The discovery service: one study, its run store, the baselines cache and the evaluation queue.

The MCP server, the `autotts discover` loop, `autotts heldout` and the TUI's demo study all drive a
`DiscoveryService`; tool logic lives in `mcp_server.tools` as plain functions over it. Every run it records is a
`core.discovery.records.Run` with a `RunSummary`, so all writers write the same shape. Evaluations are
serialised by a lock: the sandbox already uses every core, so a second `run_controller` waits its turn (and says
how long it waited) rather than competing.
Held-out environments are never loaded here except by `evaluate_heldout`, which only the CLI calls.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np

from core.compare import PooledComparison, compare_pooled
from core.discovery.records import (
    AuditReport,
    Baseline,
    BestPoint,
    BetaSummary,
    EpisodeArrays,
    FrontierPoint,
    HeldoutSummary,
    IsolationReport,
    ResultRow,
    Run,
    RunSummary,
    Scope,
    Trace,
    TraceKey,
)
from core.discovery.records import (
    LeaderboardEntry as StoreEntry,
)
from core.discovery.store import RunStore, source_sha256
from core.discovery.study import Study
from core.environment import ReplayEnvironment
from core.errors import AutoTTSError
from core.evaluate import EvalResult, evaluate, score
from core.load_note import measure
from core.objective import (
    CurvePoint,
    Leaderboard,
    LeaderboardEntry,
    Objective,
    curve_point,
    is_full_grid,
    leaderboard,
    mean_points,
    objective,
)
from core.progress import Progress as CellProgress
from core.stats import Point, frontier_position, pareto_frontier

log = logging.getLogger(__name__)

BASELINE_SPECS: tuple[tuple[str, str], ...] = (
    ("sc:n=64", "SC@64"), ("asc", "ASC"), ("esc", "ESC"), ("parallel-probe", "Parallel-Probe"))
"""(spec, label) of the fixed baselines of Table 1; CMC is added at every β of the study's grid."""
SC64 = "sc:n=64"

Progress = Callable[[float, float | None, str], None]
"""progress(done, total or None, message)."""


class ToolInputError(AutoTTSError):
    """Bad tool input (unknown run id, held-out environment, malformed argument): the message names the fix."""


def beta_label(beta: float) -> str:
    return f"beta={beta:g}"


def cmc_spec(beta: float) -> str:
    return f"cmc:beta={beta:g}"


@dataclass
class Evaluation:
    """What one run_controller call produced, before it is rendered for the agent."""

    run_id: int
    status: str
    name: str
    betas: list[float]
    envs: list[str]
    rows: list[ResultRow] = field(default_factory=list)
    summary: RunSummary | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    queued_s: float = 0.0
    isolation: IsolationReport | None = None
    audit: AuditReport | None = None
    stdout_tail: str | None = None


@dataclass(frozen=True)
class CompareSide:
    """One side of a comparison: a scored run, or a built-in controller run here on the search environments."""

    ref: str
    """The run id (`r0007`) or the built-in's spec (`cmc`, `sc:n=64`)."""
    label: str
    """The run's name, or the spec and how β is chosen."""
    envs: tuple[str, ...]
    """Environments it has results on."""
    betas: tuple[float, ...] | None
    """The β it was evaluated at; None for a built-in (run at whichever β is compared)."""
    seeds: tuple[int, ...]
    questions: tuple[int, ...] | None
    """Question indices evaluated (None: all; a quick run evaluates fewer)."""
    run: Run | None = None
    spec: str | None = None
    beta_free: bool = False
    """A built-in with a β option that the spec leaves open: it runs at the compared β."""


class DiscoveryService:
    """Everything the tools need: the study, its store, sandbox settings, baselines, and the evaluation lock."""

    def __init__(self, study: Study, *, store: RunStore | None = None, sandbox: ModuleType | Any | None = None,
                 settings: Any | None = None, clock: Callable[[], float] = time.time,
                 meter: Callable[[], Any] = measure):
        """`clock` gives the times recorded with each run and `meter` its timing and load note (the demo study
        fixes both, so that its screens do not depend on the machine)."""
        self.study = study
        self.store = store or RunStore(study.store_path)
        self._sandbox = sandbox
        self._settings = settings
        self.clock = clock
        self.meter = meter
        self._eval_lock = threading.Lock()
        self._busy_since: float | None = None
        self._baseline_lock = threading.Lock()
        self._baselines: dict[tuple[str, str], Baseline] = {}
        self._builtin_results: dict[tuple[str, str, tuple[int, ...]], EvalResult] = {}

    # ----- sandbox -------------------------------------------------------------------------------------------
    @property
    def sandbox(self) -> Any:
        if self._sandbox is None:
            try:
                import core.sandbox as sandbox
            except ImportError as e:  # pragma: no cover - the sandbox ships with the package
                raise AutoTTSError(f"the candidate sandbox (core.sandbox) is not available: {e}") from e
            self._sandbox = sandbox
        return self._sandbox

    @property
    def settings(self) -> Any:
        if self._settings is None:
            box = self.study.sandbox
            cls = self.sandbox.SandboxSettings
            known = getattr(cls, "__dataclass_fields__", None) or getattr(cls, "model_fields", None) or box
            self._settings = cls(**{k: v for k, v in box.items() if k in known})
        return self._settings

    # ----- environments ----------------------------------------------------------------------------------------
    def resolve_envs(self, names: Sequence[str] | None) -> list[ReplayEnvironment]:
        """Search environments by name (all when None); held-out or unknown names raise ToolInputError."""
        if names is None or len(names) == 0:
            return self.study.search_envs()
        self.check_env_names(names)
        return self.study.search_envs(list(dict.fromkeys(names)))

    def check_env_names(self, names: Sequence[str]) -> None:
        for n in names:
            if not isinstance(n, str):
                raise ToolInputError(f"environment names are strings, got {type(n).__name__}; see list_environments")
            if n in self.study.heldout_names:
                raise ToolInputError(
                    f"'{n[:80]}' is a held-out environment: held-out environments are never evaluated, listed or "
                    "traced through these tools (a person evaluates finished candidates on them with `autotts "
                    "heldout`). Use a search environment from list_environments")
            if n not in self.study.search_names:
                raise ToolInputError(f"unknown environment '{n[:80]}'; the search environments are: "
                                     + ", ".join(self.study.search_names))

    # ----- baselines -------------------------------------------------------------------------------------------
    def baseline_specs(self) -> list[tuple[str, str]]:
        return list(BASELINE_SPECS) + [(cmc_spec(b), f"CMC β={b:g}") for b in self.study.betas]

    def baseline(self, env: ReplayEnvironment, spec: str) -> Baseline:
        """A built-in's result (with episodes) on a search environment; cached in memory and the store."""
        key = (env.name, spec)
        got = self._baselines.get(key)
        if got is not None:
            return got
        with self._baseline_lock:
            got = self._baselines.get(key)
            if got is not None:
                return got
            entry = self.study.entry(env.name)
            env_key = self.study.fingerprint(entry) if entry else env.name
            seeds_key = f"range({self.study.n_seeds})"
            got = self.store.baseline(env_key, spec, seeds_key, with_episodes=True)
            if got is None:
                res = evaluate(env, spec, self.study.seeds)
                got = Baseline(res.accuracy, res.avg_tokens,
                               EpisodeArrays(res.seeds, res.answers, res.tokens, res.correct, None))
                self.store.record_baseline(env_key, env.name, spec, seeds_key, got)
            self._baselines[key] = got
            return got

    def baseline_points(self, envs: Sequence[ReplayEnvironment], scope: Scope | None = None) -> list[Point]:
        """Search-set average of each baseline setting over `envs` (on a quick run's seeds and questions when
        `scope` is given)."""
        points = []
        for spec, label in self.baseline_specs():
            vals = [self.baseline_result(e, spec, scope) for e in envs]
            points.append(Point(float(np.mean([v.avg_tokens for v in vals])),
                                round(float(np.mean([v.accuracy for v in vals])), 2), label))
        return points

    def baseline_result(self, env: ReplayEnvironment, spec: str, scope: Scope | None = None) -> EvalResult:
        """A built-in's episodes on a search environment as an EvalResult, restricted to `scope` if given."""
        ep = self.baseline(env, spec).episodes
        assert ep is not None, "baselines are cached with their episodes"
        if scope is not None:
            ep = ep.select(scope.seeds, scope.questions)
        return ep.as_result(env.name, spec)

    # ----- evaluation ------------------------------------------------------------------------------------------
    @property
    def busy_since(self) -> float | None:
        return self._busy_since

    def scope(self, seeds: int | None = None, questions: Sequence[int] | None = None) -> Scope | None:
        """The scope of a quick run on the first `seeds` seeds and the given question indices (None: a full run).
        Raises ToolInputError for a bad count or index."""
        n = self.study.n_seeds
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= n):
            raise ToolInputError(f"seeds must be a count in 1..{n} (the first seeds of the study's {n}), got {seeds!r}")
        qs: list[int] | None = None
        if questions is not None:
            fewest = min(e.n_questions for e in self.study.search_envs())
            if not isinstance(questions, list | tuple) or not questions or any(
                    isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < fewest for q in questions):
                raise ToolInputError(f"questions must be a non-empty list of question indices 0..{fewest - 1}, got "
                                     f"{str(questions)[:80]}")
            qs = sorted(set(questions))
        if (seeds is None or seeds == n) and qs is None:
            return None
        return Scope(seeds=list(self.study.seeds)[: seeds or n], questions=qs, full_seeds=n)

    def evaluate_candidate(self, code: str, name: str, betas: Sequence[float], envs: Sequence[ReplayEnvironment],
                           progress: Progress | None = None, scope: Scope | None = None) -> Evaluation:
        """Run a (pre-checked) candidate in the sandbox on the search environments and record it in one transaction.
        With `scope`, a quick run on those seeds and questions only."""
        report = progress or (lambda d, t, m: None)
        queued_at = self.clock()
        if self._eval_lock.locked():
            report(0, None, "queued: another evaluation is running; this one starts when it ends")
        with self._eval_lock:
            started = self.clock()
            self._busy_since = started
            try:
                ev = self._evaluate_locked(code, name, list(betas), list(envs), report, started, scope)
            finally:
                self._busy_since = None
        ev.queued_s = round(started - queued_at, 3)
        return ev

    def _evaluate_locked(self, code: str, name: str, betas: list[float], envs: list[ReplayEnvironment],
                         report: Progress, started: float, scope: Scope | None) -> Evaluation:
        env_names = [e.name for e in envs]
        last = [0.0]
        n_seeds = self.study.n_seeds if scope is None else len(scope.seeds)
        n_units = len(envs) * len(betas) * n_seeds  # cells; the audit adds a few more
        seen_total = [float(n_units)]

        def publish(state: str, done: float, message: str, total: float | None = None) -> None:
            try:  # live viewers (the TUI) read this; a full disk must not fail the evaluation
                self.study.write_progress(run=name, state=state, started=started, done=int(done),
                                          total=int(total or n_units), unit="cells (environment × β × seed)",
                                          message=message)
            except OSError as e:
                log.warning("could not write %s: %s", self.study.progress_path, e)

        def on_progress(p: CellProgress) -> None:
            now = time.monotonic()
            total = seen_total[0] = p.total or n_units
            if now - last[0] >= 0.5 or p.done >= total:
                last[0] = now
                message = f"{int(p.done)}/{int(total)} cells (environment × β × seed, audit copies included)"
                report(p.done, total, message)
                publish("running", p.done, message, total)

        report(0, None, f"evaluating on {len(envs)} environment(s) × {len(betas)} β")
        publish("running", 0, f"evaluating on {len(envs)} environment(s) × {len(betas)} β")
        log.info("evaluating %s on %d environment(s) × %d β", name, len(envs), len(betas))
        try:
            ev = self._run_and_record(code, name, betas, envs, env_names, on_progress, started, scope)
        except BaseException:
            publish("error", 0, "the evaluation stopped")
            raise
        publish("done" if ev.status == "ok" else "error", seen_total[0], f"{ev.status}: {ev.error or 'recorded'}",
                seen_total[0])
        log.info("recorded %s as run %s (%s) in %.1f s", name, ev.run_id, ev.status, ev.seconds or 0.0)
        return ev

    def _run_and_record(self, code: str, name: str, betas: list[float], envs: list[ReplayEnvironment],
                        env_names: list[str], on_progress: Callable[[CellProgress], None], started: float,
                        scope: Scope | None) -> Evaluation:
        # Baselines first (in-process, compiled, ~0.05 s each, cached): they never see candidate code.
        for env in envs:
            for spec, _ in self.baseline_specs():
                self.baseline(env, spec)
        # A question subset keeps each question's episodes exact: a shuffle depends only on the seed and the
        # question's branch count, never on its position.
        run_envs = envs if scope is None or scope.questions is None else [e.subset(scope.questions) for e in envs]
        seeds = self.study.seeds if scope is None else scope.seeds
        with self.meter() as timing:
            run = self.sandbox.run_candidate(code, run_envs, [{"beta": b} for b in betas], seeds=seeds,
                                             settings=self.settings, progress=on_progress)
        load = timing.note(episodes=len(betas) * len(list(seeds)) * sum(e.n_questions for e in run_envs))
        seconds = float(getattr(run, "seconds", 0.0) or (self.clock() - started))
        isolation, audit = run.isolation, run.audit
        stdout_tail = getattr(run, "stdout_tail", None) or None
        base = dict(name=name, source=code, created=started, betas=betas, envs=env_names, isolation=isolation,
                    audit=audit, seconds=seconds, stdout_tail=stdout_tail)
        error: str | None
        if not run.ok:
            error = _with_hint(run.error or "the evaluation failed", isolation and isolation.ended_by)
            rid = self.store.record_run(Run(status="error", finished=self.clock(), error=error,
                                            traceback=run.traceback, **base))
            return Evaluation(rid, "error", name, betas, env_names, error=error,
                              traceback=run.traceback, seconds=seconds, isolation=isolation, audit=audit,
                              stdout_tail=stdout_tail)
        rows = self._result_rows(run, run_envs, betas, "search")
        status: str = "ok"
        error = None
        if audit is not None and not audit.passed:
            status, error = "refused", _audit_refusal(audit)
        over = [(r.env, r.beta, r.max_opened) for r in rows
                if r.max_opened is not None and r.max_opened > self.study.max_branches]
        if status == "ok" and over:
            env_name, b, n = over[0]
            status = "refused"
            error = (f"opened {n} branches on one question ({env_name}, β={b:g}); the ceiling is "
                     f"{self.study.max_branches} per question. Cap the branches your controller opens "
                     f"(count probe_new / branch / get_new_branch_final_answer calls)")
        summary = replace(self.summarise(rows, envs, betas, scope), load=load)
        held = self.store.first_heldout()
        if held is not None:
            summary = replace(summary, after_heldout=(
                f"recorded after the held-out evaluation of {held[0]} "
                f"({time.strftime('%Y-%m-%d %H:%M', time.localtime(held[1]))})"))
        if status == "refused":  # keep what a person needs to see why, not every episode's answers
            rows = [replace(r, episodes=None) for r in rows]
        rid = self.store.record_run(Run(status=status, finished=self.clock(), error=error, summary=summary,
                                        **base), rows)
        return Evaluation(rid, status, name, betas, env_names, rows, summary, error, None, seconds,
                          isolation=isolation, audit=audit, stdout_tail=stdout_tail)

    @staticmethod
    def _result_rows(run: Any, envs: Sequence[ReplayEnvironment], betas: Sequence[float], split: str
                     ) -> list[ResultRow]:
        """Score a sandbox run's episodes against the environments (the sandbox never sees gold answers)."""
        rows = []
        for env in envs:
            for b in betas:
                label = beta_label(b)
                res = score(env, run.results[(env.name, label)], controller=label)
                opened = run.opened.get((env.name, label)) if getattr(run, "opened", None) else None
                max_opened = int(np.max(opened)) if opened is not None and np.size(opened) else None
                ep = EpisodeArrays(res.seeds, res.answers, res.tokens, res.correct,
                                   None if opened is None else np.asarray(opened, dtype=np.int32))
                rows.append(ResultRow(env.name, b, res.accuracy, res.avg_tokens, ep, split, max_opened))
        return rows

    def summarise(self, rows: Sequence[ResultRow], envs: Sequence[ReplayEnvironment], betas: Sequence[float],
                  scope: Scope | None = None) -> RunSummary:
        """Search averages per β with their standard errors over seeds, their frontier position against the
        baselines and their gap to CMC at the same β, monotonicity, the best point and the objective, all on the
        run's seeds and questions (`scope`)."""
        frontier = pareto_frontier(self.baseline_points(envs, scope))
        per_beta = _per_beta(rows, betas, frontier)
        by = {(r.env, r.beta): r for r in rows}
        violations = []
        for e in envs:
            violations += monotone_violations(e.name, [(b, by[(e.name, b)].avg_tokens) for b in betas])
        violations += monotone_violations("search average", [(p.beta, p.avg_tokens) for p in per_beta])
        best = max(per_beta, key=lambda p: (p.accuracy, -p.avg_tokens))
        obj = None
        if all(r.episodes is not None for r in rows):  # rows of a demo study may come without episodes
            results = {b: [_result(by[(e.name, b)], f"beta={b:g}") for e in envs] for b in betas}
            obj, curve = self.objective(results, envs, scope)
            per_beta = [self._with_errors(p, c, results[p.beta], envs, scope)
                        for p, c in zip(per_beta, curve, strict=True)]
        return RunSummary(
            per_beta=per_beta,
            best=BestPoint(best.beta, best.accuracy, best.avg_tokens),
            monotone=not violations,
            monotone_violations=violations[:6],
            on_frontier=sum(1 for p in per_beta if not p.dominated),
            above_frontier=sum(1 for p in per_beta if (p.accuracy_gap or 0) > 0),
            frontier=[FrontierPoint(p.label, p.accuracy, round(p.tokens, 1)) for p in frontier],
            objective=obj, scope=scope,
        )

    def objective(self, results: dict[float, list[EvalResult]], envs: Sequence[ReplayEnvironment],
                  scope: Scope | None = None) -> tuple[Objective, list[CurvePoint]]:
        """A run's β curve (per β, one result per environment), averaged over the environments with equal weight,
        scored against SC@64 and CMC's β curve on the same environments, seeds and questions. Returns the
        objective and the curve, in β order."""
        return objective_of(results, [self.baseline_result(e, SC64, scope) for e in envs],
                            {b: [self.baseline_result(e, cmc_spec(b), scope) for e in envs] for b in self.study.betas})

    def _with_errors(self, summary: BetaSummary, point: CurvePoint, results: list[EvalResult],
                     envs: Sequence[ReplayEnvironment], scope: Scope | None) -> BetaSummary:
        """One β's averages with their standard errors over seeds and its accuracy gap to CMC at that β, paired."""
        out = replace(summary, accuracy_se=_round(point.accuracy_se, 3), tokens_se=_round(point.tokens_se, 1))
        if point.beta in self.study.betas:
            cmc = [self.baseline_result(e, cmc_spec(point.beta), scope) for e in envs]
            test = compare_pooled(list(zip(results, cmc, strict=True))).accuracy
            out = replace(out, vs_cmc=round(test.diff, 3), vs_cmc_se=round(test.se, 3))
        return out

    def run_objective(self, run: Run) -> Objective | None:
        """A scored run's objective: as recorded, or (runs of an earlier release) from its recorded search averages
        and the baselines' on the same environments. None for a run without a summary."""
        summary = run.summary
        if summary is None:
            return None
        if summary.objective is not None:
            return summary.objective
        points = {p.label: p for p in self.baseline_points(self.study.search_envs(run.envs))}
        sc = points[next(label for spec, label in BASELINE_SPECS if spec == SC64)]
        cmc = [CurvePoint(points[f"CMC β={b:g}"].accuracy, points[f"CMC β={b:g}"].tokens, b) for b in self.study.betas]
        curve = [CurvePoint(p.accuracy, p.avg_tokens, p.beta) for p in summary.per_beta]
        return objective(curve, CurvePoint(sc.accuracy, sc.tokens), cmc)

    def leaderboard(self, *, include_failed: bool = True) -> tuple[Leaderboard, list[StoreEntry]]:
        """Scored runs ranked by the objective (`core.objective.leaderboard`: full-grid runs on every search
        environment with the full seeds and questions, ranked; probes and quick runs apart), and the failed and
        refused runs (newest first; empty unless `include_failed`)."""
        search = set(self.study.search_names)
        entries, failed = [], []
        for r in self.store.leaderboard(include_failed=include_failed):
            run = self.store.run(r.id, with_source=False)
            obj = self.run_objective(run) if r.best_accuracy is not None else None
            if obj is None or run.summary is None:
                failed.append(r)
                continue
            entries.append(LeaderboardEntry(
                run_id=r.run_id, objective=obj, label=r.name, full_seeds=not run.summary.quick,
                full_grid=is_full_grid(run.betas, self.study.betas) and set(run.envs) == search))
        return leaderboard(entries), failed

    def run_side(self, run: Run) -> CompareSide:
        """A scored run as one side of a comparison."""
        scope = run.summary.scope if run.summary else None
        return CompareSide(ref=run.run_id, label=run.name, envs=tuple(run.envs), betas=tuple(run.betas),
                           seeds=tuple(self.study.seeds if not scope else scope.seeds),
                           questions=None if not scope or scope.questions is None else tuple(scope.questions),
                           run=run)

    def builtin_side(self, spec: str) -> CompareSide:
        """A built-in controller (`cmc`, `sc:n=64`, `one-batch:beta=0.3`) as one side of a comparison, run here on
        the search environments and the study's seeds. One without a β option (`cmc`) is compared at the other
        side's β; one without β at all (`sc`) is the same at every β."""
        from core.controllers import BUILTINS, parse_spec

        specs = parse_spec(spec)
        if len(specs) != 1 or specs[0].name not in BUILTINS:
            raise ToolInputError(f"'{spec}' is not one built-in setting; write e.g. cmc, sc:n=64 or cmc:beta=0.3")
        fixed = specs[0]
        options = {f.name for f in dataclasses.fields(BUILTINS[fixed.name])}  # type: ignore[arg-type]  # dataclasses
        beta_free = "beta" in options and "beta" not in dict(fixed.args)
        return CompareSide(ref=str(fixed), label=str(fixed) + (" at each β" if beta_free else ""),
                           envs=tuple(self.study.search_names), betas=None, seeds=tuple(self.study.seeds),
                           questions=None, spec=str(fixed), beta_free=beta_free)

    def compare(self, side_a: CompareSide, side_b: CompareSide, envs: Sequence[str], beta: float
                ) -> PooledComparison:
        """Two sides at one β on the given environments, paired on the seeds and questions both evaluated."""
        b_seeds = set(side_b.seeds)
        seeds = [s for s in side_a.seeds if s in b_seeds]
        pairs, commons = [], []
        for env in self.study.search_envs(list(envs)):
            all_q = list(range(env.n_questions))
            qa = all_q if side_a.questions is None else list(side_a.questions)
            qb = set(all_q if side_b.questions is None else side_b.questions)
            common = [q for q in qa if q in qb]
            if not seeds or not common:
                raise ToolInputError(f"{side_a.ref} and {side_b.ref} share no seeds and questions to compare")
            commons.append(common)
            pairs.append(tuple(self._episodes(side, env, beta, seeds, common).as_result(env.name, side.ref)
                               for side in (side_a, side_b)))
        pooled = compare_pooled(pairs)  # type: ignore[arg-type]
        # compare_arrays numbers questions by position; name them by their index in the environment
        return replace(pooled, per_env=tuple(
            replace(c, questions=tuple(replace(d, question=common[d.question]) for d in c.questions))
            for c, common in zip(pooled.per_env, commons, strict=True)))

    def _episodes(self, side: CompareSide, env: ReplayEnvironment, beta: float, seeds: Sequence[int],
                  questions: Sequence[int]) -> EpisodeArrays:
        """A side's episodes at (env, β) on the given seeds and (original) question indices."""
        if side.run is None:
            assert side.spec is not None
            spec = f"{side.spec}{',' if ':' in side.spec else ':'}beta={beta:g}" if side.beta_free else side.spec
            key = (spec, env.name, tuple(seeds))
            if key not in self._builtin_results:
                self._builtin_results[key] = evaluate(env, spec, seeds)
            r = self._builtin_results[key]
            return EpisodeArrays(np.asarray(r.seeds), r.answers, r.tokens, r.correct).select(questions=questions)
        run = side.run
        assert run.id is not None
        row = self.store.results(run.id, env=env.name, beta=beta, with_episodes=True)[0]
        assert row.episodes is not None, "scored runs keep their episodes"
        index = list(range(row.episodes.tokens.shape[1])) if side.questions is None else list(side.questions)
        return row.episodes.select(seeds, [index.index(q) for q in questions])

    def trace_episode(self, run: Run, env: ReplayEnvironment, key: TraceKey) -> Trace:
        """One episode's actions: recorded earlier, or re-run in the sandbox now and recorded."""
        assert run.id is not None and run.source is not None
        cached = self.store.trace(run.id, key)
        if cached is not None:
            return cached
        answer, tokens, events = self.sandbox.trace_episode(run.source, env, {"beta": key.beta}, key.seed,
                                                            key.question, self.settings)
        trace = Trace(answer, int(tokens), [[str(op), int(b), int(c), a] for op, b, c, a in events])
        self.store.record_trace(run.id, key, trace)
        return trace

    def duplicate_of(self, code: str, betas: Sequence[float], env_names: Sequence[str],
                     scope: Scope | None = None) -> Run | None:
        """An earlier scored run of the same source on the same β, environments, seeds and questions, if any."""
        for run in reversed(self.store.find_by_sha(source_sha256(code))):
            if run.status in ("ok", "refused") and sorted(run.betas) == sorted(betas) \
                    and list(run.envs) == list(env_names) and (run.summary and run.summary.scope) == scope:
                return run
        return None

    # ----- held-out (CLI only) ---------------------------------------------------------------------------------
    def evaluate_heldout(self, run_id: int, progress: Progress | None = None) -> dict[str, Any]:
        """Evaluate a recorded candidate on the held-out environments (never reachable from the MCP tools)."""
        if not self.study.heldout:
            raise AutoTTSError("this study has no held-out environments; create it with --heldout PATH")
        run = self.store.run(run_id)
        assert run.id is not None and run.source is not None
        if run.status != "ok":
            raise AutoTTSError(f"{run.run_id} has status '{run.status}' ({run.error}); "
                               "only scored runs can be evaluated on held-out environments")
        envs = self.study.heldout_envs()
        betas = list(run.betas)
        report = progress or (lambda d, t, m: None)
        # Its own time limit, scaled from the search limit by the work it holds; its output is discarded, so
        # nothing a candidate prints while it holds held-out cells can reach an agent.
        scale = max(1.0, len(envs) / max(1, len(self.study.search)))
        settings = replace(self.settings, keep_output=False, timeout_s=self.settings.timeout_s * scale)
        with self._eval_lock:
            out = self.sandbox.run_candidate(run.source, envs, [{"beta": b} for b in betas],
                                             seeds=self.study.seeds, settings=settings,
                                             progress=lambda p: report(p.done, p.total, "held-out"))
        if not out.ok:
            raise AutoTTSError(f"{run.run_id} failed on the held-out environments: {out.error}")
        if not out.audit.passed:
            raise AutoTTSError(f"{run.run_id} failed the integrity audit on the held-out environments: "
                               + _audit_refusal(out.audit))
        rows = self._result_rows(out, envs, betas, "heldout")
        baselines: dict[str, list[EvalResult]] = {}
        for env in envs:
            for spec, _ in self.baseline_specs():
                baselines.setdefault(spec, []).append(evaluate(env, spec, self.study.seeds))
        points = [Point(float(np.mean([r.avg_tokens for r in baselines[spec]])),
                        round(float(np.mean([r.accuracy for r in baselines[spec]])), 2), label)
                  for spec, label in self.baseline_specs()]
        by = {(r.env, r.beta): r for r in rows}
        obj, _ = objective_of({b: [_result(by[(e.name, b)], f"beta={b:g}") for e in envs] for b in betas},
                              baselines[SC64], {b: baselines[cmc_spec(b)] for b in self.study.betas})
        summary = HeldoutSummary(
            envs=[e.name for e in envs], per_beta=_per_beta(rows, betas, pareto_frontier(points)),
            baselines=[FrontierPoint(p.label, p.accuracy, round(p.tokens, 1)) for p in points],
            evaluated=self.clock(), objective=obj)
        self.store.record_heldout(run.id, rows, summary)
        return {"run_id": run.run_id, "name": run.name,
                "per_env": [{"env": r.env, "beta": r.beta, "accuracy": r.accuracy,
                             "avg_tokens": round(r.avg_tokens, 1)} for r in rows], **summary.to_dict()}


def objective_of(results: dict[float, list[EvalResult]], sc64: list[EvalResult],
                 cmc: dict[float, list[EvalResult]]) -> tuple[Objective, list[CurvePoint]]:
    """The objective of a β curve given per β one result per environment, SC@64's results and CMC's per β on the
    same environments (equal weight per environment). Returns it with the candidate's mean curve in β order."""
    curve = [mean_points([curve_point(r, beta=b) for r in results[b]]) for b in sorted(results)]
    cmc_curve = [mean_points([curve_point(r, beta=b) for r in cmc[b]]) for b in sorted(cmc)]
    return objective(curve, mean_points([curve_point(r, label="SC@64") for r in sc64]), cmc_curve), curve


def _result(row: ResultRow, label: str) -> EvalResult:
    assert row.episodes is not None
    return row.episodes.as_result(row.env, label)


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def monotone_violations(where: str, curve: Sequence[tuple[float, float]]) -> list[str]:
    """Where mean tokens fall as β rises along one (β, tokens) curve, in words. A run is *monotone* when no
    search environment and not the search average has any (`RunSummary.monotone`)."""
    seq = sorted(curve)
    return [f"{where}: β {b0:g}→{b1:g} tokens {t0:,.0f}→{t1:,.0f}"
            for (b0, t0), (b1, t1) in zip(seq, seq[1:], strict=False) if t1 < t0]


def _per_beta(rows: Sequence[ResultRow], betas: Sequence[float], frontier: Sequence[Point]) -> list[BetaSummary]:
    """Averages over the environments per β, each placed against the baselines' frontier."""
    out = []
    for b in betas:
        sel = [r for r in rows if r.beta == b]
        acc = round(float(np.mean([r.accuracy for r in sel])), 2)
        tok = float(np.mean([r.avg_tokens for r in sel]))
        out.append(BetaSummary(b, acc, round(tok, 1), **_compact_position(frontier_position(tok, acc, frontier))))
    return out


def _compact_position(pos: dict[str, Any]) -> dict[str, Any]:
    """frontier_position's dict, trimmed to what an agent needs."""
    cheapest = pos.get("cheapest_baseline_at_least_as_accurate")
    return {
        "dominated": bool(pos.get("dominated")),
        "accuracy_gap": pos.get("accuracy_gap"),
        "vs": None if not cheapest else cheapest.get("label"),
        "tokens_saved": pos.get("tokens_saved_vs_that_baseline"),
    }


_HINTS = {
    "timeout": " — does solve() return on every question? The limit covers the whole evaluation (every environment "
               "and β, plus the audit); pass fewer betas or envs for quick checks",
    "SIGXCPU": " — does solve() return on every question? Loops must end when branches run out",
    "oom": " — keep per-question state small; the sandbox limits memory",
}


def _with_hint(error: str, ended_by: str | None) -> str:
    hint = _HINTS.get(ended_by or "")
    if hint is None and "memory limit" in error:
        hint = _HINTS["oom"]
    return error + (hint or "")


def _audit_refusal(audit: AuditReport) -> str:
    """Why a run whose integrity audit failed is refused, naming the first offending episode."""
    if audit.error:
        return (f"the integrity audit could not complete ({str(audit.error)[:300]}), so the score is refused. "
                "The audit re-runs episodes in a worker that holds no replay data; make sure the controller only "
                "calls the question's public methods")
    first = ""
    if audit.mismatches:
        m = audit.mismatches[0]
        first = (f" First: {m.env} {m.options} seed {m.seed} question {m.question}: "
                 f"{str(m.reason)[:200]}.")
    return (f"audit failed: {len(audit.mismatches)} of {audit.checked} episodes acted differently when their "
            "cell was run a second time in a fresh worker, which means the controller is not deterministic "
            f"(unseeded randomness, timing) or carries state from outside the episode.{first} Its score is "
            "refused; decide only from what the question's methods return, and seed any randomness")
