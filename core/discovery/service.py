"""The discovery service: one study, its run store, the baselines cache and the evaluation queue.

The MCP server, the `autotts discover` loop, `autotts heldout` and the TUI's demo study all drive a
`DiscoveryService`; tool logic lives in `mcp_server.tools` as plain functions over it. Every run it records is a
`core.discovery.records.Run` with a `RunSummary`, so all writers write the same shape. Evaluations are
serialised by a lock: the sandbox already uses every core, so a second `run_controller` waits its turn (and says
how long it waited) rather than competing.
Held-out environments are never loaded here except by `evaluate_heldout`, which only the CLI calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np

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
    Trace,
    TraceKey,
)
from core.discovery.store import RunStore, source_sha256
from core.discovery.study import Study
from core.environment import ReplayEnvironment
from core.errors import AutoTTSError
from core.evaluate import evaluate, score
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


class DiscoveryService:
    """Everything the tools need: the study, its store, sandbox settings, baselines, and the evaluation lock."""

    def __init__(self, study: Study, *, store: RunStore | None = None, sandbox: ModuleType | Any | None = None,
                 settings: Any | None = None, clock: Callable[[], float] = time.time):
        """`clock` gives the times recorded with each run (the demo study fixes them)."""
        self.study = study
        self.store = store or RunStore(study.store_path)
        self._sandbox = sandbox
        self._settings = settings
        self.clock = clock
        self._eval_lock = threading.Lock()
        self._busy_since: float | None = None
        self._baseline_lock = threading.Lock()
        self._baselines: dict[tuple[str, str], Baseline] = {}

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

    def baseline_points(self, envs: Sequence[ReplayEnvironment]) -> list[Point]:
        """Search-set average of each baseline setting over `envs`."""
        points = []
        for spec, label in self.baseline_specs():
            vals = [self.baseline(e, spec) for e in envs]
            points.append(Point(float(np.mean([v.avg_tokens for v in vals])),
                                round(float(np.mean([v.accuracy for v in vals])), 2), label))
        return points

    # ----- evaluation ------------------------------------------------------------------------------------------
    @property
    def busy_since(self) -> float | None:
        return self._busy_since

    def evaluate_candidate(self, code: str, name: str, betas: Sequence[float], envs: Sequence[ReplayEnvironment],
                           progress: Progress | None = None) -> Evaluation:
        """Run a (pre-checked) candidate in the sandbox on the search environments and record it in one transaction."""
        report = progress or (lambda d, t, m: None)
        queued_at = self.clock()
        if self._eval_lock.locked():
            report(0, None, "queued: another evaluation is running; this one starts when it ends")
        with self._eval_lock:
            started = self.clock()
            self._busy_since = started
            try:
                ev = self._evaluate_locked(code, name, list(betas), list(envs), report, started)
            finally:
                self._busy_since = None
        ev.queued_s = round(started - queued_at, 3)
        return ev

    def _evaluate_locked(self, code: str, name: str, betas: list[float], envs: list[ReplayEnvironment],
                         report: Progress, started: float) -> Evaluation:
        env_names = [e.name for e in envs]
        last = [0.0]
        n_units = len(envs) * len(betas) * self.study.n_seeds  # cells; the audit adds a few more
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
            ev = self._run_and_record(code, name, betas, envs, env_names, on_progress, started)
        except BaseException:
            publish("error", 0, "the evaluation stopped")
            raise
        publish("done" if ev.status == "ok" else "error", seen_total[0], f"{ev.status}: {ev.error or 'recorded'}",
                seen_total[0])
        log.info("recorded %s as run %s (%s) in %.1f s", name, ev.run_id, ev.status, ev.seconds or 0.0)
        return ev

    def _run_and_record(self, code: str, name: str, betas: list[float], envs: list[ReplayEnvironment],
                        env_names: list[str], on_progress: Callable[[CellProgress], None], started: float
                        ) -> Evaluation:
        # Baselines first (in-process, compiled, ~0.05 s each, cached): they never see candidate code.
        for env in envs:
            for spec, _ in self.baseline_specs():
                self.baseline(env, spec)
        run = self.sandbox.run_candidate(code, envs, [{"beta": b} for b in betas], seeds=self.study.seeds,
                                         settings=self.settings, progress=on_progress)
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
        rows = self._result_rows(run, envs, betas, "search")
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
        summary = self.summarise(rows, envs, betas)
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

    def summarise(self, rows: Sequence[ResultRow], envs: Sequence[ReplayEnvironment], betas: Sequence[float]
                  ) -> RunSummary:
        """Search averages per β, their frontier position against the baselines, monotonicity, best point."""
        frontier = pareto_frontier(self.baseline_points(envs))
        per_beta = _per_beta(rows, betas, frontier)
        by = {(r.env, r.beta): r for r in rows}
        violations = []
        for e in envs:
            violations += monotone_violations(e.name, [(b, by[(e.name, b)].avg_tokens) for b in betas])
        violations += monotone_violations("search average", [(p.beta, p.avg_tokens) for p in per_beta])
        best = max(per_beta, key=lambda p: (p.accuracy, -p.avg_tokens))
        return RunSummary(
            per_beta=per_beta,
            best=BestPoint(best.beta, best.accuracy, best.avg_tokens),
            monotone=not violations,
            monotone_violations=violations[:6],
            on_frontier=sum(1 for p in per_beta if not p.dominated),
            above_frontier=sum(1 for p in per_beta if (p.accuracy_gap or 0) > 0),
            frontier=[FrontierPoint(p.label, p.accuracy, round(p.tokens, 1)) for p in frontier],
        )

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

    def duplicate_of(self, code: str, betas: Sequence[float], env_names: Sequence[str]) -> Run | None:
        """An earlier scored run of the same source on the same β and environments, if any."""
        for run in reversed(self.store.find_by_sha(source_sha256(code))):
            if run.status in ("ok", "refused") and sorted(run.betas) == sorted(betas) \
                    and list(run.envs) == list(env_names):
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
        baselines: dict[str, list[tuple[float, float]]] = {}
        for env in envs:
            for spec, label in self.baseline_specs():
                r = evaluate(env, spec, self.study.seeds)
                baselines.setdefault(label, []).append((r.accuracy, r.avg_tokens))
        points = [Point(float(np.mean([t for _, t in v])), round(float(np.mean([a for a, _ in v])), 2), k)
                  for k, v in baselines.items()]
        summary = HeldoutSummary(
            envs=[e.name for e in envs], per_beta=_per_beta(rows, betas, pareto_frontier(points)),
            baselines=[FrontierPoint(p.label, p.accuracy, round(p.tokens, 1)) for p in points],
            evaluated=self.clock())
        self.store.record_heldout(run.id, rows, summary)
        return {"run_id": run.run_id, "name": run.name,
                "per_env": [{"env": r.env, "beta": r.beta, "accuracy": r.accuracy,
                             "avg_tokens": round(r.avg_tokens, 1)} for r in rows], **summary.to_dict()}


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
