"""Bad input through a real MCP client: every case gets one clear error (or, where documented, a clean result),
and the server keeps serving afterwards.

Decisions recorded here: `None` from solve() is a legitimate "no answer" and scores 0 (it is not an error);
printing megabytes is not an error either (the sandbox keeps only the tail, and the result stays small).
"""

from __future__ import annotations

import json
import re

import pytest
from mcp import Client
from mcp_helpers import HELDOUT, SEARCH, make_study, text

from core.discovery.service import DiscoveryService
from core.sandbox import probe_isolation
from mcp_server.prompt import EXAMPLE_CONTROLLER
from mcp_server.server import build_server

pytestmark = pytest.mark.anyio

N_SEEDS, N_Q = 3, 4
TIMEOUT_S = 8.0
SECCOMP = probe_isolation().get("seccomp", False)


def controller(body: str, init: str = "pass", header: str = "") -> str:
    """A candidate whose solve() runs `body` (indented 8 spaces by the caller's dedent)."""
    lines = "\n".join("        " + ln for ln in body.strip("\n").splitlines())
    return f"{header}\nclass Candidate:\n    def __init__(self, beta=0.5):\n        self.calls = 0\n        {init}\n\n" \
           f"    def solve(self, question):\n        self.calls += 1\n{lines}\n"


