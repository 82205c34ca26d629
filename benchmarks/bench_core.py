"""Core evaluator benchmark: exactness of all 132 reference rows, and speed.

Measures, in one run:
  1. CMC β=0.5 on Qwen3-0.6B/aime25, 100 seeds, pinned to one core — compiled fast path and the plain-Python
     reference path (question API), median of --repeats runs after a warm-up;
  2. the whole 132-row matrix (`autotts eval … --json`, both cores, a fresh process), checked row by row
     against the paper's evaluator output;
  3. the first result as a user gets it: `autotts eval Qwen3-0.6B/aime25.json -c cmc:beta=0.5`, a fresh process
     pinned to one core (interpreter start, imports, loading the data and the cached kernels, the table), median
     of --repeats runs after one that fills the kernel cache;
  4. optionally (--paper-repo PATH: a checkout of the paper's release), the paper's own evaluator on the same
     environment, so speed ratios come from the same run on the same machine — including the paper's CMC
     (its search's final round, `logs/search_history/r0004/code_base/method.py`) as a whole process on one core.

Usage: python benchmarks/bench_core.py --replay-dir DIR --reference CSV [--paper-repo PATH] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPECS = ["sc:n=64", "asc", "esc", "parallel-probe", "cmc:beta=0,0.2,0.4,0.5,0.6,0.8,1.0"]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_single_core(replay_dir: Path, repeats: int) -> dict:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import numba

    numba.set_num_threads(1)
    from core import evaluate, load_environment

    env = load_environment(replay_dir / "Qwen3-0.6B" / "aime25.json")
    evaluate(env, "cmc:beta=0.5")  # compile / load the cache
    fast = timed(lambda: evaluate(env, "cmc:beta=0.5"), repeats)
    python = timed(lambda: evaluate(env, "cmc:beta=0.5", fast=False), max(1, repeats // 2))
    pp_python = timed(lambda: evaluate(env, "parallel-probe", fast=False), 1)
    return {"cmc_beta0.5_compiled_s": statistics.median(fast), "cmc_beta0.5_python_s": statistics.median(python),
            "parallel_probe_python_s": pp_python[0]}


def bench_matrix(replay_dir: Path, reference: Path) -> dict:
    cmd = [sys.executable, "-m", "autotts", "eval", str(replay_dir), "--json", "--no-progress"]
    for s in SPECS:
        cmd += ["-c", s]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, cwd=REPO).stdout
    wall = time.perf_counter() - t
    rows = json.loads(out)["rows"]
    with reference.open() as f:
        ref = {(r["env"], r["controller"]): r for r in csv.DictReader(f)}
    mismatches = []
    for row in rows:
        key = (row["env"], "sc@64" if row["controller"] == "sc:n=64" else row["controller"])
        want = ref[key]
        if f"{row['accuracy']:.2f}" != want["accuracy"] or abs(row["avg_tokens"] - float(want["avg_tokens"])) > 1e-6:
            mismatches.append({"row": key, "ours": [row["accuracy"], row["avg_tokens"]],
                               "paper": [want["accuracy"], want["avg_tokens"]]})
    return {"matrix_rows": len(rows), "matrix_reference_rows": len(ref), "matrix_mismatches": mismatches,
            "matrix_wall_s": wall}


PAPER_PEER = r"""
import sys, time, json, os
sys.path.insert(0, os.path.join(sys.argv[1], "efficient_reasoning_controller", "eval"))
os.chdir(os.path.join(sys.argv[1], "efficient_reasoning_controller"))
from data_loader import ModelandTask
import types
# the release's method.py ends in an empty template class (not valid Python): load the baselines above it
src = open(os.path.join("eval", "method.py")).read()
method = types.ModuleType("method")
exec(compile(src[: src.index("class OptimalController")], "method.py", "exec"), method.__dict__)
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
task = ModelandTask("Qwen3-0.6B", "aime25")
out = {}
for label, m in [("parallel_probe", method.Parallel_Probe(num_chains=64, T=40, prune_patience=7, warm_up=15)),
                 ("asc", method.ASCMethod(max_samples=64, threshold=0.95))]:
    t = time.perf_counter(); r = task.evaluate(m); out[label] = [time.perf_counter() - t, r["accuracy"], r["avg_cost"]]
