"""The parent's side of every reveal: a worker's question calls performed on the real questions of its cell.

Workers hold no replay table; each call they send is checked here and performed under the replay semantics
(charging its cost and guarding every rule), and only what that call reveals goes back. Answers travel as
episode-local ids — the k-th distinct answer an episode has been shown is id k — with the string sent once, the
first time; an id therefore says nothing about answers not yet revealed. Costs, branch counts and fingerprints
are read from the parent's state, never from the worker.

Two implementations of one contract, held equal by tests on random call sequences:
* `CellBroker` — a compiled kernel over the cell's state arrays (one call of it per tick, whatever the number
  of calls in it): the fast path every scored cell takes;
* `QuestionBroker` — the same calls on `ReplayQuestion` objects: for traced episodes (`trace_episode` records
  the question's own events) and for recorded live runs with partial branches, which only the question object
  guards.

Wire format (both directions are flat int64 arrays; `_protocol` names the op codes and frames them):
* calls: `[slot, op, n_args, *args]` per call; batch ops carry `k, i_1 … i_k` (indices) or `n` (a count);
* replies: `[status, cost, n_vals, *vals]` per call, in order; status 0 is success, anything else an error whose
  type and message are in the reply's `errors` list; new answer strings in its `strings` list.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from numba import njit

from core.environment import ReplayEnvironment, ReplayQuestion, bad_index_message, shuffle_order
from core.errors import UnrecordedStepError
from core.sandbox._protocol import OP_CODES, OPS, encode_replies

UNOPENED, PRUNED, FULL_READ = -1, -2, -3
OK, BAD_INDEX, NO_FRESH, NO_FRESH_READ, TWICE, BAD_COUNT, BAD_CALL = 0, 1, 2, 3, 4, 5, 6
MAX_CALLS_PER_SLOT = 4
"""An honest worker sends one call per episode per tick; a tick with more is refused as malformed."""
_FAILURES = (ValueError, IndexError, TypeError, UnrecordedStepError)


class BrokerProtocolError(Exception):
    """The worker's calls are malformed (not a controller mistake: the worker's framing is broken)."""


@njit(cache=True, nogil=True)
def _local_id(s, a, lmap, nloc, new_ids, n_new):
    """Episode s's id for vocabulary answer a, giving the next one (and noting it in new_ids) the first time."""
    lid = lmap[s, a]
    if lid < 0:
        lid = nloc[s]
        lmap[s, a] = lid
        nloc[s] = lid + 1
        new_ids[n_new, 0] = s
        new_ids[n_new, 1] = a
        n_new += 1
    return lid, n_new


