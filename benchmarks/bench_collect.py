"""Collector throughput: aggregate branch tokens/s of `autotts collect`'s llama.cpp engine at 1, 8, 32 and 64
parallel branches (probes, sampling and confidence signals included), beside llama.cpp's own batched decode rate
(`llama-batched-bench`, S_TG) for the same model on the same machine.

The model defaults to a random-weight GGUF of the real Qwen3-0.6B shape (28 layers, hidden 1024, FFN 3072, 16
heads, 8 KV heads, head dim 128, 151,936-token vocabulary, f16), built on first use (~1.2 GB): its output is
noise, which is all a speed test needs. Random weights never emit `</think>` or close a probe's box, so every
branch thinks up to --tokens (a probe every --interval tokens, each decoding all --probe-tokens greedy tokens)
and then gets `</think>` forced and a few answer tokens.

Two rates per width:
  decode tok/s  branch tokens / (wall time − prompt prefill time): comparable with llama-batched-bench's S_TG,
                which also excludes the prompt; probes (their prefill and greedy steps), forced tokens, sampling,
                signals and Python overhead are all inside.
  all-in tok/s  branch tokens / wall time, prompt prefill included.

With --http-servers 1,2 it also collects through llama-cpp-python's OpenAI-compatible server, first on one
server and then spread over two (same requests in flight per server): aggregate branch tokens/s and each
server's share, the multi-server scheduling's scaling.

Usage (CPU here; on a GPU add --n-gpu-layers -1 and larger --tokens/--interval, e.g. 2000/500):
  python benchmarks/bench_collect.py [--model M.gguf] [--n-gpu-layers N] [--parallel 1,8,32,64]
         [--tokens 256] [--interval 128] [--probe-tokens 8] [--batched-bench PATH] [--json OUT]
  python benchmarks/bench_collect.py --skip-engine --http-servers 1,2 [--http-parallel 4] [--http-model M.gguf]

llama-batched-bench is not part of the llama-cpp-python wheel; build it from llama.cpp at the same version
(`cmake -B b -DLLAMA_CURL=OFF [-DGGML_CUDA=on] && cmake --build b --target llama-batched-bench`) and pass its
path, or put it on PATH / in $LLAMA_BATCHED_BENCH. Without it only our rates are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.collect import CollectSettings, QuestionItem, SamplingParams, chat_prompt, collect  # noqa: E402
from core.collect.engine import LlamaEngine  # noqa: E402

QUESTION = "Find the remainder when 2^100 is divided by 7."


def default_model() -> Path:
    from core.collect.tiny_model import QWEN3_0_6B_SHAPE, build_tiny_qwen3

    cache = Path(os.environ.get("AUTOTTS_BENCH_CACHE", Path.home() / ".cache" / "autotts" / "bench"))
    path = cache / "qwen3-0.6b-shape-random-f16.gguf"
    if not path.is_file():
        print(f"building a random-weight Qwen3-0.6B-shaped model at {path} (~1.2 GB) …", file=sys.stderr)
        build_tiny_qwen3(path, **QWEN3_0_6B_SHAPE)
    return path


class Timed:
    """Wraps an engine to time its prompt prefills (multi-token decodes at position 0) and probes."""

    def __init__(self, engine: LlamaEngine):
        self.engine = engine
        self.prefill_s = 0.0
        self.probe_s = 0.0
        self.probes = 0
        call = engine._call

        def timed_call(entries: Any, idxs: list[int], on_rows: Any) -> None:
            prefill = any(entries[i][2] == 0 and len(entries[i][1]) > 1 for i in idxs)
            t = time.perf_counter()
            call(entries, idxs, on_rows)
            if prefill:
                self.prefill_s += time.perf_counter() - t

        engine._call = timed_call  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def probe(self, branches: Any, text: str, max_tokens: int) -> Any:
        t = time.perf_counter()
        out = self.engine.probe(branches, text, max_tokens)
        self.probe_s += time.perf_counter() - t
        self.probes += len(branches)
        return out


def run_ours(model: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    settings = CollectSettings(branches=n, interval=args.interval, max_tokens=args.tokens, answer_tokens=args.answer_tokens,
                               probe_tokens=args.probe_tokens, instruction="", seed=1,
                               sampling=SamplingParams(temperature=0.7, top_p=0.95, top_k=20))
    engine = LlamaEngine(model, parallel=n, branch_tokens=settings.branch_budget(), n_gpu_layers=args.n_gpu_layers,
                         n_threads=args.threads, kv_unified=args.kv_unified, sampling=settings.sampling)
    # warm-up: allocate the compute graphs outside the timed run
    p = engine.add_prompt(chat_prompt(QUESTION, ""))
    warm = [engine.open_branch(p, i) for i in range(min(n, 2))]
    from core.collect.backend import Extend

    engine.extend({b: Extend(2) for b in warm})
    for b in warm:
        engine.close_branch(b)
    engine.release_prompt(p)
    timed = Timed(engine)
    last: dict[str, Any] = {}

    def progress(pr: Any) -> None:
        last.update(tokens=pr.tokens, elapsed=pr.elapsed)

    questions = [QuestionItem(QUESTION if i == 0 else f"{QUESTION} (variant {i})", "2") for i in range(args.questions)]
    with tempfile.TemporaryDirectory() as tmp:
        collect(timed, questions, settings, Path(tmp) / "run", progress=progress)  # type: ignore[arg-type]
    engine.close()
    tokens, elapsed = last["tokens"], last["elapsed"]
    return {
        "parallel": n, "tokens": tokens, "seconds": round(elapsed, 2),
        "prefill_seconds": round(timed.prefill_s, 2), "probe_seconds": round(timed.probe_s, 2), "probes": timed.probes,
        "decode_tok_s": round(tokens / (elapsed - timed.prefill_s), 2),
        "all_in_tok_s": round(tokens / elapsed, 2),
    }


def start_server(model: Path, threads: int, n_ctx: int, log_dir: Path) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port (its log goes to a file: a full pipe
    would block it)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(log_dir / f"server-{port}.log", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                             "--n_threads_batch", str(threads)], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"llama_cpp.server did not start; see {log.name}")


def run_http(model: Path, n_servers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Aggregate branch tokens/s of one collection spread over `n_servers` llama_cpp.server processes, each taking
    --http-parallel concurrent requests (the same per server whatever the count)."""
    from core.collect.openai_backend import OpenAIBackend

    settings = CollectSettings(branches=args.http_branches, interval=args.interval, max_tokens=args.tokens,
                               answer_tokens=args.answer_tokens, probe_tokens=args.probe_tokens, seed=1,
                               sampling=SamplingParams(temperature=0.7, top_p=0.95, top_k=20))
    questions = [QuestionItem(f"{QUESTION} (variant {i})", "2") for i in range(args.http_questions)]
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = []
            for _ in range(n_servers):
                proc, url = start_server(model, args.http_threads, args.http_ctx, Path(tmp))
                procs.append(proc)
                urls.append(url)
            bk = OpenAIBackend(urls, parallel=args.http_parallel, timeout=120, retries=2)
            result = collect(bk, questions, settings, Path(tmp) / "run")
            bk.close()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    el = result.elapsed
    return {"servers": n_servers, "parallel_per_server": args.http_parallel, "tokens": result.tokens,
            "seconds": round(el, 2), "all_in_tok_s": round(result.tokens / el, 1),
            "per_server_tok_s": [round(s.tokens / el, 1) for s in result.servers]}


