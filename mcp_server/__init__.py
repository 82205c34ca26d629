"""The autotts MCP server: discovery tools over a study (`build_server`), and the plain tool functions
(`mcp_server.tools`) that any agent loop can call. The service they drive is `core.discovery.service`."""

__all__ = ["build_server"]


def build_server(*args, **kwargs):  # noqa: ANN002, ANN003 - lazy so that `import mcp_server` needs no MCP SDK
    from mcp_server.server import build_server as _build

    return _build(*args, **kwargs)
