"""The `autotts` command line: thin click commands over `core` (and, lazily, the MCP server and TUI)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import click

from core.errors import AutoTTSError


class Subcommand(NamedTuple):
    """Where a subcommand lives, and the first sentence of its help (what `autotts --help` lists)."""

    module: str
    attribute: str
    summary: str


# Every subcommand, registered here explicitly; its module is imported only when the command is used, so
# `autotts --help` and `autotts eval` load nothing they do not need. tests/test_cli.py checks that each summary is
# the first sentence of the command's own help and that every command the modules define is listed.
SUBCOMMANDS: dict[str, Subcommand] = {
    "collect": Subcommand("autotts.cli_collect", "collect_command",
                          "Sample BRANCHES reasoning branches per question of QUESTIONS (JSONL: question, gold_answer) "
                          "with a Qwen3 model, probing each branch every INTERVAL tokens, into the collection folder "
                          "OUT."),
    "discover": Subcommand("autotts.cli_discover", "discover_command",
                           "Discover a controller for STUDY unattended: ROUNDS rounds of propose → evaluate → inspect "
                           "traces, then select the best, evaluate it on the held-out environments and print a "
                           "Table-1-style report with the cost."),
    "eval": Subcommand("autotts.cli_eval", "eval_command",
                       "Evaluate controllers on replay environments (files or folders; default: the bundled "
                       "synthetic demo)."),
    "export": Subcommand("autotts.cli_collect", "export_command",
                         "Write the replay environment STORE (a store file or a collection folder) to DEST in another "
                         "format."),
    "heldout": Subcommand("autotts.cli_study", "heldout_command",
                          "Evaluate candidates on the study's held-out environments (the agent never can)."),
    "mcp": Subcommand("autotts.cli_study", "mcp_command",
                      "Serve the discovery tools over MCP (stdio by default) for STUDY, creating the default study if "
                      "absent."),
    "plot": Subcommand("autotts.cli_tui", "plot_command",
                       "Write the scaling-curve figure (accuracy vs tokens, log x; the paper's Figures 3/4) as PNG, "
                       "SVG or PDF."),
    "solve": Subcommand("autotts.cli_solve", "solve_command",
                        "Solve QUESTION (or every question of --questions) live with a controller, branch by branch, "
                        "and print the answer, tokens spent, branches used and wall time."),
    "study": Subcommand("autotts.cli_study", "study_group",
                        "Create and inspect discovery studies (a folder with study.json and the runs.sqlite run "
                        "store)."),
    "tui": Subcommand("autotts.cli_tui", "tui_command",
                      "Watch a discovery study live: leaderboard, scaling plot, candidate source and diffs, episode "
                      "traces."),
}


class AutoTTSGroup(click.Group):
    """The `autotts` group: subcommands from `SUBCOMMANDS`, loaded on first use; AutoTTSError messages print as
    one line (exit 2) instead of a traceback, unless --debug."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(SUBCOMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in SUBCOMMANDS:
            entry = SUBCOMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(entry.module), entry.attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the summaries, without importing any subcommand module."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                if loaded.hidden:
                    continue
                rows.append((name, loaded.get_short_help_str(limit)))
            else:
                rows.append((name, click.Command(name, help=SUBCOMMANDS[name].summary).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


_exit_without_teardown = False


def exit_without_teardown() -> None:
    """Let `run` end this process without the interpreter's teardown, once the command is done.

    A command that loaded numba (`autotts eval`) would otherwise spend about a quarter of a second after its
    output freeing the compiler's objects. Only for commands that leave nothing behind for finalizers: their
    files are closed and no threads or servers are left running; atexit handlers still run."""
    global _exit_without_teardown
    _exit_without_teardown = True


def run() -> None:
    """The console entry point (`autotts`, `python -m autotts`): `main`, then the exit the command asked for."""
    try:
        main()
    except SystemExit as e:
        if not _exit_without_teardown:
            raise
        code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):  # what the interpreter does with sys.exit("message")
            print(code, file=sys.stderr)
            code = 1
        import atexit

        atexit._run_exitfuncs()  # logging.shutdown and the like, as a normal exit would
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
