"""`autotts study init|show`, `autotts mcp` (the MCP server) and `autotts heldout` (held-out evaluation)."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from core.discovery.study import DEFAULT_FOLDER, Study
from core.errors import AutoTTSError

STUDY_HELP = f"Study folder (default: $AUTOTTS_STUDY or ./{DEFAULT_FOLDER})."


def _default_study() -> str:
    return os.environ.get("AUTOTTS_STUDY", DEFAULT_FOLDER)


def _log_to_stderr(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("autotts").setLevel(logging.INFO)


@click.group("study")
def study_group() -> None:
    """Create and inspect discovery studies (a folder with study.json and the runs.sqlite run store)."""


@study_group.command("init")
@click.argument("folder", required=False)
@click.option("--search", "search", multiple=True, metavar="PATH",
              help="Search environment: a replay file or a folder of them. Repeatable. Default: the bundled demo's "
                   "even-numbered questions.")
@click.option("--heldout", "heldout", multiple=True, metavar="PATH",
              help="Held-out environment (never visible to the agent). Repeatable. Default with no --search: the "
                   "demo's odd-numbered questions.")
@click.option("--betas", default=None, metavar="LIST", help="β grid, comma-separated (default 0,0.2,0.4,0.5,0.6,0.8,1).")
@click.option("--max-branches", default=64, show_default=True, type=click.IntRange(1, 128),
              help="Ceiling on branches a controller may open per question.")
@click.option("--seeds", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Seeded shuffles per evaluation (seeds 0..N-1); the paper uses 100.")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(1, 86400),
              help="Wall-clock limit in seconds for one candidate evaluation in the sandbox.")
@click.option("--sandbox", "level", default="auto", show_default=True, type=click.Choice(["auto", "strict", "off"]),
              help="Sandbox level: strict refuses to run below full isolation; off runs candidates unisolated.")
@click.option("--force", is_flag=True, help="Overwrite an existing study.json (the run store is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the study's summary as JSON.")
def study_init(folder: str | None, search: tuple[str, ...], heldout: tuple[str, ...], betas: str | None,
               max_branches: int, seeds: int, timeout: float, level: str, force: bool, as_json: bool) -> None:
    """Create a discovery study in FOLDER.

    \b
    Examples:
      autotts study init                      # demo: even questions to search, odd ones held out
      autotts study init runs/qwen --search path/to/replay/Qwen3-4B \\
          --heldout path/to/replay/Qwen3-8B
    """
    beta_list = None
    if betas is not None:
        try:
            beta_list = [float(b) for b in betas.split(",") if b.strip()]
        except ValueError:
            raise click.BadParameter(f"'{betas}' is not a comma-separated list of numbers", param_hint="--betas") from None
    if heldout and not search:
        raise click.UsageError("--heldout needs --search as well (without either, the demo is split in two)")
    study = Study.create(folder or _default_study(), list(search) or None, list(heldout) if search else None,
                         betas=beta_list, max_branches=max_branches, n_seeds=seeds,
                         sandbox={"timeout_s": timeout, "level": level}, overwrite=force)
    summary = study.summary() | {"heldout": study.heldout_names}
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"Created study {study.folder}")
    click.echo(f"  search:  {', '.join(study.search_names)}")
    click.echo(f"  heldout: {', '.join(study.heldout_names) or '(none)'}")
    click.echo(f"  β grid {', '.join(f'{b:g}' for b in study.betas)}; ≤{study.max_branches} branches; {study.n_seeds} seeds")
    click.echo(f"Connect an agent:  claude mcp add autotts -- autotts mcp {study.folder}")


@study_group.command("show")
@click.argument("folder", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def study_show(folder: str | None, as_json: bool) -> None:
    """Show a study's configuration and its leaderboard."""
    from core.discovery.store import RunStore

    study = Study.open(folder or _default_study())
    with RunStore(study.store_path, readonly=True) as store:
        board = store.leaderboard()
    doc = study.summary() | {"heldout": study.heldout_names, "runs": len(board), "leaderboard": [r.to_dict() for r in board[:10]]}
    sandbox = _sandbox_here(study)
    if as_json:
        click.echo(orjson.dumps(doc | {"sandbox": sandbox}, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"Study {study.folder}: search {', '.join(study.search_names)}; "
               f"held out {', '.join(study.heldout_names) or '(none)'}; {len(board)} run(s)")
    for r in board[:10]:
        score = "" if r.best_accuracy is None else f"{r.best_accuracy:.2f}% at {r.tokens_at_best:,.0f} tokens"
        click.echo(f"  {r.run_id}  {r.status:<7} {r.name[:30]:<30} {score or (r.error or '')[:60]}"
                   + ("  (recorded after a held-out evaluation)" if r.after_heldout else ""))
    click.echo(f"Sandbox on this machine: {sandbox['mode']}, level {sandbox['level']}; not protected against: "
               + "; ".join(sandbox["unprotected"]))


def _sandbox_here(study: Study) -> dict[str, Any]:
    """The level this study's sandbox settings reach on this machine, and what that level leaves open."""
    from core.sandbox.isolation import expected_level, probe_isolation, unprotected

    box = study.sandbox
    level = str(box.get("level", "auto"))
    reached = "off" if level == "off" else expected_level(
        probe_isolation(), use_bwrap=bool(box.get("use_bwrap", True)),
        use_native=bool(box.get("use_native_namespaces", True)))
    return {"mode": level, "level": reached, "unprotected": unprotected(reached)}


@click.command("mcp")
@click.argument("study_folder", metavar="STUDY", required=False)
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind with --http. Anything but loopback requires --token-file.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="Port for --http.")
@click.option("--path", "http_path", default="/mcp", show_default=True, help="URL path of the MCP endpoint.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the bearer token clients must send (created with a fresh random token, mode 0600, "
                   "if missing). HTTP only.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Extra Host/Origin name to accept with --http (besides the bind address and loopback).")
