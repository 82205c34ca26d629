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


_PROBE_NEW, _PROBE_MORE, _READ, _BRANCH, _EXTEND, _PROBE, _PRUNE = (
    OP_CODES[k] for k in ("probe_new", "probe_more", "read", "branch", "extend", "probe", "prune"))
_PROBE_NEW_MANY, _PROBE_MORE_MANY, _EXTEND_MANY, _READ_MANY = (
    OP_CODES[k] for k in ("probe_new_many", "probe_more_many", "extend_many", "read_many"))


class MirrorQuestion(ReplayQuestion):
    """The question API with no replay data: what this episode was shown, and a line to the parent for the rest.

    Private fields of ReplayQuestion stay unset; `_table` holds only answers the parent revealed (by episode-local
    id). `_call(code, args)` / `_call_many(code, indices)` send one call and return the parent's reply
    `(status, cost, values)` (values: the reply's ints, or `[type, message]` for a failed call)."""

    __slots__ = ("_call", "_call_many", "_n", "_fin", "_table")

    def __init__(self, call: Callable[[int, tuple[int, ...]], Any], call_many: Callable[[int, list[int]], Any],
                 n_branches: int, interval: int, table: list[str]):  # noqa: D107
        self._call, self._call_many = call, call_many
        self._n = n_branches
        self._next = 0
        self._depth = [UNOPENED] * n_branches
        self._fin = [False] * n_branches
        self._cost = 0
        self._table = table
        self.probe_freq = interval

    # ----- mirror bookkeeping ------------------------------------------------------------------------------
    def _ask(self, code: int, args: tuple[int, ...]) -> Any:
        return self._took(self._call(code, args))

    def _ask_many(self, code: int, indices: list[int]) -> Any:
        return self._took(self._call_many(code, indices))

    def _took(self, reply: tuple[int, int, Any]) -> Any:
        status, self._cost, vals = reply
        if status:
            raise ERRORS.get(vals[0], RuntimeError)(vals[1])
        return vals

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
        v = self._ask(_PROBE_NEW, ())
        i, fin = v[1], bool(v[2])
        self._opened(i, fin)
        return self._table[v[0]], i, fin

    def probe_more(self, i: int) -> tuple[str, bool]:
        i = _index(i)
        v = self._ask(_PROBE_MORE, (i,))
        fin = bool(v[1])
        self._stepped(i, fin)
        return self._table[v[0]], fin

    def get_new_branch_final_answer(self) -> str:
        v = self._ask(_READ, ())
        self._depth[self._next] = FULL_READ
        self._next += 1
        return self._table[v[0]]

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        return 0, self._cost

    # ----- the action API ------------------------------------------------------------------------------------
    def branch(self) -> int:
        v = self._ask(_BRANCH, ())
        i = v[0]
        self._opened(i, bool(v[1]))
        return i

    def extend(self, i: int) -> bool:
        i = _index(i)
        fin = bool(self._ask(_EXTEND, (i,))[0])
        self._stepped(i, fin)
        return fin

    def probe(self, i: int) -> str:
        return self._table[self._ask(_PROBE, (_index(i),))[0]]

    def prune(self, i: int) -> None:
        i = _index(i)
        self._ask(_PRUNE, (i,))
        self._depth[i] = PRUNED

    # ----- batch calls: one round trip each (the hot path: decoding and bookkeeping in one loop) -----------------
    def probe_new_many(self, n: int) -> list[tuple[str, int, bool]]:
        v = self._ask(_PROBE_NEW_MANY, (check_count(n),))
        table, out = self._table, []
        for j in range(1, 1 + 3 * v[0], 3):
            i, fin = v[j + 1], bool(v[j + 2])
            self._opened(i, fin)
            out.append((table[v[j]], i, fin))
        return out

    def probe_more_many(self, indices: Any) -> list[tuple[str, bool]]:
        idx = self._check_indices(indices)
        v = self._ask_many(_PROBE_MORE_MANY, idx)
        table, done, depth, out = self._table, self._fin, self._depth, []
        j = 0
        for i in idx:
            fin = bool(v[j + 1])
            out.append((table[v[j]], fin))
            if not done[i]:
                depth[i] += 1
                done[i] = fin
            j += 2
        return out

    def extend_many(self, indices: Any) -> list[bool]:
        idx = self._check_indices(indices)
        v = self._ask_many(_EXTEND_MANY, idx)
        done, depth, out = self._fin, self._depth, []
        for i, f in zip(idx, v, strict=True):
            fin = bool(f)
            out.append(fin)
            if not done[i]:
                depth[i] += 1
                done[i] = fin
        return out

    def get_new_branch_final_answers(self, n: int) -> list[str]:
        v = self._ask(_READ_MANY, (check_count(n),))
        table, out = self._table, []
        for lid in v[1:]:
            self._depth[self._next] = FULL_READ
            self._next += 1
            out.append(table[lid])
        return out

    def _check_indices(self, indices: Any) -> list[int]:
        # The question's own checks (over this mirror's state), then plain ints for the wire, in a list of our
        # own (the controller may change its list while the call is out).
        idx = super()._check_indices(indices)
        for i in idx:
            if type(i) is not int:
                return [_index(i) for i in idx]
        return idx.copy() if idx is indices else idx

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


