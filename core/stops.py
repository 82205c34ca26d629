"""Why an episode stopped opening branches: a confident stop, the controller's own branch budget, the study's
ceiling on branches per question, or an exhausted pool of branches.

An episode records only how many branches it opened (or read in full); the limits around it come from elsewhere
(the question's pool, the study's ceiling, the controller's options), so the caller passes what it knows and
`stop_reason` applies one rule:

1. the controller's own budget, when known and `opened >= own_budget` → `own_budget`;
2. else the study's ceiling, when known and `opened >= ceiling` → `ceiling`;
3. else the pool, when `opened >= pool_size` → `pool`;
4. else → `stopped`: the controller stopped on its own while it could still have opened more branches (a
   confident stop, or any rule of its own other than a known branch budget).

Limits are checked in that order because an earlier one would have stopped the episode anyway: a controller whose
own budget equals the ceiling stopped at its budget, not because of the ceiling. The label says which limit the
episode had reached when it stopped, not what went on inside the controller: a CMC episode that became confident
exactly as it opened its last allowed branch reads `own_budget`. When the own budget is unknown (a custom
controller that declares none), an episode below the ceiling and the pool reads `stopped`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class StopKind(StrEnum):
    """Which limit, if any, an episode had reached when it stopped opening branches."""

    STOPPED = "stopped"
    """Stopped on its own with branches still available (a confident stop)."""
    OWN_BUDGET = "own_budget"
    """Used up the controller's own branch budget (e.g. CMC's schedule, SC@n's n)."""
    CEILING = "ceiling"
    """Reached the study's ceiling on branches per question."""
    POOL = "pool"
    """Opened every branch the question has."""


_SHORT = {StopKind.STOPPED: "own stop", StopKind.OWN_BUDGET: "own budget", StopKind.CEILING: "ceiling",
          StopKind.POOL: "pool used up"}


@dataclass(frozen=True)
class StopReason:
    """An episode's stop reason with the numbers it was decided from."""

    kind: StopKind
    """The rule's verdict (see the module docstring)."""
    opened: int
    """Branches opened or read in full in the episode."""
    pool_size: int
    """Branches the question has."""
    ceiling: int | None
    """The study's ceiling on branches per question (None: no ceiling known)."""
    own_budget: int | None
    """The controller's own cap on branches per question (None: unknown or none)."""

    @property
    def branches_left(self) -> int:
        """How many more branches the episode could have opened under every known limit (0 unless `stopped`)."""
        limits = [x for x in (self.own_budget, self.ceiling, self.pool_size) if x is not None]
        return max(0, min(limits) - self.opened)

    @property
    def short(self) -> str:
        """A label of at most 12 characters for table columns."""
        return _SHORT[self.kind]

    def text(self) -> str:
        """One sentence naming the limit and its numbers."""
        if self.kind is StopKind.STOPPED:
            return (f"stopped on its own after {self.opened} branches with {self.branches_left} more allowed "
                    f"(pool {self.pool_size}" + (f", ceiling {self.ceiling}" if self.ceiling is not None else "")
                    + (f", own budget {self.own_budget}" if self.own_budget is not None else ", own budget unknown")
                    + ")")
        if self.kind is StopKind.OWN_BUDGET:
            return f"used its own budget: {self.opened} of {self.own_budget} branches"
        if self.kind is StopKind.CEILING:
            return f"reached the study's ceiling: {self.opened} of {self.ceiling} branches (pool {self.pool_size})"
        return f"opened every branch of the pool: {self.opened} of {self.pool_size}"


def stop_reason(opened: int, pool_size: int, *, ceiling: int | None = None,
                own_budget: int | None = None) -> StopReason:
    """Classify one episode by the module's rule. `opened` counts branches opened or read in full."""
    for name, value in (("opened", opened), ("pool_size", pool_size), ("ceiling", ceiling),
                        ("own_budget", own_budget)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if opened > pool_size:
        raise ValueError(f"opened {opened} branches but the question has only {pool_size}")
    opened, pool_size = int(opened), int(pool_size)
    ceiling = None if ceiling is None else int(ceiling)
    own_budget = None if own_budget is None else int(own_budget)
    if own_budget is not None and opened >= own_budget:
        kind = StopKind.OWN_BUDGET
    elif ceiling is not None and opened >= ceiling:
        kind = StopKind.CEILING
    elif opened >= pool_size:
        kind = StopKind.POOL
    else:
        kind = StopKind.STOPPED
    return StopReason(kind, opened, pool_size, ceiling, own_budget)


def stop_counts(opened: Iterable[int], pool_sizes: Iterable[int] | int, *, ceiling: int | None = None,
                own_budget: int | None = None) -> dict[StopKind, int]:
    """How many episodes stopped for each reason (kinds that never occur are left out), most common first.

    `pool_sizes` is one size for all episodes or one per episode (e.g. a question's column over seeds)."""
    opened = [int(o) for o in opened]
    sizes = [int(pool_sizes)] * len(opened) if isinstance(pool_sizes, int) else [int(p) for p in pool_sizes]
    if len(sizes) != len(opened):
        raise ValueError(f"{len(opened)} opened counts but {len(sizes)} pool sizes")
    counts = Counter(stop_reason(o, p, ceiling=ceiling, own_budget=own_budget).kind
                     for o, p in zip(opened, sizes, strict=True))
    return dict(counts.most_common())


def render_stop_counts(counts: dict[StopKind, int]) -> str:
    """`own stop 71, own budget 29` — the digest's stops column."""
    return ", ".join(f"{_SHORT[k]} {n}" for k, n in counts.items())


def own_branch_budget(controller: Any) -> int | None:
    """The most branches per question a controller opens by its own options, where that is known.

    Built-ins (a spec string, a `ControllerSpec` or a built controller): SC@n → n, ASC and ESC → `max_samples`,
    Parallel-Probe → `num_chains`, CMC → its schedule's `max_branch_use` (min(max_branches, round(4 + 60β))),
    one-batch → its schedule's `batch`.
    Any other object: its `max_branches` attribute when that is a positive int (the convention of the controller
    template agents start from), else None (unknown).
    """
    from core.controllers.base import BuiltinController, ControllerSpec, parse_spec

    obj = controller
    if isinstance(obj, str):
        specs = parse_spec(obj)
        if len(specs) != 1:
            raise ValueError(f"'{controller}' is a sweep of {len(specs)} settings; ask about one")
        obj = specs[0]
    if isinstance(obj, ControllerSpec):
        obj = obj.build()
    if isinstance(obj, BuiltinController) and type(obj).name == "cmc":
        return int(obj.schedule.max_branch_use)  # type: ignore[attr-defined]
    if isinstance(obj, BuiltinController) and type(obj).name == "one-batch":
        return int(obj.schedule.batch)  # type: ignore[attr-defined]
    attr = "max_branches"
    if isinstance(obj, BuiltinController):
        attr = {"sc": "n", "asc": "max_samples", "esc": "max_samples", "parallel-probe": "num_chains"}.get(
            type(obj).name, attr)
    value = getattr(obj, attr, None)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
