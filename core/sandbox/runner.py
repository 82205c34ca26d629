"""Evaluating candidate code: cells of episodes in locked-down workers, every reveal answered by the parent.

The work of one evaluation is split into *cells* — one environment, one setting, one seed, each question once.
A zygote (`processes.Zygote`) forks a fresh worker for every cell; the worker runs the cell's episodes
concurrently and sends their question calls to the parent in batches; the parent performs each call on the real
question (`broker.answer_call`) and returns only what it reveals. The recorded answers, tokens and branch counts
are the parent's own observations. A random sample of cells is run twice at independent random times (`audit`).
The parent is one thread multiplexing all workers' pipes with `select`, so nothing waits on a slow worker.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.environment import ReplayEnvironment
from core.errors import AutoTTSError
from core.evaluate import Episodes
from core.progress import Progress, ProgressCallback
from core.sandbox import audit as audit_mod
from core.sandbox import isolation
from core.sandbox._exec import MAX_ANSWER_CHARS
from core.sandbox._protocol import ProtocolError, Tick, encode
from core.sandbox.broker import BrokerProtocolError, CellBroker, QuestionBroker, broker_for
from core.sandbox.processes import Worker, Zygote, ZygoteError, batch_scheduling, crash_text
from core.sandbox.reports import LEVELS, AuditMismatch, AuditReport, IsolationReport
from core.specs import format_options

log = logging.getLogger("autotts.sandbox")
_WARNED_LEVEL: set[str] = set()


class SandboxError(AutoTTSError):
    """The sandbox refused or could not run a candidate; `error` and `traceback` say why."""

    def __init__(self, error: str, traceback_text: str | None = None, isolation: IsolationReport | None = None):
        super().__init__(error)
        self.error, self.traceback, self.isolation = error, traceback_text, isolation or IsolationReport()


@dataclass(frozen=True)
class SandboxSettings:
    """How candidate code is run. The environment variable AUTOTTS_SANDBOX (strict|auto|off) overrides `level`."""

    timeout_s: float = 300.0
    """Wall clock for one whole candidate evaluation (every environment, setting and seed, and the audit)."""
    memory_mb: int = 2048
    """RLIMIT_AS per worker process."""
    level: str = "auto"
    """strict: refuse below `min_level`; auto: run at the best level available and record it; off: in-process,
    no isolation and no timeout (only for tests of trusted code)."""
    workers: int | None = None
    """Worker processes running at once; default: 4 per core (each waits on the parent much of the time), fewer
    when their memory limits together would exceed half of the memory available."""
    audit: bool = True
    """Run a sample of cells twice and refuse the score when any episode differs."""
    audit_cheat_rate: float = 0.02
    """Detection target: a controller acting differently in this fraction of episodes …"""
    audit_probability: float = 0.99
    """… is caught with at least this probability (sets the sample size)."""
    audit_seed: int | None = None
    """Seed of the audit's sample and of the order cells run in; None draws a fresh one per run (recorded)."""
    max_output_bytes: int = 65536
    """Captured stdout/stderr kept (the tail, over all workers)."""
    keep_output: bool = True
    """False discards the candidate's output (held-out runs: nothing printed there may reach an agent)."""
    max_source_bytes: int = 256 * 1024
    """Larger candidate sources are refused before anything is spawned."""
    min_level: str = "strong"
    """The level `strict` requires."""
    use_bwrap: bool = True
    """Use bubblewrap when it is usable (False: the sandbox's own namespaces, or none)."""
    use_native_namespaces: bool = True
    """Make namespaces with unshare when bubblewrap is not used (False: tests of the medium level)."""


@dataclass
class CandidateRun:
    """Everything a sandboxed candidate evaluation produced. Score `results` with `core.evaluate.score` against
    the original environments, and only when `ok` and `audit.passed`."""

    ok: bool
    error: str | None
    traceback: str | None
    results: dict[tuple[str, str], Episodes] = field(default_factory=dict)
    opened: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    isolation: IsolationReport = field(default_factory=IsolationReport)
    audit: AuditReport = field(default_factory=AuditReport)
    stdout_tail: str = ""
    seconds: float = 0.0
    cells: int = 0
    """Worker processes that ran a cell (audit copies included)."""
    episodes: int = 0
    """Episodes run (audit copies included)."""


