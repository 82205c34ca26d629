"""One place that opens a generation backend from command-line style settings, for `autotts collect` and
`autotts solve` (and anything else): llama.cpp in this process, or one or more OpenAI-compatible servers.

`open_backend` returns an `OpenedBackend`: the backend plus what a collection records about it — the identity that
must match on resume, the store metadata (which never names servers, so a store does not depend on where it was
sampled), the session facts, and the model's trained context (for the `--max-tokens` warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.collect.backend import Backend
from core.collect.protocol import CollectSettings
from core.errors import AutoTTSError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


@dataclass
class OpenedBackend:
    backend: Backend
    kind: str
    """"llama.cpp" or "openai"."""
    model_name: str
    """A clean name for the environment (`Qwen3-0.6B`, not `models/Qwen3-0.6B.gguf`)."""
    identity: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    n_ctx_train: int | None = None
    """The model's trained context length, when the backend knows it."""


def clean_model_name(name: str) -> str:
    """`models/tiny-qwen3.gguf` → `tiny-qwen3`, `Qwen/Qwen3-0.6B` → `Qwen3-0.6B` (a path-free environment name)."""
    base = re.split(r"[\\/]", name.rstrip("/\\"))[-1] or name
    for suffix in (".gguf", ".GGUF"):
        base = base.removesuffix(suffix)
    return base or "model"


def open_backend(
    kind: str,
    model: str | None,
    settings: CollectSettings,
    *,
    base_urls: list[str] | tuple[str, ...] = (),
    api_key: str | None = None,
    parallel: int = 64,
    n_gpu_layers: int = 0,
    threads: int | None = None,
    kv_type: str = "f16",
    kv_budget_gb: float | None = None,
    kv_unified: bool = False,
    hf_file: str | None = None,
    timeout: float = 600.0,
    retries: int = 3,
    token_mode: str = "auto",
    sha_cache: Path | None = None,
) -> OpenedBackend:
    """Open a backend. `kind` "llama": `model` is a GGUF path (or a Hugging Face repo with `hf_file`), KV sized
    for `parallel` branches of `settings.branch_budget()` tokens; "openai": `model` is the served name (None or
    "auto": the first listed), `base_urls` the servers (default 127.0.0.1:8000), `parallel` requests per server.
    `sha_cache`: a collection folder whose manifest may hold the model's sha256 already (skips re-hashing)."""
    if kind == "llama":
        if not model:
            raise AutoTTSError("--model is required with the llama backend: pass a .gguf file (or --base-url for a server)")
        from core.collect.engine import LlamaEngine

        kwargs: dict[str, Any] = dict(parallel=parallel, branch_tokens=settings.branch_budget(), n_gpu_layers=n_gpu_layers,
                                      n_threads=threads, kv_unified=kv_unified, kv_type=kv_type,
                                      kv_budget_gb=kv_budget_gb, sampling=settings.sampling)
        engine = LlamaEngine.from_pretrained(model, hf_file, **kwargs) if hf_file else LlamaEngine(model, **kwargs)
        path = Path(engine.model_path)
        info = engine.info()
        st = path.stat()
        sha = _cached_sha256(path, sha_cache)
        return OpenedBackend(
            engine, "llama.cpp", clean_model_name(path.name),
            identity={"model_sha256": sha, "backend_kind": "llama.cpp", "results_affecting": {"kv_type": kv_type}},
            metadata={"backend": "llama.cpp", "model_file": path.name, "model_sha256": sha,
                      "model_desc": info.get("model_desc"), "llama_cpp_python": info.get("llama_cpp_python"),
                      "kv_type": kv_type},
            session={"model_stat": [st.st_size, st.st_mtime_ns], "model_path": str(path),
                     "n_gpu_layers": n_gpu_layers, "threads": threads, "parallel": engine.max_branches},
            n_ctx_train=info.get("n_ctx_train"),
        )
    if kind == "openai":
        from core.collect.openai_backend import OpenAIBackend

        urls = list(base_urls) or [DEFAULT_BASE_URL]
        bk = OpenAIBackend(urls, model=None if model in (None, "", "auto") else model, parallel=parallel,
                           api_key=api_key, sampling=settings.sampling, timeout=timeout, retries=retries,
                           token_mode=token_mode)
        info = bk.info()
        return OpenedBackend(
            bk, "openai", clean_model_name(bk.model),
            identity={"model_sha256": None, "backend_kind": f"openai:{bk.model}",
                      "results_affecting": {"token_mode": bk.token_mode}},
            metadata={"backend": "openai", "served_model": bk.model,
                      "numerics": "log-probabilities come from the server; their last float32 bits depend on its prefix "
                                  "cache (which requests it served before), so signals can differ in those bits between "
                                  "runs; answers and token counts are seeded per branch and chunk"},
            session={"servers": [c.base_url for c in bk.clients], "parallel_per_server": parallel},
            n_ctx_train=info.get("n_ctx_train"),
        )
    raise AutoTTSError(f"unknown backend {kind!r}: use llama or openai")


def _cached_sha256(model: Path, folder: Path | None) -> str:
    """The model's sha256, reused from the collection's manifest when the file's size and mtime are unchanged."""
    from core.collect.writer import LOG_NAME, file_sha256, read_log

    if folder is not None:
        st = model.stat()
        log = folder / LOG_NAME
        if log.is_file() and log.stat().st_size:
            try:
                manifest, _ = read_log(log)
                stat_then = manifest.get("session", {}).get("model_stat")
                if stat_then == [st.st_size, st.st_mtime_ns] and manifest.get("model_sha256"):
                    return manifest["model_sha256"]
            except Exception:  # noqa: BLE001 - a bad log is reported later, by open_log
                pass
    return file_sha256(model)


def context_warning(opened: OpenedBackend, settings: CollectSettings, prompt_tokens: int = 0) -> str | None:
    """A one-line warning when a branch may run past the model's trained context, else None."""
    n = opened.n_ctx_train
    need = settings.max_tokens + settings.answer_tokens + prompt_tokens
    if not n or need <= n:
        return None
    return (f"warning: a branch may reach {need:,} tokens (--max-tokens {settings.max_tokens:,} + --answer-tokens "
            f"{settings.answer_tokens:,} + the prompt), beyond the {n:,} tokens {opened.model_name} was trained on; "
            "the model degrades past it (lower --max-tokens to fit)")


