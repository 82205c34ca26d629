"""What the explorer reads: the system prompt (the MCP `discover` brief plus the loop's rules) and, per round, a
compact record of the study so far.

The round brief is bounded whatever the length of the run: the baselines, the top of the leaderboard, the code
and per-β curve of the best `top_k` candidates, a trace digest of where each of them loses to SC@64, the last
rounds' outcomes and the latest failures — cut to `max_chars` by dropping the lowest-ranked code first. Each
round is a fresh conversation, so the context never grows with the number of rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.discovery.log import DiscoveryLog
from core.discovery.records import LeaderboardEntry
from core.discovery.service import DiscoveryService
from core.errors import AutoTTSError
from mcp_server import tools
from mcp_server.prompt import controller_format, discover_prompt


@dataclass(frozen=True)
class RoundLimits:
    """What one round may use."""

    max_turns: int
    """Explorer replies (API calls) per round."""
    max_tool_calls: int
    """Tool calls per round."""


def system_prompt(svc: DiscoveryService, rounds: int, limits: RoundLimits) -> str:
    """The explorer's standing instructions: the MCP brief and format, framed for an unattended loop."""
    return f"""\
You are the explorer of an automated discovery loop that runs with nobody watching. Over {rounds} rounds you
design controllers, test them with the tools below and submit one per round. Each round is a new conversation
that opens with a short record of everything found so far (the best candidates' code and curves, where they fail,
the baselines), so you never need to remember earlier rounds. The brief that follows is the one interactive agents
receive; where it mentions the `autotts://controller-format` resource or the `discover` prompt, their text is
included here.

{discover_prompt(svc.study)}
---

{controller_format()}
---

## How a round works in this loop
* You have at most {limits.max_tool_calls} tool calls and {limits.max_turns} replies per round. Tool results beyond
  the limit come back as errors, and the round ends when the replies run out.
* Try one idea per round: a new mechanism or a clear improvement of the best candidate so far. Quick checks
  (`betas=[0.5]`, one environment) are fine while you iterate, but evaluate the version you submit on the full β
  grid (leave `betas` out) so that it can be compared with the others.
* Put code only into run_controller's `code` argument, never into your replies; keep replies short.
* Finish the round with two or three sentences on what you tried and what you learned, and a last line
  `FINAL: r0012` naming the run, evaluated in this round, that you submit. Without that line the loop submits
  the best-scoring run of the round.
"""


def round_brief(svc: DiscoveryService, log: DiscoveryLog, sid: str, round_no: int, rounds: int,
                limits: RoundLimits, *, top_k: int = 3, budget: str | None = None, max_chars: int = 24_000) -> str:
    """The opening user message of a round: the study's record so far, compact, and the task."""
    head = [f"# Round {round_no} of {rounds}"]
    if budget:
        head.append(budget)
    baselines = tools.get_baselines(svc)
    head.append("## Baselines (search average; * = on the accuracy–tokens frontier)")
    head += [f"  {b.label:<15} {b.accuracy:6.2f}% {b.avg_tokens:10,.0f} tokens{' *' if b.on_frontier else ''}"
             for b in baselines.average]
    board = svc.store.leaderboard(include_failed=True)
    scored = [r for r in board if r.best_accuracy is not None]
    failed = [r for r in board if r.best_accuracy is None]
    where = log.run_rounds()
    past = _past_rounds(svc, log, sid)

    task = [f"## Your task this round ({limits.max_tool_calls} tool calls, {limits.max_turns} replies)"]
    if not scored:
        task.append("No candidate has scored yet. Start from a simple controller you understand (the example in the "
                    "format section is valid), measure it on the full β grid, then improve it.")
    else:
        task.append("Propose ONE new controller that beats the best so far on the accuracy–tokens trade-off against "
                    "the baselines (higher accuracy at the same tokens, or the same accuracy for fewer), keeping "
                    "tokens monotone in β. Study the digests below before writing code.")
    task.append("End with the line `FINAL: r…` naming the run you submit.")

    sections: list[list[str]] = [head]
    if scored:
        sections.append(_leaderboard(scored[:10], where, len(scored)))
    if past:
        sections.append(["## This session's rounds"] + past)
    if failed:
        sections.append(["## Latest failures (not scored)"] + [
            f"  {r.run_id} '{r.name[:40]}' {r.status}: {_one_line(r.error, 160)}" for r in failed[:3]])
    details = [_candidate(svc, r, where) for r in scored[:top_k]]
    # Bound the brief: drop the lowest-ranked candidates' code first, then cut.
    while True:
        text = "\n\n".join("\n".join(s) for s in sections + [d for d in details if d] + [task])
        if len(text) <= max_chars or not any(details):
            break
        details = [d for d in details if d]
        details[-1] = []
    if len(text) > max_chars:
        text = text[: max_chars - 200] + "\n… (cut)\n\n" + "\n".join(task)
    return text