@njit(cache=True, nogil=True)
def _answer(flat, slot_q, closed, perm, n_br, depth, nxt, cost, lmap, nloc, new_ids, branch_offsets,
            probe_offsets, probe_answers, branch_final, branch_tokens, interval, out):
    """Perform every call of one tick. Returns (words written to `out`, new ids written, status): status is a
    protocol error (1 malformed, 2 too many calls, 3 a call for a finished episode), 0, or minus the number of
    calls that failed (their messages are made outside, from the state).

    `new_ids` gets (slot, vocab id) pairs for answers an episode sees for the first time, in the order their
    local ids were given."""
    n_slots = slot_q.shape[0]
    pos = 0
    w = 0
    n_new = 0
    n_err = 0
    while pos < flat.shape[0]:
        if pos + 3 > flat.shape[0]:
            return w, n_new, 1
        s = flat[pos]
        op = flat[pos + 1]
        na = flat[pos + 2]
        args = pos + 3
        pos = args + na
        if s < 0 or s >= n_slots or op < 0 or op > 10 or na < 0 or pos > flat.shape[0]:
            return w, n_new, 1
        if closed[s]:
            return w, n_new, 3
        if w + 4 + 3 * n_br[s] + 3 > out.shape[0]:
            return w, n_new, 2
        q = slot_q[s]
        lo_q = branch_offsets[q]
        delta = interval[q]
        head = w
        out[head] = OK
        w = head + 3
        if op == 0 or op == 3 or op == 7 or op == 2 or op == 10:  # opening or reading fresh branches
            many = op == 7 or op == 10
            if many:
                if na != 1:
                    return w, n_new, 1
                k = flat[args]
                if k < 0:
                    out[head] = BAD_COUNT
                    out[w] = k
                    w += 1
                    out[head + 2] = w - head - 3
                    out[head + 1] = cost[s]
                    n_err += 1
                    continue
                k = min(k, n_br[s] - nxt[s])
                out[w] = k
                w += 1
            else:
                if na != 0:
                    return w, n_new, 1
                k = 1
                if nxt[s] >= n_br[s]:
                    out[head] = NO_FRESH_READ if op == 2 else NO_FRESH
                    out[head + 2] = 0
                    out[head + 1] = cost[s]
                    w = head + 3
                    n_err += 1
                    continue
            for _ in range(k):
                i = nxt[s]
                g = lo_q + perm[s, i]
                plo = probe_offsets[g]
                n = probe_offsets[g + 1] - plo
                nxt[s] = i + 1
                if op == 2 or op == 10:
                    depth[s, i] = FULL_READ
                    cost[s] += branch_tokens[g]
                    a = branch_final[g]
                else:
                    depth[s, i] = 1
                    if n > 0:
                        a = probe_answers[plo]
                        cost[s] += delta
                    else:
                        a = branch_final[g]
                        cost[s] += max(0, branch_tokens[g])
                if op != 3:
                    out[w], n_new = _local_id(s, a, lmap, nloc, new_ids, n_new)
                    w += 1
                if op != 2 and op != 10:
                    if op == 0 or op == 7 or op == 3:
                        out[w] = i
                        w += 1
                    out[w] = 1 if n == 0 else 0
                    w += 1
        else:  # calls naming opened branches: probe_more, extend, probe, prune and the batch forms
            many = op == 8 or op == 9
            if many:
                if na < 1 or flat[args] != na - 1:
                    return w, n_new, 1
                first, count = args + 1, na - 1
            else:
                if na != 1:
                    return w, n_new, 1
                first, count = args, 1
            bad = False
            for j in range(first, first + count):  # every index is checked before anything is stepped
                i = flat[j]
                if i < 0 or i >= nxt[s] or depth[s, i] < 0:
                    out[head] = BAD_INDEX
                    out[w] = i
                    w += 1
                    bad = True
                    break
            if not bad and many:
                for j in range(first, first + count):
                    for j2 in range(first, j):
                        if flat[j2] == flat[j]:
                            out[head] = TWICE
                            out[w] = flat[j]
                            w += 1
                            bad = True
                            break
                    if bad:
                        break
            if not bad:
                for j in range(first, first + count):
                    i = flat[j]
                    g = lo_q + perm[s, i]
                    plo = probe_offsets[g]
                    n = probe_offsets[g + 1] - plo
                    d = depth[s, i]
                    if op == 6:  # prune
                        depth[s, i] = PRUNED
                        continue
                    if op == 5:  # probe: the answer at the current depth, nothing stepped (probe cost 0)
                        a = probe_answers[plo + d - 1] if d - 1 < n else branch_final[g]
                    else:  # probe_more / extend (and their batch forms): one step, free once finished
                        if d < n:
                            a = probe_answers[plo + d]
                            cost[s] += delta
                            depth[s, i] = d + 1
                        elif d == n:
                            a = branch_final[g]
                            cost[s] += max(0, branch_tokens[g] - n * delta)
                            depth[s, i] = d + 1
                        else:
                            a = branch_final[g]
                    if op == 1 or op == 8 or op == 5:
                        out[w], n_new = _local_id(s, a, lmap, nloc, new_ids, n_new)
                        w += 1
                    if op != 5:
                        out[w] = 1 if depth[s, i] > n else 0
                        w += 1
        out[head + 1] = cost[s]
        out[head + 2] = w - head - 3
        if out[head] != OK:
            n_err += 1
    return w, n_new, 0 if n_err == 0 else -n_err


