"""Replay files: both formats load, round-trip, and malformed files fail naming file, question and field."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from core import ReplayFormatError, load_environment, save_environment
from core.store import environment_from_records

GOOD = [
    {"question": "1+1?", "gold_answer": "2", "probe_freq": 500, "final_answers_trace": ["2", "3"],
     "each_branch": [[["ERR", "2"], 1200, "2"], [[], 300, "3"]]},
    {"question": "2+2?", "gold_answer": "4", "probe_freq": 500, "final_answers_trace": ["4"],
     "each_branch": [[["4", "4", "4"], 1400, "4"]]},
]


def write(tmp_path, doc, name="env.json", gz=False):
    raw = json.dumps(doc).encode()
    p = tmp_path / name
    p.write_bytes(gzip.compress(raw) if gz else raw)
    return p


def test_paper_format_loads_into_tables(tmp_path):
    (tmp_path / "model").mkdir()
    env = load_environment(write(tmp_path / "model", GOOD, "bench.json"))
    assert env.name == "model/bench"
    assert env.n_questions == 2
    assert env.branch_counts.tolist() == [2, 1]
    assert env.branch_answers(0, 0) == (["ERR", "2"], 1200, "2")
    assert env.branch_answers(0, 1) == ([], 300, "3")
    assert env.gold_answers == ("2", "4")
    assert env.answer_vocab[0][env.gold_ids[0]] == "2"


def test_gzipped_file_is_detected_by_content(tmp_path):
    env = load_environment(write(tmp_path, GOOD, "plain_name.json", gz=True))
    assert env.n_questions == 2


def test_gold_never_said_gets_id_minus_one(tmp_path):
    doc = [dict(GOOD[0], gold_answer="99")]
    assert load_environment(write(tmp_path, doc)).gold_ids.tolist() == [-1]


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize("fmt", ["project", "paper"])
def test_round_trip(tmp_path, fmt, suffix):
    env = load_environment(write(tmp_path, GOOD))
    out = save_environment(env, tmp_path / f"out{suffix}", format=fmt)
    back = load_environment(out)
    for field in ("branch_offsets", "branch_tokens", "probe_offsets", "interval"):
        assert np.array_equal(getattr(env, field), getattr(back, field)), field
    assert [env.branch_answers(q, b) for q in range(2) for b in range(env.n_branches(q))] == \
           [back.branch_answers(q, b) for q in range(2) for b in range(back.n_branches(q))]
    assert back.gold_answers == env.gold_answers


def test_project_format_keeps_metadata_and_signals(tmp_path):
    records = [{"question": "q", "gold_answer": "1", "interval": 100,
                "branches": [(["1", "2"], 250, "1")], "signals": {"mean_logprob": [[-0.5, -0.25]]}}]
    env = environment_from_records(records, name="m/b", metadata={"model": "m", "benchmark": "b", "synthetic": True})
    back = load_environment(save_environment(env, tmp_path / "s.json.gz"))
    assert back.name == "m/b"
    assert back.metadata["synthetic"] is True
    assert back.signals["mean_logprob"].tolist() == [-0.5, -0.25]


def test_save_is_atomic_no_tmp_left(tmp_path):
    env = load_environment(write(tmp_path, GOOD))
    save_environment(env, tmp_path / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.json", "x.json"]


def broken(mutate):
    doc = json.loads(json.dumps(GOOD))
    mutate(doc)
    return doc


BAD_CASES = [
    ("empty list", [], None, None, "no questions"),
    ("top-level number", 3, None, None, "top level"),
    ("question not object", broken(lambda d: d.__setitem__(1, "x")), 1, None, "expected an object"),
    ("missing gold", broken(lambda d: d[1].pop("gold_answer")), 1, "gold_answer", "missing"),
    ("missing branches", broken(lambda d: d[0].pop("each_branch")), 0, "each_branch", "missing"),
    ("empty branches", broken(lambda d: d[0].__setitem__("each_branch", [])), 0, "each_branch", "non-empty"),
    ("negative tokens", broken(lambda d: d[0]["each_branch"][1].__setitem__(1, -5)), 0, "each_branch[1][1]", "negative"),
    ("float tokens", broken(lambda d: d[1]["each_branch"][0].__setitem__(1, 12.5)), 1, "each_branch[0][1]", "integer"),
    ("bool tokens", broken(lambda d: d[1]["each_branch"][0].__setitem__(1, True)), 1, "each_branch[0][1]", "integer"),
    ("string tokens", broken(lambda d: d[1]["each_branch"][0].__setitem__(1, "900")), 1, "each_branch[0][1]", "integer"),
    ("branch not triple", broken(lambda d: d[0]["each_branch"].__setitem__(0, [["1"], 5])), 0, "each_branch", "triple"),
    ("probe not string", broken(lambda d: d[0]["each_branch"][0][0].__setitem__(1, 7)), 0, "each_branch[0][0]", "strings"),
    ("final not string", broken(lambda d: d[0]["each_branch"][0].__setitem__(2, None)), 0, "each_branch[0][2]", "string"),
    ("zero interval", broken(lambda d: d[0].__setitem__("probe_freq", 0)), 0, "probe_freq", "positive"),
    ("gold not string", broken(lambda d: d[0].__setitem__("gold_answer", 2)), 0, "gold_answer", "string"),
]


@pytest.mark.parametrize(("label", "doc", "question", "field", "words"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_files_name_file_question_and_field(tmp_path, label, doc, question, field, words):
    path = write(tmp_path, doc)
    with pytest.raises(ReplayFormatError) as info:
        load_environment(path)
    message = str(info.value)
    assert str(path) in message
    assert words in message
    assert info.value.question == question
    if field is not None:
        assert info.value.field == field and f"'{field}'" in message


def test_truncated_json(tmp_path):
    p = tmp_path / "t.json"
    p.write_bytes(json.dumps(GOOD).encode()[:-40])
    with pytest.raises(ReplayFormatError, match="truncated or not JSON"):
        load_environment(p)


def test_truncated_gzip(tmp_path):
    p = tmp_path / "t.json.gz"
    p.write_bytes(gzip.compress(json.dumps(GOOD).encode())[:-20])
    with pytest.raises(ReplayFormatError, match="gzip"):
        load_environment(p)


def test_project_format_version_and_marker(tmp_path):
    with pytest.raises(ReplayFormatError, match="format"):
        load_environment(write(tmp_path, {"questions": []}))
    with pytest.raises(ReplayFormatError, match="schema_version 99"):
        load_environment(write(tmp_path, {"format": "autotts-replay", "schema_version": 99, "questions": []}))
    with pytest.raises(ReplayFormatError, match="no questions"):
        load_environment(write(tmp_path, {"format": "autotts-replay", "schema_version": 1, "questions": []}))


def test_signal_length_mismatch(tmp_path):
    doc = {"format": "autotts-replay", "schema_version": 1, "metadata": {"interval": 500},
           "questions": [{"question": "q", "gold_answer": "1", "branches": [[["1"], 600, "1"]],
                          "signals": {"mean_logprob": [[-1.0, -2.0]]}}]}
    with pytest.raises(ReplayFormatError, match="one value per probe") as info:
        load_environment(write(tmp_path, doc))
    assert info.value.field == "signals.mean_logprob"


def test_folder_skips_meta_sidecars(tmp_path):
    from core.store import expand_paths

    write(tmp_path, GOOD, "bench.json")
    (tmp_path / "bench.meta.json").write_text('{"model": "m"}')
    assert [p.name for p in expand_paths([tmp_path])] == ["bench.json"]
