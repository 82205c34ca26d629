"""Build the fixture study `tests/data/store_v2/` and the golden reading of it, `tests/data/store_v2.golden.json`.

The study was written and read by the release whose run store has schema_version 2 (commit 05194cc), so that
`tests/test_store_fixture.py` can show that later code opens a store of that release and reads it identically.
It is kept as the record of how the fixture was made; rerunning it needs that release checked out:

    git checkout 05194cc && python tests/data/make_store_fixture.py

What the study holds (bundled demo, 3 seeds, β 0 / 0.5 / 1, sandbox level "off"): two scored candidates, a
failing one and one refused by the branch ceiling, all through the discovery service; the cached baselines; a
recorded trace; a held-out evaluation; a discovery session with one round and two API calls; and two runs
written the way the TUI's demo study wrote them (an audit with `"mismatches": 0`, the demo's summary shape,
and a refusal before evaluation).
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "store_v2"
GOLDEN = HERE / "store_v2.golden.json"

GREEDY = '''\
class Greedy:
    """Reads 80 branches of every question: more than the study's ceiling of 64, so it is refused."""

    def __init__(self, beta=0.5):
        self.n = 80

    def solve(self, question):
        answers = [question.get_new_branch_final_answer() for _ in range(self.n)]
        return max(set(answers), key=answers.count)
