"""LiveQuestion on a scripted backend (no model needed): the same semantics, costs and errors as replay, exact
record → replay round trips for every built-in controller, and batching."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_helpers import SCRIPTED, SPECS, Blocking, Counting, ScriptedBackend

from core.collect.backend import CapacityError
from core.collect.normalise import AnswerCanon, canonical_answers
from core.errors import AutoTTSError, UnrecordedStepError
from core.evaluate import ControllerRunError, resolve_controller, run_episodes
from core.live import LiveQuestion, LiveSolver, recorded_environment
from core.store import load_environment, save_environment

QUESTIONS = ["What is 3*4?", "What is 5+7?", "Compute 24/2."]


def solve_all(spec, *, seed=0, blocking=False, record=True, max_branches=128):
    backend = Counting(ScriptedBackend())
    solver = LiveSolver(backend, settings=SCRIPTED.__class__(**{**SCRIPTED.__dict__, "seed": seed}),
                        max_branches=max_branches, record=record)
    if not blocking:
        return solver.solve_many(QUESTIONS, spec, golds=["12"] * 3), backend
    results = []
    ctrl = resolve_controller(spec)[0]
    for i, text in enumerate(QUESTIONS):
        with solver.question(text, index=i, gold="12") as q:
            results.append((ctrl.solve(Blocking(q)), q.tokens, q.num_opened, q.probe_tokens))
    return results, backend


# ----- every built-in: exact costs, exact replay, batching --------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_live_run_costs_exactly_what_it_generated_and_replays_exactly(spec, tmp_path):
    for seed in (0, 1):
        results, backend = solve_all(spec, seed=seed)
        assert sum(r.tokens for r in results) == backend.chunk_tokens
        assert sum(r.probe_tokens for r in results) == backend.probe_tokens
        assert sum(r.extend_calls for r in results) == backend.extend_calls
        assert not backend.inner._branches  # every branch closed after each solve
        env = load_environment(save_environment(recorded_environment(results, name="s/x"), tmp_path / f"{seed}.json.gz"))
        ctrl = resolve_controller(spec)[0]
        for fast in (True, False):
            eps = run_episodes(env, ctrl, [0, 3], fast=fast)
            for row, tokens in zip(eps.answers, eps.tokens, strict=True):
                assert row == [r.answer for r in results], (spec, seed, fast)
                assert tokens.tolist() == [r.tokens for r in results], (spec, seed, fast)
        assert [env.n_branches(q) for q in range(3)] == [r.branches for r in results]


@pytest.mark.parametrize("spec", SPECS)
def test_batched_and_blocking_controllers_agree(spec):
    """Batching changes how many decode calls are made, never what a branch generates or what the controller decides."""
    batched, b_backend = solve_all(spec, record=False)
    blocking, s_backend = solve_all(spec, blocking=True, record=False)
    assert [(r.answer, r.tokens, r.branches, r.probe_tokens) for r in batched] == blocking
    assert b_backend.chunk_tokens == s_backend.chunk_tokens
    if spec.split(":")[0] in ("sc", "esc", "parallel-probe", "cmc"):
        assert b_backend.extend_calls < s_backend.extend_calls
        assert max(b_backend.widths) > 1 and max(s_backend.widths) == 1


def test_parallel_probe_decodes_a_round_in_about_one_call():
    k = 12
    results, backend = solve_all(f"parallel-probe:num_chains={k},T=6,warm_up=3,prune_patience=2", record=False)
    _, blocking = solve_all(f"parallel-probe:num_chains={k},T=6,warm_up=3,prune_patience=2", blocking=True, record=False)
    assert max(backend.widths) == k  # the chains open in one batch
    assert backend.extend_calls * 4 <= blocking.extend_calls
    # one probe call per round: decode calls per round stay ~1 (+1 when a branch runs on to its end)
    assert backend.extend_calls <= 2 * backend.probe_calls + 3 * len(QUESTIONS)


def test_recorded_runs_mark_unfinished_branches_and_refuse_to_invent_them(tmp_path):
    results, _ = solve_all("parallel-probe:num_chains=8,T=2,warm_up=1,prune_patience=1")
    env = recorded_environment(results, name="s/pp")
    assert env.has_partial  # stopped on a stable majority while branches were still thinking
    for q, r in enumerate(results):
        partial = r.record.get("partial", [])
        assert sorted(env.partial_branches(q)) == partial
        for b in partial:
            probes, tokens, final = env.branch_answers(q, b)
            assert final == "" and tokens == len(probes) * SCRIPTED.interval
    # a controller that goes deeper than the recorded one hits the unrecorded steps and fails loudly
    with pytest.raises(ControllerRunError, match="UnrecordedStepError"):
        run_episodes(env, resolve_controller("parallel-probe:num_chains=8,T=50")[0], [0])


# ----- the question API against replay, call by call ------------------------------------------------------------------------
OPS = ["probe_new", "probe_new", "probe_more", "probe_more", "read", "branch", "extend", "probe", "prune", "is_finished",
       "depth", "probe_new_many", "probe_more_many", "probe_more_many", "extend_many", "read_many", "bad"]


def act(question, script):
    """Apply (op, argument) calls to a question: each call's outcome (result or error, tokens so far, branches opened)."""
    out = []
    for op, arg in script:
        try:
            if op == "probe_new":
                r = question.probe_new()
            elif op == "read":
                r = question.get_new_branch_final_answer()
            elif op == "branch":
                r = question.branch()
            elif op == "read_many":
                r = question.get_new_branch_final_answers(arg)
            else:
                r = getattr(question, {"bad": "probe_more"}.get(op, op))(arg)
            out.append((op, r, question.get_seq_and_total_tokens(), question.num_opened))
        except (ValueError, IndexError) as e:
            out.append((op, type(e).__name__, str(e), question.get_seq_and_total_tokens()))
    return out