def _leaderboard(rows: list[LeaderboardEntry], where: dict[int, tuple[str, int]], total: int) -> list[str]:
    out = [f"## Leaderboard (best search-average accuracy over β, then fewer tokens; top {len(rows)} of {total})",
           "  run    round  acc%    tokens    β    monotone  undominated  name"]
    for r in rows:
        rnd = where.get(r.id)
        out.append(f"  {r.run_id}  {'-' if rnd is None else rnd[1]:>5}  {r.best_accuracy:6.2f} "
                   f"{r.tokens_at_best:9,.0f}  {r.beta_at_best:<4g} {'yes' if r.monotone else 'NO':<9} "
                   f"{r.on_frontier!s:<12} {r.name[:40]}")
    return out


def _candidate(svc: DiscoveryService, row: LeaderboardEntry, where: dict[int, tuple[str, int]]) -> list[str]:
    rid = row.run_id
    rnd = where.get(row.id)
    out = [f"## {rid} '{row.name}'" + ("" if rnd is None else f" (round {rnd[1]})")]
    try:
        rep = tools.report_for_run(svc, rid)
        out.append("  β     acc%    tokens   vs baseline frontier")
        out += [f"  {p.beta:<5g} {p.accuracy:6.2f} {p.avg_tokens:9,.0f}   {tools._position_text(p)}"  # noqa: SLF001
                for p in rep.search_avg]
        src = tools.get_controller(svc, rid)
        code = src.source if len(src.source) <= 6000 else src.source[:6000] + "\n# … (cut; get_controller for all)"
        out += ["```python", code.rstrip(), "```"]
        digest = tools.inspect_trace(svc, rid, beta=row.beta_at_best)
        out.append(f"Where it loses (β={row.beta_at_best:g}, {digest.env}): {digest.summary}")
        if digest.examples:
            out.append("  examples [seed, question]: " + ", ".join(f"[{s},{q}]" for s, q in digest.examples[:5]))
    except AutoTTSError as e:  # a candidate that cannot be summarised must not stop the loop
        out.append(f"  (details unavailable: {_one_line(str(e), 160)})")
    return out


def _past_rounds(svc: DiscoveryService, log: DiscoveryLog, sid: str) -> list[str]:
    out = []
    for rd in log.rounds(sid)[-8:]:
        if rd.candidate is None:
            out.append(f"  round {rd.round}: no candidate ({_one_line(rd.note, 100)})")
            continue
        run = svc.store.run(rd.candidate, with_source=False)
        best = run.summary.best if run.status == "ok" and run.summary is not None else None
        score = (f"{best.accuracy:.2f}% at {best.avg_tokens:,.0f} tokens (β={best.beta:g})" if best
                 else f"{run.status}: {_one_line(run.error, 80)}")
        out.append(f"  round {rd.round}: {run.run_id} '{run.name[:40]}' — {score}")
    return out


def _one_line(text: Any, n: int) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"
