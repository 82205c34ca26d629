"""The pieces of `autotts discover`: prices, retry timing, the run-store migration and discovery log, final
selection, the bounded round brief, and the tool definitions shared with the MCP server."""

from __future__ import annotations

import email.utils
import random
import sqlite3
import time
from types import SimpleNamespace

import anyio
import pytest
from fake_anthropic import Err, FakeAnthropic, message, text
from mcp_helpers import make_study

from core.discovery.log import DiscoveryLog
from core.discovery.records import BestPoint, BetaSummary, DiscoveryCall, Run, RunSummary, Usage
from core.discovery.service import DiscoveryService
from core.discovery.store import MIGRATIONS, SCHEMA_VERSION, RunStore, RunStoreError
from mcp_server import tools
from mcp_server.discover.client import Explorer, ExplorerError, RetryPolicy, _retry_after
from mcp_server.discover.context import RoundLimits, round_brief, system_prompt
from mcp_server.discover.loop import FINAL_RE, _code_block
from mcp_server.discover.pricing import Price, PriceTable, PricingError
from mcp_server.discover.report import select_final
from mcp_server.discover.toolbox import Toolbox
from mcp_server.prompt import EXAMPLE_CONTROLLER, controller_format, discover_prompt
from mcp_server.server import build_server


# ----- prices ----------------------------------------------------------------------------------------------------
def test_price_matching_and_cost():
    t = PriceTable()
    assert t.match("claude-sonnet-4-5-20250929") == "claude-sonnet-4"
    assert t.match("anthropic/claude-opus-4.6") == "claude-opus-4-6"
    assert t.match("claude-opus-4-20250514") == "claude-opus-4"
    assert t.match("claude-opus-4-1-20250805") == "claude-opus-4-1"
    assert t.match("claude-opus-4-9") == "claude-opus-4"          # unknown point release: the family's (higher) rate
    assert t.match("claude-sonnet-4-6[1m]") == "claude-sonnet-4"
    assert t.match("gpt-5") is None and t.price("claude-opusx") is None
    u = Usage(1_000_000, 100_000, 200_000, 2_000_000)
    assert t.cost("claude-sonnet-4-6", u) == pytest.approx(3 + 1.5 + 0.75 + 0.6)
    assert t.cost("mystery", u) == 0.0
    # The estimate never undercuts what the same prompt and a full reply would really cost, however it is cached.
    p = t.price("claude-opus-4-6")
    worst = max(p.cost(Usage(10_000, 4096, 0, 0)), p.cost(Usage(0, 4096, 10_000, 0)), p.cost(Usage(0, 4096, 0, 10_000)))
    assert t.estimate("claude-opus-4-6", 10_000, 4096) >= worst


