"""Stop reasons: a confident stop, the controller's own budget, the study's ceiling and an exhausted pool differ."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.stops import StopKind, own_branch_budget, render_stop_counts, stop_counts, stop_reason


def test_each_limit_reads_differently():
    assert stop_reason(10, 128, ceiling=64, own_budget=40).kind is StopKind.STOPPED
    assert stop_reason(40, 128, ceiling=64, own_budget=40).kind is StopKind.OWN_BUDGET
    assert stop_reason(64, 128, ceiling=64).kind is StopKind.CEILING
    assert stop_reason(32, 32, ceiling=64, own_budget=64).kind is StopKind.POOL
    # an own budget equal to the ceiling: the controller would have stopped there anyway
    assert stop_reason(64, 128, ceiling=64, own_budget=64).kind is StopKind.OWN_BUDGET
    # unknown budget: below every known limit is the controller's own stop
    r = stop_reason(7, 128, ceiling=64)
    assert r.kind is StopKind.STOPPED and r.branches_left == 57 and "own budget unknown" in r.text()
    assert stop_reason(7, 128).branches_left == 121
    assert {stop_reason(o, 100, ceiling=64, own_budget=50).short for o in (1, 50, 64)} == {"own stop", "own budget"}


def test_bad_inputs():
    with pytest.raises(ValueError, match="only 4"):
        stop_reason(5, 4)
    with pytest.raises(ValueError, match="non-negative int"):
        stop_reason(-1, 4)
    with pytest.raises(ValueError, match="non-negative int"):
        stop_reason(1, 4, ceiling=2.5)  # type: ignore[arg-type]


@given(st.integers(0, 128), st.integers(1, 128), st.none() | st.integers(1, 128), st.none() | st.integers(1, 128))
def test_rule(opened, pool, ceiling, budget):
    opened = min(opened, pool)
    r = stop_reason(opened, pool, ceiling=ceiling, own_budget=budget)
    limits = [x for x in (budget, ceiling, pool) if x is not None]
    # stopped exactly when below every known limit, and then with that many branches left
    assert (r.kind is StopKind.STOPPED) == (opened < min(limits))
    assert r.branches_left == max(0, min(limits) - opened)
    if r.kind is StopKind.CEILING:
        assert opened >= ceiling and (budget is None or opened < budget)
    if r.kind is StopKind.POOL:
        assert opened == pool and (ceiling is None or opened < ceiling) and (budget is None or opened < budget)
    assert r.text()


def test_counts():
    opened = np.array([64, 64, 12, 30, 128])
    counts = stop_counts(opened, [128, 128, 128, 30, 128], ceiling=64, own_budget=None)
    assert counts == {StopKind.CEILING: 3, StopKind.STOPPED: 1, StopKind.POOL: 1}
    assert render_stop_counts(counts) == "ceiling 3, own stop 1, pool used up 1"
    assert stop_counts([3, 3], 128, own_budget=3) == {StopKind.OWN_BUDGET: 2}
    with pytest.raises(ValueError, match="pool sizes"):
        stop_counts([1, 2], [3])


def test_own_budget_of_builtins_and_custom_controllers():
    assert own_branch_budget("sc:n=16") == 16
    assert own_branch_budget("asc") == 64 and own_branch_budget("esc:max_samples=32") == 32
    assert own_branch_budget("parallel-probe:num_chains=8") == 8
    assert own_branch_budget("cmc:beta=0") == 4 and own_branch_budget("cmc:beta=0.5") == 34
    assert own_branch_budget("cmc:beta=1") == 64 and own_branch_budget("cmc:beta=1,max_branches=20") == 20

    class Custom:
        max_branches = 12

        def solve(self, q):
            return None

    assert own_branch_budget(Custom()) == 12
    assert own_branch_budget(object()) is None
    with pytest.raises(ValueError, match="sweep"):
        own_branch_budget("cmc:beta=0,1")
