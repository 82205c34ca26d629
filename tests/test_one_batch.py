"""The `one-batch` built-in: identical to the discovery candidate it was shipped from, its compiled fast path equal
to its readable `solve()`, its schedule as documented, and reachable from the CLI like the other built-ins.

`tests/data/one_batch_candidate.py` is the winning candidate's source exactly as the discovery study recorded it
(run r0035 of the study in README "One-batch momentum"); it is evaluated here through the controller-file path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autotts.cli import main
from core.controllers import BUILTINS, OneBatchMomentum, parse_spec
from core.controllers.one_batch import OneBatchSchedule
from core.errors import ControllerSpecError
from core.evaluate import evaluate, resolve_controller, run_episodes
from core.stops import own_branch_budget
from core.store import load_environment
from replay_data import DEMO_PATH

CANDIDATE = Path(__file__).resolve().parent / "data" / "one_batch_candidate.py"


def same(a, b) -> bool:
    return a.answers == b.answers and np.array_equal(a.tokens, b.tokens)


def builtin(spec: str):
    (parsed,) = parse_spec(spec)
    return resolve_controller(parsed)[0]


def test_the_candidate_is_the_recorded_source():
    # the sha256 the study's run store recorded for run r0035
    assert hashlib.sha256(CANDIDATE.read_bytes()).hexdigest().startswith("7667e2c4dbbc")


def test_registered_and_listed_in_the_cli_help():
    assert BUILTINS["one-batch"] is OneBatchMomentum
    assert str(parse_spec("one-batch:beta=0.5")[0]) == "one-batch:beta=0.5"
    for command in ("eval", "solve"):
        out = CliRunner().invoke(main, [command, "--help"]).output
        assert "one-batch" in " ".join(out.split()), command


def test_schedule_at_the_study_grid():
    got = {b: OneBatchSchedule.from_beta(b) for b in (0, 0.2, 0.4, 0.5, 0.6, 0.8, 1)}
    assert [s.batch for s in got.values()] == [5, 11, 17, 20, 23, 35, 59]
    assert [s.conf_thresh for s in got.values()] == [0.874, 0.9124, 0.9508, 0.97, 0.97, 0.97, 0.97]
    assert [s.min_complete for s in got.values()] == [3, 4, 5, 5, 5, 5, 5]
    assert OneBatchSchedule.from_beta(-3) == got[0] and OneBatchSchedule.from_beta(7) == got[1]
    assert OneBatchSchedule.from_beta(1, max_branches=8).batch == 8
    assert own_branch_budget("one-batch:beta=1") == 59 and own_branch_budget("one-batch:beta=0,max_branches=3") == 3
    with pytest.raises(ControllerSpecError, match="max_branches"):
        parse_spec("one-batch:max_branches=0")


@pytest.mark.parametrize("beta", [0, 0.3, 0.5, 0.7, 1])
def test_equals_the_discovery_candidate_on_the_demo(beta):
    env = load_environment(DEMO_PATH)
    seeds = [0, 5, 61]
    candidate = evaluate(env, f"{CANDIDATE}:beta={beta:g}", seeds)
    for fast in (True, False):
        ours = run_episodes(env, builtin(f"one-batch:beta={beta:g}"), seeds, fast=fast)
        assert same(ours, candidate), (beta, fast)


@pytest.mark.parametrize("env_name", ["Qwen3-0.6B/aime25", "Qwen3-8B/aime24"])
def test_equals_the_discovery_candidate_on_the_paper_data(replay_dir, env_name):
    env = load_environment(replay_dir / f"{env_name}.json")
    seeds = [0, 13, 77]
    for beta in (0, 0.2, 0.5, 0.8, 1):
        candidate = evaluate(env, f"{CANDIDATE}:beta={beta:g}", seeds)
        fast = evaluate(env, f"one-batch:beta={beta:g}", seeds)
        assert fast.answers == candidate.answers and np.array_equal(fast.tokens, candidate.tokens), beta
        slow = run_episodes(env, builtin(f"one-batch:beta={beta:g}"), seeds, fast=False)
        assert same(slow, candidate), beta


def test_fast_path_equals_solve_with_a_small_ceiling_and_few_rounds():
    env = load_environment(DEMO_PATH)
    for spec in ("one-batch:beta=1,max_branches=7", "one-batch:beta=0.6,max_rounds=9", "one-batch:max_rounds=0"):
        ctrl = builtin(spec)
        assert same(run_episodes(env, ctrl, [3, 4], fast=True), run_episodes(env, ctrl, [3, 4], fast=False)), spec


def test_tokens_rise_with_beta_on_the_demo():
    env = load_environment(DEMO_PATH)
    tokens = [evaluate(env, f"one-batch:beta={b:g}", range(10)).avg_tokens for b in (0, 0.2, 0.4, 0.5, 0.6, 0.8, 1)]
    assert tokens == sorted(tokens)


def test_cli_eval_runs_it():
    out = CliRunner().invoke(main, ["eval", "-c", "one-batch", "-c", "one-batch:beta=0.5,1", "--seeds", "2", "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "one-batch:beta=1" in out.output and '"controller": "one-batch"' in out.output