class _Stop(Exception):
    def __init__(self, error: str, traceback_text: str | None = None, ended_by: str | None = None):
        super().__init__(error)
        self.error, self.traceback_text, self.ended_by = error, traceback_text, ended_by


@dataclass
class _Cell:
    env: int
    option: int
    seed: int
    questions: list[int]


class _Job:
    """One run of one cell in one worker."""

    __slots__ = ("cell", "copy", "worker", "state", "broker", "left", "outcomes", "started", "presented")

    def __init__(self, cell: int, copy: int):
        self.cell, self.copy = cell, copy
        self.worker: Worker | None = None
        self.state = "new"
        self.broker: CellBroker | QuestionBroker | None = None
        self.left = 0
        self.outcomes: dict[int, audit_mod.EpisodeOutcome] = {}
        self.started = 0.0
        self.presented = False
        """Whether its source and cell were sent with the fork, before its report came (see `_Evaluation.start`)."""


def _mode(settings: SandboxSettings) -> str:
    mode = (os.environ.get("AUTOTTS_SANDBOX") or settings.level).strip().lower()
    if mode not in isolation.MODES:
        raise SandboxError(f"sandbox level {mode!r} is not one of strict, auto, off (check AUTOTTS_SANDBOX)")
    if settings.min_level not in LEVELS:
        raise SandboxError(f"min_level {settings.min_level!r} is not one of {', '.join(LEVELS)}")
    return mode


