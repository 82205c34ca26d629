"""`autotts tui` (watch a study live) and `autotts plot` (its scaling-curve figure, for a paper)."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

import click
import orjson

from core.errors import AutoTTSError


def _default_study() -> str:
    """$AUTOTTS_STUDY, else ./autotts-study (as `autotts mcp` and `autotts study init` use)."""
    from core.discovery.study import DEFAULT_FOLDER

    return os.environ.get("AUTOTTS_STUDY", DEFAULT_FOLDER)


@click.command("tui")
@click.argument("study", required=False, type=click.Path(file_okay=False))
@click.option("--theme", type=click.Choice(["dark", "light"]), default=lambda: os.environ.get("AUTOTTS_THEME", "dark"),
              show_default="dark, or $AUTOTTS_THEME", help="Colour theme (ctrl+t switches while running).")
@click.option("--poll", "poll_interval", default=0.5, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds between reads of the run store.")
@click.option("--no-baselines", is_flag=True, help="Do not compute the baseline curves for the plot.")
@click.option("--utc", is_flag=True, help="Show times in UTC instead of the local time zone.")
def tui_command(study: str | None, theme: str, poll_interval: float, no_baselines: bool, utc: bool) -> None:
    """Watch a discovery study live: leaderboard, scaling plot, candidate source and diffs, episode traces.

    STUDY is the study folder (default: $AUTOTTS_STUDY or ./autotts-study). The run store is opened
    read-only; keep this open in a second terminal while an agent works. Press ? for keys, q to quit.
    """
    try:
        from autotts_tui.app import make_app
    except ImportError as e:  # pragma: no cover - textual is a dependency
        raise AutoTTSError(f"autotts tui needs Textual ({e}); install it with: pip install 'textual==8.2.8'") from e
    app = make_app(study or _default_study(), poll_interval=poll_interval, theme=theme, baselines=not no_baselines,
                   tz=_dt.UTC if utc else None)
    app.run()


@click.command("plot")
@click.argument("source", required=False)
@click.option("-o", "--output", default="scaling.png", show_default=True, type=click.Path(dir_okay=False),
              help="Figure file; the format follows the suffix: .png, .svg or .pdf.")
@click.option("--env", "env", default=None, metavar="NAME", help="Draw only this environment (default: one panel each).")
@click.option("--mean", is_flag=True, help="One panel: the mean over environments of accuracy and tokens.")
@click.option("-c", "--candidate", "candidates", multiple=True, metavar="RUN",
              help="Candidate run id to draw (r0007), repeatable; studies only. Default: the --top best.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(0, 20),
              help="How many of the best candidates to draw when none is named.")
@click.option("--no-baselines", is_flag=True, help="Studies only: leave out the baseline curves.")
@click.option("--no-frontier", is_flag=True, help="Leave out the Pareto frontier.")
@click.option("--title", default=None, help="Figure title.")
@click.option("--dpi", default=200, show_default=True, type=click.IntRange(50, 1200), help="Resolution of PNG output.")
@click.option("--size", default=None, metavar="WxH", help="Figure size in inches, e.g. 7x4.5.")
def plot_command(source: str | None, output: str, env: str | None, mean: bool, candidates: tuple[str, ...], top: int,
                 no_baselines: bool, no_frontier: bool, title: str | None, dpi: int, size: str | None) -> None:
    """Write the scaling-curve figure (accuracy vs tokens, log x; the paper's Figures 3/4) as PNG, SVG or PDF.

    SOURCE is a study folder (candidates over β, baselines swept over their budget knob on the study's search
    environments and seeds) or a file of `autotts eval --json` output ('-' reads stdin); default: the study
    in $AUTOTTS_STUDY or ./autotts-study.

    \b
    Examples:
      autotts plot my-study -o scaling.png
      autotts eval ../data/Qwen3-8B -c sc:n=1,4,16,64 -c cmc:beta=0,0.5,1 --json > eval.json
      autotts plot eval.json -o fig3.svg --mean
    """
    from autotts_tui.figure import (
        FORMATS,
        build_figure,
        figure_data_from_eval_json,
        figure_data_from_study,
        save_figure,
    )

    if Path(output).suffix.lower() not in FORMATS:
        raise click.BadParameter(f"'{output}' must end in one of {', '.join(FORMATS)}", param_hint="--output")
    fig_size = None
    if size:
        try:
            w, h = (float(x) for x in size.lower().split("x"))
            fig_size = (w, h)
        except ValueError:
            raise click.BadParameter(f"'{size}' is not WxH in inches, e.g. 7x4.5", param_hint="--size") from None
    src = source or _default_study()
    try:
        if src == "-" or Path(src).is_file():
            raw = sys.stdin.buffer.read() if src == "-" else Path(src).read_bytes()
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise AutoTTSError(f"{src}: not JSON ({e}); pass a study folder or `autotts eval --json` output") \
                    from None
            if candidates or no_baselines:
                raise click.UsageError("--candidate and --no-baselines apply to studies, not to eval output")
            data = figure_data_from_eval_json(doc, env=env, mean=mean)
        else:
            data = figure_data_from_study(src, candidates=candidates, top=top, env=env, mean=mean,
                                          baselines=not no_baselines)
    except (KeyError, ValueError) as e:
        raise AutoTTSError(str(e).strip("'\"")) from None
    fig = build_figure(data, title=title, show_frontier=not no_frontier, size=fig_size)
    path = save_figure(fig, output, dpi=dpi)
    n_curves = sum(len(p.curves) for p in data.panels)
    click.echo(f"wrote {path} ({len(data.panels)} panel{'s' if len(data.panels) != 1 else ''}, {n_curves} curves)")
