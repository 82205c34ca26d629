"""core.atomic: a replaced file is whole or untouched, and no temporary file is left behind."""

import pytest

from core.atomic import is_temporary_of, replacing, write_atomic


def test_write_atomic_replaces_and_creates_folders(tmp_path):
    p = tmp_path / "a" / "b.json"
    assert write_atomic(p, b"one") == p and p.read_bytes() == b"one"
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two" and [x.name for x in p.parent.iterdir()] == ["b.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "b.json"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["b.json"]


def test_temporary_names_are_recognised(tmp_path):
    p = tmp_path / "store.json"
    with replacing(p) as tmp:
        assert is_temporary_of(tmp.name, "store.json") and not is_temporary_of(tmp.name, "other.json")
    assert not is_temporary_of("store.json", "store.json") and not is_temporary_of(".store.json.notes.tmp", "store.json")


def test_a_collection_folder_may_hold_a_store_left_half_written_by_a_crash(tmp_path):
    from core.collect.folder import foreign_files

    for name in ("branches.jsonl", "store.json", ".store.json.0a1b2c3d.tmp", "store.json.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert foreign_files(tmp_path) == []
    (tmp_path / ".notes.0a1b2c3d.tmp").write_bytes(b"")
    assert foreign_files(tmp_path) == [".notes.0a1b2c3d.tmp"]
