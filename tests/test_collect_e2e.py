"""End to end: `autotts collect` on a tiny random-weight Qwen3 GGUF builds a valid replay store with the right probe
segmentation and costs; a run killed with SIGKILL and resumed gives the same store as an uninterrupted one;
Ctrl-C stops cleanly; the OpenAI-compatible backend collects through a real local server."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("math_verify")

from click.testing import CliRunner  # noqa: E402
from collect_helpers import (  # noqa: E402,F401 - fixtures
    SMALL,
    THREADS,
    child_env,
    cli_command,
    expected_probes,
    openai_server,
    questions_file,
    tiny_model,
)

from autotts.cli import main  # noqa: E402
from core.collect.writer import LOG_NAME, STORE_NAME, read_log  # noqa: E402
from core.store import load_environment  # noqa: E402


def small_args(**over: object) -> list[str]:
    opts = {**SMALL, "branches": 6, "parallel": 4, "threads": THREADS, **over}
    args = []
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args + ["--no-progress"]


def run_cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout  # notes (e.g. a controller cap above the pool) go to stderr


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, questions_file: Path) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("collect") / "run"
    run_cli("collect", str(tiny_model), str(questions_file), str(out), *small_args(), "--json")
    return out


def test_store_is_valid_with_exact_segmentation_and_costs(collected: Path) -> None:
    env = load_environment(collected / STORE_NAME)
    manifest, records = read_log(collected / LOG_NAME)
    s = manifest["settings"]
    assert env.n_questions == 3 and all(env.n_branches(q) == 6 for q in range(3))
    assert env.metadata["interval"] == SMALL["interval"] and env.metadata["synthetic"] is False
    assert env.metadata["collector"]["model_sha256"] == manifest["model_sha256"]
    assert set(env.signals) >= {"mean_logprob", "lowest_group_conf", "answer_closed"}
    by_key = {(r["q"], r["b"]): r for r in records}
    assert len(by_key) == len(records) == 18
    stops = set()
    for q in range(3):
        for b in range(6):
            r = by_key[(q, b)]
            probes, tokens, final = env.branch_answers(q, b)
            assert len(probes) == len(r["probes"]) + 1 == expected_probes(r["thinking_tokens"], s["max_tokens"], s["interval"]) + 1
            assert probes[-1] == final and tokens == r["tokens"]
            assert tokens <= s["max_tokens"] + 4 + s["answer_tokens"]  # forced "\n</think>\n\n" is 3-4 tokens
            if r["forced_think_end"]:
                assert r["thinking_tokens"] > s["max_tokens"]
            stops.add((r["stop"], r["forced_think_end"]))
    assert len(stops) >= 2  # the tiny model's branches end in more than one way
    # the cost of stepping every branch to its end is Σ max(nΔ, T), through the paper's question API
    for q in range(3):
        question = env.question(q, seed=0)
        for _ in range(6):
            _, i, done = question.probe_new()
            while not done:
                _, done = question.probe_more(i)
        expected = sum(max(len(env.branch_answers(q, b)[0]) * 16, env.branch_answers(q, b)[1]) for b in range(6))
        assert question.get_seq_and_total_tokens()[1] == expected


def test_store_evaluates_and_exports(collected: Path, tmp_path: Path) -> None:
    doc = orjson.loads(run_cli("eval", str(collected / STORE_NAME), "-c", "sc:n=4", "-c", "parallel-probe", "--seeds", "3", "--json"))
    assert len(doc["rows"]) == 2
    run_cli("export", str(collected), str(tmp_path / "paper.json"))
    paper = orjson.loads((tmp_path / "paper.json").read_bytes())
    assert isinstance(paper, list) and set(paper[0]) == {"question", "gold_answer", "probe_freq", "final_answers_trace", "each_branch"}
    assert (tmp_path / "paper.meta.json").is_file()
    a, b = load_environment(collected / STORE_NAME), load_environment(tmp_path / "paper.json")
    assert [a.branch_answers(q, i) for q in range(3) for i in range(6)] == [b.branch_answers(q, i) for q in range(3) for i in range(6)]


def test_rerunning_a_finished_collection_is_a_no_op(collected: Path, tiny_model: Path, questions_file: Path) -> None:  # noqa: F811
    before = (collected / STORE_NAME).read_bytes()
    out = orjson.loads(run_cli("collect", str(tiny_model), str(questions_file), str(collected), *small_args(parallel=2), "--json"))
    assert out["tokens"] == 0 and out["complete"]
    assert (collected / STORE_NAME).read_bytes() == before


def test_changed_settings_are_refused(collected: Path, tiny_model: Path, questions_file: Path) -> None:  # noqa: F811
    res = CliRunner().invoke(main, ["collect", str(tiny_model), str(questions_file), str(collected), *small_args(interval=8)])
    assert res.exit_code == 2 and "different settings" in res.output


def test_store_does_not_depend_on_parallelism(collected: Path, tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    run_cli("collect", str(tiny_model), str(questions_file), str(tmp_path / "p1"), *small_args(parallel=1))
    assert (tmp_path / "p1" / STORE_NAME).read_bytes() == (collected / STORE_NAME).read_bytes()


# ----- kill, resume, interrupt (real subprocesses) ------------------------------------------------------------------
LONG = {"branches": 24, "interval": 16, "max_tokens": 192, "answer_tokens": 24, "probe_tokens": 8}


def _wait_for_records(log: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            count = log.read_bytes().count(b'"type":"branch"')
            if count >= n:
                return count
        if proc.poll() is not None:
            pytest.fail(f"collect finished before it could be interrupted: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    pytest.fail("collect produced no records in time")


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_store(tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    killed = tmp_path / "killed"
    args = ["collect", str(tiny_model), str(questions_file), str(killed), *small_args(**LONG, parallel=4)]
    proc = subprocess.Popen(cli_command(*args), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = _wait_for_records(killed / LOG_NAME, 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, partial = read_log(killed / LOG_NAME)
    assert seen <= len(partial) < 72 and not (killed / STORE_NAME).exists()
    done = subprocess.run(cli_command(*args, "--json"), env=child_env(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["complete"] and summary["branches_done"] == 72
    _, records = read_log(killed / LOG_NAME)
    assert sorted((r["q"], r["b"]) for r in records) == [(q, b) for q in range(3) for b in range(24)]  # no loss, no dupes
    assert records[: len(partial)] == partial  # what was saved before the kill is kept as it was
    fresh = tmp_path / "fresh"
    run_cli("collect", str(tiny_model), str(questions_file), str(fresh), *small_args(**LONG, parallel=3))
    assert (killed / STORE_NAME).read_bytes() == (fresh / STORE_NAME).read_bytes()


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    args = ["collect", str(tiny_model), str(questions_file), str(out), *small_args(**LONG, parallel=4)]
    proc = subprocess.Popen(cli_command(*args), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_records(out / LOG_NAME, 6, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"rerun the same command to resume" in err and b"Traceback" not in err
    _, partial = read_log(out / LOG_NAME)
    assert 6 <= len(partial) < 72
    run_cli(*args)
    _, records = read_log(out / LOG_NAME)
    assert len(records) == 72 and (out / STORE_NAME).is_file()


# ----- OpenAI-compatible backend against a real local server ------------------------------------------------------
@pytest.mark.slow
def test_openai_backend_collects_a_valid_store(openai_server: str, questions_file: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "oa"
    summary = orjson.loads(run_cli("collect", "auto", str(questions_file), str(out), "--backend", "openai",
                                   "--base-url", openai_server, *small_args(branches=4), "--json",
                                   "--export-paper", str(tmp_path / "oa_paper.json")))
    assert summary["complete"] and summary["branches_done"] == 12
    env = load_environment(out / STORE_NAME)
    manifest, records = read_log(out / LOG_NAME)
    assert manifest["backend_kind"].startswith("openai:")
    for r in records:
        probes, tokens, _ = env.branch_answers(r["q"], r["b"])
        assert tokens == r["tokens"] and len(probes) == len(r["probes"]) + 1
        assert len(r["probes"]) == expected_probes(r["thinking_tokens"], SMALL["max_tokens"], SMALL["interval"])
    assert load_environment(tmp_path / "oa_paper.json").n_questions == 3
