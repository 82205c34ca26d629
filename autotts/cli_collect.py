"""`autotts collect` (build a replay environment from a local Qwen3 model) and `autotts export` (paper format)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from autotts.collect_options import backend_options, protocol_options, resolve_backend_kind, server_urls

EXIT_STOPPED = 3
"""Exit code of a collection stopped by --max-minutes before every branch was in (resumable; no store yet)."""


def _progress_display(enabled: bool) -> tuple[Any, Any]:
    """(callback(CollectProgress), close()) on stderr with rich: branches, questions, tokens/s per server and in total, ETA.
    Fits 80 columns (the bar shrinks first); says so while the store is built."""
    if not enabled:
        return None, (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.fields[stage]}"), BarColumn(bar_width=None), MofNCompleteColumn(),
        TextColumn("q {task.fields[q]} · {task.fields[rate]} tok/s · {task.fields[active]} open"),
        TimeRemainingColumn(compact=True), TextColumn("{task.fields[servers]}"),
        console=console, transient=False, expand=False,
    )
    task = None

    def update(p: Any) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("collect", total=p.total, completed=p.done, q="", rate="",
                                active=0, stage="collect", servers="")
        servers = ""
        if len(p.servers) > 1:
            el = p.elapsed or 1.0
            servers = "\n" + "\n".join(
                f"  {s.name[:32]:32} {'DOWN' if s.down else f'{s.tokens / el:,.0f} tok/s'} · {s.branches} done"
                f" · {s.active} open" for s in p.servers)
        stage = "store…" if p.stage != "collecting" else "collect"
        bar.update(task, completed=p.done, q=f"{p.questions_done}/{p.questions_total}",
                   rate=f"{p.tokens_per_second:,.0f}", active=p.active, stage=stage, servers=servers)
        if p.stage != "collecting":
            bar.refresh()

    return update, bar.stop


@click.command("collect")
@click.argument("model", required=False)
@click.argument("questions", type=click.Path(exists=True, dir_okay=False), required=False)
@click.argument("out", type=click.Path(file_okay=False), required=False)
@click.option("--demo", is_flag=True,
              help="A first collection in under a minute on a CPU: builds the tiny random-weight model and collects "
                   "a few questions with the settings it is tuned for, into OUT (default ./autotts-demo); give no "
                   "MODEL or QUESTIONS.")
@backend_options(parallel_help="Branches in flight (llama: the batch width; openai: concurrent requests per server).")
@click.option("--hf-file", default=None, metavar="FILENAME",
              help="Treat MODEL as a Hugging Face repo id and fetch this GGUF file from it (needs network and huggingface-hub).")
@click.option("--token-mode", type=click.Choice(["auto", "ids", "text"]), default="auto", show_default=True,
              help="openai: send and receive token ids where the servers allow it (vLLM, SGLang), else text (recorded).")
@click.option("--branches", default=128, show_default=True, type=click.IntRange(1), help="Branches per question.")
@protocol_options()
@click.option("--kv-unified", is_flag=True,
              help="One shared KV pool (prompt shared without copies) instead of one stream per branch; results may "
                   "then differ in the last bits with batch composition, so a resumed run may not match exactly.")
@click.option("--model-name", default=None, help="Model name recorded in the store (default: the file or served name).")
@click.option("--benchmark", default=None, help="Benchmark name recorded in the store (default: the questions file name).")
@click.option("--export-paper", "export_paper_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the finished store in the paper's JSON format here (metadata in <name>.meta.json).")
@click.option("--keep-text", is_flag=True, help="Keep every branch's full text in the log (large).")
@click.option("--max-minutes", default=None, type=click.FloatRange(0, min_open=True),
              help=f"Stop after this long (exit code {EXIT_STOPPED} if branches are left; rerun the same command to resume).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def collect_command(model: str | None, questions: str | None, out: str | None, demo: bool, backend: str | None,
                    base_urls: tuple[str, ...], servers_file: str | None, api_key: str | None, parallel: int,
                    n_gpu_layers: int, threads: int | None, kv_type: str, kv_budget: float | None,
                    request_timeout: float, retries: int, hf_file: str | None, token_mode: str, branches: int,
                    interval: int, max_tokens: int, answer_tokens: int, probe_tokens: int, probe_style: str,
                    temperature: float, top_p: float, top_k: int, min_p: float, seed: int, instruction: str | None,
                    limit: int | None, as_json: bool, kv_unified: bool, model_name: str | None,
                    benchmark: str | None, export_paper_path: str | None, keep_text: bool, max_minutes: float | None,
                    no_progress: bool) -> None:
    """Sample BRANCHES reasoning branches per question of QUESTIONS (JSONL: question, gold_answer) with a Qwen3
    model, probing each branch every INTERVAL tokens, into the collection folder OUT.

    Branches are logged to OUT/branches.jsonl as they finish; rerunning the same command resumes. When every
    branch is in, the replay store OUT/store.json is written (evaluate it with `autotts eval OUT/store.json`).
    OUT must be new, empty, or a collection folder: anything else in it is refused.

    With several servers (--base-url repeated, or --servers FILE) each runs its own loop; a question's branches
    stay on one server while it has work, idle servers steal, and a server that stops answering is given up and
    its unfinished branches are redone elsewhere. The store's answers and token counts do not depend on which
    server sampled what (over HTTP the signals may differ in their last float32 bits).

    \b
    Exit codes: 0 done (store written), 2 error, 130 interrupted,
                3 stopped by --max-minutes (resumable, no store yet).

    \b
    Examples:
      autotts collect --demo
      autotts collect Qwen3-0.6B-Q8_0.gguf aime24.jsonl runs/aime24 --branches 16 --parallel 16
      autotts collect Qwen3-0.6B-Q8_0.gguf aime24.jsonl runs/aime24 --n-gpu-layers -1 --parallel 64
      autotts collect Qwen/Qwen3-0.6B-GGUF aime24.jsonl runs/aime24 --hf-file Qwen3-0.6B-Q8_0.gguf
      autotts collect auto aime24.jsonl runs/aime24 --base-url http://127.0.0.1:8000 --base-url http://127.0.0.1:8001
    """
    from core.collect import CollectSettings, SamplingParams, collect, load_questions
    from core.collect.factory import context_warning, open_backend
    from core.collect.protocol import DEFAULT_INSTRUCTION
    from core.collect.writer import export_paper

    if demo:
        model, questions, out, demo_over = _demo_setup(model, questions, out)
        ctx = click.get_current_context()
        given = {k for k in demo_over if (src := ctx.get_parameter_source(k)) is not None and src.name != "DEFAULT"}
        current = {"branches": branches, "interval": interval, "max_tokens": max_tokens,
                   "answer_tokens": answer_tokens, "probe_tokens": probe_tokens, "parallel": parallel}
        picked = {k: (current[k] if k in given else v) for k, v in demo_over.items()}  # options given still win
        branches, interval, max_tokens = picked["branches"], picked["interval"], picked["max_tokens"]
        answer_tokens, probe_tokens, parallel = picked["answer_tokens"], picked["probe_tokens"], picked["parallel"]
        threads = threads or 1
    elif questions is None or out is None:
        raise click.UsageError("give MODEL QUESTIONS OUT (or --demo)")
    assert model is not None and questions is not None and out is not None
    urls = server_urls(base_urls, servers_file)
    kind = resolve_backend_kind(backend, urls)
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    settings = CollectSettings(
        branches=branches, interval=interval, max_tokens=max_tokens, answer_tokens=answer_tokens,
        probe_tokens=probe_tokens, probe_style=probe_style,
        instruction=DEFAULT_INSTRUCTION if instruction is None else instruction, sampling=sampling, seed=seed,
    )
    items = load_questions(questions, limit)
    folder = Path(out)
    allowed = _allowed_exports(folder, export_paper_path)
    from core.collect.folder import check_output_folder

    check_output_folder(folder, allowed)  # before loading a model: refuse a folder that is not ours at once
    opened = open_backend(kind, model, settings, base_urls=urls, api_key=api_key, parallel=parallel,
                          n_gpu_layers=n_gpu_layers, threads=threads, kv_type=kv_type, kv_budget_gb=kv_budget,
                          kv_unified=kv_unified, hf_file=hf_file, timeout=request_timeout, retries=retries,
                          token_mode=token_mode, sha_cache=folder)
    bk = opened.backend
    for url, why in getattr(bk, "skipped", ()):
        click.echo(f"warning: {url} does not answer ({why}); collecting without it", err=True)
    session: dict[str, Any] = {"parallel": parallel, "n_gpu_layers": n_gpu_layers, "threads": threads,
                               "argv": sys.argv[1:], **opened.session}
    from importlib.metadata import version

    store_metadata = {
        "model": model_name or opened.model_name,
        "benchmark": benchmark or Path(questions).name.split(".")[0],
        "interval": interval,
        "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                     "order": "temperature, top-k, top-p, min-p"},
        "collector": {"name": "autotts collect", "autotts": version("autotts"), "settings": settings.to_dict(),
                      **opened.metadata},
        "synthetic": False,
    }
    warning = context_warning(opened, settings)
    if warning:
        click.echo(warning, err=True)
    show = not no_progress and sys.stderr.isatty()
    update, close_bar = _progress_display(show)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a polite kill stops as cleanly as Ctrl-C
    try:
        result = collect(bk, items, settings, folder, identity=opened.identity, store_metadata=store_metadata,
                         session=session, progress=update, keep_text=keep_text, allowed_files=allowed,
                         max_seconds=max_minutes * 60 if max_minutes else None)
    except KeyboardInterrupt:
        close_bar()
        from core.collect.writer import LOG_NAME, read_log

        _, records = read_log(folder / LOG_NAME)
        click.echo(f"Interrupted: {len(records)} of {len(items) * branches} branches are saved in {folder}; "
                   "rerun the same command to resume.", err=True)
        sys.exit(130)
    finally:
        close_bar()
        signal.signal(signal.SIGTERM, previous)
        bk.close()
    paper = None
    if result.store_path is not None and export_paper_path:
        paper, _ = export_paper(result.store_path, export_paper_path)
    summary = {
        "folder": str(folder), "store": str(result.store_path) if result.store_path else None,
        "paper_export": str(paper) if paper else None, "branches_done": result.branches_done,
        "branches_total": result.branches_total, "tokens": result.tokens, "seconds": round(result.elapsed, 2),
        "tokens_per_second": round(result.tokens / result.elapsed, 1) if result.elapsed else None,
        "complete": result.store_path is not None,
        "servers": [{"name": s.name, "tokens": s.tokens, "branches": s.branches, "down": s.down,
                     "tokens_per_second": round(s.tokens / result.elapsed, 1) if result.elapsed else None}
                    for s in result.servers],
    }
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    elif result.store_path is not None:
        click.echo(f"Collected {result.branches_total} branches ({result.tokens:,} new tokens, "
                   f"{summary['tokens_per_second'] or 0:,.0f} tok/s) → {result.store_path}"
                   + (f"; paper format → {paper}" if paper else ""))
        for s in result.servers:
            if s.down:
                click.echo(f"  note: {s.name} was given up ({s.down}); the other servers did its branches", err=True)
        if demo:
            click.echo(f"Next: autotts eval {result.store_path} -c sc:n={branches} -c parallel-probe:num_chains={branches} --seeds 10")
    if result.store_path is None:
        click.echo(f"Stopped by --max-minutes with {result.branches_done} of {result.branches_total} branches in "
                   f"{folder} (no store yet); rerun the same command to resume.", err=True)
        sys.exit(EXIT_STOPPED)


def _allowed_exports(folder: Path, export_paper_path: str | None) -> list[str]:
    """The --export-paper files, when they are written inside the collection folder (so a rerun accepts them)."""
    if not export_paper_path:
        return []
    p = Path(export_paper_path)
    try:
        if p.resolve().parent != folder.resolve():
            return []
    except OSError:
        return []
    name = p.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return [p.name, name + ".meta.json"]


def _demo_setup(model: str | None, questions: str | None, out: str | None) -> tuple[str, str, str, dict[str, int]]:
    """For --demo: (model path, questions path, out folder, settings). The tiny model and the demo questions go to
    the user cache ($AUTOTTS_CACHE or ~/.cache/autotts/demo), so OUT holds only the collection."""
    from core.collect.tiny_model import DEMO_QUESTIONS, DEMO_SETTINGS, build_tiny_qwen3

    if questions is not None:
        raise click.UsageError("--demo builds its own model and questions: give at most OUT (e.g. autotts collect --demo runs/demo)")
    out = out or model or "autotts-demo"  # `autotts collect --demo runs/demo`: the one argument is OUT
    cache = Path(os.environ.get("AUTOTTS_CACHE", Path.home() / ".cache" / "autotts")) / "demo"
    cache.mkdir(parents=True, exist_ok=True)
    model_path = cache / "tiny-qwen3.gguf"
    if not model_path.is_file():
        build_tiny_qwen3(model_path)
    qpath = cache / "demo-questions.jsonl"
    qpath.write_bytes(b"".join(orjson.dumps(q) + b"\n" for q in DEMO_QUESTIONS))
    return str(model_path), str(qpath), out, dict(DEMO_SETTINGS)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command("export")
@click.argument("store", type=click.Path(exists=True))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["paper", "project"]), default="paper", show_default=True,
              help="paper: the AutoTTS/Parallel-Probe JSON list (+ DEST's <name>.meta.json); project: the autotts store.")
def export_command(store: str, dest: str, fmt: str) -> None:
    """Write the replay environment STORE (a store file or a collection folder) to DEST in another format."""
    from core.collect.writer import STORE_NAME, export_paper
    from core.store import load_environment, save_environment

    src = Path(store)
    if src.is_dir():
        src = src / STORE_NAME
        if not src.is_file():
            from core.errors import EnvironmentPathError

            raise EnvironmentPathError(f"{store}: no {STORE_NAME} here; is the collection finished? (rerun autotts collect)")
    if fmt == "paper":
        out, meta = export_paper(src, dest)
        click.echo(f"{out} (metadata: {meta})")
    else:
        click.echo(str(save_environment(load_environment(src), dest, format="project")))

