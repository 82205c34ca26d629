"""The interface every generation backend offers (llama.cpp in-process, OpenAI-compatible server), and its errors.

A backend holds *prompts* (shared prefixes, e.g. one chat-templated question) and *branches* (one sampled
continuation of a prompt each). The collector, and later the live `solve` loop, drive it step by step:

    p = backend.add_prompt(chat_prompt(question))
    b = backend.open_branch(p, seed=1234)
    chunks = backend.extend({b: Extend(500)})            # many branches advance together in one batch
    probes = backend.probe([b], PROBE_TEXTS["boxed"], 48) # ask for the current answer; the branch is unchanged
    backend.close_branch(b); backend.release_prompt(p)

The shared test suite (tests/test_collect_backends.py) checks these contracts on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from core.collect.protocol import SamplingParams
from core.errors import AutoTTSError


class CollectError(AutoTTSError):
    """A collection cannot proceed (bad input file, settings that differ from the run being resumed, …)."""


class BackendError(CollectError):
    """The model backend failed: the model could not be loaded, a decode failed, the server answered an error."""


class CapacityError(BackendError):
    """No room for another branch or prompt: close one first (or raise --parallel / the KV budget)."""


class BranchStateError(CollectError):
    """A call named a branch or prompt that is not open, or a branch that already finished."""


R = TypeVar("R")


class _BranchRecord(Protocol):
    finished: bool


B = TypeVar("B", bound=_BranchRecord)


def registered_prompt(prompts: Mapping[int, R], prompt: int) -> R:
    """A backend's record of `prompt`, or the contract's error for a prompt that was never added or was released."""
    record = prompts.get(prompt)
    if record is None:
        raise BranchStateError(f"prompt {prompt} is not registered")
    return record


def check_releasable(prompt: int, open_branches: int) -> None:
    """`release_prompt` is refused while branches of the prompt are open."""
    if open_branches:
        raise BranchStateError(f"prompt {prompt} still has {open_branches} open branches")


def open_branch_record(branches: MutableMapping[int, R], branch: int, *, pop: bool = False) -> R:
    """A backend's record of the open `branch` (removed from `branches` with `pop=True`, for `close_branch`)."""
    record = branches.pop(branch, None) if pop else branches.get(branch)
    if record is None:
        raise BranchStateError(f"branch {branch} is not open")
    return record


def unfinished_branch(branches: Mapping[int, B], branch: int) -> B:
    """The open `branch`, refused once it has sampled an end-of-generation token (it cannot be extended or probed)."""
    record = branches.get(branch)
    if record is None:
        raise BranchStateError(f"branch {branch} is not open")
    if record.finished:
        raise BranchStateError(f"branch {branch} already finished (it sampled an end-of-generation token)")
    return record


@dataclass(frozen=True)
class Extend:
    """One branch's share of an `extend` call."""

    max_tokens: int
    """Sample at most this many tokens in this call (> 0)."""
    force_text: str = ""
    """Text appended to the branch before sampling (e.g. a forced `</think>`); its tokens count as generated."""
    answer_budget: int | None = None
    """If `</think>` is sampled in this call, stop after at most this many further tokens."""


@dataclass
class Chunk:
    """What one branch generated in one `extend` call: forced tokens first, then sampled ones."""

    text: bytes
    """UTF-8 bytes of the forced and sampled tokens (a multi-byte character may be split across chunks)."""
    n_forced: int
    """Tokens that came from `force_text`."""
    n_sampled: int
    """Tokens sampled (the end-of-generation token, if any, included)."""
    logprobs: np.ndarray
    """float32[n_sampled]: log-probability of each sampled token under the raw (pre-temperature) logits."""
    confidences: np.ndarray
    """float32[n_sampled]: DeepConf token confidence (minus the mean of the top-20 log-probabilities)."""
    think_end: int | None = None
    """Index among the sampled tokens of a sampled `</think>`, if one was sampled in this chunk."""
    eog: bool = False
    """The branch sampled an end-of-generation token and is finished; `extend` on it raises from now on."""

    @property
    def n_tokens(self) -> int:
        return self.n_forced + self.n_sampled


@dataclass
class ProbeResult:
    """A probe's greedy continuation. The branch it probed is left exactly as it was."""

    text: str
    """The decoded continuation after the probe text (up to and including the closing brace, if any)."""
    n_tokens: int
    """Greedy tokens decoded."""
    closed: bool
    """The box opened by the probe text closed within the token limit."""
    logprobs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """float32[n_tokens]: raw log-probabilities of the greedy tokens."""


@runtime_checkable
class Backend(Protocol):
    """A model that grows many branches from shared prompts and can probe them without changing them."""

    max_branches: int
    """How many branches may be open at once."""

    def info(self) -> dict[str, Any]:
        """Metadata for the store: model identity, library versions, context sizes. Never raises."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens `text` encodes to (special tokens parsed). Raises BackendError on failure."""
        ...

    def add_prompt(self, text: str) -> int:
        """Register a shared prefix; returns a prompt handle.

        Raises CapacityError when no more prompts can be held (release one), BackendError if it cannot be
        tokenised or decoded, or does not fit the context."""
        ...

    def release_prompt(self, prompt: int) -> None:
        """Forget a prompt. Raises BranchStateError if it is unknown or branches opened from it are still open."""
        ...

    def open_branch(self, prompt: int, seed: int, sampling: SamplingParams | None = None) -> int:
        """Open a branch continuing `prompt`, sampling with its own generator seeded by `seed`; returns its handle.

        Nothing is generated yet. Raises CapacityError when `max_branches` branches are open, BranchStateError
        for an unknown prompt."""
        ...

    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        """Advance every named branch together (one batch per step) until each has sampled its `max_tokens`,
        sampled an end-of-generation token, or used its `answer_budget` after `</think>`; returns one Chunk per
        branch. Same seed and same calls give the same tokens.

        Raises BranchStateError for an unknown or finished branch (nothing is generated then), BackendError if
        decoding fails (the branches named are then in an undefined state: close them)."""
        ...

    def probe(self, branches: Sequence[int], text: str, max_tokens: int) -> dict[int, ProbeResult]:
        """For each branch, append `text` (which ends by opening a box, e.g. `\\boxed{`), decode greedily until
        the box closes, an end-of-generation token, or `max_tokens`, then roll all of it back: a later `extend`
        produces exactly what it would have without the probe.

        Raises BranchStateError for an unknown or finished branch, BackendError if decoding fails."""
        ...

    def close_branch(self, branch: int) -> None:
        """Drop a branch and free its cache. Raises BranchStateError if it is not open."""
        ...

    def close(self) -> None:
        """Release the model and all state. Idempotent; never raises."""
        ...
