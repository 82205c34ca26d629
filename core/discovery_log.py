"""The record of `autotts discover` sessions, kept in the study's run store (tables of migration 2).

A *session* is one unattended discovery loop over a study; it runs *rounds*, and every API call it makes is
written as it returns (`discovery_calls`), so the money spent is known even for a round a crash cut short. A
round becomes durable in ONE transaction (`complete_round`): its row, its totals and the tags of the runs its
tool calls evaluated. Resuming means starting after the last recorded round; calls of an interrupted attempt
stay on the bill of the round that is then redone.

Readers (the TUI) open the store read-only and use `sessions`, `rounds` and `run_rounds`; nothing here imports
the Anthropic SDK, so the loop lives outside `core`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from core.runstore import RunStore


@dataclass(frozen=True)
class Usage:
    """Tokens of one API response and what they cost."""

    input_tokens: int = 0
    """Uncached input tokens."""
    output_tokens: int = 0
    cache_write_tokens: int = 0
    """`cache_creation_input_tokens`: input written to the prompt cache."""
    cache_read_tokens: int = 0
    """`cache_read_input_tokens`: input read from the prompt cache."""
    cost_usd: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        """Everything the request sent: uncached + cache writes + cache reads."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_write_tokens + other.cache_write_tokens,
                     self.cache_read_tokens + other.cache_read_tokens, self.cost_usd + other.cost_usd)

    def to_json(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_write_tokens": self.cache_write_tokens, "cache_read_tokens": self.cache_read_tokens,
                "cost_usd": round(self.cost_usd, 6)}


_SUM = ("COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), COALESCE(SUM(cache_write_tokens),0), "
        "COALESCE(SUM(cache_read_tokens),0), COALESCE(SUM(cost_usd),0), COUNT(*)")


class DiscoveryLog:
    """Sessions, rounds, calls and run tags of `autotts discover`, over a `RunStore` (read-write or read-only)."""

    def __init__(self, store: RunStore):
        self.store = store

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store._query(sql, args)]  # noqa: SLF001 - same package, one lock

    # ----- sessions ----------------------------------------------------------------------------------------------
    def new_session(self, model: str, rounds: int, config: dict[str, Any]) -> str:
        now = time.time()
        with self.store.transaction() as db:
            n = db.execute("SELECT COUNT(*) FROM discovery_sessions").fetchone()[0]
            sid = f"d{n + 1:04d}"
            while db.execute("SELECT 1 FROM discovery_sessions WHERE id=?", (sid,)).fetchone():
                n += 1
                sid = f"d{n + 1:04d}"
            db.execute("INSERT INTO discovery_sessions (id, created, updated, status, model, rounds, config) "
                       "VALUES (?,?,?,?,?,?,?)", (sid, now, now, "running", model, rounds, _dumps(config)))
        return sid

    def update_session(self, sid: str, **fields: Any) -> None:
        """Set columns of a session (status, model, rounds, config, final_run, report); `updated` is stamped."""
        allowed = {"status", "model", "rounds", "config", "final_run", "report"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown session field(s): {sorted(bad)}")
        cols = ", ".join(f"{k}=?" for k in fields)
        vals = [_dumps(v) if k in ("config", "report") else v for k, v in fields.items()]
        with self.store.transaction() as db:
            db.execute(f"UPDATE discovery_sessions SET {cols}{', ' if cols else ''}updated=? WHERE id=?",
                       (*vals, time.time(), sid))

    def session(self, sid: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM discovery_sessions WHERE id=?", (sid,))
        return _session_dict(rows[0]) if rows else None

    def sessions(self) -> list[dict[str, Any]]:
        """Every session, oldest first."""
        return [_session_dict(r) for r in self._rows("SELECT * FROM discovery_sessions ORDER BY created, id")]

    def latest_session(self) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM discovery_sessions ORDER BY created DESC, id DESC LIMIT 1")
        return _session_dict(rows[0]) if rows else None

    # ----- calls -------------------------------------------------------------------------------------------------
    def record_call(self, sid: str, round_no: int, model: str, stop_reason: str | None, usage: Usage,
                    seconds: float, retries: int) -> None:
        """One API response, written at once: money spent is on record even if the round never completes."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO discovery_calls (session, round, created, seconds, model, stop_reason, input_tokens, "
                "output_tokens, cache_write_tokens, cache_read_tokens, cost_usd, retries) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (sid, round_no, time.time(), float(seconds), model, stop_reason, usage.input_tokens,
                 usage.output_tokens, usage.cache_write_tokens, usage.cache_read_tokens, float(usage.cost_usd),
                 int(retries)))

    def spent(self, sid: str, round_no: int | None = None) -> tuple[Usage, int]:
        """(summed usage, number of calls) of a session, or of one of its rounds."""
        sql = f"SELECT {_SUM} FROM discovery_calls WHERE session=?"
        args: tuple[Any, ...] = (sid,)
        if round_no is not None:
            sql += " AND round=?"
            args = (sid, round_no)
        r = self.store._query(sql, args)[0]  # noqa: SLF001
        return Usage(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4])), int(r[5])

    # ----- rounds and runs ---------------------------------------------------------------------------------------
    def tag_run(self, run_id: int, sid: str, round_no: int) -> None:
        """Mark a run as evaluated by a round (first tag wins: a duplicate keeps its original round)."""
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO discovery_runs (run_id, session, round) VALUES (?,?,?)",
                       (int(run_id), sid, int(round_no)))

    def complete_round(self, sid: str, round_no: int, *, status: str, candidate: int | None, how: str,
                       started: float, turns: int, tool_calls: int, note: str | None,
                       run_ids: list[int]) -> dict[str, Any]:
        """Make a round durable in one transaction: its row (totals summed from its calls) and its run tags."""
        usage, _ = self.spent(sid, round_no)
        with self.store.transaction() as db:
            for rid in run_ids:
                db.execute("INSERT OR IGNORE INTO discovery_runs (run_id, session, round) VALUES (?,?,?)",
                           (int(rid), sid, int(round_no)))
            db.execute(
                "INSERT INTO discovery_rounds (session, round, status, candidate, how, started, finished, turns, "
                "tool_calls, input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, cost_usd, note) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (sid, round_no, status, candidate, how, started, time.time(), turns, tool_calls,
                 usage.input_tokens, usage.output_tokens, usage.cache_write_tokens, usage.cache_read_tokens,
                 usage.cost_usd, note))
            db.execute("UPDATE discovery_sessions SET updated=? WHERE id=?", (time.time(), sid))
        return self.rounds(sid)[-1]

    def rounds(self, sid: str) -> list[dict[str, Any]]:
        """A session's completed rounds, in order."""
        return self._rows("SELECT * FROM discovery_rounds WHERE session=? ORDER BY round", (sid,))

    def last_round(self, sid: str) -> int:
        r = self.store._query("SELECT MAX(round) FROM discovery_rounds WHERE session=?", (sid,))  # noqa: SLF001
        return int(r[0][0] or 0)

    def run_rounds(self, sid: str | None = None) -> dict[int, tuple[str, int]]:
        """run id -> (session, round) for runs evaluated by discovery rounds (of one session, or all)."""
        sql = "SELECT run_id, session, round FROM discovery_runs"
        args: tuple[Any, ...] = ()
        if sid is not None:
            sql, args = sql + " WHERE session=?", (sid,)
        return {int(r["run_id"]): (r["session"], int(r["round"])) for r in self._rows(sql, args)}


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _session_dict(row: dict[str, Any]) -> dict[str, Any]:
    for k in ("config", "report"):
        if row.get(k) is not None:
            row[k] = orjson.loads(row[k])
    return row