def find_batched_bench(explicit: str | None) -> str | None:
    for cand in (explicit, os.environ.get("LLAMA_BATCHED_BENCH"), shutil.which("llama-batched-bench")):
        if cand and Path(cand).is_file():
            return cand
    return None


def run_batched_bench(binary: str, model: Path, widths: list[int], n_prompt: int, args: argparse.Namespace) -> dict[int, float]:
    ctx = max(widths) * (n_prompt + args.bb_ntg) + 256
    cmd = [binary, "-m", str(model), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(n_prompt),
           "-ntg", str(args.bb_ntg), "-npl", ",".join(map(str, widths)), "-ngl", str(args.n_gpu_layers)]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    if args.kv_unified:
        cmd += ["-kvu"]
    print("running", " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[2] or ""):
            rates[int(cells[2])] = float(cells[7])  # B, S_TG t/s
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF model (default: a random-weight Qwen3-0.6B-shaped f16 model, built once)")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parallel", default="1,8,32,64", help="comma-separated widths")
    ap.add_argument("--tokens", type=int, default=256, help="thinking tokens per branch (then </think> is forced)")
    ap.add_argument("--interval", type=int, default=128, help="probe interval Δ")
    ap.add_argument("--probe-tokens", type=int, default=8, help="greedy tokens per probe (random weights never close the box)")
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--kv-unified", action="store_true")
    ap.add_argument("--questions", type=int, default=1, help="questions per width (each gets as many branches as the width)")
    ap.add_argument("--batched-bench", help="path to llama.cpp's llama-batched-bench")
    ap.add_argument("--bb-ntg", type=int, default=None,
                    help="tokens generated per sequence by llama-batched-bench (default: as many as a branch of ours, "
                         "so that both attend over the same context lengths)")
    ap.add_argument("--http-servers", default="", metavar="LIST",
                    help="also collect through llama-cpp-python's server with this many servers, e.g. 1,2 (one "
                         "collection spread over them, --http-parallel requests each)")
    ap.add_argument("--http-parallel", type=int, default=4, help="concurrent requests per server")
    ap.add_argument("--http-model", help="GGUF for the servers (default: the compact tiny model: the rows then measure "
                                         "the client, HTTP and scheduling, not a model)")
    ap.add_argument("--http-threads", type=int, default=1, help="llama.cpp threads per server")
    ap.add_argument("--http-ctx", type=int, default=2048, help="--n_ctx per server (it allocates n_ctx × vocab logits)")
    ap.add_argument("--http-questions", type=int, default=4)
    ap.add_argument("--http-branches", type=int, default=8)
    ap.add_argument("--skip-engine", action="store_true", help="only the --http-servers rows")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.bb_ntg is None:
        args.bb_ntg = args.tokens + args.answer_tokens
    http_rows = []
    if args.http_servers:
        if args.http_model:
            http_model = Path(args.http_model)
        else:
            from core.collect.tiny_model import build_tiny_qwen3

            http_model = build_tiny_qwen3(Path(tempfile.mkdtemp()) / "tiny-qwen3.gguf")
        for k in [int(x) for x in args.http_servers.split(",")]:
            r = run_http(http_model, k, args)
            print(json.dumps(r), file=sys.stderr, flush=True)
            http_rows.append(r)
        print(f"\nHTTP: {http_model.name}, {args.http_questions} questions × {args.http_branches} branches, "
              f"{args.tokens} thinking tokens, {args.http_parallel} requests per server, {args.http_threads} thread(s) each")
        print(f"{'servers':>8} {'tok/s (all)':>12}  per server")
        for r in http_rows:
            print(f"{r['servers']:>8} {r['all_in_tok_s']:>12.1f}  {', '.join(f'{x:.1f}' for x in r['per_server_tok_s'])}")
        if args.json and args.skip_engine:
            Path(args.json).write_text(json.dumps({"http_rows": http_rows, "args": vars(args)}, indent=2))
    if args.skip_engine:
        return
    model = Path(args.model) if args.model else default_model()
    widths = [int(x) for x in args.parallel.split(",")]
    probe_engine = LlamaEngine(model, parallel=1, branch_tokens=16)
    n_prompt = probe_engine.count_tokens(chat_prompt(QUESTION, ""))
    info = probe_engine.info()
    probe_engine.close()
    rows = []
    binary = find_batched_bench(args.batched_bench)
    ref: dict[int, float] = {}
    for n in widths:  # ours and llama.cpp's back to back per width, so that both see the same machine load
        r = run_ours(model, n, args)
        print(json.dumps(r), file=sys.stderr, flush=True)
        rows.append(r)
        if binary:
            ref.update(run_batched_bench(binary, model, [n], n_prompt, args))
            print(json.dumps({"parallel": n, "llama_cpp_tg_tok_s": ref.get(n)}), file=sys.stderr, flush=True)
    print(f"\nmodel {model.name} ({info['model_desc']}), n_gpu_layers {args.n_gpu_layers}, prompt {n_prompt} tokens, "
          f"{args.tokens} thinking tokens per branch, probe every {args.interval} ({args.probe_tokens} greedy tokens), "
          f"kv {'unified' if args.kv_unified else 'one stream per branch'}")
    print(f"{'branches':>8} {'decode tok/s':>13} {'all-in tok/s':>13} {'probe time':>11} {'llama.cpp S_TG':>15} {'ratio':>7}")
    for r in rows:
        base = ref.get(r["parallel"])
        r["llama_cpp_tg_tok_s"] = base
        r["ratio"] = round(r["decode_tok_s"] / base, 3) if base else None
        share = r["probe_seconds"] / r["seconds"]
        base_s = f"{base:.1f}" if base else "n/a"
        ratio_s = f"{r['ratio']:.0%}" if base else ""
        print(f"{r['parallel']:>8} {r['decode_tok_s']:>13.1f} {r['all_in_tok_s']:>13.1f} {share:>10.1%} "
              f"{base_s:>15} {ratio_s:>7}")
    if not binary:
        print("(llama-batched-bench not found: pass --batched-bench PATH for llama.cpp's own rate)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "model_info": info, "args": vars(args),
                                               "prompt_tokens": n_prompt, "rows": rows, "http_rows": http_rows},
                                              indent=2))


if __name__ == "__main__":
    main()
