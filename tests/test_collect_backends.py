"""The shared contract every generation backend meets (core/collect/backend.py), run on the llama.cpp engine and on
the OpenAI-compatible backend talking to llama-cpp-python's own server on loopback, both with the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from collect_helpers import THREADS, openai_server, questions_file, tiny_model  # noqa: E402,F401 - fixtures

from core.collect.backend import Backend, BranchStateError, CapacityError, Extend  # noqa: E402
from core.collect.protocol import FORCED_THINK_END, PROBE_TEXTS, SamplingParams, chat_prompt  # noqa: E402

PROMPT = chat_prompt("What is 1+1?")


@pytest.fixture(params=["llama", "openai"])
def backend(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[Backend]:  # noqa: F811
    if request.param == "llama":
        from core.collect.engine import LlamaEngine

        b: Backend = LlamaEngine(tiny_model, parallel=4, branch_tokens=512, n_threads=THREADS)
    else:
        from core.collect.openai_backend import OpenAIBackend

        b = OpenAIBackend(request.getfixturevalue("openai_server"), parallel=4)
    yield b
    b.close()


def test_is_a_backend(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.max_branches == 4
    assert backend.info()["backend"] in ("llama.cpp", "openai")


def test_extend_respects_max_tokens_and_reports_per_token_stats(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    bs = [backend.open_branch(p, seed) for seed in (1, 2, 3)]
    chunks = backend.extend({b: Extend(12) for b in bs})
    for c in chunks.values():
        assert 1 <= c.n_sampled <= 12 and c.n_forced == 0
        assert c.n_sampled == 12 or c.eog
        assert c.logprobs.shape == c.confidences.shape == (c.n_sampled,)
        finite = c.logprobs[np.isfinite(c.logprobs)]
        assert finite.size and (finite <= 0).all()


def test_same_seed_same_tokens_other_seed_differs(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    a, b, c = (backend.open_branch(p, s) for s in (7, 7, 8))
    out = backend.extend({a: Extend(20), b: Extend(20), c: Extend(20)})
    assert out[a].text == out[b].text
    assert out[a].text != out[c].text


def test_probe_leaves_the_branch_exactly_as_it_was(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    probed, twin = backend.open_branch(p, 11), backend.open_branch(p, 11)
    backend.extend({probed: Extend(10), twin: Extend(10)})
    res = backend.probe([probed], PROBE_TEXTS["boxed"], 8)[probed]
    assert 1 <= res.n_tokens <= 8 and isinstance(res.closed, bool)
    assert res.logprobs.shape == (res.n_tokens,)
    after = backend.extend({probed: Extend(15), twin: Extend(15)})
    assert after[probed].text == after[twin].text
    if backend.info()["backend"] == "llama.cpp":  # in-process on CPU: bit for bit
        assert after[probed].logprobs.tobytes() == after[twin].logprobs.tobytes()


def test_forced_text_is_appended_and_counted(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    b = backend.open_branch(p, 5)
    c = backend.extend({b: Extend(4, force_text=FORCED_THINK_END)})[b]
    assert c.n_forced >= 3 and c.text.startswith(FORCED_THINK_END.encode())


def test_greedy_sampling_is_reproducible(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    greedy = SamplingParams(temperature=0.0)
    a, b = backend.open_branch(p, 1, greedy), backend.open_branch(p, 2, greedy)
    out = backend.extend({a: Extend(10), b: Extend(10)})
    assert out[a].text == out[b].text  # seeds do not matter when greedy


def test_state_errors(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    with pytest.raises(BranchStateError):
        backend.extend({12345: Extend(3)})
    with pytest.raises(BranchStateError):
        backend.probe([12345], PROBE_TEXTS["boxed"], 4)
    with pytest.raises(BranchStateError):
        backend.close_branch(12345)
    with pytest.raises(BranchStateError):
        backend.open_branch(999, 1)
    bs = [backend.open_branch(p, s) for s in range(4)]
    with pytest.raises(CapacityError):
        backend.open_branch(p, 99)
    with pytest.raises(BranchStateError):
        backend.release_prompt(p)
    for b in bs:
        backend.close_branch(b)
    backend.release_prompt(p)
    with pytest.raises(BranchStateError):
        backend.release_prompt(p)


def test_a_finished_branch_cannot_be_extended(backend: Backend) -> None:
    p = backend.add_prompt(PROMPT)
    for seed in range(40):
        b = backend.open_branch(p, seed)
        for _ in range(8):
            c = backend.extend({b: Extend(32)})[b]
            if c.eog:
                with pytest.raises(BranchStateError):
                    backend.extend({b: Extend(1)})
                with pytest.raises(BranchStateError):
                    backend.probe([b], PROBE_TEXTS["boxed"], 4)
                backend.close_branch(b)
                return
        backend.close_branch(b)
    pytest.skip("no branch of the tiny model ended on its own")


# ----- llama.cpp engine only -----------------------------------------------------------------------------------------
def test_llama_branch_does_not_depend_on_its_batch_neighbours(tiny_model: Path) -> None:  # noqa: F811
    """With one KV stream per branch a branch's numbers are the same alone or among others (CPU, bit for bit)."""
    from core.collect.engine import LlamaEngine

    def run(n_others: int, parallel: int) -> tuple[bytes, bytes]:
        with LlamaEngine(tiny_model, parallel=parallel, branch_tokens=400, n_threads=THREADS) as eng:
            p = eng.add_prompt(PROMPT)
            others = [eng.open_branch(p, 100 + i) for i in range(n_others // 2)]
            target = eng.open_branch(p, 42)
            others += [eng.open_branch(p, 200 + i) for i in range(n_others - n_others // 2)]
            eng.extend({o: Extend(7) for o in others[:2]})  # neighbours at other lengths
            chunks = eng.extend({target: Extend(40), **{o: Extend(40) for o in others}})
            probe = eng.probe([target, *others[:1]], PROBE_TEXTS["boxed"], 6)[target]
            after = eng.extend({target: Extend(10)})
            return chunks[target].logprobs.tobytes() + after[target].logprobs.tobytes(), probe.logprobs.tobytes()

    base = run(0, 1)
    for n_others, parallel in ((1, 2), (5, 8), (9, 16)):
        assert run(n_others, parallel) == base


def test_llama_unified_kv_layout_works(tiny_model: Path) -> None:  # noqa: F811
    from core.collect.engine import LlamaEngine

    with LlamaEngine(tiny_model, parallel=3, branch_tokens=300, kv_unified=True, max_prompts=2, n_threads=THREADS) as eng:
        p, q = eng.add_prompt(PROMPT), eng.add_prompt(chat_prompt("Another question"))
        bs = [eng.open_branch(p, 1), eng.open_branch(q, 2), eng.open_branch(p, 1)]
        out = eng.extend({b: Extend(10) for b in bs})
        assert out[bs[0]].text == out[bs[2]].text
        eng.probe(bs, PROBE_TEXTS["boxed"], 4)
        with pytest.raises(CapacityError):
            eng.add_prompt("third")


def test_llama_kv_budget_limits_parallelism(tiny_model: Path) -> None:  # noqa: F811
    from core.collect.engine import LlamaEngine

    with LlamaEngine(tiny_model, parallel=64, branch_tokens=1000, prompt_tokens=24, kv_budget_gb=2.7e-3) as eng:
        assert eng.max_branches == 10  # 256 bytes per token × 1024 tokens per branch
    with pytest.raises(CapacityError, match="KV budget"):
        LlamaEngine(tiny_model, parallel=4, branch_tokens=1000, kv_budget_gb=1e-6)


def test_tiny_model_has_qwen_special_tokens(tiny_model: Path) -> None:  # noqa: F811
    from core.collect.engine import LlamaEngine

    with LlamaEngine(tiny_model, parallel=1, branch_tokens=64, n_threads=THREADS) as eng:
        for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
            assert eng.count_tokens(special) == 1
        assert eng.think_end_id is not None
        assert eng.piece(eng.think_end_id) == b"</think>"
        assert eng.info()["model_params"] > 0
