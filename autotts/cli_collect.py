"""`autotts collect` (build a replay environment from a local Qwen3 model) and `autotts export` (paper format)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
import orjson

BACKENDS = ("llama", "openai")


def _progress_display(enabled: bool) -> tuple[Any, Any]:
    """(callback(CollectProgress), close()) showing questions, branches, tokens/s and ETA on stderr with rich."""
    if not enabled:
        return None, (lambda: None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]collect"), BarColumn(), MofNCompleteColumn(), TextColumn("branches"),
        TextColumn("· questions {task.fields[q]}"), TextColumn("· {task.fields[rate]} tok/s"),
        TextColumn("· {task.fields[active]} open"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )
    task = None

    def update(p: Any) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("collect", total=p.total, completed=p.done, q="", rate="", active=0)
        bar.update(task, completed=p.done, q=f"{p.questions_done}/{p.questions_total}",
                   rate=f"{p.tokens_per_second:,.0f}", active=p.active)

    return update, bar.stop


def _cached_sha256(model: Path, folder: Path) -> str:
    """The model's sha256, reused from the collection's manifest when the file's size and mtime are unchanged."""
    from core.collect.writer import LOG_NAME, file_sha256, read_log

    st = model.stat()
    log = folder / LOG_NAME
    if log.is_file() and log.stat().st_size:
        try:
            manifest, _ = read_log(log)
            stat_then = manifest.get("session", {}).get("model_stat")
            if stat_then == [st.st_size, st.st_mtime_ns] and manifest.get("model_sha256"):
                return manifest["model_sha256"]
        except Exception:  # noqa: BLE001 - a bad log is reported later, by open_log
            pass
    return file_sha256(model)


@click.command("collect")
@click.argument("model")
@click.argument("questions", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS), default="llama", show_default=True,
              help="llama: llama.cpp in this process (MODEL = a .gguf file, or a Hugging Face repo with --hf-file); "
                   "openai: an OpenAI-compatible server (MODEL = its model name, 'auto' = the first it lists).")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True,
              help="Server URL for --backend openai (vLLM, SGLang, llama-server, llama-cpp-python's server).")
@click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="Bearer token for --backend openai [env OPENAI_API_KEY].")
@click.option("--hf-file", default=None, metavar="FILENAME",
              help="Treat MODEL as a Hugging Face repo id and fetch this GGUF file from it (needs network and huggingface-hub).")
@click.option("--branches", default=128, show_default=True, type=click.IntRange(1), help="Branches per question.")
@click.option("--interval", default=500, show_default=True, type=click.IntRange(1), help="Probe interval Δ in tokens.")
@click.option("--max-tokens", default=40_000, show_default=True, type=click.IntRange(1),
              help="Thinking budget per branch; a branch still thinking then gets </think> forced.")
@click.option("--answer-tokens", default=1_500, show_default=True, type=click.IntRange(1),
              help="Most tokens after </think> (sampled or forced).")
@click.option("--probe-tokens", default=48, show_default=True, type=click.IntRange(1),
              help="Greedy tokens a probe may use before its \\boxed{ must close (else the probe answer is ERR).")
