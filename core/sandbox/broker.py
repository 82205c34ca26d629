"""The parent's side of every reveal: a worker's question calls performed on the real question objects.

Workers hold no replay table; each call they send is checked here and performed on the episode's own
`ReplayQuestion` (which charges the cost and guards every rule), and only what that call reveals goes back.
Costs, branch counts and fingerprints of an episode are read from the parent's object, never from the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.environment import ReplayQuestion
from core.errors import UnrecordedStepError

MAX_BATCH = 4096
"""Branch indices one batch call may name (a question has at most a few hundred branches)."""
_FAILURES = (ValueError, IndexError, TypeError, UnrecordedStepError)


def _int(x: Any) -> bool:
    return type(x) is int


def _indices(x: Any) -> bool:
    return type(x) is list and len(x) <= MAX_BATCH and all(type(i) is int for i in x)


def _branch(q: ReplayQuestion) -> list[Any]:
    i = q.branch()
    return [i, q.is_finished(i)]  # the worker's mirror needs it; a controller may ask is_finished for free


CALLS: dict[str, tuple[Callable[[Any], bool] | None, str]] = {
    "probe_new": (None, "probe_new"),
    "probe_more": (_int, "probe_more"),
    "read": (None, "get_new_branch_final_answer"),
    "branch": (None, "branch"),
    "extend": (_int, "extend"),
    "probe": (_int, "probe"),
    "prune": (_int, "prune"),
    "probe_new_many": (_int, "probe_new_many"),
    "probe_more_many": (_indices, "probe_more_many"),
    "extend_many": (_indices, "extend_many"),
    "read_many": (_int, "get_new_branch_final_answers"),
}
"""op → (check of its one argument, or None when it takes none; the question method that performs it)."""


def answer_call(question: ReplayQuestion, op: Any, args: Any) -> tuple[bool, Any]:
    """Perform one worker call on the real question: (True, result) or (False, [error type, message])."""
    entry = CALLS.get(op) if type(op) is str else None
    if entry is None or type(args) is not list:
        return False, ["TypeError", f"bad question call {str(op)[:40]!r}"]
    check, name = entry
    try:
        if check is None:
            if args:
                return False, ["TypeError", f"{op}() takes no argument"]
            return True, _branch(question) if op == "branch" else getattr(question, name)()
        if len(args) != 1 or not check(args[0]):
            return False, ["TypeError", f"bad argument for {op}()"]
        return True, getattr(question, name)(args[0])
    except _FAILURES as e:
        return False, [type(e).__name__, str(e)[:500]]
