"""What the explorer reads: the system prompt (the MCP `discover` brief plus the loop's rules) and, per round, a
compact record of the study so far.

The round brief is bounded whatever the length of the run, at `BRIEF_CHARS` characters by default: the baselines,
the leaderboard by the documented objective (tokens to reach SC@64 along the β curve, against CMC, AUC, each
± its standard error over seeds), the lesson each earlier round's explorers wrote at the end of their round (in
their own words, at most `loop.LESSON_CHARS` each), and for the best `top_k` candidates their β curve with error
bars, where they lose to SC@64 on every search environment, and their code. When it is too long, parts are dropped
in this order until it fits: the lowest-ranked candidates' code, then lessons older than the last three rounds,
the lower-ranked candidates' per-environment lines, the failures, the remaining lessons (oldest first); what is
still too long is cut. Each round is a fresh conversation, so the context never grows with the number of rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.discovery.log import DiscoveryLog
from core.discovery.service import DiscoveryService
from core.errors import AutoTTSError
from core.objective import render_curve
from mcp_server import tools
from mcp_server.discover.judge import RunScore, render_env, render_figures, score_run
from mcp_server.prompt import controller_format, discover_prompt

BRIEF_CHARS = 16_000
"""Default character budget of a round brief (about 5k tokens)."""


@dataclass(frozen=True)
class RoundLimits:
    """What one round may use."""

    max_turns: int
    """Explorer replies (API calls) per round."""
    max_tool_calls: int
    """Tool calls per round."""
    explorers: int = 1
    """Parallel explorer conversations per round."""


def system_prompt(svc: DiscoveryService, rounds: int, limits: RoundLimits) -> str:
    """The explorer's standing instructions: the MCP brief and format, framed for an unattended loop."""
    peers = ("" if limits.explorers == 1 else f"\n* {limits.explorers} explorers work in parallel each round, from "
             "the same brief, on the same study; the round's candidate is the best of theirs.")
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
  the limit come back as errors, and the round ends when the replies run out.{peers}
* Try one idea per round: a new mechanism or a clear improvement of the best candidate so far. Quick checks
  (`betas=[0.5]`, one environment) are fine while you iterate; the run you submit is evaluated on the full β grid
  of every search environment (by the loop, if you did not), and only full-grid runs are ranked and selected.
* Candidates are judged by tokens to reach SC@64's accuracy along the β curve (then AUC); a difference within
  the seeds' standard error is a tie, which the cheaper candidate wins.
* Put code only into run_controller's `code` argument, never into your replies; keep replies short.
* Finish the round with two or three sentences on what you tried and what you learned — the next rounds' briefs
  show them as your lesson — and a last line `FINAL: r0012` naming the run, evaluated in this round, that you
  submit. Without that line the loop submits the best-scoring run of the round.
"""


def round_brief(svc: DiscoveryService, log: DiscoveryLog, sid: str, round_no: int, rounds: int,
                limits: RoundLimits, *, top_k: int = 3, budget: str | None = None,
                max_chars: int = BRIEF_CHARS) -> str:
    """The opening user message of a round: the study's record so far, compact, and the task (module docstring)."""
    head = [f"# Round {round_no} of {rounds}"]
    if budget:
        head.append(budget)
    baselines = tools.get_baselines(svc)
    head.append("## Baselines (search average; * = on the accuracy–tokens frontier)")
    head += [f"  {b.label:<15} {b.accuracy:6.2f}% {b.avg_tokens:10,.0f} tokens{' *' if b.on_frontier else ''}"
             for b in baselines.average]
    board = svc.store.leaderboard(include_failed=True)
    failed = [r for r in board if r.best_accuracy is None]
    scores = [s for s in (score_run(svc, r.id) for r in board if r.best_accuracy is not None) if s is not None]
    ranked = sorted((s for s in scores if s.full_grid), key=lambda s: (_rank(s), s.run_id))
    probes = [s for s in scores if not s.full_grid]
    where = log.run_rounds()

    task = [f"## Your task this round ({limits.max_tool_calls} tool calls, {limits.max_turns} replies)"]
    if not scores:
        task.append("No candidate has scored yet. Start from a simple controller you understand (the example in the "
                    "format section is valid), measure it on the full β grid, then improve it.")
    else:
        task.append("Propose ONE new controller that needs fewer tokens than the best so far to reach SC@64's "
                    "accuracy (or, if none reaches it, gets closer), keeping tokens monotone in β. Read the "
                    "lessons and the per-environment weaknesses below before writing code.")
    task.append("End with two or three sentences on what you learned, then the line `FINAL: r…` naming the run "
                "you submit.")

    # (drop rank, position, lines): higher ranks are dropped first when the brief is over its budget.
    parts: list[tuple[int, int, list[str]]] = [(0, 0, head)]
    if ranked or probes:
        parts.append((0, 1, _leaderboard(ranked[:10], probes[:3], where, len(ranked))))
    lessons = _lessons(svc, log, sid)
    for k, lines in enumerate(lessons):
        recent = k >= len(lessons) - 3
        parts.append((10 + (len(lessons) - k) if recent else 60 + (len(lessons) - k), 2 + k, lines))
    if failed:
        parts.append((30, 1000, ["## Latest failures (not scored)"] + [
            f"  {r.run_id} '{r.name[:40]}' {r.status}: {_one_line(r.error, 160)}" for r in failed[:3]]))
    for k, sc in enumerate(ranked[:top_k]):
        head_lines, env_lines, code_lines = _candidate(svc, sc, where)
        pos = 2000 + 10 * k
        parts.append((0, pos, head_lines))
        parts.append((40 + k if k else 0, pos + 1, env_lines))
        parts.append((100 - k, pos + 2, code_lines))
    parts.append((0, 10_000, task))
    while True:
        text = "\n\n".join("\n".join(p[2]) for p in sorted(parts, key=lambda p: p[1]) if p[2])
        droppable = [p for p in parts if p[0] > 0]
        if len(text) <= max_chars or not droppable:
            break
        parts.remove(max(droppable, key=lambda p: p[0]))
    if len(text) > max_chars:
        text = text[: max_chars - 200 - sum(len(t) + 1 for t in task)] + "\n… (cut)\n\n" + "\n".join(task)
    return text