'''


def build() -> None:
    from core.discovery_log import DiscoveryLog, Usage
    from core.study import Study
    from mcp_server.service import DiscoveryService

    from autotts_tui.demo_study import BROKEN, PEEKING, SC_BUDGET, record_candidate
    from mcp_server import tools
    from mcp_server.discover.report import build_report

    shutil.rmtree(FOLDER, ignore_errors=True)
    study = Study.create(FOLDER, betas=(0.0, 0.5, 1.0), n_seeds=3,
                         sandbox={"level": "off", "audit_episodes": 4, "audit_seed": 7})
    svc = DiscoveryService(study)
    cmc = (HERE / "cmc_candidate.py").read_text()
    log = DiscoveryLog(svc.store)
    sid = log.new_session("explorer-model", 1, {"rounds": 1, "model": "explorer-model"})
    log.record_call(sid, 1, "explorer-model", "tool_use", Usage(1200, 300, 800, 0, 0.0123), 4.5, 0)
    first = tools.run_controller(svc, cmc, name="cmc-candidate")
    log.tag_run(int(first.run_id[1:]), sid, 1)
    tools.run_controller(svc, SC_BUDGET, name="sc-budget", betas=[0.0, 1.0])
    tools.run_controller(svc, BROKEN, name="broken-idea")
    tools.run_controller(svc, GREEDY, name="greedy")
    log.record_call(sid, 1, "explorer-model", "end_turn", Usage(400, 120, 0, 800, 0.0042), 2.0, 1)
    log.complete_round(sid, 1, status="done", candidate=int(first.run_id[1:]), how="named", started=time.time() - 95,
                       turns=2, tool_calls=4, note="FINAL: " + first.run_id, run_ids=[int(first.run_id[1:])])
    tools.inspect_trace(svc, first.run_id, beta=0.5, question=3, seed=1)
    build_report(svc, sid)
    log.update_session(sid, status="done")
    record_candidate(svc.store, study, "demo-written", SC_BUDGET, created=1_763_996_400.0, traces=1, seconds=2.0)
    record_candidate(svc.store, study, "demo-peeking", PEEKING, created=1_763_996_537.0)
    svc.store.close()
    (FOLDER / "progress.json").unlink(missing_ok=True)


def _episodes(ep: Any) -> dict[str, Any] | None:
    if ep is None:
        return None
    return {"seeds": ep.seeds.tolist(), "answers": ep.answers, "tokens": ep.tokens.tolist(),
            "correct": ep.correct.astype(int).tolist(), "opened": None if ep.opened is None else ep.opened.tolist()}


def _row(r: Any) -> dict[str, Any]:
    return {"split": r.split, "env": r.env, "beta": r.beta, "accuracy": r.accuracy, "avg_tokens": r.avg_tokens,
            "max_opened": r.max_opened, "episodes": _episodes(r.episodes)}


def _or_error(read: Any) -> Any:
    """read(), or `{"raised": …}` where that release could not read a run (its demo study's summaries)."""
    try:
        return read()
    except Exception as e:  # recorded, so a later release may do better but not differently where this one read
        return {"raised": f"{type(e).__name__}"}


def read() -> dict[str, Any]:
    """Everything the readers of that release return for the fixture, as JSON."""
    from autotts_tui.queries import ReadOnlyQueries
    from click.testing import CliRunner
    from core.discovery_log import DiscoveryLog
    from core.runstore import RunStore
    from core.study import Study
    from mcp_server.service import DiscoveryService
    from rich.console import Console

    from autotts.cli import main as cli
    from autotts_tui.model import StudyReader
    from mcp_server import tools
    from mcp_server.discover.context import RoundLimits, round_brief
    from mcp_server.discover.report import cost_summary, render_report, select_final

    study = Study.open(FOLDER)
    store = RunStore(study.store_path, readonly=True)
    svc = DiscoveryService(study, store=store)
    log = DiscoveryLog(store)
    queries = ReadOnlyQueries(study.store_path)
    runs = store.runs_since(0)
    ids = [r["id"] for r in runs]
    ok = [r["id"] for r in runs if r["status"] == "ok"]
    baselines = []
    for env_key, spec, seeds_key in store._query("SELECT env_key, spec, seeds_key FROM baselines ORDER BY rowid"):
        acc, tok, ep = store.baseline(env_key, spec, seeds_key, with_episodes=True)
        baselines.append({"env_key": env_key, "spec": spec, "seeds_key": seeds_key, "accuracy": acc,
                          "avg_tokens": tok, "episodes": _episodes(ep)})
    traces = []
    for rid in ids:
        for env, beta, seed, q in queries.recorded_traces(rid):
            traces.append({"run": rid, "env": env, "beta": beta, "seed": seed, "question": q,
                           "trace": store.trace(rid, env, beta, seed, q)})
    sid = log.sessions()[0]["id"]
    reader = StudyReader(FOLDER)
    candidates = [dataclasses.asdict(c) for c in reader.poll().candidates]
    for c in candidates:
        c["scores"] = [[b, s] for b, s in c["scores"].items()]
        c["env_scores"] = {e: [[b, v] for b, v in d.items()] for e, d in c["env_scores"].items()}
    details = {}
    for rid in ids:
        d = reader.detail(rid)
        details[rid] = {"predecessor": None if d.predecessor is None else d.predecessor["id"],
                        "reason": d.predecessor_reason, "recorded_traces": d.recorded_traces,
                        "results": [_row(r) for r in d.results]}
    reader.close()
    console = Console(file=io.StringIO(), width=140, record=True, color_system=None)
    render_report(log.session(sid)["report"], console)
    show = CliRunner().invoke(cli, ["study", "show", str(FOLDER)])
    show_json = CliRunner().invoke(cli, ["study", "show", "--json", str(FOLDER)])
    doc = {
        "runs": [store.run(rid) for rid in ids],
        "results": {rid: [_row(r) for r in store.results(rid, split=None, with_episodes=True)] for rid in ids},
        "leaderboard": store.leaderboard(include_failed=True),
        "leaderboard_scored": store.leaderboard(include_failed=False),
        "last_run_id": store.last_run_id(), "count_runs": store.count_runs(),
        "find_by_sha": {runs[0]["sha256"]: [r["id"] for r in store.find_by_sha(runs[0]["sha256"])]},
        "baselines": baselines,
        "traces": traces,
        "results_touched_since_0": [sorted(queries.results_touched_since(0)[0]), queries.results_touched_since(0)[1]],
        "same_name_before": {rid: queries.same_name_before(rid, store.run(rid)["name"]) for rid in ids},
        "sources_before": {rid: [i for i, _ in queries.sources_before(rid)] for rid in ids},
        "sessions": log.sessions(),
        "latest_session": log.latest_session()["id"],
        "rounds": log.rounds(sid),
        "last_round": log.last_round(sid),
        "spent": [log.spent(sid)[0].to_json(), log.spent(sid)[1]],
        "spent_round_1": [log.spent(sid, 1)[0].to_json(), log.spent(sid, 1)[1]],
        "run_rounds": {rid: list(v) for rid, v in log.run_rounds().items()},
        "tool_text": {
            "history": tools.get_history(svc).text(),
            "history_scored": tools.get_history(svc, include_failed=False).text(),
            "baselines": tools.get_baselines(svc).text(),
            "reports": {rid: _or_error(lambda rid=rid: tools.report_for_run(svc, rid).text()) for rid in ids},
            "controllers": {rid: tools.get_controller(svc, rid).text() for rid in ids},
            "digests": {rid: _or_error(lambda rid=rid: tools.inspect_trace(svc, rid).text()) for rid in ok},
            "episode": tools.inspect_trace(svc, ok[0], beta=0.5, question=3, seed=1).text(),
        },
        "selection": dataclasses.asdict(select_final(svc, [ok[0]])),
        "cost_summary": cost_summary(log, sid),
        "round_brief": _or_error(lambda: round_brief(svc, log, sid, 2, 3, RoundLimits(max_turns=10, max_tool_calls=20))),
        "round_brief_top1": round_brief(svc, log, sid, 2, 3, RoundLimits(max_turns=10, max_tool_calls=20), top_k=1),
        "rendered_report": console.export_text(),
        "tui_candidates": candidates,
        "tui_details": details,
        "study_show": show.output,
        "study_show_json": orjson.loads(show_json.output),
    }
    queries.close()
    store.close()
    return doc


def main(argv: list[str]) -> int:
    if "--read-only" not in argv:
        build()
    GOLDEN.write_bytes(orjson.dumps(read(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                                    | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    for sidecar in ("runs.sqlite-shm", "runs.sqlite-wal"):  # left by the read-only readers; the data is checkpointed
        (FOLDER / sidecar).unlink(missing_ok=True)
    print(f"wrote {FOLDER} and {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