class _Evaluation:
    def __init__(self, source: str, envs: list[ReplayEnvironment], grid: list[dict[str, Any]], seeds: list[int],
                 cells: list[_Cell], settings: SandboxSettings, mode: str, traced: bool = False):
        self.source, self.envs, self.grid, self.seeds, self.cells = source, envs, grid, seeds, cells
        self.settings, self.mode, self.traced = settings, mode, traced
        self.probe = isolation.probe_isolation()
        self.use_bwrap = bool(self.probe["bwrap_usable"]) and settings.use_bwrap
        self.use_native = (not self.use_bwrap and bool(self.probe["native_namespaces"])
                           and settings.use_native_namespaces)
        self.limits = {"as_mb": int(settings.memory_mb), "cpu_s": int(np.ceil(settings.timeout_s)) + 1,
                       "fsize_mb": 0, "nofile": 64}
        self.parent_ns = isolation.parent_namespaces()
        self.deadline = time.monotonic() + settings.timeout_s
        self.levels: list[dict[str, Any]] = []
        """The weakest worker report so far (one entry), as `isolation.level_from_report` gives it."""
        self.notes: list[str] = []
        self.zygote: Zygote | None = None
        self.done_jobs = 0
        self.forked = 0
        self.episodes = 0
        self.seconds_by_unit: dict[tuple[int, int], float] = {}
        self._source_frame: bytes | None = None
        if not self.use_bwrap:
            self.notes.append(f"no bubblewrap: {self.probe.get('bwrap_error') or 'turned off in the settings'}")
            if not self.use_native:
                self.notes.append("no namespaces of the sandbox's own: "
                                  + (self.probe.get("native_error") or "turned off in the settings"))

    # ----- levels ------------------------------------------------------------------------------------------------
    def check_expected(self) -> None:
        if self.mode != "strict":
            return
        expected = isolation.expected_level(self.probe, use_bwrap=self.settings.use_bwrap,
                                            use_native=self.settings.use_native_namespaces)
        if LEVELS.index(expected) < LEVELS.index(self.settings.min_level):
            raise _Stop(f"sandbox level {expected!r} is below the required {self.settings.min_level!r} (strict mode): "
                        + self.describe_missing())

    def describe_missing(self, info: dict[str, Any] | None = None) -> str:
        p = self.probe
        missing = []
        if not self.use_bwrap and not self.use_native:
            missing.append(p.get("bwrap_error") or "bubblewrap unusable")
            missing.append(p.get("native_error") or "own namespaces turned off")
        if p["landlock_abi"] <= 0:
            missing.append("no Landlock (Linux ≥ 5.13 needed)")
        if not p["seccomp"]:
            missing.append("libseccomp not loadable")
        if info is not None:
            missing += [f"{k}: {v}" for k, v in info.get("errors", {}).items()]
        return "; ".join(missing) or "see the isolation errors"

    def accept_report(self, report: Any) -> None:
        if not isinstance(report, dict):
            raise _Stop("the sandbox worker sent a malformed report")
        info = isolation.level_from_report(report, self.parent_ns, self.limits)
        if not self.levels or LEVELS.index(info["level"]) < LEVELS.index(self.levels[0]["level"]):
            self.levels[:1] = [info]
        if self.mode == "strict" and LEVELS.index(info["level"]) < LEVELS.index(self.settings.min_level):
            raise _Stop(f"sandbox level {info['level']!r} is below the required {self.settings.min_level!r} "
                        f"(strict mode): {self.describe_missing(info)}")

    def report(self, ended_by: str | None) -> IsolationReport:
        worst = self.levels[0] if self.levels else {"level": "not started"}
        level = worst["level"]
        namespaces = "bwrap" if self.use_bwrap else ("native" if self.use_native else None)
        notes = list(self.notes)
        if self.zygote is not None and self.use_native:
            err = self.zygote.hello.get("namespaces", {}).get("error")
            if err:
                notes.append(f"own namespaces failed: {err}")
                namespaces = None
        if level in LEVELS and level != "strong" and self.mode == "auto":
            notes.append(f"below the strongest level ('{level}' instead of 'strong'): "
                         + "; ".join(isolation.unprotected(level)[1:]))
            if level not in _WARNED_LEVEL:
                _WARNED_LEVEL.add(level)
                log.warning("candidate code runs at sandbox level %r, not 'strong': %s", level,
                            "; ".join(isolation.unprotected(level)[1:]))
        fields: dict[str, Any] = {k: v for k, v in worst.items() if k != "level"}
        return IsolationReport(level=level, requested=self.mode, namespaces=namespaces, bwrap=self.use_bwrap,
                               timeout_s=self.settings.timeout_s, ended_by=ended_by,
                               workers={"zygote": 1 if self.zygote else 0, "cells": self.forked},
                               notes=notes, unprotected=isolation.unprotected(level), scoring="by construction",
                               **fields)

    # ----- the loop ------------------------------------------------------------------------------------------------
    def run(self, jobs: list[_Job], on_done: Callable[[_Job], None]) -> None:
        with batch_scheduling():  # the zygote and its workers inherit it
            self._run(jobs, on_done)

    def _run(self, jobs: list[_Job], on_done: Callable[[_Job], None]) -> None:
        self.check_expected()
        try:
            self.zygote = Zygote(probe=self.probe, use_bwrap=self.use_bwrap, native_namespaces=self.use_native,
                                 limits=self.limits, max_output=self.settings.max_output_bytes,
                                 deadline=self.deadline)
        except ZygoteError as e:
            raise _Stop(str(e), None, "exit") from None
        self.zygote.precompile(self.source)
        poller = select.epoll()
        pending = list(reversed(jobs))
        active: dict[int, _Job] = {}
        width = max(1, self.settings.workers or default_width(self.settings.memory_mb))
        try:
            # One canary cell first, alone until it is done or CANARY_S have passed: a candidate that fails at
            # once (an exception, a memory bomb) then costs one worker, not a machine's worth of them.
            canary_until = time.monotonic() + CANARY_S
            while pending or active:
                canary = not self.done_jobs and time.monotonic() < canary_until
                while pending and len(active) < (1 if canary else width):
                    job = pending.pop()
                    self.start(job)
                    assert job.worker is not None
                    active[job.worker.fro] = job
                    poller.register(job.worker.fro, select.EPOLLIN)
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise _Stop(f"timed out after {self.settings.timeout_s:g} s ({self.done_jobs} of {len(jobs)} cells "
                                "done)", None, "timeout")
                wait = max(0.0, min(remaining, canary_until - time.monotonic())) if canary else remaining
                for fd, _ in poller.poll(wait):
                    job = active[fd]
                    try:
                        open_ = self.feed(job)
                    except TimeoutError:  # a reply could not be written before the deadline
                        raise _Stop(f"timed out after {self.settings.timeout_s:g} s: a sandbox worker stopped "
                                    "reading its replies", None, "timeout") from None
                    if open_ and job.state != "finished":
                        continue
                    # Done once its last reply is written: the worker exits on its own (the zygote reaps it),
                    # and its slot goes to the next cell without waiting for that.
                    poller.unregister(fd)
                    del active[fd]
                    assert job.worker is not None
                    if job.state != "finished":
                        stop = self.died(job)
                        job.worker.close()
                        raise stop
                    job.worker.close()
                    self.done_jobs += 1
                    on_done(job)
        finally:
            poller.close()
            for job in active.values():
                if job.worker is not None:
                    job.worker.close()

    def start(self, job: _Job) -> None:
        """Fork a worker for the job's cell. Once one worker of this evaluation has reported its lockdown and
        been accepted (the rest come from the same zygote and lock down alike), the source and the cell go with
        the fork, so that a worker runs without waiting for two round trips; its report is still checked before
        any of its calls is answered."""
        assert self.zygote is not None
        cell = self.cells[job.cell]
        env = self.envs[cell.env]
        seed = self.seeds[cell.seed]
        try:
            job.worker = self.zygote.fork()
        except (OSError, ZygoteError) as e:
            raise _Stop(f"the sandbox could not start a worker ({e}): {crash_text(self.zygote.err.text())}",
                        None, "exit") from None
        self.forked += 1
        job.broker = broker_for(env, cell.questions, seed, self.traced)
        job.left = len(cell.questions)
        job.state = "starting"
        job.started = time.perf_counter()
        if self.levels:
            frames = self.source_frame() + self.cell_frame(job)
            if len(frames) <= PRESEND_BYTES:
                job.worker.send_frame(frames, self.deadline)
                job.presented = True

    def source_frame(self) -> bytes:
        if self._source_frame is None:
            self._source_frame = encode({"t": "source", "source": self.source})
        return self._source_frame

    def cell_frame(self, job: _Job) -> bytes:
        cell = self.cells[job.cell]
        env = self.envs[cell.env]
        episodes = [[slot, env.n_branches(q), int(env.interval[q]), self.seeds[cell.seed], q]
                    for slot, q in enumerate(cell.questions)]
        return encode({"t": "cell", "env": env.name, "label": format_options(self.grid[cell.option]),
                       "options": self.grid[cell.option], "episodes": episodes})

    def feed(self, job: _Job) -> bool:
        """Read what a worker sent and act on every whole frame; False once its pipe has closed."""
        w = job.worker
        assert w is not None
        data = w.read()
        if data is None:
            return True
        if not data:
            return False
        try:
            frames = w.frames.take(data)
        except ProtocolError as e:
            raise _Stop(f"the sandbox worker broke the protocol ({e}); the controller may have written to its "
                        "result channel") from None
        for msg in frames:
            if isinstance(msg, Tick):
                self.tick(job, msg)
            else:
                self.handle(job, msg)
        return True

    def handle(self, job: _Job, msg: dict[str, Any]) -> None:
        w = job.worker
        assert w is not None
        kind = msg.get("t")
        if kind == "error":
            raise _failure(msg)
        if job.state == "starting" and kind == "ready":
            self.accept_report(msg.get("report"))
            if not job.presented:
                w.send_frame(self.source_frame(), self.deadline)
            job.state = "loading"
        elif job.state == "loading" and kind == "loaded":
            if not job.presented:
                w.send_frame(self.cell_frame(job), self.deadline)
            job.state = "running"
        else:
            raise _Stop(f"the sandbox worker sent an unexpected message ({str(kind)[:40]!r} while {job.state})")

    def tick(self, job: _Job, tick: Tick) -> None:
        """Record the episodes a tick finished and answer its calls."""
        if job.state != "running":
            raise _Stop(f"the sandbox worker sent calls while {job.state}")
        done = tick.done
        if type(done) is not list:
            raise _Stop("the sandbox worker sent a malformed tick")
        broker = job.broker
        assert broker is not None and job.worker is not None
        n_slots = len(self.cells[job.cell].questions)
        for entry in done:
            if (type(entry) is not list or len(entry) != 2 or type(entry[0]) is not int
                    or not 0 <= entry[0] < n_slots or entry[0] in job.outcomes):
                raise _Stop("the sandbox worker finished an episode it was not running")
            slot, answer = entry
            if answer is not None and (type(answer) is not str or len(answer) > MAX_ANSWER_CHARS):
                raise _Stop("the sandbox worker returned a bad answer")
            job.outcomes[slot] = audit_mod.EpisodeOutcome(answer, *broker.outcome(slot))
            job.left -= 1
        try:
            frame = broker.tick_frame(tick.calls)
        except (BrokerProtocolError, TypeError, ValueError, OverflowError) as e:
            raise _Stop(f"the sandbox worker sent malformed calls ({e})") from None
        self.episodes += len(done)
        job.worker.send_frame(frame, self.deadline)
        if job.left == 0:
            job.state = "finished"

    def died(self, job: _Job) -> _Stop:
        """Why a worker ended before finishing its cell."""
        assert self.zygote is not None and job.worker is not None
        status = self.zygote.ended(job.worker)
        tail = crash_text(job.worker.crash_report() or self.zygote.err.text()) or None
        if status.startswith("fork-failed:"):
            return _Stop(f"the sandbox could not start a worker ({status.split(':', 1)[1]})", tail, "exit")
        if status.startswith("signal:"):
            sig = int(status.split(":")[1])
            if sig == 24:
                return _Stop(f"CPU time limit exceeded ({self.limits['cpu_s']} s of CPU)", tail, "SIGXCPU")
            if sig == 9:
                return _Stop(f"the worker was killed (SIGKILL; memory limit {self.settings.memory_mb} MB?)", tail,
                             "signal:9")
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return _Stop(f"the worker crashed ({name})", tail, f"signal:{sig}")
        return _Stop(f"the sandbox worker exited unexpectedly ({status.replace(':', ' status ')})", tail, "exit")

    def close(self) -> str:
        """Stop everything; the captured output tail."""
        if self.zygote is None:
            return ""
        self.zygote.close()
        return self.zygote.err.text().strip() if self.settings.keep_output else ""


