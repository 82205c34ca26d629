"""The MCP server through real MCP clients: in-process, over stdio (a subprocess) and over streamable HTTP, plus
the `autotts study`, `autotts heldout` commands and the MCP Inspector CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import anyio
import orjson
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp_helpers import CMC_CANDIDATE, HELDOUT, REPO, SEARCH, make_study, text

from autotts.cli import main
from core.discovery.records import TraceKey
from core.discovery.service import DiscoveryService
from core.evaluate import evaluate
from mcp_server import tools
from mcp_server.prompt import EXAMPLE_CONTROLLER
from mcp_server.server import build_server

pytestmark = pytest.mark.anyio

TOOLS = {"list_environments", "get_baselines", "run_controller", "inspect_trace", "get_history", "get_controller",
         "compare_runs"}

NON_MONOTONE = '''
from core.primitives import majority

class Shrinking:
    def __init__(self, beta=0.5):
        self.n = 8 - round(6 * beta)          # fewer reads as beta rises: tokens fall

    def solve(self, question):
        return majority([question.get_new_branch_final_answer() for _ in range(self.n)])
'''

GREEDY = '''
from core.primitives import majority

class Greedy:
    def __init__(self, beta=0.5):
        self.n = 70                           # above the 64-branch ceiling

    def solve(self, question):
        return majority([question.get_new_branch_final_answer() for _ in range(self.n)])
'''



@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("mcp") / "study")


@pytest.fixture(scope="module")
def svc(study):
    return DiscoveryService(study)


@pytest.fixture(scope="module")
def server(svc):
    return build_server(svc)


@pytest.fixture(scope="module")
def example_run(svc):
    report = tools.run_controller(svc, EXAMPLE_CONTROLLER, name="example")
    assert report.status == "ok", report.text()
    return report


async def test_tools_prompt_and_resources_are_listed(server):
    async with Client(server) as c:
        listed = (await c.list_tools()).tools
        assert {t.name for t in listed} == TOOLS
        for t in listed:
            assert t.description and t.output_schema, t.name
        prompt = await c.get_prompt("discover")
        brief = prompt.messages[0].content.text
        for needle in ("probe_new", "64 branches", "β", "oracle", "monotone", "run_controller", "inspect_trace",
                       "Accuracy first, then tokens", SEARCH[0]):
            assert needle in brief, needle
        assert HELDOUT not in brief
        fmt = (await c.read_resource("autotts://controller-format")).contents[0].text
        assert "get_new_branch_final_answer" in fmt and "class ConfidentVote" in fmt and "None" in fmt
        assert "exactly the gold answer string" in fmt and '"ERR"' in fmt and "max_open" in fmt
        study_doc = json.loads((await c.read_resource("autotts://study")).contents[0].text)
        assert study_doc["search"] == list(SEARCH) and study_doc["heldout"] == 1
        assert "folder" not in study_doc and "runs.sqlite" not in json.dumps(study_doc)
        assert "exactly the gold answer string" in study_doc["scoring"]


async def test_list_environments_hides_heldout(server):
    async with Client(server) as c:
        r = await c.call_tool("list_environments", {})
    assert not r.is_error
    assert [e["name"] for e in r.structured_content["search"]] == list(SEARCH)
    assert r.structured_content["heldout_count"] == 1
    assert "omega" not in text(r) and "omega" not in json.dumps(r.structured_content)


async def test_get_baselines_match_the_evaluator(server, study):
    async with Client(server) as c:
        r = await c.call_tool("get_baselines", {"envs": [SEARCH[1]]})
    assert not r.is_error, text(r)
    env = study.search_envs([SEARCH[1]])[0]
    by = {b["label"]: b for b in r.structured_content["average"]}
    assert set(by) >= {"SC@64", "ASC", "ESC", "Parallel-Probe", "CMC β=0", "CMC β=0.5", "CMC β=1"}
    for spec, label in (("sc:n=64", "SC@64"), ("asc", "ASC"), ("cmc:beta=0.5", "CMC β=0.5")):
        ref = evaluate(env, spec, study.seeds)
        assert by[label]["accuracy"] == ref.accuracy and by[label]["avg_tokens"] == round(ref.avg_tokens, 1)
    assert any(b["on_frontier"] for b in r.structured_content["average"])


async def test_run_controller_reports_against_baselines_with_progress(server, study):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    async with Client(server) as c:
        r = await c.call_tool("run_controller", {"code": EXAMPLE_CONTROLLER, "name": "progress-check",
                                                 "betas": [0.0, 0.5, 1.0, 0.2]}, progress_callback=on_progress)
    assert not r.is_error, text(r)
    sc = r.structured_content
    assert sc["status"] == "ok" and sc["run_id"].startswith("r") and sc["name"] == "progress-check"
    assert [p["beta"] for p in sc["search_avg"]] == [0.0, 0.2, 0.5, 1.0]
    assert sc["per_env"]["columns"][0] == "env" and [row[0] for row in sc["per_env"]["rows"]] == list(SEARCH)
    assert {"SC@64", "ASC", "ESC", "Parallel-Probe", "CMC β=0"} <= {b["label"] for b in sc["baselines"]}
    assert isinstance(sc["monotone"], bool)
    for p in sc["search_avg"]:
        assert set(p) >= {"beta", "accuracy", "avg_tokens", "dominated"}
    assert seen and seen[0][2] and seen[-1][0] >= seen[0][0]
    body = text(r)
    assert "search average" in body and "monotone" in body and len(body) < 6000
    assert "Objective" in body and "of SC@64's" in body and sc["objective"]["auc"] > 0
    assert sc["timing"]["wall_s"] > 0 and sc["timing"]["cores"] >= 1 and "episodes/s" in body
    assert sc["seeds"] == study.n_seeds and "quick" not in sc
    assert all(p["accuracy_se"] is not None and p["tokens_se"] is not None for p in sc["search_avg"])
    assert len(json.dumps(sc)) < 8000


async def test_cmc_source_as_candidate_gives_builtin_cmc_numbers(server, svc, study):
    async with Client(server) as c:
        r = await c.call_tool("run_controller", {"code": CMC_CANDIDATE, "name": "cmc-source"})
    assert not r.is_error, text(r)
    rid = r.structured_content["run_id"]
    rows = svc.store.results(rid)
    assert len(rows) == len(SEARCH) * len(study.betas)
    for row in rows:
        env = study.search_envs([row.env])[0]
        ref = evaluate(env, f"cmc:beta={row.beta:g}", study.seeds)
        assert (row.accuracy, row.avg_tokens) == (ref.accuracy, ref.avg_tokens), (row.env, row.beta)
    cmc_points = {b["label"]: b for b in r.structured_content["baselines"]}
    for p in r.structured_content["search_avg"]:
        base = cmc_points[f"CMC β={p['beta']:g}"]
        assert (p["accuracy"], p["avg_tokens"]) == (base["accuracy"], base["avg_tokens"])
        assert p["dominated"] is False


async def test_inspect_trace_digest_episode_and_paging(server, svc, study, example_run):
    rid = example_run.run_id
    async with Client(server) as c:
        d = await c.call_tool("inspect_trace", {"run_id": rid, "env": SEARCH[0], "beta": 0.5})
        assert not d.is_error, text(d)
        dig = d.structured_content
        assert dig["kind"] == "digest" and len(dig["table"]["rows"]) == 6
        assert {"acc%", "sc64%", "lost", "tokens", "opened", "stops"} <= set(dig["table"]["columns"])
        for s, q in dig["examples"]:
            assert 0 <= s < study.n_seeds and 0 <= q < 6
        paged = await c.call_tool("inspect_trace", {"run_id": rid, "page": 2, "page_size": 4})
        assert paged.structured_content["pages"] == 2 and len(paged.structured_content["table"]["rows"]) == 2
        per_seed = await c.call_tool("inspect_trace", {"run_id": rid, "seed": 2})
        assert per_seed.structured_content["table"]["columns"][:3] == ["q", "correct", "sc64_correct"]
        e = await c.call_tool("inspect_trace", {"run_id": rid, "env": SEARCH[0], "beta": 0.5, "question": 1,
                                                "seed": 3})
        assert not e.is_error, text(e)
        ep = e.structured_content
        assert ep["kind"] == "episode" and ep["view"] == "branches" and ep["seed"] == 3 and ep["question"] == 1
        branches = ep["table"]["rows"]  # branch, finish_order, tokens, steps, status, final_answer
        assert [b[0] for b in branches] == list(range(len(branches))) and sum(b[2] for b in branches) == ep["tokens"]
        assert {b[4] for b in branches} <= {"finished", "pruned", "running", "read"}
        assert "Branch view" in text(e) and "answers by step" in text(e) and "stop:" in text(e)
        recorded = svc.store.results(rid, env=SEARCH[0], beta=0.5, with_episodes=True)[0].episodes
        assert ep["tokens"] == int(recorded.tokens[3, 1]) and ep["answer"] == recorded.answers[3][1]
        assert "NOTE" not in ep["summary"]  # the re-run matched the recorded episode
        assert svc.store.trace(int(rid[1:]), TraceKey(SEARCH[0], 0.5, 3, 1)) is not None  # cached for next time
        acts = await c.call_tool("inspect_trace", {"run_id": rid, "env": SEARCH[0], "beta": 0.5, "question": 1,
                                                   "seed": 3, "view": "actions"})
        lines = acts.structured_content["body"].splitlines()
        assert lines[0].split()[:2] == ["#", "op"] and lines[1].split()[:2] == ["0", "open"]
        assert len(lines) - 1 == ep["actions"] == acts.structured_content["actions"]
        fins = await c.call_tool("inspect_trace", {"run_id": rid, "env": SEARCH[0], "beta": 0.5, "question": 1,
                                                   "seed": 3, "view": "actions", "only": "finishes"})
        fin_rows = fins.structured_content["body"].splitlines()[1:]
        assert fin_rows and all(r.endswith("fin") or " fin" in r for r in fin_rows)
        assert len(fin_rows) == sum(1 for b in branches if b[4] == "finished" or b[1] is not None)
        bad = await c.call_tool("inspect_trace", {"run_id": rid, "question": 1, "view": "actions", "only": "x"})
        assert bad.is_error and "finishes" in text(bad)
        default_seed = await c.call_tool("inspect_trace", {"run_id": rid, "question": 0})
        assert not default_seed.is_error and default_seed.structured_content["seed"] is not None


async def test_history_and_get_controller(server, example_run):
    async with Client(server) as c:
        h = await c.call_tool("get_history", {})
        g = await c.call_tool("get_controller", {"run_id": example_run.run_id})
        paged = await c.call_tool("get_history", {"page_size": 1, "page": 1})
    assert not h.is_error and example_run.run_id in text(h)
    assert h.structured_content["table"]["columns"][:4] == ["rank", "run", "name", "kind"]
    assert "tok/SC@64" in text(h) and "% of SC@64's tokens" in text(h)
    assert not g.is_error and g.structured_content["source"] == EXAMPLE_CONTROLLER.rstrip("\n")
    assert paged.structured_content["pages"] == paged.structured_content["total"] >= 1


async def test_duplicate_source_is_not_rerun(server, example_run, svc):
    before = svc.store.count_runs()
    async with Client(server) as c:
        r = await c.call_tool("run_controller", {"code": EXAMPLE_CONTROLLER})
    assert not r.is_error
    assert r.structured_content["duplicate_of"] == example_run.run_id
    assert "already evaluated" in text(r) and svc.store.count_runs() == before


async def test_non_monotone_candidate_is_flagged(server):
    async with Client(server) as c:
        r = await c.call_tool("run_controller", {"code": NON_MONOTONE, "name": "shrinking"})
    assert not r.is_error, text(r)
    assert r.structured_content["monotone"] is False
    assert any("β 0→0.5" in v for v in r.structured_content["monotone_violations"])
    assert "NOT monotone" in text(r)


async def test_branch_ceiling_is_enforced(server, svc):
    async with Client(server) as c:
        r = await c.call_tool("run_controller", {"code": GREEDY, "betas": [0.5]})
    assert r.is_error
    assert r.structured_content["status"] == "refused" and "ceiling is 64" in text(r)
    assert svc.store.run(r.structured_content["run_id"]).status == "refused"


async def test_concurrent_run_controller_calls_are_serialised(server, svc):
    results: dict[str, object] = {}
    code_a = EXAMPLE_CONTROLLER + "\n# variant a\n"
    code_b = EXAMPLE_CONTROLLER + "\n# variant b\n"

    async with Client(server) as c:
        async def call(key, code):
            results[key] = await c.call_tool("run_controller", {"code": code, "name": key, "betas": [0.0, 1.0]})

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a", code_a)
            tg.start_soon(call, "b", code_b)
    reports = [results["a"].structured_content, results["b"].structured_content]
    assert all(r["status"] == "ok" for r in reports), [text(results[k]) for k in "ab"]
    assert reports[0]["run_id"] != reports[1]["run_id"]
    assert max(r["queued_s"] for r in reports) > 0
    runs = sorted((svc.store.run(r["run_id"]) for r in reports), key=lambda r: r.created)
    assert runs[0].finished <= runs[1].created + 1e-3  # one at a time
    assert any("waited" in text(results[k]) for k in "ab")


# ----- stdio ------------------------------------------------------------------------------------------------------
def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def test_stdio_subprocess(tmp_path):
    folder = tmp_path / "study"
    make_study(folder, n_search=1, n_questions=4, n_seeds=3)
    params = StdioServerParameters(command=sys.executable, args=["-m", "autotts", "mcp", str(folder)],
                                   env=_server_env(), cwd=str(tmp_path))
    async with Client(params) as c:
        assert {t.name for t in (await c.list_tools()).tools} == TOOLS
        envs = await c.call_tool("list_environments", {})
        assert not envs.is_error and SEARCH[0] in text(envs)
        run = await c.call_tool("run_controller", {"code": CMC_CANDIDATE, "betas": [0.5], "name": "stdio"})
        assert not run.is_error, text(run)
        bad = await c.call_tool("inspect_trace", {"run_id": "r0042"})
        assert bad.is_error and "no run r0042" in text(bad)
        again = await c.call_tool("get_history", {})
        assert not again.is_error and "stdio" in text(again)
        assert "discover" in {p.name for p in (await c.list_prompts()).prompts}
    # what live viewers (autotts tui) read: the last evaluation's progress and the server's log
    progress = orjson.loads((folder / "progress.json").read_bytes())
    # 1 environment × 1 β × 3 seeds = 3 cells, each run twice by the audit (a small run is audited whole)
    assert progress["run"] == "stdio" and progress["state"] == "done" and progress["done"] == progress["total"] == 6
    assert "recorded stdio as run" in (folder / "server.log").read_text()


# ----- HTTP -------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def http_server(tmp_path):
    folder = tmp_path / "study"
    make_study(folder, n_search=1, n_questions=4, n_seeds=3)
    port = _free_port()
    token_file = tmp_path / "token"
    proc = subprocess.Popen([sys.executable, "-m", "autotts", "mcp", str(folder), "--http", "--port",
                             str(port), "--token-file", str(token_file)], env=_server_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode()) from None
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("HTTP server did not start")
    yield port, token_file.read_text().strip(), proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_http_transport_token_origin_and_host_checks(http_server, tmp_path):
    port, token, proc = http_server
    assert oct((tmp_path / "token").stat().st_mode & 0o777) == "0o600" and len(token) >= 32
    url = f"http://127.0.0.1:{port}/mcp"
    auth = {"Authorization": f"Bearer {token}"}
    assert _post(url, {}) == 401
    assert _post(url, {"Authorization": "Bearer wrong"}) == 401
    assert _post(url, {**auth, "Origin": "http://evil.example"}) == 403
    assert _post(url, {**auth, "Host": "evil.example"}) == 421
    assert _post(url, {**auth, "Origin": f"http://127.0.0.1:{port}"}) == 200
    assert _post(url, {**auth, "Origin": f"http://localhost:{port}"}) == 200
    transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=auth))
    async with Client(transport) as c:
        assert {t.name for t in (await c.list_tools()).tools} == TOOLS
        r = await c.call_tool("run_controller", {"code": CMC_CANDIDATE, "betas": [0.0], "name": "over-http"})
        assert not r.is_error, text(r)
        h = await c.call_tool("get_history", {})
        assert "over-http" in text(h)
        bad = await c.call_tool("run_controller", {"code": "def solve(q):\n    return (", "name": "x"})
        assert bad.is_error and "syntax error" in text(bad)
    assert proc.poll() is None


def test_http_refuses_public_bind_without_token(tmp_path):
    folder = tmp_path / "study"
    make_study(folder, n_search=1, n_questions=4, n_seeds=3)
    result = CliRunner().invoke(main, ["mcp", str(folder), "--http", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code != 0 and "without a bearer token" in result.output


# ----- CLI: study, heldout ------------------------------------------------------------------------------------------
def test_study_init_and_show(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["study", "init", str(tmp_path / "s"), "--betas", "0,0.5,1", "--seeds", "5"])
    assert r.exit_code == 0, r.output
    assert "synthetic-demo/demo[0::2]" in r.output and "claude mcp add autotts" in r.output
    r = runner.invoke(main, ["study", "show", str(tmp_path / "s"), "--json"])
    doc = json.loads(r.output)
    assert doc["betas"] == [0.0, 0.5, 1.0] and doc["n_seeds"] == 5 and doc["runs"] == 0
    r = runner.invoke(main, ["study", "init", str(tmp_path / "s")])
    assert r.exit_code == 2 and "already holds a study" in r.output


def test_heldout_cli_and_no_leak_through_tools(tmp_path):
    folder = tmp_path / "study"
    study = make_study(folder, n_search=1, n_questions=4, n_seeds=3)
    svc = DiscoveryService(study)
    rid = tools.run_controller(svc, CMC_CANDIDATE, name="to-hold-out").run_id
    r = CliRunner().invoke(main, ["heldout", str(folder), rid, "--json"])
    assert r.exit_code == 0, r.output
    rep, = json.loads(r.output)
    assert rep["envs"] == [HELDOUT] and len(rep["per_beta"]) == len(study.betas)
    held = study.heldout_envs()[0]
    for row in rep["per_env"]:
        ref = evaluate(held, f"cmc:beta={row['beta']:g}", study.seeds)
        assert row["accuracy"] == ref.accuracy
    assert {b["label"] for b in rep["baselines"]} >= {"SC@64", "ASC", "CMC β=0.5"}
    assert svc.store.results(rid, split="heldout")  # recorded …
    report = tools.report_for_run(svc, rid)         # … but never shown to the agent
    assert HELDOUT not in report.text() and HELDOUT not in json.dumps(report.model_dump())
    assert HELDOUT not in tools.get_history(svc).text()
    # the objective against the held-out SC@64 and CMC: a CMC-source run is CMC's curve, so its AUC is CMC's
    obj = rep["objective"]
    assert obj["auc"] == pytest.approx(obj["cmc_auc"]) and obj["tokens_to_sc64"] == obj["cmc_tokens_to_sc64"]
    sc = evaluate(held, "sc:n=64", study.seeds)
    assert obj["target_accuracy"] == pytest.approx(float(sc.per_seed_accuracy.mean()))
    assert obj["sc64_tokens"] == pytest.approx(float(sc.per_seed_tokens.mean()))
    quick = tools.run_controller(svc, CMC_CANDIDATE + "\n# quick\n", name="quick", seeds=1).run_id
    best = CliRunner().invoke(main, ["heldout", str(folder)])  # default: the leaderboard's best ranked run
    assert best.exit_code == 0 and rid in best.output and quick not in best.output and "baselines" in best.output
    assert "tokens to reach SC@64's accuracy" in best.output and "AUC" in best.output
    assert "vs the held-out baselines' frontier at these tokens" in best.output


# ----- the MCP Inspector CLI ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) not installed")
@pytest.mark.skipif(os.environ.get("AUTOTTS_SKIP_INSPECTOR") == "1", reason="CI runs tests/inspector_check.sh itself")
def test_mcp_inspector_cli(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "tests" / "inspector_check.sh"), str(tmp_path / "study")],
                          capture_output=True, text=True, timeout=600, env=_server_env())
    if proc.returncode == 3:
        pytest.skip("MCP Inspector could not be fetched from the npm registry: " + proc.stderr[-300:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "inspector check passed" in proc.stdout
