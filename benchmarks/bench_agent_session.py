"""Benchmark: the characters of tool output a discovery session costs an agent's context.

A scripted client replays the kind of session the issue reports (a coding agent on the paper's split: search
AIME24 of the four Qwen3 models, AIME25 and HMMT25 held out) through a real MCP client connected in-process to
the server: the brief and the controller format, list_environments and get_baselines, 20+ run_controller calls on
variants of one controller family (full runs, quick runs, single-β probes), the leaderboard now and then, a digest
of the best run, the branch view of its worst episodes and one filtered action list, comparisons between runs,
and one source read back. It reports the calls, the total characters of tool output, the largest single result,
the characters per tool, and checks that what the agent needs is in the text (the objective, standard errors,
quick-run labels, stop reasons, paired tests). Goal: ≤ 100,000 characters in all, no result over 8,000.

Environments: the paper's replay data under --replay-dir (default ../shared/replay/autotts), else four synthetic
environments. Seeds default to 10 to keep the replay short on a small machine (the characters barely depend on
it); --seeds 100 is the study default.

Usage: python benchmarks/bench_agent_session.py [--replay-dir DIR] [--seeds 10] [--level auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B")

TEMPLATE = '''\
"""Finish a few branches side by side; stop once the finished answers agree confidently."""

from core.primitives import beta_confidence, vote_stats


class Variant:
    def __init__(self, beta: float = 0.5):
        beta = min(1.0, max(0.0, float(beta)))
        self.width = {w0} + round({w1} * beta)
        self.max_branches = {m0} + round({m1} * beta)
        self.threshold = {t0} + {t1} * beta
        self.min_votes = {v}

    def votes(self, finished):
        return [a for a in finished if {keep}]

    def solve(self, question):
        running, finished, opened = [], [], 0
        while True:
            while len(running) < self.width and opened < self.max_branches:
                try:
                    answer, i, done = question.probe_new()
                except ValueError:
                    break
                opened += 1
                if done:
                    finished.append(answer)
                else:
                    running.append(i)
            if not running:
                break
            for i in list(running):
                answer, done = question.probe_more(i)
                if done:
                    running.remove(i)
                    finished.append(answer)
            winner, top1, top2 = vote_stats(self.votes(finished))
            if winner is not None and top1 >= self.min_votes and beta_confidence(top1, top2) >= self.threshold:
                return winner
        return vote_stats(self.votes(finished) or finished)[0]
'''

BASE = {"w0": 2, "w1": 6, "m0": 4, "m1": 60, "t0": 0.80, "t1": 0.19, "v": 2, "keep": "True"}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("base", {}),
    ("drop-ERR", {"keep": 'a != "ERR"'}),
    ("wider", {"w0": 4, "w1": 8}),
    ("narrow", {"w0": 1, "w1": 3}),
    ("strict", {"t0": 0.90, "t1": 0.09}),
    ("loose", {"t0": 0.70, "t1": 0.25}),
    ("three-votes", {"v": 3}),
    ("cap-32", {"m1": 28}),
    ("cap-48", {"m1": 44}),
    ("drop-ERR-wide", {"keep": 'a != "ERR"', "w0": 4, "w1": 8}),
    ("drop-ERR-strict", {"keep": 'a != "ERR"', "t0": 0.9, "t1": 0.09}),
    ("drop-ERR-3v", {"keep": 'a != "ERR"', "v": 3}),
    ("drop-ERR-w3", {"keep": 'a != "ERR"', "w0": 3, "w1": 7}),
    ("drop-ERR-t85", {"keep": 'a != "ERR"', "t0": 0.85, "t1": 0.14}),
    ("drop-ERR-cap48", {"keep": 'a != "ERR"', "m1": 44}),
    ("drop-ERR-4v", {"keep": 'a != "ERR"', "v": 4, "t0": 0.75}),
    ("drop-ERR-w5", {"keep": 'a != "ERR"', "w0": 5, "w1": 6}),
    ("drop-ERR-best", {"keep": 'a != "ERR"', "w0": 3, "w1": 7, "t0": 0.85, "t1": 0.14}),
]
"""(name, change from BASE) of the full runs; quick runs and probes are added below."""


def variant(change: dict[str, Any]) -> str:
    return TEMPLATE.format(**(BASE | change))


def study_for(folder: Path, replay_dir: Path, seeds: int, level: str) -> tuple[Any, str]:
    from core.discovery.study import Study

    search = [replay_dir / m / "aime24.json" for m in MODELS]
    held = [replay_dir / m / f for m in MODELS for f in ("aime25.json", "hmmt25.json")]
    if all(p.is_file() for p in search + held):
        where = "paper replay data (search: AIME24 of the four Qwen3 models; held out: AIME25, HMMT25)"
    else:
        from core.store import save_environment
        from core.synthetic import generate

        search = [save_environment(generate(n_questions=30, n_branches=128, seed=40 + i, model="synthetic",
                                            benchmark=f"s{i}"), folder.parent / f"s{i}.json.gz") for i in range(4)]
        held = [save_environment(generate(n_questions=30, n_branches=128, seed=90, model="synthetic",
                                          benchmark="held"), folder.parent / "held.json.gz")]
        where = "synthetic (4 × 30 questions × 128 branches)"
    study = Study.create(folder, search=search, heldout=held, n_seeds=seeds,
                         sandbox={"timeout_s": 1800, "level": level})
    return study, where


async def session(server: Any, log: list[dict[str, Any]]) -> None:
    from mcp import Client

    async def call(tool: str, **args: Any) -> tuple[str, dict[str, Any]]:
        t0 = time.perf_counter()
        r = await c.call_tool(tool, args)
        body = "\n".join(getattr(x, "text", "") for x in r.content)
        log.append({"tool": tool, "args": {k: v for k, v in args.items() if k != "code"}, "chars": len(body),
                    "seconds": round(time.perf_counter() - t0, 2), "error": bool(r.is_error), "text": body})
        if r.is_error:
            raise RuntimeError(f"{tool} failed: {body[:500]}")
        return body, r.structured_content or {}

    async with Client(server) as c:
        prompt = await c.get_prompt("discover")
        fmt = await c.read_resource("autotts://controller-format")
        for what, body in (("prompt discover", prompt.messages[0].content.text),
                           ("resource controller-format", fmt.contents[0].text)):
            log.append({"tool": what, "args": {}, "chars": len(body), "seconds": 0.0, "error": False, "text": body})
        await call("list_environments")
        await call("get_baselines")
        runs: dict[str, str] = {}
        for k, (name, change) in enumerate(VARIANTS):
            if k in (2, 9):  # a quick look before a full run of the idea, as an agent would
                _, q = await call("run_controller", code=variant(change), name=f"{name} (quick)", seeds=3,
                                  questions=list(range(0, 30, 3)))
                runs[f"{name} (quick)"] = q["run_id"]
            if k == 5:
                _, p = await call("run_controller", code=variant(change) + "\n# probe\n", name=f"{name} probe",
                                  betas=[0.5])
                runs[f"{name} probe"] = p["run_id"]
            _, r = await call("run_controller", code=variant(change), name=name)
            runs[name] = r["run_id"]
            if k in (0, 8, len(VARIANTS) - 1):
                await call("get_history")
        # the same source again: deduplicated, not re-run
        await call("run_controller", code=variant(VARIANTS[0][1]), name="base again")
        _, hist = await call("get_history")
        ranked = [row[1] for row in hist["table"]["rows"] if row[0] is not None]
        best, second = ranked[0], ranked[1]
        digest, d = await call("inspect_trace", run_id=best, beta=0.5)
        await call("inspect_trace", run_id=best, beta=0.5, seed=0)
        for seed, q in d.get("examples", [])[:3] or [[None, 0]]:  # the worst episodes: SC@64 right, it wrong
            await call("inspect_trace", run_id=best, beta=0.5, question=q, **({} if seed is None else {"seed": seed}))
        q0 = (d.get("examples") or [[0, 0]])[0]
        await call("inspect_trace", run_id=best, beta=0.5, question=q0[1], seed=q0[0], view="actions",
                   only="changes")
        await call("compare_runs", run_a=best, run_b=second)
        await call("compare_runs", run_a=best, run_b=runs["base"])
        await call("compare_runs", run_a=runs["drop-ERR"], run_b=runs["base"], beta=0.8)
        await call("compare_runs", run_a=best, run_b=runs["base"], env=d["env"], beta=0.2)
        await call("get_controller", run_id=best)


NEEDED = {
    "run_controller": ("tokens to reach SC@64's accuracy", "AUC", "± = SE over", "vs CMC", "wall ", "episodes/s"),
    "get_history": ("tok/SC@64", "not ranked (probes", "quick"),
    "inspect_trace": ("stops:", "Branch view", "answers by step", "stop:", "chg"),
    "compare_runs": ("paired t over", "per question"),
}
"""Phrases each tool's outputs must contain between them: the information the agent needs."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay-dir", type=Path, default=REPO.parent / "shared" / "replay" / "autotts")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--level", default="auto", choices=["auto", "strict", "off"], help="Sandbox level.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dump", type=Path, default=None, help="Write each result's text to DIR/NN-tool.txt.")
    args = ap.parse_args(argv)

    import anyio

    from mcp_server.server import build_server

    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        study, where = study_for(Path(tmpdir) / "study", args.replay_dir, args.seeds, args.level)
        anyio.run(session, build_server(study), log)
    wall = time.perf_counter() - t0
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
        for k, x in enumerate(log):
            (args.dump / f"{k:02d}-{x['tool'].replace(' ', '-')}.txt").write_text(x["text"])
    tool_calls = [x for x in log if not x["tool"].startswith(("prompt", "resource"))]
    per_tool: dict[str, list[int]] = defaultdict(list)
    for x in tool_calls:
        per_tool[x["tool"]].append(x["chars"])
    largest = max(tool_calls, key=lambda x: x["chars"])
    total = sum(x["chars"] for x in tool_calls)
    missing = {tool: [p for p in phrases if not any(p in x["text"] for x in tool_calls if x["tool"] == tool)]
               for tool, phrases in NEEDED.items()}
    missing = {k: v for k, v in missing.items() if v}
    doc = {
        "data": where, "seeds": args.seeds, "level": args.level, "wall_s": round(wall, 1),
        "tool_calls": len(tool_calls), "run_controller_calls": len(per_tool["run_controller"]),
        "total_chars": total, "largest": {"tool": largest["tool"], "args": largest["args"], "chars": largest["chars"]},
        "over_8000": [(x["tool"], x["chars"]) for x in tool_calls if x["chars"] > 8000],
        "per_tool": {k: {"calls": len(v), "chars": sum(v), "max": max(v)} for k, v in per_tool.items()},
        "brief_chars": {x["tool"]: x["chars"] for x in log if x["tool"].startswith(("prompt", "resource"))},
        "missing_information": missing,
        "goal_met": total <= 100_000 and largest["chars"] <= 8000 and not missing,
    }
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(f"agent session on {where}, {args.seeds} seeds, sandbox {args.level}: {doc['tool_calls']} tool calls "
              f"({doc['run_controller_calls']} run_controller) in {wall:.0f} s")
        print(f"total tool output {total:,} characters (goal ≤ 100,000); largest result {largest['chars']:,} "
              f"({largest['tool']} {largest['args']}) (goal ≤ 8,000)")
        for k, v in doc["per_tool"].items():
            print(f"  {k:<18} {v['calls']:>3} calls {v['chars']:>8,} chars (largest {v['max']:,})")
        print("  brief (read once): " + ", ".join(f"{k} {v:,}" for k, v in doc["brief_chars"].items()))
        print("information present: " + ("all" if not missing else f"MISSING {missing}"))
        print("goal met" if doc["goal_met"] else "GOAL NOT MET")
    return 0 if doc["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
