"""Branch semantics and the question API (docs/semantics.md §2–3) on tiny hand-built environments."""

from __future__ import annotations

import random

import numpy as np
import pytest

from core.controllers import SelfConsistency
from core.environment import ReplayQuestion, TracedReplayQuestion, shuffle_order
from core.evaluate import run_episodes
from core.kernels import env_arrays, step_branch
from core.store import environment_from_records

DELTA = 500


def make_env(*questions, interval: int = DELTA, gold: str = "1"):
    """One question per argument, each a list of (probe_answers, tokens, final_answer) triples."""
    records = [
        {"question": f"q{k}", "gold_answer": gold, "interval": interval, "branches": list(branches)}
        for k, branches in enumerate(questions)
    ]
    return environment_from_records(records, name="test/semantics")


def one_branch(probes, tokens, final, *, probe_cost: int = 0, trace: bool = False):
    """A question holding one branch (so every seed presents it as branch 0)."""
    return make_env([(probes, tokens, final)]).question(0, seed=0, probe_cost=probe_cost, trace=trace)


def cost(q: ReplayQuestion) -> int:
    return q.get_seq_and_total_tokens()[1]


# ----- step costs --------------------------------------------------------------------------------------------------
def test_steps_cost_interval_then_remainder():
    q = one_branch(["a", "b"], 1200, "c")
    assert q.get_seq_and_total_tokens() == (0, 0)
    assert q.probe_new() == ("a", 0, False)
    assert cost(q) == 500
    assert q.probe_more(0) == ("b", False)
    assert cost(q) == 1000
    assert q.probe_more(0) == ("c", True)
    assert cost(q) == 1200  # remainder T - nΔ = 200
    assert q.get_seq_and_total_tokens() == (0, 1200)


def test_remainder_is_zero_when_tokens_below_probe_total():
    # T = 1200 < nΔ = 1500: every probe step still costs Δ, the finishing step costs 0
    q = one_branch(["a", "b", "c"], 1200, "d")
    q.probe_new()
    q.probe_more(0)
    assert q.probe_more(0) == ("c", False)
    assert cost(q) == 1500
    assert q.probe_more(0) == ("d", True)
    assert cost(q) == 1500


def test_remainder_is_zero_when_tokens_equal_probe_total():
    q = one_branch(["a", "b"], 1000, "c")
    q.probe_new()
    q.probe_more(0)
    assert q.probe_more(0) == ("c", True)
    assert cost(q) == 1000


def test_branch_without_probes_finishes_on_first_step_at_full_cost():
    q = one_branch([], 700, "x")
    assert q.probe_new() == ("x", 0, True)
    assert cost(q) == 700
    assert q.probe_more(0) == ("x", True)
    assert cost(q) == 700


def test_stepping_a_finished_branch_again_is_free():
    q = one_branch(["a"], 1300, "z")
    q.probe_new()
    assert q.probe_more(0) == ("z", True)
    assert cost(q) == 1300
    for _ in range(3):
        assert q.probe_more(0) == ("z", True)
        assert q.extend(0) is True
        assert q.probe(0) == "z"
    assert cost(q) == 1300


def test_full_read_costs_total_tokens_and_reveals_only_the_final():
    q = one_branch(["a", "b", "c"], 1200, "d", trace=True)
    assert q.get_new_branch_final_answer() == "d"
    assert cost(q) == 1200  # T, even though nΔ = 1500
    assert q.events == [("read", 0, 1200, "d")]
    with pytest.raises(ValueError):  # a fully read branch cannot be stepped or probed
        q.probe_more(0)
    with pytest.raises(ValueError):
        q.probe(0)
    assert cost(q) == 1200


def test_full_reads_consume_fresh_branches_and_count_indices():
    env = make_env([(["p"], 600, "f")] * 3)
    q = env.question(0, seed=1)
    assert q.get_new_branch_final_answer() == "f"
    ans, i, fin = q.probe_new()
    assert (ans, i, fin) == ("p", 1, False)
    assert q.branch() == 2
    assert q.num_opened == 3 and q.fresh_branches_left == 0


# ----- exhausted pools and bad indices -------------------------------------------------------------------------------
def test_exhausted_pool_raises_the_paper_exceptions():
    env = make_env([(["a"], 900, "b"), ([], 300, "c")])
    q = env.question(0, seed=0)
    q.probe_new()
    q.get_new_branch_final_answer()
    before = cost(q)
    with pytest.raises(ValueError):
        q.probe_new()
    with pytest.raises(IndexError):
        q.get_new_branch_final_answer()
    with pytest.raises(ValueError):
        q.branch()
    assert cost(q) == before
    assert q.fresh_branches_left == 0