def test_prices_file_overrides(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text('{"my-model": {"input": 1, "output": 2}, "claude-sonnet-4": {"input": 9, "output": 9, "cache_read": 0}}')
    t = PriceTable.load(f)
    assert t.price("my-model-v2") == Price(1.0, 2.0, 1.25, 0.1)
    assert t.price("claude-sonnet-4-6") == Price(9.0, 9.0, 11.25, 0.0)
    assert t.price("claude-opus-4-6") == PriceTable().price("claude-opus-4-6")
    for bad, needle in (('{"m": {"input": 1}}', '"output"'), ('{"m": {"input": -1, "output": 1}}', "non-negative"),
                        ('{"m": {"input": 1, "output": 1, "extra": 1}}', "unknown key"), ("[1", "invalid JSON"),
                        ("[]", "expected")):
        f.write_text(bad)
        with pytest.raises(PricingError, match=needle):
            PriceTable.load(f)
    with pytest.raises(PricingError, match="cannot read"):
        PriceTable.load(tmp_path / "missing.json")


# ----- retries -----------------------------------------------------------------------------------------------------
def test_retry_after_parsing_and_backoff():
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({}) is None and _retry_after({"retry-after": "soon"}) is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after({"retry-after": later}) <= 31
    policy, rng = RetryPolicy(base_s=1.0, cap_s=8.0), random.Random(0)
    for attempt in range(8):
        step = min(8.0, 2.0 ** attempt)
        assert step / 2 <= policy.backoff(attempt, rng) <= step


def test_explorer_retries_then_fails_fast_on_a_bad_request(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    slept: list[float] = []
    script = [Err(529, "overloaded_error", "Overloaded"), Err(503, "api_error", "unavailable", {"retry-after-ms": "40"}),
              message(text("hello")), Err(400, "invalid_request_error", "prompt is too long")]
    with FakeAnthropic(script) as fake:
        ex = Explorer("claude-haiku-4-5", base_url=fake.url, retry=RetryPolicy(base_s=0.5), sleep=slept.append,
                      rng=random.Random(1))
        reply = ex.create(system=[], tools=[], messages=[{"role": "user", "content": "hi"}], max_tokens=64)
        assert reply.retries == 2 and reply.message.content[0].text == "hello"
        assert 0.25 <= slept[0] <= 0.5 and slept[1] == 0.04 and ex.waits == slept
        with pytest.raises(ExplorerError, match="refused the request \\(400 invalid_request_error: prompt is too long"):
            ex.create(system=[], tools=[], messages=[{"role": "user", "content": "hi"}], max_tokens=64)
        assert len(fake.requests) == 4 and len(slept) == 2


# ----- the run store ---------------------------------------------------------------------------------------------
def _v1_store(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executescript(MIGRATIONS[0][2])
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO runs (name, source, sha256, created, finished, status, betas, envs) "
               "VALUES ('old', 'x', 'h', 1, 2, 'error', '[]', '[]')")
    db.commit()
    db.close()


def test_v1_store_migrates_to_v2(tmp_path):
    path = tmp_path / "runs.sqlite"
    _v1_store(path)
    with pytest.raises(RunStoreError, match="needs migrating"):
        RunStore(path, readonly=True)
    store = RunStore(path)
    assert SCHEMA_VERSION == 2 and store.schema_version() == 2 and store.count_runs() == 1
    tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"discovery_sessions", "discovery_rounds", "discovery_calls", "discovery_runs"} <= tables
    assert store._db.execute("SELECT value FROM meta WHERE key='migration_002'").fetchone()[0].startswith(
        "discovery sessions")
    store.close()
    RunStore(path, readonly=True).close()


def test_discovery_log_records(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    log = DiscoveryLog(store)
    sid = log.new_session("m", 3, {"rounds": 3})
    assert sid == "d0001" and log.latest_session().config == {"rounds": 3}
    rid = store.record_run(Run(name="c", source="s", status="error", created=0, finished=0, betas=[], envs=[]))
    log.record_call(DiscoveryCall(sid, 1, "m", "tool_use", Usage(10, 2, 3, 4, 0.5), 1.0, 0))
    log.tag_run(rid, sid, 1)
    log.record_call(DiscoveryCall(sid, 1, "m", "end_turn", Usage(1, 1, 0, 0, 0.25), 1.0, 2))  # cut short, redone
    row = log.complete_round(sid, 1, status="done", candidate=rid, how="last-run", started=time.time(), turns=2,
                             tool_calls=1, note="n", run_ids=[rid])
    assert row.usage == Usage(11, 3, 3, 4, pytest.approx(0.75)) and log.last_round(sid) == 1
    assert (row.candidate, row.how, row.turns, row.tool_calls, row.note) == (rid, "last-run", 2, 1, "n")
    assert log.rounds(sid) == [row]
    log.tag_run(rid, "d0002", 9)  # a duplicate keeps its first round
    assert log.run_rounds() == {rid: (sid, 1)}
    log.update_session(sid, status="done", report={"x": 1})
    assert log.session(sid).report == {"x": 1} and log.session(sid).status == "done"
    assert log.new_session("m", 1, {}) == "d0002"
    with pytest.raises(ValueError):
        log.update_session(sid, bogus=1)


# ----- selection -------------------------------------------------------------------------------------------------
def _scored(store, name, per_beta, monotone=True, status="ok"):
    summary = RunSummary(per_beta=[BetaSummary(b, a, t) for b, a, t in per_beta], best=BestPoint(*per_beta[-1]),
                         monotone=monotone)
    return store.record_run(Run(name=name, source=name, status=status, created=0, finished=0,
                                betas=[b for b, _, _ in per_beta], envs=["e"], summary=summary))


def test_select_final_rules(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    svc = SimpleNamespace(store=store)
    a = _scored(store, "a", [(0.0, 40.0, 100_000), (1.0, 50.0, 300_000)])
    b = _scored(store, "b", [(0.0, 45.0, 50_000), (0.5, 50.0, 200_000)])
    c = _scored(store, "c", [(0.0, 70.0, 10_000)], monotone=False)
    d = _scored(store, "d", [(0.0, 99.0, 1)], status="error")
    sel = select_final(svc, [a, b, c, d, None, a])
    assert (sel.run_id, sel.beta, sel.accuracy, sel.candidates, sel.eligible) == (b, 0.5, 50.0, 4, 2)
    obj = select_final(svc, [a, b], "objective", gamma=1e-4)   # 45 − 5 beats 50 − 20 and 40 − 10
    assert (obj.run_id, obj.beta) == (b, 0.0) and obj.score == pytest.approx(40.0)
    assert select_final(svc, [a, b], "objective", gamma=0.0).beta == 0.5
    only_bad = select_final(svc, [c, d])
    assert only_bad.run_id == c and "monotone" in only_bad.note
    assert select_final(svc, [d]) is None and select_final(svc, []) is None


def test_final_line_and_code_block_parsing():
    assert [int(x) for x in FINAL_RE.findall("FINAL: r0012")] == [12]
    assert [int(x) for x in FINAL_RE.findall("**FINAL:** `r7`\nfinal = 0009")] == [7, 9]
    assert FINAL_RE.findall("the final answer") == []
    assert _code_block(["x", "```python\nclass A:\n    def solve(self, q):\n        return None\n```"]).startswith("class A")
    assert _code_block(["```python\nprint(1)\n```"]) is None


# ----- what the explorer sees ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    return DiscoveryService(make_study(tmp_path_factory.mktemp("units") / "study", n_search=1))


def test_tool_definitions_are_the_mcp_tools(svc):
    box = Toolbox(svc)
    mcp_tools = {t.name: t for t in anyio.run(build_server(svc).list_tools)}
    defs = {d["name"]: d for d in box.definitions()}
    assert set(defs) == set(mcp_tools)
    for name, d in defs.items():
        assert d["description"] == mcp_tools[name].description
        schema = dict(mcp_tools[name].input_schema)
        schema.pop("title", None)
        assert d["input_schema"] == schema
    assert defs["run_controller"]["input_schema"]["required"] == ["code"]


def test_system_prompt_reuses_the_brief(svc):
    prompt = system_prompt(svc, 4, RoundLimits(7, 9))
    assert discover_prompt(svc.study) in prompt and controller_format() in prompt
    assert "4 rounds" in prompt and "at most 9 tool calls and 7 replies" in prompt


def test_round_brief_is_bounded(svc):
    padding = "\n".join(f"# padding line {i} " + "x" * 80 for i in range(150))
    for i in range(3):
        code = EXAMPLE_CONTROLLER.replace("class ConfidentVote", f"class Vote{i}") + padding
        assert tools.run_controller(svc, code, name=f"v{i}", betas=[0.5]).status == "ok"
    log = DiscoveryLog(svc.store)
    sid = log.new_session("m", 5, {})
    full = round_brief(svc, log, sid, 2, 5, RoundLimits(12, 16), top_k=3)
    assert full.count("```python") == 3 and "Where it loses" in full and len(full) <= 24_000
    small = round_brief(svc, log, sid, 2, 5, RoundLimits(12, 16), top_k=3, max_chars=6_000)
    assert len(small) <= 6_000 and small.count("```python") < 3
    assert "## Leaderboard" in small and "FINAL: r…" in small
