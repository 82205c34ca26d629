"""A study written by the release with schema_version 2 opens and reads identically with this code.

`tests/data/store_v2/` was written, and `tests/data/store_v2.golden.json` read, by that release
(`tests/data/make_store_fixture.py` says how). Every reader is compared with what that release's readers returned:
the runs, their result rows, the leaderboard, baselines, traces, discovery sessions and rounds, the MCP tools'
text, the discover report, the TUI's candidates and `autotts study show`.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from rich.console import Console

from autotts.cli import main as cli
from autotts_tui.model import StudyReader
from core.discovery.log import DiscoveryLog
from core.discovery.records import (
    AuditReport,
    DiscoveryRound,
    IsolationReport,
    ResultRow,
    RunSummary,
    TraceKey,
)
from core.discovery.service import DiscoveryService
from core.discovery.store import RunStore
from core.discovery.study import Study
from mcp_server import tools
from mcp_server.discover.context import RoundLimits, round_brief
from mcp_server.discover.report import cost_summary, render_report, select_final

DATA = Path(__file__).resolve().parent / "data"
WRITTEN_AT = "<fixture folder>"
"""Where the fixture lay when it was read; paths in the golden output name it."""


ADDED_SINCE = {"after_heldout": False}
"""Leaderboard fields added after the fixture was written, with the value an old run must read as."""

TUI_ADDED_SINCE = {"objective": None, "quick": None, "errors": {}}
"""TUI candidate fields added since, with the value an old run must read as (it recorded no objective, scope or
standard errors)."""


def _as_written(entry: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard entry restricted to the fields the fixture's release wrote (the added ones at their default)."""
    for key, default in ADDED_SINCE.items():
        assert entry.pop(key) == default
    return entry


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return orjson.loads((DATA / "store_v2.golden.json").read_bytes())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy: opening a WAL store, even read-only, creates files beside it."""
    dest = tmp_path_factory.mktemp("fixture") / "store_v2"
    shutil.copytree(DATA / "store_v2", dest)
    return dest


@pytest.fixture(scope="module")
def store(folder: Path):
    with RunStore(folder / "runs.sqlite", readonly=True) as s:
        yield s


@pytest.fixture(scope="module")
def svc(folder: Path, store: RunStore) -> DiscoveryService:
    return DiscoveryService(Study.open(folder), store=store)


def _episodes(ep: Any) -> dict[str, Any] | None:
    if ep is None:
        return None
    return {"seeds": ep.seeds.tolist(), "answers": ep.answers, "tokens": ep.tokens.tolist(),
            "correct": ep.correct.astype(int).tolist(), "opened": None if ep.opened is None else ep.opened.tolist()}


def _row(r: ResultRow) -> dict[str, Any]:
    return {"split": r.split, "env": r.env, "beta": r.beta, "accuracy": r.accuracy, "avg_tokens": r.avg_tokens,
            "max_opened": r.max_opened, "episodes": _episodes(r.episodes)}


def _raised(read: Any) -> Any:
    try:
        return read()
    except Exception as e:  # the release read some runs of its own demo study only this far; so must this code
        return {"raised": type(e).__name__}


def test_runs_read_identically(store: RunStore, golden: dict[str, Any]):
    assert store.schema_version() == 2 and store.count_runs() == golden["count_runs"] == 6
    assert store.last_run_id() == golden["last_run_id"]
    for old in golden["runs"]:
        run = store.run(old["id"])
        for key in ("id", "run_id", "name", "status", "created", "finished", "error", "traceback", "betas", "envs",
                    "seconds", "stdout_tail", "sha256", "source"):
            assert getattr(run, key) == old[key], (old["run_id"], key)
        assert run.isolation == (IsolationReport.from_dict(old["isolation"]) if old["isolation"] else None)
        assert run.audit == (AuditReport.from_dict(old["audit"]) if old["audit"] else None)
        if old["summary"] is None:
            assert run.summary is None
        elif "frontier" in old["summary"]:  # written by the discovery service: the record is that JSON, exactly
            assert run.summary is not None and run.summary.to_dict() == old["summary"]
        else:  # written by the TUI's old demo study: migrated, its values kept
            assert run.summary == RunSummary.from_dict(old["summary"])
            assert run.summary.monotone is old["summary"]["monotone"] and run.summary.on_frontier is None
            assert dataclasses.asdict(run.summary.best) == old["summary"]["best"]
    demo = store.run(5)
    assert demo.audit is not None and demo.audit.mismatches == [] and demo.audit.passed  # was `"mismatches": 0`
    assert [r.id for r in store.runs_since(0)] == [r["id"] for r in golden["runs"]]
    for sha, ids in golden["find_by_sha"].items():
        assert [r.id for r in store.find_by_sha(sha)] == ids


def test_results_baselines_and_traces_read_identically(store: RunStore, golden: dict[str, Any]):
    for rid, rows in golden["results"].items():
        assert [_row(r) for r in store.results(int(rid), split=None, with_episodes=True)] == rows
    for b in golden["baselines"]:
        got = store.baseline(b["env_key"], b["spec"], b["seeds_key"], with_episodes=True)
        assert got is not None and (got.accuracy, got.avg_tokens) == (b["accuracy"], b["avg_tokens"])
        assert _episodes(got.episodes) == b["episodes"]
    assert len(golden["traces"]) == 2  # one recorded by inspect_trace, one by the demo study
    for t in golden["traces"]:
        key = TraceKey(t["env"], t["beta"], t["seed"], t["question"])
        assert key in store.recorded_traces(t["run"])
        assert dataclasses.asdict(store.trace(t["run"], key)) == t["trace"]
    touched, top = store.results_touched_since(0)
    assert [sorted(touched), top] == golden["results_touched_since_0"]
    for rid, want in golden["same_name_before"].items():
        assert store.same_name_before(int(rid), store.run(int(rid)).name) == want
    for rid, want in golden["sources_before"].items():
        assert [i for i, _ in store.sources_before(int(rid))] == want


def test_leaderboard_reads_identically(store: RunStore, golden: dict[str, Any]):
    assert [_as_written(e.to_dict()) for e in store.leaderboard(include_failed=True)] == golden["leaderboard"]
    assert [_as_written(e.to_dict()) for e in store.leaderboard(include_failed=False)] == golden["leaderboard_scored"]


def test_discovery_log_reads_identically(store: RunStore, golden: dict[str, Any]):
    log = DiscoveryLog(store)
    assert [s.to_dict() for s in log.sessions()] == golden["sessions"]
    sid = golden["latest_session"]
    assert log.latest_session().id == sid
    assert log.rounds(sid) == [DiscoveryRound.from_dict(r) for r in golden["rounds"]]
    assert [r.usage.cost_usd for r in log.rounds(sid)] == [r["cost_usd"] for r in golden["rounds"]]
    assert log.last_round(sid) == golden["last_round"]
    assert [log.spent(sid)[0].to_dict(), log.spent(sid)[1]] == golden["spent"]
    assert [log.spent(sid, 1)[0].to_dict(), log.spent(sid, 1)[1]] == golden["spent_round_1"]
    assert {str(k): list(v) for k, v in log.run_rounds().items()} == golden["run_rounds"]


def _rephrased(old: str) -> str:
    """The old release's "vs baselines" phrases as this release words them (a legend above the β table says what
    each part compares)."""
    s = re.sub(r"saves (\d+)% tokens vs ([^;\n]+)", lambda m: f"{m[2]} {-int(m[1]):+d}% tokens", old)
    s = re.sub(r"(\d+)% more tokens than ([^;\n]+)", lambda m: f"{m[2]} +{m[1]}% tokens", s)
    s = re.sub(r"([+-]\d+\.\d\d) pts vs frontier", r"frontier \1", s)
    s = s.replace("cheaper than every baseline", "below every baseline's tokens")
    # the digest's stop labels are explained in its legend now, beside the other columns
    return s.replace(" stops: early = stopped on its own, ceiling = hit the branch cap, all = used every branch.", "")


def _report_reads_the_same(old: str, new: str) -> None:
    """Every line of the old report is in the new one (rephrased where the wording changed); each row of its β
    table is in the new β table with the same β, accuracy, tokens and position against the baselines. The new
    report adds the objective, standard errors and vs-CMC columns, which the old release did not record."""
    rows = {line.split()[0]: line for line in new.splitlines() if line.startswith("  ") and line.split()}
    for line in old.splitlines():
        if line.startswith(("Search average over", "  β     acc%")):
            continue  # the table's title and header, now naming the standard errors and the vs-CMC column
        if line.startswith("Baselines (search avg"):
            continue  # a full run's baselines are get_baselines' (checked above), no longer repeated per run
        if line == "Tokens monotone in β: yes":
            assert "; tokens monotone in β" in new.splitlines()[0]  # said once, in the verdict
            continue
        m = re.match(r"  (\S+)\s+(\d+\.\d\d)\s+([\d,]+)   (.*)$", line)
        if m:
            beta, acc, tokens, position = m.groups()
            got = rows[beta]
            assert f" {acc} " in got and f" {tokens} " in got and got.endswith(_rephrased(position)), (line, got)
        else:
            assert _rephrased(line) in new, line


_OLD_STOPS = {"early": ("own stop", "own budget"), "ceiling": ("ceiling", "own budget"),
              "all": ("pool used up", "ceiling", "own budget")}
"""Old stop labels and the new ones the same episodes may read as (core.stops checks the own budget first)."""


def _digest_reads_the_same(old: str, view: tools.TraceView) -> None:
    """The digest's rows carry the same values; its stops cell counts the same episodes, now with the reasons
    told apart (an old "early" is an own stop or the candidate's own budget)."""
    lines = old.splitlines()
    assert _rephrased(lines[0]) == view.summary
    head = lines.index(next(x for x in lines if x.startswith("q ")))
    assert lines[head].split() == view.table.columns
    old_rows = [x for x in lines[head + 1:] if x and x[0].isdigit()]
    assert len(old_rows) == len(view.table.rows)
    for line, row in zip(old_rows, view.table.rows, strict=True):
        cells = line.split()
        assert ["-" if c is None else str(c) for c in row[:8]] == cells[:8], (line, row)
        if cells[8] == "?":  # the old release recorded no branch counts for this run
            assert row[8] == "?" and row[9] == " ".join(cells[9:])
            continue
        m = re.match(r"((?:(?:early|ceiling|all) \d+)(?:, (?:early|ceiling|all) \d+)*)\s+(.*)$",
                     " ".join(cells[8:]))
        assert m is not None, line
        assert row[9] == m.group(2)
        was = {k: int(n) for k, n in (x.rsplit(" ", 1) for x in m.group(1).split(", "))}
        now = {k: int(n) for k, n in (x.rsplit(" ", 1) for x in row[8].split(", "))}
        assert sum(was.values()) == sum(now.values())
        for kind, n in was.items():
            assert n <= sum(now.get(k, 0) for k in _OLD_STOPS[kind]), (was, now)


def _history_reads_the_same(old: str, new: tools.History) -> None:
    """The same runs with the same best point, monotonicity and errors; the order is now the objective's."""
    lines = old.splitlines()[2:]
    rows = {r[1]: r for r in new.table.rows}
    assert len(lines) == len(rows)
    for line in lines:
        cells = line.split()
        row = rows[cells[0]]
        assert row[2] == cells[1]
        if cells[2] == "ok":
            assert [str(row[7]), str(row[8]), str(row[9]), str(row[10])] == cells[3:7], (line, row)
        else:
            assert row[3] == cells[2] and line.rstrip().endswith(row[11].rstrip()), (line, row)


def test_tool_text_reads_identically(svc: DiscoveryService, golden: dict[str, Any]):
    text = golden["tool_text"]
    ids = [r["id"] for r in golden["runs"]]
    ok = [r["id"] for r in golden["runs"] if r["status"] == "ok"]
    _history_reads_the_same(text["history"], tools.get_history(svc))
    _history_reads_the_same(text["history_scored"], tools.get_history(svc, include_failed=False))
    assert tools.get_baselines(svc).text() == text["baselines"]
    reports = {str(i): _raised(lambda i=i: tools.report_for_run(svc, i).text()) for i in ids}
    for i, old in text["reports"].items():
        if isinstance(old, dict):  # the old release raised reading it: so must this one
            assert reports[i] == old
        else:
            _report_reads_the_same(old, reports[i])
    assert {str(i): tools.get_controller(svc, i).text() for i in ids} == text["controllers"]
    for i in ok:
        old = text["digests"][str(i)]
        if isinstance(old, dict):
            assert _raised(lambda i=i: tools.inspect_trace(svc, i)) == old
        else:
            _digest_reads_the_same(old, tools.inspect_trace(svc, i))
    # the recorded episode's actions, now one view of it (the branch view is the default)
    acts = tools.inspect_trace(svc, ok[0], beta=0.5, question=3, seed=1, view="actions")
    old_lines = text["episode"].splitlines()
    old_rows = [x.split() for x in old_lines[2:] if x and x[0].isdigit()]
    new_rows = [x.split() for x in (acts.body or "").splitlines()[1:] if x.strip()[:1].isdigit()]
    assert len(new_rows) == acts.actions and old_lines[0].count(f"{acts.actions} actions") == 1
    assert len(old_rows) == 60  # the old release's first page
    for o, n in zip(old_rows, new_rows[:60], strict=True):  # i op branch cost [answer] total vs # op br cost d [answer]
        assert o[:3] == n[:3] and o[3] == n[3].replace(",", "") and o[4:-1] == n[5:5 + len(o) - 5], (o, n)
    assert old_lines[0].split(" with ")[0].split(": answered ")[1] in acts.summary


def test_discover_report_reads_identically(svc: DiscoveryService, golden: dict[str, Any]):
    log = DiscoveryLog(svc.store)
    sid = golden["latest_session"]
    # The paper's selection rule still picks what it picked, with the fields the old release reported
    # (`score` and `gamma` belonged to the old accuracy − γ·tokens mode, which is gone).
    picked = dataclasses.asdict(select_final(svc, [1], mode="accuracy"))
    kept = {k: v for k, v in golden["selection"].items() if k not in ("score", "gamma")}
    assert {k: picked[k] for k in kept} == kept
    costs = cost_summary(log, sid)  # the clock now splits rounds from selection and held-out (added since)
    assert {k: costs[k] for k in golden["cost_summary"]} == golden["cost_summary"]
    assert costs["rounds_minutes"] + costs["report_minutes"] <= costs["minutes"] + 0.1
    # The round brief is built anew by rule (lessons, every environment, the objective), so an old store must
    # give one that names its runs, not the old text.
    limits = RoundLimits(max_turns=10, max_tool_calls=20)
    brief = round_brief(svc, log, sid, 2, 3, limits, top_k=1)
    assert "r0001" in brief and "Round 2" in brief
    console = Console(file=io.StringIO(), width=140, record=True, color_system=None)
    render_report(log.session(sid).report, console)  # a report stored by the old release still renders
    text = console.export_text()
    old = golden["rendered_report"]
    assert text.splitlines()[0] == old.splitlines()[0] and "Selected r0001 'cmc-candidate' at β=0.5" in text
    assert [ln for ln in text.splitlines() if "Held-out" in ln] == [ln for ln in old.splitlines() if "Held-out" in ln]


def test_tui_reads_identically(folder: Path, golden: dict[str, Any]):
    reader = StudyReader(folder)
    try:
        candidates = [dataclasses.asdict(c) for c in reader.poll().candidates]
        for c in candidates:
            for key, default in TUI_ADDED_SINCE.items():
                assert c.pop(key) == default
            c["scores"] = [[b, s] for b, s in c["scores"].items()]
            c["env_scores"] = {e: [[b, list(v)] for b, v in d.items()] for e, d in c["env_scores"].items()}
        assert candidates == golden["tui_candidates"]
        for rid, want in golden["tui_details"].items():
            d = reader.detail(int(rid))
            assert (None if d.predecessor is None else d.predecessor.id) == want["predecessor"]
            assert d.predecessor_reason == want["reason"]
            assert [list(dataclasses.astuple(k)) for k in d.recorded_traces] == want["recorded_traces"]
            assert [_row(r) for r in d.results] == want["results"]
    finally:
        reader.close()


def test_study_show_reads_identically(folder: Path, golden: dict[str, Any]):
    shown = CliRunner().invoke(cli, ["study", "show", str(folder)])
    written = golden["study_show"].replace(WRITTEN_AT, str(folder))
    assert shown.exit_code == 0 and shown.output.startswith(written)
    assert shown.output[len(written):].startswith("Sandbox on this machine: ")  # the line added since
    as_json = orjson.loads(CliRunner().invoke(cli, ["study", "show", "--json", str(folder)]).output)
    as_json["leaderboard"] = [_as_written(e) for e in as_json["leaderboard"]]
    assert set(as_json.pop("sandbox")) == {"mode", "level", "unprotected"}
    assert as_json == {**golden["study_show_json"], "folder": str(folder)}