@pytest.mark.parametrize("method", ["probe_more", "extend", "probe", "prune", "is_finished", "depth"])
def test_invalid_indices_raise_value_error(method):
    env = make_env([(["a", "b"], 1200, "c")] * 4)
    q = env.question(0, seed=3)
    q.probe_new()  # index 0 open
    q.get_new_branch_final_answer()  # index 1 fully read
    q.probe_new()  # index 2 open, then pruned
    q.prune(2)
    before = cost(q)
    call = getattr(q, method)
    # negative, the next unopened index (the paper's evaluator wrongly accepts it), far out, read, pruned
    for bad in (-1, 3, 99, 1, 2):
        with pytest.raises(ValueError):
            call(bad)
    assert cost(q) == before
    # the open branch still works
    getattr(q, method)(0)


def test_pruning_twice_raises():
    q = one_branch(["a"], 600, "b")
    q.branch()
    q.prune(0)
    with pytest.raises(ValueError):
        q.prune(0)


@pytest.mark.parametrize("method", ["probe_more", "extend", "probe", "prune", "is_finished", "depth"])
@pytest.mark.parametrize("bad", [0.0, "0", None])
def test_non_int_index_raises_value_error(bad, method):
    q = one_branch(["a"], 600, "b")
    q.probe_new()
    with pytest.raises(ValueError, match="must be an int"):
        getattr(q, method)(bad)


# ----- the action API ----------------------------------------------------------------------------------------------
def test_action_api_costs_and_probe_cost_only_on_unfinished_branches():
    q = one_branch(["a", "b"], 1200, "c", probe_cost=7, trace=True)
    assert q.branch() == 0
    assert cost(q) == 500  # BRANCH generates the first interval and reveals nothing
    assert q.probe(0) == "a"
    assert cost(q) == 507
    assert q.probe(0) == "a"  # probing again at the same depth is charged again
    assert cost(q) == 514
    assert q.extend(0) is False
    assert q.depth(0) == 2 and not q.is_finished(0)
    assert q.probe(0) == "b"
    assert cost(q) == 1021
    assert q.extend(0) is True  # finishing step: remainder 200
    assert cost(q) == 1221
    assert q.is_finished(0)
    assert q.probe(0) == "c"  # finished: κ is not charged
    assert q.extend(0) is True
    assert cost(q) == 1221
    q.prune(0)
    assert [e[0] for e in q.events] == ["branch", "probe", "probe", "extend", "probe", "extend", "probe", "extend", "prune"]
    assert [e[2] for e in q.events] == [500, 7, 7, 500, 7, 200, 0, 0, 0]
    assert [e[3] for e in q.events] == [None, "a", "a", None, "b", None, "c", None, None]
    assert sum(e[2] for e in q.events) == cost(q)


def test_branch_without_probes_via_action_api():
    q = one_branch([], 700, "x", probe_cost=5)
    q.branch()
    assert cost(q) == 700
    assert q.is_finished(0)
    assert q.probe(0) == "x"
    assert cost(q) == 700


def test_probe_more_equals_extend_then_free_probe():
    env = make_env([(["a", "b", "c"], 1700, "d"), ([], 400, "e"), (["f"], 450, "g")])
    for seed in range(5):
        paper = env.question(0, seed)
        action = env.question(0, seed)
        for _ in range(3):
            ans, i, fin = paper.probe_new()
            j = action.branch()
            assert (action.probe(j), j, action.is_finished(j)) == (ans, i, fin)
        for i in range(3):
            for _ in range(5):
                ans, fin = paper.probe_more(i)
                assert (action.extend(i), action.probe(i)) == (fin, ans)
                assert cost(paper) == cost(action)


def test_get_seq_and_total_tokens_tracks_every_charge():
    env = make_env([(["a"], 800, "b"), (["c", "d"], 900, "e")])
    q = env.question(0, seed=0)
    seen = [q.get_seq_and_total_tokens()]
    q.probe_new()
    seen.append(q.get_seq_and_total_tokens())
    q.probe_more(0)
    seen.append(q.get_seq_and_total_tokens())
    q.get_new_branch_final_answer()
    seen.append(q.get_seq_and_total_tokens())
    assert all(s[0] == 0 for s in seen)
    totals = [s[1] for s in seen]
    assert totals == sorted(totals) and totals[0] == 0
    first, second = shuffle_order(2, 0)
    assert totals[1] == 500
    # stored branch 0 finishes on its second step (remainder 300); branch 1 takes its second probe (Δ)
    assert totals[2] == (800 if first == 0 else 1000)
    assert totals[3] == totals[2] + (800, 900)[second]


