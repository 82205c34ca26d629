"""autotts core: the offline replay environment, its evaluator and the built-in controllers.

This package imports no UI, MCP or LLM-SDK code; the CLI, MCP server and TUI are thin layers over it.
Its public names load on first use (`import core.errors` stays cheap: no numpy, numba or scipy).
"""

from __future__ import annotations

import sys as _sys
import types as _types
from typing import TYPE_CHECKING, Any

from core.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from core.environment import ReplayEnvironment, ReplayQuestion
    from core.errors import AutoTTSError, ControllerSpecError, ReplayFormatError
    from core.evaluate import EvalResult, evaluate
    from core.store import load_environment, load_environments, save_environment

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AutoTTSError": "core.errors",
    "ControllerSpecError": "core.errors",
    "EvalResult": "core.evaluate",
    "ReplayEnvironment": "core.environment",
    "ReplayFormatError": "core.errors",
    "ReplayQuestion": "core.environment",
    "evaluate": "core.evaluate",
    "load_environment": "core.store",
    "load_environments": "core.store",
    "save_environment": "core.store",
}

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


class _CoreModule(_types.ModuleType):
    """`core.evaluate` names both a submodule and the function; keep the attribute the function.

    Importing the submodule binds it on its parent package (`setattr(core, "evaluate", <module>)`); this keeps
    `from core import evaluate` the function however the submodule got imported first, as it was when this
    package imported everything eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "evaluate" and isinstance(value, _types.ModuleType):
            value = value.evaluate
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _CoreModule