LIBC = "import numpy as np\n"
CASES: list[tuple[str, str, dict, str]] = [
    # (id, tool, arguments, regex the error must match)
    ("syntax-error", "run_controller", {"code": "class A:\n    def solve(self, q)\n        return '1'\n"},
     r"syntax error at line 2"),
    ("forbidden-import-os", "run_controller", {"code": "import os\n" + EXAMPLE_CONTROLLER},
     r"import of 'os' is not allowed"),
    ("forbidden-import-socket", "run_controller", {"code": "import socket\n" + EXAMPLE_CONTROLLER},
     r"import of 'socket' is not allowed"),
    ("forbidden-from-import", "run_controller", {"code": "from subprocess import run\n" + EXAMPLE_CONTROLLER},
     r"import of 'subprocess' is not allowed"),
    ("dynamic-import", "run_controller", {"code": controller("m = __import__('os')\nreturn '1'")},
     r"'__import__' is not available"),
    ("infinite-loop", "run_controller", {"code": controller("while True:\n    pass")},
     rf"timed out after {TIMEOUT_S:g} s"),
    ("memory-bomb", "run_controller", {"code": controller("hog = []\nwhile True:\n    hog.append(bytearray(10**7))")},
     r"memory limit .*exceeded|MemoryError"),
    ("memory-bomb-at-once", "run_controller", {"code": controller("x = bytearray(1 << 40)\nreturn '1'")},
     r"memory limit .*exceeded|MemoryError"),
    ("fork-bomb-os", "run_controller", {"code": "import os\n" + controller("while True:\n    os.fork()")},
     r"import of 'os' is not allowed"),
    ("exception-first-question", "run_controller", {"code": controller("raise ValueError('boom-first')")},
     r"ValueError: boom-first.*seed \d+, question 0"),
    # each worker runs one cell (every question of one seed, in order): the N_Q-th episode it starts is the last question
    ("exception-last-question", "run_controller", {"code": controller(
        f"STARTED.append(1)\nif len(STARTED) == {N_Q}:\n    raise KeyError('boom-last')\nreturn question.probe_new()[0]",
        header="STARTED = []\n")},
     rf"KeyError: 'boom-last'.*seed [0-{N_SEEDS - 1}], question {N_Q - 1}"),
    ("returns-int", "run_controller", {"code": controller("return 42")}, r"returned int"),
    ("returns-list", "run_controller", {"code": controller("return ['1']")}, r"returned list"),
    ("read-etc-passwd-open", "run_controller", {"code": controller("return open('/etc/passwd').read()")},
     r"'open' is not available"),
    ("read-etc-passwd-numpy", "run_controller", {"code": controller(
        "return str(np.fromfile('/etc/passwd', dtype=np.uint8)[:4])", header=LIBC)},
     r"open\(\) is not available|No such file|Permission denied|FileNotFoundError|not permitted"),
    ("read-replay-file", "run_controller", {"code": "REPLAY"},
     r"open\(\) is not available|No such file|Permission denied|not permitted"),
    ("peek-private-state", "run_controller", {"code": controller("return question._answers[0][-1]")},
     r"private attribute"),
    ("no-controller", "run_controller", {"code": "x = 1\n"}, r"no controller found"),
    ("empty-code", "run_controller", {"code": "   \n"}, r"code is empty"),
    ("no-beta-knob", "run_controller", {"code": "class A:\n    def solve(self, q):\n        return None\n"},
     r"accepts no option beta"),
    ("code-5mb", "run_controller", {"code": EXAMPLE_CONTROLLER + "#" * (5 * 1024 * 1024)},
     r"the limit is 262,144"),
    ("code-not-a-string", "run_controller", {"code": 123}, r"code\s+Input should be a valid string"),
    ("code-missing", "run_controller", {"name": "x"}, r"code\s+Field required"),
    ("betas-out-of-range", "run_controller", {"code": EXAMPLE_CONTROLLER, "betas": [0.5, 2]},
     r"betas must be numbers in \[0, 1\]; got 2"),
    ("betas-not-numbers", "run_controller", {"code": EXAMPLE_CONTROLLER, "betas": "fast"}, r"betas"),
    ("betas-empty", "run_controller", {"code": EXAMPLE_CONTROLLER, "betas": []}, r"non-empty list"),
    ("name-too-long", "run_controller", {"code": EXAMPLE_CONTROLLER, "name": "n" * 500}, r"keep it under 80"),
    ("heldout-env-run", "run_controller", {"code": EXAMPLE_CONTROLLER, "envs": [HELDOUT]},
     r"is a held-out environment"),
    ("unknown-env-run", "run_controller", {"code": EXAMPLE_CONTROLLER, "envs": ["nope/x"]},
     r"unknown environment 'nope/x'; the search environments are: synth/alpha"),
    ("unknown-run-id", "inspect_trace", {"run_id": "r9999"}, r"no run r9999"),
    ("malformed-run-id", "inspect_trace", {"run_id": "latest"}, r"'latest' is not a run id; use one like r0007"),
    ("heldout-env-trace", "inspect_trace", {"run_id": "RUN", "env": HELDOUT}, r"is a held-out environment"),
    ("beta-not-evaluated", "inspect_trace", {"run_id": "RUN", "beta": 0.3}, r"not evaluated at β=0.3"),
    ("question-out-of-range", "inspect_trace", {"run_id": "RUN", "question": 99},
     r"question must be one of this run's question indices of .* \(0\.\.3\)"),
    ("seed-out-of-range", "inspect_trace", {"run_id": "RUN", "seed": 500}, r"seed 500 is not one of this run's seeds \(0\.\.2\)"),
    ("page-out-of-range", "inspect_trace", {"run_id": "RUN", "page": 7}, r"page 7 does not exist"),
    ("trace-failed-run", "inspect_trace", {"run_id": "FAILED"}, r"failed .*there is no trace to inspect"),
    ("unknown-run-source", "get_controller", {"run_id": "r0777"}, r"no run r0777"),
    ("history-page-zero", "get_history", {"page": 0}, r"page must be an integer ≥ 1"),
    ("history-page-size", "get_history", {"page_size": 10_000}, r"page_size must be an integer in 1\.\.100"),
    ("unknown-tool", "drop_tables", {}, r"Unknown tool"),
]

OS_CASES = [
    ("fork-bomb-ctypes", controller(
        "libc = np.ctypeslib.ctypes.CDLL(None)\nwhile True:\n    if libc.fork() < 0:\n        raise OSError('fork blocked')",
        header=LIBC), r"fork blocked|not allowed|ImportError|PermissionError"),
    ("socket-ctypes", controller(
        "libc = np.ctypeslib.ctypes.CDLL(None)\nif libc.socket(2, 1, 0) < 0:\n    raise OSError('socket blocked')\n"
        "return '1'", header=LIBC), r"socket blocked|not allowed|ImportError|PermissionError"),
    ("read-files-ctypes", controller(
        "libc = np.ctypeslib.ctypes.CDLL(None)\nfor path in (b'/etc/passwd', REPLAY_PATH.encode()):\n"
        "    if libc.open(path, 0) >= 0:\n        return 'LEAK ' + path.decode()\nraise OSError('reads blocked')",
        header=LIBC), r"reads blocked|not allowed|ImportError|PermissionError"),
]



