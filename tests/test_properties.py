"""Property tests over small synthetic environments: fast path = Python path, costs add up, determinism.

Every episode's trace is also checked against an independent re-implementation of docs/semantics.md §2
(`check_trace`), so a cost or an answer that the environment gets wrong shows up whatever the controller did.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.controllers import parse_spec
from core.environment import ReplayEnvironment
from core.evaluate import resolve_controller, run_episodes
from core.store import load_environment
from core.synthetic import generate
from replay_data import DEMO_PATH

SPECS = [
    "sc:n=1", "sc:n=5", "sc:n=64",
    "asc", "asc:max_samples=6,threshold=0.8",
    "esc", "esc:max_samples=12,window=3",
    "parallel-probe:num_chains=4", "parallel-probe:num_chains=16,T=3,warm_up=2,prune_patience=2",
    "parallel-probe:num_chains=64,T=5,warm_up=0,prune_patience=1,probe_burst=2,max_steps=7",
    "cmc:beta=0", "cmc:beta=0.2", "cmc:beta=0.5", "cmc:beta=1", "cmc:beta=0.7,max_branches=6,max_rounds=9",
    "one-batch:beta=0", "one-batch:beta=0.6", "one-batch:beta=1,max_branches=12,max_rounds=9",
]
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=64)
def small_env(seed: int, n_questions: int, n_branches: int, max_probes: int, interval: int, skill: float,
              unsolvable: float) -> ReplayEnvironment:
    return generate(n_questions=n_questions, n_branches=n_branches, interval=interval, max_probes=max_probes,
                    seed=seed, skill=skill, unsolvable=unsolvable, spread=2.0)


envs = st.builds(
    small_env,
    seed=st.integers(0, 10_000),
    n_questions=st.integers(2, 4),
    n_branches=st.integers(8, 40),
    max_probes=st.integers(1, 30),
    interval=st.sampled_from([50, 100, 500]),
    skill=st.sampled_from([0.2, 0.5, 0.8]),
    unsolvable=st.sampled_from([0.0, 0.3]),
)
episode_seeds = st.lists(st.integers(0, 500), min_size=1, max_size=3, unique=True)


def controller(spec: str):
    (parsed,) = parse_spec(spec)
    return resolve_controller(parsed)[0]


# ----- an independent model of the branch semantics ------------------------------------------------------------------
def check_trace(env: ReplayEnvironment, q: int, seed: int, events, probe_cost: int = 0) -> int:
    """Replay a trace against the stored branches (docs/semantics.md §2); returns the total cost it implies."""
    order = list(range(env.n_branches(q)))
    random.Random(seed).shuffle(order)
    delta = int(env.interval[q])
    state: dict[int, int | str] = {}  # opening index -> steps taken, or "read" / "pruned"
    opened = 0
    total = 0

    def step(b: int, k: int) -> tuple[str, int]:
        probes, tokens, final = env.branch_answers(q, b)
        n = len(probes)
        if k < n:
            return probes[k], delta
        return final, (max(0, tokens - n * delta) if k == n else 0)

    for op, i, cost, answer in events:
        if op in ("open", "branch", "read"):
            assert i == opened, (op, i, opened)
            opened += 1
        else:
            assert isinstance(state.get(i), int), f"{op} on branch {i} in state {state.get(i)}"
        b = order[i] if i < len(order) else None
        if op in ("open", "branch"):
            want, want_cost = step(b, 0)
            state[i] = 1
            assert cost == want_cost and answer == (want if op == "open" else None), (op, i, cost, answer)
        elif op == "read":
            _, tokens, final = env.branch_answers(q, b)
            state[i] = "read"
            assert (cost, answer) == (tokens, final)
        elif op in ("step", "extend"):
            n = len(env.branch_answers(q, b)[0])
            k = state[i]
            want, want_cost = step(b, k)
            state[i] = min(k + 1, n + 1)
            assert cost == want_cost and answer == (want if op == "step" else None), (op, i, k, cost, answer)
        elif op == "probe":
            probes, _, final = env.branch_answers(q, b)
            k = state[i]
            assert answer == (probes[k - 1] if k - 1 < len(probes) else final)
            assert cost == (probe_cost if k <= len(probes) else 0)
        elif op == "prune":
            state[i] = "pruned"
            assert cost == 0
        else:  # pragma: no cover
            raise AssertionError(f"unknown op {op}")
        total += cost
    return total


def cost_bound(env: ReplayEnvironment, q: int) -> int:
    """All branch tokens plus the probe overshoot (nΔ − T where T < nΔ)."""
    lo, hi = int(env.branch_offsets[q]), int(env.branch_offsets[q + 1])
    tokens = env.branch_tokens[lo:hi]
    probes = env.branch_nprobes[lo:hi].astype(np.int64) * int(env.interval[q])
    return int(np.maximum(tokens, probes).sum())


# ----- (a) compiled fast path == Python solve ------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(env=envs, seeds=episode_seeds)
def test_fast_path_matches_python_solve(env, seeds):
    for spec in SPECS:
        ctrl = controller(spec)
        fast = run_episodes(env, ctrl, seeds, fast=True)
        slow = run_episodes(env, ctrl, seeds, fast=False)
        assert fast.answers == slow.answers, spec
        assert np.array_equal(fast.tokens, slow.tokens), spec


def test_fast_path_matches_python_solve_on_the_demo():
    env = load_environment(DEMO_PATH)
    seeds = [0, 17, 99]
    for spec in ["sc:n=64", "asc", "esc", "parallel-probe", "cmc:beta=0", "cmc:beta=0.5", "cmc:beta=1",
                 "one-batch:beta=0", "one-batch:beta=0.5", "one-batch:beta=1"]:
        ctrl = controller(spec)
        fast = run_episodes(env, ctrl, seeds, fast=True)
        slow = run_episodes(env, ctrl, seeds, fast=False)
        assert fast.answers == slow.answers, spec
        assert np.array_equal(fast.tokens, slow.tokens), spec


# ----- (b) cost accounting -----------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(env=envs, seeds=episode_seeds)
def test_trace_costs_add_up_and_follow_the_semantics(env, seeds):
    for spec in SPECS:
        eps = run_episodes(env, controller(spec), seeds, traces=True)
        assert eps.traces is not None
        for si, seed in enumerate(seeds):
            for q in range(env.n_questions):
                events = eps.traces[(seed, q)]
                tokens = int(eps.tokens[si, q])
                assert sum(e[2] for e in events) == tokens, spec
                assert check_trace(env, q, seed, events) == tokens, spec
                assert 0 <= tokens <= cost_bound(env, q), spec


# ----- (c) determinism -------------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(env=envs, seeds=episode_seeds, spec=st.sampled_from(SPECS), fast=st.booleans())
def test_runs_are_deterministic_per_seed(env, seeds, spec, fast):
    first = run_episodes(env, controller(spec), seeds, fast=fast)
    second = run_episodes(env, controller(spec), list(seeds), fast=fast)
    assert first.answers == second.answers
    assert np.array_equal(first.tokens, second.tokens)
    # an episode depends on its own seed only, not on which other seeds ran with it
    alone = run_episodes(env, controller(spec), seeds[-1:], fast=fast)
    assert alone.answers[0] == first.answers[-1]
    assert np.array_equal(alone.tokens[0], first.tokens[-1])


# ----- (d) a random-action controller ------------------------------------------------------------------------------
class RandomActor:
    """Takes random actions (paper API and action API, valid and invalid) until a budget, then answers."""

    name = "random-actor"

    def __init__(self, seed: int, actions: int):
        self.rng = random.Random(seed)
        self.actions = actions

    def solve(self, question):
        rng = self.rng
        opened: list[int] = []
        finished: set[int] = set()
        pruned: set[int] = set()
        read: list[int] = []
        seen: list[str] = []
        spent = question.get_seq_and_total_tokens()[1]
        assert spent == 0
        for _ in range(self.actions):
            live = [i for i in opened if i not in pruned]
            op = rng.choice(["probe_new", "read", "branch", "probe_more", "extend", "probe", "prune", "invalid"])
            before = question.get_seq_and_total_tokens()[1]
            try:
                if op == "probe_new":
                    ans, i, fin = question.probe_new()
                    opened.append(i)
                    seen.append(ans)
                    if fin:
                        finished.add(i)
                elif op == "read":
                    seen.append(question.get_new_branch_final_answer())
                    read.append(question.num_opened - 1)
                elif op == "branch":
                    opened.append(question.branch())
                elif op == "invalid":
                    bad = rng.choice([-1, question.num_opened, question.num_opened + 5, *pruned, *read])
                    with pytest.raises(ValueError):
                        rng.choice([question.probe_more, question.extend, question.probe, question.prune])(bad)
                elif live:
                    i = rng.choice(live)
                    was_finished = i in finished
                    if op == "probe_more":
                        ans, fin = question.probe_more(i)
                        seen.append(ans)
                    elif op == "extend":
                        fin = question.extend(i)
                    elif op == "probe":
                        seen.append(question.probe(i))
                        fin = question.is_finished(i)
                    else:
                        question.prune(i)
                        pruned.add(i)
                        fin = was_finished
                    if fin:
                        finished.add(i)
                    if was_finished:  # stepping or probing a finished branch is free
                        assert question.get_seq_and_total_tokens()[1] == before
            except (ValueError, IndexError):
                assert question.fresh_branches_left == 0 and op in ("probe_new", "read", "branch")
                assert question.get_seq_and_total_tokens()[1] == before
            now = question.get_seq_and_total_tokens()[1]
            assert now >= before
            spent = now
        assert spent == question.get_seq_and_total_tokens()[1]
        return rng.choice(seen) if seen else None


@PROPERTY_SETTINGS
@given(env=envs, seeds=episode_seeds, actor_seed=st.integers(0, 2**16), actions=st.integers(0, 60),
       probe_cost=st.sampled_from([0, 3, 50]))
def test_random_actions_never_break_cost_invariants(env, seeds, actor_seed, actions, probe_cost):
    eps = run_episodes(env, RandomActor(actor_seed, actions), seeds, traces=True, probe_cost=probe_cost)
    for si, seed in enumerate(seeds):
        for q in range(env.n_questions):
            events = eps.traces[(seed, q)]
            tokens = int(eps.tokens[si, q])
            assert sum(e[2] for e in events) == tokens
            assert check_trace(env, q, seed, events, probe_cost) == tokens
            n_probe_events = sum(e[0] == "probe" for e in events)
            assert tokens <= cost_bound(env, q) + probe_cost * n_probe_events
    # the same actor seed replays the same episodes
    again = run_episodes(env, RandomActor(actor_seed, actions), seeds, traces=True, probe_cost=probe_cost)
    assert again.answers == eps.answers and np.array_equal(again.tokens, eps.tokens)
    assert again.traces == eps.traces


def test_check_trace_catches_wrong_traces():
    """The oracle itself must be able to fail."""
    env = small_env(1, 2, 8, 4, 100, 0.5, 0.0)
    eps = run_episodes(env, controller("cmc:beta=0.5"), [3], traces=True)
    events = list(eps.traces[(3, 0)])
    assert check_trace(env, 0, 3, events) == eps.tokens[0, 0]
    op, i, cost, ans = events[-1]
    with pytest.raises(AssertionError):  # a cost off by one
        check_trace(env, 0, 3, [*events[:-1], (op, i, cost + 1, ans)])
    op, i, cost, ans = events[0]
    with pytest.raises(AssertionError):  # a wrong revealed answer
        check_trace(env, 0, 3, [(op, i, cost, "not an answer"), *events[1:]])
    with pytest.raises(AssertionError):  # a step on a branch never opened
        check_trace(env, 0, 3, [("step", 5, 100, "x")])
