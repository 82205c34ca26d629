"""A discovery study: a folder holding its configuration (`study.json`) and its run store (`runs.sqlite`).

The configuration names the *search* environments (what an agent may evaluate and trace through the MCP
tools), the *held-out* environments (evaluated only from the CLI, `autotts heldout`), the β grid, the
max-branch ceiling and the shuffle seeds. `study.json` (`schema_version` 1)::

    {"format": "autotts-study", "schema_version": 1, "created": "2026-11-23T15:00:00+00:00",
     "search":  [{"path": "@demo", "questions": "0::2", "name": "synthetic-demo/demo[0::2]", "sha256": "…"}],
     "heldout": [{"path": "@demo", "questions": "1::2", "name": "synthetic-demo/demo[1::2]", "sha256": "…"}],
     "betas": [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0], "max_branches": 64, "n_seeds": 100,
     "sandbox": {"timeout_s": 600.0, "memory_mb": 2048, "level": "auto"}}

`path` is relative to the study folder when the file lies inside it, else absolute; `@demo` is the bundled
synthetic demo environment. `questions` (optional) is a Python slice `start:stop:step` selecting questions of
that file, so one file can be split between search and held-out sets. `sha256` is the file's hash when the
study was made; a changed file is reported (`Study.warnings`) and the baseline cache keys on it.

Without arguments a study uses the bundled demo, its even-numbered questions for search and its odd-numbered
ones held out: a study with nothing held out could not show whether a discovered controller generalises, and
interleaving (rather than halves) keeps both sets alike if the file is ordered by difficulty.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from core.atomic import write_atomic
from core.environment import ReplayEnvironment
from core.errors import AutoTTSError
from core.store import expand_paths, load_environment

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
STORE_FILE = "runs.sqlite"
PROGRESS_FILE = "progress.json"
LOG_FILE = "server.log"
FORMAT_NAME = "autotts-study"
STUDY_SCHEMA_VERSION = 1
DEMO_TOKEN = "@demo"
DEFAULT_FOLDER = "autotts-study"
"""Where `autotts mcp` / `autotts study init` put a study when no folder is named (under the current directory)."""
DEFAULT_BETAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
DEFAULT_MAX_BRANCHES = 64
DEFAULT_N_SEEDS = 100
DEFAULT_SANDBOX: dict[str, Any] = {"timeout_s": 600.0, "memory_mb": 2048, "level": "auto"}
"""Written into a new study's `sandbox` block; any `core.sandbox.SandboxSettings` field may be set there."""


class StudyError(AutoTTSError):
    """A study folder is missing, malformed or inconsistent; the message names the fix."""


