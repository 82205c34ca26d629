"""Choosing a session's final controller and reporting it against the baselines on the held-out environments.

Selection (what `select_final` does, exactly):
* The candidates are the rounds' submitted runs (`discovery_rounds.candidate`), each counted once.
* Eligible: status `ok` and tokens monotone in β. If no candidate is monotone, every `ok` one is eligible (and
  the report says so); failed and refused runs are never selected.
* `accuracy` (the paper's rule, default): each candidate is scored at its best β — the β of its evaluated grid
  with the highest search accuracy (the mean over the search environments of the per-environment accuracy in
  percent, rounded to 2 decimals; ties: fewer mean tokens). The final controller has the highest such accuracy;
  ties go to fewer tokens at that β, then to the earlier run.
* `objective` (`--select objective --gamma G`): every (candidate, β) point is scored J = accuracy − G × tokens
  (accuracy in percentage points, tokens = mean tokens per question on the search set, so G = 1e-5 trades one
  point for 100k tokens); the final controller and its β maximise J; ties: more accuracy, then fewer tokens,
  then the earlier run.

The held-out evaluation reuses `DiscoveryService.evaluate_heldout` — the `autotts heldout` code path, which also
records the held-out rows in the run store — at every β of the chosen run; the table shows it at the selected β
beside the Table-1 baselines (SC@64, ASC, ESC, Parallel-Probe, CMC β=0.5 and β=1.0) evaluated on the same
held-out environments with the same seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.discovery.log import DiscoveryLog
from core.discovery.service import DiscoveryService
from core.evaluate import evaluate

TABLE1_BASELINES: tuple[tuple[str, str], ...] = (
    ("sc:n=64", "SC@64"), ("asc", "ASC"), ("esc", "ESC"), ("parallel-probe", "Parallel-Probe"),
    ("cmc:beta=0.5", "CMC β=0.5"), ("cmc:beta=1", "CMC β=1.0"))


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
    score: float
    """The selection score: accuracy (mode accuracy) or accuracy − γ·tokens (mode objective)."""
    mode: str
    gamma: float
    candidates: int
    eligible: int
    note: str = ""


def select_final(svc: DiscoveryService, run_ids: list[int], mode: str = "accuracy", gamma: float = 0.0
                 ) -> Selection | None:
    """Pick the final controller among the rounds' candidates (see the module docstring for the rule)."""
    if mode not in ("accuracy", "objective"):
        raise ValueError(f"unknown selection mode {mode!r}")
    ids = list(dict.fromkeys(int(r) for r in run_ids if r is not None))
    runs = [svc.store.run(r, with_source=False) for r in ids]
    ok = [r for r in runs if r.status == "ok" and r.summary is not None and r.summary.per_beta]
    eligible = [r for r in ok if r.summary is not None and r.summary.monotone]
    note = ""
    if ok and not eligible:
        eligible, note = ok, "no candidate has tokens monotone in β; selected among the non-monotone ones"
    best_key, best = None, None
    for run in eligible:
        assert run.summary is not None and run.id is not None
        for p in run.summary.per_beta:
            acc, tok = float(p.accuracy), float(p.avg_tokens)
            if mode == "accuracy":
                score = acc
                key: tuple[float, ...] = (acc, -tok, -run.id)
            else:
                score = acc - gamma * tok
                key = (score, acc, -tok, -run.id)
            if best_key is None or key > best_key:
                best_key, best = key, (run, p, score)
    if best is None:
        return None
    run, p, score = best
    assert run.id is not None
    return Selection(run.id, run.name, float(p.beta), float(p.accuracy), float(p.avg_tokens),
                     round(score, 6), mode, gamma, len(ids), len(eligible), note)


def cost_summary(log: DiscoveryLog, sid: str) -> dict[str, Any]:
    """Totals of a session: dollars, tokens, calls, and the wall time of its recorded rounds."""
    usage, calls = log.spent(sid)
    rounds = log.rounds(sid)
    seconds = sum(max(0.0, r.finished - r.started) for r in rounds)
    return {**usage.to_dict(), "calls": calls, "rounds": len(rounds), "minutes": round(seconds / 60, 1)}


def cost_line(cost: dict[str, Any]) -> str:
    """Like the paper's "$39.9, 160 minutes", with the token counts behind it."""
    return (f"Discovery cost: ${cost['cost_usd']:.2f}, {cost['minutes']:g} minutes ({cost['rounds']} round(s), "
            f"{cost['calls']} API calls; tokens in {cost['input_tokens']:,} · out {cost['output_tokens']:,} · "
            f"cache write {cost['cache_write_tokens']:,} · cache read {cost['cache_read_tokens']:,})")


def build_report(svc: DiscoveryService, sid: str, *, mode: str = "accuracy", gamma: float = 0.0,
                 heldout: bool = True) -> dict[str, Any]:
    """Select, evaluate on the held-out environments, and assemble the report (also stored with the session)."""
    log = DiscoveryLog(svc.store)
    session = log.session(sid)
    rounds = log.rounds(sid)
    round_rows = []
    for rd in rounds:
        entry = {"round": rd.round, "status": rd.status, "how": rd.how, "run_id": None, "name": None,
                 "accuracy": None, "avg_tokens": None, "beta": None, "cost_usd": round(rd.usage.cost_usd, 6),
                 "turns": rd.turns, "tool_calls": rd.tool_calls}
        if rd.candidate is not None:
            run = svc.store.run(rd.candidate, with_source=False)
            best = run.summary.best if run.status == "ok" and run.summary is not None else None
            entry.update(run_id=run.run_id, name=run.name, run_status=run.status)
            if best:
                entry.update(accuracy=best.accuracy, avg_tokens=best.avg_tokens, beta=best.beta)
        round_rows.append(entry)
    sel = select_final(svc, [rd.candidate for rd in rounds if rd.candidate is not None], mode, gamma)
    doc: dict[str, Any] = {
        "session": sid, "model": None if session is None else session.model,
        "status": None if session is None else session.status,
        "rounds": round_rows, "selection": None if sel is None else {**asdict(sel), "run": f"r{sel.run_id:04d}"},
        "heldout": None, "cost": cost_summary(log, sid), "created": time.time(),
    }
    if sel is not None and heldout and svc.study.heldout:
        doc["heldout"] = heldout_table(svc, sel)
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
    sel = doc.get("selection")
    if sel is None:
        console.print("No round produced a scored candidate: nothing to select.")
    else:
        rule = ("highest search accuracy at its best β" if sel["mode"] == "accuracy"
                else f"highest accuracy − {sel['gamma']:g}·tokens")
        console.print(f"Selected {sel['run']} '{sel['name']}' at β={sel['beta']:g} ({rule}): "
                      f"{sel['accuracy']:.2f}% at {sel['avg_tokens']:,.0f} tokens on the search set; "
                      f"{sel['eligible']} of {sel['candidates']} candidate(s) eligible."
                      + (f" Note: {sel['note']}." if sel.get("note") else ""))
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
