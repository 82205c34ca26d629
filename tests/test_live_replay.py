"""Replay-side support for live solving: the batch question calls, stored branch order, partial branches of recorded
runs (store schema 2), and the controllers' batched solve() (same episodes as before: see test_exactness and
test_properties for the full guard)."""

from __future__ import annotations

import numpy as np
import pytest

from core.controllers import parse_spec
from core.environment import ReplayQuestion
from core.errors import ReplayFormatError, UnrecordedStepError
from core.evaluate import ControllerRunError, resolve_controller, run_episodes
from core.kernels import permutation_table
from core.store import (
    environment_from_records,
    environment_records,
    load_environment,
    read_json,
    save_environment,
)
from core.synthetic import generate


def make_env(branches, *, partial=None, stored=False, interval=500):
    rec = {"question": "q", "gold_answer": "a", "interval": interval, "branches": branches}
    if partial:
        rec["partial"] = partial
    md = {"branch_order": "stored"} if stored else {}
    return environment_from_records([rec], name="t/live", metadata=md)


BRANCHES = [(["a", "b"], 1200, "c"), (["d"], 400, "e"), ([], 300, "f"), (["g", "h", "i"], 1600, "j")]


def cost(q):
    return q.get_seq_and_total_tokens()[1]


# ----- batch calls == single calls in a loop ---------------------------------------------------------------------------
def test_batch_calls_equal_single_calls():
    env = make_env(BRANCHES)
    for seed in range(6):
        a, b = env.question(0, seed, trace=True), env.question(0, seed, trace=True)
        assert a.probe_new_many(3) == [b.probe_new() for _ in range(3)]
        assert a.probe_more_many([2, 0, 1]) == [b.probe_more(i) for i in (2, 0, 1)]
        assert a.extend_many([0, 1]) == [b.extend(i) for i in (0, 1)]
        assert a.get_new_branch_final_answers(5) == [b.get_new_branch_final_answer()]  # only one fresh branch left
        assert a.events == b.events and cost(a) == cost(b)
        assert a.probe_new_many(2) == [] and a.get_new_branch_final_answers(1) == []  # exhausted: empty, no error


@pytest.mark.parametrize("bad", [
    [0, 9],      # not opened
    [0, -1],     # negative
    [0, 0],      # named twice
    [0, 1.0],    # not an int
    [0, "1"],
    5,           # not a list
    [0, 2],      # read in full
    [0, 3],      # pruned
])
def test_batch_calls_check_every_index_before_stepping(bad):
    env = make_env(BRANCHES)
    q = env.question(0, seed=None)
    q.probe_new_many(2)
    q.get_new_branch_final_answer()  # branch 2
    q.branch()
    q.prune(3)
    before = cost(q)
    for call in (q.probe_more_many, q.extend_many):
        with pytest.raises(ValueError):
            call(bad)
    assert cost(q) == before and q.depth(0) == 1


@pytest.mark.parametrize("n", [-1, 1.5, "2", True, None])
def test_batch_counts_must_be_non_negative_ints(n):
    q = make_env(BRANCHES).question(0, seed=0)
    for call in (q.probe_new_many, q.get_new_branch_final_answers):
        with pytest.raises(ValueError):
            call(n)


# ----- stored branch order -------------------------------------------------------------------------------------------
def test_seed_none_and_stored_order_present_branches_as_stored():
    env = make_env(BRANCHES)
    assert [env.question(0, None).probe_new()[0] for _ in range(1)] == ["a"]
    q = env.question(0, None)
    assert [q.get_new_branch_final_answer() for _ in range(4)] == ["c", "e", "f", "j"]
    stored = make_env(BRANCHES, stored=True)
    for seed in (0, 1, 7):
        q = stored.question(0, seed)
        assert [q.get_new_branch_final_answer() for _ in range(4)] == ["c", "e", "f", "j"]
    assert (permutation_table(stored, np.array([0, 3])) == np.arange(4)).all()


def test_stored_order_fast_path_equals_python_path():
    base = generate(n_questions=3, n_branches=20, interval=100, max_probes=12, seed=4)
    env = environment_from_records(environment_records(base), name="s/s", metadata={"branch_order": "stored"})
    for spec in ("sc:n=5", "asc", "esc", "parallel-probe:num_chains=8", "cmc:beta=0.5"):
        ctrl = resolve_controller(spec)[0]
        fast, slow = run_episodes(env, ctrl, [0, 1], fast=True), run_episodes(env, ctrl, [0, 1], fast=False)
        assert fast.answers == slow.answers and (fast.tokens == slow.tokens).all()
        assert fast.answers[0] == fast.answers[1]  # every seed sees the stored order


