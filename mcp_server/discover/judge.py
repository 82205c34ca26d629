"""A recorded run judged by the documented objective (`core.objective`), with standard errors over seeds, on the
search average and on every search environment — what the round brief shows and what selection compares.

* The run's β curve per environment is built from its stored episodes (per-seed accuracy and tokens), the mean
  curve over the search environments with `mean_curve`, and `objective` scores it against SC@64 and CMC's curve
  (both built-ins on the same environments and seeds).
* Error bars: the same objective is computed on each seed's curve (a seed's mean over environments at every β,
  against that seed's SC@64), and `seed_mean` gives the standard error of those per-seed figures. Tokens to
  reach SC@64 has an error bar only when every seed's curve reaches SC@64; the AUC always has one.
* The operating β (the setting a selected run is deployed and held out at): the cheapest grid β whose search
  accuracy reaches SC@64's; for a run that never reaches it, its most accurate β (the cheapest of equals).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from core.discovery.records import EpisodeArrays
from core.discovery.service import SC64, DiscoveryService, cmc_spec
from core.objective import CurvePoint, Objective, is_full_grid, mean_curve, objective
from core.stats import SeedMean, seed_mean


@dataclass(frozen=True)
class EnvScore:
    """One search environment's view of a run."""

    env: str
    objective: Objective
    """The run's curve on this environment against this environment's SC@64 and CMC."""
    beta: float
    """The run's operating β (on the search average), where the counts below are taken."""
    accuracy: float
    """Accuracy (%) at that β on this environment."""
    sc64_accuracy: float
    lost: int
    """Episodes (seed, question) SC@64 answers right and the run wrong, at that β."""
    won: int
    """Episodes the run answers right and SC@64 wrong."""
    worst_questions: tuple[int, ...]
    """Questions with the most lost episodes (up to 5)."""


@dataclass(frozen=True)
class RunScore:
    """A run judged by the objective on the search average, with per-seed figures for error bars and ties."""

    run_id: int
    name: str
    full_grid: bool
    """Evaluated at every β of the study's grid on every search environment (False: a probe)."""
    curve: tuple[CurvePoint, ...]
    """The mean curve over the search environments, one point per β (with per-seed values)."""
    objective: Objective
    seed_pct_of_sc64: tuple[float | None, ...]
    """Per seed: tokens to reach that seed's SC@64 accuracy as % of its SC@64 tokens (None: not reached)."""
    seed_auc: tuple[float, ...]
    """Per seed: the AUC of that seed's curve."""
    per_env: tuple[EnvScore, ...]

    @property
    def pct_se(self) -> float | None:
        """Standard error over seeds of tokens-to-SC@64 (% of SC@64), when every seed reaches it."""
        vals = self.seed_pct_of_sc64
        if not vals or any(v is None for v in vals):
            return None
        return seed_mean([float(v) for v in vals if v is not None]).se

    @property
    def auc(self) -> SeedMean:
        return seed_mean(self.seed_auc)

    @property
    def operating_point(self) -> CurvePoint:
        """The β a selected run is deployed at (module docstring)."""
        target = self.objective.target_accuracy
        by_tokens = sorted(self.curve, key=lambda p: (p.tokens, -p.accuracy))
        reaching = [p for p in by_tokens if p.accuracy >= target]
        if reaching:
            return reaching[0]
        return max(by_tokens, key=lambda p: p.accuracy)


def _point(correct: np.ndarray, tokens: np.ndarray, beta: float | None, label: str = "") -> CurvePoint:
    acc = 100.0 * np.asarray(correct, dtype=np.float64).mean(axis=1)
    tok = np.asarray(tokens, dtype=np.float64).mean(axis=1)
    return CurvePoint(float(acc.mean()), float(tok.mean()), beta, tuple(float(x) for x in acc),
                      tuple(float(x) for x in tok), label)


def baseline_curves(svc: DiscoveryService, env_names: list[str]) -> tuple[list[CurvePoint], list[list[CurvePoint]]]:
    """(SC@64 per environment, CMC's β curve per environment), with per-seed values."""
    sc, cmc = [], []
    for env in svc.study.search_envs(env_names):
        base = svc.baseline(env, SC64).episodes
        assert base is not None
        sc.append(_point(base.correct, base.tokens, None, "SC@64"))
        curve = []
        for b in svc.study.betas:
            ep = svc.baseline(env, cmc_spec(b)).episodes
            assert ep is not None
            curve.append(_point(ep.correct, ep.tokens, b, cmc_spec(b)))
        cmc.append(curve)
    return sc, cmc


