"""Live solving: any controller against a live model, through the same question API as replay (`autotts solve`).

Modules: `question` (`LiveQuestion`, the replay question API over a `core.collect` backend, normalising answers
with `core.collect.normalise.AnswerCanon`) and `solver` (`LiveSolver`, `LiveResult`, `recorded_environment`).
Nothing here imports llama_cpp: the backend is built by the caller (`core.collect.engine.LlamaEngine`,
`core.collect.openai_backend.OpenAIBackend`).
"""

from core.live.question import BlockingView, LiveQuestion
from core.live.solver import (
    LiveResult,
    LiveSolver,
    live_settings,
    recorded_environment,
)

__all__ = [
    "BlockingView",
    "LiveQuestion",
    "LiveResult",
    "LiveSolver",
    "live_settings",
    "recorded_environment",
]
