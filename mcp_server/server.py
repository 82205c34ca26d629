"""The `autotts` MCP server: a thin layer that exposes `mcp_server.tools` over stdio or streamable HTTP.

Each tool validates its input through `mcp_server.tools`, runs blocking work in a worker thread (evaluations
report progress back through `ctx.report_progress`), and returns readable text plus structured content. Bad input
becomes an MCP tool error (`is_error`) with one message naming the fix; the server keeps serving. Logging goes to
stderr only: in stdio mode stdout carries the protocol.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from core.discovery.service import DiscoveryService
from core.discovery.study import Study
from core.errors import AutoTTSError
from mcp_server import tools
from mcp_server.prompt import controller_format, discover_prompt, scoring_notes

log = logging.getLogger("autotts.mcp")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
M = TypeVar("M", bound=BaseModel)

INSTRUCTIONS = (
    "autotts: discover test-time-scaling controllers in an exact offline replay environment. Get the brief from "
    "the `discover` prompt (or read autotts://controller-format), look at get_baselines, then write a controller "
    "module and evaluate it with run_controller; study failures with inspect_trace."
)


def _result(model: BaseModel, *, is_error: bool = False) -> CallToolResult:
    text = model.text() if hasattr(model, "text") else model.model_dump_json()
    if len(text) > tools.MAX_CHARS:  # the tools page to fit; this backstop keeps an agent's context safe regardless
        text = text[: tools.MAX_CHARS - 120] + "\n… (cut at 8,000 characters: ask for a page or a narrower view)"
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=model.model_dump(mode="json", exclude_none=True), is_error=is_error)


async def _call(fn: Callable[..., M], *args: Any, **kwargs: Any) -> M:
    """Run a blocking tool function in a worker thread; turn expected errors into one-line tool errors."""
    log.info("tool %s", getattr(fn, "__name__", fn))
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except AutoTTSError as e:
        raise ToolError(str(e)) from None
    except Exception as e:  # a bug of ours: log it, answer briefly, keep serving
        log.exception("tool %s crashed", getattr(fn, "__name__", fn))
        raise ToolError(f"internal error ({type(e).__name__}: {str(e)[:300]}); the server is still running — "
                        "please report this") from None


def build_server(study: Study | DiscoveryService, *, name: str = "autotts", token: str | None = None) -> MCPServer:
    """An MCPServer over a study (or a ready DiscoveryService). `token` is only used by `serve_http`."""
    svc = study if isinstance(study, DiscoveryService) else DiscoveryService(study)
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("autotts")
    except PackageNotFoundError:  # pragma: no cover
        ver = "0"
    server = MCPServer(name, instructions=INSTRUCTIONS, version=ver)
    server.autotts_service = svc  # type: ignore[attr-defined]
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            server.add_tool(fn, description=" ".join((fn.__doc__ or "").split()), annotations=annotations)
            return fn
        return register

    @tool(read_only)
    async def list_environments() -> Annotated[CallToolResult, tools.EnvironmentList]:
        """The search environments you may evaluate and trace, and the study's β grid, branch ceiling and seeds."""
        return _result(await _call(tools.list_environments, svc))

    @tool(read_only)
    async def get_baselines(
        envs: Annotated[list[str] | None, Field(description="Search environment names; default all.")] = None,
    ) -> Annotated[CallToolResult, tools.Baselines]:
        """Accuracy and mean tokens of SC@64, ASC, ESC, Parallel-Probe and CMC (at each β of the grid) on the search
        environments, averaged and per environment, with the baselines on the accuracy–tokens frontier marked."""
        return _result(await _call(tools.get_baselines, svc, envs))

    @tool(ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False))
    async def run_controller(
        code: Annotated[str, Field(description="Source of one Python module defining a controller class with "
                                               "__init__(self, beta) and solve(self, question); see "
                                               "autotts://controller-format.")],
        ctx: Context,
        name: Annotated[str | None, Field(description="A short name for this candidate (the idea it tries).")] = None,
        betas: Annotated[list[float] | None, Field(description="β values to evaluate; default the study's grid.")] = None,
        envs: Annotated[list[str] | None, Field(description="Search environments; default all.")] = None,
        seeds: Annotated[int | None, Field(description="Quick mode: evaluate only the first N seeds (default: the "
                                                       "study's all). Labelled QUICK and never ranked.")] = None,
        questions: Annotated[list[int] | None, Field(description="Quick mode: evaluate only these question indices "
                                                                 "of every environment.")] = None,
    ) -> Annotated[CallToolResult, tools.RunReport]:
        """Evaluate a controller in the sandbox on the search environments at each β, record it, and report: a run
        id; the objective as numbers (tokens to reach SC@64's accuracy as % of SC@64's tokens and of CMC's, AUC);
        per-β search averages with standard errors over seeds, the paired gap to CMC at the same β and the position
        against the baselines; per-environment accuracy and tokens; whether tokens rise monotonically with β; wall
        and CPU time and machine load; for a failure the error with its traceback lines. `seeds=`/`questions=` make
        a quick run, labelled and never ranked with full runs. Evaluations run one at a time (a second call waits
        for the first). Sends progress notifications."""
        async def send(done: float, total: float | None, message: str) -> None:
            try:
                await ctx.report_progress(done, total, message)
            except Exception:  # a client that went away must not fail the evaluation
                log.debug("progress notification failed", exc_info=True)

        def progress(done: float, total: float | None, message: str) -> None:
            try:
                anyio.from_thread.run(send, done, total, message)
            except Exception:
                log.debug("progress hand-off failed", exc_info=True)

        report = await _call(tools.run_controller, svc, code, name, betas, envs, progress, seeds, questions)
        return _result(report, is_error=report.status != "ok")

    @tool(read_only)
    async def inspect_trace(
        run_id: Annotated[str, Field(description="A run id from run_controller or get_history, e.g. r0007.")],
        env: Annotated[str | None, Field(description="Search environment; default the run's first.")] = None,
        beta: Annotated[float | None, Field(description="β of the run to inspect; default 0.5 (or the middle).")] = None,
        question: Annotated[int | None, Field(description="Question index: show that episode's actions.")] = None,
        seed: Annotated[int | None, Field(description="Shuffle seed; with question, default the first seed the "
                                                      "candidate got wrong.")] = None,
        page: Annotated[int, Field(description="Page, from 1 (every page fits in 8,000 characters).")] = 1,
        page_size: Annotated[int | None, Field(description="Digest rows per page (≤200; lowered to fit).")] = None,
        view: Annotated[str, Field(description="With question: 'branches' (default: one row per branch) or "
                                               "'actions' (one row per action).")] = "branches",
        only: Annotated[str | None, Field(description="With view='actions': 'finishes', 'changes' (answer "
                                                      "changes) or 'finishes+changes'.")] = None,
    ) -> Annotated[CallToolResult, tools.TraceView]:
        """Without `question`: a per-question digest for one environment and β (accuracy, tokens, branches opened,
        why episodes stopped: own stop / own budget / the study's ceiling / pool used up, where SC@64 was right and
        the candidate wrong); with `seed` only, one row per question for that seed. With `question`: one episode
        (re-run in the sandbox) branch by branch: opening and finishing order, tokens, steps, final answer, whether
        it finished, was pruned or was left running, and its answers by step run-length compressed; or with
        view='actions' its actions, filterable to finishes or answer changes. Paged to 8,000 characters."""
        return _result(await _call(tools.inspect_trace, svc, run_id, env, beta, question, seed, page, page_size,
                                   view, only))

    @tool(read_only)
    async def compare_runs(
        run_a: Annotated[str, Field(description="A scored run id, e.g. r0007.")],
        run_b: Annotated[str, Field(description="Another scored run id, or a built-in to measure against: cmc or "
                                                "one-batch (at the compared β), sc:n=64, asc, esc, parallel-probe.")],
        env: Annotated[str | None, Field(description="One search environment; default all both ran on, "
                                                     "pooled with equal weight.")] = None,
        beta: Annotated[float | None, Field(description="β to compare at; default 0.5 (or the middle common β).")]
        = None,
    ) -> Annotated[CallToolResult, tools.Comparison]:
        """Compare two runs, or a run and a built-in, on the seeds and questions both evaluated (a − b): paired t-tests over seeds of the
        accuracy and token differences saying whether each is more than noise, the accuracy difference at every
        other common β, and per question the accuracy and token differences, largest first."""
        return _result(await _call(tools.compare_runs, svc, run_a, run_b, env, beta))

    @tool(read_only)
    async def get_history(
        page: Annotated[int, Field(description="Page, from 1.")] = 1,
        page_size: Annotated[int, Field(description="Runs per page (≤100).")] = 20,
        include_failed: Annotated[bool, Field(description="Also list failed and refused runs.")] = True,
    ) -> Annotated[CallToolResult, tools.History]:
        """The leaderboard: full-grid runs ranked by the tokens their β curve needs to reach SC@64's search accuracy
        (% of SC@64's tokens; then runs that never reach it, by AUC), with the same against CMC's curve, the AUC and
        the most accurate point; probes (part of the β grid or of the environments) and quick runs listed apart,
        unranked; failed and refused runs after."""
        return _result(await _call(tools.get_history, svc, page, page_size, include_failed))

    @tool(read_only)
    async def get_controller(
        run_id: Annotated[str, Field(description="A run id, e.g. r0007.")],
        page: Annotated[int, Field(description="Page of lines, from 1.")] = 1,
    ) -> Annotated[CallToolResult, tools.ControllerSource]:
        """The source code of a recorded candidate (paged by 300 lines)."""
        return _result(await _call(tools.get_controller, svc, run_id, page))

    @server.resource("autotts://controller-format", name="controller-format", mime_type="text/markdown",
                     description="How to write a controller module: shape, imports, the question API, an example.")
    def controller_format_resource() -> str:
        return controller_format()

    @server.resource("autotts://study", name="study", mime_type="application/json",
                     description="This study's search environments, β grid, branch ceiling and seeds, and how runs "
                                 "are scored and ranked.")
    def study_resource() -> str:
        import json

        # the folder is the server's own business (it holds the run store), not the agent's
        doc = {k: v for k, v in svc.study.summary().items() if k != "folder"}
        return json.dumps(doc | {"scoring": scoring_notes()}, indent=1)

    @server.prompt(name="discover", description="Brief for a discovery session: the environment, the objective, "
                                                "the rules (single monotone β, 64-branch ceiling, no oracle), the tools.")
    def discover() -> str:
        return discover_prompt(svc.study)

    return server


