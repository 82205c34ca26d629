"""Shared pieces of the live-solving tests: a scripted backend whose branches disagree, a backend wrapper that counts
calls and generated tokens, and a question proxy that hides the batch calls (a controller in the blocking style)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from collect_helpers import FakeBackend

from core.collect.backend import BranchStateError, Chunk, Extend, ProbeResult
from core.live import BlockingView, live_settings

SCRIPTED = live_settings(interval=16, max_tokens=160, answer_tokens=24, probe_tokens=8)
"""Small settings for the scripted backend: up to 10 probes, every way of ending."""

SPECS = [
    "sc:n=5", "asc:max_samples=8,threshold=0.8", "esc:max_samples=12,window=4",
    "parallel-probe:num_chains=6,T=4,warm_up=2,prune_patience=2", "parallel-probe:num_chains=5,probe_burst=2,T=3",
    "cmc:beta=0", "cmc:beta=0.5", "cmc:beta=1,max_branches=12",
]
"""Every built-in, small enough for a live model on CPU."""


class ScriptedBackend(FakeBackend):
    """FakeBackend (collect_helpers) whose branches think for 5–200 tokens and whose probes and boxed finals vary by
    branch and depth (drawn from a few answers, "12" the most likely; one probe in ten never closes its box)."""

    ANSWERS = ("12", "12", "12", "7", "30", "\\frac{1}{2}", "0.5")

    def __init__(self, parallel: int = 256, interval: int = 16):
        super().__init__(parallel=parallel, think_len=lambda seed: 5 + seed % 196, interval=interval)

    def _script(self, seed: int) -> list[str]:
        final = random.Random(seed).choice(self.ANSWERS)
        pieces = ["x"] * self.think_len(seed) + ["</think>", "The", " answer", " is", " \\boxed{", final, "}", "."]
        return pieces + (["y"] * 10_000 if seed % 4 == 3 else ["<eog>"])

    def probe(self, branches: Sequence[int], text: str, max_tokens: int) -> dict[int, ProbeResult]:
        if len(set(branches)) != len(branches):
            raise ValueError("a branch is named twice")
        out = {}
        for h in branches:
            b = self._branches.get(h)
            if b is None or b["done"]:
                raise BranchStateError(f"branch {h}")
            self.calls.append(("probe", h))
            rng = random.Random(b["seed"] * 1_000_003 + b["at"])
            if rng.random() < 0.1:
                out[h] = ProbeResult("no box", max_tokens, False, np.full(max_tokens, -1.0, np.float32))
            else:
                out[h] = ProbeResult(rng.choice(self.ANSWERS) + "}", 3, True, np.full(3, -0.5, np.float32))
        return out


class Counting:
    """Wraps a backend; counts `extend`/`probe` calls, the branches per call and every generated token."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.extend_calls = 0
        self.probe_calls = 0
        self.chunk_tokens = 0
        self.probe_tokens = 0
        self.widths: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        out = self.inner.extend(requests)
        self.extend_calls += 1
        self.widths.append(len(requests))
        self.chunk_tokens += sum(c.n_tokens for c in out.values())
        return out

    def probe(self, branches: Sequence[int], text: str, max_tokens: int) -> dict[int, ProbeResult]:
        out = self.inner.probe(branches, text, max_tokens)
        self.probe_calls += 1
        self.probe_tokens += sum(r.n_tokens for r in out.values())
        return out


Blocking = BlockingView  # the tests' name for the blocking-style view
