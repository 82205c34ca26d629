"""What the agent sees, through a real MCP client: the objective as numbers, standard errors, quick runs, timing,
the leaderboard by the objective, compare_runs, stop reasons and the branch view (a ≥1,000-action episode of the
paper's data in one page), and every result under 8,000 characters."""

from __future__ import annotations

import numpy as np
import pytest
from mcp import Client
from mcp_helpers import CMC_CANDIDATE, SEARCH, make_study, text

from core.discovery.service import SC64, DiscoveryService, cmc_spec
from core.discovery.study import Study
from core.objective import curve_point, mean_curve, mean_points, objective, rank_key
from core.stats import paired_test
from mcp_server import tools
from mcp_server.prompt import EXAMPLE_CONTROLLER
from mcp_server.server import build_server

pytestmark = pytest.mark.anyio

EXHAUSTIVE = '''
class StepEverything:
    """Open 48 branches, then step every one to its end, round robin: a long episode."""

    def __init__(self, beta=0.5):
        self.max_branches = 48

    def solve(self, question):
        running, finals = [], []
        for _ in range(self.max_branches):
            answer, i, done = question.probe_new()
            (finals.append(answer) if done else running.append(i))
        while running:
            for i in list(running):
                answer, done = question.probe_more(i)
                if done:
                    running.remove(i)
                    finals.append(answer)
        return max(set(finals), key=finals.count)
'''



@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("views") / "study")


@pytest.fixture(scope="module")
def svc(study):
    return DiscoveryService(study)


@pytest.fixture(scope="module")
def server(svc):
    return build_server(svc)


async def call(c: Client, tool: str, args: dict) -> tuple[str, dict]:
    """A tool call that must succeed and fit the context budget."""
    r = await c.call_tool(tool, args)
    body = text(r)
    assert not r.is_error, body
    assert len(body) <= tools.MAX_CHARS, (tool, len(body))
    return body, r.structured_content


@pytest.fixture(scope="module")
def runs(svc):
    """A full run of the example, a full CMC-source run, a probe and a quick run of the example."""
    ex = tools.run_controller(svc, EXAMPLE_CONTROLLER, name="example")
    cmc = tools.run_controller(svc, CMC_CANDIDATE, name="cmc-source")
    probe = tools.run_controller(svc, EXAMPLE_CONTROLLER + "\n# probe\n", name="probe", betas=[0.5])
    quick = tools.run_controller(svc, EXAMPLE_CONTROLLER, name="quick", seeds=3, questions=[1, 4])
    for r in (ex, cmc, probe, quick):
        assert r.status == "ok", r.text()
    return {"ex": ex.run_id, "cmc": cmc.run_id, "probe": probe.run_id, "quick": quick.run_id}


def _objective_by_hand(svc, study, run_id: str, seeds=None, questions=None):
    """core.objective on results re-read from the store and baselines re-evaluated, to check the service."""
    from core.evaluate import evaluate

    envs = study.search_envs()
    seeds = list(study.seeds) if seeds is None else seeds

    def base(env, spec, beta=None):
        return curve_point(evaluate(env if questions is None else env.subset(questions), spec, seeds), beta=beta)

    rows = {(r.env, r.beta): r for r in svc.store.results(run_id, with_episodes=True)}
    curve = mean_curve([[curve_point(rows[(e.name, b)].episodes.as_result(e.name, "c"), beta=b)
                         for b in study.betas] for e in envs])
    sc = mean_points([base(e, SC64) for e in envs])
    cmc = mean_curve([[base(e, cmc_spec(b), b) for b in study.betas] for e in envs])
    return objective(curve, sc, cmc)


