"""core.atomic: a replaced file is whole or untouched, and no temporary file is left behind."""

import pytest

from core.atomic import replacing, write_atomic


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