def _rank(s: RunScore) -> tuple[int, float, float]:
    from core.objective import rank_key

    return rank_key(s.objective)


def _leaderboard(rows: list[RunScore], probes: list[RunScore], where: dict[int, tuple[str, int]], total: int
                 ) -> list[str]:
    out = [f"## Leaderboard by the objective (top {len(rows)} of {total} full-grid runs; ± = SE over seeds)",
           "  run    round  tokens to SC@64 (% of SC@64's)   vs CMC   AUC           best acc% at tokens  name"]
    for s in rows:
        o = s.objective
        rnd = where.get(s.run_id)
        se = s.pct_se
        reach = "not reached" if o.pct_of_sc64 is None else f"{o.pct_of_sc64:.1f}%" + (
            "" if se is None else f" ± {se:.1f}")
        cmc = "-" if o.pct_of_cmc is None else f"{o.pct_of_cmc:.0f}%"
        out.append(f"  r{s.run_id:04d}  {'-' if rnd is None else rnd[1]:>5}  {reach:<31} {cmc:>6}   "
                   f"{o.auc:6.2f} ± {s.auc.se:4.2f}  {o.best_accuracy:6.2f} {o.best_accuracy_tokens:9,.0f}  "
                   f"{s.name[:32]}")
    if probes:
        out.append("  not ranked (probes on part of the β grid): " + ", ".join(
            f"r{p.run_id:04d} '{p.name[:24]}' β {','.join(f'{q.beta:g}' for q in p.curve)}" for p in probes))
    return out


def _candidate(svc: DiscoveryService, sc: RunScore, where: dict[int, tuple[str, int]]
               ) -> tuple[list[str], list[str], list[str]]:
    """(heading, figures and curve; the per-environment lines; the code) of one of the best candidates."""
    rnd = where.get(sc.run_id)
    head = [f"## r{sc.run_id:04d} '{sc.name}'" + ("" if rnd is None else f" (round {rnd[1]})"),
            "  " + render_figures(sc)]
    head += ["  " + line for line in render_curve(sc.curve).splitlines()]
    op = sc.operating_point
    envs = [f"Where it loses, per search environment (at its operating β={op.beta:g}):"]
    envs += ["  " + render_env(e) for e in sc.per_env]
    try:
        src = tools.get_controller(svc, sc.run_id)
        code = src.source if len(src.source) <= 6000 else src.source[:6000] + "\n# … (cut; get_controller for all)"
        return head, envs, ["```python", code.rstrip(), "```"]
    except AutoTTSError as e:  # a candidate that cannot be shown must not stop the loop
        return head, envs, [f"  (code unavailable: {_one_line(str(e), 160)})"]


def _lessons(svc: DiscoveryService, log: DiscoveryLog, sid: str) -> list[list[str]]:
    """Per earlier round of the session: what each explorer submitted, and its lesson in its own words."""
    out = []
    for rnd, outcomes in sorted(log.explorers(sid).items()):
        lines = [f"## Round {rnd}: what was tried and learned"]
        for o in outcomes:
            who = f"explorer {o.explorer}: " if len(outcomes) > 1 else ""
            if o.candidate is None:
                what = "no candidate"
            else:
                sc = score_run(svc, o.candidate)
                what = f"r{o.candidate:04d} '{sc.name[:40]}' — {render_figures(sc)}" if sc is not None else (
                    f"r{o.candidate:04d} {svc.store.run(o.candidate, with_source=False).status}")
            lines.append(f"  {who}{what}")
            if o.lesson:
                lines.append("  lesson: " + _one_line(o.lesson, 800))
        out.append(lines)
    return out


def _one_line(text: Any, n: int) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"
