"""Study folders: creation (default demo split, files, folders, slices), validation, reopening, migration guard."""

from __future__ import annotations

import orjson
import pytest

from core.discovery.study import DEFAULT_BETAS, STUDY_FILE, Study, StudyError, parse_question_slice
from core.store import save_environment
from core.synthetic import generate


@pytest.fixture(scope="module")
def env_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("envs")
    paths = []
    for i, bench in enumerate(("alpha", "beta", "gamma")):
        env = generate(n_questions=6, n_branches=32, seed=10 + i, model="synth", benchmark=bench)
        paths.append(save_environment(env, root / "synth" / f"{bench}.json.gz"))
    return root, paths


def test_default_study_splits_the_demo(tmp_path):
    study = Study.create(tmp_path / "s")
    assert study.search_names == ["synthetic-demo/demo[0::2]"]
    assert study.heldout_names == ["synthetic-demo/demo[1::2]"]
    assert study.betas == DEFAULT_BETAS and study.max_branches == 64 and study.n_seeds == 100
    assert (tmp_path / "s" / STUDY_FILE).is_file() and study.store_path.is_file()
    doc = orjson.loads((tmp_path / "s" / STUDY_FILE).read_bytes())
    assert doc["format"] == "autotts-study" and doc["schema_version"] == 1
    assert doc["search"][0]["path"] == "@demo"  # survives reinstalling the package elsewhere
    search, = study.search_envs()
    held, = study.heldout_envs()
    full = study.resolve_path(study.search[0])
    from core.store import load_environment

    demo = load_environment(full)
    assert search.n_questions + held.n_questions == demo.n_questions
    assert search.questions == demo.questions[0::2] and held.questions == demo.questions[1::2]
    again = Study.open(tmp_path / "s")
    assert again.search == study.search and again.heldout == study.heldout


def test_files_and_folders(tmp_path, env_files):
    root, paths = env_files
    study = Study.create(tmp_path / "s", search=[root / "synth"], heldout=[],
                         betas=[1, 0, 0.5], max_branches=32, n_seeds=7)
    assert study.search_names == ["synth/alpha", "synth/beta", "synth/gamma"]
    assert study.betas == (0.0, 0.5, 1.0) and study.seeds == range(7)
    assert [e.n_questions for e in study.search_envs(["synth/beta"])] == [6]
    with pytest.raises(StudyError, match="already holds a study"):
        Study.create(tmp_path / "s", search=[paths[0]])


def test_paths_inside_the_folder_are_stored_relative(tmp_path):
    folder = tmp_path / "s"
    env = generate(n_questions=4, n_branches=16, seed=1, model="m", benchmark="b")
    p = save_environment(env, folder / "data" / "b.json")
    study = Study.create(folder, search=[p])
    assert study.search[0].path == "data/b.json"
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert Study.open(moved).search_envs()[0].n_questions == 4


def test_validation(tmp_path, env_files):
    _, paths = env_files
    with pytest.raises(StudyError, match="both a search and a held-out"):
        Study.create(tmp_path / "a", search=[paths[0]], heldout=[paths[0]])
    with pytest.raises(StudyError, match="at least one search"):
        Study.create(tmp_path / "b", search=[], heldout=[paths[0]])
    with pytest.raises(StudyError, match="betas"):
        Study.create(tmp_path / "c", search=[paths[0]], betas=[0, 2])
    with pytest.raises(StudyError, match="selects no question"):
        Study.create(tmp_path / "d", search=[{"path": paths[0], "questions": "10:"}])
    with pytest.raises(StudyError, match="no study at"):
        Study.open(tmp_path / "nowhere")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / STUDY_FILE).write_text('{"format": "autotts-study", "schema_version": 9}')
    with pytest.raises(StudyError, match="newer"):
        Study.open(tmp_path / "e")
    split = Study.create(tmp_path / "f", search=[{"path": paths[1], "questions": "0:3"}],
                         heldout=[{"path": paths[1], "questions": "3:"}])
    assert split.search_names == ["synth/beta[0:3]"] and split.heldout_names == ["synth/beta[3:]"]


def test_changed_file_is_reported(tmp_path):
    env = generate(n_questions=4, n_branches=16, seed=1, model="m", benchmark="b")
    p = save_environment(env, tmp_path / "b.json")
    study = Study.create(tmp_path / "s", search=[p])
    save_environment(generate(n_questions=4, n_branches=16, seed=2, model="m", benchmark="b"), p)
    reopened = Study.open(tmp_path / "s")
    reopened.search_envs()
    assert reopened.warnings and "changed since the study was created" in reopened.warnings[0]
    assert study.fingerprint(study.search[0]) == reopened.fingerprint(reopened.search[0])  # keyed on the recorded hash


def test_open_or_create(tmp_path):
    s = Study.open_or_create(tmp_path / "new")
    assert s.search_names == ["synthetic-demo/demo[0::2]"]
    assert Study.open_or_create(tmp_path / "new").created == s.created
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(StudyError, match="no study at"):
        Study.open_or_create(tmp_path / "busy")


def test_question_slices():
    assert parse_question_slice("0::2", 5) == [0, 2, 4]
    assert parse_question_slice("3", 5) == [3]
    assert parse_question_slice("-2:", 5) == [3, 4]
    for bad in ("a:b", "1:2:3:4", "::0"):
        with pytest.raises(StudyError):
            parse_question_slice(bad, 5)


def test_overlapping_slices_are_refused(tmp_path, env_files):
    _, paths = env_files
    with pytest.raises(StudyError, match="share questions"):
        Study.create(tmp_path / "s", search=[{"path": paths[2], "questions": "0::2"}],
                     heldout=[{"path": paths[2], "questions": "0::3"}])
