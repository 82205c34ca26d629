"""Collection over several OpenAI-compatible servers (llama-cpp-python's server with the tiny model on loopback
ports): two servers collect one store, byte-identical to a one-server run; a server killed mid-run is given up and
its branches are redone on the other; a collection killed mid-run resumes on a different set of servers to the same
store. Plus the token-id path, against a stand-in server that speaks vLLM's token-id protocol."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("math_verify")

from click.testing import CliRunner  # noqa: E402
from collect_helpers import (  # noqa: E402,F401 - fixtures
    SMALL,
    child_env,
    cli_command,
    openai_server,
    questions_file,
    second_openai_server,
    start_server,
    stop_server,
    tiny_model,
)

from autotts.cli import main  # noqa: E402
from core.collect.writer import LOG_NAME, STORE_NAME, read_log  # noqa: E402

# long enough that a kill lands mid-run (3 questions × 8 branches, up to 192 thinking tokens each)
RUN = {**SMALL, "max_tokens": 192, "branches": 8, "parallel": 4, "retries": 2, "request_timeout": 30}


def args_for(out: Path, questions: Path, urls: list[str], **over: Any) -> list[str]:
    opts = {**RUN, **over}
    args = ["collect", "auto", str(questions), str(out), "--no-progress"]
    for u in urls:
        args += ["--base-url", u]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def run_cli(*args: str) -> dict[str, Any]:
    res = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return orjson.loads(res.stdout)


@pytest.fixture(scope="module")
def one_server_store(tmp_path_factory: pytest.TempPathFactory, openai_server: str, questions_file: Path) -> bytes:  # noqa: F811
    out = tmp_path_factory.mktemp("one") / "run"
    summary = run_cli(*args_for(out, questions_file, [openai_server]))
    assert summary["complete"] and len(summary["servers"]) == 1
    return (out / STORE_NAME).read_bytes()


def assert_same_store(a: bytes, b: bytes) -> None:
    """Equal stores up to the last float32 bits of the signals. Everything the replay reads (answers, token counts,
    probe segmentation, metadata) must be identical; the signals are averages of the log-probabilities the server
    returns, whose last bits depend on its prefix cache, i.e. on which requests it served before (in process, with
    one KV stream per branch, the llama.cpp engine's stores are byte-identical, see test_collect_e2e.py)."""
    if a == b:
        return
    da, db = orjson.loads(a), orjson.loads(b)
    sa = [q.pop("signals") for q in da["questions"]]
    sb = [q.pop("signals") for q in db["questions"]]
    assert da == db
    for x, y in zip(sa, sb, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            for u, v in zip(x[name], y[name], strict=True):
                assert np.allclose(np.array(u, float), np.array(v, float), rtol=1e-5, atol=1e-6, equal_nan=True), name


def _wait_for_records(log: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_bytes().count(b'"type":"branch"') >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"collect ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    pytest.fail("collect produced no records in time")


@pytest.mark.slow
def test_two_servers_collect_the_one_server_store(one_server_store: bytes, openai_server: str,  # noqa: F811
                                                  second_openai_server: str, questions_file: Path,  # noqa: F811
                                                  tmp_path: Path) -> None:
    out = tmp_path / "two"
    summary = run_cli(*args_for(out, questions_file, [openai_server, second_openai_server]))
    assert summary["complete"] and summary["branches_done"] == 24
    assert [s["down"] for s in summary["servers"]] == [None, None]
    assert all(s["branches"] > 0 and s["tokens"] > 0 for s in summary["servers"])  # both did work
    assert_same_store((out / STORE_NAME).read_bytes(), one_server_store)
    manifest, _ = read_log(out / LOG_NAME)
    assert manifest["session"]["servers"] == [openai_server, second_openai_server]
    meta = orjson.loads(one_server_store)["metadata"]
    assert meta["token_exactness"]["mode"] == "text"  # llama-cpp-python's server takes text only: drift measured
    assert meta["token_exactness"]["branches_checked"] == 24
    assert meta["model"] == "tiny-qwen3"  # not the server's path-like model id


@pytest.mark.slow
def test_a_server_killed_mid_run_hands_its_branches_over(one_server_store: bytes, openai_server: str,  # noqa: F811
                                                         tiny_model: Path, questions_file: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    doomed, doomed_url = start_server(tiny_model)
    try:
        out = tmp_path / "killed-server"
        proc = subprocess.Popen(cli_command(*args_for(out, questions_file, [doomed_url, openai_server]), "--json"),
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for_records(out / LOG_NAME, 3, proc)
        doomed.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        stop_server(doomed)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    summary = orjson.loads(stdout)
    assert summary["complete"] and summary["servers"][0]["down"] and not summary["servers"][1]["down"]
    assert_same_store((out / STORE_NAME).read_bytes(), one_server_store)


@pytest.mark.slow
def test_a_killed_collection_resumes_on_other_servers(one_server_store: bytes, openai_server: str,  # noqa: F811
                                                      second_openai_server: str, questions_file: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    out = tmp_path / "killed-collect"
    proc = subprocess.Popen(cli_command(*args_for(out, questions_file, [openai_server, second_openai_server])),
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_records(out / LOG_NAME, 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, partial = read_log(out / LOG_NAME)
    assert 4 <= len(partial) < 24 and not (out / STORE_NAME).exists()
    summary = run_cli(*args_for(out, questions_file, [second_openai_server], parallel=2))  # other servers, width
    assert summary["complete"]
    assert records_kept(out, partial)
    assert_same_store((out / STORE_NAME).read_bytes(), one_server_store)


def records_kept(out: Path, partial: list[dict[str, Any]]) -> bool:
    _, records = read_log(out / LOG_NAME)
    return records[: len(partial)] == partial and len({(r["q"], r["b"]) for r in records}) == len(records) == 24


def test_every_server_down_is_a_clear_error_and_resumable(tmp_path: Path, questions_file: Path) -> None:  # noqa: F811
    from collect_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = CliRunner().invoke(main, args_for(tmp_path / "none", questions_file, [url], retries=0))
    assert res.exit_code == 2
    assert "no answer after 1 tries" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "none").exists()  # failed before anything was written


# ----- token ids: a stand-in server speaking vLLM's token-id protocol ---------------------------------------------
class _TokenServer(ThreadingHTTPServer):
    """`/tokenize` (one id per byte, plus 1000 for `</think>`), and `/v1/completions` taking a prompt of token ids and
    returning `token_id:N` tokens (a deterministic function of the prompt and seed); it records every prompt."""

    daemon_threads = True
    prompts: list[list[int]]


class _Handler(BaseHTTPRequestHandler):
    server: _TokenServer

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, doc: Any, status: int = 200) -> None:
        body = orjson.dumps(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._send({"data": [{"id": "org/Model-7B", "max_model_len": 4096}]})

    def do_POST(self) -> None:  # noqa: N802
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            text = body["prompt"]
            ids, i = [], 0
            while i < len(text):
                if text.startswith("</think>", i):
                    ids.append(1000)
                    i += 8
                else:
                    ids.extend(text[i].encode())
                    i += 1
            return self._send({"tokens": ids, "count": len(ids)})
        if self.path != "/v1/completions" or not isinstance(body["prompt"], list):
            return self._send({"error": "token ids only"}, 400)
        prompt = body["prompt"]
        self.server.prompts.append(list(prompt))
        state = (sum(prompt) * 31 + len(prompt) + int(body.get("seed") or 0)) % 9973
        out = []
        for _ in range(body["max_tokens"]):
            state = (state * 1103 + 17) % 9973
            out.append(97 + state % 26)  # letters: never </think>, never an end
        text = bytes(out).decode()
        self._send({"choices": [{"text": text, "finish_reason": "length", "logprobs": {
            "tokens": [f"token_id:{t}" for t in out], "token_logprobs": [-0.5] * len(out),
            "top_logprobs": [{f"token_id:{t}": -0.5} for t in out], "text_offset": list(range(len(out)))}}]})


def test_token_ids_round_trip_exactly_where_the_server_takes_them() -> None:
    from core.collect.backend import Extend
    from core.collect.openai_backend import OpenAIBackend
    from core.collect.protocol import FORCED_THINK_END, PROBE_TEXTS, chat_prompt

    server = _TokenServer(("127.0.0.1", 0), _Handler)
    server.prompts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bk = OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}", parallel=2, retries=0)
        assert bk.token_mode == "ids" and bk.think_end_id == 1000
        assert bk.info()["n_ctx_train"] == 4096
        prompt_text = chat_prompt("What is 1+1?")
        p = bk.add_prompt(prompt_text)
        b = bk.open_branch(p, 7)
        server.prompts.clear()
        got: list[int] = []
        for req in (Extend(5), Extend(3, force_text=FORCED_THINK_END), Extend(4)):
            c = bk.extend({b: req})[b]
            sent = server.prompts[-1]
            forced = list(FORCED_THINK_END.replace("</think>", "\x00").encode()) if req.force_text else []
            forced = [1000 if t == 0 else t for t in forced]
            assert sent == list(prompt_text.encode()) + got + forced  # exactly the ids sampled so far, never re-tokenised
            got += forced + [int(t) for t in c.text.decode()[len(req.force_text):].encode()]
            assert c.n_sampled == req.max_tokens and c.n_forced == len(forced)
        bk.probe([b], PROBE_TEXTS["boxed"], 2)
        assert server.prompts[-1][: len(prompt_text) + len(got)] == list(prompt_text.encode()) + got
        assert bk.token_drift([b]) == {b: 0}
        bk.close_branch(b)
        bk.close()
    finally:
        server.shutdown()


def test_a_server_down_at_start_is_skipped_with_a_warning(openai_server: str, questions_file: Path,  # noqa: F811
                                                          tmp_path: Path) -> None:
    from collect_helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    res = CliRunner().invoke(main, [*args_for(tmp_path / "skip", questions_file, [dead, openai_server], retries=0,
                                              branches=2, max_tokens=32), "--json"])
    assert res.exit_code == 0, res.output
    assert f"warning: {dead} does not answer" in res.stderr
    summary = orjson.loads(res.stdout)
    assert summary["complete"] and [s["name"] for s in summary["servers"]] == [openai_server.removeprefix("http://")]


def test_solve_through_two_servers_moves_a_question_off_a_dead_one(openai_server: str, tiny_model: Path) -> None:  # noqa: F811
    from core.collect.backend import Extend
    from core.collect.openai_backend import OpenAIBackend
    from core.collect.protocol import chat_prompt

    doomed, url = start_server(tiny_model)
    try:
        bk = OpenAIBackend([url, openai_server], parallel=2, retries=0, timeout=30)
        single = OpenAIBackend(openai_server, parallel=2, retries=0, timeout=30)
        p, q = bk.add_prompt(chat_prompt("What is 1+1?")), single.add_prompt(chat_prompt("What is 1+1?"))
        assert bk._home[p].base_url == url  # the least loaded server: the first
        a, b = bk.open_branch(p, 3), single.open_branch(q, 3)
        first = bk.extend({a: Extend(8)})[a].text
        assert first == single.extend({b: Extend(8)})[b].text
        stop_server(doomed)
        second = bk.extend({a: Extend(8)})[a].text  # moved to the live server, same seeded chunk
        assert second == single.extend({b: Extend(8)})[b].text
        assert bk.clients[0].down and bk._home[p].base_url == openai_server
        bk.close()
        single.close()
    finally:
        stop_server(doomed)
