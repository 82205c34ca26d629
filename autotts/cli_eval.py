"""`autotts eval`: score controllers on replay environments under the paper's protocol."""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

import click
import orjson

from autotts.cli import default_environment_path, exit_without_teardown, progress_bar
from core.controllers import ControllerSpec, parse_spec
from core.errors import AutoTTSError
from core.evaluate import EvalResult, evaluate
from core.progress import Progress
from core.specs import format_spec
from core.stats import Point, seed_spread, token_saving
from core.store import expand_paths, load_environment

DEFAULT_SPECS = ("sc:n=64", "asc", "esc", "parallel-probe", "cmc:beta=0.5", "cmc:beta=1")


@click.command("eval")
@click.argument("envs", nargs=-1, metavar="[ENV]...")
@click.option("-c", "--controller", "controllers", multiple=True, metavar="SPEC",
              help="NAME or NAME:key=value,... (sc, asc, esc, parallel-probe, cmc, one-batch, or path/to/file.py); "
                   "a value list sweeps, e.g. cmc:beta=0,0.5,1. Repeatable. Default: the Table 1 set.")
@click.option("--seeds", default=100, show_default=True, type=click.IntRange(1, 100000),
              help="Number of seeded shuffles (seeds 0..N-1); the paper uses 100.")
@click.option("--probe-cost", default=0, show_default=True, type=click.IntRange(0),
              help="Tokens charged per PROBE action (κ) for controllers using the action API.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (rows per env × controller setting).")
@click.option("--episodes", "episodes_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write every episode (seed, question, answer, correct, tokens) as JSON lines to this file.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def eval_command(envs: tuple[str, ...], controllers: tuple[str, ...], seeds: int, probe_cost: int, as_json: bool,
                 episodes_path: str | None, no_progress: bool) -> None:
    """Evaluate controllers on replay environments (files or folders; default: the bundled synthetic demo).

    \b
    Examples:
      autotts eval
      autotts eval ../data/Qwen3-8B -c sc:n=64 -c cmc:beta=0,0.5,1 --json
      autotts eval env.json -c my_controller.py:beta=0.5
    """
    exit_without_teardown()  # nothing is left open when the command returns
    specs: list[ControllerSpec] = [s for text in (controllers or DEFAULT_SPECS) for s in parse_spec(text)]
    for spec in specs:  # fail fast on a bad controller file before loading any data
        spec.build()
    paths = expand_paths(envs) if envs else [default_environment_path()]
    environments = [load_environment(p) for p in paths]
    for env in environments:
        for spec in specs:
            note = spec_fit(spec, env)
            if note:
                click.echo(note, err=True)
    show = not no_progress and sys.stderr.isatty()
    advance, close = progress_bar(len(environments) * len(specs) * seeds, "evaluating", show)
    results: list[EvalResult] = []
    episodes_file = open(episodes_path, "wb") if episodes_path else None  # noqa: SIM115 - closed below
    try:
        for env in environments:
            for spec in specs:
                done = [0]

                def on_progress(p: Progress, done: list[int] = done) -> None:
                    advance(int(p.done) - done[0])
                    done[0] = int(p.done)

                result = evaluate(env, spec, range(seeds), probe_cost=probe_cost, progress=on_progress)
                result.controller = str(spec)
                results.append(result)
                if episodes_file is not None:
                    for row in result.episodes():
                        episodes_file.write(orjson.dumps({"env": env.name, "controller": str(spec), **row}) + b"\n")
    finally:
        close()
        if episodes_file is not None:
            episodes_file.close()
    rows = _rows(results, environments)
    if as_json:
        doc = {"seeds": seeds, "probe_cost": probe_cost,
               "environments": [{"env": e.name, "source": e.source, "synthetic": bool(e.metadata.get("synthetic")),
                                 "questions": e.n_questions} for e in environments],
               "rows": rows}
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_table(rows, environments, seeds)


BRANCH_PARAMS = {"sc": "n", "asc": "max_samples", "esc": "max_samples", "parallel-probe": "num_chains",
                 "cmc": "max_branches", "one-batch": "max_branches"}
"""The argument that says how many branches a built-in controller may use."""


def spec_fit(spec: ControllerSpec, env: Any) -> str | None:
    """Check that `spec` fits `env`'s branch pools. SC@N on fewer than N branches per question would silently be a
    smaller SC, so it is an error naming the fix; a cap above the pool of an adaptive controller is a note (returned)."""
    param = BRANCH_PARAMS.get(spec.name)
    if param is None or not env.n_questions:
        return None
    wanted = getattr(spec.build(), param, None)
    have = int(min(env.n_branches(q) for q in range(env.n_questions)))
    if not isinstance(wanted, int) or wanted <= have:
        return None
    if spec.name == "sc":
        raise AutoTTSError(f"{env.name}: {spec} reads {wanted} branches per question but this environment holds {have} "
                           f"(the fewest of its questions); use -c {format_spec('sc', {'n': have})}, or collect with --branches {wanted}")
    if env.metadata.get("branch_order") == "stored":  # a recorded live run: its pool is what the controller opened
        return None
    return (f"note: {env.name}: {spec} may use up to {wanted} branches but this environment holds {have} per question; "
            f"it runs capped at {have} (pass {format_spec(spec.name, {param: have})} to say so)")


def _rows(results: list[EvalResult], environments: list[Any]) -> list[dict[str, Any]]:
    by_env: dict[str, list[EvalResult]] = defaultdict(list)
    for r in results:
        by_env[r.env].append(r)
    rows = []
    for r in results:
        sc64 = next((x for x in by_env[r.env] if x.controller in ("sc", "sc:n=64")), None)
        spread = seed_spread(r)
        row = {
            "env": r.env, "controller": r.controller, "accuracy": r.accuracy, "avg_tokens": r.avg_tokens,
            "accuracy_std": spread["std"], "accuracy_ci95": [spread["ci95_low"], spread["ci95_high"]],
            "seconds": round(r.seconds, 4),
        }
        if sc64 is not None and r is not sc64:
            saving = token_saving([Point(r.avg_tokens, r.accuracy, r.controller)], Point(sc64.avg_tokens, sc64.accuracy))
            row["baseline"] = sc64.controller
            row["tokens_vs_sc64"] = round(r.avg_tokens / sc64.avg_tokens, 4) if sc64.avg_tokens else None
            row["saving_vs_sc64_at_matched_accuracy"] = None if saving is None else round(saving, 4)
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]], environments: list[Any], seeds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    synthetic = [e.name for e in environments if e.metadata.get("synthetic")]
    title = f"Replay evaluation · {seeds} seeded shuffles"
    if synthetic:
        title += " · SYNTHETIC demo data"
    table = Table(title=title, title_justify="left")
    table.add_column("environment", no_wrap=True)
    table.add_column("controller", no_wrap=True)
    for col in ("accuracy %", "± std", "avg tokens", "tok/SC@64"):
        table.add_column(col, justify="right", no_wrap=True)
    last_env = None
    for row in rows:
        if last_env is not None and row["env"] != last_env:
            table.add_section()
        last_env = row["env"]
        ratio = row.get("tokens_vs_sc64")
        table.add_row(row["env"], row["controller"], f"{row['accuracy']:.2f}", f"{row['accuracy_std']:.2f}",
                      f"{row['avg_tokens']:,.0f}", "" if ratio is None else f"{ratio:.1%}")
    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
        console = Console(width=max(console.width, 140))
    console.print(table)
    if any(row.get("baseline") for row in rows):
        console.print("tok/SC@64: avg tokens over those of sc:n=64 on the same environment (64 branches read per question)")
