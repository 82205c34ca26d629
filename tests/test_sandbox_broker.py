"""The compiled broker and the question-object broker answer every call sequence identically.

Random call sequences — every op, valid and invalid indices, repeats, batch calls, exhausted pools — go to a
`CellBroker` and a `QuestionBroker` over the same cell; replies, errors, new answer strings and outcomes must be
equal, and equal to what `ReplayQuestion` itself returns.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.sandbox._protocol import OP_CODES, OPS
from core.sandbox.broker import BrokerProtocolError, CellBroker, QuestionBroker
from core.store import environment_from_records


def make_env(seed: int):
    rng = random.Random(seed)
    records = []
    for _ in range(3):
        pool = [str(x) for x in range(rng.randint(1, 6))]
        branches = []
        for _ in range(rng.randint(1, 9)):
            n = rng.randint(0, 5)
            branches.append([[rng.choice(pool) for _ in range(n)], rng.choice([0, 1, 99, 100, 101, 250, 777]) + 100 * n,
                             rng.choice(pool)])
        records.append({"question": "", "gold_answer": pool[0], "interval": 100, "branches": branches})
    return environment_from_records(records, name="toy/broker")


def call(slot: int, op: str, arg: int | list[int] | None) -> list[int]:
    code = OP_CODES[op]
    if op in ("probe_more_many", "extend_many"):
        return [slot, code, len(arg) + 1, len(arg), *arg]
    return [slot, code, 0] if arg is None else [slot, code, 1, arg]


ops = st.sampled_from(OPS)


@st.composite
def ticks(draw):
    out = []
    for _ in range(draw(st.integers(1, 25))):
        tick = []
        for slot in draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True)):
            op = draw(ops)
            if op in ("probe_new", "read", "branch"):
                arg = None
            elif op in ("probe_new_many", "read_many"):
                arg = draw(st.integers(-1, 12))
            elif op in ("probe_more_many", "extend_many"):
                arg = draw(st.lists(st.integers(-1, 9), max_size=5))
            else:
                arg = draw(st.integers(-1, 9))
            tick += call(slot, op, arg)
        out.append(tick)
    return out


@settings(max_examples=300, deadline=None)
@given(env_seed=st.integers(0, 50), seed=st.integers(0, 1000), sequence=ticks())
def test_compiled_and_question_brokers_agree(env_seed, seed, sequence):
    env = make_env(env_seed)
    a, b = CellBroker(env, [0, 1, 2], seed), QuestionBroker(env, [0, 1, 2], seed)
    for tick in sequence:
        assert a.tick(tick) == b.tick(tick)
    for slot in range(3):
        assert a.outcome(slot) == b.outcome(slot)


def test_replies_are_what_the_question_returns():
    env = make_env(3)
    broker = CellBroker(env, [0, 1, 2], 7)
    question = env.question(1, 7)
    replies, errors, strings = broker.tick(call(1, "probe_new", None) + call(1, "probe_more", 0))
    table = {lid: text for _, lid, text in strings}
    a, i, fin = question.probe_new()
    first_cost = question._cost
    b, fin_b = question.probe_more(0)
    assert replies[:6] == [0, first_cost, 3, replies[3], i, int(fin)] and table[replies[3]] == a
    assert replies[6:] == [0, question._cost, 2, replies[9], int(fin_b)] and table[replies[9]] == b
    assert errors == [] and broker.outcome(1)[:2] == (question._cost, question.num_opened)


def test_local_ids_reveal_nothing_about_unrevealed_answers():
    env = make_env(5)
    broker = CellBroker(env, [0], 11)
    _, _, strings = broker.tick(call(0, "read", None))
    assert [lid for _, lid, _ in strings] == [0]  # the first answer an episode sees is id 0, whatever it is


def test_malformed_calls_and_calls_after_the_end_are_protocol_errors():
    env = make_env(1)
    for broker in (CellBroker(env, [0, 1, 2], 0), QuestionBroker(env, [0, 1, 2], 0)):
        with pytest.raises(BrokerProtocolError):
            broker.tick([5, 0, 0])
        with pytest.raises(BrokerProtocolError):
            broker.tick([0, 99, 0])
        broker.outcome(2)
        with pytest.raises(BrokerProtocolError):
            broker.tick(call(2, "probe_new", None))


# ----- the worker's mirror question over the broker behaves like the question itself -----------------------------
MIRROR_OPS = ("probe_new", "probe_more", "read", "branch", "extend", "probe", "prune", "probe_new_many",
              "probe_more_many", "extend_many", "read_many", "is_finished", "depth", "left", "opened", "tokens")


def _script(question, steps):
    """Perform `steps` on a question, recording every result or error (what a controller could observe)."""
    import numpy as np

    log = []
    for op, arg in steps:
        try:
            if op == "probe_new":
                out = question.probe_new()
            elif op == "probe_more":
                out = question.probe_more(arg)
            elif op == "read":
                out = question.get_new_branch_final_answer()
            elif op == "branch":
                out = question.branch()
            elif op == "extend":
                out = question.extend(arg)
            elif op == "probe":
                out = question.probe(arg)
            elif op == "prune":
                out = question.prune(arg)
            elif op == "probe_new_many":
                out = question.probe_new_many(arg % 4)
            elif op == "probe_more_many":
                out = question.probe_more_many([np.int64(arg), arg % 3] if arg % 2 else [arg, arg])
            elif op == "extend_many":
                out = question.extend_many([arg, (arg + 1) % 6])
            elif op == "read_many":
                out = question.get_new_branch_final_answers(arg % 3)
            elif op == "is_finished":
                out = question.is_finished(np.int64(arg) if arg % 2 else arg)
            elif op == "depth":
                out = question.depth(arg)
            elif op == "left":
                out = question.fresh_branches_left
            elif op == "opened":
                out = question.num_opened
            else:
                out = question.get_seq_and_total_tokens()
            log.append(("ok", out if not isinstance(out, list) else [tuple(x) if isinstance(x, tuple) else x
                                                                      for x in out]))
        except (ValueError, IndexError) as e:
            log.append((type(e).__name__, str(e)))
    return log


@settings(max_examples=150, deadline=None)
@given(env_seed=st.integers(0, 50), seed=st.integers(0, 1000),
       steps=st.lists(st.tuples(st.sampled_from(MIRROR_OPS), st.integers(-1, 7)), max_size=40))
def test_the_mirror_question_acts_like_the_question(env_seed, seed, steps):
    from core.sandbox._episodes import run_cell

    env = make_env(env_seed)
    direct = _script(env.question(1, seed), steps)
    broker = CellBroker(env, [1], seed)
    mirrored = []

    def solve_one(question, slot):
        mirrored.extend(_script(question, steps))
        return "done", None

    def exchange(calls, done):
        for s, _ in done:
            broker.outcome(s)
        return broker.tick(calls) if calls else ([], [], [])

    run_cell(solve_one, [(0, env.n_branches(1), int(env.interval[1]))], exchange)
    assert mirrored == direct
