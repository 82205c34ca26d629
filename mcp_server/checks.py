"""Static checks on candidate controller source, run in the server before anything executes.

They give an agent a clear, immediate message for the common mistakes (syntax errors, forbidden imports, reading
the question object's private state) instead of a sandbox failure. They are not the security boundary: the
sandbox is (its workers hold no unrevealed data, and it blocks files, network, processes and every channel
between workers whatever the code does).
"""

from __future__ import annotations

import ast

from core.errors import AutoTTSError

MAX_SOURCE_BYTES = 256 * 1024
"""A controller is a page or two of Python; anything larger is almost surely a mistake (or an attack)."""

ALLOWED_MODULES = frozenset({
    "__future__", "abc", "array", "bisect", "cmath", "collections", "copy", "dataclasses", "decimal", "enum",
    "fractions", "functools", "heapq", "itertools", "json", "math", "numbers", "operator", "random", "re",
    "statistics", "string", "typing", "typing_extensions", "numpy", "core.primitives", "core.environment",
})
"""Top-level modules (or exact dotted modules) a candidate may import: the stdlib's pure computation, numpy, and
the project's public helpers `core.primitives` (majority, vote_stats, vote_counts, beta_confidence) and
`core.environment` (for the ReplayQuestion type in annotations)."""

FORBIDDEN_NAMES = frozenset({
    "__import__", "__builtins__", "eval", "exec", "compile", "open", "globals", "locals", "vars", "getattr",
    "setattr", "delattr", "breakpoint", "input", "memoryview", "__loader__", "__spec__",
})

_FORBIDDEN_DUNDERS = frozenset({
    "__globals__", "__subclasses__", "__builtins__", "__dict__", "__class__", "__bases__", "__base__", "__mro__",
    "__code__", "__closure__", "__getattribute__", "__import__", "__loader__", "__spec__", "__self__", "__func__",
    "__reduce__", "__reduce_ex__", "__slots__", "__defaults__", "__kwdefaults__", "__module__", "__wrapped__",
})
_FORBIDDEN_ATTRS = frozenset({"f_back", "f_globals", "f_locals", "f_builtins", "gi_frame", "cr_frame", "ag_frame",
                              "tb_frame", "tb_next", "co_code"})


class CandidateSourceError(AutoTTSError):
    """The candidate's source was rejected before running; the message names the line and the fix."""


def _own_module_allowed(name: str) -> bool:
    if name in ALLOWED_MODULES:
        return True
    top = name.split(".", 1)[0]
    return top in ALLOWED_MODULES and top not in ("core",)


try:  # one allowlist: the sandbox's own guard, when it is installed
    from core.sandbox._guard import ALLOWED_TEXT as ALLOWED_TEXT
    from core.sandbox._guard import module_allowed
except ImportError:  # pragma: no cover - the sandbox ships with the package
    module_allowed = _own_module_allowed
    ALLOWED_TEXT = ", ".join(sorted(m for m in ALLOWED_MODULES if m != "__future__"))


def check_source(code: object) -> ast.Module:
    """Validate candidate source; return its AST or raise CandidateSourceError with one clear message."""
    if not isinstance(code, str):
        raise CandidateSourceError(f"code must be a string of Python source, got {type(code).__name__}")
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        raise CandidateSourceError(
            f"code is {size:,} bytes; the limit is {MAX_SOURCE_BYTES:,}. A controller is a short module: "
            "send only the controller's source")
    if not code.strip():
        raise CandidateSourceError("code is empty: send a Python module defining a class with solve(question)")
    if "\x00" in code:
        raise CandidateSourceError("code contains a NUL byte; send plain Python source text")
    try:
        tree = ast.parse(code, filename="<candidate>")
    except SyntaxError as e:
        line = (e.text or "").strip()
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        raise CandidateSourceError(f"syntax error at {where}: {e.msg}" + (f"\n    {line[:200]}" if line else "")) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise CandidateSourceError(f"code could not be parsed ({type(e).__name__}: {str(e)[:200]})") from None
    for node in ast.walk(tree):
        _check_node(node)
    if not _defines_controller(tree):
        raise CandidateSourceError(
            "no controller found: define a class with a solve(self, question) method (taking the β knob as "
            "__init__(self, beta=0.5)), or a module-level solve(question) function")
    return tree


