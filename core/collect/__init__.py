"""`autotts collect`: build replay environments by sampling a local (or served) Qwen3 model with periodic probes.

Modules: `protocol` (template, probe texts, settings), `backend` (the interface and errors), `engine` (llama.cpp,
batched, in-process), `openai_backend` (an OpenAI-compatible server), `sampling` and `signals` (token
statistics), `normalise` (answers → canonical strings), `questions` (question files), `branch` (one branch's state
machine), `writer` (durable log, resume, store), `collector` (the loop), `tiny_model` (random-weight Qwen3 GGUFs
for tests and benchmarks). llama_cpp, gguf, math_verify and httpx2 (the `collect` extra) are imported only when
used.
"""

from core.collect.backend import (
    Backend,
    BackendError,
    BranchStateError,
    CapacityError,
    Chunk,
    CollectError,
    Extend,
    ProbeResult,
)
from core.collect.collector import CollectResult, collect
from core.collect.protocol import CollectSettings, SamplingParams, branch_seed, chat_prompt
from core.collect.questions import QuestionItem, load_questions

__all__ = [
    "Backend",
    "BackendError",
    "BranchStateError",
    "CapacityError",
    "Chunk",
    "CollectError",
    "CollectResult",
    "CollectSettings",
    "Extend",
    "ProbeResult",
    "QuestionItem",
    "SamplingParams",
    "branch_seed",
    "chat_prompt",
    "collect",
    "load_questions",
]
