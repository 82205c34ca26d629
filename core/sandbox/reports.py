"""Typed records of what the sandbox reports with every candidate evaluation: how it was isolated, and its audit.

Both are stored with each run (JSON in the run store) and shown by the MCP tools, the TUI and `autotts study show`.
`from_dict` reads what any earlier release wrote (missing fields take their defaults; an audit's `mismatches`
written as a bare count becomes that many anonymous entries), so old stores keep opening.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

LEVELS = ("minimal", "weak", "medium", "strong")
"""Isolation levels, weakest first (see `core.sandbox` for what each one is)."""


@dataclass(frozen=True)
class IsolationReport:
    """How the workers that ran a candidate were isolated, from their own self-reports (the weakest one counts)."""

    level: str | None = None
    """strong | medium | weak | minimal, "off" (in-process, trusted code only) or "not started" (refused early)."""
    requested: str | None = None
    """The sandbox mode asked for: strict | auto | off."""
    namespaces: str | None = None
    """Who made the workers' namespaces: "bwrap", "native" (unshare by the worker itself) or None."""
    bwrap: bool = False
    """Whether bubblewrap started the workers."""
    mount_ns: bool = False
    """Own mount namespace (only the interpreter and the package are visible)."""
    net_ns: bool = False
    """Own network namespace (no interface but a downed loopback)."""
    pid_ns: bool = False
    """Own pid namespace (no other process is visible; all die with the namespace)."""
    ipc_ns: bool = False
    """Own SysV/POSIX IPC namespace (no shared-memory segment of another worker is reachable)."""
    uid: int | None = None
    """Effective uid the candidate ran as (65534 when the server is root)."""
    landlock_abi: int = 0
    """Landlock ABI applied (0: none)."""
    seccomp: bool = False
    """Whether the seccomp deny-list filter was loaded."""
    no_new_privs: bool = False
    """Whether the no_new_privs bit was set."""
    rlimits: dict[str, int] = field(default_factory=dict)
    """Resource limits in force: as_mb, cpu_s, fsize_mb, nofile, core."""
    timeout_s: float | None = None
    """Wall-clock limit of the whole evaluation."""
    ended_by: str | None = None
    """None (completed) | timeout | SIGXCPU | oom | signal:N | error | exit | stopped | refused."""
    workers: dict[str, int] = field(default_factory=dict)
    """Worker processes started, by role."""
    notes: list[str] = field(default_factory=list)
    """What was missing or turned off, in words."""
    errors: dict[str, str] = field(default_factory=dict)
    """Layers that failed to apply, with the reason."""
    unprotected: list[str] = field(default_factory=list)
    """What this level does not protect against, in words (always includes the timing channels)."""
    scoring: str | None = None
    """How the recorded numbers were obtained: "by construction" (workers hold no unrevealed cell) or None."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> IsolationReport:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditMismatch:
    """One audited episode that acted differently when re-run alone in a fresh worker."""

    env: str | None = None
    """Environment name."""
    options: str | None = None
    """The controller setting, e.g. `beta=0.5`."""
    seed: int | None = None
    """Shuffle seed of the episode."""
    question: int | None = None
    """Question index."""
    reason: str = ""
    """What differed (answer, tokens, branches, the action sequence)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditMismatch:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class AuditReport:
    """The integrity audit: a random sample of scored episodes re-run one per fresh worker, actions compared."""

    checked: int = 0
    """Episodes re-run."""
    mismatches: list[AuditMismatch] = field(default_factory=list)
    """Episodes whose re-run differed."""
    passed: bool = False
    """All sampled episodes re-ran identically (and the audit completed)."""
    sample_seed: int | None = None
    """Seed of the sample (fresh per run unless configured)."""
    sample_size: int | None = None
    """Episodes the audit set out to re-run."""
    cheat_rate: float | None = None
    """Detection target: a controller that acts differently in this fraction of episodes …"""
    detection_probability: float | None = None
    """… is caught with at least this probability by a sample of `sample_size`."""
    seconds: float = 0.0
    """Time the audit took."""
    skipped: str | None = None
    """Why no audit ran, when none did."""
    error: str | None = None
    """Why the audit could not complete."""
    traceback: str | None = None
    """The candidate's traceback when its re-run failed."""
    note: str | None = None
    """What a mismatch means, in words."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AuditReport:
        data = dict(data or {})
        raw = data.get("mismatches")
        if isinstance(raw, list):
            mismatches = [AuditMismatch.from_dict(m) if isinstance(m, dict) else AuditMismatch(reason=str(m))
                          for m in raw]
        else:  # early stores wrote a count
            mismatches = [AuditMismatch(reason="(not recorded)") for _ in range(int(raw or 0))]
        data["mismatches"] = mismatches
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sandbox_summary(iso: IsolationReport | None, audit: AuditReport | None) -> str | None:
    """The isolation level in force, what it leaves open, and the audit, in one line (tools, TUI, CLI)."""
    if iso is None and audit is None:
        return None
    if iso is None or iso.scoring is None:  # written before scores were by construction: as it was shown then
        parts = [f"sandbox {iso.level}"] if iso is not None and iso.level else []
        if audit is not None and audit.checked:
            parts.append(f"audit {'passed' if audit.passed else 'FAILED'} "
                         f"({len(audit.mismatches)} mismatches in {audit.checked} episodes)")
        return ", ".join(parts) or None
    if iso.level == "off":
        return "sandbox off: the candidate ran in-process, unisolated (trusted code only)"
    gaps = "; ".join(iso.unprotected[1:]) if iso.level != "strong" else ""
    text = (f"sandbox {iso.level} (scores by construction; not protected against: timing channels"
            + (f"; {gaps}" if gaps else "") + ")")
    if audit is not None and audit.checked:
        text += (f", audit {'passed' if audit.passed else 'FAILED'} ({len(audit.mismatches)} of {audit.checked} "
                 "episodes differed when their cell ran twice)")
    elif audit is not None and audit.skipped:
        text += f", no audit ({audit.skipped})"
    return text
