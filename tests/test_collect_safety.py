"""`autotts collect` never overwrites what it did not make and says so in one line: a folder holding foreign files,
a resume with different settings (naming the differing setting), a folder another collection holds, --max-minutes
(exit 3, resumable). Plus the first-run helpers: --demo, `python -m core.collect.tiny_model`, the context warning,
and the shared options' old spellings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

pytest.importorskip("llama_cpp")
pytest.importorskip("math_verify")

from collect_helpers import SMALL, THREADS, questions_file, tiny_model  # noqa: E402,F401 - fixtures

from autotts.cli import main  # noqa: E402
from autotts.cli_collect import EXIT_STOPPED  # noqa: E402
from core.collect.writer import LOG_NAME, STORE_NAME  # noqa: E402


def args(model: Path, questions: Path, out: Path, **over: object) -> list[str]:
    opts = {**SMALL, "branches": 2, "parallel": 2, "threads": THREADS, "limit": 1, **over}
    out_args = ["collect", str(model), str(questions), str(out), "--no-progress"]
    for k, v in opts.items():
        out_args += [f"--{k.replace('_', '-')}", str(v)]
    return out_args


def invoke(*a: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(a))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line_error(output: str, *needles: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in output


def test_a_folder_with_foreign_files_is_refused_and_left_alone(tiny_model: Path, questions_file: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / STORE_NAME).write_bytes(b'{"format": "autotts-replay", "note": "someone else\'s collection"}')
    (out / "notes.txt").write_text("do not lose me")
    before = snapshot(out)
    res = invoke(*args(tiny_model, questions_file, out))
    assert res.exit_code == 2
    one_line_error(res.output, "did not create", "store.json", "notes.txt", "choose a new or empty output folder")
    assert snapshot(out) == before


def test_a_file_as_output_folder_is_refused(tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "file"
    out.write_text("x")
    res = invoke(*args(tiny_model, questions_file, out))
    assert res.exit_code == 2 and out.read_text() == "x"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, questions_file: Path) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("finished") / "run"
    res = invoke(*args(tiny_model, questions_file, out))
    assert res.exit_code == 0, res.output
    return out


def test_a_changed_seed_is_named_and_nothing_changes(finished: Path, tiny_model: Path, questions_file: Path) -> None:  # noqa: F811
    before = snapshot(finished)
    res = invoke(*args(tiny_model, questions_file, finished, seed=1))
    assert res.exit_code == 2
    one_line_error(res.output, "settings.seed: was 0, now 1", "rerun with the original settings")
    assert snapshot(finished) == before


def test_several_changed_settings_are_each_named(finished: Path, tiny_model: Path, questions_file: Path) -> None:  # noqa: F811
    res = invoke(*args(tiny_model, questions_file, finished, temperature=0.6, interval=8))
    assert res.exit_code == 2
    one_line_error(res.output, "settings.interval: was 16, now 8", "settings.sampling.temperature: was 0.7, now 0.6")


def test_a_folder_held_by_another_collection_is_refused(finished: Path, tiny_model: Path, questions_file: Path) -> None:  # noqa: F811
    from core.collect.folder import folder_lock

    lock = folder_lock(finished)
    try:
        before = snapshot(finished)
        res = invoke(*args(tiny_model, questions_file, finished))
        assert res.exit_code == 2
        one_line_error(res.output, "being written by another autotts collect")
        assert snapshot(finished) == before
    finally:
        lock.close()


def test_max_minutes_ends_with_exit_3_and_resumes(tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "timed"
    res = invoke(*args(tiny_model, questions_file, out, max_minutes=1e-6), "--json")
    assert res.exit_code == EXIT_STOPPED == 3, res.output
    summary = orjson.loads(res.stdout)
    assert summary["complete"] is False and summary["store"] is None
    assert "Stopped by --max-minutes" in res.stderr and "rerun the same command to resume" in res.stderr
    assert not (out / STORE_NAME).exists() and (out / LOG_NAME).exists()
    res = invoke(*args(tiny_model, questions_file, out))
    assert res.exit_code == 0, res.output
    assert (out / STORE_NAME).exists()


def test_an_export_inside_the_folder_is_accepted_on_rerun(tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "exp"
    a = args(tiny_model, questions_file, out) + ["--export-paper", str(out / "paper.json")]
    assert invoke(*a).exit_code == 0
    assert (out / "paper.json").exists() and (out / "paper.meta.json").exists()
    res = invoke(*a)
    assert res.exit_code == 0, res.output


def test_max_tokens_beyond_the_models_context_warns(tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    res = invoke(*args(tiny_model, questions_file, tmp_path / "long", max_tokens=40_000, max_minutes=1e-6))
    assert res.exit_code == 3
    assert "warning: a branch may reach 40,024 tokens" in res.stderr and "trained on" in res.stderr


def test_demo_collects_in_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTTS_CACHE", str(tmp_path / "cache"))
    res = invoke("collect", "--demo", str(tmp_path / "demo"), "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    summary = orjson.loads(res.stdout)
    assert summary["complete"] and summary["branches_total"] == 32
    env_doc = orjson.loads((tmp_path / "demo" / STORE_NAME).read_bytes())
    assert env_doc["metadata"]["model"] == "tiny-qwen3" and env_doc["metadata"]["interval"] == 16
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [LOG_NAME, STORE_NAME]  # inputs live in the cache


def test_tiny_model_module_writes_a_model_and_says_how_to_use_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from core.collect.tiny_model import main as tiny_main

    assert tiny_main([str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.gguf").stat().st_size > 100_000
    assert "--interval 16 --max-tokens 64" in out and "llama_cpp.server" in out


def test_solve_accepts_the_old_max_tokens_spelling_but_not_both() -> None:
    res = invoke("solve", "--max-tokens-per-branch", "5", "--max-tokens", "6", "q")
    assert res.exit_code == 2 and "old name of --max-tokens" in res.output
    helptext = invoke("solve", "--help").output
    assert "--max-tokens " in helptext and "--max-tokens-per-branch" not in helptext
    collect_help = invoke("collect", "--help").output
    assert "--base-url" in collect_help and "--servers" in collect_help
