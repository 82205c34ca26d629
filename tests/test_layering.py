"""Layering: `core` is the evaluator library; the CLI, MCP server, TUI and LLM SDKs are layers above it.

The rule, checked over every module of core/** (module level and inside functions, `import` and `from … import`,
and `importlib.import_module("…")` / `__import__("…")` with a literal name):

* everywhere in core: the standard library, core itself, the numerical stack (numpy, numba, scipy), orjson, and
  `replay_data` (the bundled demo environment, a data package);
* additionally in core/sandbox (and only there): greenlet, on which a worker runs a cell's episodes concurrently;
* additionally in core/collect (and only there): the local-model runtime that collection drives — llama_cpp
  (llama-cpp-python), gguf (writes the tiny test model) and math_verify with sympy (answer normalisation). These
  are imported inside the functions that need them, so `core.collect` itself imports without the extra; and
  httpx2, the HTTP client of the OpenAI-compatible backend (the same runtime's remote form: the collector and live
  solving drive servers through the `Backend` interface core/collect defines), also imported where used;
* nothing else: in particular no UI, MCP, CLI, web or SDK packages (textual, rich, click, mcp, mcp_types,
  starlette, uvicorn, anthropic, …) and none of the packages layered on core (autotts, autotts_tui, mcp_server).

A new dependency of core is a deliberate change to this list.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"

ALLOWED = {"core", "numpy", "numba", "scipy", "orjson", "replay_data"}
ALLOWED_UNDER = {
    # httpx2: the OpenAI-compatible backend is a Backend like the llama.cpp engine, only over HTTP
    "collect": {"llama_cpp", "gguf", "math_verify", "sympy", "httpx2"},
    "sandbox": {"greenlet"},
}
LAYERS_ABOVE = {"autotts", "autotts_tui", "mcp_server"}
NEVER = {"textual", "rich", "click", "mcp", "mcp_types", "starlette", "uvicorn", "anyio", "anthropic", "pydantic",
         "matplotlib", *LAYERS_ABOVE}
MODULES = sorted(CORE.rglob("*.py"))


def imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the tree; relative imports resolve within core."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "core" if node.level else node.module or ""))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            found.append((node.lineno, node.args[0].value))
    return found


def allowed_for(path: Path) -> set[str]:
    sub = path.relative_to(CORE).parts[0]
    return ALLOWED | ALLOWED_UNDER.get(sub, set()) | set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE.parent)))
def test_core_imports_only_what_its_layer_allows(path):
    allowed = allowed_for(path)
    bad = [(line, name) for line, name in imports(ast.parse(path.read_text())) if name.split(".")[0] not in allowed]
    assert not bad, f"{path.relative_to(CORE.parent)} imports outside core's layer: {bad}"


def test_the_rule_covers_every_module_and_rejects_the_layers_above():
    assert len(MODULES) > 30 and CORE / "sandbox" / "runner.py" in MODULES and CORE / "collect" / "engine.py" in MODULES
    assert not NEVER & (ALLOWED | set().union(*ALLOWED_UNDER.values()))
    tree = ast.parse("import click\ndef f():\n    from mcp_server import tools\n    importlib.import_module('textual.app')\n")
    assert [n for _, n in imports(tree) if n.split(".")[0] not in allowed_for(CORE / "evaluate.py")] == \
        ["click", "mcp_server", "textual.app"]
    assert "llama_cpp" not in allowed_for(CORE / "live" / "solver.py")
    assert "llama_cpp" in allowed_for(CORE / "collect" / "engine.py")
    assert "httpx2" in allowed_for(CORE / "collect" / "openai_backend.py")
    assert "httpx2" not in allowed_for(CORE / "live" / "solver.py") and "httpx2" not in allowed_for(CORE / "store.py")
