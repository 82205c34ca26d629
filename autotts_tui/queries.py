"""Read-only SQL the TUI needs beyond `core.runstore.RunStore`'s reader API, against the same tables.

Kept here (not in core/runstore.py) so the TUI never depends on writer internals; every query runs on a
connection opened with `mode=ro`, so nothing here can change a study.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any


class ReadOnlyQueries:
    """A second, read-only SQLite connection for the few queries the run store's reader API lacks."""

    def __init__(self, path: str | Path, timeout: float = 5.0):
        uri = f"file:{Path(path).resolve()}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def results_touched_since(self, rowid: int) -> tuple[set[int], int]:
        """Runs whose result rows were added or replaced after result `rowid` (e.g. a held-out evaluation
        added later), and the newest result rowid. Results are written with INSERT OR REPLACE, which gives a
        replaced row a new rowid, so this sees replacements too."""
        rows = self._rows("SELECT DISTINCT run_id FROM results WHERE rowid > ?", (int(rowid),))
        top = self._rows("SELECT MAX(rowid) FROM results")[0][0]
        return {int(r[0]) for r in rows}, int(top or 0)

    def same_name_before(self, run_id: int, name: str) -> int | None:
        """The last run before `run_id` with the same name, if any."""
        rows = self._rows("SELECT id FROM runs WHERE name = ? AND id < ? ORDER BY id DESC LIMIT 1", (name, run_id))
        return int(rows[0][0]) if rows else None

    def sources_before(self, run_id: int, limit: int = 200) -> list[tuple[int, str]]:
        """(id, source) of the `limit` runs recorded just before `run_id`, newest first."""
        rows = self._rows("SELECT id, source FROM runs WHERE id < ? ORDER BY id DESC LIMIT ?", (run_id, limit))
        return [(int(i), str(src)) for i, src in rows]

    def recorded_traces(self, run_id: int) -> list[tuple[str, float, int, int]]:
        """(env, β, seed, question) of every trace recorded for a run (by `inspect_trace`)."""
        rows = self._rows("SELECT env, beta, seed, question FROM traces WHERE run_id = ? ORDER BY env, beta, seed, "
                          "question", (int(run_id),))
        return [(str(e), float(b), int(s), int(q)) for e, b, s, q in rows]
