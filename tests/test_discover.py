"""`autotts discover` end to end against a scripted Messages API server over real HTTP on 127.0.0.1.

The explorer's replies are scripted (tests/fake_anthropic.py); everything else is real: the anthropic SDK and its
HTTP layer, the click app, the MCP tools, the sandbox, the run store and the held-out evaluation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from fake_anthropic import Err, FakeAnthropic, message, text, tool_use, usage
from mcp_helpers import REPO, make_study

from autotts.cli import main
from core.discovery.log import DiscoveryLog
from core.discovery.store import RunStore
from mcp_server.prompt import EXAMPLE_CONTROLLER

MODEL = "claude-sonnet-4-6"
CALL_USD = (1000 * 3 + 200 * 15 + 500 * 3.75 + 300 * 0.30) / 1e6  # the fake's default usage at Sonnet 4.6 prices
VARIANT = EXAMPLE_CONTROLLER.replace("class ConfidentVote", "class WiderVote").replace(
    "self.width = 2 + round(6 * beta)", "self.width = 3 + round(8 * beta)")


@pytest.fixture
def api_env(tmp_path, monkeypatch):
    """A key for the fake server, and no stray credentials or endpoint from the machine."""
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE",
                "ANTHROPIC_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path / "study", n_search=1)


def discover(study, fake, *args: str, env: dict[str, str | None] | None = None):
    cmd = ["discover", str(study.folder), "--model", MODEL, "--base-url", fake.url, "--retry-base-s", "0.01",
           *args]
    return CliRunner().invoke(main, cmd, env=env)


def session_rows(study):
    with RunStore(study.store_path, readonly=True) as store:
        log = DiscoveryLog(store)
        sessions = log.sessions()
        return sessions, {s.id: log.rounds(s.id) for s in sessions}, log.run_rounds(), log.spent(sessions[-1].id)


def two_round_script():
    return [
        # round 1
        Err(529, "overloaded_error", "Overloaded"),                                    # retried with backoff
        message(text("First the targets."), tool_use("get_baselines", {})),
        message(tool_use("run_controller", '{"code": "class Broken'),                  # input is not an object
                tool_use("frobnicate", {"x": 1}),                                       # unknown tool
                tool_use("run_controller", {"name": "no code"})),                       # missing argument
        message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote"})),
        message(tool_use("inspect_trace", {"run_id": "r0001"})),
        message(text("A first measurement; it stops early on wrong consensus.\nFINAL: r0001")),
        # round 2
        Err(429, "rate_limit_error", "slow down", {"retry-after": "0.2"}),             # Retry-After obeyed
        message(text("Plan: widen the first wave.\n```python\nclass Wider"),           # cut off mid-answer
                tool_use("run_controller", {"code": "class Wider"}), stop_reason="max_tokens"),
        message(tool_use("run_controller", {"code": VARIANT, "name": "wider vote"})),
        message(text("Wider first wave.\nFINAL: r0002")),
    ]


def test_two_rounds_end_to_end(api_env, study):
    with FakeAnthropic(two_round_script()) as fake:
        res = discover(study, fake, "--rounds", "2", "--max-tokens", "1024")
    assert res.exit_code == 0, res.output
    assert len(fake.requests) == 10 and not fake.script
    # Every request is a well-formed tool-use request to /v1/messages with our key.
    assert set(fake.paths) == {"/v1/messages"}
    assert all("sk-ant-test" in (h.get("x-api-key"), h.get("authorization", "").removeprefix("Bearer "))
               for h in fake.headers)
    first = fake.requests[0]
    assert first["model"] == MODEL and first["max_tokens"] == 1024 and "temperature" not in first
    assert {t["name"] for t in first["tools"]} == {"list_environments", "get_baselines", "run_controller",
                                                   "inspect_trace", "get_history", "get_controller",
                                                   "compare_runs"}
    assert "run_controller" in first["system"][0]["text"] and "FINAL:" in first["system"][0]["text"]
    assert fake.requests[1] == first  # the 529 was retried with the same request

    # The malformed calls came back as is_error tool results, and the round went on.
    bad = fake.tool_results(3)
    assert [r["is_error"] for r in bad] == [True, True, True]
    assert "not a JSON object" in bad[0]["content"]
    assert "unknown tool 'frobnicate'" in bad[1]["content"]
    assert "code" in bad[2]["content"] and "Field required" in bad[2]["content"]
    ok = fake.tool_results(4)
    assert ok[0]["is_error"] is False and ok[0]["content"].startswith("r0001 'confident vote': ok.")
    assert "synth/alpha" in fake.tool_results(5)[0]["content"]

    # Round 2 opened a fresh conversation whose brief holds round 1's record.
    brief = fake.first_user_text(6)
    assert "# Round 2 of 2" in brief and "r0001 'confident vote'" in brief and "class ConfidentVote" in brief
    assert "Where it loses" in brief and len(fake.requests[6]["messages"]) == 1
    # max_tokens: the cut tool call was not run, and the explorer was asked to go on.
    cut = fake.requests[8]["messages"][-1]["content"]
    assert cut[0]["type"] == "tool_result" and cut[0]["is_error"] and "cut off" in cut[0]["content"]
    assert cut[-1]["type"] == "text" and "max_tokens" in cut[-1]["text"]
    assert "retry 1/8 in 0.2 s (as the server asked)" in res.stderr
    assert "retry 1/8" in res.stderr and "529 overloaded_error" in res.stderr

    # Records: two durable rounds, their runs tagged, every call priced.
    sessions, rounds, tags, (spent, calls) = session_rows(study)
    assert [s.status for s in sessions] == ["done"]
    sid = sessions[0].id
    r1, r2 = rounds[sid]
    assert (r1.round, r1.candidate, r1.how, r1.turns, r1.tool_calls) == (1, 1, "named", 5, 6)
    assert (r2.round, r2.candidate, r2.how, r2.turns, r2.tool_calls) == (2, 2, "named", 3, 1)
    assert tags == {1: (sid, 1), 2: (sid, 2)}
    assert calls == 8
    assert r1.usage.cost_usd == pytest.approx(5 * CALL_USD) and r2.usage.cost_usd == pytest.approx(3 * CALL_USD)
    assert spent.cost_usd == pytest.approx(8 * CALL_USD)
    assert (spent.input_tokens, spent.output_tokens, spent.cache_write_tokens, spent.cache_read_tokens) == \
        (8000, 1600, 4000, 2400)

    # The report: rounds, selection, the held-out Table-1 view and the cost line.
    out = res.stdout
    assert "Discovery session d0001" in out and "r0001 confident vote" in out and "r0002 wider vote" in out
    assert "Selected r000" in out and "fewest tokens to reach SC@64's accuracy" in out
    for label in ("SC@64", "ASC", "ESC", "Parallel-Probe", "CMC β=0.5", "CMC β=1.0", "synth/omega"):
        assert label in out
    assert f"Discovery cost: ${8 * CALL_USD:.2f}" in out and "8 API calls" in out
    report = sessions[0].report
    assert report["selection"]["run_id"] in (1, 2) and report["heldout"]["envs"] == ["synth/omega"]
    assert [r["method"] for r in report["heldout"]["rows"]][:6] == \
        ["SC@64", "ASC", "ESC", "Parallel-Probe", "CMC β=0.5", "CMC β=1.0"]
    with RunStore(study.store_path, readonly=True) as store:  # held-out rows recorded as `autotts heldout` does
        assert store.results(report["selection"]["run_id"], split="heldout")

    # The same command again: nothing to do, no API call, the stored report (here as JSON).
    with FakeAnthropic([]) as idle:
        again = discover(study, idle, "--rounds", "2", "--json")
    assert again.exit_code == 0, again.output
    assert idle.requests == []
    doc = orjson.loads(again.stdout)
    assert doc["selection"] == report["selection"] and doc["cost"]["calls"] == 8


def test_paper_rule_selection_and_json(api_env, study):
    script = [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote"})),
              message(text("FINAL: r0001"))]
    with FakeAnthropic(script) as fake:
        res = discover(study, fake, "--rounds", "1", "--select", "accuracy", "--json", "--no-heldout", "-q")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    doc = orjson.loads(res.stdout)
    sel = doc["selection"]
    assert sel["mode"] == "accuracy" and doc["heldout"] is None and sel["run"] == "r0001"
    best = doc["rounds"][0]
    assert (sel["accuracy"], sel["beta"]) == (best["accuracy"], best["beta"])
    assert "tokens to SC@64's" in sel["figures"] and "AUC" in sel["figures"]


def realistic(out_tokens: int = 1024):
    """A reply whose usage follows the request, as the API's would: the prompt is ~4 characters a token, its
    cached prefix (the previous request of the conversation) read from cache, the rest written to it."""
    seen: dict[str, int] = {}

    def usage_of(body):
        prompt = len(orjson.dumps({k: body[k] for k in ("system", "tools", "messages")})) // 4
        first = orjson.dumps(body["messages"][0]).decode()
        cached = seen.get(first, 0)
        seen[first] = prompt
        return usage(0, out_tokens, prompt - cached, cached)

    return usage_of


def test_budget_cap_stops_the_loop(api_env, study):
    big = usage(20_000, 1_000, 0, 0)  # $0.075 a call at Sonnet 4.6 prices
    script = [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote"}), use=big),
              message(text("never sent"), use=big)]
    with FakeAnthropic(script) as fake:
        res = discover(study, fake, "--rounds", "3", "--budget-usd", "0.10", "--max-tokens", "1024")
    assert res.exit_code == 0, res.output
    assert len(fake.requests) == 1  # the second call's estimate would have crossed the cap: never made
    assert "budget: the next call" in res.stderr and "past the cap of $0.10" in res.stderr
    sessions, rounds, _, (spent, calls) = session_rows(study)
    assert sessions[0].status == "budget" and calls == 1
    assert spent.cost_usd == pytest.approx(0.075) and spent.cost_usd <= 0.10
    (r1,) = rounds[sessions[0].id]
    assert (r1.status, r1.candidate, r1.how) == ("partial", 1, "best-of-round")
    assert "Selected r0001" in res.stdout and "stopped early by the budget cap" in res.stdout

    # A cap too small for even the first call: no call at all, and a clean report.
    with FakeAnthropic([message(text("never sent"))]) as fake2:
        res2 = discover(study, fake2, "--rounds", "1", "--budget-usd", "0.01", "--new")
    assert res2.exit_code == 0, res2.output
    assert fake2.requests == [] and "budget:" in res2.stderr
    assert "No round produced a scored full-grid candidate" in res2.stdout

    # A budget needs a price for the model.
    res3 = CliRunner().invoke(main, ["discover", str(study.folder), "--model", "mystery-model", "--budget-usd", "1",
                                     "--base-url", fake2.url])
    assert res3.exit_code == 2 and "no price for model 'mystery-model'" in res3.output and "--prices" in res3.output


@pytest.mark.parametrize("status,kind,needle", [
    (401, "authentication_error", "the API rejected the key (401 authentication_error"),
    (404, "not_found_error", f"model '{MODEL}' was not found at"),
])
def test_fatal_api_errors_exit_2_with_one_line(api_env, study, status, kind, needle):
    with FakeAnthropic([Err(status, kind, "nope")]) as fake:
        res = discover(study, fake, "--rounds", "1")
    assert res.exit_code == 2
    assert len(fake.requests) == 1  # not retried
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output


def test_missing_key_exits_2(api_env, study, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with FakeAnthropic([]) as fake:
        res = discover(study, fake, "--rounds", "1")
    assert res.exit_code == 2 and fake.requests == []
    assert res.output.strip().startswith("Error: no Anthropic API key: set ANTHROPIC_API_KEY")
    assert "Traceback" not in res.output


def test_retries_give_up_with_a_clear_message(api_env, study):
    with FakeAnthropic([Err(500, "api_error", "boom")] * 3) as fake:
        res = discover(study, fake, "--rounds", "1", "--max-retries", "2")
    assert res.exit_code == 2 and len(fake.requests) == 3
    assert "the API kept failing (500 api_error: boom) after 2 retries" in res.stderr
    assert "run the same command again to continue" in res.stderr


def test_timeout_is_retried(api_env, study):
    from fake_anthropic import Delay

    script = [Delay(3.0, message(text("too late"))), message(text("Nothing to submit yet."))]
    with FakeAnthropic(script) as fake:
        res = discover(study, fake, "--rounds", "1", "--timeout", "1", "--no-heldout")
    assert res.exit_code == 0, res.output
    assert "API timed out; retry 1/8" in res.stderr and len(fake.requests) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_resume_after_interruption(api_env, study, sig):
    """Kill the process while round 2 waits for the API; the same command then finishes round 2 only."""
    script = [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote"})),
              message(text("FINAL: r0001")),
              message(tool_use("run_controller", {"code": VARIANT, "name": "wider vote"})),
              message(text("FINAL: r0002"))]
    reached, release = threading.Event(), threading.Event()

    def hold_round_two(index, body):
        first = body["messages"][0]["content"]
        if "# Round 2 of 2" in str(first) and not reached.is_set():
            reached.set()
            release.wait(120)
            return message(text("nobody is listening"))  # served to a dead connection; the script is untouched
        return None

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with FakeAnthropic(script) as fake:
        fake.on_request = hold_round_two
        cmd = [sys.executable, "-m", "autotts", "discover", str(study.folder), "--model", MODEL,
               "--rounds", "2", "--base-url", fake.url, "--no-heldout"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert reached.wait(180), "round 2 never started"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            assert "interrupted: session d0001 has 1 completed round(s) saved" in err
        else:
            assert proc.returncode == -signal.SIGKILL
        sessions, rounds, _, (_, calls) = session_rows(study)
        assert [r.round for r in rounds["d0001"]] == [1] and calls == 2

        n_before = len(fake.requests)
        fake.on_request = None
        again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming session d0001 at round 2 of 2" in again.stderr
    resumed = fake.requests[n_before:]
    assert len(resumed) == 2 and all("# Round 2 of 2" in str(r["messages"][0]["content"]) for r in resumed)
    sessions, rounds, tags, (_, calls) = session_rows(study)
    assert [s.status for s in sessions] == ["done"] and len(sessions) == 1
    assert [(r.round, r.candidate) for r in rounds["d0001"]] == [(1, 1), (2, 2)]
    assert tags == {1: ("d0001", 1), 2: ("d0001", 2)} and calls == 4
    assert "Selected r000" in again.stdout


def test_core_does_not_import_anthropic():
    code = ("import sys, core, core.discovery.log, core.discovery.service, core.discovery.store, "
            "core.discovery.study, core.evaluate; "
            "bad = {'anthropic', 'mcp', 'mcp_server', 'textual', 'autotts_tui', 'click', 'autotts'} & set(sys.modules); "
            "assert not bad, f'core imported {bad}'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    for path in Path(REPO, "core").rglob("*.py"):
        assert "import anthropic" not in path.read_text(), path


# ----- what a round carries, completes, selects and spends -----------------------------------------------------------
def test_lessons_reach_the_next_brief_and_a_probe_is_completed(api_env, tmp_path):
    study = make_study(tmp_path / "grid5", n_search=1, betas=(0.0, 0.25, 0.5, 0.75, 1.0))
    lesson = "Stopping at two agreeing votes loses the hard questions; widen the first wave next."
    script = [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote",
                                                  "betas": [0, 0.5, 1]})),
              message(text(f"{lesson}\nFINAL: r0001")),
              message(text("Nothing new this round."))]
    with FakeAnthropic(script) as fake:
        res = discover(study, fake, "--rounds", "2")
    assert res.exit_code == 0, res.output
    assert "completing r0001 (β 0, 0.5, 1 on 1 environment(s)) to the full β grid" in res.stderr
    sessions, rounds, tags, _ = session_rows(study)
    r1, r2 = rounds[sessions[0].id]
    assert (r1.candidate, r1.how) == (2, "named, completed from r0001") and r2.candidate is None
    assert tags[2] == (sessions[0].id, 1)
    with RunStore(study.store_path, readonly=True) as store:
        assert store.run(1).betas == [0.0, 0.5, 1.0]                     # the probe stays a probe
        assert sorted(store.run(2).betas) == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert sorted({r.beta for r in store.results(2, split="heldout")}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    brief = fake.first_user_text(2)
    assert "## Round 1: what was tried and learned" in brief and f"lesson: {lesson}" in brief
    assert "FINAL" not in brief.split("## Round 1: what was tried")[1].split("##")[0]
    assert "not ranked (probes on part of the β grid): r0001" in brief
    assert "## r0002 'confident vote'" in brief and "tokens to SC@64's" in brief and "± SE" in brief
    assert "Where it loses, per search environment" in brief and "synth/alpha:" in brief
    assert sessions[0].report["selection"]["run"] == "r0002"


def test_budget_just_above_one_rounds_cost_runs_that_round(api_env, tmp_path):
    def script():
        return [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote"}),
                        use=None), message(text("Measured.\nFINAL: r0001"))]

    def served(items):
        usage_of = realistic()
        queue = list(items)
        return lambda body: {**queue.pop(0), "usage": usage_of(body)}

    first = make_study(tmp_path / "a", n_search=1)
    serve_first = served(script())
    with FakeAnthropic([]) as fake:
        fake.on_request = lambda i, body: serve_first(body)
        res = discover(first, fake, "--rounds", "1", "--no-heldout")
    assert res.exit_code == 0, res.output
    one_round = session_rows(first)[3][0].cost_usd
    # The old reserve (a full 8,192-token reply, $0.12 at Sonnet's output rate) would not have let this round start.
    budget = round(one_round * 1.5, 4)
    assert budget < 8192 * 15 / 1e6

    second = make_study(tmp_path / "b", n_search=1)  # the same study, so the same prompts
    serve_second = served(script() + [message(text("never sent"))])
    with FakeAnthropic([]) as fake:
        fake.on_request = lambda i, body: serve_second(body)
        res = discover(second, fake, "--rounds", "2", "--budget-usd", str(budget), "--no-heldout")
    assert res.exit_code == 0, res.output
    assert len(fake.requests) == 2 and "budget: the next call" in res.stderr
    sessions, rounds, _, (spent, calls) = session_rows(second)
    (r1,) = rounds[sessions[0].id]
    assert (r1.status, r1.candidate, calls) == ("done", 1, 2) and sessions[0].status == "budget"
    assert spent.cost_usd == pytest.approx(one_round, rel=0.01) and spent.cost_usd <= budget  # + the budget line


TWIN = EXAMPLE_CONTROLLER.replace("class ConfidentVote", "class ConfidentTwin")  # same behaviour, other source


def test_two_explorers_share_the_study_and_tie_within_noise(api_env, study):
    scripts = {
        1: [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "confident vote"})),
            message(text("The example as a reference point."))],
        2: [message(tool_use("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "same source"})),
            message(tool_use("run_controller", {"code": TWIN, "name": "twin"})),
            message(text("A renamed twin behaves the same.\nFINAL: r0002"))],
    }

    def route(index, body):
        first = orjson.dumps(body["messages"][0]).decode()
        k = 1 if "explorer 1 of 2" in first else 2
        return scripts[k].pop(0)

    with FakeAnthropic([]) as fake:
        fake.on_request = route
        res = discover(study, fake, "--rounds", "1", "--explorers", "2", "--no-heldout")
    assert res.exit_code == 0, res.output
    assert not scripts[1] and not scripts[2] and len(fake.requests) == 5
    briefs = {fake.first_user_text(i) for i, r in enumerate(fake.requests) if len(r["messages"]) == 1}
    assert len({b.split("You are explorer")[0] for b in briefs}) == 1     # the same brief for both
    with RunStore(study.store_path, readonly=True) as store:
        assert store.count_runs() == 2                                   # the shared source evaluated once
        assert [r.id for r in store.find_by_sha(store.run(1).sha256)] == [1]
        log = DiscoveryLog(store)
        sid = log.sessions()[0].id
        (outcomes,) = log.explorers(sid).values()
    assert [(o.explorer, o.candidate) for o in outcomes] == [(1, 1), (2, 2)]
    assert outcomes[1].runs == [1, 2] and outcomes[1].lesson == "A renamed twin behaves the same."
    # r0001 carries the name of whichever explorer's call evaluated it first
    assert re.search(r"explorer 1: r0001 '(confident vote|same source)' \(best-of-round\)", res.stderr)
    assert "explorer 2: r0002 'twin' (named)" in res.stderr
    out = res.stdout
    assert "round 1: explorer 1 → r0001 (1 run(s)); explorer 2 → r0002 (2 run(s))" in out
    assert "vs r0002:" in out and "tie (within noise)" in out
    sel = session_rows(study)[0][0].report["selection"]
    assert sel["run"] == "r0001" and sel["ties"][0]["run"] == "r0002" and sel["ties"][0]["within_noise"]
    assert "tie within noise" in sel["note"]
