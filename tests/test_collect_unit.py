"""`autotts collect` pieces that need no model: protocol text handling, sampling kernel, signals, normaliser, the
durable log, and the collector's bookkeeping against a scripted backend (exact probe segmentation and costs)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from collect_helpers import QUESTIONS, FakeBackend, expected_probes

from core.collect import CollectError, CollectSettings, QuestionItem, collect, load_questions
from core.collect.protocol import (
    FORCED_THINK_END,
    SamplingParams,
    branch_seed,
    chat_prompt,
    final_answer,
    last_boxed,
    probe_answer,
)
from core.collect.signals import SIGNAL_NAMES, interval_signals
from core.collect.writer import LOG_NAME, STORE_NAME, open_log, read_log
from core.store import load_environment

REPO = Path(__file__).resolve().parents[1]


# ----- protocol -----------------------------------------------------------------------------------------------------
def test_chat_prompt_is_qwen3_template() -> None:
    assert chat_prompt("Q?") == (
        "<|im_start|>user\nQ?\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chat_prompt("Q?", "") == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(("text", "answer"), [
    ("204} and more", "204"),
    ("\\frac{1}{576}}\\]", "\\frac{1}{576}"),
    (" 9\\sqrt{15} }", "9\\sqrt{15}"),
    ("no closing brace", None),
    ("}", ""),
])
def test_probe_answer_reads_up_to_the_closing_brace(text: str, answer: str | None) -> None:
    assert probe_answer(text) == answer


def test_final_answer_is_last_box_after_think() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{2}{3}} end") == "\\frac{2}{3}"
    assert last_boxed("\\boxed{unclosed") is None
    assert final_answer("<think>maybe \\boxed{7}</think>\n\nSo \\boxed{8}.") == "8"
    assert final_answer("<think>maybe \\boxed{7}</think>\n\nno box") is None
    assert final_answer("still thinking \\boxed{5}") == "5"  # never closed its thinking: look everywhere


def test_settings_validate_and_round_trip() -> None:
    s = CollectSettings(branches=3, interval=7, sampling=SamplingParams(temperature=0.6, top_k=5))
    assert CollectSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError):
        CollectSettings(probe_style="nope")
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    assert s.branch_budget() > s.max_tokens + s.answer_tokens


def test_branch_seeds_are_stable_and_distinct() -> None:
    seeds = {branch_seed(0, q, b, "x") for q in range(4) for b in range(128)}
    assert len(seeds) == 512
    assert branch_seed(0, 1, 2, "x") == branch_seed(0, 1, 2, "x") != branch_seed(1, 1, 2, "x")
    assert branch_seed(0, 1, 2, "x") == 520037833  # pinned: changing the derivation breaks resuming old runs


# ----- sampling kernel ------------------------------------------------------------------------------------------------
def test_sampling_kernel_matches_reference() -> None:
    from core.collect.sampling import reference_sample, sample_rows

    rng = np.random.default_rng(3)
    for n_vocab in (50, 3000):
        x = (rng.standard_normal((40, n_vocab)) * 3).astype(np.float32)
        temps = rng.choice([0.0, 0.6, 1.0], size=40)
        top_k = rng.choice([1, 5, 20, 64], size=40)
        top_p = rng.choice([0.5, 0.95, 1.0], size=40)
        min_p = rng.choice([0.0, 0.1], size=40)
        u = rng.random(40)
        tok, lp, conf = sample_rows(x, temps, top_k, top_p, min_p, u)
        for r in range(40):
            rt, rl, rc = reference_sample(x[r], temps[r], int(top_k[r]), top_p[r], min_p[r], u[r])
            assert tok[r] == rt
            assert lp[r] == pytest.approx(rl, abs=1e-4)
            assert conf[r] == pytest.approx(rc, abs=1e-4)


def test_greedy_rows_take_the_argmax() -> None:
    from core.collect.sampling import sample_rows

    x = np.random.default_rng(0).standard_normal((5, 100)).astype(np.float32)
    tok, _, _ = sample_rows(x, np.zeros(5), np.full(5, 20), np.full(5, 0.95), np.zeros(5), np.full(5, -1.0))
    assert tok.tolist() == x.argmax(1).tolist()


# ----- signals ---------------------------------------------------------------------------------------------------------
def test_interval_signals_align_with_slots() -> None:
    lp = np.array([-1, -1, -2, -2, np.nan, -3], np.float32)  # one forced token
    cf = np.array([1, 2, 3, 4, np.nan, 6], np.float32)
    sig = interval_signals(lp, cf, [2, 4, 6], [-0.5, -0.25, -0.1], [True, False, True], window=2)
    assert set(sig) == set(SIGNAL_NAMES)
    assert sig["mean_logprob"] == [-1.0, -2.0, -3.0]
    assert sig["mean_conf"] == [1.5, 3.5, 6.0]
    assert sig["min_conf"] == [1.0, 3.0, 6.0]
    assert sig["lowest_group_conf"] == [1.5, 1.5, 1.5]  # windows of 2 sampled tokens: 1.5, 2.5, 3.5, 5.0
    assert sig["tail_conf"] == [1.5, 3.5, 5.0]
    assert sig["answer_closed"] == [1.0, 0.0, 1.0]
    empty = interval_signals(np.zeros(0), np.zeros(0), [0], [math.nan], [False])
    assert all(math.isfinite(v[0]) for v in empty.values())


# ----- normaliser -------------------------------------------------------------------------------------------------------
def test_equivalent_answers_vote_together() -> None:
    pytest.importorskip("math_verify")
    from core.collect.normalise import canonical_answers

    raw = ["\\dfrac{3}{4}", "0.75", "3/4", "\\frac34", None, "", "  ", "1", "1.0", "x+1", "1+x"]
    out = canonical_answers(raw, "\\frac{3}{4}")
    assert out[:4] == ["\\frac{3}{4}"] * 4  # the gold string verbatim
    assert out[4:7] == ["ERR"] * 3
    assert out[7] == out[8] == "1"  # first spelling seen
    assert out[9] == out[10] == "x+1"
    # the paper's rule "contains 'no' -> 'No'" is not copied: \\binom is a number, "none" stays itself
    assert canonical_answers(["\\binom{5}{2}", "none", "\\text{none}"], "10") == ["10", "none", "none"]


# ----- durable log ----------------------------------------------------------------------------------------------------
def test_log_resumes_and_drops_a_torn_line(tmp_path: Path) -> None:
    manifest = {"settings": {"branches": 2}, "questions_sha256": "q", "model_sha256": "m", "backend_kind": "k",
                "results_affecting": {}}
    log = open_log(tmp_path, manifest)
    log.append({"q": 0, "b": 0, "x": 1})
    log.append({"q": 0, "b": 0, "x": 2})  # a branch logged twice counts once
    log.close()
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(b'{"type": "branch", "q": 0, "b": 1, "x"')  # a crash mid-write
    log = open_log(tmp_path, manifest)
    assert log.done == {(0, 0)}
    log.append({"q": 0, "b": 1, "x": 3})
    log.close()
    _, records = read_log(tmp_path / LOG_NAME)
    assert [(r["b"], r["x"]) for r in records] == [(0, 1), (1, 3)]
    with pytest.raises(CollectError, match="different settings"):
        open_log(tmp_path, {**manifest, "model_sha256": "other"})


def test_questions_file_formats(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"problem": "a", "answer": 3}\n\n{"question": "b", "gold_answer": "x"}\n')
    assert load_questions(p) == [QuestionItem("a", "3"), QuestionItem("b", "x")]
    p2 = tmp_path / "q.json"
    p2.write_bytes(orjson.dumps([{"question": "c", "gold_answer": "1", "each_branch": []}]))
    assert load_questions(p2) == [QuestionItem("c", "1")]
    p.write_text('{"question": "a"}\n')
    with pytest.raises(CollectError, match="gold_answer"):
        load_questions(p)
    assert load_questions(p, require_gold=False) == [QuestionItem("a")]  # live solving needs no gold
    p2.write_bytes(orjson.dumps(["d", {"problem": "e", "answer": 2}]))
    assert load_questions(p2, require_gold=False) == [QuestionItem("d"), QuestionItem("e", "2")]
    with pytest.raises(CollectError, match="gold_answer"):
        load_questions(p2)


# ----- collector bookkeeping (scripted backend) -------------------------------------------------------------------------
def _collect_fake(tmp_path: Path, think_len=None, parallel: int = 4, **kw):
    settings = CollectSettings(branches=6, interval=16, max_tokens=64, answer_tokens=24, probe_tokens=8, **kw)
    items = [QuestionItem(q["question"], q["gold_answer"]) for q in QUESTIONS]
    backend = FakeBackend(parallel=parallel, think_len=think_len, interval=16)
    result = collect(backend, items, settings, tmp_path, identity={"model_sha256": "fake"})
    return settings, backend, result


def test_collector_segments_probes_and_costs_exactly(tmp_path: Path) -> None:
    settings, backend, result = _collect_fake(tmp_path)
    assert result.store_path == tmp_path / STORE_NAME
    _, records = read_log(tmp_path / LOG_NAME)
    assert len(records) == 18 and not backend._branches  # every branch closed
    for r in records:
        think = FakeBackend(think_len=None)._script(r["seed"]).index("</think>") + 1  # tokens up to </think>
        forced = think > settings.max_tokens
        n = expected_probes(think if not forced else settings.max_tokens + 1, settings.max_tokens, settings.interval)
        assert len(r["probes"]) == n
        # probes at k·Δ answer str(k·Δ) unless k·Δ is a multiple of 3Δ (box never closes)
        assert r["probes"] == [None if k % 3 == 0 else str(16 * k) for k in range(1, n + 1)]
        assert r["forced_think_end"] == forced
        if forced:
            assert r["thinking_tokens"] == settings.max_tokens + 1
            after = FakeBackend()._script(r["seed"])[settings.max_tokens:]  # the script goes on after the forced </think>
            sampled = min(settings.answer_tokens, after.index("<eog>") + 1 if "<eog>" in after else 10**9)
            assert r["tokens"] == settings.max_tokens + 1 + sampled
        else:
            rambles = r["seed"] % 4 == 3
            answer = settings.answer_tokens if rambles else len(FakeBackend.ANSWER_PIECES) + 1  # + end-of-generation
            assert r["tokens"] == think + answer
            assert r["final"] == "42"
            assert r["stop"] == ("answer_cap" if rambles else "eog")
        assert all(len(v) == n + 1 for v in r["signals"].values())
    env = load_environment(result.store_path)
    assert env.metadata["interval"] == 16
    for q in range(env.n_questions):
        question = env.question(q, seed=0)
        expected = 0
        for b in range(env.n_branches(q)):
            probes, tokens, final = env.branch_answers(q, b)
            expected += max(len(probes) * 16, tokens)
            assert probes[-1] == final  # the final answer fills the last probe slot, as in the paper's data
        for _ in range(env.n_branches(q)):
            _, i, done = question.probe_new()
            while not done:
                _, done = question.probe_more(i)
        assert question.get_seq_and_total_tokens()[1] == expected


def test_store_is_independent_of_parallelism_and_resume(tmp_path: Path) -> None:
    _collect_fake(tmp_path / "a", parallel=1)
    _collect_fake(tmp_path / "b", parallel=5)
    a = (tmp_path / "a" / STORE_NAME).read_bytes()
    assert a == (tmp_path / "b" / STORE_NAME).read_bytes()
    # an interrupted run (stopped after its first round) then resumed gives the same store
    settings = CollectSettings(branches=6, interval=16, max_tokens=64, answer_tokens=24, probe_tokens=8)
    items = [QuestionItem(q["question"], q["gold_answer"]) for q in QUESTIONS]
    r1 = collect(FakeBackend(parallel=3), items, settings, tmp_path / "c", identity={"model_sha256": "fake"}, max_seconds=0)
    assert r1.store_path is None
    r2 = collect(FakeBackend(parallel=3), items, settings, tmp_path / "c", identity={"model_sha256": "fake"})
    assert (tmp_path / "c" / STORE_NAME).read_bytes() == a
    assert r2.branches_done == 18


def test_keyboard_interrupt_keeps_finished_branches(tmp_path: Path) -> None:
    class Interrupting(FakeBackend):
        rounds = 0

        def extend(self, requests):  # noqa: ANN001, ANN202
            Interrupting.rounds += 1
            if Interrupting.rounds == 8:
                raise KeyboardInterrupt
            return super().extend(requests)

    settings = CollectSettings(branches=6, interval=16, max_tokens=64, answer_tokens=24, probe_tokens=8)
    items = [QuestionItem(q["question"], q["gold_answer"]) for q in QUESTIONS]
    with pytest.raises(KeyboardInterrupt):
        collect(Interrupting(parallel=4), items, settings, tmp_path, identity={"model_sha256": "fake"})
    _, records = read_log(tmp_path / LOG_NAME)
    assert 0 < len(records) < 18
    collect(FakeBackend(parallel=4), items, settings, tmp_path, identity={"model_sha256": "fake"})
    _, records = read_log(tmp_path / LOG_NAME)
    assert sorted((r["q"], r["b"]) for r in records) == [(q, b) for q in range(3) for b in range(6)]


def test_forced_think_end_tokens_are_counted(tmp_path: Path) -> None:
    settings, _, result = _collect_fake(tmp_path, think_len=lambda seed: 500)
    _, records = read_log(tmp_path / LOG_NAME)
    forced_n = len(FORCED_THINK_END.split("|"))
    for r in records:
        assert r["forced_think_end"] and r["stop"] == "answer_cap"
        assert len(r["probes"]) == (settings.max_tokens - 1) // settings.interval
        assert r["tokens"] == settings.max_tokens + forced_n + settings.answer_tokens


# ----- hygiene ------------------------------------------------------------------------------------------------------------
def test_core_collect_imports_no_ui_and_no_llama_at_import_time() -> None:
    banned = {"click", "textual", "mcp", "anthropic", "rich", "llama_cpp"}
    for path in (REPO / "core" / "collect").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: llama_cpp may be imported inside functions
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in banned, f"{path.name} imports {n} at module level"
