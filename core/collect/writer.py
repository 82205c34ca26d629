"""Durable collection output: an append-only branch log, resume, and the replay store built from it.

A collection folder holds

* `branches.jsonl` — line 1 is the manifest (`{"type": "manifest", ...}`: settings, model and questions identity);
  then one line per finished branch (`{"type": "branch", "q": ..., "b": ..., ...}`), written with a single
  `write` and fsync'd, in the order branches finish. A line cut short by a crash is dropped (and the file
  truncated back to the last complete line) when the collection is reopened; a branch logged twice counts once.
* `store.json` — the project replay store (`autotts eval store.json`), rebuilt from the log when the collection
  completes. Answers are normalised at build time, per question in branch order, so the store does not depend on
  the order branches finished in; the raw answers stay in the log and in each question's `raw_answers`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from core.atomic import write_atomic
from core.collect.backend import CollectError
from core.collect.normalise import canonical_answers, math_verify_version
from core.collect.signals import SIGNAL_NAMES
from core.store import REPLAY_FORMAT_NAME, REPLAY_SCHEMA_VERSION

LOG_NAME = "branches.jsonl"
STORE_NAME = "store.json"
LOG_VERSION = 1
RESULT_KEYS = ("settings", "questions_sha256", "model_sha256", "backend_kind", "results_affecting")
"""Manifest keys that must match when a collection is resumed (parallelism, threads and GPU layers may change)."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def questions_sha256(questions: Iterable[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for q, gold in questions:
        h.update(orjson.dumps([q, gold]))
    return h.hexdigest()


class BranchLog:
    """The append-only, fsync'd log of one collection. Use `open_log` to create or resume one."""

    def __init__(self, path: Path, manifest: dict[str, Any], records: list[dict[str, Any]]):
        self.path = path
        self.manifest = manifest
        self.records = records
        self.done = {(r["q"], r["b"]) for r in records}
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished branch durably (one write call, then fsync). A branch already logged is skipped."""
        key = (record["q"], record["b"])
        if key in self.done:
            return
        if self._fd is None:
            raise CollectError(f"{self.path}: the log is closed")
        line = orjson.dumps({"type": "branch", **record}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        os.write(self._fd, line)
        os.fsync(self._fd)
        self.done.add(key)
        self.records.append(record)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BranchLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(manifest, branch records) of a log; a cut-off last line is ignored (and cut off the file if `repair`)."""
    p = Path(path)
    raw = p.read_bytes()
    end = raw.rfind(b"\n") + 1
    if repair and end != len(raw):
        with open(p, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    lines = raw[:end].splitlines()
    if not lines:
        raise CollectError(f"{p}: empty log (no manifest line); delete it to start over")
    try:
        manifest = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        raise CollectError(f"{p}: the first line is not a manifest; is this an autotts collection log?") from None
    if manifest.get("type") != "manifest":
        raise CollectError(f"{p}: the first line is not a manifest; is this an autotts collection log?")
    records, seen = [], set()
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise CollectError(f"{p}, line {i}: corrupt record; the log was edited or the disk is failing") from None
        if rec.get("type") != "branch":
            continue
        key = (rec["q"], rec["b"])
        if key not in seen:
            seen.add(key)
            rec.pop("type")
            records.append(rec)
    return manifest, records


def open_log(folder: str | os.PathLike, manifest: dict[str, Any]) -> BranchLog:
    """Create the collection folder's log with `manifest`, or reopen it after checking that the stored manifest
    matches on every key of RESULT_KEYS (so resumed work adds to the same experiment)."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOG_NAME
    if path.exists() and path.stat().st_size > 0:
        old, records = read_log(path, repair=True)
        diffs = [k for k in RESULT_KEYS if old.get(k) != manifest.get(k)]
        if diffs:
            detail = "; ".join(d for k in diffs for d in setting_diffs(k, old.get(k), manifest.get(k)))
            raise CollectError(
                f"{d} holds a collection made with different settings ({detail}); "
                "rerun with the original settings to resume, or choose a new output folder"
            )
        return BranchLog(path, old, records)
    line = orjson.dumps({"type": "manifest", "log_version": LOG_VERSION, **manifest}) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return BranchLog(path, {"type": "manifest", "log_version": LOG_VERSION, **manifest}, [])


def setting_diffs(key: str, old: Any, new: Any, limit: int = 6) -> list[str]:
    """`settings.seed: was 0, now 1` for each leaf that differs between two manifest values (nested dicts are
    walked, so the differing setting itself is named however long the rest is); at most `limit` entries."""
    out: list[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                if a.get(k, _MISSING) != b.get(k, _MISSING):
                    walk(f"{path}.{k}", a.get(k, _MISSING), b.get(k, _MISSING))
        else:
            out.append(f"{path}: was {_short(a)}, now {_short(b)}")

    walk(key, old, new)
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "(absent)"})()


def _short(v: Any) -> str:
    if v is _MISSING:
        return "(absent)"
    s = orjson.dumps(v).decode() if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def build_store(manifest: dict[str, Any], records: list[dict[str, Any]], questions: list[tuple[str, str]]) -> dict[str, Any]:
    """The project-format store document (schema_version 1) for a complete collection."""
    settings = manifest["settings"]
    n_branches = settings["branches"]
    by_q: dict[int, dict[int, dict[str, Any]]] = {}
    for r in records:
        by_q.setdefault(r["q"], {})[r["b"]] = r
    out_questions = []
    for qi, (question, gold) in enumerate(questions):
        recs = by_q.get(qi, {})
        missing = [b for b in range(n_branches) if b not in recs]
        if missing:
            raise CollectError(f"question {qi} lacks {len(missing)} of its {n_branches} branches; resume the collection first")
        ordered = [recs[b] for b in range(n_branches)]
        raw: list[str | None] = []
        for r in ordered:
            raw.extend(r["probes"])
            raw.append(r["final"])
        canon = canonical_answers(raw, gold)
        branches, k = [], 0
        for r in ordered:
            n = len(r["probes"])
            probes = canon[k:k + n + 1]  # the final answer fills the last probe slot
            final = canon[k + n]
            k += n + 1
            branches.append([probes, int(r["tokens"]), final])
        out_questions.append({
            "question": question,
            "gold_answer": gold,
            "interval": settings["interval"],
            "branches": branches,
            "signals": {name: [r["signals"][name] for r in ordered] for name in SIGNAL_NAMES},
            "raw_answers": [[*r["probes"], r["final"]] for r in ordered],
        })
    metadata = dict(manifest.get("store_metadata", {}))
    metadata["normaliser"] = {"name": "autotts.normalise", "math_verify": math_verify_version()}
    return {"format": REPLAY_FORMAT_NAME, "schema_version": REPLAY_SCHEMA_VERSION, "metadata": metadata,
            "questions": out_questions}


def export_paper(store_path: str | os.PathLike, out_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write a replay file in the paper's JSON format, plus the metadata as a `<stem>.meta.json` sidecar."""
    from core.store import load_environment, save_environment

    env = load_environment(store_path)
    out = save_environment(env, out_path, format="paper")
    name = out.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    meta = write_atomic(out.with_name(name + ".meta.json"),
                        orjson.dumps({"schema_version": REPLAY_SCHEMA_VERSION, "source": str(store_path), **env.metadata},
                                     option=orjson.OPT_SERIALIZE_NUMPY))
    return out, meta
