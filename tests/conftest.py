"""Shared fixtures. The paper's replay data is read from beside the repository (never copied into it):
set AUTOTTS_REPLAY_DIR to point elsewhere; tests that need it skip when it is absent."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPLAY_DIR = Path(os.environ.get("AUTOTTS_REPLAY_DIR", REPO.parent / "shared" / "replay" / "autotts"))
REFERENCE_CSV = Path(os.environ.get("AUTOTTS_REFERENCE_CSV", REPO.parent / "shared" / "reference" / "reference_eval.csv"))


@pytest.fixture
def anyio_backend() -> str:
    """The async tests (MCP client, Textual pilot) run on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session")
def replay_dir() -> Path:
    if not REPLAY_DIR.is_dir():
        pytest.skip(f"paper replay data not found at {REPLAY_DIR} (set AUTOTTS_REPLAY_DIR)")
    return REPLAY_DIR


@pytest.fixture(scope="session")
def reference_rows() -> dict[tuple[str, str], dict[str, str]]:
    if not REFERENCE_CSV.is_file():
        pytest.skip(f"reference evaluator output not found at {REFERENCE_CSV} (set AUTOTTS_REFERENCE_CSV)")
    with REFERENCE_CSV.open() as f:
        return {(r["env"], r["controller"]): r for r in csv.DictReader(f)}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every user-level autotts path at a temporary folder."""
    monkeypatch.setenv("AUTOTTS_HOME", str(tmp_path_factory.mktemp("autotts_home")))