CANARY_S = 2.0
"""How long an evaluation's first cell runs alone unless it finishes sooner."""
PRESEND_BYTES = 60 * 1024
"""Handshake frames sent with the fork only when they fit a pipe's default buffer (64 KB), so that writing them
never waits for the worker."""


def default_width(memory_mb: int) -> int:
    """Workers at once: 4 per core, capped so that all of them at their memory limit fit in half the memory
    available (a memory bomb in every worker must not push the machine into swap)."""
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            avail_mb = next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 2 * cores
    return max(1, min(4 * cores, avail_mb // 2 // max(1, memory_mb)))


def _failure(msg: dict[str, Any]) -> _Stop:
    error = str(msg.get("error") or "the controller failed")[:2000]
    tb = msg.get("traceback")
    return _Stop(error, str(tb)[:6000] if tb else None, "oom" if msg.get("kind") == "memory" else "error")


def check_inputs(source: Any, envs: list[ReplayEnvironment], grid: list[dict[str, Any]],
                 settings: SandboxSettings) -> str | None:
    """ValueError for bad arguments; a refusal message for a source the sandbox will not run; None when fine."""
    if not envs:
        raise ValueError("run_candidate needs at least one environment")
    if not grid:
        raise ValueError("options_grid is empty: pass [{}] for the controller's defaults")
    names = [e.name for e in envs]
    if len(set(names)) != len(names):
        raise ValueError(f"environment names must be unique: {names}")
    labels = [format_options(o) for o in grid]
    if len(set(labels)) != len(labels):
        raise ValueError(f"options_grid has duplicate settings: {labels}")
    for o in grid:
        try:
            json.dumps(o, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"options must be JSON values (numbers, strings, lists): {o!r}: {e}") from None
    if not isinstance(source, str):
        return f"the controller source must be a string, got {type(source).__name__}"
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > settings.max_source_bytes:
        return (f"the controller source is {size} bytes; the limit is {settings.max_source_bytes} bytes "
                f"({settings.max_source_bytes // 1024} KB)")
    if not source.strip():
        return "the controller source is empty"
    return None


def run_candidate(
    source: str,
    envs: list[ReplayEnvironment],
    options_grid: list[dict[str, Any]],
    seeds: Iterable[int] = range(100),
    settings: SandboxSettings = SandboxSettings(),  # noqa: B008 - frozen
    progress: ProgressCallback | None = None,
) -> CandidateRun:
    """Evaluate candidate controller source on every (environment, options) pair, all seeds, in sandboxed workers.

    Never raises for anything the candidate does; `ok`/`error`/`traceback` say what happened. Raises ValueError
    for bad arguments and SandboxError for a bad sandbox setting. `progress` counts cells (one environment ×
    setting × seed each, audit copies included); an exception it raises stops the run and propagates.
    """
    t0 = time.perf_counter()
    mode = _mode(settings)
    seed_list = [int(s) for s in seeds]
    envs = list(envs)
    grid = [dict(o) for o in options_grid]
    problem = check_inputs(source, envs, grid, settings)
    if problem is not None:
        return CandidateRun(False, problem, None,
                            isolation=IsolationReport(level="not started", requested=mode, ended_by="refused",
                                                      timeout_s=settings.timeout_s),
                            audit=AuditReport(skipped="the candidate was refused before it ran"),
                            seconds=time.perf_counter() - t0)
    if mode == "off":
        from core.sandbox.inprocess import run_in_process

        return run_in_process(source, envs, grid, seed_list, settings, progress, t0)

    cells = [_Cell(ei, oi, si, list(range(env.n_questions)))
             for ei, env in enumerate(envs) for oi in range(len(grid)) for si in range(len(seed_list))]
    sizes = [len(c.questions) for c in cells]
    audit_seed = settings.audit_seed if settings.audit_seed is not None else secrets.randbits(63)
    k = audit_mod.cells_needed(len(cells), min(sizes), max(sizes), settings.audit_cheat_rate,
                               settings.audit_probability) if settings.audit else 0
    twice = audit_mod.sample_cells(len(cells), k, audit_seed)
    twice_set = set(twice)
    jobs = [_Job(c, 0) for c in range(len(cells))] + [_Job(c, 1) for c in twice]
    order = np.random.default_rng([audit_seed, 1]).permutation(len(jobs))
    jobs = [jobs[i] for i in order]

    answers: dict[tuple[int, int], list[list[str | None]]] = {
        (ei, oi): [[None] * env.n_questions for _ in seed_list] for ei, env in enumerate(envs)
        for oi in range(len(grid))}
    tokens = {key: np.zeros((len(seed_list), envs[key[0]].n_questions), dtype=np.int64) for key in answers}
    opened = {key: np.zeros((len(seed_list), envs[key[0]].n_questions), dtype=np.int32) for key in answers}
    seconds = dict.fromkeys(answers, 0.0)
    first: dict[int, dict[int, audit_mod.EpisodeOutcome]] = {}
    mismatches: list[AuditMismatch] = []
    t_audit = [0.0]

    def on_done(job: _Job) -> None:
        cell = cells[job.cell]
        key = (cell.env, cell.option)
        if job.cell in first:  # the second run of a sampled cell: compare, episode by episode
            t = time.perf_counter()
            other = first.pop(job.cell)
            for q, outcome in job.outcomes.items():
                why = audit_mod.difference(other[q], outcome)
                if why is not None:
                    mismatches.append(AuditMismatch(envs[cell.env].name, format_options(grid[cell.option]),
                                                    seed_list[cell.seed], q, why))
            t_audit[0] += time.perf_counter() - t
        else:
            if job.cell in twice_set:
                first[job.cell] = job.outcomes
            for q, outcome in job.outcomes.items():
                answers[key][cell.seed][q] = outcome.answer
                tokens[key][cell.seed, q] = outcome.tokens
                opened[key][cell.seed, q] = outcome.opened
            seconds[key] += time.perf_counter() - job.started
        job.broker, job.outcomes = None, {}  # a first run's outcomes live on in `first` until the second run ends
        if progress is not None:
            progress(Progress(ev.done_jobs, len(jobs), "cells"))

    ev = _Evaluation(source, envs, grid, seed_list, cells, settings, mode)
    run = CandidateRun(False, None, None)
    ended_by: str | None = None
    try:
        ev.run(jobs, on_done)
        run.ok = True
    except _Stop as stop:
        run.error, run.traceback, ended_by = stop.error, stop.traceback_text, stop.ended_by
    finally:
        run.stdout_tail = ev.close()
    run.isolation = ev.report(ended_by)
    run.cells, run.episodes = ev.forked, ev.episodes
    if run.ok:
        for (ei, oi), rows in answers.items():
            lk = (envs[ei].name, format_options(grid[oi]))
            run.results[lk] = Episodes(np.asarray(seed_list, dtype=np.int64), rows, tokens[(ei, oi)], None,
                                       seconds[(ei, oi)])
            run.opened[lk] = opened[(ei, oi)]
    n_twice_eps = sum(sizes[c] for c in twice)
    run.audit = AuditReport(
        checked=n_twice_eps if run.ok else 0, mismatches=mismatches, passed=run.ok and not mismatches,
        sample_seed=audit_seed, sample_size=n_twice_eps, cheat_rate=settings.audit_cheat_rate,
        detection_probability=settings.audit_probability, seconds=round(t_audit[0], 3),
        skipped=None if settings.audit else "the audit is turned off in the settings",
        error=None if run.ok else "the evaluation did not complete",
        note=audit_mod.NOTE if mismatches else None)
    run.seconds = time.perf_counter() - t0
    return run


def trace_episode(
    source: str,
    env: ReplayEnvironment,
    options: dict[str, Any],
    seed: int,
    question: int,
    settings: SandboxSettings = SandboxSettings(),  # noqa: B008
) -> tuple[str | None, int, list[tuple[str, int, int, str | None]]]:
    """(answer, tokens, events) of one episode, the controller running alone in a sandbox worker; the events and
    costs are the parent's own record. Raises SandboxError when the candidate fails or the sandbox refuses."""
    mode = _mode(settings)
    options = dict(options)
    problem = check_inputs(source, [env], [options], settings)
    if problem is not None:
        raise SandboxError(problem)
    if not 0 <= int(question) < env.n_questions:
        raise ValueError(f"question {question} is out of range: {env.name} has {env.n_questions} questions")
    if mode == "off":
        from core.sandbox.inprocess import trace_in_process

        return trace_in_process(source, env, options, int(seed), int(question), settings)
    ev = _Evaluation(source, [env], [options], [int(seed)], [_Cell(0, 0, 0, [int(question)])],
                     replace(settings, audit=False), mode, traced=True)
    job = _Job(0, 0)
    result: list[_Job] = []
    stop: _Stop | None = None
    try:
        ev.run([job], result.append)
    except _Stop as e:
        stop = e
    finally:
        tail = ev.close()
    if stop is not None or not result:
        err = stop or _Stop("the episode did not complete")
        tb = (err.traceback_text or "") + (f"\n[output]\n{tail}" if tail else "")
        raise SandboxError(err.error, tb or None, ev.report(err.ended_by))
    assert isinstance(job.broker, QuestionBroker)
    real = job.broker.qs[0]
    return job.outcomes[0].answer, real._cost, list(real.events)  # type: ignore[attr-defined]
