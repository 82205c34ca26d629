"""A demo study with a handful of recorded candidates, for trying the TUI and for its tests.

    python -m autotts_tui.demo_study /tmp/demo-study            # 6 candidates, then exit
    python -m autotts_tui.demo_study /tmp/demo-study --live 5   # then one more every 5 s, with progress.json

The candidates are small, trusted controllers shipped in this file and evaluated IN THIS PROCESS (no sandbox),
then written with the run store's writer API the way the discovery service writes them (one transaction per
run, a `summary` with `best` and `monotone`), plus one failing and one refused run. This is the only module of
`autotts_tui` that writes to a study, and only to a study it is asked to build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.controller_files import find_controller_class, instantiate, load_module_from_source
from core.evaluate import run_episodes, score
from core.runstore import EpisodeArrays, ResultRow, RunRecord, RunStore
from core.stats import is_monotone
from core.study import Study

BASE_TIME = 1_763_996_400.0
"""2025-11-24 15:00:00 UTC (a fixed time): fixed timestamps keep the tests' screenshots stable."""

SC_BUDGET = '''\
from core.primitives import majority


class Controller:
    """Self-consistency whose sample count grows with beta."""

    def __init__(self, beta=0.5):
        self.n = max(1, round(2 + 30 * beta))

    def solve(self, question):
        answers = []
        for _ in range(self.n):
            try:
                answers.append(question.get_new_branch_final_answer())
            except IndexError:
                break
        return majority(answers)
'''

LOCKSTEP_V1 = '''\
from core.primitives import majority


class Controller:
    """Step every branch in lockstep; stop when the majority of latest answers is stable."""

    def __init__(self, beta=0.5):
        self.width = max(2, round(4 + 12 * beta))
        self.patience = max(2, round(2 + 6 * beta))

    def solve(self, question):
        latest, live = {}, []
        for _ in range(self.width):
            answer, i, done = question.probe_new()
            latest[i] = answer
            if not done:
                live.append(i)
        winner, stable = None, 0
        while live:
            for i in list(live):
                answer, done = question.probe_more(i)
                latest[i] = answer
                if done:
                    live.remove(i)
            w = majority(list(latest.values()))
            stable = stable + 1 if w == winner else 0
            winner = w
            if stable >= self.patience:
                break
        return winner
'''

LOCKSTEP_V2 = '''\
from core.primitives import majority


class Controller:
    """Step every branch in lockstep, prune branches that keep disagreeing, stop when the majority is stable."""

    def __init__(self, beta=0.5):
        self.width = max(2, round(4 + 12 * beta))
        self.patience = max(2, round(3 + 8 * beta))
        self.prune_after = max(3, round(4 + 8 * beta))

    def solve(self, question):
        latest, live, off = {}, [], {}
        for _ in range(self.width):
            answer, i, done = question.probe_new()
            latest[i] = answer
            off[i] = 0
            if not done:
                live.append(i)
        winner, stable = None, 0
        while live:
            for i in list(live):
                answer, done = question.probe_more(i)
                latest[i] = answer
                if done:
                    live.remove(i)
            w = majority(list(latest.values()))
            for i in list(live):
                off[i] = off[i] + 1 if latest[i] != w else 0
                if off[i] >= self.prune_after and len(live) > 2:
                    live.remove(i)
                    question.prune(i)
            stable = stable + 1 if w == winner else 0
            winner = w
            if stable >= self.patience:
                break
        return winner
'''

MOMENTUM_LITE = '''\
from core.primitives import beta_confidence, majority, vote_stats


class Controller:
    """Grow the pool of finished answers until its Beta confidence clears a beta-scheduled threshold."""

    def __init__(self, beta=0.5):
        self.n_init = max(2, round(2 + 6 * beta))
        self.max_branches = min(64, round(4 + 40 * beta))
        self.threshold = 0.85 + 0.1 * beta

    def solve(self, question):
        latest, live, pool = {}, [], []

        def open_one():
            answer, i, done = question.probe_new()
            latest[i] = answer
            if done:
                pool.append(answer)
            else:
                live.append(i)

        for _ in range(self.n_init):
            open_one()
        opened = self.n_init
        while live:
            for i in list(live):
                answer, done = question.probe_more(i)
                latest[i] = answer
                if done:
                    live.remove(i)
                    pool.append(answer)
            winner, top1, top2 = vote_stats(pool)
            if len(pool) >= 2 and beta_confidence(top1, top2) > self.threshold:
                return winner
            if opened < self.max_branches and len(live) < 2:
                open_one()
                opened += 1
        return majority(pool) if pool else majority(list(latest.values()))
'''

