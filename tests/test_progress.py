"""core.progress: the one record progress callbacks receive, and the progress.json record live viewers read."""

import orjson

from core.evaluate import evaluate
from core.progress import Progress, RunProgress, read_run_progress
from core.synthetic import generate


def test_evaluation_reports_seeds_done_on_both_paths():
    env = generate(n_questions=3, n_branches=16, interval=100, max_probes=8, seed=1)
    for fast in (True, False):
        seen: list[Progress] = []
        evaluate(env, "sc:n=4", range(3), fast=fast, progress=seen.append)
        assert seen[-1] == Progress(3, 3, "seeds") and seen[-1].fraction == 1.0


def test_progress_file_defaults_and_garbage(tmp_path):
    p = tmp_path / "progress.json"
    p.write_bytes(orjson.dumps({"run": "cand", "done": 1, "total": 4, "updated": 10.0}))
    got = read_run_progress(p)
    assert got == RunProgress(run="cand", done=1, total=4, unit="episodes", updated=10.0)
    assert got.fraction == 0.25 and got.stalled(200.0) and not got.stalled(20.0)
    p.write_text("[1, 2]")
    assert read_run_progress(p) is None and read_run_progress(tmp_path / "absent.json") is None