def run_cell(solve_one: Callable[[MirrorQuestion, int], Any], episodes: list[tuple[int, int, int]],
             exchange: Callable[[list[int], list[list[Any]]], tuple[Any, list[list[Any]], list[list[Any]]]]
             ) -> None:
    """Run one cell's episodes concurrently on greenlets until all are done.

    `episodes`: (slot, n_branches, interval). `solve_one(question, slot)` returns ("done", answer) or
    ("fail", failure dict). `exchange(calls, done)` sends the pending calls (flat, see `broker`) and the finished
    episodes `[[slot, answer], ...]` to the parent and returns its (flat replies, errors, new strings); it must
    not keep `calls`, which is reused."""
    hub = greenlet.getcurrent()
    lets: dict[int, greenlet.greenlet] = {}
    tables: dict[int, list[str]] = {}
    pending: list[int] = []  # the slot of each call in `calls`, in order
    calls: list[int] = []
    done: list[list[Any]] = []

    def start(slot: int, n_branches: int, interval: int) -> greenlet.greenlet:
        def call(code: int, args: tuple[int, ...]) -> Any:
            calls.extend((slot, code, len(args)))
            calls.extend(args)
            pending.append(slot)
            return hub.switch(None)

        def call_many(code: int, indices: list[int]) -> Any:
            k = len(indices)
            calls.extend((slot, code, k + 1, k))
            calls.extend(indices)
            pending.append(slot)
            return hub.switch(None)

        table: list[str] = []
        tables[slot] = table
        question = MirrorQuestion(call, call_many, n_branches, interval, table)
        return greenlet.greenlet(lambda: solve_one(question, slot), parent=hub)

    def resume(slot: int, *reply: Any) -> None:
        g = lets[slot]
        out = g.switch(*reply)  # no reply: the episode's start
        if g.dead:
            del lets[slot]
            if out[0] == "fail":
                raise CellFailure(out[1])
            done.append([slot, out[1]])

    for slot, n_branches, interval in episodes:
        lets[slot] = start(slot, n_branches, interval)
        resume(slot)
    while lets or done:
        flat, errors, strings = exchange(calls, done)
        asked = pending.copy()
        calls.clear()
        pending.clear()
        done = []
        for slot, lid, text in strings:
            table = tables[slot]
            if lid != len(table):
                raise CellFailure({"kind": "internal", "error": "the parent sent answer ids out of order"})
            table.append(text)
        failed = {k: [t, m] for k, t, m in errors}
        p = 0
        for k, slot in enumerate(asked):
            status, cost, n = flat[p], flat[p + 1], flat[p + 2]
            if status:
                reply = (status, cost, failed.get(k, ["RuntimeError", "the call failed"]))
            else:
                reply = (0, cost, flat[p + 3: p + 3 + n])
            p += 3 + n
            resume(slot, reply)


class CellFailure(Exception):
    def __init__(self, failure: dict[str, Any]):
        super().__init__(failure.get("error"))
        self.failure = failure