@click.option("--sandbox", "level", default=None, type=click.Choice(["auto", "strict", "off"]),
              help="Override the study's sandbox level for this server.")
@click.option("-v", "--verbose", is_flag=True, help="Log each tool call to stderr.")
def mcp_command(study_folder: str | None, use_http: bool, host: str, port: int, http_path: str,
                token_file: str | None, allow_hosts: tuple[str, ...], level: str | None, verbose: bool) -> None:
    """Serve the discovery tools over MCP (stdio by default) for STUDY, creating the default study if absent.

    \b
    Claude Code:  claude mcp add autotts -- autotts mcp ./autotts-study
    HTTP:         autotts mcp ./autotts-study --http --token-file ~/.autotts-token
    """
    _log_to_stderr(verbose)
    if token_file and not use_http:
        raise click.UsageError("--token-file applies to --http only (stdio needs no token)")
    study = Study.open_or_create(study_folder or _default_study())
    _log_to_study(study)
    if level is not None:
        study.sandbox = {**study.sandbox, "level": level}
    from mcp_server.server import build_server, serve_http

    token = _read_or_create_token(Path(token_file)) if token_file else None
    server = build_server(study)
    if use_http:
        serve_http(server, host=host, port=port, token=token, path=http_path, extra_hosts=allow_hosts)
    else:
        server.run()


def _log_to_study(study: Study) -> None:
    """Also log to the study's server.log, which `autotts tui` tails into its log pane."""
    handler = logging.FileHandler(study.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.INFO)
    for name in ("autotts", "mcp_server", "core"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _read_or_create_token(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        logging.getLogger("autotts.mcp").warning("wrote a new bearer token to %s", path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logging.getLogger("autotts.mcp").warning("%s is readable by other users; chmod 600 it", path)
    token = path.read_text().strip()
    if len(token) < 16:
        raise AutoTTSError(f"{path}: the token is shorter than 16 characters; put a long random string in it "
                           "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


@click.command("heldout")
@click.argument("study_folder", metavar="STUDY")
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option("--top", default=1, show_default=True, type=click.IntRange(1, 50),
              help="Without RUN_IDs: evaluate this many of the best runs on the leaderboard.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def heldout_command(study_folder: str, run_ids: tuple[str, ...], top: int, as_json: bool, no_progress: bool) -> None:
    """Evaluate candidates on the study's held-out environments (the agent never can).

    RUN_IDs (e.g. r0007) default to the best run(s) of the leaderboard. Results are recorded in the run store under
    the held-out split, where the MCP tools never read them.
    """
    from core.discovery.records import objective_from_dict
    from core.discovery.service import DiscoveryService
    from core.discovery.store import parse_run_id
    from core.objective import render_objective

    study = Study.open(study_folder)
    svc = DiscoveryService(study)
    if run_ids:
        ids = [parse_run_id(r) for r in run_ids]
    else:
        ranked = svc.leaderboard(include_failed=False)[0].ranked  # by the objective; probes and quick runs never
        ids = [parse_run_id(e.run_id) for e in ranked[:top]]
        if not ids:
            raise AutoTTSError("no ranked run in this study yet (full β grid, every search environment, all seeds); "
                               "evaluate candidates first (autotts mcp), or name RUN_IDs")
    show = not no_progress and not as_json
    reports: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for rid in ids:
        if show:
            click.echo(f"evaluating r{rid:04d} on {len(study.heldout)} held-out environment(s)…", err=True)
        try:  # one candidate's failure must not hide the others' results
            reports.append(svc.evaluate_heldout(rid))
        except AutoTTSError as e:
            failed.append({"run_id": f"r{rid:04d}", "error": str(e)})
            if show:
                click.echo(f"r{rid:04d}: {e}", err=True)
    if as_json:
        click.echo(orjson.dumps(reports + failed, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        if failed:
            sys.exit(1)
        return
    for rep in reports:
        click.echo(f"{rep['run_id']} '{rep['name']}' on {len(rep['envs'])} held-out environment(s): "
                   f"{', '.join(rep['envs'])}")
        if rep.get("objective"):
            obj = objective_from_dict(rep["objective"])
            click.echo("  objective on the held-out average (against the held-out SC@64 and CMC):")
            click.echo("\n".join("    " + line for line in render_objective(obj).splitlines()))
        click.echo("  β      acc%      tokens   vs the held-out baselines' frontier at these tokens")
        for p in rep["per_beta"]:
            gap = "" if p["accuracy_gap"] is None else f"{p['accuracy_gap']:+.2f} pts"
            click.echo(f"  {p['beta']:<5g} {p['accuracy']:6.2f} {p['avg_tokens']:11,.0f}   "
                       f"{'dominated' if p['dominated'] else 'undominated'} {gap}")
        click.echo("  baselines: " + " · ".join(f"{b['label']} {b['accuracy']:.2f}%/{b['avg_tokens']:,.0f}"
                                                for b in rep["baselines"]))
    for f in failed:
        click.echo(f"{f['run_id']}: FAILED — {f['error']}")
    if reports:
        click.echo("Held-out cells ran in sandbox workers; search runs recorded from now on are flagged as recorded "
                   "after a held-out evaluation.")
    if failed:
        sys.exit(1)
