"""The run store of a discovery study: SQLite in WAL mode, so a TUI can read while the MCP server writes.

Every candidate evaluation is written in ONE transaction (`record_run`): the run row, one result row per
(split, environment, β) with the per-episode arrays, all or nothing. A crash or kill mid-evaluation therefore
loses nothing recorded before and leaves no half-written run. Execution traces computed later on demand
(`inspect_trace`) and held-out results (`autotts heldout`) are added in transactions of their own.

Per-episode arrays are stored as zlib-compressed orjson: `{"seeds": [S], "answers": [[str|None]*Q]*S,
"tokens": [[int]], "correct": [[0/1]], "opened": [[int]]}`.

Schema changes are numbered migrations (`MIGRATIONS`); `schema_version` in the `meta` table says which ran.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.errors import AutoTTSError

SCHEMA_VERSION = 2

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial", """
        CREATE TABLE runs (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            name        TEXT NOT NULL,
            source      TEXT NOT NULL,
            sha256      TEXT NOT NULL,
            created     REAL NOT NULL,            -- unix time the evaluation started
            finished    REAL NOT NULL,            -- unix time it was recorded
            status      TEXT NOT NULL,            -- ok | error | refused
            error       TEXT,                     -- short message (error / refused)
            traceback   TEXT,                     -- trimmed traceback of a candidate error
            betas       TEXT NOT NULL,            -- json list of the β evaluated
            envs        TEXT NOT NULL,            -- json list of the search environments evaluated
            summary     TEXT,                     -- json: search averages, monotonicity, frontier position
            isolation   TEXT,                     -- json: the sandbox's isolation report
            audit       TEXT,                     -- json: {checked, mismatches, passed}
            seconds     REAL,                     -- wall time of the evaluation
            stdout_tail TEXT
        );
        CREATE INDEX runs_sha ON runs(sha256);
        CREATE TABLE results (
            run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            split       TEXT NOT NULL,            -- search | heldout
            env         TEXT NOT NULL,
            beta        REAL NOT NULL,
            accuracy    REAL NOT NULL,            -- percent, 2 decimals (the paper's rounding)
            avg_tokens  REAL NOT NULL,
            n_seeds     INTEGER NOT NULL,
            n_questions INTEGER NOT NULL,
            max_opened  INTEGER,
            episodes    BLOB NOT NULL,            -- zlib(orjson) per-episode arrays
            recorded    REAL NOT NULL,
            PRIMARY KEY (run_id, split, env, beta)
        );
        CREATE TABLE traces (
            run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            env         TEXT NOT NULL,
            beta        REAL NOT NULL,
            seed        INTEGER NOT NULL,
            question    INTEGER NOT NULL,
            answer      TEXT,
            tokens      INTEGER NOT NULL,
            events      BLOB NOT NULL,            -- zlib(orjson) [[op, branch, cost, answer|null], ...]
            recorded    REAL NOT NULL,
            PRIMARY KEY (run_id, env, beta, seed, question)
        );
        CREATE TABLE baselines (
            env_key     TEXT NOT NULL,            -- environment fingerprint (file hash + question slice)
            env         TEXT NOT NULL,
            spec        TEXT NOT NULL,            -- e.g. sc:n=64, cmc:beta=0.5
            seeds_key   TEXT NOT NULL,
            accuracy    REAL NOT NULL,
            avg_tokens  REAL NOT NULL,
            episodes    BLOB NOT NULL,
            recorded    REAL NOT NULL,
            PRIMARY KEY (env_key, spec, seeds_key)
        );
    """),
    (2, "discovery sessions", """
        -- `autotts discover` (core.discovery_log): sessions, their rounds, every API call, and which runs a round made.
        CREATE TABLE discovery_sessions (
            id          TEXT PRIMARY KEY,         -- d0001, d0002, ...
            created     REAL NOT NULL,
            updated     REAL NOT NULL,
            status      TEXT NOT NULL,            -- running | done | budget | interrupted | failed
            model       TEXT NOT NULL,            -- explorer model of the latest start
            rounds      INTEGER NOT NULL,         -- rounds requested
            config      TEXT NOT NULL,            -- json: the options of the latest start
            final_run   INTEGER REFERENCES runs(id),
            report      TEXT                      -- json: selection, held-out table, cost
        );
        CREATE TABLE discovery_rounds (
            session     TEXT NOT NULL REFERENCES discovery_sessions(id) ON DELETE CASCADE,
            round       INTEGER NOT NULL,         -- from 1
            status      TEXT NOT NULL,            -- done | partial (stopped by the budget cap)
            candidate   INTEGER REFERENCES runs(id),  -- the round's final candidate (NULL: none)
            how         TEXT NOT NULL,            -- named | best-of-round | last-run | from-reply | none
            started     REAL NOT NULL,
            finished    REAL NOT NULL,
            turns       INTEGER NOT NULL,
            tool_calls  INTEGER NOT NULL,
            input_tokens        INTEGER NOT NULL,
            output_tokens       INTEGER NOT NULL,
            cache_write_tokens  INTEGER NOT NULL,
            cache_read_tokens   INTEGER NOT NULL,
            cost_usd    REAL NOT NULL,            -- all calls of this round, interrupted attempts included
            note        TEXT,                     -- why the round ended, the explorer's closing words
            PRIMARY KEY (session, round)
        );
        CREATE TABLE discovery_calls (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            session     TEXT NOT NULL REFERENCES discovery_sessions(id) ON DELETE CASCADE,
            round       INTEGER NOT NULL,
            created     REAL NOT NULL,
            seconds     REAL NOT NULL,            -- wall time including retries
            model       TEXT NOT NULL,
            stop_reason TEXT,
            input_tokens        INTEGER NOT NULL,
            output_tokens       INTEGER NOT NULL,
            cache_write_tokens  INTEGER NOT NULL,
            cache_read_tokens   INTEGER NOT NULL,
            cost_usd    REAL NOT NULL,
            retries     INTEGER NOT NULL
        );
        CREATE INDEX discovery_calls_round ON discovery_calls(session, round);
        CREATE TABLE discovery_runs (
            run_id      INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
            session     TEXT NOT NULL REFERENCES discovery_sessions(id) ON DELETE CASCADE,
            round       INTEGER NOT NULL          -- the round whose tool call evaluated it
        );
        CREATE INDEX discovery_runs_round ON discovery_runs(session, round);
    """),
]
"""(version, name, SQL): applied in order, each in its own transaction together with the version bump."""


class RunStoreError(AutoTTSError):
    """The run store is unreadable, newer than this autotts, or a run id does not exist."""


def pack(obj: Any) -> bytes:
    """orjson + zlib, for per-episode arrays and traces."""
    return zlib.compress(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), 6)


def unpack(blob: bytes) -> Any:
    return orjson.loads(zlib.decompress(blob))


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def format_run_id(run_id: int) -> str:
    """The id agents see: `r0007`."""
    return f"r{run_id:04d}"


def parse_run_id(value: Any) -> int:
    """Accept `r0007`, `r7`, `7` or 7; raise RunStoreError naming the format otherwise."""
    if isinstance(value, bool):
        raise RunStoreError(f"run id {value!r} is not a run id; use one like r0007 (see get_history)")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text.startswith("r"):
        text = text[1:]
    if not text.isdigit() or len(text) > 12:
        raise RunStoreError(f"'{str(value)[:40]}' is not a run id; use one like r0007 (see get_history)")
    return int(text)


@dataclass
class EpisodeArrays:
    """The per-episode arrays behind one result row."""

    seeds: np.ndarray
    """int64[S]."""
    answers: list[list[str | None]]
    """answers[s][q]."""
    tokens: np.ndarray
    """int64[S, Q]."""
    correct: np.ndarray
    """bool[S, Q]."""
    opened: np.ndarray | None = None
    """int32[S, Q]: branches opened (or read) per episode, when known."""

    def to_blob(self) -> bytes:
        return pack({
            "seeds": np.asarray(self.seeds).tolist(), "answers": self.answers,
            "tokens": np.asarray(self.tokens).tolist(), "correct": np.asarray(self.correct, dtype=np.int8).tolist(),
            "opened": None if self.opened is None else np.asarray(self.opened).tolist(),
        })

    @classmethod
    def from_blob(cls, blob: bytes) -> EpisodeArrays:
        d = unpack(blob)
        return cls(
            seeds=np.asarray(d["seeds"], dtype=np.int64), answers=d["answers"],
            tokens=np.asarray(d["tokens"], dtype=np.int64).reshape(len(d["seeds"]), -1),
            correct=np.asarray(d["correct"], dtype=bool).reshape(len(d["seeds"]), -1),
            opened=None if d.get("opened") is None else np.asarray(d["opened"], dtype=np.int32),
        )


@dataclass
class ResultRow:
    """One (split, environment, β) of a run."""

    env: str
    beta: float
    accuracy: float
    avg_tokens: float
    episodes: EpisodeArrays | None = None
    split: str = "search"
    max_opened: int | None = None


@dataclass
class RunRecord:
    """Everything one evaluation produced, written by `RunStore.record_run` in one transaction."""

    name: str
    source: str
    status: str
    """ok | error | refused."""
    created: float
    finished: float
    betas: list[float]
    envs: list[str]
    results: Iterable[ResultRow] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    summary: dict[str, Any] | None = None
    isolation: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    seconds: float | None = None
    stdout_tail: str | None = None


_RUN_COLUMNS = ("id, name, sha256, created, finished, status, error, traceback, betas, envs, summary, isolation, "
                "audit, seconds, stdout_tail")
_JSON_COLUMNS = ("betas", "envs", "summary", "isolation", "audit")


class RunStore:
    """A study's SQLite run store. Thread-safe (one connection behind a lock); readers may be other processes.

    `RunStore(path, readonly=True)` opens an existing store for reading only (the TUI), never migrating it.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise RunStoreError(f"{self.path}: no run store here; create the study with `autotts study init`")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False,
                                       isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.row_factory = sqlite3.Row
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise RunStoreError(f"{self.path}: schema_version {version} is newer than this autotts ({SCHEMA_VERSION}); "
                                "upgrade autotts")
        if version < SCHEMA_VERSION:
            if readonly:
                raise RunStoreError(f"{self.path}: schema_version {version} needs migrating; open it once read-write "
                                    "(e.g. start `autotts mcp` on the study)")
            self._migrate(version)

    # ----- schema --------------------------------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._lock:
            has_meta = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            if not has_meta:
                return 0
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            return int(row[0]) if row else 0

    def _migrate(self, current: int) -> None:
        with self._lock:
            for version, name, sql in MIGRATIONS:
                if version <= current:
                    continue
                with self.transaction() as db:
                    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    for statement in _statements(sql):
                        db.execute(statement)
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(version),))
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                               (f"migration_{version:03d}", f"{name} {time.time():.0f}"))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""
        if self.readonly:
            raise RunStoreError(f"{self.path}: opened read-only")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- writing -------------------------------------------------------------------------------------------------
    def record_run(self, run: RunRecord) -> int:
        """Write a run and all its results in one transaction; returns the new run's integer id."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (name, source, sha256, created, finished, status, error, traceback, betas, envs, "
                "summary, isolation, audit, seconds, stdout_tail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.name, run.source, source_sha256(run.source), run.created, run.finished, run.status, run.error,
                 run.traceback, _dumps(run.betas), _dumps(run.envs), _dumps(run.summary), _dumps(run.isolation),
                 _dumps(run.audit), run.seconds, run.stdout_tail),
            )
            run_id = cur.lastrowid
            assert run_id is not None  # an INSERT always sets it
            self._insert_results(db, run_id, run.results)
        return run_id

    def add_results(self, run_id: int, results: Iterable[ResultRow], *, summary_key: str | None = None,
                    summary: dict[str, Any] | None = None) -> None:
        """Add (or replace) result rows of an existing run in one transaction, e.g. its held-out evaluation.

        With `summary_key`, `summary` is stored under that key of the run's summary json in the same transaction.
        """
        with self.transaction() as db:
            row = db.execute("SELECT summary FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunStoreError(f"no run {format_run_id(run_id)} in this study")
            self._insert_results(db, run_id, results)
            if summary_key is not None:
                merged = orjson.loads(row[0]) if row[0] else {}
                merged[summary_key] = summary
                db.execute("UPDATE runs SET summary=? WHERE id=?", (_dumps(merged), run_id))

    @staticmethod
    def _insert_results(db: sqlite3.Connection, run_id: int, results: Iterable[ResultRow]) -> None:
        now = time.time()
        for r in results:
            ep = r.episodes
            n_seeds, n_q = (0, 0) if ep is None else (len(ep.seeds), int(np.asarray(ep.tokens).shape[1]))
            db.execute(
                "INSERT OR REPLACE INTO results (run_id, split, env, beta, accuracy, avg_tokens, n_seeds, "
                "n_questions, max_opened, episodes, recorded) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, r.split, r.env, float(r.beta), float(r.accuracy), float(r.avg_tokens), n_seeds, n_q,
                 r.max_opened, ep.to_blob() if ep is not None else pack(None), now),
            )

    def record_trace(self, run_id: int, env: str, beta: float, seed: int, question: int, answer: str | None,
                     tokens: int, events: list[Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO traces (run_id, env, beta, seed, question, answer, tokens, events, recorded) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, env, float(beta), int(seed), int(question), answer, int(tokens), pack(events), time.time()),
            )

    def record_baseline(self, env_key: str, env: str, spec: str, seeds_key: str, accuracy: float,
                        avg_tokens: float, episodes: EpisodeArrays) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO baselines (env_key, env, spec, seeds_key, accuracy, avg_tokens, episodes, "
                "recorded) VALUES (?,?,?,?,?,?,?,?)",
                (env_key, env, spec, seeds_key, float(accuracy), float(avg_tokens), episodes.to_blob(), time.time()),
            )

    # ----- reading (the TUI's API) ---------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def run(self, run_id: int | str, *, with_source: bool = True) -> dict[str, Any]:
        """One run as a dict (json columns decoded); raises RunStoreError for an unknown id."""
        rid = parse_run_id(run_id)
        cols = _RUN_COLUMNS + (", source" if with_source else "")
        rows = self._query(f"SELECT {cols} FROM runs WHERE id=?", (rid,))
        if not rows:
            last = self.last_run_id()
            hint = f"ids run from r0001 to {format_run_id(last)}" if last else "no run has been recorded yet"
            raise RunStoreError(f"no run {format_run_id(rid)} in this study ({hint}); see get_history")
        return _run_dict(rows[0])

    def runs_since(self, rowid: int = 0, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Runs with id > rowid, oldest first, without source (for polling: pass the last id seen)."""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id > ? ORDER BY id LIMIT ?", (int(rowid), limit))
        return [_run_dict(r) for r in rows]

    def last_run_id(self) -> int:
        rows = self._query("SELECT MAX(id) FROM runs")
        return int(rows[0][0] or 0)

    def count_runs(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM runs")[0][0])

    def results(self, run_id: int | str, *, split: str | None = "search", with_episodes: bool = False,
                env: str | None = None, beta: float | None = None) -> list[ResultRow]:
        """A run's result rows (one split, or all with split=None), ordered by split, env, β."""
        rid = parse_run_id(run_id)
        sql = ("SELECT split, env, beta, accuracy, avg_tokens, max_opened" + (", episodes" if with_episodes else "")
               + " FROM results WHERE run_id=?")
        args: list[Any] = [rid]
        if split is not None:
            sql += " AND split=?"
            args.append(split)
        if env is not None:
            sql += " AND env=?"
            args.append(env)
        if beta is not None:
            sql += " AND abs(beta - ?) < 1e-9"
            args.append(float(beta))
        sql += " ORDER BY split DESC, rowid"
        out = []
        for r in self._query(sql, tuple(args)):
            ep = EpisodeArrays.from_blob(r["episodes"]) if with_episodes and r["episodes"] is not None else None
            out.append(ResultRow(r["env"], r["beta"], r["accuracy"], r["avg_tokens"], ep, r["split"], r["max_opened"]))
        return out

    def trace(self, run_id: int, env: str, beta: float, seed: int, question: int) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT answer, tokens, events FROM traces WHERE run_id=? AND env=? AND abs(beta-?)<1e-9 AND seed=? "
            "AND question=?", (run_id, env, float(beta), int(seed), int(question)))
        if not rows:
            return None
        return {"answer": rows[0]["answer"], "tokens": rows[0]["tokens"], "events": unpack(rows[0]["events"])}

    def baseline(self, env_key: str, spec: str, seeds_key: str, *, with_episodes: bool = False
                 ) -> tuple[float, float, EpisodeArrays | None] | None:
        rows = self._query("SELECT accuracy, avg_tokens" + (", episodes" if with_episodes else "") +
                           " FROM baselines WHERE env_key=? AND spec=? AND seeds_key=?", (env_key, spec, seeds_key))
        if not rows:
            return None
        r = rows[0]
        return r["accuracy"], r["avg_tokens"], EpisodeArrays.from_blob(r["episodes"]) if with_episodes else None

    def find_by_sha(self, sha256: str) -> list[dict[str, Any]]:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE sha256=? ORDER BY id", (sha256,))
        return [_run_dict(r) for r in rows]

    def leaderboard(self, *, include_failed: bool = True) -> list[dict[str, Any]]:
        """Runs ranked by the discovery objective: best search-set accuracy over β first, then fewer tokens there.

        Each row: id, run_id (`r0007`), name, status, created, best_accuracy, tokens_at_best, beta_at_best,
        monotone, frontier (how many β points lie on or above the baseline frontier), error. Failed and refused
        runs follow the scored ones, newest first.
        """
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id")
        scored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for r in rows:
            d = _run_dict(r)
            s = d.get("summary") or {}
            best = s.get("best") if d["status"] == "ok" else None
            entry = {
                "id": d["id"], "run_id": format_run_id(d["id"]), "name": d["name"], "status": d["status"],
                "created": d["created"], "sha256": d["sha256"][:12],
                "best_accuracy": None if best is None else best.get("accuracy"),
                "tokens_at_best": None if best is None else best.get("avg_tokens"),
                "beta_at_best": None if best is None else best.get("beta"),
                "monotone": s.get("monotone") if d["status"] == "ok" else None,
                "on_frontier": s.get("on_frontier") if d["status"] == "ok" else None,
                "error": d["error"],
            }
            (scored if best is not None else failed).append(entry)
        scored.sort(key=lambda e: (-e["best_accuracy"], e["tokens_at_best"], e["id"]))
        failed.sort(key=lambda e: -e["id"])
        return scored + (failed if include_failed else [])


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (comments dropped; no `;` inside literals)."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for k in _JSON_COLUMNS:
        if k in d and d[k] is not None:
            d[k] = orjson.loads(d[k])
    d["run_id"] = format_run_id(d["id"])
    return d
