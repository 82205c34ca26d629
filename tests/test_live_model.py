"""Live solving on a real model: the tiny random-weight Qwen3 GGUF through llama.cpp in-process and through
llama-cpp-python's OpenAI-compatible server. Every built-in controller completes, is charged exactly the tokens it
generated, replays from its recording to the same answers and costs, and batches its rounds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from click.testing import CliRunner  # noqa: E402
from collect_helpers import openai_server, tiny_model  # noqa: E402,F401 - fixtures
from live_helpers import SPECS, Blocking, Counting  # noqa: E402

from core.evaluate import resolve_controller, run_episodes  # noqa: E402
from core.live import LiveSolver, live_settings, recorded_environment  # noqa: E402
from core.store import load_environment, save_environment  # noqa: E402

SETTINGS = live_settings(interval=16, max_tokens=96, answer_tokens=24, probe_tokens=8)
QUESTIONS = ["What is 1+1?", "Compute 3*7."]
GOLDS = ["2", "21"]


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[object]:  # noqa: F811
    from core.collect.engine import LlamaEngine

    # one thread: on a shared 2-core machine llama.cpp's spinning thread barrier collapses under contention
    with LlamaEngine(tiny_model, parallel=32, branch_tokens=SETTINGS.branch_budget(), prompt_tokens=160,
                     n_threads=1) as eng:
        yield eng


def replay_matches(results, tmp_path: Path, spec: str) -> None:
    env = load_environment(save_environment(recorded_environment(results, name="tiny/live"), tmp_path / "rec.json.gz"))
    assert [env.n_branches(q) for q in range(env.n_questions)] == [r.branches for r in results]
    ctrl = resolve_controller(spec)[0]
    for fast in (True, False):
        eps = run_episodes(env, ctrl, [0, 1], fast=fast)
        for answers, tokens in zip(eps.answers, eps.tokens, strict=True):
            assert answers == [r.answer for r in results], (spec, fast)
            assert tokens.tolist() == [r.tokens for r in results], (spec, fast)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_every_builtin_runs_live_costs_what_it_generated_and_replays(engine, spec: str, tmp_path: Path) -> None:
    backend = Counting(engine)
    results = LiveSolver(backend, settings=SETTINGS, record=True).solve_many(QUESTIONS, spec, golds=GOLDS)
    assert all(r.branches >= 1 and r.tokens > 0 and r.seconds >= 0 for r in results)
    assert sum(r.tokens for r in results) == backend.chunk_tokens  # charged == generated, token for token
    assert sum(r.probe_tokens for r in results) == backend.probe_tokens
    # every branch was freed: the engine can open its full width again
    p = engine.add_prompt("x")
    handles = [engine.open_branch(p, k) for k in range(engine.max_branches)]
    for h in handles:
        engine.close_branch(h)
    engine.release_prompt(p)
    replay_matches(results, tmp_path, spec)


@pytest.mark.slow
def test_parallel_probe_batches_its_rounds_without_changing_them(engine) -> None:
    """k chains: ~1 decode call per round instead of k; on CPU the engine's branches do not depend on their batch
    neighbours, so the batched and the blocking runs generate the very same tokens."""
    k = 8
    spec = f"parallel-probe:num_chains={k},T=3,warm_up=2,prune_patience=2"
    batched = Counting(engine)
    r = LiveSolver(batched, settings=SETTINGS).solve(QUESTIONS[0], spec)
    blocking = Counting(engine)
    with LiveSolver(blocking, settings=SETTINGS).question(QUESTIONS[0]) as q:
        answer = resolve_controller(spec)[0].solve(Blocking(q))
        assert (answer, q.tokens, q.num_opened, q.probe_tokens) == (r.answer, r.tokens, r.branches, r.probe_tokens)
    assert max(batched.widths) == k and max(blocking.widths) == 1
    assert batched.extend_calls * 3 <= blocking.extend_calls
    assert batched.extend_calls <= 2 * batched.probe_calls + 2  # ~1 call per round (+1 when branches run to their end)


@pytest.mark.slow
def test_cli_solve_compares_records_and_replays(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    from autotts.cli import main

    qfile = tmp_path / "q.jsonl"
    qfile.write_bytes(b"".join(orjson.dumps({"question": q, "gold_answer": g}) + b"\n" for q, g in zip(QUESTIONS, GOLDS, strict=True)))
    rec = tmp_path / "run.json.gz"
    args = ["solve", "-m", str(tiny_model), "-c", "cmc:beta=0.5", "--questions", str(qfile), "--compare", "sc:n=4",
            "--interval", "16", "--max-tokens-per-branch", "96", "--answer-tokens", "24", "--probe-tokens", "8",
            "--parallel", "16", "--threads", "1", "--record", str(rec), "--json"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = orjson.loads(res.output)
    assert doc["controller"] == "cmc:beta=0.5" and doc["compare"] == "sc:n=4" and doc["record"] == str(rec)
    assert len(doc["results"]) == len(doc["compare_results"]) == 2
    assert all(r["branches"] == 4 for r in doc["compare_results"])
    assert doc["totals"]["tokens"] == sum(r["tokens"] for r in doc["results"])
    out = CliRunner().invoke(main, ["eval", str(rec), "-c", "cmc:beta=0.5", "--seeds", "1", "--json"], catch_exceptions=False)
    row = orjson.loads(out.output)["rows"][0]
    assert row["avg_tokens"] == doc["totals"]["tokens"] / 2
    assert row["accuracy"] == 100 * sum(bool(r["correct"]) for r in doc["results"]) / 2
    # the table form, and a single question on the command line
    res = CliRunner().invoke(main, ["solve", "-m", str(tiny_model), "-c", "sc:n=2", "What is 2+2?", "--interval", "16",
                                    "--max-tokens-per-branch", "48", "--answer-tokens", "8", "--parallel", "4",
                                    "--threads", "1"], catch_exceptions=False)
    assert res.exit_code == 0 and "Live solve" in res.output and "sc:n=2" in res.output


def test_cli_solve_refuses_bad_usage(tiny_model: Path) -> None:  # noqa: F811
    from autotts.cli import main

    res = CliRunner().invoke(main, ["solve", "-m", str(tiny_model)])
    assert res.exit_code == 2 and "QUESTION or --questions" in res.output
    res = CliRunner().invoke(main, ["solve", "-m", str(tiny_model), "-c", "cmc:bogus=1", "hi"])
    assert res.exit_code == 2 and "no option 'bogus'" in res.output
    res = CliRunner().invoke(main, ["solve", "hi"])
    assert res.exit_code == 2 and "--model is required" in res.output


@pytest.mark.slow
def test_openai_backend_solves_live_and_replays(openai_server: str, tmp_path: Path) -> None:  # noqa: F811
    from core.collect.openai_backend import OpenAIBackend

    backend = OpenAIBackend(openai_server, parallel=8)
    try:
        counting = Counting(backend)
        solver = LiveSolver(counting, settings=SETTINGS, record=True)
        for spec in ("cmc:beta=0", "parallel-probe:num_chains=4,T=3,warm_up=2,prune_patience=2", "sc:n=3"):
            before = counting.chunk_tokens
            results = solver.solve_many(QUESTIONS[:1], spec, golds=GOLDS[:1])
            assert results[0].tokens == counting.chunk_tokens - before > 0
            replay_matches(results, tmp_path, spec)
    finally:
        backend.close()
