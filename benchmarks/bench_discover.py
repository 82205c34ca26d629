"""What an `autotts discover` session costs, measured against a scripted local `/v1/messages` server.

The explorer is `tests/fake_anthropic.py` on 127.0.0.1 (never the network); its usage figures follow each request
(about 4 characters a token, the conversation's previous request read from the prompt cache, the rest written to
it, a 1,024-token reply). Everything else is the real loop: the brief, the tools, the sandbox, selection and the
held-out evaluation. Each round the explorer evaluates one controller on the full grid, reads a trace digest and
submits it. Reported: characters and estimated tokens of every request, per round and in total; the dollar cost at
the built-in price of the model, as billed with the prompt caching the loop requests and as it would be without
any caching; and the wall time of the whole command (held-out included).

    python benchmarks/bench_discover.py                 # 5 rounds on a small synthetic study
    python benchmarks/bench_discover.py --rounds 3 --model claude-opus-4-6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from click.testing import CliRunner  # noqa: E402
from fake_anthropic import FakeAnthropic, message, text, tool_use, usage  # noqa: E402
from mcp_helpers import make_study  # noqa: E402

from autotts.cli import main  # noqa: E402
from core.discovery.log import DiscoveryLog  # noqa: E402
from core.discovery.records import Usage  # noqa: E402
from core.discovery.store import RunStore  # noqa: E402
from mcp_server.discover.pricing import PriceTable  # noqa: E402
from mcp_server.prompt import EXAMPLE_CONTROLLER  # noqa: E402

CHARS_PER_TOKEN = 4
REPLY_TOKENS = 1024


def variant(k: int) -> str:
    return EXAMPLE_CONTROLLER.replace("class ConfidentVote", f"class Vote{k}").replace(
        "self.width = 2 + round(6 * beta)", f"self.width = {1 + k} + round({5 + k} * beta)")


def script(rounds: int) -> list:
    out = []
    for k in range(1, rounds + 1):
        out += [message(tool_use("run_controller", {"code": variant(k), "name": f"vote {k}"})),
                message(tool_use("inspect_trace", {"run_id": f"r{k:04d}"})),
                message(text(f"Round {k}: a first wave of {1 + k} branches; it still stops early on a wrong "
                             f"consensus on the hardest questions.\nFINAL: r{k:04d}"))]
    return out


def main_(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="claude-sonnet-4-6")
    args = ap.parse_args(argv)
    price = PriceTable().price(args.model)
    assert price is not None, f"no built-in price for {args.model}"

    seen: dict[bytes, int] = {}
    calls: list[dict] = []
    items = script(args.rounds)

    def serve(index: int, body: dict) -> dict:
        chars = len(orjson.dumps({k: body[k] for k in ("system", "tools", "messages")}))
        prompt = chars // CHARS_PER_TOKEN
        key = orjson.dumps(body["messages"][0])
        cached = seen.get(key, 0)
        seen[key] = prompt
        rnd = int(str(body["messages"][0]["content"][0]["text"]).split("# Round ", 1)[1].split(" ", 1)[0])
        calls.append({"round": rnd, "chars": chars, "tokens": prompt})
        return {**items.pop(0), "usage": usage(0, REPLY_TOKENS, prompt - cached, cached)}

    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(Path(tmp) / "study", n_search=2, n_questions=12)
        with FakeAnthropic([]) as fake:
            fake.on_request = serve
            started = time.monotonic()
            res = CliRunner().invoke(main, ["discover", str(study.folder), "--model", args.model, "--base-url",
                                            fake.url, "--rounds", str(args.rounds), "-q"],
                                     env={"ANTHROPIC_API_KEY": "sk-ant-local"})
            wall = time.monotonic() - started
        if res.exit_code != 0:
            raise SystemExit(res.output)
        with RunStore(study.store_path, readonly=True) as store:
            log = DiscoveryLog(store)
            sid = log.sessions()[0].id
            spent, n_calls = log.spent(sid)
            cost_line = " ".join(res.stdout[res.stdout.index("Discovery cost"):].split())

    print(f"{args.model}, {args.rounds} round(s), {n_calls} calls, scripted explorer on 127.0.0.1 "
          f"(~{CHARS_PER_TOKEN} characters a token, {REPLY_TOKENS}-token replies)\n")
    print(f"{'round':>5} {'calls':>5} {'request chars':>22} {'est. tokens':>12} {'cached $':>9} {'uncached $':>10}")
    for rnd in sorted({c["round"] for c in calls}):
        mine = [c for c in calls if c["round"] == rnd]
        toks = sum(c["tokens"] for c in mine)
        per = f"{min(c['chars'] for c in mine):,}–{max(c['chars'] for c in mine):,}"
        cached = sum(price.cost(Usage(0, REPLY_TOKENS, c["tokens"] - p, p)) for c, p in
                     zip(mine, [0] + [c["tokens"] for c in mine[:-1]], strict=True))
        uncached = sum(price.cost(Usage(c["tokens"], REPLY_TOKENS)) for c in mine)
        print(f"{rnd:>5} {len(mine):>5} {per:>22} {toks:>12,} {cached:>9.4f} {uncached:>10.4f}")
    total_tokens = sum(c["tokens"] for c in calls)
    uncached_total = sum(price.cost(Usage(c["tokens"], REPLY_TOKENS)) for c in calls)
    print(f"{'total':>5} {len(calls):>5} {sum(c['chars'] for c in calls):>22,} {total_tokens:>12,} "
          f"{spent.cost_usd:>9.4f} {uncached_total:>10.4f}")
    print(f"\nwall time of the command (held-out included): {wall:.1f} s")
    print(cost_line)


if __name__ == "__main__":
    main_()
