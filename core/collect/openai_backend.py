"""The OpenAI-compatible backend: branches grown through `/v1/completions` on vLLM, SGLang, llama-server or
llama-cpp-python's server — one server or several.

HTTP goes through one `httpx2.AsyncClient` per server (kept-alive connections, connect/read timeouts, retries with
exponential backoff on connection errors, timeouts, 429 and 5xx, and at most `parallel` requests in flight per
server), driven by one event loop in a background thread; the `Backend` methods stay synchronous.

Token-exact where the server allows it. At start the backend asks the server whether it takes a prompt as a list of
token ids and returns the sampled tokens as ids (vLLM: `return_tokens_as_token_ids`); if so a branch *is* its token
ids — the prompt is tokenised once, every chunk sends prompt + branch ids and appends the ids the server sampled,
so nothing is re-tokenised. Otherwise (llama-cpp-python's server, which takes text only) a branch is its text, the
server re-tokenises it on every call, and `token_drift` measures how far the re-tokenised branch is from the tokens
that were sampled (recorded per branch and summarised in the store's metadata). The mode is part of the
collection's identity: a collection cannot be resumed in the other mode.

Other differences from the llama.cpp engine, recorded in the store's metadata: per-chunk seeds change the random
stream (not the distribution), the confidence is averaged over the top-k entries the server returns
(llama-cpp-python's server merges tokens with the same text), and an end-of-generation token is counted as one token
without a log-probability. Branches live on the client, so a branch can continue on any server of the same model.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson

from core.collect.backend import (
    BackendError,
    CapacityError,
    Chunk,
    Extend,
    ProbeResult,
    check_releasable,
    open_branch_record,
    registered_prompt,
    unfinished_branch,
)
from core.collect.protocol import THINK_END, SamplingParams, box_close
from core.collect.sampling import CONF_TOP_K

T = TypeVar("T")
TOKEN_MODES = ("auto", "ids", "text")


class ServerDown(BackendError):
    """A server did not answer after every retry (connection refused, timeouts, 5xx)."""

    def __init__(self, url: str, message: str):
        super().__init__(message)
        self.url = url


class _HTTPStatus(BackendError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Loop:
    """One asyncio event loop in a daemon thread, shared by every backend of the process."""

    _lock = threading.Lock()
    _shared: _Loop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="autotts-http", daemon=True)
        self.thread.start()

    @classmethod
    def shared(cls) -> _Loop:
        with cls._lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise


@dataclass
class ServerStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    tokens: int = 0
    busy_s: float = 0.0


class ServerClient:
    """One server: a kept-alive async HTTP client, at most `parallel` requests in flight, bounded retries."""

    def __init__(self, base_url: str, *, parallel: int, api_key: str | None, timeout: float, retries: int,
                 loop: _Loop) -> None:
        url = base_url.rstrip("/")
        if url.endswith("/v1"):
            url = url[:-3]
        self.base_url = url
        self.parallel = parallel
        self.timeout = timeout
        self.retries = retries
        self.api_key = api_key
        self.loop = loop
        self.stats = ServerStats()
        self.down: str | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None

    async def _ensure(self) -> Any:
        if self._client is None:
            import httpx2

            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._client = httpx2.AsyncClient(
                base_url=self.base_url, headers=headers, trust_env=False,
                timeout=httpx2.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                limits=httpx2.Limits(max_connections=self.parallel, max_keepalive_connections=self.parallel),
            )
            self._sem = asyncio.Semaphore(self.parallel)
        return self._client

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True) -> Any:
        """The decoded JSON answer. 4xx (but 429) raise `_HTTPStatus` at once; other failures are retried
        `retries` times with backoff (0.5 s doubling, at most 8 s, jittered) and then raise ServerDown."""
        import httpx2

        client = await self._ensure()
        assert self._sem is not None
        data = orjson.dumps(body) if body is not None else None
        last = ""
        tries = self.retries + 1 if retry else 1
        for attempt in range(tries):
            async with self._sem:
                t = time.perf_counter()
                try:
                    self.stats.requests += 1
                    resp = await client.request(method, path, content=data)
                    status, content = resp.status_code, resp.content
                except (httpx2.TransportError, httpx2.TimeoutException, OSError) as e:
                    status, content, last = 0, b"", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                finally:
                    self.stats.busy_s += time.perf_counter() - t
            if status == 200:
                try:
                    return orjson.loads(content)
                except orjson.JSONDecodeError:
                    last = f"answer is not JSON: {content[:200]!r}"
            elif status:
                detail = content[:300].decode(errors="replace")
                if status < 500 and status != 429:
                    raise _HTTPStatus(f"{self.base_url}{path}: HTTP {status}: {detail}", status)
                last = f"HTTP {status}: {detail}"
            if attempt + 1 < tries:
                self.stats.retries += 1
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt) * (0.75 + 0.5 * random.random()))
        self.stats.failures += 1
        raise ServerDown(self.base_url, f"{self.base_url}{path}: no answer after {tries} tries ({last}); is the server running?")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True) -> Any:
        return self.loop.run(self.request(method, path, body, retry=retry))

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


@dataclass
class _Branch:
    prompt: int
    seed: int
    sampling: SamplingParams
    text: str = ""
    ids: list[int] = field(default_factory=list)
    chunks: int = 0
    sampled: int = 0
    finished: bool = False


@dataclass
class _Prompt:
    text: str
    ids: list[int] | None
    refs: int = 0


@dataclass
class _Resp:
    text: str
    tokens: list[str]
    ids: list[int] | None
    offsets: list[int]
    logprobs: list[float]
    confs: list[float]
    finish: str


def _token_ids(tokens: list[str]) -> list[int] | None:
    """vLLM's `token_id:123` strings as ints; None unless every token is one."""
    out = []
    for t in tokens:
        if not isinstance(t, str) or not t.startswith("token_id:"):
            return None
        try:
            out.append(int(t[9:]))
        except ValueError:
            return None
    return out