class CellBroker:
    """The state of one cell's episodes in arrays, and the kernel that answers a tick of calls on it."""

    def __init__(self, env: ReplayEnvironment, questions: list[int], seed: int):
        self.env = env
        self.slot_q = np.asarray(questions, dtype=np.int64)
        self.closed = np.zeros(len(questions), dtype=np.bool_)
        n_br = np.asarray([env.n_branches(q) for q in questions], dtype=np.int64)
        self.n_br = n_br
        width = int(n_br.max()) if len(n_br) else 0
        self.perm = np.zeros((len(questions), max(1, width)), dtype=np.int64)
        for s in range(len(questions)):
            n = int(n_br[s])
            order = list(range(n)) if env.stored_order else shuffle_order(n, seed)
            self.perm[s, :n] = order
        self.depth = np.full((len(questions), max(1, width)), UNOPENED, dtype=np.int64)
        self.nxt = np.zeros(len(questions), dtype=np.int64)
        self.cost = np.zeros(len(questions), dtype=np.int64)
        vocab = max((len(env.answer_vocab[q]) for q in questions), default=1)
        self.lmap = np.full((len(questions), max(1, vocab)), -1, dtype=np.int32)
        self.nloc = np.zeros(len(questions), dtype=np.int64)
        self.new_ids = np.zeros((len(questions) * max(1, vocab), 2), dtype=np.int64)
        self.out = np.zeros(len(questions) * MAX_CALLS_PER_SLOT * (6 + 3 * max(1, width)), dtype=np.int64)
        self._state = (self.slot_q, self.closed, self.perm, self.n_br, self.depth, self.nxt, self.cost, self.lmap,
                       self.nloc, self.new_ids, env.branch_offsets, env.probe_offsets, env.probe_answers,
                       env.branch_final, env.branch_tokens, env.interval, self.out)

    def tick(self, calls: list[int]) -> tuple[list[int], list[list[Any]], list[list[Any]]]:
        """(flat replies, errors [[call number, type, message]], new strings [[slot, local id, string]])."""
        replies, errors, strings = self._tick(np.asarray(calls, dtype=np.int64), calls)
        return replies.tolist() if isinstance(replies, np.ndarray) else replies, errors, strings

    def tick_frame(self, calls: np.ndarray) -> bytes:
        """`tick` on a decoded tick frame's int64 calls, answered as a replies frame (no Python lists on the way
        when no call failed)."""
        return encode_replies(*self._tick(calls, None))

    def _tick(self, flat: np.ndarray, calls: list[int] | None) -> tuple[Any, list[list[Any]], list[list[Any]]]:
        w, n_new, bad = _answer(flat, *self._state)
        if bad > 0:
            raise BrokerProtocolError({1: "malformed calls", 2: "too many calls in one tick",
                                       3: "a call for an episode that had finished"}[bad])
        replies: Any = self.out[:w]
        errors: list[list[Any]] = []
        if bad < 0:
            replies, errors = self._errors(calls if calls is not None else flat.tolist(), replies.tolist())
        strings = []
        if n_new:
            vocab = self.env.answer_vocab
            for s, a in self.new_ids[:n_new].tolist():
                strings.append([s, int(self.lmap[s, a]), vocab[int(self.slot_q[s])][a]])
        return replies, errors, strings

    def _errors(self, calls: list[int], replies: list[int]) -> tuple[list[int], list[list[Any]]]:
        """The kernel's error codes as messages (the question object's own words), and the replies with each
        failed call as `[BAD_CALL, cost, 0]` — the one error form of the contract."""
        out, flat = [], []
        slots = [calls[p] for p in _call_starts(calls)]
        for k, h in enumerate(_heads(replies)):
            status = replies[h]
            if status == OK:
                flat += replies[h: h + 3 + replies[h + 2]]
                continue
            flat += [BAD_CALL, replies[h + 1], 0]
            s = slots[k]
            value = replies[h + 3] if replies[h + 2] else None
            n = int(self.n_br[s])
            if status == BAD_INDEX:
                msg = ("ValueError", bad_index_message(value, int(self.nxt[s]), self.depth[s, :n].tolist()))
            elif status == TWICE:
                msg = ("ValueError", f"branch {value} is named twice in one batch call")
            elif status == BAD_COUNT:
                msg = ("ValueError", f"the number of branches must be a non-negative int, got {value!r:.40}")
            else:
                msg = ("IndexError" if status == NO_FRESH_READ else "ValueError",
                       f"no fresh branch left: all {n} branches are opened or read")
            out.append([k, *msg])
        return flat, out

    def outcome(self, slot: int) -> tuple[int, int, int]:
        """(tokens, branches opened, fingerprint of the final branch states) of a finished episode; it takes no
        call after this."""
        self.closed[slot] = True
        n = int(self.n_br[slot])
        return int(self.cost[slot]), int(self.nxt[slot]), zlib.crc32(self.depth[slot, :n].astype("<i8").tobytes())


def _call_starts(calls: list[int]) -> list[int]:
    starts, p = [], 0
    while p < len(calls):
        starts.append(p)
        p += 3 + calls[p + 2]
    return starts


