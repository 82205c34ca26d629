"""The `autotts` command line: thin click commands over `core` (and, lazily, the MCP server and TUI)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from core.errors import AutoTTSError


class AutoTTSGroup(click.Group):
    """Prints AutoTTSError messages as one line (exit 2) instead of a traceback, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AutoTTSError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=AutoTTSGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="autotts")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """autotts: discover how an LLM should spend its test-time compute, in an exact offline replay environment."""
    ctx.ensure_object(dict)["debug"] = debug or bool(os.environ.get("AUTOTTS_DEBUG"))


def progress_bar(total: int, label: str, enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A rich progress bar on stderr: (advance(n), close()). Disabled when stderr is not a terminal."""
    if not enabled:
        return (lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    progress.start()
    task = progress.add_task(label, total=total)
    return (lambda n: progress.advance(task, n)), progress.stop


def default_environment_path() -> Path:
    from replay_data import DEMO_PATH

    return DEMO_PATH


# Subcommands live in their own modules and register themselves on `main`.
from autotts import cli_collect, cli_discover, cli_eval, cli_solve, cli_study, cli_tui  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