async def test_objective_standard_errors_and_timing_in_run_controller(server, svc, study, runs):
    async with Client(server) as c:
        body, sc = await call(c, "run_controller", {"code": CMC_CANDIDATE + "\n# again\n", "name": "again"})
        dup_body, dup = await call(c, "run_controller", {"code": CMC_CANDIDATE, "name": "again"})
    assert dup["duplicate_of"] == runs["cmc"] and dup["objective"] == sc["objective"]  # identical source: not re-run
    assert dup_body.startswith("No new run") and f"already evaluated on the same grid as {runs['cmc']}" in dup_body
    assert "tokens to reach SC@64's accuracy" in dup_body
    assert len(dup_body) < 800  # the agent has seen the full report once
    obj = sc["objective"]
    want = _objective_by_hand(svc, study, sc["run_id"])
    assert obj["target_accuracy"] == pytest.approx(want.target_accuracy)
    assert obj["auc"] == pytest.approx(want.auc) and obj["cmc_auc"] == pytest.approx(want.auc)  # it is CMC
    if want.tokens_to_sc64 is None:
        assert obj.get("tokens_to_sc64") is None and "not reached" in body
    else:
        assert obj["pct_of_sc64"] == pytest.approx(want.pct_of_sc64) and obj["pct_of_cmc"] == pytest.approx(100.0)
    assert "tokens to reach SC@64's accuracy" in body and "vs CMC" in body and "AUC" in body
    # every "vs" phrase says what it compares (the legend above the β table)
    assert "frontier = acc − the baselines' frontier at equal tokens" in body
    assert "the cheapest baseline at least as accurate" in body and "CMC β=0 +0% tokens" in body
    for p in sc["search_avg"]:  # a CMC-source run is CMC: zero gap to CMC at every β, within noise
        assert p["vs_cmc"] == 0 and p["accuracy_se"] >= 0 and p["tokens_se"] > 0
    assert "+0.00±0.00 noise" in body
    per_seed = [np.mean([100 * r.episodes.correct[s].mean() for r in svc.store.results(sc["run_id"],
                         beta=study.betas[0], with_episodes=True)]) for s in range(study.n_seeds)]
    assert sc["search_avg"][0]["accuracy_se"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(study.n_seeds),
                                                               abs=1e-3)
    t = sc["timing"]
    assert t["wall_s"] > 0 and t["cpu_s"] >= 0 and t["cores"] >= 1 and isinstance(t["busy"], bool)
    assert t["episodes"] == len(SEARCH) * len(study.betas) * study.n_seeds * 6
    assert f"load {t['load1']:.2f} on {t['cores']} cores" in body


async def test_quick_run_is_exact_labelled_and_never_ranked(server, svc, study, runs):
    async with Client(server) as c:
        body, q = await call(c, "run_controller", {"code": EXAMPLE_CONTROLLER, "seeds": 3, "questions": [1, 4]})
        assert q["duplicate_of"] == runs["quick"] and q["quick"].startswith("QUICK (3 of 6 seeds; questions 1,4")
        assert "QUICK" in body and q["seeds"] == 3
        full_quick, _ = await call(c, "run_controller", {"code": EXAMPLE_CONTROLLER, "seeds": 6})
        assert "QUICK" not in full_quick, full_quick
        assert f"already evaluated on the same grid as {runs['ex']}" in full_quick  # 6 seeds = all
        bad = await c.call_tool("run_controller", {"code": EXAMPLE_CONTROLLER, "seeds": 0})
        assert bad.is_error and "seeds must be a count in 1..6" in text(bad)
        bad = await c.call_tool("run_controller", {"code": EXAMPLE_CONTROLLER, "questions": [99]})
        assert bad.is_error and "question indices 0..5" in text(bad)
        hist, h = await call(c, "get_history", {})
        digest, d = await call(c, "inspect_trace", {"run_id": runs["quick"], "env": SEARCH[0]})
        bad_q = await c.call_tool("inspect_trace", {"run_id": runs["quick"], "question": 0})
    # a quick run's episodes are exactly the full run's on those seeds and questions
    for env in SEARCH:
        for b in study.betas:
            full = svc.store.results(runs["ex"], env=env, beta=b, with_episodes=True)[0].episodes
            part = svc.store.results(runs["quick"], env=env, beta=b, with_episodes=True)[0].episodes
            sel = full.select([0, 1, 2], [1, 4])
            assert np.array_equal(sel.correct, part.correct) and np.array_equal(sel.tokens, part.tokens)
    want = _objective_by_hand(svc, study, runs["quick"], seeds=[0, 1, 2], questions=[1, 4])
    got = svc.store.run(runs["quick"]).summary.objective
    assert got.auc == pytest.approx(want.auc) and got.target_accuracy == pytest.approx(want.target_accuracy)
    kinds = {row[1]: (row[0], row[3]) for row in h["table"]["rows"]}
    assert kinds[runs["quick"]] == (None, "quick") and kinds[runs["probe"]] == (None, "probe")
    assert kinds[runs["ex"]][1] == kinds[runs["cmc"]][1] == "ranked"
    assert [row[0] for row in d["table"]["rows"]] == [1, 4] and "QUICK" in digest
    assert bad_q.is_error and "1, 4" in text(bad_q)


async def test_history_ranks_full_runs_by_the_objective(server, svc, runs):
    async with Client(server) as c:
        body, h = await call(c, "get_history", {})
        _, first = await call(c, "get_history", {"page_size": 1})
        _, second = await call(c, "get_history", {"page_size": 1, "page": 2})
    ranked = [row for row in h["table"]["rows"] if row[0] is not None]
    keys = [rank_key(svc.store.run(row[1]).summary.objective) for row in ranked]
    assert keys == sorted(keys) and [row[0] for row in ranked] == list(range(1, len(ranked) + 1))
    assert {runs["ex"], runs["cmc"]} <= {row[1] for row in ranked}
    want = [row[1] for row in ranked]
    assert "not ranked (probes" in body and "tok/SC@64" in body and "AUC" in body
    apart = body.index("not ranked")
    assert body.index(runs["quick"]) > apart and body.index(runs["probe"]) > apart
    assert first["table"]["rows"][0][:2] == [1, want[0]] and second["table"]["rows"][0][:2] == [2, want[1]]
    assert f"\n   2 {want[1]}" in second["board"]


