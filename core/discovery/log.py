"""The record of `autotts discover` sessions, kept in the study's run store (tables of migration 2).

A *session* is one unattended discovery loop over a study; it runs *rounds*, and every API call it makes is
written as it returns (`discovery_calls`), so the money spent is known even for a round a crash cut short. A
round becomes durable in ONE transaction (`complete_round`): its row, its totals and the tags of the runs its
tool calls evaluated. Resuming means starting after the last recorded round; calls of an interrupted attempt
stay on the bill of the round that is then redone.

A round may run several explorer conversations in parallel (`autotts discover --explorers K`); what each one
submitted and learned is an `ExplorerOutcome`. They are kept in the round row's `note` column as a JSON document
`{"ended": why the round ended, "explorers": [...]}` (the schema is unchanged; a plain-text note of an older
round reads as one explorer whose lesson is the closing words after its " — ").

Readers open the store read-only and use `sessions`, `rounds`, `explorers` and `run_rounds`, which return typed
records; nothing here imports an LLM SDK, so the loop lives outside `core`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from core.discovery.records import DiscoveryCall, DiscoveryRound, DiscoverySession, Usage
from core.discovery.store import RunStore

_SUM = ("COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), COALESCE(SUM(cache_write_tokens),0), "
        "COALESCE(SUM(cache_read_tokens),0), COALESCE(SUM(cost_usd),0), COUNT(*)")


@dataclass(frozen=True)
class ExplorerOutcome:
    """What one explorer conversation of a round submitted and learned."""

    explorer: int
    """1..K within the round."""
    candidate: int | None
    """The run it submitted (after completion to the full β grid), or None."""
    how: str
    """named | best-of-round | last-run | from-reply | none, plus ", completed from rNNNN" when the loop re-ran a
    probe on the full grid."""
    turns: int = 0
    tool_calls: int = 0
    runs: list[int] = field(default_factory=list)
    """Runs its tool calls evaluated (or found as duplicates), in order."""
    lesson: str = ""
    """Its closing words: what it tried and learned (bounded by the loop)."""
    ended: str = ""
    """Why its conversation ended."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExplorerOutcome:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class DiscoveryLog:
    """Sessions, rounds, calls and run tags of `autotts discover`, over a `RunStore` (read-write or read-only)."""

    def __init__(self, store: RunStore):
        self.store = store

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.store.reading() as db:
            return [dict(r) for r in db.execute(sql, args).fetchall()]

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

    def session(self, sid: str) -> DiscoverySession | None:
        rows = self._rows("SELECT * FROM discovery_sessions WHERE id=?", (sid,))
        return _session(rows[0]) if rows else None

    def sessions(self) -> list[DiscoverySession]:
        """Every session, oldest first."""
        return [_session(r) for r in self._rows("SELECT * FROM discovery_sessions ORDER BY created, id")]

    def latest_session(self) -> DiscoverySession | None:
        rows = self._rows("SELECT * FROM discovery_sessions ORDER BY created DESC, id DESC LIMIT 1")
        return _session(rows[0]) if rows else None

    # ----- calls -------------------------------------------------------------------------------------------------
    def record_call(self, call: DiscoveryCall) -> None:
        """One API response, written at once: money spent is on record even if the round never completes."""
        u = call.usage
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO discovery_calls (session, round, created, seconds, model, stop_reason, input_tokens, "
                "output_tokens, cache_write_tokens, cache_read_tokens, cost_usd, retries) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (call.session, call.round, time.time(), float(call.seconds), call.model, call.stop_reason,
                 u.input_tokens, u.output_tokens, u.cache_write_tokens, u.cache_read_tokens, float(u.cost_usd),
                 int(call.retries)))

    def spent(self, sid: str, round_no: int | None = None) -> tuple[Usage, int]:
        """(summed usage, number of calls) of a session, or of one of its rounds."""
        sql = f"SELECT {_SUM} FROM discovery_calls WHERE session=?"
        args: tuple[Any, ...] = (sid,)
        if round_no is not None:
            sql += " AND round=?"
            args = (sid, round_no)
        with self.store.reading() as db:
            r = db.execute(sql, args).fetchone()
        return Usage(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4])), int(r[5])

    # ----- rounds and runs ---------------------------------------------------------------------------------------
    def tag_run(self, run_id: int, sid: str, round_no: int) -> None:
        """Mark a run as evaluated by a round (first tag wins: a duplicate keeps its original round)."""
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO discovery_runs (run_id, session, round) VALUES (?,?,?)",
                       (int(run_id), sid, int(round_no)))

    def max_output_tokens(self, sid: str) -> int | None:
        """The longest reply (output tokens) of a session so far, or None before its first call."""
        with self.store.reading() as db:
            r = db.execute("SELECT MAX(output_tokens) FROM discovery_calls WHERE session=?", (sid,)).fetchone()
        return None if r[0] is None else int(r[0])

    def complete_round(self, sid: str, round_no: int, *, status: str, candidate: int | None, how: str,
                       started: float, explorers: list[ExplorerOutcome], note: str) -> DiscoveryRound:
        """Make a round durable in one transaction: its row (totals summed from its calls; turns and tool calls
        over its explorers), what each explorer submitted and learned, and its run tags."""
        usage, _ = self.spent(sid, round_no)
        run_ids = list(dict.fromkeys(r for e in explorers for r in e.runs))
        turns = sum(e.turns for e in explorers)
        tool_calls = sum(e.tool_calls for e in explorers)
        doc = _dumps({"ended": note, "explorers": [asdict(e) for e in explorers]})
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
                 usage.cost_usd, doc))
            db.execute("UPDATE discovery_sessions SET updated=? WHERE id=?", (time.time(), sid))
        return self.rounds(sid)[-1]

    def rounds(self, sid: str) -> list[DiscoveryRound]:
        """A session's completed rounds, in order (`note`: why the round ended)."""
        return [replace(rd, note=_note(rd.note)[0]) for rd in self._raw_rounds(sid)]

    def explorers(self, sid: str) -> dict[int, list[ExplorerOutcome]]:
        """round -> what each of its explorers submitted and learned."""
        out = {}
        for rd in self._raw_rounds(sid):
            ended, found = _note(rd.note)
            out[rd.round] = found if found is not None else [ExplorerOutcome(
                1, rd.candidate, rd.how, rd.turns, rd.tool_calls, [] if rd.candidate is None else [rd.candidate],
                ended.split(" — ", 1)[1] if " — " in ended else "", ended.split(" — ", 1)[0])]
        return out

    def _raw_rounds(self, sid: str) -> list[DiscoveryRound]:
        return [DiscoveryRound.from_dict(r)
                for r in self._rows("SELECT * FROM discovery_rounds WHERE session=? ORDER BY round", (sid,))]

    def last_round(self, sid: str) -> int:
        r = self._rows("SELECT MAX(round) AS last FROM discovery_rounds WHERE session=?", (sid,))
        return int(r[0]["last"] or 0)

    def run_rounds(self, sid: str | None = None) -> dict[int, tuple[str, int]]:
        """run id -> (session, round) for runs evaluated by discovery rounds (of one session, or all)."""
        sql = "SELECT run_id, session, round FROM discovery_runs"
        args: tuple[Any, ...] = ()
        if sid is not None:
            sql, args = sql + " WHERE session=?", (sid,)
        return {int(r["run_id"]): (r["session"], int(r["round"])) for r in self._rows(sql, args)}


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _note(text: str | None) -> tuple[str, list[ExplorerOutcome] | None]:
    """(why the round ended, its explorers) from a note column; a plain-text note has no explorer list."""
    if text and text.startswith("{"):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text, None
        return str(doc.get("ended") or ""), [ExplorerOutcome.from_dict(e) for e in doc.get("explorers") or []]
    return text or "", None


def _session(row: dict[str, Any]) -> DiscoverySession:
    for k in ("config", "report"):
        if row.get(k) is not None:
            row[k] = orjson.loads(row[k])
    return DiscoverySession.from_dict(row)
