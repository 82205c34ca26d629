"""Benchmark: `run_controller` on a CMC-like candidate over 4 search environments × 7 β, 100 seeds.

This is what an agent waits for on each full evaluation: static checks, the baselines (computed once per study and
cached in the run store), the sandboxed run (workers, both cores), the integrity audit, scoring and the one-
transaction write. The candidate is CMC's own source written as a candidate module (tests/data/cmc_candidate.py),
so the result must equal the built-in CMC, which is checked.

Environments: Qwen3-4B/{aime24,aime25,hmmt25} and Qwen3-8B/aime24 of the paper's replay data when --replay-dir has
them (default ../shared/replay/autotts), else four synthetic environments (30 questions × 128 branches).

Usage: python benchmarks/bench_run_controller.py [--replay-dir DIR] [--synthetic] [--seeds 100] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_ENVS = ("Qwen3-4B/aime24.json", "Qwen3-4B/aime25.json", "Qwen3-4B/hmmt25.json", "Qwen3-8B/aime24.json")


def environments(replay_dir: Path, synthetic: bool, tmp: Path) -> tuple[list[Path], str]:
    paths = [replay_dir / p for p in PAPER_ENVS]
    if not synthetic and all(p.is_file() for p in paths):
        return paths, "paper replay data"
    from core.store import save_environment
    from core.synthetic import generate

    out = []
    for i in range(4):
        env = generate(n_questions=30, n_branches=128, seed=20 + i, model="synthetic", benchmark=f"bench{i}")
        out.append(save_environment(env, tmp / f"bench{i}.json.gz"))
    return out, "synthetic (30 questions × 128 branches each)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay-dir", type=Path, default=REPO.parent / "shared" / "replay" / "autotts")
    ap.add_argument("--synthetic", action="store_true", help="Use synthetic environments even if the data is there.")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="Timed run_controller calls (each a distinct source).")
    ap.add_argument("--level", default="auto", choices=["auto", "strict", "off"], help="Sandbox level.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from core.discovery.service import DiscoveryService
    from core.discovery.study import Study
    from core.evaluate import evaluate
    from mcp_server import tools

    candidate = (REPO / "tests" / "data" / "cmc_candidate.py").read_text()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        paths, source = environments(args.replay_dir, args.synthetic, tmp)
        study = Study.create(tmp / "study", search=paths, heldout=[], n_seeds=args.seeds,
                             sandbox={"timeout_s": 3600.0, "level": args.level})
        svc = DiscoveryService(study)
        t = time.perf_counter()
        for env in study.search_envs():
            for spec, _ in svc.baseline_specs():
                svc.baseline(env, spec)
        baseline_s = time.perf_counter() - t

        times, sandbox_s, reports = [], [], []
        for i in range(args.repeats):
            code = candidate + f"\n# repeat {i}\n"  # a distinct source each time: no duplicate short-cut
            t = time.perf_counter()
            report = tools.run_controller(svc, code, name=f"cmc-bench-{i}")
            times.append(time.perf_counter() - t)
            if report.status != "ok":
                print(report.text(), file=sys.stderr)
                return 1
            sandbox_s.append(report.seconds)
            reports.append(report)

        # exactness: the candidate's numbers are the built-in CMC's
        rows = svc.store.results(reports[-1].run_id)
        mismatches = []
        for row in rows:
            env = study.search_envs([row.env])[0]
            ref = evaluate(env, f"cmc:beta={row.beta:g}", study.seeds)
            if (row.accuracy, row.avg_tokens) != (ref.accuracy, ref.avg_tokens):
                mismatches.append((row.env, row.beta))
        run = svc.store.run(reports[-1].run_id)
        episodes = len(paths) * len(study.betas) * args.seeds * sum(e.n_questions for e in study.search_envs()) // len(paths)
        result = {
            "environments": [e for e in study.search_names], "data": source, "betas": list(study.betas),
            "seeds": args.seeds, "episodes": episodes, "cpus": os.cpu_count(),
            "isolation": run.isolation.level if run.isolation else None,
            "workers": run.isolation.workers if run.isolation else None,
            "audit_checked": run.audit.checked if run.audit else None,
            "baselines_first_time_s": round(baseline_s, 2),
            "run_controller_s": [round(x, 2) for x in times],
            "run_controller_median_s": round(statistics.median(times), 2),
            "sandbox_s_median": round(statistics.median(sandbox_s), 2),
            "episodes_per_s": round(episodes / statistics.median(times)),
            "equals_builtin_cmc": not mismatches,
        }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"run_controller, CMC-like candidate, {len(result['environments'])} environments × "
              f"{len(result['betas'])} β × {args.seeds} seeds = {episodes:,} episodes ({source})")
        print(f"  sandbox {result['isolation']}, {result['workers']} workers, audit {result['audit_checked']} episodes")
        print(f"  baselines (first call, then cached): {baseline_s:.2f} s")
        print(f"  run_controller: {', '.join(f'{x:.2f}' for x in times)} s "
              f"(median {result['run_controller_median_s']} s, {result['episodes_per_s']:,} episodes/s)")
        print(f"  equals built-in CMC exactly: {result['equals_builtin_cmc']}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
