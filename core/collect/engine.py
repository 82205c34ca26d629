"""The llama.cpp backend: many branches decoded together in one batch, in-process, on CPU or GPU.

Built on llama-cpp-python's low-level API (collection-protocol.md §4): one context holds up to `parallel`
sequences; every decode step puts the pending token of each advancing branch into one `llama_batch`, so all
branches share each pass over the weights. Sampling and confidence signals are computed from the raw logits by
`sampling.sample_rows`, with one seeded numpy generator per branch.

KV layouts (`kv_unified`):

* False (default): one KV stream per branch. Each branch prefills its own copy of the prompt (in a call of its
  own). Attention only reads the branch's own cells, in position order, so on CPU a branch's
  tokens do not depend on which other branches share its batches: a resumed collection reproduces an
  uninterrupted one bit for bit (how the calls are shaped for that: `batching.py`). Also the faster layout
  for long, divergent branches.
* True: one pool of cells shared by all sequences; a prompt is decoded once into a holder sequence and shared
  by its branches without copying. Results may differ in the last bits with batch composition.

A branch's state between calls is (tokens in the cache, a *pending* sampled token not yet decoded). A probe
decodes the pending token plus the probe text, decodes greedily, then removes all of it from the cache with
`llama_memory_seq_rm`; the branch's generator is not touched, so it continues exactly as if never probed.

llama_cpp is imported lazily, when an engine is built.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
from core.collect.batching import BatchDecoder
from core.collect.protocol import THINK_END, SamplingParams, box_close
from core.collect.sampling import CONF_TOP_K, sample_rows

_KV_TYPES = {"f16": (1, 2.0), "q8_0": (8, 34 / 32), "f32": (0, 4.0)}  # name -> (GGML type id, bytes per element)
_LOG_CALLBACK: Any = None  # keeps the ctypes log callback alive
_BACKEND_READY = False


def _llama() -> Any:
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendError(
            f"llama-cpp-python is not installed ({e}); install the collect extra: pip install 'autotts[collect]' "
            "(CUDA: CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install 'autotts[collect]')"
        ) from None
    return llama_cpp


def _init_backend(verbose: bool) -> Any:
    global _LOG_CALLBACK, _BACKEND_READY
    L = _llama()
    if not verbose and _LOG_CALLBACK is None:
        _LOG_CALLBACK = L.llama_log_callback(lambda level, text, user: None)
        L.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    if not _BACKEND_READY:
        L.llama_backend_init()
        _BACKEND_READY = True
    return L


@dataclass
class _Prompt:
    tokens: list[int]
    holder: int | None  # the sequence holding the decoded prompt (unified layout only)
    n_branches: int = 0


@dataclass
class _Branch:
    seq: int
    prompt: int
    rng: np.random.Generator
    sampling: SamplingParams
    n_past: int  # tokens of this branch's sequence in the cache
    feed: list[int] = field(default_factory=list)  # tokens to decode before the next sample
    finished: bool = False


class LlamaEngine(BatchDecoder):
    """Batched branch generation with llama.cpp. Implements `core.collect.backend.Backend`.

    `branch_tokens` is the most tokens one branch will generate, forced and probe tokens included
    (`CollectSettings.branch_budget()`); with the prompt allowance it sizes each branch's share of the KV cache.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        parallel: int = 32,
        branch_tokens: int = 4096,
        prompt_tokens: int = 1024,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_ubatch: int = 512,
        kv_unified: bool = False,
        kv_type: str = "f16",
        flash_attn: bool | None = None,
        batch_invariant: bool = True,
        max_prompts: int = 4,
        kv_budget_gb: float | None = None,
        sampling: SamplingParams | None = None,
        conf_k: int = CONF_TOP_K,
        verbose: bool = False,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        if kv_type not in _KV_TYPES:
            raise ValueError(f"kv_type {kv_type!r}: use one of {sorted(_KV_TYPES)}")
        L = _init_backend(verbose)
        self._L = L
        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise BackendError(f"{self.model_path}: no such model file; pass a .gguf file (or a Hugging Face repo with --hf-file)")
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = int(n_gpu_layers)
        self._model = L.llama_model_load_from_file(self.model_path.encode(), mp)
        if not self._model:
            raise BackendError(f"{self.model_path}: llama.cpp could not load this model (not a GGUF file, or an architecture this llama-cpp-python does not know)")
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self._is_eog = np.array([bool(L.llama_vocab_is_eog(self._vocab, t)) for t in range(self.n_vocab)])
        think = self._tokenize(THINK_END)
        self.think_end_id: int | None = think[0] if len(think) == 1 else None
        self._pieces: dict[int, bytes] = {}
        self.sampling = sampling or SamplingParams()
        self.conf_k = conf_k
        self.parallel = parallel
        self.branch_tokens = int(branch_tokens)
        self.prompt_tokens = int(prompt_tokens)
        self.n_gpu_layers = int(n_gpu_layers)
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.n_batch, self.n_ubatch = int(n_batch), int(min(n_ubatch, n_batch))
        self.kv_unified = bool(kv_unified)
        self.kv_type = kv_type
        self.flash_attn = flash_attn
        self.batch_invariant = batch_invariant
        self.max_prompts = max_prompts if kv_unified else 1_000_000
        self.kv_budget_gb = kv_budget_gb
        self._ctx: Any = None
        self._mem: Any = None
        self._prompts: dict[int, _Prompt] = {}
        self._branches: dict[int, _Branch] = {}
        self._next_prompt = 0
        self._next_branch = 0
        self._free_seqs: list[int] = []
        self._free_holders: list[int] = []
        self.max_branches = parallel
        if kv_budget_gb is not None:
            fit = int(kv_budget_gb * 1e9 // (self.kv_bytes_per_token() * (self.branch_tokens + self.prompt_tokens)))
            if fit < 1:
                raise CapacityError(
                    f"a KV budget of {kv_budget_gb} GB does not hold one branch of {self.branch_tokens + self.prompt_tokens} "
                    f"tokens ({self.kv_bytes_per_token() / 1e3:.0f} kB per token); raise --kv-budget, lower --max-tokens or use --kv-type q8_0"
                )
            self.max_branches = min(parallel, fit)

    # ----- model facts --------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, **kwargs: Any) -> LlamaEngine:
        """Download (or reuse from the Hugging Face cache) `filename` of `repo_id` with llama-cpp-python's loader.

        Only the vocabulary is loaded by the loader; the engine then loads the weights itself. Needs network
        access and the `huggingface-hub` package."""
        L = _llama()
        try:
            llm = L.Llama.from_pretrained(repo_id=repo_id, filename=filename, vocab_only=True, verbose=False)
        except Exception as e:  # noqa: BLE001 - the loader raises many types (network, missing package, bad name)
            raise BackendError(f"could not fetch {filename!r} from Hugging Face repo {repo_id!r}: {e}") from None
        path = llm.model_path
        llm.close()
        return cls(path, **kwargs)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._L.llama_model_meta_val_str(self._model, key.encode(), buf, 256)
        return buf.value.decode() if n >= 0 else None

    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token of one sequence takes (all layers, K and V)."""
        L = self._L
        arch = self._meta("general.architecture") or ""
        n_layer = L.llama_model_n_layer(self._model)
        n_head = L.llama_model_n_head(self._model)
        n_head_kv = L.llama_model_n_head_kv(self._model)
        n_embd = L.llama_model_n_embd(self._model)
        k_len = int(self._meta(f"{arch}.attention.key_length") or n_embd // n_head)
        v_len = int(self._meta(f"{arch}.attention.value_length") or n_embd // n_head)
        return n_layer * n_head_kv * (k_len + v_len) * _KV_TYPES[self.kv_type][1]

    def info(self) -> dict[str, Any]:
        L = self._L
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self._model, buf, 256)
        d: dict[str, Any] = {
            "backend": "llama.cpp",
            "model_path": self.model_path,
            "model_desc": buf.value.decode(errors="replace"),
            "model_params": int(L.llama_model_n_params(self._model)),
            "llama_cpp_python": getattr(L, "__version__", "?"),
            "n_vocab": self.n_vocab,
            "n_ctx_train": int(L.llama_model_n_ctx_train(self._model)),
            "kv_unified": self.kv_unified,
            "kv_type": self.kv_type,
            "kv_bytes_per_token": self.kv_bytes_per_token(),
            "parallel": self.max_branches,
            "n_gpu_layers": self.n_gpu_layers,
            "n_threads": self.n_threads,
        }
        if self._ctx is not None:
            d["n_ctx"] = int(L.llama_n_ctx(self._ctx))
            d["n_ctx_seq"] = int(L.llama_n_ctx_seq(self._ctx))
        return d

    # ----- tokens --------------------------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        n_max = len(raw) + 16
        buf = (self._L.llama_token * n_max)()
        n = self._L.llama_tokenize(self._vocab, raw, len(raw), buf, n_max, False, True)
        if n < 0:
            raise BackendError(f"tokenisation failed ({n}) for a text of {len(raw)} bytes")
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def piece(self, token: int) -> bytes:
        """The bytes token `token` renders to (control tokens render empty)."""
        p = self._pieces.get(token)
        if p is None:
            buf = ctypes.create_string_buffer(64)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            p = self._pieces[token] = buf.raw[:n]
        return p

    # ----- context ---------------------------------------------------------------------------------------------
    def prepare(self, max_prompt_tokens: int) -> None:
        """Reserve room for prompts of up to `max_prompt_tokens` tokens (before the first prompt is added)."""
        if self._ctx is None:
            self.prompt_tokens = max(self.prompt_tokens, int(max_prompt_tokens) + 1)
        elif max_prompt_tokens + 1 > self.prompt_tokens:
            raise CapacityError(f"prompts of {max_prompt_tokens} tokens do not fit the context built for {self.prompt_tokens}")

    def _ensure_context(self) -> None:
        if self._ctx is not None:
            return
        L = self._L
        per_branch = self.branch_tokens + self.prompt_tokens
        n_par = self.max_branches
        cp = L.llama_context_default_params()
        if self.kv_unified:
            n_holders = self.max_prompts
            cp.n_ctx = n_par * self.branch_tokens + n_holders * self.prompt_tokens + 256
            cp.n_seq_max = n_par + n_holders
        else:
            # one stream per branch, plus a spare one (a neighbour for the last branch's stream, see _decode)
            n_holders = 0
            cp.n_ctx = (n_par + 1) * (per_branch + 2)
            cp.n_seq_max = n_par + 1
        if cp.n_seq_max > L.llama_max_parallel_sequences():
            raise CapacityError(f"llama.cpp supports at most {L.llama_max_parallel_sequences()} sequences; lower --parallel")
        self.n_ubatch = max(self.n_ubatch, 2 * cp.n_seq_max + 2)
        self.n_batch = max(self.n_batch, self.n_ubatch)
        cp.n_batch = self.n_batch
        cp.n_ubatch = self.n_ubatch
        cp.kv_unified = self.kv_unified
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.type_k = cp.type_v = _KV_TYPES[self.kv_type][0]
        cp.flash_attn_type = {None: -1, True: 1, False: 0}[self.flash_attn]
        cp.no_perf = True
        ctx = L.llama_init_from_model(self._model, cp)
        if not ctx:
            gb = cp.n_ctx * self.kv_bytes_per_token() / 1e9
            raise CapacityError(
                f"llama.cpp could not create a context of {cp.n_ctx} tokens for {n_par} branches (KV cache ≈ {gb:.1f} GB); "
                "lower --parallel or --max-tokens, set --kv-budget, or use --kv-type q8_0"
            )
        self._ctx = ctx
        self._mem = L.llama_get_memory(ctx)
        self.n_ctx_seq = int(L.llama_n_ctx_seq(ctx))
        # positions a branch may use (with one stream per branch, keep one free for a companion token)
        self.branch_cap = self.n_ctx_seq if self.kv_unified else self.n_ctx_seq - 1
        self._free_seqs = list(range(n_par - 1, -1, -1))
        self._free_holders = list(range(n_par + n_holders - 1, n_par - 1, -1))
        self._n_streams = 1 if self.kv_unified else cp.n_seq_max
        self._make_batch()

    # ----- prompts and branches -----------------------------------------------------------------------------
    def add_prompt(self, text: str) -> int:
        toks = self._tokenize(text)
        if not toks:
            raise BackendError("the prompt is empty")
        if self._ctx is None:
            self.prompt_tokens = max(self.prompt_tokens, len(toks) + 1)
        self._ensure_context()
        if len(toks) + 1 > self.prompt_tokens:
            raise CapacityError(
                f"a prompt of {len(toks)} tokens does not fit the {self.prompt_tokens} reserved per prompt; "
                "call prepare() with the longest prompt first"
            )
        holder = None
        if self.kv_unified:
            if not self._free_holders:
                raise CapacityError(f"all {self.max_prompts} prompt slots are in use; release a prompt first")
            holder = self._free_holders.pop()
            if len(toks) > 1:
                self._decode([(holder, toks[:-1], 0, False)], None)
        pid = self._next_prompt
        self._next_prompt += 1
        self._prompts[pid] = _Prompt(toks, holder)
        return pid

    def release_prompt(self, prompt: int) -> None:
        p = registered_prompt(self._prompts, prompt)
        check_releasable(prompt, p.n_branches)
        if p.holder is not None:
            self._L.llama_memory_seq_rm(self._mem, p.holder, -1, -1)
            self._free_holders.append(p.holder)
        del self._prompts[prompt]

    def open_branch(self, prompt: int, seed: int, sampling: SamplingParams | None = None) -> int:
        p = registered_prompt(self._prompts, prompt)
        if not self._free_seqs:
            raise CapacityError(f"all {self.max_branches} branch slots are in use; close a branch first")
        seq = self._free_seqs.pop()
        L = self._L
        L.llama_memory_seq_rm(self._mem, seq, -1, -1)
        if p.holder is not None:
            L.llama_memory_seq_cp(self._mem, p.holder, seq, -1, -1)
            br = _Branch(seq, prompt, np.random.default_rng(seed), sampling or self.sampling, len(p.tokens) - 1, [p.tokens[-1]])
        else:
            br = _Branch(seq, prompt, np.random.default_rng(seed), sampling or self.sampling, 0, list(p.tokens))
        p.n_branches += 1
        bid = self._next_branch
        self._next_branch += 1
        self._branches[bid] = br
        return bid

    def close_branch(self, branch: int) -> None:
        br = open_branch_record(self._branches, branch, pop=True)
        self._L.llama_memory_seq_rm(self._mem, br.seq, -1, -1)
        self._free_seqs.append(br.seq)
        self._prompts[br.prompt].n_branches -= 1

    def _get(self, branch: int) -> _Branch:
        return unfinished_branch(self._branches, branch)

    def _sample(self, branches: Sequence[_Branch], logits: np.ndarray, greedy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(branches)
        if greedy:
            temps = np.zeros(n)
            us = np.full(n, -1.0)
        else:
            temps = np.array([b.sampling.temperature for b in branches])
            us = np.array([b.rng.random() if b.sampling.temperature > 0 else -1.0 for b in branches])
        return sample_rows(
            logits, temps, np.array([b.sampling.top_k for b in branches]), np.array([b.sampling.top_p for b in branches]),
            np.array([b.sampling.min_p for b in branches]), us, self.conf_k,
        )

    # ----- generation ----------------------------------------------------------------------------------------------
    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        states = []
        for bid, req in requests.items():
            br = self._get(bid)
            if req.max_tokens < 1:
                raise ValueError(f"branch {bid}: max_tokens must be >= 1")
            forced = self._tokenize(req.force_text) if req.force_text else []
            need = br.n_past + len(br.feed) + len(forced) + req.max_tokens
            if need > self.branch_cap:
                raise CapacityError(f"branch {bid} would reach {need} tokens, beyond its {self.branch_cap}-token context")
            states.append(_Step(bid, br, req, forced))
        for st in states:
            if st.forced:
                st.br.feed.extend(st.forced)
                st.text += b"".join(self.piece(t) for t in st.forced)
        active = states
        while active:
            entries = [(st.br.seq, st.br.feed, st.br.n_past, True) for st in active]
            results: list[Any] = [None] * len(active)

            def on_rows(idx: list[int], logits: np.ndarray, active: list[_Step] = active, results: list[Any] = results) -> None:
                toks, lps, confs = self._sample([active[i].br for i in idx], logits, greedy=False)
                for j, i in enumerate(idx):
                    results[i] = (int(toks[j]), float(lps[j]), float(confs[j]))

            self._decode(entries, on_rows)
            still = []
            for st, (tok, lp, conf) in zip(active, results, strict=True):
                br = st.br
                br.n_past += len(br.feed)
                br.feed = [tok]
                st.text += self.piece(tok)
                st.lps.append(lp)
                st.confs.append(conf)
                st.remaining -= 1
                done = st.remaining == 0
                if self._is_eog[tok]:
                    st.eog = br.finished = done = True
                elif st.answer_left is not None:
                    st.answer_left -= 1
                    done = done or st.answer_left <= 0
                elif tok == self.think_end_id and st.think_end is None:
                    st.think_end = len(st.lps) - 1
                    if st.req.answer_budget is not None:
                        st.answer_left = st.req.answer_budget
                        done = done or st.answer_left <= 0
                if not done:
                    still.append(st)
            active = still
        return {
            st.bid: Chunk(
                text=bytes(st.text), n_forced=len(st.forced), n_sampled=len(st.lps),
                logprobs=np.asarray(st.lps, np.float32), confidences=np.asarray(st.confs, np.float32),
                think_end=st.think_end, eog=st.eog,
            )
            for st in states
        }

    def probe(self, branches: Sequence[int], text: str, max_tokens: int) -> dict[int, ProbeResult]:
        brs = [(bid, self._get(bid)) for bid in branches]
        if len(set(branches)) != len(branches):
            raise ValueError("a branch is named twice")
        probe_toks = self._tokenize(text)
        states = []
        for bid, br in brs:
            feed = br.feed + probe_toks
            if br.n_past + len(feed) + max_tokens > self.branch_cap:
                raise CapacityError(f"branch {bid}: the probe would overflow its {self.branch_cap}-token context")
            states.append(_Probe(bid, br, br.n_past, feed, br.n_past))
        try:
            active = states
            while active:
                entries = [(p.br.seq, p.feed, p.pos, True) for p in active]
                results: list[Any] = [None] * len(active)

                def on_rows(idx: list[int], logits: np.ndarray, active: list[_Probe] = active, results: list[Any] = results) -> None:
                    toks, lps, _ = self._sample([active[i].br for i in idx], logits, greedy=True)
                    for j, i in enumerate(idx):
                        results[i] = (int(toks[j]), float(lps[j]))

                self._decode(entries, on_rows)
                still = []
                for p, (tok, lp) in zip(active, results, strict=True):
                    p.pos += len(p.feed)
                    p.feed = [tok]
                    p.lps.append(lp)
                    if self._is_eog[tok]:
                        continue
                    p.data += self.piece(tok)
                    if box_close(p.data.decode(errors="ignore")) is not None:
                        p.closed = True
                    elif len(p.lps) < max_tokens:
                        still.append(p)
                active = still
        finally:
            for p in states:
                if not self._L.llama_memory_seq_rm(self._mem, p.br.seq, p.base, -1):  # pragma: no cover
                    raise BackendError("llama.cpp refused to roll back a probe")
        return {
            p.bid: ProbeResult(text=p.data.decode(errors="replace"), n_tokens=len(p.lps), closed=p.closed,
                               logprobs=np.asarray(p.lps, np.float32))
            for p in states
        }

    def close(self) -> None:
        L = getattr(self, "_L", None)
        if L is None:
            return
        if getattr(self, "_ctx", None) is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None
        self._branches, self._prompts = {}, {}

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class _Step:
    bid: int
    br: _Branch
    req: Extend
    forced: list[int]
    text: bytearray = field(default_factory=bytearray)
    lps: list[float] = field(default_factory=list)
    confs: list[float] = field(default_factory=list)
    think_end: int | None = None
    answer_left: int | None = None
    eog: bool = False
    remaining: int = 0

    def __post_init__(self) -> None:
        self.remaining = self.req.max_tokens


@dataclass
class _Probe:
    bid: int
    br: _Branch
    base: int
    feed: list[int]
    pos: int
    data: bytes = b""
    lps: list[float] = field(default_factory=list)
    closed: bool = False
