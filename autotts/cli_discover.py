"""`autotts discover`: run controller discovery unattended with an explorer model over the Anthropic Messages API."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import orjson

from core.discovery.study import Study
from core.errors import AutoTTSError


@click.command("discover")
@click.argument("study_folder", metavar="STUDY")
@click.option("--model", required=True, help="Explorer model id, e.g. claude-sonnet-4-6 (any model the endpoint serves).")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Rounds to run in this session (re-running with more continues the same session).")
@click.option("--budget-usd", type=click.FloatRange(0, min_open=True), default=None, metavar="X",
              help="Stop before a call could take the session's spend past X dollars (estimated conservatively).")
@click.option("--base-url", default=None, metavar="URL",
              help="Messages API endpoint (default $ANTHROPIC_BASE_URL, else https://api.anthropic.com).")
@click.option("--prices", "prices_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help='JSON prices in USD per million tokens, merged over the built-in table: '
                   '{"model": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}.')
@click.option("--max-tokens", default=8192, show_default=True, type=click.IntRange(256, 128_000),
              help="Output cap of each explorer reply.")
@click.option("--expected-reply-tokens", type=click.IntRange(1), default=None, metavar="N",
              help="Reply size --budget-usd reserves before each call (default: the longest reply so far).")
@click.option("--explorers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Parallel explorer conversations per round, sharing the study and the round's brief.")
@click.option("--brief-chars", default=16_000, show_default=True, type=click.IntRange(2_000, 200_000),
              help="Character budget of each round's brief.")
@click.option("--max-turns-per-round", default=12, show_default=True, type=click.IntRange(1, 200),
              help="Explorer replies (API calls) per round.")
@click.option("--max-tool-calls-per-round", default=16, show_default=True, type=click.IntRange(0, 500),
              help="Tool calls (run_controller, inspect_trace, …) per round.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(1, 20),
              help="Best candidates whose code, curve and per-environment weaknesses each round's brief shows.")
@click.option("--select", "select_mode", default="objective", show_default=True,
              type=click.Choice(["objective", "accuracy"]),
              help="objective: fewest tokens to reach SC@64's accuracy, differences within the seeds' standard "
                   "error tied and won by the cheaper; accuracy: highest search accuracy at its best β (the "
                   "paper's rule).")
@click.option("--new", "new_session", is_flag=True, help="Start a new session instead of continuing the latest.")
@click.option("--no-heldout", is_flag=True, help="Skip the held-out evaluation of the selected controller.")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds before one API request times out (then it is retried).")
@click.option("--max-retries", default=8, show_default=True, type=click.IntRange(0, 100),
              help="Retries of a failing API call (429, 5xx, 529 overloaded, timeouts) before giving up.")
@click.option("--retry-base-s", default=2.0, show_default=True, type=click.FloatRange(0),
              help="First retry backoff in seconds; it doubles per retry (with jitter) up to 60 s.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Log API retries and tool calls to stderr.")
@click.pass_context
def discover_command(ctx: click.Context, study_folder: str, model: str, rounds: int, budget_usd: float | None,
                     base_url: str | None, prices_file: str | None, max_tokens: int,
                     expected_reply_tokens: int | None, explorers: int, brief_chars: int, max_turns_per_round: int,
                     max_tool_calls_per_round: int, top_k: int, select_mode: str,
                     new_session: bool, no_heldout: bool, timeout: float, max_retries: int, retry_base_s: float,
                     as_json: bool, quiet: bool, verbose: bool) -> None:
    """Discover a controller for STUDY unattended: ROUNDS rounds of propose → evaluate → inspect traces, then select
    the best, evaluate it on the held-out environments and print a Table-1-style report with the cost.

    \b
    The explorer uses the same tools as `autotts mcp`. Every API call and every completed round is recorded in
    the study's run store; after a crash or Ctrl-C, run the same command again to continue.
    \b
    Examples:
      export ANTHROPIC_API_KEY=sk-ant-...
      autotts discover ./autotts-study --model claude-sonnet-4-6 --rounds 5 --budget-usd 10
      autotts discover ./autotts-study --model my-model --base-url http://localhost:8080 --prices prices.json
    """
    _configure_logging(verbose)
    from core.discovery.service import DiscoveryService
    from mcp_server.discover.client import Explorer, RetryPolicy
    from mcp_server.discover.loop import DiscoverOptions, DiscoveryLoop
    from mcp_server.discover.pricing import PriceTable
    from mcp_server.discover.report import build_report, render_report

    def echo(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    study = Study.open(study_folder)
    prices = PriceTable.load(prices_file)
    explorer = Explorer(model, base_url=base_url, timeout_s=timeout,
                        retry=RetryPolicy(max_retries=max_retries, base_s=retry_base_s), on_retry=echo)
    if prices.price(model) is None:
        echo(f"note: no price for model '{model}'; its cost is counted as $0 (pass --prices FILE)")
    options = DiscoverOptions(model=model, rounds=rounds, budget_usd=budget_usd, max_tokens=max_tokens,
                              expected_reply_tokens=expected_reply_tokens, max_turns=max_turns_per_round,
                              max_tool_calls=max_tool_calls_per_round, top_k=top_k, explorers=explorers,
                              select=select_mode, brief_chars=brief_chars, new_session=new_session)
    with _study_lock(study.folder):
        svc = DiscoveryService(study)
        loop = DiscoveryLoop(svc, explorer, prices, options, echo=echo)
        try:
            outcome = loop.run()
        except KeyboardInterrupt:
            latest = loop.log.latest_session()
            sid = latest.id if latest is not None else "?"
            done = loop.log.last_round(sid) if sid != "?" else 0
            click.echo(f"\ninterrupted: session {sid} has {done} completed round(s) saved; run the same command "
                       "again to continue", err=True)
            ctx.exit(130)
        if outcome.note:
            echo(outcome.note)
        session = loop.log.session(outcome.session)
        stored = session.report if session is not None else None
        sel = (stored or {}).get("selection") or {}
        reuse = (outcome.status == "nothing-to-do" and stored is not None
                 and sel.get("mode", select_mode) == select_mode
                 and (no_heldout or stored.get("heldout") is not None or not study.heldout))
        if reuse:
            doc = stored
        else:
            if study.heldout and not no_heldout and any(r.candidate for r in loop.log.rounds(outcome.session)):
                echo(f"selecting the final controller and evaluating it on {len(study.heldout)} held-out "
                     "environment(s)…")
            try:
                doc = build_report(svc, outcome.session, mode=select_mode, heldout=not no_heldout)
            except KeyboardInterrupt:
                click.echo("\ninterrupted while reporting: every round is saved; run the same command again for "
                           "the report", err=True)
                ctx.exit(130)
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the tables into 80 columns
        console = Console(width=max(console.width, 150))
    render_report(doc, console)


def _configure_logging(verbose: bool) -> None:
    # Configure the root logger first: the MCP server's own basicConfig then leaves it alone.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("autotts.discover", "autotts.mcp"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@contextmanager
def _study_lock(folder: Path) -> Iterator[None]:
    """One `autotts discover` per study at a time (an advisory lock on STUDY/.discover.lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = folder / ".discover.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise AutoTTSError(f"another `autotts discover` (pid {holder}) is running on {folder}; wait for it or "
                               "stop it (Ctrl-C) first") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
