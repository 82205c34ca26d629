"""Shared helpers for the MCP tests: small synthetic studies and result accessors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.discovery.study import Study
from core.store import save_environment
from core.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
CMC_CANDIDATE = (REPO / "tests" / "data" / "cmc_candidate.py").read_text()

SEARCH = ("synth/alpha", "synth/beta")
HELDOUT = "synth/omega"


def make_study(folder: Path, *, n_questions: int = 6, n_branches: int = 96, n_seeds: int = 6,
               betas: tuple[float, ...] = (0.0, 0.5, 1.0), timeout_s: float = 120.0, level: str = "auto",
               n_search: int = 2, memory_mb: int = 2048) -> Study:
    """Two small synthetic search environments and one held-out one, written under `folder/data`."""
    data = folder.parent / (folder.name + "-data")
    paths = []
    for i, bench in enumerate(("alpha", "beta")[:n_search]):
        env = generate(n_questions=n_questions, n_branches=n_branches, seed=100 + i, model="synth", benchmark=bench)
        paths.append(save_environment(env, data / f"{bench}.json.gz"))
    held = save_environment(generate(n_questions=n_questions, n_branches=n_branches, seed=999, model="synth",
                                     benchmark="omega"), data / "omega.json.gz")
    return Study.create(folder, search=paths, heldout=[held], betas=betas, n_seeds=n_seeds,
                        sandbox={"timeout_s": timeout_s, "level": level, "memory_mb": memory_mb})


def text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)