def _heads(replies: list[int]) -> list[int]:
    heads, p = [], 0
    while p < len(replies):
        heads.append(p)
        p += 3 + replies[p + 2]
    return heads


class QuestionBroker:
    """The same contract over `ReplayQuestion` objects (traced episodes, recorded live runs)."""

    def __init__(self, env: ReplayEnvironment, questions: list[int], seed: int, traced: bool = False):
        self.env = env
        self.questions = questions
        self.qs: list[ReplayQuestion] = [env.question(q, seed, trace=traced) for q in questions]
        self.local: list[dict[str, int]] = [{} for _ in questions]
        self.closed = [False] * len(questions)

    def tick(self, calls: list[int]) -> tuple[list[int], list[list[Any]], list[list[Any]]]:
        replies: list[int] = []
        errors: list[list[Any]] = []
        strings: list[list[Any]] = []
        starts = _call_starts(calls) if calls else []
        for k, p in enumerate(starts):
            s, code, na = calls[p], calls[p + 1], calls[p + 2]
            if not 0 <= s < len(self.qs) or not 0 <= code < len(OPS):
                raise BrokerProtocolError("malformed calls")
            if self.closed[s]:
                raise BrokerProtocolError("a call for an episode that had finished")
            args = calls[p + 3: p + 3 + na]
            op = OPS[code]
            q = self.qs[s]
            try:
                vals = self._perform(q, s, op, args, strings)
                replies += [OK, q._cost, len(vals), *vals]
            except _FAILURES as e:
                replies += [BAD_CALL, q._cost, 0]
                errors.append([k, type(e).__name__, str(e)[:500]])
        return replies, errors, strings

    def tick_frame(self, calls: np.ndarray) -> bytes:
        replies, errors, strings = self.tick(calls.tolist())
        return encode_replies(np.asarray(replies, dtype=np.int64), errors, strings)

    def _lid(self, s: int, answer: str, strings: list[list[Any]]) -> int:
        table = self.local[s]
        lid = table.get(answer)
        if lid is None:
            lid = table[answer] = len(table)
            strings.append([s, lid, answer])
        return lid

    def _perform(self, q: ReplayQuestion, s: int, op: str, args: list[int], strings: list[list[Any]]) -> list[int]:
        lid = self._lid
        if op in ("probe_more_many", "extend_many"):
            if not args or args[0] != len(args) - 1:
                raise BrokerProtocolError("malformed calls")
            idx = args[1:]
        elif op in ("probe_new", "read", "branch"):
            if args:
                raise BrokerProtocolError("malformed calls")
        elif len(args) != 1:
            raise BrokerProtocolError("malformed calls")
        if op == "probe_new":
            a, i, fin = q.probe_new()
            return [lid(s, a, strings), i, int(fin)]
        if op == "probe_more":
            a, fin = q.probe_more(args[0])
            return [lid(s, a, strings), int(fin)]
        if op == "read":
            return [lid(s, q.get_new_branch_final_answer(), strings)]
        if op == "branch":
            i = q.branch()
            return [i, int(q.is_finished(i))]
        if op == "extend":
            return [int(q.extend(args[0]))]
        if op == "probe":
            return [lid(s, q.probe(args[0]), strings)]
        if op == "prune":
            q.prune(args[0])
            return []
        if op == "probe_new_many":
            got = q.probe_new_many(args[0])
            return [len(got)] + [v for a, i, fin in got for v in (lid(s, a, strings), i, int(fin))]
        if op == "probe_more_many":
            return [v for a, fin in q.probe_more_many(idx) for v in (lid(s, a, strings), int(fin))]
        if op == "extend_many":
            return [int(f) for f in q.extend_many(idx)]
        finals = q.get_new_branch_final_answers(args[0])  # read_many
        return [len(finals)] + [lid(s, a, strings) for a in finals]

    def outcome(self, slot: int) -> tuple[int, int, int]:
        self.closed[slot] = True
        q = self.qs[slot]
        return q._cost, q._next, zlib.crc32(np.asarray(q._depth, dtype="<i8").tobytes())


def broker_for(env: ReplayEnvironment, questions: list[int], seed: int, traced: bool) -> CellBroker | QuestionBroker:
    """The compiled broker where it applies, the question objects where only they know the rules."""
    if traced or env.has_partial:
        return QuestionBroker(env, questions, seed, traced)
    return CellBroker(env, questions, seed)


__all__ = ["OP_CODES", "BrokerProtocolError", "CellBroker", "QuestionBroker", "broker_for"]
