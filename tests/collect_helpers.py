"""Shared pieces of the `autotts collect` tests: a tiny GGUF model, a question file, a local OpenAI-compatible server
(llama-cpp-python's own), and a scripted fake backend for exact checks of the collector's bookkeeping."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from core.collect.backend import BranchStateError, CapacityError, Chunk, Extend, ProbeResult
from core.collect.protocol import SamplingParams

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    {"question": "What is 1+1?", "gold_answer": "2"},
    {"question": "Compute 3*7.", "gold_answer": "21"},
    {"question": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "gold_answer": "\\frac{3}{4}"},
]
# Small settings for the tiny model: branches end in every way within the caps (see tiny_model.DEFAULT_FAVOUR).
SMALL = {"interval": 16, "max_tokens": 64, "answer_tokens": 24, "probe_tokens": 8}
THREADS = 1  # one llama.cpp thread: the tiny model gains nothing from more, and shared CI machines spin less


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    from core.collect.tiny_model import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("model") / "tiny-qwen3.gguf")


@pytest.fixture(scope="session")
def questions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("questions") / "toy.jsonl"
    p.write_bytes(b"".join(orjson.dumps(q) + b"\n" for q in QUESTIONS))
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port: (process, URL), once it answers."""
    port = free_port()
    # the server logs a few lines per request: to a file, never to a pipe nobody reads (a full pipe blocks the
    # server mid-answer, which looks exactly like a hung request)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "1"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                log.close()  # the child keeps its own handle
                return proc, url
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError("llama_cpp.server exited: " + log.read().decode(errors="replace")[-2000:]) from None
            if time.monotonic() > deadline:
                stop_server(proc)
                raise RuntimeError(f"llama_cpp.server did not start within {timeout:.0f} s") from None
            time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _need_server_packages() -> None:
    for mod in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(mod)


@pytest.fixture(scope="session")
def openai_server(tiny_model: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback, serving the tiny model."""
    _need_server_packages()
    proc, url = start_server(tiny_model)
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def second_openai_server(tiny_model: Path) -> Iterator[str]:
    """A second server of the same tiny model on another loopback port."""
    _need_server_packages()
    proc, url = start_server(tiny_model)
    try:
        yield url
    finally:
        stop_server(proc)


def cli_command(*args: str) -> list[str]:
    """`autotts collect ...` (or any subcommand) in a subprocess."""
    return [sys.executable, "-m", "autotts", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----- a scripted backend ------------------------------------------------------------------------------------------
class FakeBackend:
    """A deterministic stand-in for a model: branch `seed` thinks for `think_len(seed)` tokens ("x"), samples
    `</think>`, writes `ANSWER_PIECES` and then ends (end-of-generation) unless `seed % 4 == 3`, in which case it
    rambles ("y") until the answer cap. A probe after g tokens answers `str(g)` and closes its box, except when
    g is a multiple of 3·interval (then it never closes). Token log-probs are −0.01·(index mod 50)."""

    ANSWER_PIECES = ["The", " answer", " is", " \\boxed{", "4", "2", "}", "."]

    def __init__(self, parallel: int = 4, think_len: Any = None, interval: int = 16):
        self.max_branches = parallel
        self.think_len = think_len or (lambda seed: 5 + seed % 97)
        self.interval = interval
        self._prompts: dict[int, str] = {}
        self._branches: dict[int, dict[str, Any]] = {}
        self._next = 0
        self.calls: list[tuple[str, int]] = []

    def info(self) -> dict[str, Any]:
        return {"backend": "fake"}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def add_prompt(self, text: str) -> int:
        self._next += 1
        self._prompts[self._next] = text
        return self._next

    def release_prompt(self, prompt: int) -> None:
        if any(b["prompt"] == prompt for b in self._branches.values()):
            raise BranchStateError("prompt has open branches")
        del self._prompts[prompt]

    def open_branch(self, prompt: int, seed: int, sampling: SamplingParams | None = None) -> int:
        if len(self._branches) >= self.max_branches:
            raise CapacityError("full")
        self._next += 1
        self._branches[self._next] = {"prompt": prompt, "seed": seed, "pieces": self._script(seed), "at": 0, "done": False}
        return self._next

    def _script(self, seed: int) -> list[str]:
        pieces = ["x"] * self.think_len(seed) + ["</think>"] + self.ANSWER_PIECES
        return pieces + (["y"] * 10_000 if seed % 4 == 3 else ["<eog>"])

    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        out = {}
        for h, req in requests.items():
            b = self._branches.get(h)
            if b is None or b["done"]:
                raise BranchStateError(f"branch {h}")
            self.calls.append(("extend", h))
            forced = req.force_text.split("|") if req.force_text else []
            text = req.force_text
            n, think_end, left, eog = 0, None, None, False
            while n < req.max_tokens:
                piece = b["pieces"][b["at"]]
                b["at"] += 1
                n += 1
                if piece == "<eog>":
                    eog = b["done"] = True
                    break
                text += piece
                if left is not None:
                    left -= 1
                    if left <= 0:
                        break
                elif piece == "</think>" and think_end is None:
                    think_end = n - 1
                    if req.answer_budget is not None:
                        left = req.answer_budget
                        if left <= 0:
                            break
            idx = np.arange(n)
            out[h] = Chunk(text=text.encode(), n_forced=len(forced), n_sampled=n,
                           logprobs=(-0.01 * (idx % 50)).astype(np.float32), confidences=np.full(n, 2.0, np.float32),
                           think_end=think_end, eog=eog)
        return out

    def probe(self, branches: Sequence[int], text: str, max_tokens: int) -> dict[int, ProbeResult]:
        out = {}
        for h in branches:
            b = self._branches.get(h)
            if b is None or b["done"]:
                raise BranchStateError(f"branch {h}")
            self.calls.append(("probe", h))
            g = b["at"]
            if g % (3 * self.interval) == 0:
                out[h] = ProbeResult(text="no box here", n_tokens=max_tokens, closed=False,
                                     logprobs=np.full(max_tokens, -1.0, np.float32))
            else:
                out[h] = ProbeResult(text=f"{g}}}", n_tokens=2, closed=True, logprobs=np.array([-0.5, -0.25], np.float32))
        return out

    def close_branch(self, branch: int) -> None:
        if self._branches.pop(branch, None) is None:
            raise BranchStateError(f"branch {branch}")

    def close(self) -> None:
        self._branches.clear()


def expected_probes(thinking_tokens: int, max_tokens: int, interval: int) -> int:
    """Probes a branch gets: one at every multiple of Δ strictly before the token that ended its thinking."""
    return (min(thinking_tokens, max_tokens) - 1) // interval


def step_costs(env: Any, q: int) -> list[int]:
    """Total cost of stepping each branch of question q to its end through the replay environment."""
    out = []
    for b in range(env.n_branches(q)):
        g = int(env.branch_offsets[q]) + b
        n = int(env.probe_offsets[g + 1] - env.probe_offsets[g])
        t = int(env.branch_tokens[g])
        out.append(n * int(env.interval[q]) + max(0, t - n * int(env.interval[q])))
    return out


def isfinite_all(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)
