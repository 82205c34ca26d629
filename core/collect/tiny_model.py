"""Build small random-weight Qwen3-architecture GGUF models for tests and benchmarks.

`build_tiny_qwen3(path)` writes a ~0.5 MB model (2 layers, hidden 64) with a byte-level BPE vocabulary and
Qwen's chat/thinking special tokens: it loads in llama.cpp, tokenises `<|im_start|>` … `</think>` as single
tokens and generates (gibberish). `build_tiny_qwen3(path, **QWEN3_0_6B_SHAPE)` writes a model of the real
Qwen3-0.6B shape (28 layers, hidden 1024, 151,936-token vocabulary, ~1.2 GB in f16) for speed measurements
only: its weights are random, so its output is noise.

Needs the `gguf` package (the `collect` extra); nothing here imports llama_cpp.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import replacing

# Qwen's special tokens. `<think>`/`</think>` are USER_DEFINED (non-special added tokens) in real Qwen3 GGUFs,
# the rest CONTROL; the real ids are kept when the vocabulary is large enough.
SPECIAL_TOKENS: tuple[tuple[str, int, str], ...] = (
    ("<|endoftext|>", 151643, "control"),
    ("<|im_start|>", 151644, "control"),
    ("<|im_end|>", 151645, "control"),
    ("<think>", 151667, "user_defined"),
    ("</think>", 151668, "user_defined"),
)
# A few BPE merges so that tokenisation is not purely byte by byte (Ġ is the byte-level space).
_MERGES = ("Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġ th", "Ġt he", "r e", "a t",
           "\\ b", "\\b o", "\\bo x", "\\box e", "\\boxe d", "\\boxed {")

DEFAULT_FAVOUR: dict[str, float] = {"}": 2.8, "</think>": 1.6, "<|im_end|>": 1.5, "\\boxed{": 1.8, "2": 2.5}
"""Logit biases of the compact model, tuned so that with Δ = 16 and a 64-token thinking cap its branches end in
every way (end-of-generation, natural `</think>`, forced `</think>`), its probes close their box and some
branches write a boxed final answer (random weights otherwise give uniform noise)."""

QWEN3_0_6B_SHAPE: dict[str, Any] = {
    "n_layer": 28, "n_embd": 1024, "n_ff": 3072, "n_head": 16, "n_head_kv": 8, "head_dim": 128,
    "n_vocab": 151936, "dtype": "f16", "context_length": 40960,
}
"""Keyword arguments for `build_tiny_qwen3` giving the real Qwen3-0.6B tensor shapes (tied embeddings)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _filler(i: int) -> str:
    """A unique, decodable byte-level token string ('Ġ' + letters) to pad a vocabulary to size."""
    letters = []
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters.append(chr(ord("a") + r))
    return "Ġ" + "".join(reversed(letters)) + "Ġ"


def tiny_vocabulary(n_vocab: int | None = None) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): 256 byte tokens, the merge results, Qwen's specials, fillers up to n_vocab."""
    import gguf

    normal, control, user = (int(gguf.TokenType.NORMAL), int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED))
    byte_map = bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    merges = list(_MERGES)
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [normal] * len(tokens)
    kinds = {"control": control, "user_defined": user}
    if n_vocab is None:  # compact: specials right after the merges
        for text, _, kind in SPECIAL_TOKENS:
            tokens.append(text)
            types.append(kinds[kind])
        return tokens, types, merges
    if n_vocab <= max(i for _, i, _ in SPECIAL_TOKENS):
        raise ValueError(f"n_vocab={n_vocab} is too small for Qwen's special token ids; use None for a compact vocabulary")
    specials = {i: (text, kinds[kind]) for text, i, kind in SPECIAL_TOKENS}
    k = 0
    while len(tokens) < n_vocab:
        idx = len(tokens)
        if idx in specials:
            tokens.append(specials[idx][0])
            types.append(specials[idx][1])
        else:
            tokens.append(_filler(k))
            types.append(normal)
            k += 1
    return tokens, types, merges


