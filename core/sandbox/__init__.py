"""Sandboxed evaluation of untrusted controller code (candidates written by a coding agent).

Scores by construction: candidate code runs in worker processes that hold no replay table. Every call that
reveals a probe or a final answer goes to the parent, which performs it on the real question, charges its cost
and returns only what it reveals — so there is nothing unrevealed for a candidate to peek at, and every recorded
number is the parent's own observation. Each worker runs one *cell* (one environment, setting and seed, every
question once) and is then discarded, so nothing it remembers across episodes helps it; a random sample of
cells is run twice at independent times and must agree episode for episode (the audit).

Workers are forked from a zygote and locked down in layers (see `isolation` for the levels): their own mount,
network, pid and IPC namespaces (bubblewrap's, or made with `unshare` when bubblewrap is missing), uid 65534
when root, Landlock with no filesystem access at all, seccomp (no processes, sockets, IPC, page-cache probes or
signals to others), rlimits, and a wall-clock timeout that kills the whole tree. Timing channels remain.

    run = run_candidate(source, envs, [{"beta": 0.5}], seeds=range(100))
    if run.ok and run.audit.passed:
        results = {k: score(env_by_name[k[0]], ep) for k, ep in run.results.items()}
"""

from __future__ import annotations

from typing import Any

__all__ = ["AuditReport", "CandidateRun", "IsolationReport", "SandboxError", "SandboxSettings", "probe_isolation",
           "run_candidate", "trace_episode"]

_HOMES = {"AuditReport": "core.sandbox.reports", "IsolationReport": "core.sandbox.reports",
          "CandidateRun": "core.sandbox.runner", "SandboxError": "core.sandbox.runner",
          "SandboxSettings": "core.sandbox.runner", "run_candidate": "core.sandbox.runner",
          "trace_episode": "core.sandbox.runner", "probe_isolation": "core.sandbox.isolation"}


def __getattr__(name: str) -> Any:
    # Lazy: a worker imports its own modules from this package without the parent side's dependencies.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'core.sandbox' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
