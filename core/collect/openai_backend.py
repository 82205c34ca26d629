"""The OpenAI-compatible backend: branches grown through `/v1/completions` on vLLM, SGLang or llama-server.

For users who outgrow one machine. A branch is its text: every `extend` sends prompt + branch text (+ forced
text) with `max_tokens`, the sampler settings, a per-chunk seed and `logprobs=20`, for all branches concurrently
(the server batches them; its prefix cache makes resending the prefix cheap). A probe sends prefix + probe text
at temperature 0. There is no cache surgery over HTTP, so probing trivially leaves the branch unchanged.

Differences from the llama.cpp engine, recorded in the store's metadata: the server re-tokenises the text on
every call, per-chunk seeds change the random stream (not the distribution), the confidence is averaged over the
top-k entries the server returns (llama-cpp-python's server merges tokens with the same text), and an
end-of-generation token is counted as one token without a log-probability.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.collect.backend import BackendError, BranchStateError, CapacityError, Chunk, Extend, ProbeResult
from core.collect.protocol import THINK_END, SamplingParams, box_close
from core.collect.sampling import CONF_TOP_K


@dataclass
class _Branch:
    prompt: int
    seed: int
    sampling: SamplingParams
    text: str = ""
    chunks: int = 0
    finished: bool = False


@dataclass
class _Resp:
    text: str
    tokens: list[str]
    offsets: list[int]
    logprobs: list[float]
    confs: list[float]
    finish: str
    extra: dict[str, Any] = field(default_factory=dict)


class OpenAIBackend:
    """Branches through an OpenAI-compatible `/v1/completions` server. Implements `core.collect.backend.Backend`."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        parallel: int = 64,
        api_key: str | None = None,
        sampling: SamplingParams | None = None,
        conf_k: int = CONF_TOP_K,
        timeout: float = 600.0,
        retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.sampling = sampling or SamplingParams()
        self.conf_k = conf_k
        self.timeout = timeout
        self.retries = retries
        self.max_branches = parallel
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="autotts-openai")
        self._prompts: dict[int, str] = {}
        self._prompt_refs: dict[int, int] = {}
        self._branches: dict[int, _Branch] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.model = model or self._first_model()

    # ----- HTTP ---------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode(errors="replace")
                if e.code < 500 and e.code != 429:
                    raise BackendError(f"{self.base_url}{path}: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = str(getattr(e, "reason", e))
            if attempt < self.retries:
                time.sleep(min(8.0, 0.5 * 2**attempt))
        raise BackendError(f"{self.base_url}{path}: no answer after {self.retries + 1} tries ({last}); is the server running?")

    def _first_model(self) -> str:
        doc = self._request("GET", "/v1/models")
        try:
            return str(doc["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url}/v1/models lists no model; pass --openai-model") from None

    def _complete(self, prompt: str, max_tokens: int, sampling: SamplingParams | None, seed: int | None,
                  logprobs: int) -> _Resp:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "logprobs": logprobs}
        if sampling is None or sampling.temperature == 0:
            body.update(temperature=0.0, top_k=1)
        else:
            body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p)
        if seed is not None:
            body["seed"] = seed
        doc = self._request("POST", "/v1/completions", body)
        try:
            choice = doc["choices"][0]
            text = choice.get("text") or ""
            lp = choice.get("logprobs") or {}
            finish = choice.get("finish_reason") or "length"
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url}/v1/completions: unexpected answer {str(doc)[:300]}") from None
        tokens = list(lp.get("tokens") or [])
        offsets = [int(o) for o in (lp.get("text_offset") or [])]
        token_lps = [math.nan if v is None else float(v) for v in (lp.get("token_logprobs") or [])]
        confs = []
        for top in lp.get("top_logprobs") or []:
            vals = sorted((float(v) for v in (top or {}).values()), reverse=True)[: self.conf_k]
            confs.append(-sum(vals) / len(vals) if vals else math.nan)
        if offsets and len(offsets) == len(tokens):
            # llama-cpp-python counts offsets from the prompt's start, vLLM from the completion's: make them relative
            base = len(prompt) if 0 < len(prompt) <= offsets[0] else 0
            offsets = [o - base for o in offsets]
        else:
            offsets = []
        if len(tokens) > max_tokens:  # some servers return one token too many
            cut = offsets[max_tokens] if offsets else len("".join(tokens[:max_tokens]))
            text, tokens, offsets = text[:cut], tokens[:max_tokens], offsets[:max_tokens]
            token_lps, confs, finish = token_lps[:max_tokens], confs[:max_tokens], "length"
        return _Resp(text, tokens, offsets, token_lps[: len(tokens)], confs[: len(tokens)], finish)

    # ----- Backend --------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": self.base_url, "model": self.model, "parallel": self.max_branches}

    def count_tokens(self, text: str) -> int:
        for path, body, key in (("/tokenize", {"model": self.model, "prompt": text}, "count"),
                                ("/extras/tokenize", {"input": text}, "tokens")):
            try:
                doc = self._request("POST", path, body)
            except BackendError:
                continue
            v = doc.get(key) if isinstance(doc, dict) else None
            if v is not None:
                return int(v) if key == "count" else len(v)
        raise BackendError(f"{self.base_url} offers no tokenize endpoint (/tokenize or /extras/tokenize)")

    def add_prompt(self, text: str) -> int:
        with self._lock:
            pid = self._next
            self._next += 1
            self._prompts[pid] = text
            self._prompt_refs[pid] = 0
        return pid

    def release_prompt(self, prompt: int) -> None:
        if prompt not in self._prompts:
            raise BranchStateError(f"prompt {prompt} is not registered")
        if self._prompt_refs[prompt]:
            raise BranchStateError(f"prompt {prompt} still has {self._prompt_refs[prompt]} open branches")
        del self._prompts[prompt], self._prompt_refs[prompt]

    def open_branch(self, prompt: int, seed: int, sampling: SamplingParams | None = None) -> int:
        if prompt not in self._prompts:
            raise BranchStateError(f"prompt {prompt} is not registered")
        if len(self._branches) >= self.max_branches:
            raise CapacityError(f"all {self.max_branches} branch slots are in use; close a branch first")
        with self._lock:
            bid = self._next
            self._next += 1
        self._branches[bid] = _Branch(prompt, seed, sampling or self.sampling)
        self._prompt_refs[prompt] += 1
        return bid

    def close_branch(self, branch: int) -> None:
        br = self._branches.pop(branch, None)
        if br is None:
            raise BranchStateError(f"branch {branch} is not open")
        self._prompt_refs[br.prompt] -= 1

    def _get(self, branch: int) -> _Branch:
        br = self._branches.get(branch)
        if br is None:
            raise BranchStateError(f"branch {branch} is not open")
        if br.finished:
            raise BranchStateError(f"branch {branch} already finished (it sampled an end-of-generation token)")
        return br

    @staticmethod
    def _chunk_seed(seed: int, k: int) -> int:
        h = hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=4).digest()
        return int.from_bytes(h, "little") & 0x7FFFFFFF

    def _extend_one(self, br: _Branch, req: Extend) -> Chunk:
        prefix = self._prompts[br.prompt] + br.text + req.force_text
        r = self._complete(prefix, req.max_tokens, br.sampling, self._chunk_seed(br.seed, br.chunks), self.conf_k)
        n = len(r.tokens) if r.tokens else (0 if not r.text else 1)
        text, lps, confs = r.text, list(r.logprobs), list(r.confs)
        think_end = next((i for i, t in enumerate(r.tokens) if t.strip() == THINK_END), None)
        if think_end is None and THINK_END in text and r.offsets:
            at = text.index(THINK_END)
            think_end = max(i for i, o in enumerate(r.offsets) if o <= at)
        eog = r.finish == "stop"
        if think_end is not None and req.answer_budget is not None and n - think_end - 1 > req.answer_budget:
            keep = think_end + 1 + req.answer_budget
            cut = r.offsets[keep] if r.offsets else len("".join(r.tokens[:keep]))
            text, n, lps, confs, eog = text[:cut], keep, lps[:keep], confs[:keep], False
        if eog:  # the end-of-generation token itself: counted, no log-probability
            n += 1
            lps.append(math.nan)
            confs.append(math.nan)
        lps += [math.nan] * (n - len(lps))
        confs += [math.nan] * (n - len(confs))
        forced_n = 0
        if req.force_text:
            forced_n = self._count_forced(req.force_text)
        br.text += req.force_text + text
        br.chunks += 1
        br.finished = eog
        return Chunk(text=(req.force_text + text).encode(), n_forced=forced_n, n_sampled=n,
                     logprobs=np.asarray(lps, np.float32), confidences=np.asarray(confs, np.float32),
                     think_end=think_end, eog=eog)

    def _count_forced(self, text: str) -> int:
        cached = getattr(self, "_forced_counts", {})
        if text not in cached:
            try:
                cached[text] = self.count_tokens(text)
            except BackendError:
                cached[text] = max(1, len(text.encode()) // 3)
            self._forced_counts = cached
        return cached[text]

    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        brs = {bid: self._get(bid) for bid in requests}
        for bid, req in requests.items():
            if req.max_tokens < 1:
                raise ValueError(f"branch {bid}: max_tokens must be >= 1")
        futures = {bid: self._pool.submit(self._extend_one, brs[bid], req) for bid, req in requests.items()}
        return {bid: f.result() for bid, f in futures.items()}

    def _probe_one(self, br: _Branch, text: str, max_tokens: int) -> ProbeResult:
        r = self._complete(self._prompts[br.prompt] + br.text + text, max_tokens, None, None, 1)
        end = box_close(r.text)
        n = len(r.tokens)
        out = r.text
        if end is not None:
            out = r.text[: end + 1]
            if r.offsets:
                n = sum(1 for o in r.offsets if o <= end)
        return ProbeResult(text=out, n_tokens=n, closed=end is not None, logprobs=np.asarray(r.logprobs[:n], np.float32))

    def probe(self, branches: Sequence[int], text: str, max_tokens: int) -> dict[int, ProbeResult]:
        if len(set(branches)) != len(branches):
            raise ValueError("a branch is named twice")
        brs = {bid: self._get(bid) for bid in branches}
        futures = {bid: self._pool.submit(self._probe_one, br, text, max_tokens) for bid, br in brs.items()}
        return {bid: f.result() for bid, f in futures.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._branches.clear()
        self._prompts.clear()