def _check_node(node: ast.AST) -> None:
    line = getattr(node, "lineno", "?")
    if isinstance(node, ast.Import):
        for alias in node.names:
            if not module_allowed(alias.name):
                raise _import_error(alias.name, line)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            raise CandidateSourceError(f"line {line}: relative imports are not allowed; a candidate is a single module")
        mod = node.module or ""
        if not module_allowed(mod):
            raise _import_error(mod, line)
        if mod == "core" or mod.startswith("numpy"):
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if alias.name != "*" and (mod == "core" or sub.startswith(("numpy.ctypeslib", "numpy.f2py"))) \
                        and not module_allowed(sub):
                    raise _import_error(sub, line)
    elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
        raise CandidateSourceError(
            f"line {line}: '{node.id}' is not available to controllers; a controller only talks to the question "
            "object it is given (probe_new, probe_more, get_new_branch_final_answer, branch/extend/probe/prune)")
    elif isinstance(node, ast.Attribute):
        attr = node.attr
        if attr in _FORBIDDEN_DUNDERS or attr in _FORBIDDEN_ATTRS:
            raise CandidateSourceError(f"line {line}: attribute '{attr}' is off limits to controllers (introspection)")
        if attr.startswith("_") and not attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                raise CandidateSourceError(
                    f"line {line}: '{attr}' is a private attribute of another object; the question's internal state "
                    "(unrevealed answers) is not the controller's to read. Use its public methods; keep your own "
                    "state on self")


def _import_error(name: str, line: object) -> CandidateSourceError:
    return CandidateSourceError(f"line {line}: import of '{name}' is not allowed; controllers may import only "
                                f"{ALLOWED_TEXT}")


def _defines_controller(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "solve":
            return True
        if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) and b.name == "solve" for b in node.body):
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CONTROLLER" for t in node.targets):
            return True
    return False


# ----- the branch budget a candidate declares ------------------------------------------------------------------
_BUDGET_FUNCS = {"min": min, "max": max, "round": round, "int": int, "float": float, "abs": abs}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}


def declared_branch_budget(tree: ast.Module, beta: float) -> int | None:
    """The `max_branches` a candidate's `__init__` sets for `beta`, read statically (the parent never runs
    candidate code): the convention of the controller template, and what `core.stops.own_branch_budget` reads
    from an object. Only straight-line assignments of arithmetic over β, numbers and earlier assignments, with
    min/max/round/int/float/abs, are followed; anything else gives None (unknown)."""
    init = _controller_init(tree)
    if init is None or not init.args.args[1:]:
        return None
    env: dict[str, float] = {init.args.args[1].arg: float(beta)}
    for stmt in init.body:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        key = target.id if isinstance(target, ast.Name) else (
            f"self.{target.attr}" if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
            and target.value.id == "self" else None)
        if key is None:
            continue
        try:
            env[key] = _arith(stmt.value, env)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            env.pop(key, None)  # a later read of it is unknown, not stale
    value = env.get("self.max_branches")
    return int(value) if value is not None and value == int(value) and value > 0 else None


def _controller_init(tree: ast.Module) -> ast.FunctionDef | None:
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(isinstance(b, ast.FunctionDef) and b.name == "solve" for b in n.body)}
    named = [n.value.id for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Name)
             and any(isinstance(t, ast.Name) and t.id == "CONTROLLER" for t in n.targets)]
    cls = classes.get(named[0]) if named else (next(iter(classes.values())) if len(classes) == 1 else None)
    if cls is None:
        return None
    return next((b for b in cls.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)


def _arith(node: ast.expr, env: dict[str, float]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return env[f"self.{node.attr}"]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _arith(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return float(_BINOPS[type(node.op)](_arith(node.left, env), _arith(node.right, env)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _BUDGET_FUNCS \
            and not node.keywords and node.args:
        return float(_BUDGET_FUNCS[node.func.id](*(_arith(a, env) for a in node.args)))  # type: ignore[operator]
    raise ValueError("not simple arithmetic")