def build_tiny_qwen3(
    path: str | os.PathLike,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_ff: int = 128,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_vocab: int | None = None,
    dtype: str = "f32",
    context_length: int = 4096,
    seed: int = 0,
    logit_scale: float = 1.0,
    tie_embeddings: bool | None = None,
    favour: dict[str, float] | None = None,
) -> Path:
    """Write a random-weight Qwen3-architecture GGUF to `path` and return the path.

    `n_vocab=None` gives a compact 271-token vocabulary; a number pads the vocabulary with filler tokens and
    puts Qwen's special tokens at their real ids. `dtype` is "f32", "f16" or "q8_0" for the matrices (norms
    stay f32). `logit_scale` sets how peaked the random next-token distributions are. Embeddings are tied for
    large vocabularies (as in Qwen3-0.6B) and untied for the compact one, which gets a roughly constant logit
    bias (in nats) for each token in `favour` (default `DEFAULT_FAVOUR`). Deterministic in `seed`.
    """
    import gguf

    if dtype not in ("f32", "f16", "q8_0"):
        raise ValueError(f"dtype {dtype!r}: use f32, f16 or q8_0")
    p = Path(path)
    tokens, types, merges = tiny_vocabulary(n_vocab)
    vocab = len(tokens)
    ids = {t: i for i, t in enumerate(tokens)}
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(None, "qwen3")  # the file is named when written, below
    w.add_name("autotts-tiny-qwen3")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[dtype])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)

    def matrix(name: str, rows: int, cols: int, scale: float, keep_bias_dim: bool = False) -> None:
        a = rng.standard_normal((rows, cols), dtype=np.float32)
        a *= scale
        if keep_bias_dim:  # do not write into residual dimension 0, which carries the constant bias input
            a[0] = 0.0
        if dtype == "f16":
            w.add_tensor(name, a.astype(np.float16))
        elif dtype == "q8_0" and cols % 32 == 0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    tied = n_vocab is not None if tie_embeddings is None else tie_embeddings
    if favour is None:
        favour = {} if tied else dict(DEFAULT_FAVOUR)
    emb = rng.standard_normal((vocab, n_embd), dtype=np.float32) * np.float32((logit_scale if tied else 1.0) / np.sqrt(n_embd))
    if not tied:
        emb[:, 0] = 1.0  # a constant residual component: after the final norm it acts as a bias input
    w.add_tensor("token_embd.weight", emb.astype(np.float16) if dtype == "f16" else emb)
    for i in range(n_layer):
        b = f"blk.{i}"
        norm(f"{b}.attn_norm.weight", n_embd)
        matrix(f"{b}.attn_q.weight", n_head * head_dim, n_embd, 1 / np.sqrt(n_embd))
        matrix(f"{b}.attn_k.weight", n_head_kv * head_dim, n_embd, 1 / np.sqrt(n_embd))
        matrix(f"{b}.attn_v.weight", n_head_kv * head_dim, n_embd, 1 / np.sqrt(n_embd))
        norm(f"{b}.attn_q_norm.weight", head_dim)
        norm(f"{b}.attn_k_norm.weight", head_dim)
        matrix(f"{b}.attn_output.weight", n_embd, n_head * head_dim, 1 / np.sqrt(n_head * head_dim), not tied)
        norm(f"{b}.ffn_norm.weight", n_embd)
        matrix(f"{b}.ffn_gate.weight", n_ff, n_embd, 1 / np.sqrt(n_embd))
        matrix(f"{b}.ffn_up.weight", n_ff, n_embd, 1 / np.sqrt(n_embd))
        matrix(f"{b}.ffn_down.weight", n_embd, n_ff, 1 / np.sqrt(n_ff), not tied)
    norm("output_norm.weight", n_embd)
    if not tied:
        out = rng.standard_normal((vocab, n_embd), dtype=np.float32) * np.float32(logit_scale / np.sqrt(n_embd))
        out[:, 0] = 0.0
        byte_map = bytes_to_unicode()
        for text, bias in favour.items():
            key = text if text in ids else "".join(byte_map[c] for c in text.encode())
            out[ids[key]] *= np.float32(0.25)  # mostly bias: damp the token's random (context-dependent) part
            out[ids[key], 0] = np.float32(bias / 0.72)  # the bias input is about 0.72 after the final norm
        w.add_tensor("output.weight", out.astype(np.float16) if dtype == "f16" else out)

    with replacing(p) as tmp:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return p


DEMO_SETTINGS: dict[str, int] = {
    "branches": 8, "parallel": 8, "interval": 16, "max_tokens": 64, "answer_tokens": 24, "probe_tokens": 8,
}
"""`autotts collect` settings the compact tiny model is tuned for (see DEFAULT_FAVOUR): Δ = 16, a 64-token thinking
cap, 24 answer tokens, 8-token probes. Its branches then end in every way and a collection of a few questions takes
seconds on one CPU core. The real defaults (Δ = 500, 40,000 thinking tokens) would only make it ramble longer."""

DEMO_QUESTIONS: list[dict[str, str]] = [
    {"question": "What is 1+1?", "gold_answer": "2"},
    {"question": "Compute 3*7.", "gold_answer": "21"},
    {"question": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "gold_answer": "\\frac{3}{4}"},
    {"question": "How many primes are below 10?", "gold_answer": "4"},
]
"""A few toy questions for the demo collection (the tiny model's answers are noise; the machinery is the point)."""


def main(argv: list[str] | None = None) -> int:
    """`python -m core.collect.tiny_model [PATH] [--qwen3-0.6b-shape]`: write the tiny model (or a random-weight
    model of Qwen3-0.6B's shape) and print how to collect with it."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m core.collect.tiny_model", description=main.__doc__)
    ap.add_argument("path", nargs="?", default="tiny-qwen3.gguf", help="where to write the GGUF (default: %(default)s)")
    ap.add_argument("--qwen3-0.6b-shape", dest="big", action="store_true",
                    help="the real Qwen3-0.6B tensor shapes (~1.2 GB, f16; for speed measurements only)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    args = ap.parse_args(argv)
    path = build_tiny_qwen3(args.path, seed=args.seed, **(QWEN3_0_6B_SHAPE if args.big else {}))
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.1f} MB, random weights: its text is noise)")
    if not args.big:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO_SETTINGS.items())
        print("collect with the settings it is tuned for:")
        print(f"  autotts collect {path} QUESTIONS.jsonl OUT {flags} --threads 1")
        print("or serve it over HTTP:")
        print(f"  python -m llama_cpp.server --model {path} --host 127.0.0.1 --port 8000 --n_ctx 4096")
        print("(`autotts collect --demo` does all of this with a few built-in questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