@dataclass(frozen=True)
class EnvEntry:
    """One environment of a study: a replay file (or a slice of its questions) under a unique name."""

    path: str
    """As written in study.json: relative to the study folder, absolute, or `@demo`."""
    name: str
    """Unique display name within the study (the environment's own name, plus `[slice]` for a question subset)."""
    questions: str | None = None
    """Python slice `start:stop:step` of question indices, or None for all questions."""
    sha256: str | None = None
    """Hash of the file's bytes when the study was created."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _demo_path() -> Path:
    from replay_data import DEMO_PATH

    return Path(DEMO_PATH)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_question_slice(text: str, n: int, where: str = "questions") -> list[int]:
    """Indices selected by `start:stop:step` (or a single index) out of n questions; never empty."""
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except ValueError:
        raise StudyError(f"{where}: '{text}' is not a slice; write start:stop:step, e.g. 0::2") from None
    if len(parts) == 1 and parts[0] is not None:
        i = parts[0]
        selected = [range(n)[i]] if -n <= i < n else []
    elif 2 <= len(parts) <= 3:
        if len(parts) == 3 and parts[2] == 0:
            raise StudyError(f"{where}: slice step cannot be zero")
        selected = list(range(n)[slice(*parts)])
    else:
        raise StudyError(f"{where}: '{text}' is not a slice; write start:stop:step, e.g. 0::2")
    if not selected:
        raise StudyError(f"{where}: '{text}' selects no question out of {n}")
    return selected


@dataclass
class Study:
    """An opened study folder. Environments load lazily; held-out ones are never loaded by the MCP server."""

    folder: Path
    search: list[EnvEntry]
    heldout: list[EnvEntry]
    betas: tuple[float, ...] = DEFAULT_BETAS
    max_branches: int = DEFAULT_MAX_BRANCHES
    n_seeds: int = DEFAULT_N_SEEDS
    sandbox: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SANDBOX))
    created: str = ""
    warnings: list[str] = field(default_factory=list)
    _loaded: dict[str, ReplayEnvironment] = field(default_factory=dict, repr=False)

    # ----- creation and opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        search: Sequence[str | os.PathLike | dict[str, Any]] | None = None,
        heldout: Sequence[str | os.PathLike | dict[str, Any]] | None = None,
        *,
        betas: Iterable[float] | None = None,
        max_branches: int = DEFAULT_MAX_BRANCHES,
        n_seeds: int = DEFAULT_N_SEEDS,
        sandbox: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Study:
        """Create a study folder (default: the demo split into even/odd questions) and its empty run store.

        `search` / `heldout` items are replay files, folders of them (expanded, sorted), or dicts
        `{"path": ..., "questions": "0::2", "name": ...}`.
        """
        root = Path(folder).resolve()
        if (root / STUDY_FILE).exists() and not overwrite:
            raise StudyError(f"{root} already holds a study ({STUDY_FILE}); open it, or pick another folder")
        if search is None and heldout is None:
            search = [{"path": DEMO_TOKEN, "questions": "0::2"}]
            heldout = [{"path": DEMO_TOKEN, "questions": "1::2"}]
        if not search:
            raise StudyError("a study needs at least one search environment (--search PATH)")
        betas_t = _check_betas(DEFAULT_BETAS if betas is None else betas)
        if not (isinstance(max_branches, int) and 1 <= max_branches <= 128):
            raise StudyError(f"max_branches must be an integer in 1..128, got {max_branches!r}")
        if not (isinstance(n_seeds, int) and 1 <= n_seeds <= 1000):
            raise StudyError(f"n_seeds must be an integer in 1..1000, got {n_seeds!r}")
        box = {**DEFAULT_SANDBOX, **(sandbox or {})}
        root.mkdir(parents=True, exist_ok=True)
        search_entries = _make_entries(root, search, "search")
        heldout_entries = _make_entries(root, heldout or [], "heldout")
        _check_disjoint(search_entries, heldout_entries)
        study = cls(root, search_entries, heldout_entries, betas_t, max_branches, n_seeds, box,
                    created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        _check_no_overlap(study)
        study.save()
        from core.discovery.store import RunStore

        RunStore(study.store_path).close()
        return study

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Study:
        """Open an existing study folder; raises StudyError naming the fix when it is missing or malformed."""
        root = Path(folder).resolve()
        cfg = root / STUDY_FILE
        if not cfg.is_file():
            raise StudyError(f"no study at {root} ({STUDY_FILE} missing): create one with `autotts study init {folder}`")
        try:
            doc = orjson.loads(cfg.read_bytes())
        except orjson.JSONDecodeError as e:
            raise StudyError(f"{cfg}: invalid JSON ({e}); fix or recreate it with `autotts study init`") from None
        doc = _migrate(doc, cfg)
        try:
            study = cls(
                folder=root,
                search=[EnvEntry(**e) for e in doc["search"]],
                heldout=[EnvEntry(**e) for e in doc.get("heldout", [])],
                betas=_check_betas(doc.get("betas", DEFAULT_BETAS)),
                max_branches=int(doc.get("max_branches", DEFAULT_MAX_BRANCHES)),
                n_seeds=int(doc.get("n_seeds", DEFAULT_N_SEEDS)),
                sandbox={**DEFAULT_SANDBOX, **doc.get("sandbox", {})},
                created=str(doc.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StudyError(f"{cfg}: malformed study file ({type(e).__name__}: {e})") from None
        if not study.search:
            raise StudyError(f"{cfg}: no search environments")
        _check_disjoint(study.search, study.heldout)
        return study

    @classmethod
    def open_or_create(cls, folder: str | os.PathLike) -> Study:
        """Open the study in `folder`; create the default (demo) study there when the folder is missing or empty."""
        root = Path(folder)
        if not (root / STUDY_FILE).exists() and (not root.exists() or not any(root.iterdir())):
            log.info("creating the default study in %s", root.resolve())
            return cls.create(root)
        return cls.open(root)

    def save(self) -> Path:
        doc = {
            "format": FORMAT_NAME,
            "schema_version": STUDY_SCHEMA_VERSION,
            "created": self.created,
            "search": [e.to_json() for e in self.search],
            "heldout": [e.to_json() for e in self.heldout],
            "betas": list(self.betas),
            "max_branches": self.max_branches,
            "n_seeds": self.n_seeds,
            "sandbox": self.sandbox,
        }
        return write_atomic(self.folder / STUDY_FILE, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")

    # ----- what the study holds ------------------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.folder / STORE_FILE

    @property
    def progress_path(self) -> Path:
        """`progress.json`: the evaluation in flight, for live viewers (format in `autotts_tui.model`)."""
        return self.folder / PROGRESS_FILE

    @property
    def log_path(self) -> Path:
        """`server.log`: what the server logs, tailed by live viewers."""
        return self.folder / LOG_FILE

    def write_progress(self, **fields: Any) -> None:
        """Atomically replace progress.json (run, state running|done|error, started, updated, done, total, unit,
        message); a viewer never reads a half-written file."""
        fields.setdefault("updated", time.time())
        write_atomic(self.progress_path, orjson.dumps(fields), durable=False)

    @property
    def seeds(self) -> range:
        return range(self.n_seeds)

    @property
    def search_names(self) -> list[str]:
        return [e.name for e in self.search]

    @property
    def heldout_names(self) -> list[str]:
        return [e.name for e in self.heldout]

    def resolve_path(self, entry: EnvEntry) -> Path:
        """The file an entry names (the one place study paths are resolved)."""
        if entry.path == DEMO_TOKEN:
            return _demo_path()
        p = Path(entry.path)
        return p if p.is_absolute() else self.folder / p

    def fingerprint(self, entry: EnvEntry) -> str:
        """A key for caches that changes when the file or the question selection changes."""
        return f"{entry.sha256 or file_sha256(self.resolve_path(entry))}:{entry.questions or ''}"

    def load(self, entry: EnvEntry) -> ReplayEnvironment:
        """Load one entry's environment (cached), applying its question slice and name."""
        env = self._loaded.get(entry.name)
        if env is None:
            env = _load_entry(self.resolve_path(entry), entry)
            if entry.sha256:
                now = file_sha256(self.resolve_path(entry))
                if now != entry.sha256:
                    msg = (f"{entry.name}: {entry.path} changed since the study was created; results recorded "
                           "before may not be comparable (recreate the study to silence this)")
                    log.warning(msg)
                    self.warnings.append(msg)
            self._loaded[entry.name] = env
        return env

    def search_envs(self, names: Sequence[str] | None = None) -> list[ReplayEnvironment]:
        """The search environments (all, or those named, in study order)."""
        entries = self.search if names is None else [e for e in self.search if e.name in set(names)]
        return [self.load(e) for e in entries]

    def heldout_envs(self) -> list[ReplayEnvironment]:
        """The held-out environments: for `autotts heldout` only, never for the MCP tools."""
        return [self.load(e) for e in self.heldout]

    def entry(self, name: str) -> EnvEntry | None:
        return next((e for e in self.search if e.name == name), None)

    def summary(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "search": self.search_names, "heldout": len(self.heldout),
            "betas": list(self.betas), "max_branches": self.max_branches, "n_seeds": self.n_seeds,
        }


