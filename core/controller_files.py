"""Controllers written as Python files: the format agents write during discovery.

A controller file is a module that defines one class with a `solve(question)` method (the paper's style); its
constructor takes the spec's options as keyword arguments (`beta=0.5`) or a `config` dict (the paper's
`LLMDesignedMethod(config={...})`). A module-level `solve(question)` function works too. Mark the class with
`CONTROLLER = MyController` when a file defines several.

This loads code into the current process: only for trusted files. Untrusted candidates go through the sandbox.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from core.errors import ControllerSpecError


def load_module_from_source(source: str, module_name: str = "autotts_candidate", filename: str = "<candidate>") -> ModuleType:
    """Execute controller source as a fresh module.

    It is registered in sys.modules while it runs (dataclasses look their module up there), and compiled with
    `dont_inherit` so this file's `from __future__` imports do not leak into the candidate.
    """
    module = ModuleType(module_name)
    module.__file__ = filename
    code = compile(source, filename, "exec", dont_inherit=True)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    finally:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
    return module


def find_controller_class(module: ModuleType) -> Any:
    """The controller in a module: `CONTROLLER`, else the single class defined there with a solve method,
    else a module-level `solve` function."""
    chosen = getattr(module, "CONTROLLER", None)
    if chosen is not None:
        return chosen
    classes = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and callable(getattr(obj, "solve", None))
        and not inspect.isabstract(obj)
    ]
    if len(classes) == 1:
        return classes[0]
    if len(classes) > 1:
        names = ", ".join(c.__name__ for c in classes)
        raise ControllerSpecError(f"several controller classes ({names}); set CONTROLLER = TheOne at module level")
    if callable(getattr(module, "solve", None)):
        return module
    raise ControllerSpecError("no controller found: define a class with a solve(question) method")


@functools.lru_cache(maxsize=64)
def _parameters(factory: Any) -> tuple[Any, bool]:
    """The constructor's parameters and whether it takes **kwargs. Cached: `inspect.signature` of a class without
    its own `__init__` tokenizes and compiles a text signature, a millisecond per call, and the sandbox builds a
    fresh controller for every episode."""
    params = inspect.signature(factory).parameters
    return params, any(p.kind is p.VAR_KEYWORD for p in params.values())


def instantiate(target: Any, options: dict[str, Any]) -> Any:
    """Build the controller with the spec's options, as keyword arguments or as the paper's `config` dict."""
    if not inspect.isclass(target):
        if options:
            raise ControllerSpecError("a module-level solve() takes no options; define a class to accept them")
        return target
    factory: Any = target  # a class of the controller file: its parameters are known only at run time
    params, accepts_kwargs = _parameters(factory)
    if all(k in params for k in options) or accepts_kwargs:
        return factory(**options)
    if "config" in params:
        return factory(config=dict(options))
    unknown = ", ".join(k for k in options if k not in params)
    raise ControllerSpecError(f"{target.__name__} accepts no option {unknown}; its parameters are {', '.join(params) or '(none)'}")


def load_controller_file(path: str | Path, options: dict[str, Any] | None = None) -> Any:
    """Load a trusted controller file and build its controller with `options` (e.g. {'beta': 0.5})."""
    p = Path(path)
    if not p.is_file():
        raise ControllerSpecError(f"{p}: controller file not found")
    spec = importlib.util.spec_from_file_location(f"autotts_controller_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise ControllerSpecError(f"{p}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ControllerSpecError(f"{p}:{e.lineno}: syntax error: {e.msg}") from None
    controller = instantiate(find_controller_class(module), dict(options or {}))
    if not getattr(controller, "name", None):
        try:
            controller.name = p.stem
        except (AttributeError, TypeError):  # slotted or frozen classes keep their class name as label
            pass
    return controller