BROKEN = '''\
class Controller:
    """Divides by the number of finished branches before any has finished."""

    def __init__(self, beta=0.5):
        self.beta = beta

    def solve(self, question):
        answer, i, done = question.probe_new()
        finished = 0
        share = 1 / finished
        return answer if share > self.beta else None
'''

PEEKING = '''\
import os


class Controller:
    def solve(self, question):
        return os.environ.get("GOLD")
'''

CANDIDATES: tuple[tuple[str, str], ...] = (
    ("sc-budget", SC_BUDGET),
    ("lockstep-vote", LOCKSTEP_V1),
    ("momentum-lite", MOMENTUM_LITE),
    ("broken-idea", BROKEN),
    ("lockstep-vote", LOCKSTEP_V2),
    ("peeking", PEEKING),
)
"""(name, source) in recording order; the second `lockstep-vote` revises the first."""


def evaluate_source(source: str, envs: Sequence[Any], betas: Sequence[float], seeds: Sequence[int]
                    ) -> list[ResultRow]:
    """Score trusted controller source on every (environment, β) in this process."""
    rows = []
    module = load_module_from_source(source)
    target = find_controller_class(module)
    for env in envs:
        for b in betas:
            controller = instantiate(target, {"beta": b})
            episodes = run_episodes(env, controller, seeds)
            res = score(env, episodes, controller=f"beta={b:g}")
            ep = EpisodeArrays(res.seeds, res.answers, res.tokens, res.correct, None)
            rows.append(ResultRow(env.name, float(b), res.accuracy, res.avg_tokens, ep, "search"))
    return rows


def summarise(rows: Sequence[ResultRow], betas: Sequence[float]) -> dict[str, Any]:
    """The summary fields the TUI reads (`best`, `monotone`, `per_beta`), shaped like the discovery service's."""
    per_beta = []
    for b in betas:
        sel = [r for r in rows if abs(r.beta - b) < 1e-9]
        per_beta.append({"beta": b, "accuracy": round(float(np.mean([r.accuracy for r in sel])), 2),
                         "avg_tokens": round(float(np.mean([r.avg_tokens for r in sel])), 1)})
    best = max(per_beta, key=lambda p: (p["accuracy"], -p["avg_tokens"]))
    return {"per_beta": per_beta, "best": dict(best), "monotone": is_monotone([p["avg_tokens"] for p in per_beta])}


def candidate_traceback(error: BaseException, source: str) -> str:
    """The traceback trimmed to the candidate's own frames (as the sandbox reports it): no paths of this
    machine, so it reads the same everywhere."""
    import traceback

    cause = error.__cause__ or error
    code = source.splitlines()
    lines = ["Traceback (most recent call last):\n"]
    for f in traceback.extract_tb(cause.__traceback__):
        if f.filename == "<candidate>" and f.lineno:
            lines.append(f'  File "<candidate>", line {f.lineno}, in {f.name}\n    {code[f.lineno - 1].strip()}\n')
    lines += traceback.format_exception_only(type(cause), cause)
    return "".join(lines)


