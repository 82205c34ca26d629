"""The multi-backend scheduler, exactly, on scripted backends (no model): question affinity, then fresh questions,
then stealing; a backend that fails mid-run hands its branches to the others and the store is byte-identical to
a one-backend run; the last backend failing is an error that leaves a resumable collection."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from collect_helpers import QUESTIONS, FakeBackend

from core.collect import CollectSettings, QuestionItem, collect
from core.collect.backend import BackendError, Chunk, Extend
from core.collect.collector import _Scheduler
from core.collect.writer import LOG_NAME, STORE_NAME, read_log

pytest.importorskip("math_verify")

SETTINGS = CollectSettings(branches=6, interval=16, max_tokens=64, answer_tokens=24, probe_tokens=8)
ITEMS = [QuestionItem(q["question"], q["gold_answer"]) for q in QUESTIONS]


def test_scheduler_keeps_questions_together_then_steals() -> None:
    s = _Scheduler([(q, b) for q in range(3) for b in range(4)])
    assert s.take(0, set()) == (0, 0)  # worker 0 opens question 0
    assert s.take(1, set()) == (1, 0)  # worker 1 gets the next question nobody holds
    assert s.take(0, {0}) == (0, 1) and s.take(1, {1}) == (1, 1)  # each stays on its question
    assert s.take(0, {0}) == (0, 2) and s.take(0, {0}) == (0, 3)
    assert s.take(0, {0}) == (2, 0)  # question 0 is out: the next fresh one
    assert s.take(0, {0, 2}) == (2, 1)
    for _ in range(2):
        s.take(0, {0, 2})
    assert s.take(0, {0, 2}) == (1, 2)  # nothing fresh left: steal from question 1
    s.give_back(1, [(1, 1), (1, 0)])  # worker 1 failed: its branches come back, in order
    assert s.pending[1] == [0, 1, 3] and 1 not in s.owner.values()


class Failing(FakeBackend):
    """A scripted backend whose server dies after `after` extend calls."""

    def __init__(self, after: int, **kw: object):
        super().__init__(**kw)  # type: ignore[arg-type]
        self.after = after

    def info(self) -> dict[str, object]:
        return {"backend": "fake", "base_url": "http://127.0.0.1:1/failing"}

    def extend(self, requests: Mapping[int, Extend]) -> dict[int, Chunk]:
        self.after -= 1
        if self.after < 0:
            raise BackendError("http://127.0.0.1:1/v1/completions: no answer after 4 tries (ConnectError)")
        return super().extend(requests)


def test_a_failing_backend_hands_its_branches_over(tmp_path: Path) -> None:
    collect(FakeBackend(parallel=4), ITEMS, SETTINGS, tmp_path / "one", identity={"model_sha256": "fake"})
    result = collect([Failing(6, parallel=4), FakeBackend(parallel=4)], ITEMS, SETTINGS, tmp_path / "two",
                     identity={"model_sha256": "fake"})
    assert result.store_path is not None and result.branches_done == 18
    assert result.servers[0].down and result.servers[1].down is None
    assert result.servers[0].branches + result.servers[1].branches == 18
    assert (tmp_path / "two" / STORE_NAME).read_bytes() == (tmp_path / "one" / STORE_NAME).read_bytes()


def test_the_last_backend_failing_is_an_error_and_resumable(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no answer"):
        collect([Failing(3, parallel=2), Failing(5, parallel=2)], ITEMS, SETTINGS, tmp_path / "c",
                identity={"model_sha256": "fake"})
    _, partial = read_log(tmp_path / "c" / LOG_NAME)
    assert not (tmp_path / "c" / STORE_NAME).exists()
    collect(FakeBackend(parallel=3), ITEMS, SETTINGS, tmp_path / "c", identity={"model_sha256": "fake"})
    collect(FakeBackend(parallel=4), ITEMS, SETTINGS, tmp_path / "ref", identity={"model_sha256": "fake"})
    assert (tmp_path / "c" / STORE_NAME).read_bytes() == (tmp_path / "ref" / STORE_NAME).read_bytes()
    _, records = read_log(tmp_path / "c" / LOG_NAME)
    assert records[: len(partial)] == partial and len(records) == 18