sys.path.insert(0, sys.argv[2])
from core.controllers.cmc import ConfidenceMomentumController
class CMCInPaperHarness:
    def __init__(self): self.c = ConfidenceMomentumController(beta=0.5)
    def __call__(self, q): return self.c.solve(q)
    def description(self): return "cmc"
t = time.perf_counter(); r = task.evaluate(CMCInPaperHarness()); out["our_cmc_in_paper_env"] = [time.perf_counter() - t, r["accuracy"], r["avg_cost"]]
from data_loader import Question
import json as _j
infos = _j.load(open(os.path.join("test_environment", "Qwen3-0.6B", "aime25.json")))
calls = 0; t = time.perf_counter()
for seed in range(20):
    for info in infos:
        q = Question(info, seed=seed)
        for _ in range(64):
            _, i, fin = q.probe_new(); calls += 1
            while not fin:
                _, fin = q.probe_more(i); calls += 1
out["per_call_ns"] = (time.perf_counter() - t) / calls * 1e9
print(json.dumps(out))
"""


def _one_core() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _process(cmd: list[str], cwd: Path) -> tuple[float, float, bytes]:
    """(wall s, CPU s of the child, stdout) of one fresh process pinned to one core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, cwd=cwd, preexec_fn=_one_core).stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def bench_eval_process(replay_dir: Path, repeats: int) -> dict:
    env = replay_dir / "Qwen3-0.6B" / "aime25.json"
    cmd = [sys.executable, "-m", "autotts", "eval", str(env), "-c", "cmc:beta=0.5", "--no-progress"]
    row = json.loads(_process([*cmd, "--json"], REPO)[2])["rows"][0]  # also fills the kernel cache
    runs = [_process(cmd, REPO)[:2] for _ in range(repeats)]
    return {"eval_process_s": statistics.median(w for w, _ in runs), "eval_process_cpu_s": statistics.median(c for _, c in runs),
            "eval_process_min_s": min(w for w, _ in runs), "eval_process_row": [row["accuracy"], row["avg_tokens"]]}


PAPER_CMC_PROCESS = r"""
import sys, os, json, types
os.chdir(os.path.join(sys.argv[1], "efficient_reasoning_controller"))
sys.path.insert(0, "eval")
from data_loader import ModelandTask
method = types.ModuleType("paper_cmc")
src = open(os.path.join("logs", "search_history", "r0004", "code_base", "method.py")).read()
exec(compile(src, "method.py", "exec"), method.__dict__)
r = ModelandTask("Qwen3-0.6B", "aime25").evaluate(method.OptimalController({"beta": 0.5}))
print(json.dumps([r["accuracy"], r["avg_cost"]]))
"""


def bench_paper_eval_process(paper_repo: Path) -> dict:
    wall, cpu, out = _process([sys.executable, "-c", PAPER_CMC_PROCESS, str(paper_repo)], REPO)
    return {"paper_eval_process_s": wall, "paper_eval_process_cpu_s": cpu,
            "paper_eval_process_row": json.loads(out.decode().strip().splitlines()[-1])}