class OpenAIBackend:
    """Branches through OpenAI-compatible `/v1/completions` servers. Implements `core.collect.backend.Backend`.

    `base_url` is one URL or a list: with several, each prompt (a question) lives on one server, chosen by load,
    and a request to a server that stopped answering moves, with its prompt, to another one (same model required).
    `parallel` bounds the requests in flight per server; `max_branches` is parallel × servers. `token_mode`:
    "auto" (token ids if the servers allow it), "ids" (required, else an error) or "text"."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        model: str | None = None,
        parallel: int = 64,
        api_key: str | None = None,
        sampling: SamplingParams | None = None,
        conf_k: int = CONF_TOP_K,
        timeout: float = 600.0,
        retries: int = 3,
        token_mode: str = "auto",
        failover: bool = True,
        _clients: list[ServerClient] | None = None,
        _probe: dict[str, Any] | None = None,
    ) -> None:
        if token_mode not in TOKEN_MODES:
            raise ValueError(f"token_mode {token_mode!r}: use one of {TOKEN_MODES}")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise BackendError("no server URL given; pass --base-url")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._loop = _Loop.shared()
        self.clients = _clients or [ServerClient(u, parallel=parallel, api_key=self.api_key, timeout=timeout,
                                                 retries=retries, loop=self._loop) for u in urls]
        self.base_url = self.clients[0].base_url
        self.sampling = sampling or SamplingParams()
        self.conf_k = conf_k
        self.parallel = parallel
        self.timeout, self.retries = timeout, retries
        self.failover = failover and len(self.clients) > 1
        self.max_branches = parallel * len(self.clients)
        self._prompts: dict[int, _Prompt] = {}
        self._home: dict[int, ServerClient] = {}
        self._branches: dict[int, _Branch] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._token_cache: dict[str, list[int]] = {}
        self.skipped: list[tuple[str, str]] = []
        """Servers that did not answer at start (URL, why): the others are used without them."""
        if _probe is not None:
            self.model, self.token_mode, self.think_end_id, self.served = (
                _probe["model"], _probe["token_mode"], _probe["think_end_id"], _probe["served"])
            self.tokenize_path = _probe["tokenize_path"]
        else:
            self.served = self._check_models(model)
            self.model = model or self.served["id"]
            self.tokenize_path = self._find_tokenizer()
            self.token_mode = self._detect_mode(token_mode)
            think = self.tokenize(THINK_END) if self.tokenize_path else []
            self.think_end_id = think[0] if len(think) == 1 else None

    # ----- setup ----------------------------------------------------------------------------------------------
    def _check_models(self, model: str | None) -> dict[str, Any]:
        """Every server must serve the same model: returns its /v1/models entry (id, and max_model_len if given)."""
        entries = []
        for c in self.clients:
            try:
                doc = c.call("GET", "/v1/models")
            except ServerDown as e:
                if len(self.clients) == 1:
                    raise
                c.down = str(e)  # the others carry on (`skipped`); with none left, the error below says so
                self.skipped.append((c.base_url, str(e)))
                continue
            data = doc.get("data") if isinstance(doc, dict) else None
            if not data:
                raise BackendError(f"{c.base_url}/v1/models lists no model; pass the model name")
            ids = [str(d.get("id")) for d in data]
            if model is not None and model not in ids:
                raise BackendError(f"{c.base_url} does not serve {model!r} (it lists {', '.join(ids)})")
            entries.append(next(d for d in data if model is None or str(d.get("id")) == model))
        if not entries:
            self._alive()  # raises: every server stopped answering
        names = {str(e.get("id")) for e in entries}
        if len(names) > 1:
            raise BackendError(f"the servers serve different models ({', '.join(sorted(names))}); one collection needs one model")
        return dict(entries[0])

    def _find_tokenizer(self) -> str | None:
        """Which tokenize endpoint the server offers: vLLM/SGLang `/tokenize`, llama-server `/tokenize` (content),
        llama-cpp-python `/extras/tokenize`."""
        c = self._alive()[0]
        for path in ("/tokenize", "/tokenize:content", "/extras/tokenize"):
            try:
                ids = self._tokenize_with(c, path, "a")
            except (BackendError, KeyError, TypeError, ValueError):
                continue
            if ids:
                return path
        return None

    def _tokenize_with(self, c: ServerClient, path: str, text: str) -> list[int]:
        if path == "/tokenize":
            doc = c.call("POST", "/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}, retry=False)
        elif path == "/tokenize:content":
            doc = c.call("POST", "/tokenize", {"content": text, "add_special": False, "parse_special": True}, retry=False)
        else:
            doc = c.call("POST", "/extras/tokenize", {"input": text}, retry=False)
        toks = doc["tokens"]
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in toks]

    def _detect_mode(self, wanted: str) -> str:
        if wanted == "text":
            return "text"
        ok = self.tokenize_path is not None
        if ok:
            try:
                for c in self._alive():
                    ids = self._tokenize_with(c, self.tokenize_path, "1+1=")
                    doc = c.call("POST", "/v1/completions", {
                        "model": self.model, "prompt": ids, "max_tokens": 2, "temperature": 0.0, "logprobs": 1,
                        "return_tokens_as_token_ids": True}, retry=False)
                    lp = (doc["choices"][0].get("logprobs") or {})
                    if _token_ids(list(lp.get("tokens") or [])) is None:
                        ok = False
            except (BackendError, KeyError, IndexError, TypeError):
                ok = False
        if not ok and wanted == "ids":
            raise BackendError(f"{self.base_url} cannot take and return token ids (vLLM and SGLang can; "
                               "llama-cpp-python's server cannot); use --token-mode text or auto")
        return "ids" if ok else "text"

    def split(self) -> list[OpenAIBackend]:
        """One single-server backend per server, sharing this one's clients and model facts, without failover (for
        the collector, which runs one loop per server and moves a failed server's branches itself)."""
        probe = {"model": self.model, "token_mode": self.token_mode, "think_end_id": self.think_end_id,
                 "served": self.served, "tokenize_path": self.tokenize_path}
        return [OpenAIBackend(c.base_url, parallel=self.parallel, api_key=self.api_key, sampling=self.sampling,
                              conf_k=self.conf_k, timeout=self.timeout, retries=self.retries, failover=False,
                              _clients=[c], _probe=probe) for c in self.clients if c.down is None]

    # ----- tokens -----------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        if self.tokenize_path is None:
            raise BackendError(f"{self.base_url} offers no tokenize endpoint (/tokenize or /extras/tokenize)")
        cached = self._token_cache.get(text)
        if cached is None:
            if threading.current_thread() is self._loop.thread:  # a blocking call here would deadlock the loop
                raise BackendError(f"internal: {text[:40]!r} was not tokenised before the request was sent")
            last: BackendError | None = None
            for c in self._alive():
                try:
                    cached = self._tokenize_with(c, self.tokenize_path, text)
                    break
                except ServerDown as e:
                    last = e
                    self._mark_down(c, e)
            if cached is None:
                raise last or BackendError("no server is answering")
            if len(text) <= 4096:
                self._token_cache[text] = cached
        return list(cached)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def token_drift(self, branches: Sequence[int]) -> dict[int, int]:
        """Text mode: for each branch, tokens of its re-tokenised text minus the tokens sampled (0 = no drift; an
        end-of-generation token is not in the text and not counted). Token-id mode: always 0."""
        out = {}
        for bid in branches:
            br = open_branch_record(self._branches, bid)
            if self.token_mode == "ids" or self.tokenize_path is None:
                out[bid] = 0
                continue
            p = self._prompts[br.prompt]
            full = len(self.tokenize(p.text + br.text)) if br.text else len(self.tokenize(p.text))
            out[bid] = full - len(self.tokenize(p.text)) - (br.sampled - (1 if br.finished else 0))
        return out

    # ----- servers ------------------------------------------------------------------------------------------------
    def _alive(self) -> list[ServerClient]:
        alive = [c for c in self.clients if c.down is None]
        if not alive:
            raise BackendError("every server stopped answering: " + "; ".join(f"{c.base_url} ({c.down})" for c in self.clients))
        return alive

    def _mark_down(self, c: ServerClient, e: Exception) -> None:
        if self.failover:
            c.down = str(e)

    def _pick(self) -> ServerClient:
        load = {id(c): 0 for c in self.clients}
        for pid, c in self._home.items():
            load[id(c)] += 1 + self._prompts[pid].refs
        return min(self._alive(), key=lambda c: load[id(c)])

    async def _on_home(self, prompt: int, body: dict[str, Any]) -> Any:
        while True:
            c = self._home[prompt]
            try:
                return await c.request("POST", "/v1/completions", body)
            except ServerDown as e:
                if not self.failover:
                    raise
                self._mark_down(c, e)
                self._home[prompt] = self._pick()  # raises when none is left

    def info(self) -> dict[str, Any]:
        d = {"backend": "openai", "base_url": self.base_url, "model": self.model, "parallel": self.parallel,
             "token_mode": self.token_mode, "servers": [c.base_url for c in self.clients]}
        if self.served.get("max_model_len"):
            d["n_ctx_train"] = int(self.served["max_model_len"])
        return d

    def server_stats(self) -> list[dict[str, Any]]:
        return [{"url": c.base_url, "down": c.down, **c.stats.__dict__} for c in self.clients]

    # ----- requests -------------------------------------------------------------------------------------------------
    def _body(self, prompt: str | list[int], max_tokens: int, sampling: SamplingParams | None, seed: int | None,
              logprobs: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "logprobs": logprobs}
        if self.token_mode == "ids":
            body["return_tokens_as_token_ids"] = True
        if sampling is None or sampling.temperature == 0:
            body.update(temperature=0.0, top_k=1)
        else:
            body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p)
        if seed is not None:
            body["seed"] = seed
        return body

    def _parse(self, doc: Any, prompt_len: int, max_tokens: int) -> _Resp:
        try:
            choice = doc["choices"][0]
            text = choice.get("text") or ""
            lp = choice.get("logprobs") or {}
            finish = choice.get("finish_reason") or "length"
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url}/v1/completions: unexpected answer {str(doc)[:300]}") from None
        tokens = list(lp.get("tokens") or [])
        ids = _token_ids(tokens) if self.token_mode == "ids" else None
        if self.token_mode == "ids" and ids is None:
            raise BackendError(f"{self.base_url}: the server stopped returning token ids")
        offsets = [int(o) for o in (lp.get("text_offset") or [])]
        token_lps = [math.nan if v is None else float(v) for v in (lp.get("token_logprobs") or [])]
        confs = []
        for top in lp.get("top_logprobs") or []:
            vals = sorted((float(v) for v in (top or {}).values()), reverse=True)[: self.conf_k]
            confs.append(-sum(vals) / len(vals) if vals else math.nan)
        if offsets and len(offsets) == len(tokens):
            # llama-cpp-python counts offsets from the prompt's start, vLLM from the completion's: make them relative
            base = prompt_len if 0 < prompt_len <= offsets[0] else 0
            offsets = [o - base for o in offsets]
        else:
            offsets = []
        if len(tokens) > max_tokens:  # some servers return one token too many
            cut = offsets[max_tokens] if offsets else len("".join(tokens[:max_tokens]))
            text, tokens, offsets = text[:cut], tokens[:max_tokens], offsets[:max_tokens]
            token_lps, confs, finish = token_lps[:max_tokens], confs[:max_tokens], "length"
            ids = ids[:max_tokens] if ids is not None else None
        return _Resp(text, tokens, ids, offsets, token_lps[: len(tokens)], confs[: len(tokens)], finish)

    def _cut_text(self, r: _Resp, keep: int) -> str:
        if r.offsets:
            return r.text[: r.offsets[keep]] if keep < len(r.offsets) else r.text
        if r.ids is not None:
            return self._detokenize(r.ids[:keep])
        return "".join(r.tokens[:keep])

    def _detokenize(self, ids: list[int]) -> str:
        c = self._alive()[0]
        for path, body in (("/detokenize", {"model": self.model, "tokens": ids}), ("/extras/detokenize", {"tokens": ids})):
            try:
                doc = c.call("POST", path, body, retry=False)
                return str(doc.get("prompt", doc.get("content", doc.get("text", ""))))
            except _HTTPStatus:
                continue
        raise BackendError(f"{self.base_url} offers no detokenize endpoint")

    # ----- Backend ----------------------------------------------------------------------------------------------
    def add_prompt(self, text: str) -> int:
        ids = self.tokenize(text) if self.token_mode == "ids" else None
        with self._lock:
            pid = self._next
            self._next += 1
            self._prompts[pid] = _Prompt(text, ids)
            self._home[pid] = self._pick()
        return pid

    def release_prompt(self, prompt: int) -> None:
        check_releasable(prompt, registered_prompt(self._prompts, prompt).refs)
        del self._prompts[prompt], self._home[prompt]

    def open_branch(self, prompt: int, seed: int, sampling: SamplingParams | None = None) -> int:
        registered_prompt(self._prompts, prompt)
        if len(self._branches) >= self.max_branches:
            raise CapacityError(f"all {self.max_branches} branch slots are in use; close a branch first")
        with self._lock:
            bid = self._next
            self._next += 1
        self._branches[bid] = _Branch(prompt, seed, sampling or self.sampling)
        self._prompts[prompt].refs += 1
        return bid

    def close_branch(self, branch: int) -> None:
        br = open_branch_record(self._branches, branch, pop=True)
        self._prompts[br.prompt].refs -= 1

    def _get(self, branch: int) -> _Branch:
        return unfinished_branch(self._branches, branch)

    @staticmethod
    def _chunk_seed(seed: int, k: int) -> int:
        h = hashlib.blake2b(f"{seed}\x00{k}".encode(), digest_size=4).digest()
        return int.from_bytes(h, "little") & 0x7FFFFFFF

    def _prefix(self, br: _Branch, extra: str) -> str | list[int]:
        p = self._prompts[br.prompt]
        if self.token_mode == "ids":
            assert p.ids is not None
            return p.ids + br.ids + (self.tokenize(extra) if extra else [])
        return p.text + br.text + extra

    async def _extend_one(self, br: _Branch, req: Extend) -> Chunk:
        prefix = self._prefix(br, req.force_text)
        body = self._body(prefix, req.max_tokens, br.sampling, self._chunk_seed(br.seed, br.chunks), self.conf_k)
        doc = await self._on_home(br.prompt, body)
        r = self._parse(doc, len(prefix) if isinstance(prefix, str) else 0, req.max_tokens)
        n = len(r.tokens) if r.tokens else (0 if not r.text else 1)
        text, lps, confs, ids = r.text, list(r.logprobs), list(r.confs), r.ids
        if ids is not None and self.think_end_id is not None:
            think_end = next((i for i, t in enumerate(ids) if t == self.think_end_id), None)
        else:
            think_end = next((i for i, t in enumerate(r.tokens) if t.strip() == THINK_END), None)
            if think_end is None and THINK_END in text and r.offsets:
                at = text.index(THINK_END)
                think_end = max(i for i, o in enumerate(r.offsets) if o <= at)
        eog = r.finish == "stop"
        if think_end is not None and req.answer_budget is not None and n - think_end - 1 > req.answer_budget:
            keep = think_end + 1 + req.answer_budget
            text = self._cut_text(r, keep)
            n, lps, confs, eog = keep, lps[:keep], confs[:keep], False
            ids = ids[:keep] if ids is not None else None
        if eog:  # the end-of-generation token itself: counted, no log-probability
            n += 1
            lps.append(math.nan)
            confs.append(math.nan)
        lps += [math.nan] * (n - len(lps))
        confs += [math.nan] * (n - len(confs))
        forced_n = 0
        if req.force_text:
            forced_n = self.count_tokens(req.force_text) if self.tokenize_path else max(1, len(req.force_text.encode()) // 3)
            if self.token_mode == "ids":
                br.ids += self.tokenize(req.force_text)
        if ids is not None:
            br.ids += ids
        br.text += req.force_text + text
        br.chunks += 1
        br.sampled += forced_n + n
        br.finished = eog
        self._home[br.prompt].stats.tokens += forced_n + n
        return Chunk(text=(req.force_text + text).encode(), n_forced=forced_n, n_sampled=n,
                     logprobs=np.asarray(lps, np.float32), confidences=np.asarray(confs, np.float32),
                     think_end=think_end, eog=eog)

    async def _gather(self, coros: dict[int, Coroutine[Any, Any, T]]) -> dict[int, T]:
        keys = list(coros)
        results = await asyncio.gather(*coros.values(), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return dict(zip(keys, results, strict=True))  # type: ignore[arg-type]

    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        brs = {bid: self._get(bid) for bid in requests}
        for bid, req in requests.items():
            if req.max_tokens < 1:
                raise ValueError(f"branch {bid}: max_tokens must be >= 1")
        if req_force := [r.force_text for r in requests.values() if r.force_text]:
            for t in set(req_force):  # tokenise forced texts before going async (cached afterwards)
                if self.tokenize_path:
                    self.tokenize(t)
        return self._loop.run(self._gather({bid: self._extend_one(brs[bid], req) for bid, req in requests.items()}))

    async def _probe_one(self, br: _Branch, text: str, max_tokens: int) -> ProbeResult:
        prefix = self._prefix(br, text)
        doc = await self._on_home(br.prompt, self._body(prefix, max_tokens, None, None, 1))
        r = self._parse(doc, len(prefix) if isinstance(prefix, str) else 0, max_tokens)
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
        if self.token_mode == "ids":
            self.tokenize(text)
        return self._loop.run(self._gather({bid: self._probe_one(br, text, max_tokens) for bid, br in brs.items()}))

    def close(self) -> None:
        self._branches.clear()
        self._prompts.clear()
        self._home.clear()
        for c in self.clients:
            try:
                self._loop.run(c.aclose())
            except Exception:  # noqa: BLE001 - closing never raises
                pass
