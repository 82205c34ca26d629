"""Scaling curves: accuracy against mean tokens per question, for baselines and candidates (no Textual here).

The picture of the AutoTTS paper's Figures 3/4: each handcrafted baseline swept over its budget knob
(SC@N over N, ASC / ESC over max_samples, Parallel-Probe over num_chains, CMC over β), each candidate over
the study's β grid, and the Pareto frontier of everything drawn. Shared by the TUI's plot and `autotts plot`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.specs import cmc_spec, split_spec
from core.stats import Point, pareto_frontier

BASELINE_SWEEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SC@N", ("sc:n=1", "sc:n=2", "sc:n=4", "sc:n=8", "sc:n=16", "sc:n=32", "sc:n=64")),
    ("ASC", ("asc:max_samples=8", "asc:max_samples=16", "asc:max_samples=32", "asc:max_samples=64")),
    ("ESC", ("esc:max_samples=16", "esc:max_samples=32", "esc:max_samples=64")),
    ("Parallel-Probe", ("parallel-probe:num_chains=8", "parallel-probe:num_chains=16",
                        "parallel-probe:num_chains=32", "parallel-probe:num_chains=64")),
)
"""Each baseline family and the settings drawn as its curve (Table 1's setting is the last of each)."""

FAMILY_NAMES = {"sc": "SC@N", "asc": "ASC", "esc": "ESC", "parallel-probe": "Parallel-Probe", "cmc": "CMC"}
BASELINE_ORDER = ("SC@N", "ASC", "ESC", "Parallel-Probe", "CMC")
MEAN = "mean over environments"


@dataclass(frozen=True)
class Curve:
    """One line on the accuracy–tokens plane."""

    key: str
    """Stable identity: `base:SC@N`, `cand:r0007`, `eval:my_controller`."""
    label: str
    """Legend text."""
    kind: str
    """baseline | candidate."""
    points: tuple[Point, ...]
    """In knob order (N, max_samples, β …); each point's label names its setting."""


def baseline_specs(betas: Sequence[float]) -> list[tuple[str, list[str]]]:
    """(family, specs) for every baseline curve, CMC on the study's β grid."""
    cmc = [cmc_spec(float(b)) for b in betas]
    return [(name, list(specs)) for name, specs in BASELINE_SWEEPS] + [("CMC", cmc)]


def short_label(spec: str) -> str:
    """A setting in a few characters: sc:n=8 → SC@8, asc:max_samples=16 → ASC@16, parallel-probe:num_chains=8
    → PP@8, cmc:beta=0.5 → CMC β=0.5."""
    name, args = split_spec(spec)
    value = args.partition("=")[2]
    short = {"sc": "SC@", "asc": "ASC@", "esc": "ESC@", "parallel-probe": "PP@", "cmc": "CMC β="}.get(name)
    if short is None or not value or "," in args:
        return spec
    return short + value


def compute_baselines(env: Any, seeds: Sequence[int], betas: Sequence[float]) -> list[Curve]:
    """Evaluate every baseline setting on one environment (the compiled replay path: well under a second
    on a 30-question environment) and return one curve per family."""
    from core.evaluate import evaluate

    curves = []
    for family, specs in baseline_specs(betas):
        pts = []
        for spec in specs:
            r = evaluate(env, spec, seeds)
            pts.append(Point(float(r.avg_tokens), float(r.accuracy), short_label(spec)))
        curves.append(Curve(f"base:{family}", family, "baseline", tuple(pts)))
    return curves


def mean_curves(per_env: Mapping[str, Sequence[Curve]]) -> list[Curve]:
    """Point-wise means over environments of curves with the same key and settings."""
    groups: dict[str, list[Curve]] = defaultdict(list)
    for curves in per_env.values():
        for c in curves:
            groups[c.key].append(c)
    out = []
    for key, cs in groups.items():
        by_label: dict[str, list[Point]] = defaultdict(list)
        order: list[str] = []
        for c in cs:
            for p in c.points:
                if p.label not in by_label:
                    order.append(p.label)
                by_label[p.label].append(p)
        pts = tuple(Point(sum(p.tokens for p in ps) / len(ps), sum(p.accuracy for p in ps) / len(ps), lab)
                    for lab in order if len(ps := by_label[lab]) == len(cs))
        out.append(Curve(key, cs[0].label, cs[0].kind, pts))
    return out


def candidate_curve(candidate: Any, env: str | None = None) -> Curve | None:
    """A candidate's β sweep: the search-set mean (env None) or one search environment."""
    if env is None:
        pts = tuple(Point(s.tokens, s.accuracy, f"{candidate.run_id} β={format(b, 'g')}")
                    for b, s in candidate.scores.items())
    else:
        scores = candidate.env_scores.get(env, {})
        pts = tuple(Point(t, a, f"{candidate.run_id} β={format(b, 'g')}") for b, (a, t) in sorted(scores.items()))
    if not pts:
        return None
    return Curve(f"cand:{candidate.run_id}", f"{candidate.run_id} {candidate.name}", "candidate", pts)


def frontier(curves: Iterable[Curve]) -> list[Point]:
    """The Pareto frontier (fewer tokens, higher accuracy) of every point drawn."""
    return pareto_frontier([p for c in curves for p in c.points if p.tokens > 0])


# ----- `autotts eval --json` output ---------------------------------------------------------------------------------
def _family(controller: str) -> tuple[str, str, str]:
    """(family key, legend label, setting) of a controller spec string such as `cmc:beta=0.5`."""
    name, args = split_spec(controller)
    if name.endswith(".py"):
        return f"eval:{name}", Path(name).stem, args or controller
    label = FAMILY_NAMES.get(name, name)
    return f"base:{label}", label, args or name


def curves_from_eval_json(doc: Mapping[str, Any]) -> dict[str, list[Curve]]:
    """Environment → curves from an `autotts eval --json` document: one curve per controller family
    (every `cmc:beta=…` row of an environment forms the CMC curve; a lone setting is a single point).
    Controller files (`x.py:beta=…`) count as candidates."""
    rows = doc.get("rows") if isinstance(doc, Mapping) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError("not `autotts eval --json` output: expected an object with a non-empty 'rows' list")
    per_env: dict[str, dict[str, list[Point]]] = defaultdict(dict)
    labels: dict[str, str] = {}
    for row in rows:
        try:
            env, controller = str(row["env"]), str(row["controller"])
            acc, tok = float(row["accuracy"]), float(row["avg_tokens"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"row {row!r:.80}: needs env, controller, accuracy and avg_tokens ({e})") from None
        key, label, setting = _family(controller)
        labels[key] = label
        per_env[env].setdefault(key, []).append(Point(tok, acc, setting))
    out: dict[str, list[Curve]] = {}
    for env, fams in per_env.items():
        curves = []
        for key, pts in fams.items():
            kind = "candidate" if key.startswith("eval:") else "baseline"
            label = labels[key]
            if label == "SC@N" and len(pts) == 1:
                label = "SC@" + pts[0].label.removeprefix("n=") if pts[0].label.startswith("n=") else "SC@64"
            curves.append(Curve(key, label, kind, tuple(sorted(pts, key=lambda p: p.tokens))))
        out[env] = sort_curves(curves)
    return out


def sort_curves(curves: Iterable[Curve]) -> list[Curve]:
    """Baselines in the paper's order, then candidates in the order given."""
    cs = list(curves)

    def rank(c: Curve) -> tuple[int, int]:
        if c.kind == "baseline":
            return (0, BASELINE_ORDER.index(c.label) if c.label in BASELINE_ORDER else len(BASELINE_ORDER))
        return (1, 0)

    return sorted(cs, key=rank)