# ----- HTTP --------------------------------------------------------------------------------------------------------
class BearerGuard:
    """ASGI wrapper requiring `Authorization: Bearer <token>` on every HTTP request (constant-time compare)."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.want = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.want):
                from starlette.responses import JSONResponse

                response = JSONResponse(
                    {"error": "unauthorized", "error_description": "send the header Authorization: Bearer <token> "
                     "with the token from the server's --token-file"}, status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="autotts"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def transport_security(host: str, port: int, extra_hosts: Sequence[str] = ()) -> TransportSecuritySettings:
    """Host and Origin checking (DNS-rebinding protection) for the given bind address."""
    names = list(LOOPBACK) if host in LOOPBACK else [host, *LOOPBACK]
    names += list(extra_hosts)
    fmt = [f"[{n}]" if ":" in n else n for n in names]
    if host in ("0.0.0.0", "::") and not extra_hosts:
        # Bound to every interface: the Host a client uses is unknown, so only the bearer token protects it.
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{n}:{port}" for n in fmt] + fmt,
        allowed_origins=[f"{scheme}://{n}:{port}" for n in fmt for scheme in ("http", "https")],
    )


def http_app(server: MCPServer, *, host: str, port: int, token: str | None, path: str = "/mcp",
             extra_hosts: Sequence[str] = ()) -> Any:
    app = server.streamable_http_app(streamable_http_path=path, host=host,
                                     transport_security=transport_security(host, port, extra_hosts))
    return BearerGuard(app, token) if token else app


def serve_http(server: MCPServer, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
               path: str = "/mcp", extra_hosts: Sequence[str] = ()) -> None:
    """Serve streamable HTTP (blocking). Non-loopback addresses require a token."""
    import uvicorn

    if host not in LOOPBACK and not token:
        raise AutoTTSError(f"refusing to serve on {host} without a bearer token: anyone who can reach the port could "
                           "run code in your sandbox. Pass --token-file FILE, or bind to 127.0.0.1")
    app = http_app(server, host=host, port=port, token=token, path=path, extra_hosts=extra_hosts)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    log.info("autotts MCP server on http://%s:%d%s (%s)", host if ":" not in host else f"[{host}]", port, path,
             "bearer token required" if token else "no token")
    anyio.run(uvicorn.Server(config).serve)
