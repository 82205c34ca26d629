"""The probe protocol (collection-protocol.md §2–3): Qwen3 chat template, probe texts, answer extraction, settings.

A branch is sampled in Qwen3's thinking mode. Every Δ generated tokens while it is still thinking, a probe
appends `PROBE_TEXTS[style]` (close the thinking, open `\\boxed{`), decodes greedily until the box closes, and
is then rolled back. When `</think>` is sampled the probing stops and the final answer (the last `\\boxed{…}` of
the text after `</think>`) fills the last probe slot. A branch still thinking after `max_tokens` tokens gets
`FORCED_THINK_END` appended and at most `answer_tokens` more.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""Qwen's recommended math instruction, appended to the question on its own line."""

BRANCHES_PER_QUESTION = 128
"""Branches per question, as in the paper's replay data: what a collection samples and a live question offers
by default. (A controller's own ceiling on branches it opens is a different, smaller number.)"""

PROBE_TEXTS: dict[str, str] = {
    # Close the thinking and ask for the boxed answer (collection-protocol.md §2, rule 2).
    "boxed": "\n</think>\n\n**Final Answer**\n\\[ \\boxed{",
    # Dynasor's suffix (hao-ai-lab/Dynasor): stays inside the thinking.
    "dynasor": "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{",
}
THINK_END = "</think>"
FORCED_THINK_END = "\n</think>\n\n"
"""Appended to a branch that is still thinking at the thinking cap."""
NO_ANSWER = "ERR"
"""The answer string for a probe whose box never closes or a branch with no `\\boxed{}` (as in the paper's data)."""


def chat_prompt(question: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """Qwen3's chat template for one user turn with thinking enabled (the model opens `<think>` itself)."""
    user = question if not instruction else f"{question}\n{instruction}"
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def box_close(text: str, depth: int = 1) -> int | None:
    """Index of the `}` that closes a box opened before `text` (brace depth `depth` at its start), or None."""
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def probe_answer(continuation: str) -> str | None:
    """The answer a probe gave: the text before the brace closing `\\boxed{`, stripped; None if it never closes."""
    end = box_close(continuation)
    return None if end is None else continuation[:end].strip()


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{…}` (or `\\fbox{…}`) in `text`, brace-balanced; None if there is none."""
    best: str | None = None
    best_at = -1
    for marker in ("\\boxed{", "\\fbox{"):
        start = 0
        while True:
            i = text.find(marker, start)
            if i < 0:
                break
            body = text[i + len(marker):]
            end = box_close(body)
            if end is not None and i > best_at:
                best, best_at = body[:end].strip(), i
            start = i + 1
    return best


def final_answer(text: str) -> str | None:
    """The final answer of a finished branch: the last box after `</think>` (or anywhere, if it never closed)."""
    cut = text.rfind(THINK_END)
    return last_boxed(text[cut + len(THINK_END):] if cut >= 0 else text)


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings of a branch. Applied in vLLM/HF order: temperature, then top-k, top-p, min-p."""

    temperature: float = 0.7
    """0.7 as in the paper's data (Qwen's card says 0.6 for thinking mode); 0 means greedy."""
    top_p: float = 0.95
    """Nucleus: keep the smallest set of top tokens whose probability reaches top_p (Qwen3 card)."""
    top_k: int = 20
    """Keep the k most likely tokens (Qwen3 card); at most 256."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p × the top token's (Qwen3 card: 0)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.top_k <= 256:
            raise ValueError(f"top_k must be in 1..256, got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")


@dataclass(frozen=True)
class CollectSettings:
    """Everything that determines what a collection records. Stored in the log header and the store's metadata;
    a resumed collection must use the same settings (parallelism and hardware may change)."""

    branches: int = BRANCHES_PER_QUESTION
    """Branches sampled per question."""
    interval: int = 500
    """Probe interval Δ in generated tokens."""
    max_tokens: int = 40_000
    """Thinking cap: a branch still thinking after this many tokens gets `</think>` forced (80·Δ in the paper)."""
    answer_tokens: int = 1_500
    """At most this many tokens after `</think>` (sampled or forced)."""
    probe_tokens: int = 48
    """Greedy tokens a probe may decode before its box must close (else the probe answer is "ERR")."""
    probe_style: str = "boxed"
    """Key of PROBE_TEXTS."""
    instruction: str = DEFAULT_INSTRUCTION
    """Appended to each question on its own line ("" for none)."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    """Base seed; branch b of question q samples with `branch_seed(seed, q, b, question)`."""

    def __post_init__(self) -> None:
        if self.branches < 1:
            raise ValueError("branches must be >= 1")
        if self.interval < 1:
            raise ValueError("interval must be >= 1")
        if self.max_tokens < 1 or self.answer_tokens < 1 or self.probe_tokens < 1:
            raise ValueError("max_tokens, answer_tokens and probe_tokens must be >= 1")
        if self.probe_style not in PROBE_TEXTS:
            raise ValueError(f"probe_style {self.probe_style!r}: use one of {sorted(PROBE_TEXTS)}")

    @property
    def probe_text(self) -> str:
        return PROBE_TEXTS[self.probe_style]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_text"] = self.probe_text
        d["forced_think_end"] = FORCED_THINK_END
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollectSettings:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["sampling"] = SamplingParams(**known.get("sampling", {}))
        return cls(**known)

    def branch_budget(self) -> int:
        """Most tokens one branch can generate, forced tokens and a probe included (for KV sizing); the forced
        and probe texts are counted generously at one token per byte."""
        return self.max_tokens + len(FORCED_THINK_END.encode()) + self.answer_tokens + len(self.probe_text.encode()) + self.probe_tokens + 2


def branch_seed(seed: int, question_index: int, branch_index: int, question: str = "") -> int:
    """A 31-bit seed for one branch, derived from (seed, question index, question text, branch index)."""
    h = hashlib.blake2b(f"{seed}\x00{question_index}\x00{branch_index}\x00{question}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFF
