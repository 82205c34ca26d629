"""Choosing a session's final controller and reporting it against the baselines on the held-out environments.

Selection (what `select_final` does, exactly):
* The candidates are the rounds' submitted runs (`discovery_rounds.candidate` and every explorer's candidate),
  each counted once. Eligible: status `ok`, evaluated on the full β grid of every search environment (probes
  are never selected; the loop completes a round's candidate to the full grid before recording it), and tokens
  monotone in β. If no candidate is monotone, every full-grid `ok` one is eligible (and the report says so).
* `objective` (default): candidates are ranked by the documented objective (`core.objective.rank_key`: those whose
  search-average curve reaches SC@64's accuracy first, by fewest tokens to reach it as % of SC@64's; then the
  others by AUC). Every candidate whose figure (tokens-to-SC@64 %, or AUC for those that do not reach it) is
  within noise of the leader's — |difference| < 2 standard errors of the paired per-seed differences
  (`core.stats.paired_test`), on the seeds where both figures exist — is tied with it; among the tied, the one
  with the fewest mean tokens at its operating β wins (then the earlier run). The report names the tied runs,
  the difference and its standard error.
* `accuracy` (the paper's rule): each candidate is scored at its best β — the β with the highest search accuracy
  (mean over the search environments of the per-environment accuracy in percent, rounded to 2 decimals; ties:
  fewer tokens); the highest wins, then fewer tokens, then the earlier run. The report says whether the margin
  over the runner-up is within noise (the rule does not act on it).

The held-out evaluation reuses `DiscoveryService.evaluate_heldout` — the `autotts heldout` code path, which also
records the held-out rows in the run store — at every β of the chosen (full-grid) run; the table shows it at the
selected β beside the Table-1 baselines (SC@64, ASC, ESC, Parallel-Probe, CMC β=0.5 and β=1.0) evaluated on the
same held-out environments with the same seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.discovery.log import DiscoveryLog
from core.discovery.service import DiscoveryService
from core.evaluate import evaluate
from core.objective import rank_key
from core.stats import PairedTest, paired_test
from mcp_server.discover.judge import RunScore, render_figures, score_run

SELECT_MODES = ("objective", "accuracy")

TABLE1_BASELINES: tuple[tuple[str, str], ...] = (
    ("sc:n=64", "SC@64"), ("asc", "ASC"), ("esc", "ESC"), ("parallel-probe", "Parallel-Probe"),
    ("cmc:beta=0.5", "CMC β=0.5"), ("cmc:beta=1", "CMC β=1.0"))


@dataclass(frozen=True)
class Tie:
    """A candidate within noise of the leader (or, under the paper's rule, the runner-up and its margin)."""

    run: str
    figure: str
    """What was compared: tokens-to-SC@64 % | AUC | accuracy %."""
    diff: float
    """leader − this candidate (for tokens-to-SC@64, negative = the leader is cheaper)."""
    se: float
    """Standard error of the paired per-seed differences."""
    within_noise: bool
    avg_tokens: float
    """This candidate's mean tokens at its operating β."""


@dataclass(frozen=True)
class Selection:
    """The final controller and why."""

    run_id: int
    name: str
    beta: float
    accuracy: float
    """Search-set average accuracy (percent) at `beta`."""
    avg_tokens: float
    """Search-set average of mean tokens per question at `beta`."""
    mode: str
    candidates: int
    eligible: int
    figures: str
    """The objective figures with their standard errors (`judge.render_figures`)."""
    leader: str
    """The run ranked first before ties were broken (the selected one unless a cheaper tied run won)."""
    ties: list[Tie] = field(default_factory=list)
    """objective: the runs tied with the leader; accuracy: the runner-up with its margin."""
    note: str = ""


def _paired(a: RunScore, b: RunScore, figure: str, beta_a: float = 0.0, beta_b: float = 0.0
            ) -> PairedTest | None:
    """Paired test over seeds of a's figure − b's, on the seeds where both exist (None: fewer than 2)."""
    if figure == "accuracy %":
        pa = next(p for p in a.curve if p.beta == beta_a).seed_accuracy
        pb = next(p for p in b.curve if p.beta == beta_b).seed_accuracy
        pairs = list(zip(pa, pb, strict=True))
    elif figure == "AUC":
        pairs = list(zip(a.seed_auc, b.seed_auc, strict=True))
    else:
        pairs = [(x, y) for x, y in zip(a.seed_pct_of_sc64, b.seed_pct_of_sc64, strict=True)
                 if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    return paired_test([float(x) for x, _ in pairs], [float(y) for _, y in pairs])


def select_final(svc: DiscoveryService, run_ids: list[int | None], mode: str = "objective") -> Selection | None:
    """Pick the final controller among the rounds' candidates (see the module docstring for the rule)."""
    if mode not in SELECT_MODES:
        raise ValueError(f"unknown selection mode {mode!r}")
    ids = list(dict.fromkeys(int(r) for r in run_ids if r is not None))
    scores = [s for s in (score_run(svc, r) for r in ids) if s is not None]
    full = [s for s in scores if s.full_grid]
    notes = []
    if len(full) < len(scores):
        notes.append(f"{len(scores) - len(full)} probe(s) not on the full β grid were left out")
    monotone = {r.id for r in (svc.store.run(s.run_id, with_source=False) for s in full)
                if r.summary is not None and r.summary.monotone}
    eligible = [s for s in full if s.run_id in monotone]
    if full and not eligible:
        eligible = full
        notes.append("no candidate has tokens monotone in β; selected among the non-monotone ones")
    if not eligible:
        return None
    if mode == "objective":
        ranked = sorted(eligible, key=lambda s: (rank_key(s.objective), s.run_id))
        leader = ranked[0]
        figure = "tokens-to-SC@64 %" if leader.objective.reached else "AUC"
        ties = []
        for other in ranked[1:]:
            if other.objective.reached != leader.objective.reached:
                continue
            t = _paired(leader, other, figure)
            if t is not None and t.within_noise:
                ties.append(Tie(f"r{other.run_id:04d}", figure, t.diff, t.se, True,
                                other.operating_point.tokens))
        tied = [leader] + [s for s in ranked[1:] if f"r{s.run_id:04d}" in {t.run for t in ties}]
        chosen = min(tied, key=lambda s: (s.operating_point.tokens, s.run_id))
        point = chosen.operating_point
        if ties:
            notes.append(f"{len(ties) + 1} candidates tie within noise on {figure}; the one with the fewest "
                         f"tokens at its operating β was selected")
    else:
        def best(s: RunScore) -> tuple[float, float]:
            p = max(s.curve, key=lambda p: (round(p.accuracy, 2), -p.tokens))
            return round(p.accuracy, 2), p.tokens

        ranked = sorted(eligible, key=lambda s: (-best(s)[0], best(s)[1], s.run_id))
        leader = chosen = ranked[0]
        point = max(chosen.curve, key=lambda p: (round(p.accuracy, 2), -p.tokens))
        ties = []
        if len(ranked) > 1:
            runner = ranked[1]
            rp = max(runner.curve, key=lambda p: (round(p.accuracy, 2), -p.tokens))
            t = _paired(chosen, runner, "accuracy %", float(point.beta or 0), float(rp.beta or 0))
            if t is not None:
                ties.append(Tie(f"r{runner.run_id:04d}", "accuracy %", t.diff, t.se, t.within_noise, rp.tokens))
                if t.within_noise:
                    notes.append(f"the margin over the runner-up r{runner.run_id:04d} ({t.diff:+.2f} pts ± "
                                 f"{t.se:.2f}) is within noise; the paper's rule does not act on it")
    assert point.beta is not None
    return Selection(chosen.run_id, chosen.name, float(point.beta), round(point.accuracy, 2),
                     round(point.tokens, 1), mode, len(ids), len(eligible), render_figures(chosen),
                     f"r{leader.run_id:04d}", ties, "; ".join(notes))


def cost_summary(log: DiscoveryLog, sid: str, report_s: float = 0.0) -> dict[str, Any]:
    """Totals of a session: dollars, tokens, calls, and wall time — its recorded rounds (completions to the full
    grid included) plus `report_s`, the selection and held-out evaluation that followed them."""
    usage, calls = log.spent(sid)
    rounds = log.rounds(sid)
    seconds = sum(max(0.0, r.finished - r.started) for r in rounds)
    return {**usage.to_dict(), "calls": calls, "rounds": len(rounds),
            "minutes": round((seconds + report_s) / 60, 1), "rounds_minutes": round(seconds / 60, 1),
            "report_minutes": round(report_s / 60, 1)}


def cost_line(cost: dict[str, Any]) -> str:
    """Like the paper's "$39.9, 160 minutes", with the time and the token counts behind it."""
    split = (f"rounds {cost['rounds_minutes']:g}, selection and held-out {cost['report_minutes']:g}; "
             if "rounds_minutes" in cost else "")  # reports stored before the clock was split
    return (f"Discovery cost: ${cost['cost_usd']:.2f}, {cost['minutes']:g} minutes ({split}{cost['rounds']} round(s), "
            f"{cost['calls']} API "
            f"calls; tokens in {cost['input_tokens']:,} · out {cost['output_tokens']:,} · cache write "
            f"{cost['cache_write_tokens']:,} · cache read {cost['cache_read_tokens']:,})")


def build_report(svc: DiscoveryService, sid: str, *, mode: str = "objective", heldout: bool = True
                 ) -> dict[str, Any]:
    """Select, evaluate on the held-out environments, and assemble the report (also stored with the session)."""
    started = time.monotonic()
    log = DiscoveryLog(svc.store)
    session = log.session(sid)
    rounds = log.rounds(sid)
    explorers = log.explorers(sid)
    round_rows = []
    for rd in rounds:
        entry: dict[str, Any] = {
            "round": rd.round, "status": rd.status, "how": rd.how, "run_id": None, "name": None,
            "accuracy": None, "avg_tokens": None, "beta": None, "cost_usd": round(rd.usage.cost_usd, 6),
            "turns": rd.turns, "tool_calls": rd.tool_calls,
            "explorers": [{"explorer": o.explorer, "run": None if o.candidate is None else f"r{o.candidate:04d}",
                           "how": o.how, "runs": [f"r{x:04d}" for x in o.runs], "lesson": o.lesson}
                          for o in explorers.get(rd.round, [])]}
        if rd.candidate is not None:
            run = svc.store.run(rd.candidate, with_source=False)
            best = run.summary.best if run.status == "ok" and run.summary is not None else None
            entry.update(run_id=run.run_id, name=run.name, run_status=run.status)
            if best:
                entry.update(accuracy=best.accuracy, avg_tokens=best.avg_tokens, beta=best.beta)
        round_rows.append(entry)
    cands = [o.candidate for outs in explorers.values() for o in outs]
    sel = select_final(svc, cands, mode)
    doc: dict[str, Any] = {
        "session": sid, "model": None if session is None else session.model,
        "status": None if session is None else session.status,
        "rounds": round_rows, "selection": None if sel is None else {**asdict(sel), "run": f"r{sel.run_id:04d}"},
        "heldout": None, "created": time.time(),
    }
    if sel is not None and heldout and svc.study.heldout:
        doc["heldout"] = heldout_table(svc, sel)
    doc["cost"] = cost_summary(log, sid, time.monotonic() - started)
    log.update_session(sid, final_run=None if sel is None else sel.run_id, report=doc)
    return doc


def heldout_table(svc: DiscoveryService, sel: Selection) -> dict[str, Any]:
    """The chosen run on the held-out environments (via `evaluate_heldout`) beside the Table-1 baselines."""
    rep = svc.evaluate_heldout(sel.run_id)
    envs = svc.study.heldout_envs()
    names = [e.name for e in envs]
    rows = []
    for spec, label in TABLE1_BASELINES:
        cells = []
        for env in envs:
            r = evaluate(env, spec, svc.study.seeds)
            cells.append({"accuracy": r.accuracy, "avg_tokens": round(r.avg_tokens, 1)})
        rows.append({"method": label, "spec": spec, "per_env": cells, **_average(cells)})
    mine = {(r["env"], float(r["beta"])): r for r in rep["per_env"]}
    cells = [{"accuracy": mine[(n, sel.beta)]["accuracy"], "avg_tokens": mine[(n, sel.beta)]["avg_tokens"]}
             for n in names]
    rows.append({"method": f"{sel.name} (r{sel.run_id:04d}, β={sel.beta:g})", "spec": f"r{sel.run_id:04d}",
                 "discovered": True, "per_env": cells, **_average(cells)})
    return {"envs": names, "rows": rows, "beta": sel.beta, "curve": rep["per_beta"], "seeds": svc.study.n_seeds}


def _average(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {"avg_accuracy": round(float(np.mean([c["accuracy"] for c in cells])), 2),
            "avg_tokens": round(float(np.mean([c["avg_tokens"] for c in cells])), 1)}


def render_report(doc: dict[str, Any], console: Any) -> None:
    """Print the report with rich: rounds, selection, the held-out Table-1 comparison, the cost line."""
    from rich.table import Table

    rt = Table(title=f"Discovery session {doc['session']} · {doc.get('model')}", title_justify="left")
    for col, just in (("round", "right"), ("candidate", "left"), ("how", "left"), ("search acc%", "right"),
                      ("tokens", "right"), ("β", "right"), ("replies", "right"), ("tools", "right"),
                      ("cost $", "right")):
        rt.add_column(col, justify=just, no_wrap=True)
    for r in doc["rounds"]:
        cand = "-" if r["run_id"] is None else f"{r['run_id']} {str(r['name'])[:28]}"
        if r["run_id"] is not None and r["accuracy"] is None:
            cand += f" ({r.get('run_status')})"
        rt.add_row(str(r["round"]) + ("*" if r["status"] == "partial" else ""), cand, r["how"],
                   "" if r["accuracy"] is None else f"{r['accuracy']:.2f}",
                   "" if r["avg_tokens"] is None else f"{r['avg_tokens']:,.0f}",
                   "" if r["beta"] is None else f"{r['beta']:g}", str(r["turns"]), str(r["tool_calls"]),
                   f"{r['cost_usd']:.4f}")
    console.print(rt)
    if any(r["status"] == "partial" for r in doc["rounds"]):
        console.print("* stopped early by the budget cap")
    for r in doc["rounds"]:
        if len(r.get("explorers") or []) > 1:
            console.print(f"round {r['round']}: " + "; ".join(
                f"explorer {e['explorer']} → {e['run'] or 'nothing'} ({len(e['runs'])} run(s))"
                for e in r["explorers"]) + f"; round candidate {r['run_id'] or '-'}")
    sel = doc.get("selection")
    if sel is None:
        console.print("No round produced a scored full-grid candidate: nothing to select.")
    else:
        rule = ("the paper's rule: highest search accuracy at its best β" if sel["mode"] == "accuracy"
                else "the objective: fewest tokens to reach SC@64's accuracy, ties within noise to the cheaper")
        figures = f"{sel['figures']}; " if sel.get("figures") else ""  # reports stored before the objective had none
        console.print(f"Selected {sel['run']} '{sel['name']}' at β={sel['beta']:g} ({rule}): "
                      f"{sel['accuracy']:.2f}% at {sel['avg_tokens']:,.0f} tokens on the search set; "
                      f"{figures}{sel['eligible']} of {sel['candidates']} candidate(s) eligible.")
        for t in sel.get("ties") or []:
            verdict = "tie (within noise)" if t["within_noise"] else "beyond noise"
            console.print(f"  vs {t['run']}: {t['figure']} {sel['leader']} − {t['run']} = {t['diff']:+.2f} ± "
                          f"{t['se']:.2f} SE → {verdict}; {t['run']} at {t['avg_tokens']:,.0f} tokens")
        if sel.get("note"):
            console.print(f"Note: {sel['note']}.")
    held = doc.get("heldout")
    if held:
        t = Table(title=f"Held-out environments · accuracy % / thousand tokens per question · {held['seeds']} seeds",
                  title_justify="left")
        t.add_column("method", no_wrap=True)
        for name in held["envs"]:
            t.add_column(name, justify="right", no_wrap=True)
        t.add_column("average", justify="right", no_wrap=True)
        for row in held["rows"]:
            if row.get("discovered"):
                t.add_section()
            cells = [f"{c['accuracy']:.2f} / {c['avg_tokens'] / 1000:,.1f}k" for c in row["per_env"]]
            t.add_row(row["method"], *cells, f"{row['avg_accuracy']:.2f} / {row['avg_tokens'] / 1000:,.1f}k",
                      style="bold" if row.get("discovered") else None)
        console.print(t)
        console.print("Held-out curve of the selected run: " + " · ".join(
            f"β={p['beta']:g} {p['accuracy']:.2f}%/{p['avg_tokens'] / 1000:,.1f}k" for p in held["curve"]))
    elif sel is not None:
        console.print("(This study has no held-out environments; create it with --heldout to get the Table-1 view.)")
    console.print(cost_line(doc["cost"]))
