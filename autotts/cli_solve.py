"""`autotts solve`: run any controller (built-in or a controller file) against a live model."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from autotts.collect_options import backend_options, protocol_options, resolve_backend_kind, server_urls


@click.command("solve")
@click.argument("question", required=False)
@click.option("-m", "--model", default=None,
              help="llama: a .gguf file; openai: the served model's name (default: the first the server lists).")
@click.option("-c", "--controller", default="cmc:beta=0.5", show_default=True, metavar="SPEC",
              help="NAME or NAME:key=value,... (sc, asc, esc, parallel-probe, cmc, one-batch) or path/to/controller.py[:k=v].")
@click.option("--questions", "questions_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL (or a JSON list) of questions: {\"question\": ..., \"gold_answer\": ... (optional)} per line.")
@click.option("--compare", "compare_spec", default=None, metavar="SPEC",
              help="Also run this controller (e.g. sc:n=64) on the same questions and show both side by side.")
@backend_options(parallel_help="Branches the backend holds at once (llama: KV streams; openai: concurrent requests "
                                "per server). A controller keeping more branches running fails with a clear error.")
@click.option("--max-branches", default=128, show_default=True, type=click.IntRange(1),
              help="Fresh branches each question offers (the paper's replay pools hold 128).")
@protocol_options()
@click.option("--record", "record_path", default=None, type=click.Path(dir_okay=False),
              help="Write the controller's runs as a replay environment here (project format, .json or .json.gz); "
                   "`autotts eval FILE -c SPEC --seeds 1` replays them to the same answers and tokens.")
def solve_command(question: str | None, model: str | None, controller: str, questions_path: str | None,
                  compare_spec: str | None, backend: str | None, base_urls: tuple[str, ...], servers_file: str | None,
                  api_key: str | None, parallel: int, n_gpu_layers: int, threads: int | None, kv_type: str,
                  kv_budget: float | None, request_timeout: float, retries: int, max_branches: int, interval: int,
                  max_tokens: int, answer_tokens: int, probe_tokens: int, probe_style: str, temperature: float,
                  top_p: float, top_k: int, min_p: float, seed: int, instruction: str | None, limit: int | None,
                  as_json: bool, record_path: str | None) -> None:
    """Solve QUESTION (or every question of --questions) live with a controller, branch by branch, and print the
    answer, tokens spent, branches used and wall time.

    The controller drives the model through the same question API as in replay (probe_new, probe_more, full reads,
    and their batch forms), so a controller evaluated with `autotts eval` runs here unchanged. Tokens are charged
    exactly as replay charges them; probe decoding is reported apart (free in the paper's cost).

    \b
    Examples:
      autotts solve -m Qwen3-0.6B-Q8_0.gguf -c cmc:beta=0.5 "Find the remainder when 2^100 is divided by 7."
      autotts solve -m Qwen3-0.6B-Q8_0.gguf --questions aime24.jsonl --compare sc:n=64 --n-gpu-layers -1
      autotts solve -m Qwen3-0.6B-Q8_0.gguf -c my_controller.py:beta=0.5 --questions q.jsonl --record run.json.gz
      autotts solve --base-url http://127.0.0.1:8000 -c parallel-probe "What is 1+1?"
    """
    from core.collect.factory import open_backend
    from core.collect.protocol import DEFAULT_INSTRUCTION, SamplingParams
    from core.collect.questions import QuestionItem, load_questions
    from core.evaluate import resolve_controller
    from core.live import LiveSolver, live_settings, recorded_environment

    if (question is None) == (questions_path is None):
        raise click.UsageError("give either a QUESTION or --questions FILE")
    items = (load_questions(questions_path, limit, require_gold=False) if questions_path
             else [QuestionItem(question or "")])
    _, label = resolve_controller(controller)  # fail fast on a bad spec or controller file
    compare_label = resolve_controller(compare_spec)[1] if compare_spec else None
    settings = live_settings(
        interval=interval, max_tokens=max_tokens, answer_tokens=answer_tokens, probe_tokens=probe_tokens,
        probe_style=probe_style, instruction=DEFAULT_INSTRUCTION if instruction is None else instruction,
        sampling=SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p), seed=seed,
    )
    t0 = time.perf_counter()
    urls = server_urls(base_urls, servers_file)
    backend = resolve_backend_kind(backend, urls)
    bk = open_backend(backend, model, settings, base_urls=urls, api_key=api_key, parallel=parallel,
                      n_gpu_layers=n_gpu_layers, threads=threads, kv_type=kv_type, kv_budget_gb=kv_budget,
                      timeout=request_timeout, retries=retries).backend
    try:
        solver = LiveSolver(bk, settings=settings, max_branches=max_branches, record=record_path is not None)
        baseline = LiveSolver(bk, settings=settings, max_branches=max_branches) if compare_spec else None
        solver.prepare([it.question for it in items])
        load_seconds = time.perf_counter() - t0
        show = not as_json and sys.stderr.isatty()
        results, compared = [], []
        for i, it in enumerate(items):
            if show:
                click.echo(f"[{i + 1}/{len(items)}] {label} …", err=True)
            results.append(solver.solve(it.question, controller, index=i, gold=it.gold_answer))
            if baseline is not None:
                if show:
                    click.echo(f"[{i + 1}/{len(items)}] {compare_label} …", err=True)
                compared.append(baseline.solve(it.question, compare_spec, index=i, gold=it.gold_answer))
        info = bk.info()
    finally:
        bk.close()
    model_name = Path(model).name.removesuffix(".gguf") if backend == "llama" and model else info.get("model", "model")
    recorded = None
    if record_path:
        from importlib.metadata import version

        from core.store import save_environment

        bench = Path(questions_path).name.split(".")[0] if questions_path else "adhoc"
        metadata = {
            "model": model_name, "benchmark": bench, "interval": interval,
            "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p},
            "recorder": {"name": "autotts solve", "autotts": version("autotts"), "controller": label,
                         "settings": settings.to_dict(), "backend": {k: v for k, v in info.items() if k != "model_path"}},
        }
        env = recorded_environment(results, name=f"{model_name}/{bench}", metadata=metadata)
        recorded = str(save_environment(env, record_path))
    doc = {
        "model": model_name, "backend": backend, "load_seconds": round(load_seconds, 3),
        "controller": label, "results": [r.summary() for r in results], "totals": _totals(results),
    }
    if compare_label:
        doc.update(compare=compare_label, compare_results=[r.summary() for r in compared], compare_totals=_totals(compared))
    if recorded:
        doc["record"] = recorded
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_table(doc)


def _totals(results: list[Any]) -> dict[str, Any]:
    scored = [r.correct for r in results if r.correct is not None]
    return {
        "questions": len(results),
        "correct": sum(scored) if scored else None,
        "tokens": sum(r.tokens for r in results),
        "probe_tokens": sum(r.probe_tokens for r in results),
        "branches": sum(r.branches for r in results),
        "seconds": round(sum(r.seconds for r in results), 3),
        "extend_calls": sum(r.extend_calls for r in results),
    }


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    groups = [(doc["controller"], doc["results"], doc["totals"])]
    if "compare" in doc:
        groups.append((doc["compare"], doc["compare_results"], doc["compare_totals"]))
    scored = any(r["gold"] is not None for r in doc["results"])
    table = Table(title=f"Live solve · {doc['model']} · {doc['backend']} (model loaded in {doc['load_seconds']:.1f}s)",
                  title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("question", max_width=40, overflow="ellipsis", no_wrap=True)
    for name, _, _ in groups:
        table.add_column(f"{name}\nanswer", max_width=24, overflow="ellipsis", no_wrap=True)
        if scored:
            table.add_column("ok", justify="center")
        for col in ("tokens", "branches", "seconds"):
            table.add_column(col, justify="right", no_wrap=True)

    def cells(r: dict[str, Any]) -> list[str]:
        out = [str(r["answer"])]
        if scored:
            out.append("" if r["correct"] is None else ("✓" if r["correct"] else "✗"))
        return out + [f"{r['tokens']:,}", str(r["branches"]), f"{r['seconds']:.2f}"]

    for k, r in enumerate(doc["results"]):
        row = [str(r["question_index"]), r["question"].replace("\n", " ")]
        for _, rows, _ in groups:
            row += cells(rows[k])
        table.add_row(*row)
    table.add_section()
    total = ["", "total"]
    for _, _, t in groups:
        total.append("")
        if scored:
            total.append("" if t["correct"] is None else f"{t['correct']}/{t['questions']}")
        total += [f"{t['tokens']:,}", str(t["branches"]), f"{t['seconds']:.2f}"]
    table.add_row(*total)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    console.print(table)
    if "record" in doc:
        console.print(f"recorded → {doc['record']} (replay: autotts eval {doc['record']} -c '{doc['controller']}' --seeds 1)")
