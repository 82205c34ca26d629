"""Sandboxed evaluation of untrusted controller code (candidates written by a coding agent).

Candidate code never runs in the calling process. It runs in worker processes, each locked down in layers
(the design follows the measured isolation notes of the project):

* **strong** — bubblewrap (mount, network and pid namespaces: only the interpreter, numpy/scipy and this `core`
  package exist, read-only) + drop to uid 65534 when root + Landlock + seccomp + rlimits;
* **medium** — no bubblewrap: Landlock + seccomp + rlimits (+ uid drop when root);
* **weak** — seccomp + rlimits; **minimal** — rlimits, process-group kill, scratch cwd, scrubbed env.

Inside, an import allowlist and guarded builtins give clear messages for the obvious mistakes. Workers never
hold gold answers or question texts; they return answers and costs, and the caller scores. An integrity audit
re-runs a random sample of episodes in a worker that holds no replay data at all (the parent answers each
question call) and flags any episode whose answer, cost or branch use differs from the fast run.

    run = run_candidate(source, envs, [{"beta": 0.5}], seeds=range(100))
    if run.ok and run.audit["passed"]:
        results = {k: score(env_by_name[k[0]], ep) for k, ep in run.results.items()}
"""

from core.sandbox.runner import (
    CandidateRun,
    SandboxError,
    SandboxSettings,
    probe_isolation,
    run_candidate,
    trace_episode,
)

__all__ = ["CandidateRun", "SandboxError", "SandboxSettings", "probe_isolation", "run_candidate", "trace_episode"]
