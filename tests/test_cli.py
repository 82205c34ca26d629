"""`autotts eval` through the real click app: JSON output, tables, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import orjson
import pytest
from click.testing import CliRunner

from autotts.cli import main

TINY = [
    {"question": "q", "gold_answer": "2", "probe_freq": 500, "final_answers_trace": [],
     "each_branch": [[["1", "2"], 1100, "2"], [["2"], 700, "2"], [["3", "3", "3"], 1600, "3"], [[], 250, "2"]]},
]


@pytest.fixture
def tiny_env(tmp_path):
    folder = tmp_path / "toy-model"
    folder.mkdir()
    path = folder / "bench.json"
    path.write_text(json.dumps(TINY))
    return path


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_json_rows(tiny_env):
    result = run("eval", str(tiny_env), "-c", "sc:n=2", "-c", "cmc:beta=0,1", "--seeds", "5", "--json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert [r["controller"] for r in doc["rows"]] == ["sc:n=2", "cmc:beta=0", "cmc:beta=1"]
    for row in doc["rows"]:
        assert row["env"] == "toy-model/bench"
        assert 0 <= row["accuracy"] <= 100 and row["avg_tokens"] > 0


def test_episodes_file(tiny_env, tmp_path):
    out = tmp_path / "episodes.jsonl"
    result = run("eval", str(tiny_env), "-c", "asc", "--seeds", "3", "--episodes", str(out), "--json")
    assert result.exit_code == 0
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == 3 and {x["seed"] for x in lines} == {0, 1, 2}
    assert all(x["answer"] in ("2", "3") and isinstance(x["correct"], bool) for x in lines)


def test_default_environment_is_the_synthetic_demo():
    result = run("eval", "-c", "cmc:beta=0.5", "--seeds", "2")
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.stdout


def test_table_output(tiny_env):
    result = run("eval", str(tiny_env), "-c", "sc:n=4", "-c", "esc:window=2", "--seeds", "2")
    assert result.exit_code == 0
    assert "toy-model/bench" in result.stdout and "esc:window=2" in result.stdout


def test_controller_file_spec(tiny_env, tmp_path):
    ctrl = tmp_path / "first.py"
    ctrl.write_text(
        "class First:\n"
        "    def __init__(self, beta=0.5):\n        self.beta = beta\n"
        "    def solve(self, question):\n        return question.get_new_branch_final_answer()\n"
    )
    result = run("eval", str(tiny_env), "-c", f"{ctrl}:beta=0.2", "--seeds", "4", "--json")
    assert result.exit_code == 0, result.output
    row = orjson.loads(result.stdout)["rows"][0]
    assert row["controller"] == f"{ctrl}:beta=0.2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "no such file or folder"),
        (["-c", "nope"], "unknown controller 'nope'"),
        (["-c", "cmc:gamma=1"], "has no option 'gamma'"),
        (["-c", "cmc:beta=x"], "needs a float"),
        (["-c", "sc:n=1.5"], "needs a int"),
        (["-c", "cmc:beta"], "expected key=value"),
        (["-c", "cmc:beta="], "empty value"),
        (["-c", "cmc:beta=1,beta=2"], "given twice"),
        (["-c", "missing_file.py"], "controller file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(main, ["eval", *args, "--seeds", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_folder_without_replay_files(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "holds no replay files" in result.output


def test_malformed_file_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q"}]')
    result = CliRunner().invoke(main, ["eval", str(bad)])
    assert result.exit_code == 2
    assert "question 0" in result.output and "gold_answer" in result.output


def test_sc_beyond_the_pool_is_an_error_naming_the_fix(tiny_env):
    result = run("eval", str(tiny_env), "-c", "sc:n=64", "--seeds", "2")
    assert result.exit_code == 2
    assert "sc:n=64 reads 64 branches per question but this environment holds 4" in result.output
    assert "use -c sc:n=4" in result.output and "--branches 64" in result.output


def test_adaptive_caps_beyond_the_pool_are_a_note(tiny_env):
    result = run("eval", str(tiny_env), "-c", "asc", "--seeds", "2", "--json")
    assert result.exit_code == 0, result.output
    assert "asc may use up to 64 branches" in result.stderr and "capped at 4" in result.stderr
    assert orjson.loads(result.stdout)["rows"][0]["controller"] == "asc"


def test_ratios_name_their_baseline():
    result = run("eval", "-c", "sc:n=64", "-c", "asc", "--seeds", "2", "--json")
    rows = orjson.loads(result.stdout)["rows"]
    assert "baseline" not in rows[0] and rows[1]["baseline"] == "sc:n=64" and rows[1]["tokens_vs_sc64"] > 0