# ----- helpers -----------------------------------------------------------------------------------------------------
def _check_betas(values: Iterable[Any]) -> tuple[float, ...]:
    try:
        betas = tuple(sorted({float(b) for b in values}))
    except (TypeError, ValueError):
        raise StudyError(f"betas must be numbers in [0, 1], got {values!r}") from None
    if not betas or any(not 0.0 <= b <= 1.0 for b in betas):
        raise StudyError(f"betas must be a non-empty list of numbers in [0, 1], got {list(values)!r}")
    return betas


def _load_entry(path: Path, entry: EnvEntry) -> ReplayEnvironment:
    env = load_environment(path)
    if entry.questions:
        env = env.subset(parse_question_slice(entry.questions, env.n_questions, f"{entry.name}: questions"))
    return dataclasses.replace(env, name=entry.name, source=str(path))


def _make_entries(root: Path, items: Sequence[Any], role: str) -> list[EnvEntry]:
    entries: list[EnvEntry] = []
    for item in items:
        spec = dict(item) if isinstance(item, dict) else {"path": item}
        raw = spec.get("path")
        if raw is None:
            raise StudyError(f"{role}: an environment entry needs a path")
        questions = spec.get("questions")
        if str(raw) == DEMO_TOKEN:
            files = [(_demo_path(), DEMO_TOKEN)]
        else:
            files = [(f.resolve(), _stored_path(root, f.resolve())) for f in expand_paths([raw])]
        if len(files) > 1 and spec.get("name"):
            raise StudyError(f"{role}: 'name' can only be given for a single file, and {raw} is a folder")
        for path, stored in files:
            env = load_environment(path)
            if questions:
                parse_question_slice(str(questions), env.n_questions, f"{path}: questions")
            name = spec.get("name") or (env.name + (f"[{questions}]" if questions else ""))
            entries.append(EnvEntry(stored, str(name), str(questions) if questions else None, file_sha256(path)))
    return entries


