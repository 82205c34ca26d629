"""Branch view: rows per branch from traced events, finishes from the events (not from costs), compact pages."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.branch_view import (
    AnswerRun,
    BranchStatus,
    action_rows,
    answer_runs,
    branch_view,
    episode_branch_steps,
    episode_branch_view,
    filter_actions,
    format_runs,
    render_actions,
    render_branch_view,
)
from core.environment import TracedReplayQuestion
from core.stops import StopKind, own_branch_budget

DELTA = 500


def make_question(branches: list[tuple[list[str], int]], seed: int | None = None) -> TracedReplayQuestion:
    """A traced question from (answers of steps 0..n, total tokens T) per stored branch, costs as the spec says."""
    answers = [a for a, _ in branches]
    costs = [[DELTA] * (len(a) - 1) + [max(0, t - (len(a) - 1) * DELTA)] for a, t in branches]
    tokens = [t for _, t in branches]
    order = list(range(len(branches)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return TracedReplayQuestion(answers, costs, tokens, order, DELTA)


def steps_of(branches, q: TracedReplayQuestion) -> list[int]:
    return [len(branches[b][0]) for b in q._order]


# ----- hand-made cases --------------------------------------------------------------------------------------------
def test_final_step_costing_more_or_less_than_delta_is_a_finish():
    # branch 0: 2 probes, T = 2·500 + 2,148 → final step costs 2,148; branch 1: final step costs exactly 500;
    # branch 2: final step costs 0 (T = nΔ); branch 3 is left running after one step.
    branches = [(["1", "2", "7"], 1000 + 2148), (["5", "5", "5"], 1500), (["9", "9"], 500), (["3", "4", "4"], 2000)]
    q = make_question(branches)
    for _ in range(4):
        q.probe_new()
    for _ in range(3):
        for i in range(3):
            q.probe_more(i)
    v = branch_view(q.events, steps_of(branches, q), ceiling=64, answer="7")
    st_ = {r.branch: r for r in v.rows}
    assert [st_[i].status for i in range(4)] == [BranchStatus.FINISHED] * 3 + [BranchStatus.RUNNING]
    assert st_[0].final_answer == "7" and st_[0].tokens == 3148 and st_[0].steps == 3
    assert st_[1].final_answer == "5" and st_[1].tokens == 1500
    assert st_[2].final_answer == "9" and st_[2].tokens == 500 and st_[2].steps == 2
    assert st_[3].final_answer is None and st_[3].steps == 1
    # events 0-3 open the branches; rounds of steps are events 4-6, 7-9, 10-12. Branch 2 finishes in round 1,
    # branches 0 (a 2,148-token final step) and 1 (a final step of exactly 500) in round 2; round 3 is free.
    assert (st_[2].finished_at, st_[0].finished_at, st_[1].finished_at) == (6, 7, 8)
    assert (st_[2].finish_order, st_[0].finish_order, st_[1].finish_order) == (1, 2, 3)
    assert [a.index for a in action_rows(q.events, steps_of(branches, q)) if a.finished] == [6, 7, 8]
    assert st_[3].finish_order is None
    assert format_runs(st_[0].history) == "1 2 7"
    assert v.tokens == q.get_seq_and_total_tokens()[1]
    assert v.stop.kind is StopKind.POOL  # all four branches opened
    assert branch_view(q.events, steps_of(branches, q) + [1], ceiling=64).stop.kind is StopKind.STOPPED


def test_status_pruned_read_and_action_api_history():
    branches = [(["a", "b", "b", "c"], 1800), (["x", "y"], 900), (["z"], 300), (["q", "q"], 1000)]
    q = make_question(branches)
    i = q.branch()           # depth 1, nothing revealed
    q.extend(i)              # depth 2
    assert q.probe(i) == "b"  # revealed at depth 2
    j = q.branch()
    q.prune(j)
    assert q.get_new_branch_final_answer() == "z"
    k = q.branch()
    q.extend(k)              # finishes (2 steps)
    q.extend(k)              # free repeat
    q.prune(k)               # pruned after finishing: still counts as finished
    v = branch_view(q.events, steps_of(branches, q), answer="b")
    r = v.rows
    assert r[0].status is BranchStatus.RUNNING and r[0].history == (AnswerRun(None, 1), AnswerRun("b", 1))
    assert format_runs(r[0].history) == "· b"
    assert r[1].status is BranchStatus.PRUNED and r[1].pruned
    assert r[2].status is BranchStatus.READ and r[2].final_answer == "z" and r[2].tokens == 300 and r[2].steps == 1
    assert r[3].status is BranchStatus.FINISHED and r[3].pruned and r[3].final_answer is None  # never revealed
    assert (r[2].finish_order, r[3].finish_order) == (1, 2)
    assert "fin+prn" in render_branch_view(v)


def test_events_inconsistent_with_lengths_raise():
    branches = [(["1", "2"], 1000)]
    q = make_question(branches)
    q.probe_new()
    q.probe_more(0)
    q.probe_more(0)
    # told the branch has 1 step: the second step would be a charged step of a finished branch
    with pytest.raises(ValueError, match="do not match"):
        branch_view(q.events, [1])
    with pytest.raises(ValueError, match="next fresh branch"):
        branch_view([("open", 1, 500, "a")], [2, 2])
    with pytest.raises(ValueError, match="not open"):
        branch_view([("step", 0, 500, "a")], [2])
    with pytest.raises(ValueError, match="unknown op"):
        branch_view([("jump", 0, 500, "a")], [2])


def test_action_filters():
    branches = [(["1", "2", "2", "5"], 1600), (["3", "3"], 700)]
    q = make_question(branches)
    q.probe_new()
    q.probe_new()
    for _ in range(3):
        q.probe_more(0)
    q.probe_more(1)
    rows = action_rows(q.events, steps_of(branches, q))
    assert [(r.branch, r.answer) for r in filter_actions(rows, changes=True)] == [(0, "2"), (0, "5")]
    assert [(r.branch, r.cost) for r in filter_actions(rows, finishes=True)] == [(0, 100), (1, 200)]
    both = filter_actions(rows, finishes=True, changes=True)
    assert len(both) == 3 and len(filter_actions(rows)) == len(rows) == 6
    text = render_actions(rows)
    assert "fin" in text and "chg" in text


def test_answer_runs_and_format():
    runs = answer_runs(["ERR"] * 3 + ["7"] * 2 + ["601"] * 14)
    assert format_runs(runs) == "ERR×3 7×2 601×14"
    long = answer_runs([str(k % 7) for k in range(200)])
    text = format_runs(long, width=30)
    assert len(text) <= 30 and text.startswith("0 …+") and text.endswith("6 0 1 2 3")
    assert format_runs(answer_runs(["", "a b", "x" * 40]), answer_width=8) == '"" a_b xxxxxxx…'
    # the last run (the branch's current answer) survives even a tiny width, and the width is never exceeded
    assert format_runs(answer_runs(["1" * 9, "2" * 9, "3" * 9]), width=16) == "…+2… 333333333"
    for w in range(0, 40):
        assert len(format_runs(long, width=w)) <= w


# ----- properties ---------------------------------------------------------------------------------------------------
@st.composite
def episodes(draw):
    n = draw(st.integers(1, 12))
    vocab = draw(st.lists(st.sampled_from(["1", "2", "ERR", "", "42"]), min_size=1, max_size=3))
    branches = []
    for _ in range(n):
        probes = draw(st.integers(0, 6))
        answers = [draw(st.sampled_from(vocab)) for _ in range(probes + 1)]
        tail = draw(st.sampled_from([0, 1, 250, 500, 501, 2148]))
        branches.append((answers, probes * DELTA + tail))
    seed = draw(st.integers(0, 10_000))
    actions = draw(st.lists(st.tuples(st.sampled_from(["probe_new", "probe_more", "read", "branch", "extend",
                                                        "probe", "prune"]), st.integers(0, 20)), max_size=60))
    return branches, seed, actions


def drive(q: TracedReplayQuestion, actions) -> None:
    for op, k in actions:
        try:
            if op == "probe_new":
                q.probe_new()
            elif op == "read":
                q.get_new_branch_final_answer()
            elif op == "branch":
                q.branch()
            elif q.num_opened:
                i = k % q.num_opened
                getattr(q, {"probe_more": "probe_more", "extend": "extend", "probe": "probe", "prune": "prune"}[op])(i)
        except (ValueError, IndexError):
            pass  # refused actions (pool empty, pruned or read branch) leave no event


@given(episodes())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_branch_view_agrees_with_the_question_state(ep):
    branches, seed, actions = ep
    q = make_question(branches, seed)
    drive(q, actions)
    steps = steps_of(branches, q)
    v = branch_view(q.events, steps, ceiling=8, own_budget=5)
    assert len(v.rows) == q.num_opened
    assert sum(r.tokens for r in v.rows) == v.tokens == q.get_seq_and_total_tokens()[1]
    finishes = sorted(r.finish_order for r in v.rows if r.finish_order is not None)
    assert finishes == list(range(1, len(finishes) + 1))
    for r in v.rows:
        b = q._order[r.branch]
        answers = branches[b][0]
        state = q._depth[r.branch]
        if r.status is BranchStatus.READ:
            assert state == -3 and r.final_answer == answers[-1] and r.tokens == branches[b][1]
            continue
        if state >= 0:  # not pruned: the question object knows whether it finished
            assert (r.status is BranchStatus.FINISHED) == q.is_finished(r.branch)
            assert r.steps == q.depth(r.branch)
        else:
            assert r.pruned
        # the history matches the table wherever it is revealed
        depth = 0
        for run in r.history:
            for _ in range(run.count):
                depth += 1
                if run.answer is not None:
                    assert run.answer == answers[depth - 1]
        assert depth == r.steps
        if r.final_answer is not None:
            assert r.status is BranchStatus.FINISHED and r.final_answer == answers[-1]
    rows = action_rows(q.events, steps)
    assert sum(a.finished for a in rows) == len(finishes)
    expect = StopKind.OWN_BUDGET if q.num_opened >= 5 else StopKind.POOL if q.num_opened >= len(branches) \
        else StopKind.STOPPED
    assert v.stop.kind is expect
    assert len(render_branch_view(v)) <= 8000


def test_widest_episode_pages_within_limit():
    # 128 branches, each flipping answer every step, long answers: must fit 8,000 characters per page
    rng = random.Random(1)
    branches = [([f"{rng.randrange(10**6)}\\sqrt{{{rng.randrange(99)}}}" for _ in range(40)], 40 * DELTA + 77)
                for _ in range(128)]
    q = make_question(branches, 3)
    for _ in range(128):
        q.probe_new()
    for _ in range(45):
        q.probe_more_many([i for i in range(128)])
    v = branch_view(q.events, steps_of(branches, q), ceiling=128, answer="x")
    assert v.n_actions > 5000 and v.stop.kind is StopKind.CEILING
    first = render_branch_view(v)
    assert len(first) <= 8000
    if "page 1/" in first:
        pages = int(first.rsplit("page 1/", 1)[1].split()[0])
        shown = 0
        for p in range(1, pages + 1):
            text = render_branch_view(v, page=p)
            assert len(text) <= 8000
            shown += sum(1 for line in text.splitlines() if line[:3].strip().isdigit())
        assert shown == 128
    with pytest.raises(ValueError, match="out of range"):
        render_branch_view(v, page=99)
    assert all(len(render_actions(action_rows(q.events, steps_of(branches, q)), page=p)) <= 8000 for p in (1, 2))


# ----- the paper's data ----------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_long_cmc_episode_fits_one_page(replay_dir):
    from core.controllers.base import parse_spec
    from core.evaluate import evaluate
    from core.store import load_environment

    env = load_environment(replay_dir / "Qwen3-8B" / "aime24.json")
    res = evaluate(env, "cmc:beta=1", seeds=range(10), traces=True)
    (seed, q), events = max(res.traces.items(), key=lambda kv: len(kv[1]))
    assert len(events) >= 1000
    si = list(res.seeds).index(seed)
    answer = res.answers[si][q]
    v = episode_branch_view(env, q, seed, events, answer, ceiling=64, own_budget=own_branch_budget("cmc:beta=1"))
    text = render_branch_view(v)
    assert len(text) <= 8000 and "page 1/" not in text
    assert len(v.rows) == sum(1 for line in text.splitlines()[4:] if line[:3].strip().isdigit())
    assert v.tokens == int(res.tokens[si, q])
    assert v.correct == bool(res.correct[si, q])
    # replaying the controller on the same question object agrees with every row's status
    question = env.question(q, seed, trace=True)
    assert parse_spec("cmc:beta=1")[0].build().solve(question) == answer
    assert question.events == events
    for r in v.rows:
        assert (r.status is BranchStatus.FINISHED) == question.is_finished(r.branch)
        assert r.steps == question.depth(r.branch)
    # some final steps cost more than Δ and are still recognised as finishes
    finishing = [a for a in action_rows(events, episode_branch_steps(env, q, seed)) if a.finished]
    assert any(a.cost > 500 for a in finishing)
    assert len(finishing) == v.status_counts[BranchStatus.FINISHED]


@pytest.mark.shared_data
@pytest.mark.parametrize("spec", ["sc:n=8", "asc", "esc", "parallel-probe", "cmc:beta=0.5"])
def test_every_builtin_episode(replay_dir, spec):
    from core.evaluate import evaluate
    from core.store import load_environment

    env = load_environment(replay_dir / "Qwen3-0.6B" / "aime25.json")
    res = evaluate(env, spec, seeds=[0, 1], traces=True)
    budget = own_branch_budget(spec)
    kinds = set()
    for (seed, q), events in res.traces.items():
        si = list(res.seeds).index(seed)
        v = episode_branch_view(env, q, seed, events, res.answers[si][q], ceiling=64, own_budget=budget)
        assert v.tokens == int(res.tokens[si, q])
        assert v.correct == bool(res.correct[si, q])
        assert len(render_branch_view(v)) <= 8000
        kinds.add(v.stop.kind)
        if spec == "sc:n=8":  # reads or steps eight branches to the end, always
            assert len(v.rows) == 8 and v.stop.kind is StopKind.OWN_BUDGET
            assert all(r.status in (BranchStatus.FINISHED, BranchStatus.READ) for r in v.rows)
    if spec in ("asc", "esc", "cmc:beta=0.5"):
        assert StopKind.STOPPED in kinds  # they stop early on confident questions
