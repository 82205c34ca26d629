"""autotts core: the offline replay environment, its evaluator and the built-in controllers.

This package imports no UI, MCP or LLM-SDK code; the CLI, MCP server and TUI are thin layers over it.
"""

from core.environment import ReplayEnvironment, ReplayQuestion
from core.errors import AutoTTSError, ControllerSpecError, ReplayFormatError
from core.evaluate import EvalResult, evaluate
from core.store import load_environment, load_environments, save_environment

__all__ = [
    "AutoTTSError",
    "ControllerSpecError",
    "EvalResult",
    "ReplayEnvironment",
    "ReplayFormatError",
    "ReplayQuestion",
    "evaluate",
    "load_environment",
    "load_environments",
    "save_environment",
]
