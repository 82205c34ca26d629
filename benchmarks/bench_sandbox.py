"""Benchmark: scoring by construction against the previous release's in-worker fast path, side by side.

Each row is one whole `core.sandbox.run_candidate` call in a fresh process: CMC written as a candidate, over
* search: Qwen3-{0.6B,1.7B,4B,8B}/aime24 × 7 β × 100 seeds (84,000 episodes), the paper's search split;
* held-out: Qwen3-{0.6B,1.7B,4B,8B}/{aime25,hmmt25} × 7 β × 100 seeds (168,000 episodes).
Two candidate forms: `paper API` (tests/data/cmc_candidate.py: one `probe_more` call per branch step) and
`batch calls` (tests/data/cmc_batched_candidate.py: `probe_more_many` per burst step, like the built-in).
The previous fast path (workers holding the replay tables, audited by a re-run of 30 episodes per environment)
is the code at `--baseline-ref`, extracted with `git archive` and run with the same interpreter; the two paths
alternate within each repeat so that machine load hits both alike. Every row checks that the candidate's
per-environment accuracy and tokens equal the built-in CMC's.

Usage: python benchmarks/bench_sandbox.py [--replay-dir DIR] [--baseline-ref REF] [--seeds 100] [--repeats 1]
       [--rows search,heldout] [--forms paper,batch] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B")
ROWS = {"search": ("aime24",), "heldout": ("aime25", "hmmt25")}
FORMS = {"paper": "cmc_candidate.py", "batch": "cmc_batched_candidate.py"}
BETAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
DEFAULT_BASELINE = "0e4f858"
"""The last release whose workers held the replay tables (before scoring by construction)."""

RUNNER = r"""
import json, os, sys, time
from pathlib import Path
from core.evaluate import evaluate, score
from core.sandbox import SandboxSettings, run_candidate
from core.store import load_environment
paths, betas, seeds, candidate = json.loads(sys.argv[1])
envs = [load_environment(p) for p in paths]
source = Path(candidate).read_text()
t = time.perf_counter()
c0 = os.times()
run = run_candidate(source, envs, [{"beta": b} for b in betas], seeds=range(seeds),
                    settings=SandboxSettings(timeout_s=3600))
wall = time.perf_counter() - t
c1 = os.times()
exact = run.ok
if run.ok:
    for env in envs:
        for b in betas:
            mine = score(env, run.results[(env.name, f"beta={b:g}")])
            ref = evaluate(env, f"cmc:beta={b:g}", range(seeds))
            exact = exact and mine.accuracy == ref.accuracy and mine.avg_tokens == ref.avg_tokens
iso, aud = run.isolation, run.audit
get = lambda r, k: r[k] if isinstance(r, dict) else getattr(r, k)
print(json.dumps({"ok": run.ok, "error": run.error, "wall_s": wall,
                  "cpu_s": (c1.user - c0.user) + (c1.system - c0.system)
                           + (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system),
                  "level": get(iso, "level"), "audit_checked": get(aud, "checked"), "audit_passed": get(aud, "passed"),
                  "exact": exact}))
"""


def baseline_tree(ref: str, tmp: Path) -> Path:
    """The baseline's source tree, from `git archive` (only its Python packages are needed)."""
    out = tmp / "baseline"
    out.mkdir()
    archive = tmp / "baseline.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), ref, "core"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out


def measure(code_root: Path, paths: list[Path], seeds: int, candidate: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(code_root)
    arg = json.dumps([[str(p) for p in paths], list(BETAS), seeds, str(candidate)])
    r = subprocess.run([sys.executable, "-c", RUNNER, arg], capture_output=True, text=True, env=env,
                       cwd=str(code_root))
    if r.returncode != 0:
        raise SystemExit(f"benchmark run failed in {code_root}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay-dir", type=Path, default=REPO.parent / "shared" / "replay" / "autotts")
    ap.add_argument("--baseline-ref", default=DEFAULT_BASELINE, help="git ref of the previous fast path ('' skips)")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rows", default="search,heldout")
    ap.add_argument("--forms", default="paper,batch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    table = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        base = baseline_tree(args.baseline_ref, tmp) if args.baseline_ref else None
        for row in args.rows.split(","):
            paths = [args.replay_dir / m / f"{b}.json" for m in MODELS for b in ROWS[row]]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise SystemExit(f"replay data missing: {missing[0]} (pass --replay-dir)")
            episodes = len(paths) * len(BETAS) * args.seeds * 30
            for form in args.forms.split(","):
                candidate = REPO / "tests" / "data" / FORMS[form]
                for rep in range(args.repeats):
                    paths_ab = [("by construction", REPO)] + ([("previous fast path", base)] if base else [])
                    if rep % 2:
                        paths_ab.reverse()
                    for label, root in paths_ab:
                        t = time.strftime("%H:%M:%S")
                        res = measure(root, paths, args.seeds, candidate)
                        res.update(row=row, form=form, path=label, repeat=rep, episodes=episodes,
                                   episodes_per_s=episodes / res["wall_s"], load=os.getloadavg()[0], at=t)
                        table.append(res)
                        print(f"{row:8} {form:6} {label:19} {res['wall_s']:7.1f} s  {res['episodes_per_s']:8.0f} ep/s "
                              f"cpu {res['cpu_s']:6.1f} s  level {res['level']}  audit {res['audit_checked']} "
                              f"{'passed' if res['audit_passed'] else 'FAILED'}  exact {res['exact']}  "
                              f"load {res['load']:.1f}", file=sys.stderr)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(f"{'row':8} {'candidate':11} {'path':19} {'wall s':>7} {'ep/s':>7} {'× prev':>7}  level   exact")
        for r in table:
            prev = [p for p in table if p["row"] == r["row"] and p["form"] == r["form"] and p["repeat"] == r["repeat"]
                    and p["path"] == "previous fast path"]
            ratio = f"{r['wall_s'] / prev[0]['wall_s']:.2f}" if prev and r["path"] == "by construction" else ""
            print(f"{r['row']:8} {r['form']:11} {r['path']:19} {r['wall_s']:7.1f} {r['episodes_per_s']:7.0f} "
                  f"{ratio:>7}  {r['level']:7} {r['exact']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