@click.option("--probe-style", type=click.Choice(["boxed", "dynasor"]), default="boxed", show_default=True,
              help="boxed: close the thinking and open \\boxed{; dynasor: Dynasor's in-thought suffix.")
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0),
              help="Sampling temperature (the paper's data used 0.7; Qwen's card suggests 0.6).")
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling.")
@click.option("--top-k", default=20, show_default=True, type=click.IntRange(1, 256), help="Top-k sampling.")
@click.option("--min-p", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Min-p sampling.")
@click.option("--seed", default=0, show_default=True, type=int, help="Base seed; each branch's seed derives from (seed, question, branch).")
@click.option("--instruction", default=None, help="Text appended to each question (default: Qwen's 'Please reason step by step…').")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N questions.")
@click.option("--parallel", default=32, show_default=True, type=click.IntRange(1, 255),
              help="Branches decoded together (llama: batch width; openai: concurrent requests).")
@click.option("--n-gpu-layers", default=0, show_default=True, type=int, help="Layers offloaded to the GPU (-1: all).")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for llama.cpp (default: all available).")
@click.option("--kv-unified", is_flag=True,
              help="One shared KV pool (prompt shared without copies) instead of one stream per branch; results may "
                   "then differ in the last bits with batch composition, so a resumed run may not match exactly.")
@click.option("--kv-type", type=click.Choice(["f16", "q8_0"]), default="f16", show_default=True,
              help="KV-cache precision; q8_0 halves its memory.")
@click.option("--kv-budget", default=None, type=click.FloatRange(0, min_open=True), metavar="GB",
              help="Cap on KV-cache memory; --parallel is lowered to fit.")
@click.option("--model-name", default=None, help="Model name recorded in the store (default: the file name).")
@click.option("--benchmark", default=None, help="Benchmark name recorded in the store (default: the questions file name).")
@click.option("--export-paper", "export_paper_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the finished store in the paper's JSON format here (metadata in <name>.meta.json).")
@click.option("--keep-text", is_flag=True, help="Keep every branch's full text in the log (large).")
@click.option("--max-minutes", default=None, type=click.FloatRange(0, min_open=True),
              help="Stop after this long; rerun the same command to resume.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def collect_command(model: str, questions: str, out: str, backend: str, base_url: str, api_key: str | None,
                    hf_file: str | None, branches: int, interval: int, max_tokens: int, answer_tokens: int,
                    probe_tokens: int, probe_style: str, temperature: float, top_p: float, top_k: int, min_p: float,
                    seed: int, instruction: str | None, limit: int | None, parallel: int, n_gpu_layers: int,
                    threads: int | None, kv_unified: bool, kv_type: str, kv_budget: float | None,
                    model_name: str | None, benchmark: str | None, export_paper_path: str | None, keep_text: bool,
                    max_minutes: float | None, as_json: bool, no_progress: bool) -> None:
    """Sample BRANCHES reasoning branches per question of QUESTIONS (JSONL: question, gold_answer) with a Qwen3
    model, probing each branch every INTERVAL tokens, into the collection folder OUT.

    Branches are logged to OUT/branches.jsonl as they finish; rerunning the same command resumes. When every
    branch is in, the replay store OUT/store.json is written (evaluate it with `autotts eval OUT/store.json`).

    \b
    Examples:
      autotts collect Qwen3-0.6B-Q8_0.gguf aime24.jsonl runs/aime24 --branches 16 --parallel 16
      autotts collect Qwen3-0.6B-Q8_0.gguf aime24.jsonl runs/aime24 --n-gpu-layers -1 --parallel 64
      autotts collect Qwen/Qwen3-0.6B-GGUF aime24.jsonl runs/aime24 --hf-file Qwen3-0.6B-Q8_0.gguf
      autotts collect auto aime24.jsonl runs/aime24 --backend openai --base-url http://gpu-box:8000
    """
    from core.collect import CollectSettings, SamplingParams, collect, load_questions
    from core.collect.protocol import DEFAULT_INSTRUCTION
    from core.collect.writer import export_paper

    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    settings = CollectSettings(
        branches=branches, interval=interval, max_tokens=max_tokens, answer_tokens=answer_tokens,
        probe_tokens=probe_tokens, probe_style=probe_style,
        instruction=DEFAULT_INSTRUCTION if instruction is None else instruction, sampling=sampling, seed=seed,
    )
    items = load_questions(questions, limit)
    folder = Path(out)
    session: dict[str, Any] = {"parallel": parallel, "n_gpu_layers": n_gpu_layers, "threads": threads, "argv": sys.argv[1:]}
    if backend == "llama":
        from core.collect.engine import LlamaEngine

        kwargs = dict(parallel=parallel, branch_tokens=settings.branch_budget(), n_gpu_layers=n_gpu_layers,
                      n_threads=threads, kv_unified=kv_unified, kv_type=kv_type, kv_budget_gb=kv_budget, sampling=sampling)
        engine = LlamaEngine.from_pretrained(model, hf_file, **kwargs) if hf_file else LlamaEngine(model, **kwargs)
        model_path = Path(engine.model_path)
        sha = _cached_sha256(model_path, folder)
        st = model_path.stat()
        session["model_stat"] = [st.st_size, st.st_mtime_ns]
        session["model_path"] = str(model_path)
        info = engine.info()
        identity = {"model_sha256": sha, "backend_kind": "llama.cpp", "results_affecting": {"kv_type": kv_type}}
        name = model_name or model_path.name.removesuffix(".gguf")
        backend_meta = {"backend": "llama.cpp", "model_file": model_path.name, "model_sha256": sha,
                        "model_desc": info.get("model_desc"), "llama_cpp_python": info.get("llama_cpp_python"),
                        "kv_type": kv_type}
        bk: Any = engine
    else:
        from core.collect.openai_backend import OpenAIBackend

        bk = OpenAIBackend(base_url, model=None if model == "auto" else model, parallel=parallel, api_key=api_key,
                           sampling=sampling)
        identity = {"model_sha256": None, "backend_kind": f"openai:{bk.model}", "results_affecting": {}}
        name = model_name or bk.model
        backend_meta = {"backend": "openai", "served_model": bk.model}
    from importlib.metadata import version

    store_metadata = {
        "model": name,
        "benchmark": benchmark or Path(questions).name.split(".")[0],
        "interval": interval,
        "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                     "order": "temperature, top-k, top-p, min-p"},
        "collector": {"name": "autotts collect", "autotts": version("autotts"), "settings": settings.to_dict(), **backend_meta},
        "synthetic": False,
    }
    show = not no_progress and sys.stderr.isatty()
    update, close_bar = _progress_display(show)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a polite kill stops as cleanly as Ctrl-C
    try:
        result = collect(bk, items, settings, folder, identity=identity, store_metadata=store_metadata, session=session,
                         progress=update, keep_text=keep_text, max_seconds=max_minutes * 60 if max_minutes else None)
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
    }
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    elif result.store_path is not None:
        click.echo(f"Collected {result.branches_total} branches ({result.tokens:,} new tokens, "
                   f"{summary['tokens_per_second'] or 0:,.0f} tok/s) → {result.store_path}"
                   + (f"; paper format → {paper}" if paper else ""))
    else:
        click.echo(f"Stopped with {result.branches_done} of {result.branches_total} branches in {folder}; "
                   "rerun the same command to resume.")


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

