"""The run store of a discovery study: SQLite in WAL mode, so a TUI can read while the MCP server writes.

Every candidate evaluation is written in ONE transaction (`record_run`): the run row, one result row per
(split, environment, β) with the per-episode arrays, all or nothing. A crash or kill mid-evaluation therefore
loses nothing recorded before and leaves no half-written run. Execution traces computed later on demand
(`inspect_trace`) and held-out results (`autotts heldout`) are added in transactions of their own.

Per-episode arrays are stored as zlib-compressed orjson: `{"seeds": [S], "answers": [[str|None]*Q]*S,
"tokens": [[int]], "correct": [[0/1]], "opened": [[int]]}`.

Schema changes are numbered migrations (`MIGRATIONS`); `schema_version` in the `meta` table says which ran.
The JSON columns hold the typed records of `core.discovery.records`, which migrate older JSON on read, so a store
of an earlier release reads through the same API (`RunStore(path, readonly=True)` never writes to it).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.discovery.records import (
    AuditReport,
    Baseline,
    EpisodeArrays,
    HeldoutSummary,
    IsolationReport,
    LeaderboardEntry,
    ResultRow,
    Run,
    RunSummary,
    Trace,
    TraceKey,
    format_run_id,
)
from core.errors import AutoTTSError

RUN_STORE_SCHEMA_VERSION = 2

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
        -- `autotts discover` (core.discovery.log): sessions, their rounds, every API call, and which runs a round made.
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


_RUN_COLUMNS = ("id, name, sha256, created, finished, status, error, traceback, betas, envs, summary, isolation, "
                "audit, seconds, stdout_tail")


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
        if version > RUN_STORE_SCHEMA_VERSION:
            raise RunStoreError(f"{self.path}: schema_version {version} is newer than this autotts ({RUN_STORE_SCHEMA_VERSION}); "
                                "upgrade autotts")
        if version < RUN_STORE_SCHEMA_VERSION:
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

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the store's lock, for the read queries of the modules that own other tables of
        this store (`core.discovery.log`); works on a read-only store."""
        with self._lock:
            yield self._db

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.reading() as db:
            return db.execute(sql, args).fetchall()

    # ----- writing -------------------------------------------------------------------------------------------------
    def record_run(self, run: Run, results: Iterable[ResultRow] = ()) -> int:
        """Write a run and all its results in one transaction; returns the new run's integer id."""
        if run.source is None:
            raise RunStoreError("a run is recorded with its source")
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (name, source, sha256, created, finished, status, error, traceback, betas, envs, "
                "summary, isolation, audit, seconds, stdout_tail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.name, run.source, source_sha256(run.source), run.created, run.finished, run.status, run.error,
                 run.traceback, _dumps(list(run.betas)), _dumps(list(run.envs)),
                 _dumps(None if run.summary is None else run.summary.to_dict()),
                 _dumps(None if run.isolation is None else run.isolation.to_dict()),
                 _dumps(None if run.audit is None else run.audit.to_dict()), run.seconds, run.stdout_tail),
            )
            run_id = cur.lastrowid
            assert run_id is not None  # an INSERT always sets it
            self._insert_results(db, run_id, results)
        return run_id

    def record_heldout(self, run_id: int, results: Iterable[ResultRow], summary: HeldoutSummary) -> None:
        """Add (or replace) a scored run's held-out result rows and its held-out summary, in one transaction."""
        with self.transaction() as db:
            row = db.execute("SELECT summary FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunStoreError(f"no run {format_run_id(run_id)} in this study")
            if row[0] is None:
                raise RunStoreError(f"{format_run_id(run_id)} has no search summary; only scored runs are held out")
            self._insert_results(db, run_id, results)
            merged = replace(RunSummary.from_dict(orjson.loads(row[0])), heldout=summary)
            db.execute("UPDATE runs SET summary=? WHERE id=?", (_dumps(merged.to_dict()), run_id))

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
                 r.max_opened, pack(None if ep is None else ep.to_dict()), now),
            )

    def record_trace(self, run_id: int, key: TraceKey, trace: Trace) -> None:
        """Record one episode's actions (replacing an earlier recording of the same episode)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO traces (run_id, env, beta, seed, question, answer, tokens, events, recorded) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, key.env, float(key.beta), int(key.seed), int(key.question), trace.answer, int(trace.tokens),
                 pack(trace.events), time.time()),
            )

    def record_baseline(self, env_key: str, env: str, spec: str, seeds_key: str, baseline: Baseline) -> None:
        """Cache a built-in's result on an environment (`env_key`: its fingerprint) for one set of seeds."""
        if baseline.episodes is None:
            raise RunStoreError("a baseline is recorded with its episodes")
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO baselines (env_key, env, spec, seeds_key, accuracy, avg_tokens, episodes, "
                "recorded) VALUES (?,?,?,?,?,?,?,?)",
                (env_key, env, spec, seeds_key, float(baseline.accuracy), float(baseline.avg_tokens),
                 pack(baseline.episodes.to_dict()), time.time()),
            )

    # ----- reading (the TUI's, the tools' and the CLI's API) -------------------------------------------------------
    def run(self, run_id: int | str, *, with_source: bool = True) -> Run:
        """One run; raises RunStoreError for an unknown id."""
        rid = parse_run_id(run_id)
        cols = _RUN_COLUMNS + (", source" if with_source else "")
        rows = self._query(f"SELECT {cols} FROM runs WHERE id=?", (rid,))
        if not rows:
            last = self.last_run_id()
            hint = f"ids run from r0001 to {format_run_id(last)}" if last else "no run has been recorded yet"
            raise RunStoreError(f"no run {format_run_id(rid)} in this study ({hint}); see get_history")
        return _run(rows[0])

    def runs_since(self, rowid: int = 0, *, limit: int = 1000) -> list[Run]:
        """Runs with id > rowid, oldest first, without source (for polling: pass the last id seen)."""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id > ? ORDER BY id LIMIT ?", (int(rowid), limit))
        return [_run(r) for r in rows]

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
            ep = _episodes(r["episodes"]) if with_episodes else None
            out.append(ResultRow(r["env"], r["beta"], r["accuracy"], r["avg_tokens"], ep, r["split"], r["max_opened"]))
        return out

    def results_touched_since(self, rowid: int) -> tuple[set[int], int]:
        """Runs whose result rows were added or replaced after result `rowid` (e.g. a held-out evaluation
        added later), and the newest result rowid. Results are written with INSERT OR REPLACE, which gives a
        replaced row a new rowid, so this sees replacements too."""
        rows = self._query("SELECT DISTINCT run_id FROM results WHERE rowid > ?", (int(rowid),))
        top = self._query("SELECT MAX(rowid) FROM results")[0][0]
        return {int(r[0]) for r in rows}, int(top or 0)

    def trace(self, run_id: int, key: TraceKey) -> Trace | None:
        """A recorded episode trace, or None."""
        rows = self._query(
            "SELECT answer, tokens, events FROM traces WHERE run_id=? AND env=? AND abs(beta-?)<1e-9 AND seed=? "
            "AND question=?", (run_id, key.env, float(key.beta), int(key.seed), int(key.question)))
        if not rows:
            return None
        return Trace(rows[0]["answer"], rows[0]["tokens"], unpack(rows[0]["events"]))

    def recorded_traces(self, run_id: int) -> list[TraceKey]:
        """Which episodes of a run have a recorded trace (by `inspect_trace`), in order."""
        rows = self._query("SELECT env, beta, seed, question FROM traces WHERE run_id = ? ORDER BY env, beta, seed, "
                           "question", (int(run_id),))
        return [TraceKey(str(e), float(b), int(s), int(q)) for e, b, s, q in rows]

    def baseline(self, env_key: str, spec: str, seeds_key: str, *, with_episodes: bool = False) -> Baseline | None:
        """A cached built-in result (see `record_baseline`), or None."""
        rows = self._query("SELECT accuracy, avg_tokens" + (", episodes" if with_episodes else "") +
                           " FROM baselines WHERE env_key=? AND spec=? AND seeds_key=?", (env_key, spec, seeds_key))
        if not rows:
            return None
        r = rows[0]
        return Baseline(r["accuracy"], r["avg_tokens"], _episodes(r["episodes"]) if with_episodes else None)

    def find_by_sha(self, sha256: str) -> list[Run]:
        """Runs of the source with this hash, oldest first, without source."""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE sha256=? ORDER BY id", (sha256,))
        return [_run(r) for r in rows]

    def same_name_before(self, run_id: int, name: str) -> int | None:
        """The last run before `run_id` with the same name, if any."""
        rows = self._query("SELECT id FROM runs WHERE name = ? AND id < ? ORDER BY id DESC LIMIT 1", (name, run_id))
        return int(rows[0][0]) if rows else None

    def sources_before(self, run_id: int, limit: int = 200) -> list[tuple[int, str]]:
        """(id, source) of the `limit` runs recorded just before `run_id`, newest first."""
        rows = self._query("SELECT id, source FROM runs WHERE id < ? ORDER BY id DESC LIMIT ?", (run_id, limit))
        return [(int(i), str(src)) for i, src in rows]

    def first_heldout(self) -> tuple[str, float] | None:
        """(run id, unix time) of the earliest held-out evaluation recorded in this study, or None."""
        first: tuple[str, float] | None = None
        with self.reading() as db:
            rows = db.execute("SELECT id, summary FROM runs WHERE summary LIKE '%\"heldout\"%'").fetchall()
        for rid, text in rows:
            held = (orjson.loads(text) or {}).get("heldout") or {}
            when = held.get("evaluated")
            if isinstance(when, int | float) and (first is None or when < first[1]):
                first = (format_run_id(rid), float(when))
        return first

    def leaderboard(self, *, include_failed: bool = True) -> list[LeaderboardEntry]:
        """Runs ranked by the discovery objective: best search-set accuracy over β first, then fewer tokens there.
        Failed and refused runs follow the scored ones, newest first."""
        scored: list[LeaderboardEntry] = []
        failed: list[LeaderboardEntry] = []
        for run in self.runs_since(0, limit=-1):
            assert run.id is not None
            summary = run.summary if run.status == "ok" else None
            best = None if summary is None else summary.best
            entry = LeaderboardEntry(
                id=run.id, run_id=run.run_id, name=run.name, status=run.status, created=run.created,
                sha256=run.sha256[:12], best_accuracy=None if best is None else best.accuracy,
                tokens_at_best=None if best is None else best.avg_tokens, beta_at_best=None if best is None else best.beta,
                monotone=None if summary is None else summary.monotone,
                on_frontier=None if summary is None else summary.on_frontier,
                error=run.error, after_heldout=bool(summary is not None and summary.after_heldout))
            (scored if best is not None else failed).append(entry)
        scored.sort(key=lambda e: (-(e.best_accuracy or 0.0), e.tokens_at_best or 0.0, e.id))
        failed.sort(key=lambda e: -e.id)
        return scored + (failed if include_failed else [])


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (comments dropped; no `;` inside literals)."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _loads(text: str | None) -> Any:
    """A JSON column; an empty object (written for a report the sandbox did not give) reads as None."""
    return (None if text is None else orjson.loads(text)) or None


def _episodes(blob: bytes | None) -> EpisodeArrays | None:
    data = None if blob is None else unpack(blob)
    return None if data is None else EpisodeArrays.from_dict(data)


def _run(row: sqlite3.Row) -> Run:
    """A `runs` row as a record; the JSON columns migrate on read (`core.discovery.records`)."""
    summary, isolation, audit = _loads(row["summary"]), _loads(row["isolation"]), _loads(row["audit"])
    return Run(
        id=int(row["id"]), name=row["name"], status=row["status"], created=row["created"], finished=row["finished"],
        betas=orjson.loads(row["betas"]), envs=orjson.loads(row["envs"]), error=row["error"], traceback=row["traceback"],
        summary=None if summary is None else RunSummary.from_dict(summary),
        isolation=None if isolation is None else IsolationReport.from_dict(isolation),
        audit=None if audit is None else AuditReport.from_dict(audit),
        seconds=row["seconds"], stdout_tail=row["stdout_tail"], sha256=row["sha256"],
        source=row["source"] if "source" in row.keys() else None,  # noqa: SIM118 - sqlite3.Row has no __contains__
    )