async def test_compare_runs_paired_over_seeds(server, svc, study, runs):
    async with Client(server) as c:
        body, cmp = await call(c, "compare_runs", {"run_a": runs["ex"], "run_b": runs["cmc"], "beta": 0.5})
        one, single = await call(c, "compare_runs", {"run_a": runs["ex"], "run_b": runs["cmc"], "env": SEARCH[1]})
        _, self_cmp = await call(c, "compare_runs", {"run_a": runs["ex"], "run_b": runs["ex"]})
        _, quick = await call(c, "compare_runs", {"run_a": runs["quick"], "run_b": runs["cmc"]})
        no_beta = await c.call_tool("compare_runs", {"run_a": runs["probe"], "run_b": runs["ex"], "beta": 1})
    per_seed = {}
    for rid in (runs["ex"], runs["cmc"]):
        rows = svc.store.results(rid, beta=0.5, with_episodes=True)
        per_seed[rid] = np.mean([100 * r.episodes.correct.mean(axis=1) for r in rows], axis=0)
    want = paired_test(per_seed[runs["ex"]], per_seed[runs["cmc"]])
    assert cmp["accuracy"]["diff"] == pytest.approx(want.diff, abs=1e-4)
    assert cmp["accuracy"]["se"] == pytest.approx(want.se, abs=1e-4)
    assert cmp["accuracy"]["within_noise"] == want.within_noise and cmp["seeds"] == study.n_seeds
    assert ("within noise" if want.within_noise else "more than noise") in body
    assert "per question" in body and "acc a%" in body and [b[0] for b in cmp["at_other_betas"]] == [0.0, 1.0]
    assert single["envs"] == [SEARCH[1]] and "on 2 environments" not in one
    assert self_cmp["accuracy"]["diff"] == 0 and self_cmp["accuracy"]["within_noise"]
    assert self_cmp["tokens"]["diff"] == 0
    assert quick["seeds"] == 3  # paired on the seeds both evaluated
    assert " 1 " in quick["body"].split("per question")[1] or " 4 " in quick["body"].split("per question")[1]
    assert no_beta.is_error and "not a β both sides have" in text(no_beta)


async def test_compare_runs_against_a_built_in(server, svc, study, runs):
    """A built-in as run_b is run on the study's seeds at the compared β: the CMC candidate's run (exact to the
    built-in) compares with `cmc` as it does with itself, and a run against `cmc` reads as against that run."""
    async with Client(server) as c:
        _, vs_run = await call(c, "compare_runs", {"run_a": runs["ex"], "run_b": runs["cmc"], "beta": 0.5})
        body, vs_builtin = await call(c, "compare_runs", {"run_a": runs["ex"], "run_b": "cmc", "beta": 0.5})
        _, same = await call(c, "compare_runs", {"run_a": runs["cmc"], "run_b": "cmc", "beta": 0.0})
        _, fixed = await call(c, "compare_runs", {"run_a": runs["cmc"], "run_b": "cmc:beta=0.5", "beta": 0.0})
        _, sc = await call(c, "compare_runs", {"run_a": runs["quick"], "run_b": "sc:n=64"})
        refused = {ref: text(await c.call_tool("compare_runs", {"run_a": runs["ex"], "run_b": ref}))
                   for ref in ("evil.py", "nope", "cmc:beta=0,1")}
        two_builtins = await c.call_tool("compare_runs", {"run_a": "cmc", "run_b": "sc"})
    for key in ("accuracy", "tokens", "at_other_betas", "seeds", "envs", "beta"):
        assert vs_builtin[key] == vs_run[key], key
    assert vs_builtin["run_b"] == "cmc" and "b = cmc 'cmc at each β'" in body
    assert same["accuracy"]["diff"] == 0 and same["tokens"]["diff"] == 0
    assert all(d == 0 for _, d, _, _ in same["at_other_betas"])
    assert fixed["tokens"]["diff"] != 0  # β=0 against CMC held at β=0.5: a different setting
    assert sc["seeds"] == 3 and sc["run_b"] == "sc:n=64"  # paired on the quick run's seeds and questions
    assert "neither a run id" in refused["evil.py"] and "neither a run id" in refused["nope"]
    assert "one built-in setting" in refused["cmc:beta=0,1"]
    assert two_builtins.is_error and "at least one side must be a run id" in text(two_builtins)


