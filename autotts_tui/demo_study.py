"""A demo study with a handful of recorded candidates, for trying the TUI and for its tests.

    python -m autotts_tui.demo_study /tmp/demo-study            # 6 candidates, then exit
    python -m autotts_tui.demo_study /tmp/demo-study --live 5   # then one more every 5 s, with progress.json

The candidates are small, trusted controllers shipped in this file, evaluated and recorded by the discovery
service (`core.discovery.service`) exactly as the MCP server records an agent's candidates, except that they run
IN THIS PROCESS (sandbox level "off") and, for stable screenshots, at fixed times; one of them fails and one is
refused. This is the only module of `autotts_tui` that writes to a study, and only to a study it is asked to build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.discovery.records import TraceKey
from core.discovery.service import DiscoveryService
from core.discovery.study import Study
from core.load_note import LoadNote, measure
from core.sandbox import SandboxSettings, run_candidate, trace_episode

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

READ_ALL = '''\
from core.primitives import majority


class Controller:
    """Reads every pre-sampled branch: more than the study's ceiling, so the run is refused."""

    def __init__(self, beta=0.5):
        self.beta = beta

    def solve(self, question):
        answers = []
        while True:
            try:
                answers.append(question.get_new_branch_final_answer())
            except IndexError:
                return majority(answers)
'''

CANDIDATES: tuple[tuple[str, str], ...] = (
    ("sc-budget", SC_BUDGET),
    ("lockstep-vote", LOCKSTEP_V1),
    ("momentum-lite", MOMENTUM_LITE),
    ("broken-idea", BROKEN),
    ("lockstep-vote", LOCKSTEP_V2),
    ("read-everything", READ_ALL),
)
"""(name, source) in recording order; the second `lockstep-vote` revises the first."""


class _InProcessSandbox:
    """`core.sandbox` for the demo's trusted candidates, optionally reporting a fixed duration for every run."""

    SandboxSettings = SandboxSettings
    trace_episode = staticmethod(trace_episode)

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def run_candidate(self, *args: Any, **kwargs: Any) -> Any:
        run = run_candidate(*args, **kwargs)
        if self.seconds is not None:
            run.seconds = self.seconds
        return run


class _FixedMeter:
    """The timing a demo run reports when its duration is fixed: the same on every machine, idle or busy."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self) -> _FixedMeter:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def note(self, episodes: int | None = None) -> LoadNote:
        return LoadNote(wall_s=self.seconds, cpu_s=self.seconds, episodes=episodes, load1=0.0, cores=2)


class _SetClock:
    """The time the service records with a run: the moment the demo says the candidate was evaluated."""

    def __init__(self) -> None:
        self.now: float | None = None

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now


def demo_service(study: Study, *, seconds: float | None = None) -> DiscoveryService:
    """A discovery service over `study` that runs candidates in this process (they are trusted: they ship here);
    `seconds` fixes the duration recorded with every run. Close it with `svc.store.close()`."""
    settings = SandboxSettings(level="off", audit_seed=0)
    return DiscoveryService(study, sandbox=_InProcessSandbox(seconds), settings=settings, clock=_SetClock(),
                            meter=measure if seconds is None else lambda: _FixedMeter(seconds))


def record_candidate(svc: DiscoveryService, name: str, source: str, *, created: float | None = None,
                     traces: int = 3) -> int:
    """Evaluate and record one candidate (ok, error or refused) through the service, with the traces of its first
    `traces` questions at its best β; `created` fixes the time recorded with it (default: now)."""
    if isinstance(svc.clock, _SetClock):
        svc.clock.now = created
    study = svc.study
    envs = study.search_envs()
    ev = svc.evaluate_candidate(source, name, list(study.betas), envs)
    if ev.status == "ok" and ev.summary is not None and traces:
        run = svc.store.run(ev.run_id)
        env = envs[0]
        for q in range(min(traces, env.n_questions)):
            svc.trace_episode(run, env, TraceKey(env.name, ev.summary.best.beta, 0, q))
    return ev.run_id


def build_demo_study(folder: str | os.PathLike, *, n_seeds: int = 5, count: int | None = None,
                     base_time: float = BASE_TIME, betas: Sequence[float] | None = None,
                     sandbox: dict[str, Any] | None = None, fixed_seconds: bool = True) -> Study:
    """Create the demo study (the bundled demo env split even/odd) and record the first `count` candidates
    (all by default), one every 137 s after `base_time`; with `fixed_seconds` every run "took" 2 s, so the
    store's content depends on nothing but the arguments."""
    study = Study.create(folder, n_seeds=n_seeds, betas=betas, sandbox=sandbox)
    svc = demo_service(study, seconds=2.0 if fixed_seconds else None)
    try:
        for k, (name, source) in enumerate(CANDIDATES[:count]):
            record_candidate(svc, name, source, created=base_time + 137 * k)
    finally:
        svc.store.close()
    study.progress_path.unlink(missing_ok=True)  # the demo starts with no evaluation in flight
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
        svc = demo_service(study)
        with svc.store:
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
                rid = record_candidate(svc, name, source, created=started)
                write_progress(study.folder, run=name, state="done", started=started, updated=time.time(),
                               done=steps * 100, total=steps * 100)
                log.write(f"{time.strftime('%H:%M:%S')} INFO autotts.mcp: recorded r{rid:04d} {name}\n")
    except KeyboardInterrupt:
        return 0
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
