"""What may be in a collection folder, and who may write to it.

`autotts collect OUT` writes only `branches.jsonl` (the log), `store.json` (built from it) and their temporary
names. A folder holding anything else — another collection's `store.json` without its log, notes, a dataset — is
refused before anything is written, so a mistyped OUT never replaces someone's data. One process at a time holds a
folder (an advisory lock on the folder itself), so two collections cannot interleave in one log.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from core.atomic import is_temporary_of
from core.collect.backend import CollectError
from core.collect.writer import LOG_NAME, STORE_NAME

OWN_FILES = (LOG_NAME, STORE_NAME, STORE_NAME + ".tmp")  # store.json.tmp: older autotts's temporary name


def foreign_files(folder: str | os.PathLike, allowed: Iterable[str] = ()) -> list[str]:
    """Names in `folder` a collection did not create (sorted); [] for a missing or empty folder, or a collection's."""
    d = Path(folder)
    if not d.exists():
        return []
    if not d.is_dir():
        return [d.name]
    names = sorted(p.name for p in d.iterdir())
    ok = set(OWN_FILES) | set(allowed)
    foreign = [n for n in names if n not in ok and not is_temporary_of(n, STORE_NAME)]
    if STORE_NAME in names and LOG_NAME not in names:
        foreign.insert(0, STORE_NAME)  # a store without its log was made by someone else
    return foreign


def check_output_folder(folder: str | os.PathLike, allowed: Iterable[str] = ()) -> None:
    """Raise CollectError (one line, naming the fix) if `folder` holds files a collection did not create."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise CollectError(f"{d} is a file, not a folder; choose a new output folder")
    foreign = foreign_files(d, allowed)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise CollectError(f"{d} holds files autotts collect did not create ({shown}); nothing was written: choose a "
                           "new or empty output folder (or move those files away)")


class FolderLock:
    """An exclusive advisory lock on a collection folder (released by `close`, or when the process dies)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise CollectError(f"{folder} is being written by another autotts collect; wait for it to finish, "
                               "or choose another output folder") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def folder_lock(folder: str | os.PathLike) -> FolderLock:
    return FolderLock(Path(folder))