def _seed_curve(curve: list[CurvePoint], s: int) -> list[CurvePoint]:
    return [CurvePoint(p.seed_accuracy[s], p.seed_tokens[s], p.beta) for p in curve]


def score_run(svc: DiscoveryService, run_id: int) -> RunScore | None:
    """The run judged by the objective; None unless it is scored (status ok, with a summary)."""
    run = svc.store.run(run_id, with_source=False)
    if run.status != "ok" or run.summary is None or run.id is None:
        return None
    envs = list(run.envs)
    betas = sorted(float(b) for b in run.betas)
    episodes: dict[tuple[str, float], EpisodeArrays] = {}
    for row in svc.store.results(run.id, with_episodes=True):
        assert row.episodes is not None, "scored runs keep their episodes"
        episodes[(row.env, row.beta)] = row.episodes
    sc_env, cmc_env = baseline_curves(svc, envs)
    per_env_curves = [[_point(episodes[(e, b)].correct, episodes[(e, b)].tokens, b) for b in betas] for e in envs]
    curve = mean_curve(per_env_curves)
    sc = mean_curve([[p] for p in sc_env])[0]
    n_seeds = len(sc.seed_accuracy)
    seed_obj = [objective(_seed_curve(curve, s), CurvePoint(sc.seed_accuracy[s], sc.seed_tokens[s]))
                for s in range(n_seeds)]
    full = is_full_grid(betas, svc.study.betas) and set(svc.study.search_names) <= set(envs)
    score = RunScore(run.id, run.name, full, tuple(curve), objective(curve, sc, mean_curve(cmc_env)),
                     tuple(o.pct_of_sc64 for o in seed_obj), tuple(o.auc for o in seed_obj), ())
    beta = score.operating_point.beta
    assert beta is not None
    per_env = []
    for env, env_curve, env_sc, env_cmc in zip(svc.study.search_envs(envs), per_env_curves, sc_env, cmc_env,
                                               strict=True):
        ep = episodes[(env.name, beta)]
        base = svc.baseline(env, SC64).episodes
        assert base is not None
        lost = base.correct & ~ep.correct
        worst = [int(q) for q in np.argsort(-lost.sum(axis=0), kind="stable")[:5] if lost[:, q].sum() > 0]
        per_env.append(EnvScore(env.name, objective(env_curve, env_sc, env_cmc), beta,
                                100.0 * float(ep.correct.mean()), env_sc.accuracy, int(lost.sum()),
                                int((ep.correct & ~base.correct).sum()), tuple(worst)))
    return replace(score, per_env=tuple(per_env))


def render_env(e: EnvScore) -> str:
    """One line: where a run stands on one search environment and where it loses to SC@64."""
    o = e.objective
    reach = ("not reached" if o.pct_of_sc64 is None else f"{o.pct_of_sc64:.0f}% of SC@64's tokens to reach it"
             ) + ("" if o.pct_of_cmc is None else f", {o.pct_of_cmc:.0f}% of CMC's")
    worst = f"; most lost on q{list(e.worst_questions)}" if e.worst_questions else ""
    return (f"{e.env}: {e.accuracy:.2f}% at β={e.beta:g} vs SC@64 {e.sc64_accuracy:.2f}% ({reach}); lost {e.lost} "
            f"episodes SC@64 got right, won {e.won}{worst}")


def render_figures(score: RunScore) -> str:
    """One line: the objective figures with their standard errors over seeds."""
    o = score.objective
    se = score.pct_se
    if o.pct_of_sc64 is None:
        reach = f"tokens to SC@64's {o.target_accuracy:.2f}%: not reached"
    else:
        reach = (f"tokens to SC@64's {o.target_accuracy:.2f}%: {o.pct_of_sc64:.1f}%"
                 + ("" if se is None else f" ± {se:.1f}") + " of SC@64's")
    cmc = "" if o.pct_of_cmc is None else f", {o.pct_of_cmc:.1f}% of CMC's"
    return f"{reach}{cmc}; AUC {o.auc:.2f} ± {score.auc.se:.2f}" + ("" if o.cmc_auc is None else
                                                                     f" (CMC {o.cmc_auc:.2f})")
