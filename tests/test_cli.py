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


def test_corrupt_gzip_body_and_rejected_option_values_are_one_line_errors(tmp_path):
    import gzip
    import subprocess
    import sys

    good = gzip.compress(b'{"x": ' + b"1" * 5000 + b"}")
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(good[:10] + bytes(len(good) - 18) + good[-8:])  # header and trailer intact, body zeroed
    for args, needle in ((["eval", str(bad), "-c", "sc"], "corrupt gzip data"),
                         (["eval", "-c", "sc:n=-3"], "'sc:n=-3': sc: n must be at least 1")):
        r = subprocess.run([sys.executable, "-m", "autotts", *args], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ----- subcommand registration: one explicit table in autotts/cli.py, modules loaded on first use ---------------
def test_every_subcommand_is_registered_with_its_own_summary():
    import ast
    import importlib
    from pathlib import Path

    import click

    from autotts.cli import SUBCOMMANDS

    defined = {}  # command name -> (module, attribute), read from the cli_*.py sources
    for path in sorted((Path(__file__).resolve().parents[1] / "autotts").glob("cli_*.py")):
        for node in ast.parse(path.read_text()).body:
            for deco in getattr(node, "decorator_list", []):
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                        and isinstance(deco.func.value, ast.Name) and deco.func.value.id == "click"
                        and deco.func.attr in ("command", "group")):
                    defined[deco.args[0].value] = (f"autotts.{path.stem}", node.name)
    assert {name: (e.module, e.attribute) for name, e in SUBCOMMANDS.items()} == defined
    for name, entry in SUBCOMMANDS.items():
        command = getattr(importlib.import_module(entry.module), entry.attribute)
        assert isinstance(command, click.Command) and command.name == name
        assert command.get_short_help_str(10**6) == entry.summary, name


def test_help_lists_commands_without_importing_them():
    import subprocess
    import sys

    code = ("import sys; from autotts.cli import main\n"
            "try: main(['--help'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('autotts.cli_', 'numpy', 'numba', 'scipy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    listing, loaded = out.rstrip("\n").rsplit("\n", 1)
    assert loaded == "[]"
    assert "  eval      Evaluate controllers on replay environments" in listing
    assert all(f"  {name} " in listing for name in ("collect", "discover", "heldout", "mcp", "study", "tui"))


def test_help_listing_is_what_click_would_print_from_the_commands():
    import importlib

    import click

    from autotts.cli import SUBCOMMANDS, AutoTTSGroup

    lazy = CliRunner().invoke(main, ["--help"], terminal_width=100).output
    eager = AutoTTSGroup(name=main.name, params=main.params, help=main.help,
                         context_settings=main.context_settings)
    for name, entry in SUBCOMMANDS.items():
        eager.add_command(getattr(importlib.import_module(entry.module), entry.attribute), name)
    assert isinstance(eager, click.Group)
    assert CliRunner().invoke(eager, ["--help"], terminal_width=100).output == lazy


def test_console_entry_point_exit_codes_and_complete_output(tiny_env, tmp_path):
    """`autotts eval` ends without interpreter teardown (autotts.cli.run); output and exit codes stay whole."""
    import subprocess
    import sys

    episodes = tmp_path / "episodes.jsonl"
    cmd = [sys.executable, "-m", "autotts", "eval", str(tiny_env), "-c", "sc:n=2", "--seeds", "7", "--json",
           "--episodes", str(episodes)]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(ok.stdout)["rows"][0]["controller"] == "sc:n=2"
    assert len(episodes.read_text().splitlines()) == 7
    bad = subprocess.run([sys.executable, "-m", "autotts", "eval", str(tmp_path / "missing.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "autotts", "eval", "--seeds", "0"], capture_output=True, text=True)
    assert usage.returncode == 2 and "--seeds" in usage.stderr
    helped = subprocess.run([sys.executable, "-m", "autotts", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "Commands:" in helped.stdout
