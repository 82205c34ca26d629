"""Worker side of scoring by construction: episodes whose every reveal is answered by the parent.

A worker holds no replay table. Each episode's controller gets a `MirrorQuestion`: the question API over what
this episode has been shown so far (its answers, depths, finished flags and cost, all from the parent's
replies). A call that reveals or changes anything is sent to the parent; the free observers (`is_finished`,
`depth`, `num_opened`, `fresh_branches_left`, `get_seq_and_total_tokens`) answer from the mirror.

One worker runs the episodes of one cell — one environment, one setting, one seed, every question once — on
greenlets: each episode runs until it needs a reveal, then the hub sends all pending calls to the parent in one
frame and resumes each episode with its reply. The controller's synchronous API is unchanged, and a worker never
runs two episodes of the same question, so nothing it remembers across episodes helps it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import greenlet

from core.environment import ReplayQuestion, bad_index_message, check_count
from core.errors import UnrecordedStepError
from core.sandbox._protocol import OP_CODES

UNOPENED, PRUNED, FULL_READ = -1, -2, -3
ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "IndexError": IndexError, "TypeError": TypeError,
                                      "UnrecordedStepError": UnrecordedStepError}
"""Exceptions the parent's question may raise, re-raised in the worker with the parent's message."""


def _index(i: Any) -> int:
    """A branch index as a plain int (numpy integers too, as the question itself takes them); ValueError with the
    question's own message for anything else (its wording does not depend on the state for a non-integer)."""
    if type(i) is int:
        return i
    if not isinstance(i, bool):
        try:
            return operator.index(i)
        except TypeError:
            pass
    raise ValueError(bad_index_message(i, 0, []))


class MirrorQuestion(ReplayQuestion):
    """The question API with no replay data: what this episode was shown, and a line to the parent for the rest.

    Private fields of ReplayQuestion stay unset; `_seen` holds only answers the parent revealed."""

    __slots__ = ("_call", "_n", "_fin")

    def __init__(self, call: Callable[[str, list[Any]], Any], n_branches: int, interval: int):  # noqa: D107
        self._call = call
        self._n = n_branches
        self._next = 0
        self._depth = [UNOPENED] * n_branches
        self._fin = [False] * n_branches
        self._cost = 0
        self.probe_freq = interval

    # ----- mirror bookkeeping ------------------------------------------------------------------------------
    def _ask(self, op: str, args: list[Any]) -> Any:
        ok, result, cost = self._call(op, args)
        self._cost = cost
        if not ok:
            raise ERRORS.get(result[0], RuntimeError)(result[1])
        return result

    def _opened(self, i: int, fin: bool) -> None:
        self._next = i + 1
        self._depth[i] = 1
        self._fin[i] = fin

    def _stepped(self, i: int, fin: bool) -> None:
        if not self._fin[i]:
            self._depth[i] += 1
            self._fin[i] = fin

    # ----- the paper's API -----------------------------------------------------------------------------------
    def probe_new(self) -> tuple[str, int, bool]:
        a, i, fin = self._ask("probe_new", [])
        self._opened(i, fin)
        return a, i, fin

    def probe_more(self, i: int) -> tuple[str, bool]:
        i = _index(i)
        a, fin = self._ask("probe_more", [i])
        self._stepped(i, fin)
        return a, fin

    def get_new_branch_final_answer(self) -> str:
        a = self._ask("read", [])
        self._depth[self._next] = FULL_READ
        self._next += 1
        return a

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        return 0, self._cost

    # ----- the action API ------------------------------------------------------------------------------------
    def branch(self) -> int:
        i, fin = self._ask("branch", [])
        self._opened(i, fin)
        return i

    def extend(self, i: int) -> bool:
        i = _index(i)
        fin = self._ask("extend", [i])
        self._stepped(i, fin)
        return fin

    def probe(self, i: int) -> str:
        return self._ask("probe", [_index(i)])

    def prune(self, i: int) -> None:
        i = _index(i)
        self._ask("prune", [i])
        self._depth[i] = PRUNED

    # ----- batch calls: one round trip each -------------------------------------------------------------------
    def probe_new_many(self, n: int) -> list[tuple[str, int, bool]]:
        out = self._ask("probe_new_many", [check_count(n)])
        for _, i, fin in out:
            self._opened(i, fin)
        return out

    def probe_more_many(self, indices: Any) -> list[tuple[str, bool]]:
        idx = self._check_indices(indices)
        out = self._ask("probe_more_many", [idx])
        self._stepped_many(idx, [fin for _, fin in out])
        return out

    def extend_many(self, indices: Any) -> list[bool]:
        idx = self._check_indices(indices)
        out = self._ask("extend_many", [idx])
        self._stepped_many(idx, out)
        return out

    def _stepped_many(self, idx: list[int], fins: list[bool]) -> None:
        done, depth = self._fin, self._depth  # _stepped inlined: the batch calls are the hot path
        for i, fin in zip(idx, fins, strict=True):
            if not done[i]:
                depth[i] += 1
                done[i] = fin

    def get_new_branch_final_answers(self, n: int) -> list[str]:
        out = self._ask("read_many", [check_count(n)])
        for _ in out:
            self._depth[self._next] = FULL_READ
            self._next += 1
        return out

    def _check_indices(self, indices: Any) -> list[int]:
        # The question's own checks (over this mirror's state), then plain ints for the wire.
        return [_index(i) for i in super()._check_indices(indices)]

    # ----- free observers, from the mirror ----------------------------------------------------------------------
    def _state(self, i: Any) -> int:
        if type(i) is not int:
            try:
                i = _index(i)  # numpy integers, as the question itself takes them
            except ValueError:
                raise ValueError(bad_index_message(i, self._next, self._depth)) from None
        if not 0 <= i < self._next or self._depth[i] < 0:
            raise ValueError(bad_index_message(i, self._next, self._depth))
        return self._depth[i]

    def is_finished(self, i: int) -> bool:
        self._state(i)
        return self._fin[_index(i)]

    def depth(self, i: int) -> int:
        return self._state(i)

    @property
    def fresh_branches_left(self) -> int:
        return self._n - self._next

    @property
    def num_opened(self) -> int:
        return self._next

    def __repr__(self) -> str:
        return f"<ReplayQuestion opened={self._next} tokens={self._cost}>"


