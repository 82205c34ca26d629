"""The synthetic environment generator and the bundled demo it produced."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from core.environment import ReplayEnvironment
from core.evaluate import evaluate
from core.store import environment_from_records, environment_records, load_environment, save_environment
from core.synthetic import DEFAULTS, GENERATOR_NAME, GENERATOR_VERSION, JUNK, describe, generate, main
from replay_data import DEMO_PATH

DEMO_COMMAND = "python -m core.synthetic replay_data/demo.json.gz --seed 0"
SMALL = {"n_questions": 4, "n_branches": 24, "max_probes": 12}


def assert_same_environment(a: ReplayEnvironment, b: ReplayEnvironment) -> None:
    assert a.name == b.name
    assert a.metadata == b.metadata
    assert a.questions == b.questions
    assert a.gold_answers == b.gold_answers
    assert a.answer_vocab == b.answer_vocab
    for field in ("gold_ids", "interval", "branch_offsets", "branch_tokens", "branch_final", "probe_offsets",
                  "probe_answers"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert environment_records(a) == environment_records(b)


# ----- determinism and labels --------------------------------------------------------------------------------------
def test_same_seed_gives_identical_environment():
    assert_same_environment(generate(seed=11, **SMALL), generate(seed=11, **SMALL))


def test_other_seed_gives_another_environment():
    a, b = generate(seed=1, **SMALL), generate(seed=2, **SMALL)
    assert environment_records(a) != environment_records(b)


def test_metadata_labels_it_synthetic():
    env = generate(seed=3, interval=250, model="toy", benchmark="bench", **SMALL)
    md = env.metadata
    assert md["synthetic"] is True
    assert md["model"] == "toy" and md["benchmark"] == "bench" and env.name == "toy/bench"
    assert md["interval"] == 250
    assert md["generator"]["name"] == GENERATOR_NAME
    assert md["generator"]["version"] == GENERATOR_VERSION
    params = md["generator"]["params"]
    assert params["seed"] == 3 and params["interval"] == 250 and params["n_branches"] == SMALL["n_branches"]
    assert "SYNTHETIC" in md["description"]
    assert all("Synthetic" in q for q in env.questions)


def test_default_model_name():
    env = generate(seed=0, n_questions=1, n_branches=4, max_probes=4)
    assert env.metadata["model"] == "synthetic-demo"


def test_params_regenerate_the_environment():
    env = generate(seed=5, skill=0.3, unsolvable=0.1, spread=2.0, **SMALL)
    again = generate(**env.metadata["generator"]["params"])
    assert_same_environment(env, again)


def test_round_trips_through_the_store(tmp_path):
    env = generate(seed=4, **SMALL)
    path = save_environment(env, tmp_path / "syn.json.gz")
    loaded = load_environment(path)
    assert loaded.metadata == env.metadata
    assert environment_records(loaded) == environment_records(env)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_questions": 0}, {"n_branches": 0}, {"interval": 0}, {"max_probes": 0}, {"skill": 0.0}, {"skill": 1.0},
     {"unsolvable": -0.1}, {"unsolvable": 1.5}, {"spread": -1.0}],
)
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        generate(**kwargs)


# ----- the bundled demo ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo() -> ReplayEnvironment:
    return load_environment(DEMO_PATH)


def test_demo_is_small_synthetic_and_shaped_for_sc64(demo):
    assert DEMO_PATH.stat().st_size < 400_000
    assert demo.metadata["synthetic"] is True
    assert "SYNTHETIC" in demo.metadata["description"]
    assert demo.n_questions == 30
    assert set(demo.branch_counts.tolist()) == {128}
    assert set(demo.interval.tolist()) == {500}
    assert demo.branch_nprobes.max() <= 80


def test_demo_equals_a_fresh_generation(demo):
    assert demo.metadata["generator"]["params"] == {**DEFAULTS, "seed": 0}
    assert_same_environment(demo, generate(seed=0))


def test_documented_command_rebuilds_the_demo_byte_for_byte(tmp_path, capsys):
    argv = DEMO_COMMAND.split()[3:]  # after "python -m core.synthetic"
    out = tmp_path / "demo.json.gz"
    argv[0] = str(out)
    assert main(argv) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    # compare the JSON inside: another zlib build may compress the same bytes differently
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(DEMO_PATH.read_bytes())


def test_readme_documents_the_command_and_the_label():
    readme = (DEMO_PATH.parent / "README.md").read_text()
    assert DEMO_COMMAND in readme
    assert "SYNTHETIC" in readme


def test_readme_headline_numbers_match_the_demo(demo):
    readme = (DEMO_PATH.parent / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)`[^|]*\| ([\d.]+) \| ([\d,]+) \|$", readme, flags=re.M)
    assert len(rows) == 7
    for spec, accuracy, tokens in rows:
        result = evaluate(demo, spec)
        assert f"{result.accuracy:.2f}" == accuracy, spec
        assert f"{result.avg_tokens:,.0f}" == tokens, spec


def test_cli_rejects_bad_parameters(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x.json"), "--skill", "2"])
    assert not (tmp_path / "x.json").exists()


# ----- statistics ------------------------------------------------------------------------------------------------
def test_demo_statistics_resemble_the_real_data(demo):
    stats = describe(demo)
    pass1 = stats["pass1"]
    assert (pass1 <= 0.05).sum() >= 3  # questions the model (nearly) never gets
    assert (pass1 >= 0.95).sum() >= 3  # questions it (nearly) always gets
    assert ((pass1 > 0.1) & (pass1 < 0.9)).sum() >= 5  # and many in between
    q = stats["token_quantiles"]
    assert 2_000 < q[0.05] < q[0.5] < q[0.95] <= q[1.0] <= 42_000
    assert 8_000 < q[0.5] < 25_000
    assert stats["tokens_correct_median"] < stats["tokens_wrong_median"]
    assert 0.05 < stats["share_tokens_below_probes"] < 0.35  # T < nΔ, as in the real data
    agreement = stats["agreement_by_decile"]
    assert agreement[9] > agreement[0] + 0.5
    assert agreement[:5].mean() < agreement[5:].mean()
    assert 0.03 < stats["junk_share"] < 0.25
    assert 0.15 < stats["top_wrong_share_median"] < 0.7


def test_probes_converge_to_the_final_answer():
    env = generate(seed=8, n_questions=3, n_branches=64)
    for q in range(env.n_questions):
        early = late = n_early = n_late = 0
        for b in range(env.n_branches(q)):
            probes, tokens, final = env.branch_answers(q, b)
            assert isinstance(final, str) and isinstance(tokens, int) and tokens >= 1
            assert all(isinstance(a, str) for a in probes)
            if probes:
                assert probes[-1] == final  # like the real data: the last probe is the final answer
                k = len(probes) // 4
                early += sum(a == final for a in probes[:k])
                n_early += k
                late += sum(a == final for a in probes[-k:]) if k else 0
                n_late += k
        assert late / n_late > early / n_early + 0.3


def test_gold_is_a_string_and_wrong_answers_cluster():
    env = generate(seed=2, n_questions=6, n_branches=128, unsolvable=0.0, skill=0.3)
    for q in range(env.n_questions):
        gold = env.gold_answers[q]
        assert isinstance(gold, str) and gold.isdigit()
        finals = [env.branch_answers(q, b)[2] for b in range(128)]
        wrong = [a for a in finals if a != gold]
        if len(wrong) >= 20:
            assert len(set(wrong)) < len(wrong) * 0.8  # repeated distractors, not all one-offs


def test_difficulty_knobs():
    never = describe(generate(seed=1, n_questions=5, n_branches=32, max_probes=10, unsolvable=1.0))
    assert np.all(never["pass1"] == 0)
    flat = describe(generate(seed=1, n_questions=8, n_branches=128, max_probes=10, unsolvable=0.0, spread=0.0,
                             skill=0.5))
    assert 0.35 < flat["pass1_mean"] < 0.6
    assert np.all(flat["pass1"] > 0.2)
    easy = describe(generate(seed=1, n_questions=8, n_branches=64, skill=0.95, unsolvable=0.0))
    hard = describe(generate(seed=1, n_questions=8, n_branches=64, skill=0.05, unsolvable=0.0))
    assert easy["pass1_mean"] > hard["pass1_mean"] + 0.4


def test_lengths_scale_with_the_budget():
    env = generate(seed=6, n_questions=3, n_branches=40, interval=100, max_probes=5)
    assert env.branch_nprobes.max() <= 5
    assert env.branch_tokens.max() <= 100 * 5 * 1.04
    assert set(env.interval.tolist()) == {100}


def test_describe_on_a_hand_built_environment():
    env = environment_from_records(
        [{"question": "q", "gold_answer": "7", "interval": 100, "branches": [
            (["ERR", "3", "7"], 250, "7"),  # T < nΔ
            (["5", "5"], 300, "5"),
            (["No"], 900, "9"),
        ]}],
        name="t/t",
    )
    stats = describe(env)
    assert stats["pass1"].tolist() == [pytest.approx(1 / 3)]
    assert stats["share_tokens_below_probes"] == pytest.approx(1 / 3)
    assert stats["junk_share"] == pytest.approx(2 / 6)
    assert stats["tokens_correct_median"] == 250 and stats["tokens_wrong_median"] == 600
    assert stats["top_wrong_share_median"] == 0.5
    assert set(JUNK) == {"ERR", "No"}
    # agreement deciles: (k+1)/n → decile of each probe
    # probe k of n falls in decile min(9, (k+1)·10 // n): 3, 6, 9 | 5, 9 | 9
    agreement = stats["agreement_by_decile"]
    assert agreement[3] == 0 and agreement[5] == 1 and agreement[6] == 0
    assert agreement[9] == pytest.approx(2 / 3)
    assert np.isnan(agreement[[0, 1, 2, 4, 7, 8]]).all()


@pytest.mark.shared_data
@pytest.mark.slow
def test_generator_resembles_a_real_environment(replay_dir):
    real = describe(load_environment(replay_dir / "Qwen3-4B" / "hmmt25.json"))
    syn = describe(generate(seed=0))
    assert 0.6 < syn["token_quantiles"][0.5] / real["token_quantiles"][0.5] < 1.6
    assert abs(syn["share_tokens_below_probes"] - real["share_tokens_below_probes"]) < 0.1
    assert np.nanmax(np.abs(syn["agreement_by_decile"] - real["agreement_by_decile"])) < 0.2
    assert abs(syn["junk_share"] - real["junk_share"]) < 0.08
