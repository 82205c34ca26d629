"""Live solving cost and speed: CMC (β = 0.5 by default) against SC@64 on a few questions, through `LiveSolver` and
the batched llama.cpp engine — tokens charged, probe tokens, branches, wall time, decode calls — and, with
--blocking, the same controllers through the single-branch question calls (what batching buys).

The model defaults to the random-weight Qwen3-0.6B-shaped f16 GGUF that benchmarks/bench_collect.py builds
(~1.2 GB, built once): its answers are noise (it never writes `</think>` or closes a probe's box, so every branch
thinks to --max-tokens, gets `</think>` forced and --answer-tokens more), so accuracy means nothing here; cost and
batching are the point. With a real Qwen3 GGUF the same command measures real runs.

Usage (CPU here; on a GPU add --n-gpu-layers -1 and realistic sizes, e.g. --interval 500 --max-tokens 4000):
  python benchmarks/bench_solve.py [--model M.gguf] [--n-gpu-layers N] [--threads T] [--questions 3]
         [--controller cmc:beta=0.5] [--baseline sc:n=64] [--interval 16] [--max-tokens 48] [--answer-tokens 4]
         [--probe-tokens 4] [--parallel 64] [--blocking] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.collect.engine import LlamaEngine  # noqa: E402
from core.evaluate import resolve_controller  # noqa: E402
from core.live import BlockingView, LiveSolver, live_settings  # noqa: E402

QUESTIONS = [
    "Find the remainder when 2^100 is divided by 7.",
    "How many positive divisors does 360 have?",
    "What is the sum of the first 50 odd positive integers?",
    "Find the number of ordered pairs of positive integers (a, b) with a + b = 30.",
    "Compute the last two digits of 7^2024.",
]


def default_model() -> Path:
    from core.collect.tiny_model import QWEN3_0_6B_SHAPE, build_tiny_qwen3

    cache = Path(os.environ.get("AUTOTTS_BENCH_CACHE", Path.home() / ".cache" / "autotts" / "bench"))
    path = cache / "qwen3-0.6b-shape-random-f16.gguf"  # the same file bench_collect.py builds
    if not path.is_file():
        print(f"building a random-weight Qwen3-0.6B-shaped model at {path} (~1.2 GB) …", file=sys.stderr)
        build_tiny_qwen3(path, **QWEN3_0_6B_SHAPE)
    return path


def run(solver: LiveSolver, spec: str, texts: list[str], blocking: bool) -> dict[str, Any]:
    ctrl, label = resolve_controller(spec)
    rows = []
    for i, text in enumerate(texts):
        with solver.question(text, index=i) as q:
            t = time.perf_counter()
            answer = ctrl.solve(BlockingView(q) if blocking else q)
            seconds = time.perf_counter() - t
            rows.append({"answer": answer, "tokens": q.tokens, "probe_tokens": q.probe_tokens, "branches": q.num_opened,
                         "seconds": seconds, "extend_calls": q.extend_calls, "probe_calls": q.probe_calls})
    total = {k: sum(r[k] for r in rows) for k in ("tokens", "probe_tokens", "branches", "seconds", "extend_calls", "probe_calls")}
    decoded = total["tokens"] + total["probe_tokens"]
    return {"controller": label + (" (blocking)" if blocking else ""), "questions": rows, **total,
            "tok_s": round(total["tokens"] / total["seconds"], 1) if total["seconds"] else None,
            "all_decoded_tok_s": round(decoded / total["seconds"], 1) if total["seconds"] else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF model (default: a random-weight Qwen3-0.6B-shaped f16 model, built once)")
    ap.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1: all)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    ap.add_argument("--questions", type=int, default=3, help=f"how many of the {len(QUESTIONS)} built-in questions")
    ap.add_argument("--controller", default="cmc:beta=0.5")
    ap.add_argument("--baseline", default="sc:n=64")
    ap.add_argument("--interval", type=int, default=16, help="probe interval Δ")
    ap.add_argument("--max-tokens", type=int, default=48, help="thinking tokens per branch (then </think> is forced)")
    ap.add_argument("--answer-tokens", type=int, default=4)
    ap.add_argument("--probe-tokens", type=int, default=4, help="greedy tokens per probe (random weights never close the box)")
    ap.add_argument("--parallel", type=int, default=64, help="branches the engine holds at once")
    ap.add_argument("--blocking", action="store_true", help="also run both controllers through single-branch calls")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    model = Path(args.model) if args.model else default_model()
    settings = live_settings(interval=args.interval, max_tokens=args.max_tokens, answer_tokens=args.answer_tokens,
                             probe_tokens=args.probe_tokens, seed=1)
    t = time.perf_counter()
    engine = LlamaEngine(model, parallel=args.parallel, branch_tokens=settings.branch_budget(),
                         n_gpu_layers=args.n_gpu_layers, n_threads=args.threads, sampling=settings.sampling)
    solver = LiveSolver(engine, settings=settings)
    texts = QUESTIONS[: args.questions]
    solver.prepare(texts)
    with solver.question("warm-up", index=999) as q:  # allocate the compute graphs outside the timed runs
        q.probe_new_many(2)
    load_s = time.perf_counter() - t
    info = engine.info()
    results = []
    for spec in (args.controller, args.baseline):
        for blocking in (False, True) if args.blocking else (False,):
            r = run(solver, spec, texts, blocking)
            print(json.dumps({k: v for k, v in r.items() if k != "questions"}), file=sys.stderr, flush=True)
            results.append(r)
    engine.close()
    print(f"\nmodel {model.name} ({info['model_desc']}), n_gpu_layers {args.n_gpu_layers}, threads {info['n_threads']}, "
          f"{len(texts)} questions, Δ {args.interval}, thinking cap {args.max_tokens}, answer {args.answer_tokens}, "
          f"probe {args.probe_tokens} tokens, parallel {info['parallel']} (load + warm-up {load_s:.1f}s)")
    print(f"{'controller':<28} {'tokens':>9} {'probe tok':>9} {'branches':>8} {'wall s':>8} {'tok/s':>8} {'decode calls':>12}")
    for r in results:
        print(f"{r['controller']:<28} {r['tokens']:>9,} {r['probe_tokens']:>9,} {r['branches']:>8} {r['seconds']:>8.1f} "
              f"{r['tok_s'] or 0:>8.1f} {r['extend_calls']:>12,}")
    base = next(r for r in results if r["controller"] == resolve_controller(args.baseline)[1])
    main_r = results[0]
    print(f"\n{main_r['controller']}: {main_r['tokens'] / base['tokens']:.1%} of {base['controller']}'s tokens, "
          f"{main_r['seconds'] / base['seconds']:.1%} of its wall time")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "model_info": info, "args": vars(args),
                                               "load_seconds": load_s, "results": results}, indent=2))


if __name__ == "__main__":
    main()
