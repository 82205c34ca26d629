"""autotts: the public Python API.

    from autotts import load_environment, evaluate
    env = load_environment("replay_data/demo.json.gz")
    result = evaluate(env, "cmc:beta=0.5")

Everything a script or notebook needs is importable from here; the names load on first use, so importing
`autotts` (and running `autotts --help`) stays cheap. The implementation lives in `core` (evaluator, store,
controllers, statistics, studies); `autotts.cli` is the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from core.controllers import (
        AdaptiveConsistency,
        ConfidenceMomentumController,
        Controller,
        ControllerSpec,
        EarlyStoppingConsistency,
        ParallelProbe,
        SelfConsistency,
        parse_spec,
    )
    from core.discovery.study import Study
    from core.environment import ReplayEnvironment, ReplayQuestion
    from core.errors import AutoTTSError, ControllerSpecError, ReplayFormatError
    from core.evaluate import Episodes, EvalResult, evaluate, run_episodes, score
    from core.primitives import beta_confidence, majority, vote_counts, vote_stats
    from core.stats import Point, paired_comparison, pareto_frontier, seed_spread, token_saving
    from core.store import expand_paths, load_environment, load_environments, save_environment

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # replay environments: load, save, the question API
    "ReplayEnvironment": "core.environment",
    "ReplayQuestion": "core.environment",
    "expand_paths": "core.store",
    "load_environment": "core.store",
    "load_environments": "core.store",
    "save_environment": "core.store",
    # evaluation under the paper's protocol
    "EvalResult": "core.evaluate",
    "Episodes": "core.evaluate",
    "evaluate": "core.evaluate",
    "run_episodes": "core.evaluate",
    "score": "core.evaluate",
    # controllers and specs (`cmc:beta=0.5`)
    "AdaptiveConsistency": "core.controllers",
    "ConfidenceMomentumController": "core.controllers",
    "Controller": "core.controllers",
    "ControllerSpec": "core.controllers",
    "EarlyStoppingConsistency": "core.controllers",
    "ParallelProbe": "core.controllers",
    "SelfConsistency": "core.controllers",
    "parse_spec": "core.controllers",
    # voting helpers that match the baselines exactly
    "beta_confidence": "core.primitives",
    "majority": "core.primitives",
    "vote_counts": "core.primitives",
    "vote_stats": "core.primitives",
    # statistics next to a score
    "Point": "core.stats",
    "paired_comparison": "core.stats",
    "pareto_frontier": "core.stats",
    "seed_spread": "core.stats",
    "token_saving": "core.stats",
    # discovery studies
    "Study": "core.discovery.study",
    # errors
    "AutoTTSError": "core.errors",
    "ControllerSpecError": "core.errors",
    "ReplayFormatError": "core.errors",
}

__all__ = [
    "AdaptiveConsistency",
    "AutoTTSError",
    "ConfidenceMomentumController",
    "Controller",
    "ControllerSpec",
    "ControllerSpecError",
    "EarlyStoppingConsistency",
    "Episodes",
    "EvalResult",
    "ParallelProbe",
    "Point",
    "ReplayEnvironment",
    "ReplayFormatError",
    "ReplayQuestion",
    "SelfConsistency",
    "Study",
    "beta_confidence",
    "evaluate",
    "expand_paths",
    "load_environment",
    "load_environments",
    "majority",
    "paired_comparison",
    "pareto_frontier",
    "parse_spec",
    "run_episodes",
    "save_environment",
    "score",
    "seed_spread",
    "token_saving",
    "vote_counts",
    "vote_stats",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
