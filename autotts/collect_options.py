"""The click options `autotts collect` and `autotts solve` share: one definition each, so names, defaults and help
cannot drift apart. Old spellings (`--max-tokens-per-branch` of `solve`) are still accepted as hidden aliases.

    @main.command("solve")
    @model_options(positional_model=False)
    @protocol_options()
    def solve_command(..., **kw): ...
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

BACKENDS = ("llama", "openai")
DEFAULT_PARALLEL = 64
"""Branches in flight per backend (llama: batch width; openai: concurrent requests per server). 64 is where
llama.cpp's aggregate decode rate peaks on an H100 (ecosystem-notes.md) and what Parallel-Probe opens at once."""

_ALIASES: dict[str, tuple[str, str]] = {
    # hidden option param -> (canonical param, old spelling)
    "max_tokens_per_branch": ("max_tokens", "--max-tokens-per-branch"),
}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(options: list[Decorator]) -> Decorator:
    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def _fold_aliases(f: Callable[..., Any]) -> Callable[..., Any]:
    """Map hidden old spellings onto the canonical parameter (an error if both are given)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        for hidden, (canonical, spelling) in _ALIASES.items():
            if hidden in kw:
                value = kw.pop(hidden)
                if value is not None:
                    ctx = click.get_current_context()
                    src = ctx.get_parameter_source(canonical)
                    if src is not None and src.name not in ("DEFAULT",):
                        raise click.UsageError(f"{spelling} is the old name of --{canonical.replace('_', '-')}; give only one")
                    kw[canonical] = value
        return f(*args, **kw)

    return wrapper


def backend_options(*, parallel_help: str) -> Decorator:
    """Where the model runs: in this process (llama.cpp) or behind one or more OpenAI-compatible servers."""
    return _apply([
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="llama: llama.cpp in this process (the model is a .gguf file); openai: OpenAI-compatible "
                          "servers (the model is the served name, 'auto' = the first listed). Default: openai when "
                          "--base-url is given, else llama."),
        click.option("--base-url", "base_urls", multiple=True, metavar="URL",
                     help="An OpenAI-compatible server (vLLM, SGLang, llama-server, llama-cpp-python's server); repeat "
                          "it for several servers, which then share the work. Implies --backend openai."),
        click.option("--servers", "servers_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="A file of server URLs, one per line ('#' comments), added to --base-url."),
        click.option("--api-key", envvar="OPENAI_API_KEY", default=None,
                     help="Bearer token for the servers [env OPENAI_API_KEY]."),
        click.option("--parallel", default=DEFAULT_PARALLEL, show_default=True, type=click.IntRange(1, 255),
                     help=parallel_help),
        click.option("--n-gpu-layers", default=0, show_default=True, type=int, help="Layers offloaded to the GPU (-1: all)."),
        click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for llama.cpp (default: all available)."),
        click.option("--kv-type", type=click.Choice(["f16", "q8_0"]), default="f16", show_default=True,
                     help="KV-cache precision (llama); q8_0 halves its memory."),
        click.option("--kv-budget", default=None, type=click.FloatRange(0, min_open=True), metavar="GB",
                     help="Cap on KV-cache memory (llama); --parallel is lowered to fit."),
        click.option("--request-timeout", default=600.0, show_default=True, type=click.FloatRange(1),
                     help="Seconds one server request may take before it is retried (openai)."),
        click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 20),
                     help="Retries of a failed server request, with exponential backoff, before the server is "
                          "given up (its branches then move to the other servers)."),
    ])


def protocol_options() -> Decorator:
    """What a branch is: Δ, the caps, the probe, the sampler, the seed, the instruction."""
    return _apply([
        click.option("--interval", default=500, show_default=True, type=click.IntRange(1), help="Probe interval Δ in tokens."),
        click.option("--max-tokens", "max_tokens", default=40_000, show_default=True, type=click.IntRange(1),
                     help="Thinking budget per branch; a branch still thinking then gets </think> forced and at most "
                          "--answer-tokens more."),
        click.option("--max-tokens-per-branch", "max_tokens_per_branch", default=None, type=click.IntRange(1),
                     hidden=True),
        click.option("--answer-tokens", default=1_500, show_default=True, type=click.IntRange(1),
                     help="Most tokens after </think> (sampled or forced)."),
        click.option("--probe-tokens", default=48, show_default=True, type=click.IntRange(1),
                     help="Greedy tokens a probe may decode before its \\boxed{ must close (else its answer is ERR)."),
        click.option("--probe-style", type=click.Choice(["boxed", "dynasor"]), default="boxed", show_default=True,
                     help="boxed: close the thinking and open \\boxed{; dynasor: Dynasor's in-thought suffix."),
        click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0),
                     help="Sampling temperature (the paper's data used 0.7; Qwen's card suggests 0.6)."),
        click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling."),
        click.option("--top-k", default=20, show_default=True, type=click.IntRange(1, 256), help="Top-k sampling."),
        click.option("--min-p", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Min-p sampling."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Base seed; branch b of question q samples with a seed derived from (seed, q, b, question)."),
        click.option("--instruction", default=None,
                     help="Text appended to each question (default: Qwen's 'Please reason step by step…')."),
        click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N questions."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout."),
        _fold_aliases,
    ])


def server_urls(base_urls: tuple[str, ...] | list[str], servers_file: str | None) -> list[str]:
    """The servers named by --base-url and --servers, in order, without duplicates."""
    urls = list(base_urls)
    if servers_file:
        with open(servers_file, encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    urls.append(line)
    seen: list[str] = []
    for u in urls:
        u = u.rstrip("/")
        if u not in seen:
            seen.append(u)
    return seen


def resolve_backend_kind(backend: str | None, urls: list[str]) -> str:
    if backend is None:
        return "openai" if urls else "llama"
    if backend == "llama" and urls:
        raise click.UsageError("--base-url/--servers name servers, which the llama backend does not use; "
                               "drop them or pass --backend openai")
    return backend