@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "study"
    # 512 MB per worker (a worker starts at about 190 MB): memory bombs reach the limit quickly even on a busy machine
    study = make_study(folder, n_search=1, n_questions=N_Q, n_seeds=N_SEEDS, betas=(0.0, 0.5), timeout_s=TIMEOUT_S,
                       memory_mb=512)
    study.sandbox["memory_mb"] = 768
    svc = DiscoveryService(study)
    server = build_server(svc)
    from mcp_server import tools

    good = tools.run_controller(svc, EXAMPLE_CONTROLLER, name="good")
    bad = tools.run_controller(svc, controller("raise ValueError('x')"), name="bad")
    assert good.status == "ok" and bad.status == "error"
    replay = str(study.resolve_path(study.search[0]))
    return {"server": server, "svc": svc, "RUN": good.run_id, "FAILED": bad.run_id, "replay": replay}


async def _still_serving(c: Client) -> None:
    r = await c.call_tool("list_environments", {})
    assert not r.is_error and SEARCH[0] in text(r)


def _fill(args: dict, env: dict) -> dict:
    out = {}
    for k, v in args.items():
        if v in ("RUN", "FAILED"):
            v = env[v]
        elif v == "REPLAY":
            v = controller(f"return str(np.fromfile({env['replay']!r}, dtype=np.uint8)[:4])", header=LIBC)
        out[k] = v
    return out


@pytest.mark.parametrize("case_id,tool,args,pattern", CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_a_clear_tool_error(env, case_id, tool, args, pattern):
    async with Client(env["server"]) as c:
        r = await c.call_tool(tool, _fill(args, env))
        body = text(r)
        assert r.is_error, f"{case_id}: expected an error, got {body[:500]}"
        assert re.search(pattern, body, re.S), f"{case_id}: {body[:800]}"
        assert "Traceback" not in body or "candidate" in body  # never a server traceback
        assert len(body) < 6000
        await _still_serving(c)


@pytest.mark.skipif(not SECCOMP, reason="needs seccomp (the sandbox's process and socket ban)")
@pytest.mark.parametrize("case_id,code,pattern", OS_CASES, ids=[c[0] for c in OS_CASES])
async def test_os_escapes_are_blocked(env, case_id, code, pattern):
    code = code.replace("REPLAY_PATH", repr(env["replay"]))
    async with Client(env["server"]) as c:
        r = await c.call_tool("run_controller", {"code": code, "betas": [0.5]})
        assert r.is_error and re.search(pattern, text(r)), text(r)[:800]
        print(case_id, "->", r.structured_content.get("error"))
        await _still_serving(c)


async def test_none_answer_scores_zero_rather_than_erroring(env):
    async with Client(env["server"]) as c:
        r = await c.call_tool("run_controller", {"code": controller("question.probe_new()\nreturn None"),
                                                 "name": "abstain"})
        assert not r.is_error, text(r)
        assert all(p["accuracy"] == 0.0 and p["avg_tokens"] > 0 for p in r.structured_content["search_avg"])
        await _still_serving(c)


async def test_printing_megabytes_keeps_the_result_small(env):
    code = controller("print('x' * 1_000_000)\nreturn question.probe_new()[0]")
    async with Client(env["server"]) as c:
        r = await c.call_tool("run_controller", {"code": code, "betas": [0.5], "name": "chatty"})
        assert not r.is_error, text(r)[:800]
        assert len(text(r)) < 6000 and len(json.dumps(r.structured_content)) < 8000
        assert "x" * 100 in (r.structured_content.get("stdout_tail") or "")
        await _still_serving(c)


async def test_oracle_peeking_past_the_static_check_is_refused(env):
    code = controller("peek = operator.attrgetter('_answers')(question)\nreturn peek[0][-1]",
                      header="import operator\n")
    async with Client(env["server"]) as c:
        r = await c.call_tool("run_controller", {"code": code, "betas": [0.5], "name": "oracle"})
        assert r.is_error, text(r)[:800]
        assert re.search(r"REFUSED|audit|oracle|AttributeError|_answers", text(r)), text(r)[:800]
        print("oracle ->", r.structured_content.get("error"))
        await _still_serving(c)


async def test_errors_are_recorded_not_fatal(env):
    runs = env["svc"].store.runs_since(0)
    statuses = {r.status for r in runs}
    assert "error" in statuses and "ok" in statuses
    assert all(r.error for r in runs if r.status != "ok")
