"""Replay files on disk: the paper's JSON format and the project's versioned store format.

Paper format (docs/semantics.md §1): a JSON list, one object per question, with `question`, `gold_answer`,
`probe_freq`, `final_answers_trace` and `each_branch` (triples `[probe_answers, branch_tokens, final_answer]`).

Project format (`schema_version` 1), a superset::

    {"format": "autotts-replay", "schema_version": 1,
     "metadata": {"model": ..., "benchmark": ..., "interval": 500, "sampling": {...}, "collector": {...},
                  "synthetic": false, ...},
     "questions": [{"question": str, "gold_answer": str, "interval": int,
                    "branches": [[probe_answers, tokens, final_answer], ...],
                    "signals": {"mean_logprob": [[float per probe] per branch], ...}}]}

`schema_version` 2 (written only when needed: recorded live runs, `autotts solve --record`) adds
`metadata.branch_order = "stored"` (present branches in stored order, never shuffled) and a per-question
`"partial": [branch indices]` naming branches that had not finished when the live controller stopped: their
probes are real, their tokens are those generated so far, their final answer is unknown and replay refuses to
step past them. Version 1 files read as version 2 files without partial branches; autotts versions that only know
version 1 refuse version 2 files instead of mistaking partial branches for complete ones.

Both may be gzipped (detected by content, not name).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.atomic import write_atomic
from core.environment import ReplayEnvironment
from core.errors import EnvironmentPathError, ReplayFormatError

REPLAY_FORMAT_NAME = "autotts-replay"
REPLAY_SCHEMA_VERSION = 1
"""The version written for ordinary environments (collected, synthetic, converted)."""
RECORDED_SCHEMA_VERSION = 2
"""The version written for environments with partial branches or stored branch order (recorded live runs)."""
READABLE_VERSIONS = (1, 2)
_SUFFIXES = (".json", ".json.gz")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, gunzipping it when it starts with the gzip magic bytes."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ReplayFormatError(str(p), "file not found") from None
    except IsADirectoryError:
        raise ReplayFormatError(str(p), "is a folder, not a replay file") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ReplayFormatError(str(p), f"corrupt gzip data ({e}); re-export or re-download the file") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ReplayFormatError(str(p), f"invalid JSON ({e}); the file is truncated or not JSON") from None


def load_environment(path: str | os.PathLike, name: str | None = None) -> ReplayEnvironment:
    """Load one replay file (paper or project format, plain or gzipped) into a ReplayEnvironment."""
    p = Path(path)
    data = read_json(p)
    if isinstance(data, list):
        records = _records_from_paper(data, str(p))
        metadata: dict[str, Any] = {"model": p.parent.name, "benchmark": _stem(p), "source_format": "paper"}
        env_name = name or f"{p.parent.name}/{_stem(p)}"
    elif isinstance(data, dict):
        records, metadata = _records_from_project(data, str(p))
        env_name = name or _project_name(metadata, p)
    else:
        raise ReplayFormatError(
            str(p), f"top level is a JSON {type(data).__name__}; expected a list of questions (paper format) "
            f"or an object with \"format\": \"{REPLAY_FORMAT_NAME}\""
        )
    return environment_from_records(records, name=env_name, metadata=metadata, source=str(p), path=str(p))


def load_environments(paths: Iterable[str | os.PathLike]) -> list[ReplayEnvironment]:
    """Load every replay file named, expanding folders to the replay files beneath them (sorted)."""
    return [load_environment(f) for f in expand_paths(paths)]


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            # `*.meta.json` sidecars (written beside paper-format exports) describe a file; they are not one
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.name.endswith(_SUFFIXES) and not f.name.endswith(".meta.json"))
            if not found:
                raise EnvironmentPathError(f"{p}: folder holds no replay files (*.json or *.json.gz)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise EnvironmentPathError(f"{p}: no such file or folder; pass a replay file (*.json, *.json.gz) or a folder of them")
    return files


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".json.gz", ".json", ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _project_name(metadata: dict[str, Any], p: Path) -> str:
    model, bench = metadata.get("model"), metadata.get("benchmark")
    if model and bench:
        return f"{model}/{bench}"
    return _stem(p)


# ----- validation ------------------------------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_answers(values: Any, path: str, qi: int, field: str) -> list[str]:
    if not isinstance(values, list):
        raise ReplayFormatError(path, f"expected a list of answer strings, got {type(values).__name__}", question=qi, field=field)
    for k, a in enumerate(values):
        if not isinstance(a, str):
            raise ReplayFormatError(
                path, f"entry {k} is a {type(a).__name__}; answers must be strings (use \"\" for no answer)",
                question=qi, field=field,
            )
    return values


def _check_branch(branch: Any, path: str, qi: int, bi: int, field: str) -> tuple[list[str], int, str]:
    if not isinstance(branch, list | tuple) or len(branch) != 3:
        raise ReplayFormatError(
            path, f"branch {bi} must be a triple [probe_answers, branch_tokens, final_answer]", question=qi, field=field
        )
    probes, tokens, final = branch
    _check_answers(probes, path, qi, f"{field}[{bi}][0]")
    if not _is_int(tokens):
        raise ReplayFormatError(
            path, f"branch {bi} token count is {tokens!r}; it must be a non-negative integer", question=qi, field=f"{field}[{bi}][1]"
        )
    if tokens < 0:
        raise ReplayFormatError(
            path, f"branch {bi} token count is negative ({tokens})", question=qi, field=f"{field}[{bi}][1]"
        )
    if not isinstance(final, str):
        raise ReplayFormatError(
            path, f"branch {bi} final answer is a {type(final).__name__}; it must be a string", question=qi, field=f"{field}[{bi}][2]"
        )
    return probes, tokens, final


def _check_question(obj: Any, path: str, qi: int, keys: tuple[str, str, str], default_interval: int | None) -> dict[str, Any]:
    q_key, interval_key, branches_key = keys
    if not isinstance(obj, dict):
        raise ReplayFormatError(path, f"expected an object, got {type(obj).__name__}", question=qi)
    for key in (q_key, "gold_answer", branches_key):
        if key not in obj:
            raise ReplayFormatError(path, "missing required key", question=qi, field=key)
    if not isinstance(obj[q_key], str):
        raise ReplayFormatError(path, "must be a string", question=qi, field=q_key)
    if not isinstance(obj["gold_answer"], str):
        raise ReplayFormatError(path, f"must be a string, got {type(obj['gold_answer']).__name__}", question=qi, field="gold_answer")
    interval = obj.get(interval_key, default_interval)
    if interval is None:
        raise ReplayFormatError(path, "missing required key", question=qi, field=interval_key)
    if not _is_int(interval) or interval <= 0:
        raise ReplayFormatError(path, f"interval must be a positive integer, got {interval!r}", question=qi, field=interval_key)
    branches = obj[branches_key]
    if not isinstance(branches, list) or not branches:
        raise ReplayFormatError(path, "must be a non-empty list of branches", question=qi, field=branches_key)
    triples = [_check_branch(b, path, qi, bi, branches_key) for bi, b in enumerate(branches)]
    record: dict[str, Any] = {
        "question": obj[q_key], "gold_answer": obj["gold_answer"], "interval": interval, "branches": triples,
    }
    signals = obj.get("signals")
    if signals is not None:
        record["signals"] = _check_signals(signals, triples, path, qi)
    partial = obj.get("partial")
    if partial is not None:
        if (not isinstance(partial, list) or not all(_is_int(b) and 0 <= b < len(triples) for b in partial)
                or len(set(partial)) != len(partial)):
            raise ReplayFormatError(path, f"must be a list of distinct branch indices 0..{len(triples) - 1}",
                                    question=qi, field="partial")
        if partial:
            record["partial"] = sorted(partial)
    return record


def _check_signals(signals: Any, triples: list[tuple[list[str], int, str]], path: str, qi: int) -> dict[str, list[list[float]]]:
    if not isinstance(signals, dict):
        raise ReplayFormatError(path, "must map a signal name to per-branch lists", question=qi, field="signals")
    for name, per_branch in signals.items():
        field = f"signals.{name}"
        if not isinstance(per_branch, list) or len(per_branch) != len(triples):
            raise ReplayFormatError(path, f"needs one list per branch ({len(triples)})", question=qi, field=field)
        for bi, (values, triple) in enumerate(zip(per_branch, triples, strict=True)):
            if not isinstance(values, list) or len(values) != len(triple[0]):
                raise ReplayFormatError(
                    path, f"branch {bi} needs one value per probe ({len(triple[0])})", question=qi, field=field
                )
            if any(not isinstance(v, int | float) or isinstance(v, bool) for v in values):
                raise ReplayFormatError(path, f"branch {bi} has a non-numeric value", question=qi, field=field)
    return signals


def _records_from_paper(data: list, path: str) -> list[dict[str, Any]]:
    if not data:
        raise ReplayFormatError(path, "holds no questions (empty list)")
    return [_check_question(obj, path, qi, ("question", "probe_freq", "each_branch"), None) for qi, obj in enumerate(data)]


def _records_from_project(data: dict, path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if data.get("format") != REPLAY_FORMAT_NAME:
        raise ReplayFormatError(path, f"object has no \"format\": \"{REPLAY_FORMAT_NAME}\"; is this an autotts replay file?", field="format")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ReplayFormatError(
            path, f"schema_version {version!r} is not supported (this autotts reads {readable}); upgrade autotts",
            field="schema_version",
        )
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ReplayFormatError(path, "must be an object", field="metadata")
    questions = data.get("questions")
    if not isinstance(questions, list):
        raise ReplayFormatError(path, "missing or not a list", field="questions")
    if not questions:
        raise ReplayFormatError(path, "holds no questions (empty list)", field="questions")
    default_interval = metadata.get("interval")
    records = [
        _check_question(obj, path, qi, ("question", "interval", "branches"), default_interval)
        for qi, obj in enumerate(questions)
    ]
    return records, metadata


# ----- records <-> arrays ------------------------------------------------------------------------------------------
def environment_from_records(
    records: list[dict[str, Any]],
    *,
    name: str,
    metadata: dict[str, Any] | None = None,
    source: str | None = None,
    path: str = "<records>",
) -> ReplayEnvironment:
    """Build the compact array form from validated per-question records."""
    if not records:
        raise ReplayFormatError(path, "holds no questions (empty list)")
    vocabs: list[tuple[str, ...]] = []
    gold_ids: list[int] = []
    intervals: list[int] = []
    branch_offsets = [0]
    tokens: list[int] = []
    finals: list[int] = []
    probe_offsets = [0]
    probe_ids: list[int] = []
    signal_names = sorted({k for r in records for k in r.get("signals", {})})
    signals: dict[str, list[float]] = {k: [] for k in signal_names}
    partial: list[int] = []
    for rec in records:
        partial.extend(len(tokens) + b for b in rec.get("partial", ()))
        index: dict[str, int] = {}
        intern = index.setdefault
        for probes, t, final in rec["branches"]:
            probe_ids.extend(intern(a, len(index)) for a in probes)
            probe_offsets.append(len(probe_ids))
            finals.append(intern(final, len(index)))
            tokens.append(t)
        branch_offsets.append(len(tokens))
        gold_ids.append(index.get(rec["gold_answer"], -1))
        vocabs.append(tuple(index))
        intervals.append(rec["interval"])
        rec_signals = rec.get("signals", {})
        for k in signal_names:
            per_branch = rec_signals.get(k)
            if per_branch is None:  # a question without this signal: NaN keeps the arrays aligned
                signals[k].extend([np.nan] * sum(len(b[0]) for b in rec["branches"]))
            else:
                for values in per_branch:
                    signals[k].extend(values)
    md = dict(metadata or {})
    if len(set(intervals)) == 1:
        md.setdefault("interval", intervals[0])
    return ReplayEnvironment(
        name=name,
        metadata=md,
        questions=tuple(r["question"] for r in records),
        gold_answers=tuple(r["gold_answer"] for r in records),
        answer_vocab=tuple(vocabs),
        gold_ids=np.asarray(gold_ids, dtype=np.int32),
        interval=np.asarray(intervals, dtype=np.int64),
        branch_offsets=np.asarray(branch_offsets, dtype=np.int64),
        branch_tokens=np.asarray(tokens, dtype=np.int64),
        branch_final=np.asarray(finals, dtype=np.int32),
        probe_offsets=np.asarray(probe_offsets, dtype=np.int64),
        probe_answers=np.asarray(probe_ids, dtype=np.int32),
        signals={k: np.asarray(v, dtype=np.float32) for k, v in signals.items()},
        source=source,
        partial=_partial_mask(partial, len(tokens)),
    )


def _partial_mask(indices: list[int], n_branches: int) -> np.ndarray:
    if not indices:
        return np.zeros(0, dtype=np.bool_)
    mask = np.zeros(n_branches, dtype=np.bool_)
    mask[indices] = True
    return mask


def environment_records(env: ReplayEnvironment) -> list[dict[str, Any]]:
    """The per-question records of an environment (inverse of `environment_from_records`)."""
    records = []
    for q in range(env.n_questions):
        branches = [env.branch_answers(q, b) for b in range(env.n_branches(q))]
        rec: dict[str, Any] = {
            "question": env.questions[q],
            "gold_answer": env.gold_answers[q] if env.gold_answers is not None else "",
            "interval": int(env.interval[q]),
            "branches": branches,
        }
        if env.signals:
            lo_b, hi_b = int(env.branch_offsets[q]), int(env.branch_offsets[q + 1])
            rec["signals"] = {
                k: [v[env.probe_offsets[g] : env.probe_offsets[g + 1]].tolist() for g in range(lo_b, hi_b)]
                for k, v in env.signals.items()
            }
        partial = env.partial_branches(q)
        if partial:
            rec["partial"] = sorted(partial)
        records.append(rec)
    return records


def save_environment(env: ReplayEnvironment, path: str | os.PathLike, *, format: str = "project") -> Path:
    """Write an environment in the project format (default) or the paper's; gzip when the name ends in .gz.

    The file is written to a temporary name and renamed, so a crash never leaves a half-written store.
    """
    p = Path(path)
    records = environment_records(env)
    if format == "project":
        doc: Any = {
            "format": REPLAY_FORMAT_NAME,
            "schema_version": RECORDED_SCHEMA_VERSION if env.has_partial or env.stored_order else REPLAY_SCHEMA_VERSION,
            "metadata": env.metadata,
            "questions": [
                {"question": r["question"], "gold_answer": r["gold_answer"], "interval": r["interval"],
                 "branches": [list(b) for b in r["branches"]], **({"signals": r["signals"]} if "signals" in r else {}),
                 **({"partial": r["partial"]} if "partial" in r else {})}
                for r in records
            ],
        }
    elif format == "paper":
        if env.has_partial:
            raise ReplayFormatError(
                str(p), "this environment has unfinished (partial) branches from a live run, which the paper's format "
                "cannot mark; save it in the project format"
            )
        doc = [
            {"question": r["question"], "final_answers_trace": [b[2] for b in r["branches"]],
             "each_branch": [list(b) for b in r["branches"]], "gold_answer": r["gold_answer"], "probe_freq": r["interval"]}
            for r in records
        ]
    else:
        raise ValueError(f"unknown format {format!r}: use 'project' or 'paper'")
    raw = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if p.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    return write_atomic(p, raw)
