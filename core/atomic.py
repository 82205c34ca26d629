"""Atomic file replacement: readers see the old file or the new one, never half of one, and a returned write survives
a crash (the file and the rename are both fsync'd).

Every file autotts replaces in place goes through `replacing` (for writers that want a path) or `write_atomic`."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` to write the new content to. On a normal exit the temporary file is
    fsync'd and renamed over `path`, then the directory is fsync'd; on an exception it is removed and `path` left as
    it was. Parent folders are created. `durable=False` skips the fsyncs, for files that are rewritten every second
    and worthless after a crash (live progress): readers still never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # same directory, so the rename is atomic; a unique name, so concurrent writers never share a temporary file
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")  # what is_temporary_of recognises
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(p.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # makes the rename itself durable


def write_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Replace `path` with `data` atomically and (unless `durable=False`) durably, see `replacing`; returns the path."""
    with replacing(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def is_temporary_of(name: str, target: str) -> bool:
    """Whether the file name `name` is one of `replacing`'s temporary names for a file named `target` (left behind
    only by a crash mid-write)."""
    head, tail = f".{target}.", ".tmp"
    mid = name[len(head):-len(tail)] if name.startswith(head) and name.endswith(tail) else ""
    return len(mid) == 8 and all(c in "0123456789abcdef" for c in mid)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
