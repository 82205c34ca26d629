"""Does the compiled replay kernel of `one-batch` pay? Its compiled fast path against its plain-Python `solve()`
(through the question API) on one replay environment, 100 seeds, pinned to one core, per β; median of --repeats
runs after a warm-up run (which also fills the kernel cache). Both paths are checked to agree episode by episode.

Usage: python benchmarks/bench_one_batch.py [ENV.json] [--betas 0,0.5,1] [--repeats 3] [--seeds 100] [--json]
(default environment: the bundled synthetic demo; the README's figures use Qwen3-0.6B/aime25 of the paper's data)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core.controllers import parse_spec  # noqa: E402
from core.evaluate import resolve_controller, run_episodes  # noqa: E402
from core.store import load_environment  # noqa: E402
from replay_data import DEMO_PATH  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("env", nargs="?", default=str(DEMO_PATH))
    ap.add_argument("--betas", default="0,0.5,1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the README's speed table
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    env = load_environment(args.env)
    seeds = list(range(args.seeds))
    rows = []
    for beta in [float(b) for b in args.betas.split(",")]:
        (spec,) = parse_spec(f"one-batch:beta={beta:g}")
        ctrl = resolve_controller(spec)[0]
        timings = {}
        results = {}
        for label, fast in (("compiled", True), ("python", False)):
            results[label] = run_episodes(env, ctrl, seeds, fast=fast)  # warm-up (compiles the kernel once)
            runs = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                run_episodes(env, ctrl, seeds, fast=fast)
                runs.append(time.perf_counter() - t)
            timings[label] = statistics.median(runs)
        same = (results["compiled"].answers == results["python"].answers
                and np.array_equal(results["compiled"].tokens, results["python"].tokens))
        rows.append({"beta": beta, "compiled_s": round(timings["compiled"], 4), "python_s": round(timings["python"], 3),
                     "speedup": round(timings["python"] / timings["compiled"], 1), "identical": same})
    if args.json:
        print(json.dumps({"env": env.name, "seeds": args.seeds, "rows": rows}, indent=2))
        return
    print(f"one-batch on {env.name}, {args.seeds} seeds, one core (median of {args.repeats})")
    print(f"{'beta':>5} {'compiled s':>11} {'python s':>9} {'speed-up':>9}  identical")
    for r in rows:
        print(f"{r['beta']:>5g} {r['compiled_s']:>11.4f} {r['python_s']:>9.3f} {r['speedup']:>8.1f}x  {r['identical']}")


if __name__ == "__main__":
    main()