# ----- the traced question ---------------------------------------------------------------------------------------
def test_traced_question_logs_every_action():
    branches = [(["a", "b"], 1200, "c"), ([], 300, "d"), (["e"], 999, "f")]
    env = make_env(branches)
    q = env.question(0, seed=0, probe_cost=3, trace=True)
    assert isinstance(q, TracedReplayQuestion)
    order = shuffle_order(3, 0)
    ans, i, fin = q.probe_new()
    q.probe_more(i)
    q.get_new_branch_final_answer()
    j = q.branch()
    q.extend(j)
    q.probe(j)
    q.prune(j)
    ops = [e[0] for e in q.events]
    assert ops == ["open", "step", "read", "branch", "extend", "probe", "prune"]
    assert [e[1] for e in q.events] == [0, 0, 1, 2, 2, 2, 2]
    assert sum(e[2] for e in q.events) == cost(q)
    b0, b1, b2 = (branches[k] for k in order)
    assert q.events[0][3] == (b0[0][0] if b0[0] else b0[2])
    assert q.events[2] == ("read", 1, b1[1], b1[2])
    assert q.events[3][3] is None and q.events[4][3] is None and q.events[6] == ("prune", 2, 0, None)


def test_untraced_question_has_no_event_log():
    q = one_branch(["a"], 600, "b")
    assert not isinstance(q, TracedReplayQuestion)
    assert not hasattr(q, "events")


# ----- shuffles ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 7, 42, 99])
def test_shuffle_order_is_random_shuffle_of_the_stored_list(seed):
    n = 12
    branches = [([], 100 + k, f"f{k}") for k in range(n)]
    env = make_env(branches, branches[:5])
    expected = list(range(n))
    random.Random(seed).shuffle(expected)
    assert shuffle_order(n, seed) == expected
    q = env.question(0, seed)
    assert [q.get_new_branch_final_answer() for _ in range(n)] == [f"f{k}" for k in expected]
    # a question with another branch count gets its own shuffle of its own stored list
    expected5 = list(range(5))
    random.Random(seed).shuffle(expected5)
    q5 = env.question(1, seed)
    assert [q5.get_new_branch_final_answer() for _ in range(5)] == [f"f{k}" for k in expected5]


def test_fast_path_uses_the_same_shuffle():
    n = 10
    env = make_env([([], 100 + k, f"f{k}") for k in range(n)], [([], 50, f"g{k}") for k in range(3)])
    seeds = list(range(20))
    fast = run_episodes(env, SelfConsistency(n=1), seeds, fast=True)
    for si, seed in enumerate(seeds):
        order = list(range(n))
        random.Random(seed).shuffle(order)
        assert fast.answers[si][0] == f"f{order[0]}"
        assert fast.tokens[si, 0] == 100 + order[0]
        order3 = list(range(3))
        random.Random(seed).shuffle(order3)
        assert fast.answers[si][1] == f"g{order3[0]}"


def test_compiled_step_matches_the_semantics():
    env = make_env([(["a", "b"], 1200, "c"), (["a", "b", "c"], 1200, "d"), ([], 700, "e")])
    offsets, interval, tokens, finals, p_off, p_ans, _ = env_arrays(env)
    vocab = env.answer_vocab[0]
    expect = {
        0: [("a", 500, False), ("b", 500, False), ("c", 200, True), ("c", 0, True)],
        1: [("a", 500, False), ("b", 500, False), ("c", 500, False), ("d", 0, True), ("d", 0, True)],
        2: [("e", 700, True), ("e", 0, True), ("e", 0, True)],
    }
    for g, steps in expect.items():
        for depth, (ans, c, fin) in enumerate(steps):
            a, got_cost, got_fin = step_branch(g, depth, interval[0], tokens, finals, p_off, p_ans)
            assert (vocab[a], int(got_cost), bool(got_fin)) == (ans, c, fin)


# ----- what the question object exposes ----------------------------------------------------------------------------
def test_question_exposes_no_gold_or_unrevealed_answers():
    secret_probes = [f"SECRETPROBE{k}" for k in range(3)]
    env = make_env([(secret_probes, 2000, "GOLD777"), (["SECRETOTHER"], 900, "SECRETFINAL")], gold="GOLD777")
    for trace in (False, True):
        q = env.question(0, seed=0, probe_cost=1, trace=trace)
        q.branch()  # opens a branch without revealing anything
        public = [name for name in dir(q) if not name.startswith("_")]
        for name in public:
            value = getattr(q, name)
            if callable(value):
                continue
            text = repr(value)
            for secret in ("GOLD777", "SECRET"):
                assert secret not in text, f"public attribute {name!r} leaks {secret}: {text[:80]}"
        assert "GOLD777" not in repr(q) and "SECRET" not in repr(q)
    # the only public data attributes are harmless counters / the interval (and the trace of revealed answers)
    q = env.question(0, seed=0, trace=True)
    data = {name for name in dir(q) if not name.startswith("_") and not callable(getattr(q, name))}
    assert data <= {"probe_freq", "fresh_branches_left", "num_opened", "events"}


def test_question_objects_are_independent_per_episode():
    env = make_env([(["a"], 800, "b")] * 3)
    q1 = env.question(0, seed=0)
    q1.probe_new()
    q2 = env.question(0, seed=0)
    assert cost(q2) == 0 and q2.num_opened == 0
    assert np.array_equal(env.branch_tokens, [800, 800, 800])