def random_script(seed, n_actions):
    rng = random.Random(seed)
    script = []
    for _ in range(n_actions):
        op = rng.choice(OPS)
        if op in ("probe_new_many", "read_many"):
            arg = rng.randint(0, 3)
        elif op.endswith("_many"):
            arg = rng.sample(range(6), rng.randint(0, 3))
        elif op == "bad":
            arg = rng.choice([-1, 99, 2.0, "x", None])
        else:
            arg = rng.randint(0, 5)
        script.append((op, arg))
    return script


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_actions=st.integers(1, 60), kappa=st.sampled_from([0, 5]),
       pool=st.integers(1, 9))
def test_live_question_answers_every_call_exactly_as_its_replay(seed, n_actions, kappa, pool):
    """Any sequence of calls — paper API, action API, batch calls, bad ones — gets the same answers, costs and errors
    live and from the recording of that run. (The replay pool holds the branches opened live, so it runs out at the
    same call when the live pool ran out, and is never asked for more otherwise.)"""
    script = random_script(seed, n_actions)
    backend = ScriptedBackend()
    with LiveQuestion(backend, "What is 3*4?", settings=SCRIPTED, max_branches=pool, probe_cost=kappa,
                      record=True, question_index=seed % 5) as live:
        outcome = act(live, script)
        record = live.record()
    assert not backend._branches  # closing the question freed every backend branch
    if not record["branches"]:
        assert all(o[1] in ("ValueError", "IndexError") or o[1] in ([], 0) or o[0] == "bad" for o in outcome)
        return
    env = recorded_environment([_result(record)], name="s/api")
    assert act(env.question(0, seed=seed, probe_cost=kappa), script) == outcome


def _result(record):
    from core.live import LiveResult

    return LiveResult(question="q", controller="x", answer=None, tokens=0, branches=len(record["branches"]),
                      probe_tokens=0, seconds=0.0, record=record)


def test_exhausted_pool_and_bad_indices_raise_like_replay():
    with LiveQuestion(ScriptedBackend(), "q", settings=SCRIPTED, max_branches=2) as q:
        q.probe_new()
        q.get_new_branch_final_answer()
        with pytest.raises(ValueError, match="no fresh branch left: all 2 branches"):
            q.probe_new()
        with pytest.raises(ValueError, match="no fresh branch left"):
            q.branch()
        with pytest.raises(IndexError, match="no fresh branch left"):
            q.get_new_branch_final_answer()
        assert q.probe_new_many(3) == [] and q.get_new_branch_final_answers(2) == []
        with pytest.raises(ValueError, match="read in full"):
            q.probe_more(1)
        with pytest.raises(ValueError, match="not open"):
            q.probe_more(2)
        with pytest.raises(ValueError, match="must be an int"):
            q.probe_more("0")
        with pytest.raises(ValueError, match="named twice"):
            q.probe_more_many([0, 0])


def test_capacity_error_names_the_fix():
    backend = ScriptedBackend(parallel=3)
    with LiveQuestion(backend, "q", settings=SCRIPTED) as q:
        q.probe_new_many(3)
        with pytest.raises(CapacityError, match="raise --parallel"):
            q.probe_new()


def test_recording_needs_probed_full_reads():
    with LiveQuestion(ScriptedBackend(), "q", settings=SCRIPTED) as q:
        q.get_new_branch_final_answers(2)
        with pytest.raises(AutoTTSError, match="record=True"):
            q.record()
    with LiveQuestion(ScriptedBackend(), "q", settings=SCRIPTED, record=True) as q:
        q.get_new_branch_final_answers(2)
        assert all(len(b[0]) for b in q.record()["branches"])  # probed at every interval, though never shown


def test_probes_are_free_and_counted_apart():
    backend = Counting(ScriptedBackend())
    with LiveQuestion(backend, "q", settings=SCRIPTED) as q:
        q.probe_new_many(4)
        q.probe_more_many([0, 1, 2, 3])
        assert q.tokens == backend.chunk_tokens and q.probe_tokens == backend.probe_tokens > 0
        assert q.tokens % SCRIPTED.interval == 0 or any(q.is_finished(i) for i in range(4))


def test_unrecorded_step_error_is_not_swallowed_by_controllers():
    results, _ = solve_all("cmc:beta=0")
    env = recorded_environment(results, name="s/cmc")
    if env.has_partial:
        with pytest.raises(ControllerRunError, match=UnrecordedStepError.__name__):
            run_episodes(env, resolve_controller("parallel-probe:num_chains=2,T=100")[0], [0], fast=False)


# ----- answer normalisation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gold", [None, "12", "\\frac{1}{2}"])
def test_answers_one_at_a_time_match_a_whole_question_and_no_gold_is_an_empty_one(gold):
    raw = ["12", " 12 ", "\\dfrac{1}{2}", "0.5", None, "", "\\frac12", "$12$", "x+1", "1+x", "\\text{12}", "7", "0.5"]
    canon = AnswerCanon(gold)
    assert [canon(r) for r in raw] == canonical_answers(raw, gold if gold is not None else "")


def test_a_failing_controller_is_reported_with_its_name_and_frees_the_backend():
    class Broken:
        name = "broken"

        def solve(self, question):
            question.probe_new_many(3)
            raise KeyError("oops")

    backend = ScriptedBackend()
    with pytest.raises(AutoTTSError, match="broken raised KeyError: 'oops' \\(question 4\\)"):
        LiveSolver(backend, settings=SCRIPTED).solve("q", Broken(), index=4)
    assert not backend._branches and not backend._prompts
