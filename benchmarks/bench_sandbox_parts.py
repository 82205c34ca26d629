"""Where a by-construction cell's CPU goes: the parts of the sandbox pipeline timed apart, in one process.

One cell is what one sandbox worker runs: one environment, one setting, one seed, every question once (30
episodes of Qwen3-4B/aime24 here, CMC β=0.5 written with batch calls, `tests/data/cmc_batched_candidate.py`).
Rows, CPU per cell (user + system of the process that does the work):
  1. the controller alone on the replay question, in a warm process (what the previous design's workers did);
  2. the same in a freshly forked child (copy-on-write faults, cold caches);
  3. the worker's machinery as well — mirror questions on greenlets, calls framed as on the wire, the compiled
     broker answering them — with no second process, warm and in a fresh fork;
  4. fork and exit of a process holding what the zygote imports, with and without scipy.
What rows 1–4 leave out of a real evaluation: the lockdown (seccomp, Landlock, rlimits, uid), the pipes and
wake-ups between worker and parent, the parent's own loop and the zygote (see `bench_sandbox.py` for whole runs).

Usage: python benchmarks/bench_sandbox_parts.py [--replay-dir DIR] [--cells 20] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
from array import array
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FORK_EXIT = r"""
import gc, os, sys, time
for name in sys.argv[1].split(","):
    __import__(name)
gc.collect(); gc.freeze()
n = 300
t = os.times()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
u = os.times()
print((u.user + u.system - t.user - t.system + u.children_user + u.children_system
       - t.children_user - t.children_system) / n)
"""


def cpu_ms(fn: Callable[[], None]) -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    fn()
    b = resource.getrusage(resource.RUSAGE_SELF)
    return 1e3 * (b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime)


def in_fresh_fork(fn: Callable[[], None]) -> float:
    """CPU ms of `fn` run in a child forked from this (warm, frozen-gc) process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, repr(cpu_ms(fn)).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    out = float(os.read(r, 64))
    os.close(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay-dir", type=Path, default=REPO.parent / "shared" / "replay" / "autotts")
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np

    from core.sandbox._episodes import run_cell
    from core.sandbox._exec import compile_candidate
    from core.sandbox._protocol import HEADER, decode_replies, encode_tick
    from core.sandbox.broker import CellBroker
    from core.store import load_environment

    env = load_environment(args.replay_dir / "Qwen3-4B" / "aime24.json")
    namespace: dict = {"__name__": "candidate"}
    source = (REPO / "tests" / "data" / "cmc_batched_candidate.py").read_text()
    exec(compile_candidate(source), namespace)  # noqa: S102 - the project's own test candidate
    controller = next(v for v in namespace.values() if isinstance(v, type) and hasattr(v, "solve"))
    questions = range(env.n_questions)

    def plain(seed: int) -> Callable[[], None]:
        qs = [env.question(q, seed) for q in questions]  # built outside the timing, as a worker gets them

        def run() -> None:
            for question in qs:
                controller(beta=0.5).solve(question)
        return run

    def piped(seed: int) -> Callable[[], None]:
        broker = CellBroker(env, list(questions), seed)

        def exchange(calls, done):
            for slot, _ in done:
                broker.outcome(slot)
            if not calls:
                return [], [], []
            encode_tick(array("q", calls), done)  # what the worker writes (the parent decodes int64 calls)
            reply = broker.tick_frame(np.asarray(calls, dtype=np.int64))
            return decode_replies(memoryview(reply)[HEADER.size:])

        episodes = [(q, env.n_branches(q), int(env.interval[q])) for q in questions]
        return lambda: run_cell(lambda question, slot: ("done", controller(beta=0.5).solve(question)), episodes,
                                exchange)

    for seed in range(3):  # warm both paths (and the broker's compiled kernel)
        plain(seed)()
        piped(seed)()
    gc.collect()
    gc.freeze()
    seeds = range(3, 3 + args.cells)
    rows = {
        "controller, warm process": statistics.median(cpu_ms(plain(s)) for s in seeds),
        "controller, fresh fork": statistics.median(in_fresh_fork(plain(s)) for s in seeds),
        "mirror + greenlets + wire + broker, warm": statistics.median(cpu_ms(piped(s)) for s in seeds),
        "mirror + greenlets + wire + broker, fresh fork": statistics.median(in_fresh_fork(piped(s)) for s in seeds),
    }
    zygote_imports = "numpy,greenlet,orjson,scipy.special,core.primitives"
    for label, mods in (("fork + exit, the zygote's imports", zygote_imports),
                        ("fork + exit, the same without scipy", "numpy,greenlet,orjson")):
        out = subprocess.run([sys.executable, "-c", FORK_EXIT, mods], capture_output=True, text=True, check=True,
                             cwd=REPO).stdout
        rows[label] = 1e3 * float(out)
    if args.json:
        print(json.dumps({"cpu_ms_per_cell": rows, "cells": args.cells}, indent=2))
        return
    print(f"CPU per cell (median of {args.cells} cells; fork rows: per process)")
    for label, ms in rows.items():
        print(f"  {label:50s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