# ----- partial branches -------------------------------------------------------------------------------------------------
def test_stepping_past_a_partial_branch_raises_and_charges_nothing():
    env = make_env(BRANCHES, partial=[0, 1], stored=True)
    q = env.question(0, seed=3)
    assert q.probe_new() == ("a", 0, False)
    assert q.probe_more(0) == ("b", False)
    before = cost(q)
    with pytest.raises(UnrecordedStepError, match="branch 0 of this recorded run has only 2 recorded steps"):
        q.probe_more(0)
    with pytest.raises(UnrecordedStepError):
        q.extend(0)
    assert cost(q) == before and not q.is_finished(0) and q.depth(0) == 2
    assert q.probe(0) == "b"
    with pytest.raises(UnrecordedStepError, match="not finished live"):
        q.get_new_branch_final_answer()  # branch 1 is partial
    q2 = make_env([([], 300, "")], partial=[0], stored=True).question(0, None)
    for call in (q2.probe_new, q2.branch):
        with pytest.raises(UnrecordedStepError):
            call()


def test_unrecorded_steps_are_not_mistaken_for_an_exhausted_pool():
    """Controllers catch ValueError/IndexError as 'no branch left'; the replay of a partial branch must not be."""
    assert not issubclass(UnrecordedStepError, ValueError | IndexError)
    env = make_env([(["x"] * 3, 1500, "")] * 4, partial=[0, 1, 2, 3], stored=True)
    for spec in ("parallel-probe:num_chains=4", "cmc:beta=1", "sc:n=2"):
        for fast in (True, False):  # partial branches force the question API even when the fast path is asked for
            with pytest.raises(ControllerRunError, match="UnrecordedStepError"):
                run_episodes(env, resolve_controller(spec)[0], [0], fast=fast)


def test_partial_branches_round_trip_through_the_store(tmp_path):
    env = make_env(BRANCHES, partial=[3], stored=True)
    assert env.has_partial and env.partial_branches(0) == frozenset({3}) and env.stored_order
    path = save_environment(env, tmp_path / "rec.json.gz")
    doc = read_json(path)
    assert doc["schema_version"] == 2 and doc["questions"][0]["partial"] == [3]
    again = load_environment(path)
    assert again.partial_branches(0) == frozenset({3}) and again.stored_order
    assert environment_records(again) == environment_records(env)
    assert again.subset([0]).partial_branches(0) == frozenset({3})
    with pytest.raises(ReplayFormatError, match="partial"):
        save_environment(env, tmp_path / "paper.json", format="paper")
    # ordinary environments keep schema_version 1
    assert read_json(save_environment(make_env(BRANCHES), tmp_path / "plain.json"))["schema_version"] == 1


@pytest.mark.parametrize("partial", [[4], [-1], [0, 0], "0", [True]])
def test_bad_partial_lists_are_refused(tmp_path, partial):
    import orjson

    doc = {"format": "autotts-replay", "schema_version": 2, "metadata": {"interval": 500},
           "questions": [{"question": "q", "gold_answer": "a", "branches": [[["a"], 600, "b"]] * 4, "partial": partial}]}
    (tmp_path / "bad.json").write_bytes(orjson.dumps(doc))
    with pytest.raises(ReplayFormatError, match="partial"):
        load_environment(tmp_path / "bad.json")


# ----- the controllers' batched solve() -----------------------------------------------------------------------------------
class CountingQuestion(ReplayQuestion):
    """Counts batch calls and single step calls made by a controller."""

    __slots__ = ("many", "single")

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.many = self.single = 0

    def probe_more_many(self, indices):
        self.many += 1
        return super().probe_more_many(indices)

    def probe_more(self, i):
        self.single += 1
        return super().probe_more(i)


def test_parallel_probe_and_cmc_step_each_round_in_one_batch_call():
    env = generate(n_questions=1, n_branches=64, interval=100, max_probes=30, seed=2)
    answers, costs, tokens = env.step_tables(0)
    for spec, per_round in (("parallel-probe:num_chains=16", 1), ("cmc:beta=1", 3)):
        q = CountingQuestion(answers, costs, tokens, list(range(64)), 100)
        parse_spec(spec)[0].build().solve(q)
        assert q.many and q.single >= q.many  # every step went through a batch call
        assert q.many <= per_round * 500
        if spec.startswith("parallel"):
            assert q.single >= 8 * q.many  # ~16 branches per call until they finish or are pruned