def record_candidate(store: RunStore, study: Study, name: str, source: str, *, created: float,
                     traces: int = 3, seconds: float | None = None) -> int:
    """Evaluate and record one candidate (ok, error or refused), with a few traces of its best β.
    `seconds` fixes the recorded duration (default: the time the evaluation took)."""
    betas = list(study.betas)
    envs = study.search_envs()
    if "import os" in source:
        return store.record_run(RunRecord(
            name=name, source=source, status="refused", created=created, finished=created + 0.4, betas=betas,
            envs=study.search_names, error="line 1: import of 'os' is not allowed in a controller", seconds=0.4))
    start = time.perf_counter()
    try:
        rows = evaluate_source(source, envs, betas, study.seeds)
    except Exception as e:  # a failing candidate is recorded, not fatal
        return store.record_run(RunRecord(
            name=name, source=source, status="error", created=created, finished=created + 1.1, betas=betas,
            envs=study.search_names, error=str(e), traceback=candidate_traceback(e, source), seconds=1.1))
    seconds = round(time.perf_counter() - start, 2) if seconds is None else seconds
    summary = summarise(rows, betas)
    run_id = store.record_run(RunRecord(
        name=name, source=source, status="ok", created=created, finished=created + 2.0 + seconds, betas=betas,
        envs=study.search_names, results=rows, summary=summary, audit={"checked": 0, "mismatches": 0, "passed": True},
        seconds=seconds))
    beta = summary["best"]["beta"]
    env = envs[0]
    module = load_module_from_source(source)
    target = find_controller_class(module)
    for q in range(min(traces, env.n_questions)):
        single = run_episodes(env.subset([q]), instantiate(target, {"beta": beta}), [0], traces=True)
        events = (single.traces or {}).get((0, 0), [])
        store.record_trace(run_id, env.name, beta, 0, q, single.answers[0][0], int(single.tokens[0, 0]),
                           [list(e) for e in events])
    return run_id


def build_demo_study(folder: str | os.PathLike, *, n_seeds: int = 5, count: int | None = None,
                     base_time: float = BASE_TIME, betas: Sequence[float] | None = None,
                     sandbox: dict[str, Any] | None = None, fixed_seconds: bool = True) -> Study:
    """Create the demo study (the bundled demo env split even/odd) and record the first `count` candidates
    (all by default), one every 137 s after `base_time`; with `fixed_seconds` every run "took" 2 s, so the
    store's content depends on nothing but the arguments."""
    study = Study.create(folder, n_seeds=n_seeds, betas=betas, sandbox=sandbox)
    with RunStore(study.store_path) as store:
        for k, (name, source) in enumerate(CANDIDATES[:count]):
            record_candidate(store, study, name, source, created=base_time + 137 * k,
                             seconds=2.0 if fixed_seconds else None)
    return study


def write_progress(folder: Path, **fields: Any) -> None:
    """Atomically replace progress.json: the same writer the MCP server uses."""
    Study.open(folder).write_progress(**fields)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotts_tui.demo_study", description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--seeds", type=int, default=10, help="shuffle seeds per evaluation (default 10)")
    parser.add_argument("--count", type=int, default=None, help="candidates recorded up front (default all)")
    parser.add_argument("--live", type=float, default=0.0, metavar="SECONDS",
                        help="then record the remaining candidates (and variants) one every SECONDS, writing "
                             "progress.json and server.log as they go")
    args = parser.parse_args(argv)
    study = build_demo_study(args.folder, n_seeds=args.seeds, count=args.count, base_time=time.time() - 3600,
                             fixed_seconds=False)
    print(f"demo study in {study.folder}")
    if args.live <= 0:
        return 0
    log = open(study.folder / "server.log", "a", buffering=1)  # noqa: SIM115 - closed below
    todo = list(CANDIDATES[args.count or len(CANDIDATES):]) or []
    k = 0
    try:
        with RunStore(study.store_path) as store:
            while True:
                if not todo:
                    k += 1
                    todo = [(f"sc-budget-v{k + 1}", SC_BUDGET.replace("2 + 30", f"{1 + k} + {30 - 4 * k}"))]
                name, source = todo.pop(0)
                started = time.time()
                steps = 10
                for i in range(steps):
                    write_progress(study.folder, run=name, state="running", started=started, updated=time.time(),
                                   done=i * 100, total=steps * 100, unit="episodes",
                                   message=f"β grid on {len(study.search)} env(s)")
                    time.sleep(args.live / steps)
                rid = record_candidate(store, study, name, source, created=started)
                write_progress(study.folder, run=name, state="done", started=started, updated=time.time(),
                               done=steps * 100, total=steps * 100)
                log.write(f"{time.strftime('%H:%M:%S')} INFO autotts.mcp: recorded r{rid:04d} {name}\n")
    except KeyboardInterrupt:
        return 0
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
