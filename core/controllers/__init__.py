"""Built-in controllers (docs/semantics.md §6): SC@N, ASC, ESC, Parallel-Probe, the paper's CMC and one-batch
momentum (found with this project's discovery tools).

Each is a frozen dataclass whose fields are its options (the baselines' defaults are Table 1's settings), with a
readable `solve(question)` and a compiled replay fast path that the tests hold to identical results.
"""

from core.controllers.asc import AdaptiveConsistency
from core.controllers.base import BUILTINS, BuiltinController, Controller, ControllerSpec, parse_spec
from core.controllers.cmc import ConfidenceMomentumController
from core.controllers.esc import EarlyStoppingConsistency
from core.controllers.one_batch import OneBatchMomentum
from core.controllers.parallel_probe import ParallelProbe
from core.controllers.sc import SelfConsistency

__all__ = [
    "BUILTINS",
    "AdaptiveConsistency",
    "BuiltinController",
    "ConfidenceMomentumController",
    "Controller",
    "ControllerSpec",
    "EarlyStoppingConsistency",
    "OneBatchMomentum",
    "ParallelProbe",
    "SelfConsistency",
    "parse_spec",
]