def bench_paper(paper_repo: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PAPER_PEER, str(paper_repo), str(REPO)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_ours_same_settings(replay_dir: Path) -> dict:
    code = r"""
import os, sys, time, json
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import numba; numba.set_num_threads(1)
from core import evaluate, load_environment
env = load_environment(sys.argv[1])
out = {}
for spec in ("parallel-probe", "asc"):
    evaluate(env, spec)
    t = time.perf_counter(); r = evaluate(env, spec); out[spec + "_compiled"] = [time.perf_counter() - t, r.accuracy, r.avg_tokens]
    t = time.perf_counter(); r = evaluate(env, spec, fast=False); out[spec + "_python"] = [time.perf_counter() - t, r.accuracy, r.avg_tokens]
calls = 0; t = time.perf_counter()
for seed in range(20):
    for qi in range(env.n_questions):
        q = env.question(qi, seed)
        for _ in range(64):
            _, i, fin = q.probe_new(); calls += 1
            while not fin:
                _, fin = q.probe_more(i); calls += 1
out["per_call_ns"] = (time.perf_counter() - t) / calls * 1e9
print(json.dumps(out))
"""
    out = subprocess.run([sys.executable, "-c", code, str(replay_dir / "Qwen3-0.6B" / "aime25.json")], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay-dir", type=Path, required=True, help="folder of the paper's replay data (<Model>/<bench>.json)")
    ap.add_argument("--reference", type=Path, required=True, help="reference_eval.csv (the paper's evaluator output)")
    ap.add_argument("--paper-repo", type=Path, help="checkout of the paper's release, to time its evaluator in the same run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    result = {"cpu_count": os.cpu_count()}
    result.update(bench_matrix(args.replay_dir, args.reference))
    if args.paper_repo:
        result["paper_evaluator_s"] = bench_paper(args.paper_repo)
        result["ours_same_settings_s"] = bench_ours_same_settings(args.replay_dir)
    result.update(bench_eval_process(args.replay_dir, args.repeats))
    if args.paper_repo:
        result.update(bench_paper_eval_process(args.paper_repo))
    result.update(bench_single_core(args.replay_dir, args.repeats))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"132-row matrix: {result['matrix_rows']} rows, {len(result['matrix_mismatches'])} mismatches, "
          f"{result['matrix_wall_s']:.2f} s wall (fresh process, both cores)")
    print(f"CMC β=0.5, Qwen3-0.6B/aime25, 100 seeds, one core: compiled {result['cmc_beta0.5_compiled_s']:.3f} s, "
          f"plain-Python question API {result['cmc_beta0.5_python_s']:.2f} s")
    print(f"Parallel-Probe, plain-Python question API, one core: {result['parallel_probe_python_s']:.2f} s")
    line = (f"autotts eval Qwen3-0.6B/aime25 -c cmc:beta=0.5, whole process, one core: median "
            f"{result['eval_process_s']:.2f} s (min {result['eval_process_min_s']:.2f} s, CPU {result['eval_process_cpu_s']:.2f} s)")
    if args.paper_repo:
        p = result["paper_eval_process_s"]
        line += (f" | the paper's evaluator with its CMC, whole process: {p:.1f} s ({p / result['eval_process_s']:.0f}×; "
                 f"accuracy/tokens {result['paper_eval_process_row']} vs ours {result['eval_process_row']})")
    print(line)
    if args.paper_repo:
        paper, ours = result["paper_evaluator_s"], result["ours_same_settings_s"]
        for spec, key in (("parallel-probe", "parallel_probe"), ("asc", "asc")):
            p = paper[key][0]
            print(f"{spec}: paper evaluator {p:.2f} s | ours compiled {ours[spec + '_compiled'][0]:.3f} s "
                  f"({p / ours[spec + '_compiled'][0]:.0f}×) | ours Python {ours[spec + '_python'][0]:.2f} s "
                  f"({p / ours[spec + '_python'][0]:.1f}×)")
        print(f"environment overhead per probe_new/probe_more call (64 branches run to the end, incl. question setup): "
              f"paper {paper['per_call_ns']:.0f} ns, ours {ours['per_call_ns']:.0f} ns "
              f"({paper['per_call_ns'] / ours['per_call_ns']:.1f}×)")
        cm = paper["our_cmc_in_paper_env"][0]
        print(f"our CMC solve() inside the paper's environment: {cm:.2f} s; in ours (Python) "
              f"{result['cmc_beta0.5_python_s']:.2f} s ({cm / result['cmc_beta0.5_python_s']:.1f}×), "
              f"compiled {result['cmc_beta0.5_compiled_s']:.3f} s ({cm / result['cmc_beta0.5_compiled_s']:.0f}×)")


if __name__ == "__main__":
    main()
