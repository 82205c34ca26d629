"""Defence in depth inside the worker: what a candidate module may import, and the builtins it gets.

This is not the security boundary (code in the same process can always reach further by introspection); the
operating-system layers are. It turns the common mistakes and the obvious attacks into a clear message.
"""

from __future__ import annotations

import builtins
import importlib
from typing import Any

ALLOWED_STDLIB = frozenset({
    "__future__", "abc", "array", "bisect", "cmath", "collections", "collections.abc", "contextlib", "copy",
    "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "heapq", "itertools", "json", "math",
    "numbers", "operator", "random", "re", "statistics", "string", "struct", "textwrap", "time", "typing",
    "warnings",
})
"""Standard-library modules a controller may import (pre-imported in the worker before the lockdown)."""

ALLOWED_CORE = frozenset({"core", "core.primitives", "core.environment"})
BLOCKED_NUMPY = ("numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy._pytesttester")
PREIMPORT_NUMPY = (
    "numpy", "numpy.random", "numpy.linalg", "numpy.fft", "numpy.polynomial", "numpy.ma", "numpy.char",
    "numpy.dtypes", "numpy.exceptions", "numpy.rec", "numpy.strings", "numpy.typing", "numpy.lib.array_utils",
    "numpy.lib.introspect", "numpy.lib.mixins", "numpy.lib.npyio", "numpy.lib.recfunctions", "numpy.lib.scimath",
    "numpy.lib.stride_tricks",
)
"""numpy modules imported before the lockdown: after a uid drop without bubblewrap (the interpreter lives under a
0700 home) nothing more can be read from disk."""

ALLOWED_TEXT = ("the standard-library modules " + ", ".join(sorted(ALLOWED_STDLIB - {"__future__"}))
                + "; numpy; core.primitives and core.environment")


class ForbiddenImport(ImportError):
    """A controller imported a module outside the allowlist."""


def _numpy_ok(name: str) -> bool:
    return (name == "numpy" or name.startswith("numpy.")) and not any(
        name == b or name.startswith(b + ".") for b in BLOCKED_NUMPY)


def module_allowed(name: str) -> bool:
    return name in ALLOWED_STDLIB or name in ALLOWED_CORE or _numpy_ok(name)


def _refuse(name: str) -> ForbiddenImport:
    return ForbiddenImport(f"import of '{name}' is not allowed in controllers; allowed: {ALLOWED_TEXT}", name=name)


_real_import = builtins.__import__


def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level:
        raise ForbiddenImport("relative imports are not allowed in controllers (a controller is a single module)")
    if not isinstance(name, str) or not module_allowed(name):
        raise _refuse(str(name))
    for item in fromlist or ():
        if not isinstance(item, str) or item == "*":
            continue
        sub = f"{name}.{item}"
        if name == "core" and sub not in ALLOWED_CORE:
            raise _refuse(sub)
        if name.startswith("numpy") and not _numpy_ok(sub):
            raise _refuse(sub)
    return _real_import(name, globals, locals, fromlist, level)


def _unavailable(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(f"{name}() is not available to controllers")

    refuse.__name__ = name
    return refuse


def candidate_builtins() -> dict[str, Any]:
    """A copy of the builtins with a guarded `__import__` and without file, console or debugger access."""
    b = dict(builtins.__dict__)
    for name in ("open", "input", "breakpoint", "help", "exit", "quit"):
        b[name] = _unavailable(name)
    for name in ("copyright", "credits", "license"):
        b.pop(name, None)
    b["__import__"] = guarded_import
    return b


def preimport() -> None:
    """Import everything a controller may import, while the worker can still read the interpreter's files."""
    for name in sorted(ALLOWED_STDLIB) + list(PREIMPORT_NUMPY):
        try:
            importlib.import_module(name)
        except ImportError:  # an older numpy without this submodule
            pass
