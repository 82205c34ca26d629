"""The discovery tools for an Anthropic tool loop: the MCP server's own tools, through its public API.

One implementation, two front doors: `build_server` registers the tools once (names, descriptions and argument
schemas come from `mcp_server.server`, the logic from `mcp_server.tools`); here `list_tools()` turns them into
Anthropic tool definitions and `call_tool()` runs a `tool_use` block exactly as an MCP client's call would be run
— the same argument validation, the same error texts. Every failure becomes an `is_error` result the explorer
reads; nothing raised by a tool call ends the loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio

from core.discovery.service import DiscoveryService
from mcp_server.server import build_server

log = logging.getLogger("autotts.discover")

MAX_RESULT_CHARS = 12_000
"""A tool result longer than this is cut (tools page their output; this only guards the context)."""


@dataclass
class ToolOutcome:
    """What one tool_use block produced."""

    text: str
    is_error: bool
    structured: dict[str, Any] | None = None

    @property
    def run_id(self) -> str | None:
        """The run a run_controller call recorded (or found as a duplicate), if any."""
        return None if not self.structured else self.structured.get("run_id")


class Toolbox:
    """The tools of a `DiscoveryService`, as Anthropic tool definitions and a synchronous `call`."""

    def __init__(self, svc: DiscoveryService):
        self.svc = svc
        self.server = build_server(svc)
        self._tools = anyio.run(self.server.list_tools)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tools]

    def definitions(self) -> list[dict[str, Any]]:
        """`tools=` for messages.create: name, description and the input JSON schema of each MCP tool."""
        out = []
        for t in self._tools:
            schema = {k: v for k, v in (t.input_schema or {"type": "object"}).items() if k != "title"}
            schema.setdefault("type", "object")
            schema.setdefault("properties", {})
            out.append({"name": t.name, "description": t.description or t.name, "input_schema": schema})
        return out

    def call(self, name: str, arguments: Any) -> ToolOutcome:
        """Run one tool call; malformed calls (input not an object, unknown tool, bad arguments) become errors."""
        if not isinstance(arguments, dict):
            shown = str(arguments)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            return ToolOutcome(f"the input of this {name} call is not a JSON object of arguments (got "
                               f"{type(arguments).__name__}: {shown!r}); send the call again with an object such as "
                               '{"code": "..."}', True)
        if name not in self.names:
            return ToolOutcome(f"unknown tool '{name[:60]}'; the tools are: {', '.join(self.names)}", True)
        try:
            result = anyio.run(self.server.call_tool, name, arguments)
        except Exception as e:  # ToolError (bad input, rejected call) or a bug: either way, tell the explorer
            if type(e).__name__ not in ("ToolError",):
                log.warning("tool %s raised %s", name, type(e).__name__, exc_info=True)
            return ToolOutcome(_clean_error(str(e)), True)
        text = "\n".join(getattr(c, "text", "") for c in (result.content or []))
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + "\n… (cut; ask for a page or a narrower view)"
        return ToolOutcome(text, bool(result.is_error), getattr(result, "structured_content", None))


def _clean_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if "errors.pydantic.dev" not in ln]
    out = "\n".join(lines).strip() or "the tool call failed"
    return out if len(out) <= 1500 else out[:1500] + " …"