async def test_digest_and_branch_view_tell_stop_reasons_apart(server, svc, study, runs):
    own = 4 + round(60 * 0.5)  # the example's self.max_branches at β = 0.5
    async with Client(server) as c:
        digest, d = await call(c, "inspect_trace", {"run_id": runs["ex"], "env": SEARCH[0], "beta": 0.5})
        rows = {r[0]: r for r in d["table"]["rows"]}
        ep = svc.store.results(runs["ex"], env=SEARCH[0], beta=0.5, with_episodes=True)[0].episodes
        at_cap = [(s, q) for s in range(study.n_seeds) for q in range(6) if ep.opened[s, q] == own]
        below = [(s, q) for s in range(study.n_seeds) for q in range(6) if ep.opened[s, q] < own]
        assert at_cap and below, "the example both uses up its budget and stops early here"
        s, q = at_cap[0]
        _, capped = await call(c, "inspect_trace", {"run_id": runs["ex"], "env": SEARCH[0], "beta": 0.5,
                                                      "question": q, "seed": s})
        s2, q2 = below[0]
        _, early = await call(c, "inspect_trace", {"run_id": runs["ex"], "env": SEARCH[0], "beta": 0.5,
                                                     "question": q2, "seed": s2})
    for q in range(6):
        n_cap = int((ep.opened[:, q] == own).sum())
        if n_cap:
            assert f"own budget {n_cap}" in rows[q][8]
        if n_cap < study.n_seeds:
            assert "own stop" in rows[q][8]
    assert f"opened the {own} branches its self.max_branches allows" in digest
    assert f"used its own budget: {own} of {own} branches" in capped["body"]
    assert "stopped on its own after" in early["body"]


async def test_long_paper_episode_branch_view_fits_one_page(replay_dir, tmp_path):
    path = replay_dir / "Qwen3-8B" / "aime24.json"
    study = Study.create(tmp_path / "paper", search=[{"path": str(path), "questions": "0:3"}],
                         heldout=[{"path": str(path), "questions": "3:4"}], betas=(0.5,), n_seeds=1,
                         sandbox={"timeout_s": 300, "level": "auto"})
    server = build_server(study)
    async with Client(server) as c:
        _, run = await call(c, "run_controller", {"code": EXHAUSTIVE, "name": "step-everything"})
        rid = run["run_id"]
        env = study.search_names[0]
        views = []
        for q in range(3):
            body, v = await call(c, "inspect_trace", {"run_id": rid, "question": q, "seed": 0})
            views.append((v["actions"], body, v))
        n_actions, body, v = max(views, key=lambda x: x[0])
        assert n_actions >= 1000, [x[0] for x in views]
        assert v["view"] == "branches" and v["pages"] == 1 and len(v["table"]["rows"]) == 48
        assert "page 1/" not in body and len(body) <= tools.MAX_CHARS
        assert all(r[4] == "finished" for r in v["table"]["rows"])  # it stepped every branch to its end
        assert "used its own budget: 48 of 48 branches" in body
        q = v["question"]
        acts_body, acts = await call(c, "inspect_trace", {"run_id": rid, "env": env, "question": q, "seed": 0,
                                                          "view": "actions"})
        assert acts["pages"] > 1 and f"page 1/{acts['pages']}" in acts_body
        last, _ = await call(c, "inspect_trace", {"run_id": rid, "env": env, "question": q, "seed": 0,
                                                  "view": "actions", "page": acts["pages"]})
        assert f"\n{n_actions - 1:>5} " in last  # the last action is on the last page
        fins, _ = await call(c, "inspect_trace", {"run_id": rid, "env": env, "question": q, "seed": 0,
                                                  "view": "actions", "only": "finishes"})
        assert "(finishes only: 48 of" in fins


@pytest.mark.parametrize(("init", "want"), [
    ("self.max_branches = 4 + round(60 * beta)", 34),
    ("beta = min(1.0, max(0.0, float(beta)))\n        self.max_branches = int(8 + 16 * beta)", 16),
    ("self.n = 10\n        self.max_branches = self.n * 2", 20),
    ("self.max_branches = compute(beta)", None),           # not plain arithmetic: unknown
    ("if beta > 0.3:\n            self.max_branches = 8", None),  # not straight-line: unknown
    ("self.max_branches = 0", None),                         # not a budget
    ("self.cap = 8", None),                                  # declares none
])
def test_declared_branch_budget(init, want):
    from mcp_server.checks import check_source, declared_branch_budget

    src = f"class C:\n    def __init__(self, beta=0.5):\n        {init}\n\n    def solve(self, question):\n        return None\n"
    assert declared_branch_budget(check_source(src), 0.5) == want
