"""`BranchRun`: one branch's state as it is generated Δ tokens at a time, probed, capped and finished.

The collector and `core.live.LiveQuestion` step branches through this one state machine, so a live branch is the
same text, with the same probes and signals, as the collected branch with the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.collect.backend import Chunk, Extend, ProbeResult
from core.collect.protocol import FORCED_THINK_END, CollectSettings, final_answer, probe_answer
from core.collect.signals import interval_signals


@dataclass
class BranchRun:
    """One branch in flight: the per-branch state machine that the collector and live questions both step."""

    q: int
    b: int
    seed: int
    handle: int
    g: int = 0  # tokens generated so far (forced included)
    thinking: bool = True
    think_end_at: int | None = None  # generated tokens up to and including </think>
    answer_left: int = 0
    forced: bool = False
    finished: bool = False
    stop: str = ""
    text: bytearray = field(default_factory=bytearray)
    lps: list[np.ndarray] = field(default_factory=list)
    confs: list[np.ndarray] = field(default_factory=list)
    probes: list[str | None] = field(default_factory=list)
    probe_texts: list[str] = field(default_factory=list)
    probe_lps: list[float] = field(default_factory=list)
    probe_closed: list[bool] = field(default_factory=list)
    answer_lp: float = math.nan

    def request(self, s: CollectSettings) -> Extend:
        if self.thinking:
            if self.g >= s.max_tokens:
                self.thinking, self.forced = False, True
                return Extend(min(s.interval, s.answer_tokens), force_text=FORCED_THINK_END)
            return Extend(min(s.interval, s.max_tokens - self.g), answer_budget=s.answer_tokens)
        return Extend(min(s.interval, self.answer_left))

    def absorb(self, c: Chunk, s: CollectSettings) -> None:
        self.text += c.text
        if c.n_forced:
            self.lps.append(np.full(c.n_forced, np.nan, np.float32))
            self.confs.append(np.full(c.n_forced, np.nan, np.float32))
        self.lps.append(c.logprobs)
        self.confs.append(c.confidences)
        start = self.g
        self.g += c.n_tokens
        if c.n_forced and self.think_end_at is None:  # the forced </think> at the thinking cap
            self.think_end_at = start + c.n_forced
            self.answer_left = s.answer_tokens - c.n_sampled
        elif self.thinking and c.think_end is not None:
            self.thinking = False
            self.think_end_at = start + c.n_forced + c.think_end + 1
            self.answer_left = s.answer_tokens - (c.n_sampled - c.think_end - 1)
        elif not self.thinking:
            self.answer_left -= c.n_sampled
        if c.eog:
            self.finished, self.stop = True, "eog"
        elif not self.thinking and self.answer_left <= 0:
            self.finished, self.stop = True, "answer_cap"

    def needs_probe(self, s: CollectSettings) -> bool:
        return self.thinking and not self.finished and self.g % s.interval == 0 and 0 < self.g < s.max_tokens

    def add_probe(self, r: ProbeResult) -> None:
        self.probes.append(probe_answer(r.text) if r.closed else None)
        self.probe_texts.append(r.text)
        self.probe_lps.append(float(r.logprobs.mean()) if r.n_tokens else math.nan)
        self.probe_closed.append(r.closed)

    def record(self, s: CollectSettings, keep_text: bool) -> dict[str, Any]:
        text = self.text.decode(errors="replace")
        final = final_answer(text)
        lps = np.concatenate(self.lps) if self.lps else np.zeros(0, np.float32)
        confs = np.concatenate(self.confs) if self.confs else np.zeros(0, np.float32)
        n = len(self.probes)
        ends = [(k + 1) * s.interval for k in range(n)] + [self.g]
        if self.think_end_at is not None:
            after = lps[self.think_end_at:]
            after = after[~np.isnan(after)]
            answer_lp = float(after.mean()) if after.size else math.nan
        else:
            answer_lp = math.nan
        signals = interval_signals(lps, confs, ends, [*self.probe_lps, answer_lp], [*self.probe_closed, final is not None])
        cut = text.rfind("</think>")
        rec: dict[str, Any] = {
            "q": self.q, "b": self.b, "seed": self.seed, "tokens": self.g,
            "thinking_tokens": self.think_end_at if self.think_end_at is not None else self.g,
            "stop": self.stop, "forced_think_end": self.forced,
            "probes": self.probes, "final": final,
            "probe_texts": self.probe_texts,
            "answer_text": text[cut + len("</think>"):] if cut >= 0 else "",
            "signals": signals,
        }
        if keep_text:
            rec["text"] = text
        return rec