def _encode(slot: int, op: str, args: list[Any], out: list[int]) -> None:
    code = OP_CODES[op]
    if op in ("probe_more_many", "extend_many"):
        out += [slot, code, len(args[0]) + 1, len(args[0]), *args[0]]
    else:
        out += [slot, code, len(args), *args]


def _decode(op: str, vals: list[int], table: list[str]) -> Any:
    """A reply's values as the question method returns them (answers from the episode's string table)."""
    if op == "probe_new":
        return table[vals[0]], vals[1], bool(vals[2])
    if op == "probe_more":
        return table[vals[0]], bool(vals[1])
    if op in ("read", "probe"):
        return table[vals[0]]
    if op == "branch":
        return vals[0], bool(vals[1])
    if op == "extend":
        return bool(vals[0])
    if op == "prune":
        return None
    if op == "probe_new_many":
        return [(table[vals[j]], vals[j + 1], bool(vals[j + 2])) for j in range(1, 1 + 3 * vals[0], 3)]
    if op == "probe_more_many":
        return [(table[vals[j]], bool(vals[j + 1])) for j in range(0, len(vals), 2)]
    if op == "extend_many":
        return [bool(v) for v in vals]
    return [table[v] for v in vals[1:]]  # read_many


def run_cell(solve_one: Callable[[MirrorQuestion, int], Any], episodes: list[tuple[int, int, int]],
             exchange: Callable[[list[int], list[list[Any]]], tuple[list[int], list[list[Any]], list[list[Any]]]]
             ) -> None:
    """Run one cell's episodes concurrently on greenlets until all are done.

    `episodes`: (slot, n_branches, interval). `solve_one(question, slot)` returns ("done", answer) or
    ("fail", failure dict). `exchange(calls, done)` sends the pending calls (flat, see `broker`) and the finished
    episodes `[[slot, answer], ...]` to the parent and returns its (flat replies, errors, new strings)."""
    hub = greenlet.getcurrent()
    lets: dict[int, greenlet.greenlet] = {}
    tables: dict[int, list[str]] = {}
    pending: list[tuple[int, str]] = []
    calls: list[int] = []
    done: list[list[Any]] = []

    def call(op: str, args: list[Any]) -> Any:
        return hub.switch((op, args))

    def start(slot: int, n_branches: int, interval: int) -> greenlet.greenlet:
        question = MirrorQuestion(call, n_branches, interval)
        tables[slot] = []
        return greenlet.greenlet(lambda: solve_one(question, slot), parent=hub)

    def handle(slot: int, out: Any) -> None:
        g = lets[slot]
        if g.dead:
            del lets[slot]
            if out[0] == "fail":
                raise CellFailure(out[1])
            done.append([slot, out[1]])
        else:
            op, args = out
            pending.append((slot, op))
            _encode(slot, op, args, calls)

    for slot, n_branches, interval in episodes:
        lets[slot] = start(slot, n_branches, interval)
        handle(slot, lets[slot].switch())
    while lets or done:
        flat, errors, strings = exchange(calls, done)
        asked, calls, done, pending[:] = list(pending), [], [], []
        for slot, lid, text in strings:
            table = tables[slot]
            if lid != len(table):
                raise CellFailure({"kind": "internal", "error": "the parent sent answer ids out of order"})
            table.append(text)
        failed = {k: [t, m] for k, t, m in errors}
        p = 0
        for k, (slot, op) in enumerate(asked):
            status, cost, n = flat[p], flat[p + 1], flat[p + 2]
            vals = flat[p + 3: p + 3 + n]
            p += 3 + n
            if status:
                reply = (False, failed.get(k, ["RuntimeError", "the call failed"]), cost)
            else:
                reply = (True, _decode(op, vals, tables[slot]), cost)
            handle(slot, lets[slot].switch(reply))


class CellFailure(Exception):
    def __init__(self, failure: dict[str, Any]):
        super().__init__(failure.get("error"))
        self.failure = failure
