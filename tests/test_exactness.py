"""The evaluator reproduces the paper's evaluator output (reference_eval.csv) to the printed digit and token."""

from __future__ import annotations

import pytest

from core import evaluate, load_environment

SETTINGS = ["sc:n=64", "asc", "esc", "parallel-probe"] + [f"cmc:beta={b}" for b in ("0", "0.2", "0.4", "0.5", "0.6", "0.8", "1")]
ENVS = [f"Qwen3-{m}/{b}" for m in ("0.6B", "1.7B", "4B", "8B") for b in ("aime24", "aime25", "hmmt25")]


def reference_key(spec: str) -> str:
    return "sc@64" if spec == "sc:n=64" else spec


def check(result, ref) -> None:
    assert f"{result.accuracy:.2f}" == ref["accuracy"], (result.env, result.controller)
    assert result.avg_tokens == pytest.approx(float(ref["avg_tokens"]), rel=0, abs=1e-6), (result.env, result.controller)


@pytest.mark.shared_data
@pytest.mark.parametrize("env_name", ENVS)
def test_compiled_path_matches_reference(env_name, replay_dir, reference_rows):
    env = load_environment(replay_dir / f"{env_name}.json")
    assert env.name == env_name
    for spec in SETTINGS:
        check(evaluate(env, spec), reference_rows[(env_name, reference_key(spec))])


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("spec", SETTINGS)
def test_python_reference_path_matches_reference(spec, replay_dir, reference_rows):
    """The readable solve() implementations, driven through the question API, give the same numbers."""
    env = load_environment(replay_dir / "Qwen3-1.7B/aime25.json")
    check(evaluate(env, spec, fast=False), reference_rows[(env.name, reference_key(spec))])


@pytest.mark.shared_data
def test_compiled_and_python_paths_agree_per_episode(replay_dir):
    env = load_environment(replay_dir / "Qwen3-4B/hmmt25.json")
    for spec in ("asc", "parallel-probe", "cmc:beta=0.3"):
        fast = evaluate(env, spec, range(5))
        slow = evaluate(env, spec, range(5), fast=False)
        assert fast.answers == slow.answers
        assert (fast.tokens == slow.tokens).all()