def _stored_path(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _check_disjoint(search: list[EnvEntry], heldout: list[EnvEntry]) -> None:
    for h in heldout:
        for s in search:
            if h.sha256 and h.sha256 == s.sha256 and not (h.questions and s.questions):
                raise StudyError(f"{h.name} is both a search and a held-out environment; hold out a different "
                                 "file, or split one file with question slices (0::2 / 1::2)")
    names = [e.name for e in search + heldout]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StudyError(f"environment names must be unique across the study; repeated: {', '.join(dupes)} "
                         "(give a distinct 'name', or select different questions)")


def _check_no_overlap(study: Study) -> None:
    """Held-out questions must not also be search questions when one file is split by slices."""
    for h in study.heldout:
        for s in study.search:
            if h.sha256 and h.sha256 == s.sha256:
                n = load_environment(study.resolve_path(s)).n_questions
                both = set(parse_question_slice(h.questions or ":", n)) & set(parse_question_slice(s.questions or ":", n))
                if both:
                    raise StudyError(f"{h.name} and {s.name} share questions {sorted(both)[:10]}; held-out questions "
                                     "must not be searched on")


_MIGRATIONS: dict[int, Any] = {}
"""schema_version N → function turning a version-N document into version N+1 (none yet)."""


def _migrate(doc: Any, cfg: Path) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise StudyError(f"{cfg}: not an autotts study file (no \"format\": \"{FORMAT_NAME}\")")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > STUDY_SCHEMA_VERSION:
        raise StudyError(f"{cfg}: schema_version {version!r} is newer than this autotts reads ({STUDY_SCHEMA_VERSION}); "
                         "upgrade autotts")
    while version < STUDY_SCHEMA_VERSION:
        doc = _MIGRATIONS[version](doc)
        version = doc["schema_version"]
    return doc
