"""The pieces of `autotts discover`: prices, retry timing, the run-store migration and discovery log, final
selection, the bounded round brief, and the tool definitions shared with the MCP server."""

from __future__ import annotations

import email.utils
import random
import sqlite3
import time

import anyio
import numpy as np
import pytest
from fake_anthropic import Err, FakeAnthropic, message, text
from mcp_helpers import make_study

from core.discovery.log import DiscoveryLog, ExplorerOutcome
from core.discovery.records import DiscoveryCall, EpisodeArrays, ResultRow, Run, Usage
from core.discovery.service import DiscoveryService, cmc_spec
from core.discovery.store import MIGRATIONS, RUN_STORE_SCHEMA_VERSION, RunStore, RunStoreError
from mcp_server import tools
from mcp_server.discover.client import Explorer, ExplorerError, RetryPolicy, _retry_after
from mcp_server.discover.context import RoundLimits, round_brief, system_prompt
from mcp_server.discover.judge import score_run
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
    assert RUN_STORE_SCHEMA_VERSION == 2 and store.schema_version() == 2 and store.count_runs() == 1
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
    outcome = ExplorerOutcome(1, rid, "last-run", 2, 1, [rid], "what I learned", "n")
    row = log.complete_round(sid, 1, status="done", candidate=rid, how="last-run", started=time.time(),
                             explorers=[outcome], note="n")
    assert row.usage == Usage(11, 3, 3, 4, pytest.approx(0.75)) and log.last_round(sid) == 1
    assert (row.candidate, row.how, row.turns, row.tool_calls, row.note) == (rid, "last-run", 2, 1, "n")
    assert log.rounds(sid) == [row] and log.explorers(sid) == {1: [outcome]} and log.max_output_tokens(sid) == 2
    log.tag_run(rid, "d0002", 9)  # a duplicate keeps its first round
    assert log.run_rounds() == {rid: (sid, 1)}
    log.update_session(sid, status="done", report={"x": 1})
    assert log.session(sid).report == {"x": 1} and log.session(sid).status == "done"
    assert log.new_session("m", 1, {}) == "d0002"
    with pytest.raises(ValueError):
        log.update_session(sid, bogus=1)


# ----- selection -------------------------------------------------------------------------------------------------
def _crafted(svc, name, *, betas=None, flip_seed0=0, seed0_tokens=0, scale=1.0, wrong=False):
    """A scored run recorded straight into the store: CMC's episodes at each β, with `flip_seed0` answers of seed 0
    flipped, `seed0_tokens` added to seed 0's episodes, every token count scaled by `scale` (`wrong`: no answer
    right)."""
    env = svc.study.search_envs()[0]
    betas = list(betas or svc.study.betas)
    rows = []
    for b in betas:
        base = svc.baseline(env, cmc_spec(b)).episodes
        correct, tokens = base.correct.copy(), np.round(base.tokens * scale).astype(np.int64)
        correct[0, :flip_seed0] = ~correct[0, :flip_seed0]
        correct &= not wrong
        tokens[0] += seed0_tokens
        rows.append(ResultRow(env.name, b, round(100 * float(correct.mean()), 2), float(tokens.mean()),
                              EpisodeArrays(base.seeds, base.answers, tokens, correct)))
    summary = svc.summarise(rows, [env], betas)
    return svc.store.record_run(Run(name=name, source=name, status="ok", created=0, finished=0, betas=betas,
                                    envs=[env.name], summary=summary), rows)


def test_select_final_ties_within_noise(svc):
    a = _crafted(svc, "a")
    b = _crafted(svc, "b", flip_seed0=1, seed0_tokens=-50)   # one seed differs: within noise, and cheaper
    sel = select_final(svc, [a, b])
    assert sel.mode == "objective" and sel.run_id == b and sel.eligible == 2
    (tie,) = sel.ties
    assert tie.within_noise and tie.run == f"r{(a if sel.leader == f'r{b:04d}' else b):04d}"
    assert abs(tie.diff) < 2 * tie.se and "tie within noise" in sel.note
    cheap = _crafted(svc, "cheap", scale=0.5)                # every seed cheaper: first or the cheapest of a tie
    assert select_final(svc, [a, b, cheap]).run_id == cheap
    worse = _crafted(svc, "worse", wrong=True)  # never reaches SC@64: ranked after, never tied
    sel = select_final(svc, [worse, a])
    assert sel.run_id == a and sel.ties == [] and not score_run(svc, worse).objective.reached
    paper = select_final(svc, [a, b], "accuracy")            # the paper's rule: reports the margin, does not act
    assert paper.mode == "accuracy" and len(paper.ties) == 1 and paper.ties[0].within_noise
    assert "within noise; the paper's rule does not act on it" in paper.note


def test_select_final_leaves_out_probes_and_failures(svc):
    probe = _crafted(svc, "probe", betas=[0.5])
    assert select_final(svc, [probe, None]) is None
    full = _crafted(svc, "full")
    sel = select_final(svc, [probe, full])
    assert sel.run_id == full and sel.candidates == 2 and "1 probe(s)" in sel.note
    bad = svc.store.record_run(Run(name="bad", source="bad", status="error", created=0, finished=0, betas=[],
                                   envs=[]))
    assert select_final(svc, [bad]) is None
    with pytest.raises(ValueError):
        select_final(svc, [full], "gamma")


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
        assert tools.run_controller(svc, code, name=f"v{i}").status == "ok"
    log = DiscoveryLog(svc.store)
    sid = log.new_session("m", 5, {})
    full = round_brief(svc, log, sid, 2, 5, RoundLimits(12, 16), top_k=3)
    assert full.count("```python") == 3 and "Where it loses" in full and len(full) <= 24_000
    small = round_brief(svc, log, sid, 2, 5, RoundLimits(12, 16), top_k=3, max_chars=6_000)
    assert len(small) <= 6_000 and small.count("```python") < 3
    assert "## Leaderboard" in small and "FINAL: r…" in small
