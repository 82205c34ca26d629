"""The unattended discovery loop: R rounds of propose → evaluate → read traces → submit, with explorer models.

A round is K fresh conversations (`--explorers K`, default 1), run in parallel threads, each opened with the same
`context.round_brief` (the record so far, the earlier rounds' lessons included). Each explorer calls the study's
tools (`toolbox`) as often as the round's limits allow, and ends its turn naming a run (`FINAL: r0012`). An
explorer's candidate is that run if its conversation evaluated it; otherwise its best-scoring run; else its last
run; else a ```python block of its closing reply, evaluated by the loop. A candidate evaluated on fewer β (or
environments) than the study's full grid is then evaluated on the full grid by the loop — the probe stays a probe,
the full-grid run is the candidate. The round's candidate is the best of its explorers' candidates by the
session's selection rule (`report.select_final`). Then the round is written to the run store in one transaction
(`DiscoveryLog.complete_round`, with each explorer's outcome and closing words) — a completed round is durable.

The explorers share the study: evaluations are serialised by the service, and the duplicate check and the
evaluation of a `run_controller` call happen under one lock, so that no source is evaluated twice on the same
grid however the explorers' calls interleave (the second gets the first's run back as a duplicate).

How replies are handled:
* `tool_use` — every tool_use block gets a tool_result; malformed calls (input not an object, unknown tool,
  missing or bad arguments) get an `is_error` result and the round goes on.
* `max_tokens` — the reply was cut off: tool calls in it are not run (an `is_error` result says so) and the
  explorer is asked to continue briefly; after `max_continuations` cut-offs in a row the round ends.
* `pause_turn` — the conversation is sent back as is to let the model continue.
* `end_turn`, `stop_sequence`, `refusal` — the round ends.

Money: every response's usage (input, output, cache writes, cache reads) is priced and recorded at once. With a
budget, each call first reserves its estimate (`PriceTable.estimate`): the prompt — the last call's prompt plus
what was appended since, about 3 characters a token — at the dearest input rate (a cache miss: no call of that
prompt can cost more), plus the expected reply: `--expected-reply-tokens`, by default the longest reply of the
session so far (`FIRST_REPLY_TOKENS` before the first), never more than `max_tokens`. If spent + the reserves of calls in
flight + this estimate would pass the cap, the explorer stops before calling; a round cut short is recorded as
`partial`, and the loop goes on to selection.

Resume: the session is the study's latest (`--new` starts another); it continues after its last recorded round.
A round cut short by a crash or Ctrl-C is redone from its start; its earlier calls stay on the bill.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from core.discovery.log import DiscoveryLog, ExplorerOutcome
from core.discovery.records import DiscoveryCall, DiscoveryRound, Usage
from core.discovery.service import DiscoveryService
from core.discovery.store import RunStoreError, parse_run_id
from core.errors import AutoTTSError
from core.objective import is_full_grid
from mcp_server.discover.client import Explorer, ExplorerError
from mcp_server.discover.context import BRIEF_CHARS, RoundLimits, round_brief, system_prompt
from mcp_server.discover.pricing import PriceTable, PricingError, estimate_tokens
from mcp_server.discover.report import select_final
from mcp_server.discover.toolbox import Toolbox

FINAL_RE = re.compile(r"FINAL[*\s]*[:=][*`\s]*r?0*(\d+)", re.IGNORECASE)
FINAL_LINE_RE = re.compile(r"^.*FINAL[*\s]*[:=].*$", re.IGNORECASE | re.MULTILINE)
CODE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

CUT_TOOL = ("your reply was cut off by the max_tokens limit before this call was complete, so it was not run; send "
            "it again (shorter, e.g. less commentary)")
CONTINUE = ("(Your reply was cut off by the max_tokens limit.) Continue from where you stopped, briefly. Put code "
            "into a run_controller call rather than into the text.")
LAST_TURN = ("This is your last reply of this round: do not call tools; summarise in two or three sentences and end "
             "with the line FINAL: r… naming the run you submit.")
PEERS = ("You are explorer {k} of {n} this round. The others start from the same brief and work on the same study "
         "in parallel: their runs appear in get_history as they finish, and a source already evaluated comes back as "
         "a duplicate, so take your own direction.")
FIRST_REPLY_TOKENS = 1024
"""The reply a budget reserves before the session's first reply (a tool call with code is about this long)."""
LESSON_CHARS = 700
"""An explorer's closing words kept as its lesson (the brief shows them to later rounds)."""
LIMIT = ("tool-call limit for this round reached ({n}); the call was not run. Reply without tools: summarise and end "
         "with FINAL: r… naming the run you submit.")


class BudgetStop(AutoTTSError):
    """The next call could take the spend past --budget-usd; the loop stops before making it."""


@dataclass
class DiscoverOptions:
    """Everything a discovery session is configured with (recorded with the session)."""

    model: str
    rounds: int = 5
    budget_usd: float | None = None
    max_tokens: int = 8192
    """Output cap of each explorer reply."""
    expected_reply_tokens: int | None = None
    """The reply size a budget reserves per call (None: the longest reply of the session so far)."""
    max_turns: int = 12
    """Explorer replies (API calls) per round and explorer."""
    max_tool_calls: int = 16
    """Tool calls per round and explorer."""
    max_continuations: int = 2
    """Cut-off replies (stop_reason max_tokens) in a row before a conversation is ended."""
    top_k: int = 3
    """Candidates whose code, curve and per-environment weaknesses the round brief shows."""
    explorers: int = 1
    """Parallel explorer conversations per round."""
    select: str = "objective"
    """The selection rule that picks a round's candidate among its explorers' (and the session's final one)."""
    brief_chars: int = BRIEF_CHARS
    """Character budget of the round brief."""
    new_session: bool = False

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "new_session"}


@dataclass
class RoundState:
    """One explorer conversation of a round."""

    explorer: int = 1
    turns: int = 0
    tool_calls: int = 0
    cutoffs: int = 0
    runs: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    last_prompt: int | None = None
    chars_at_last: int = 0
    ended: str = ""
    budget_stop: BudgetStop | None = None


@dataclass
class SessionOutcome:
    """How a `run()` ended."""

    session: str
    status: str
    """done | budget (stopped by the cap) | nothing-to-do (all requested rounds were already recorded)."""
    first_round: int
    """The round this run started at (1 for a new session)."""
    rounds_done: int
    note: str = ""


class DiscoveryLoop:
    """Runs a discovery session over a `DiscoveryService` with an `Explorer`."""

    def __init__(self, svc: DiscoveryService, explorer: Explorer, prices: PriceTable, options: DiscoverOptions, *,
                 echo: Callable[[str], None] | None = None, toolbox: Toolbox | None = None):
        self.svc = svc
        self.explorer = explorer
        self.prices = prices
        self.opts = options
        self.echo = echo or (lambda s: None)
        self.log = DiscoveryLog(svc.store)
        self.limits = RoundLimits(options.max_turns, options.max_tool_calls, options.explorers)
        if options.budget_usd is not None and prices.price(options.model) is None:
            raise PricingError(f"no price for model '{options.model}', so --budget-usd cannot be enforced: pass "
                               '--prices FILE with {"' + options.model + '": {"input": …, "output": …}} (USD per '
                               "million tokens)")
        self.toolbox = toolbox or Toolbox(svc)
        self._tool_defs = self.toolbox.definitions()
        self._system: list[dict[str, Any]] = []
        self._fixed_chars = 0
        self._eval_guard = threading.Lock()   # duplicate check + evaluation of one run_controller call, atomically
        self._budget_lock = threading.Lock()
        self._reserved = 0.0                  # estimates of the calls in flight

    # ----- session -------------------------------------------------------------------------------------------------
    def open_session(self) -> tuple[str, int]:
        """(session id, first round to run): the latest session continued, or a new one."""
        latest = None if self.opts.new_session else self.log.latest_session()
        if latest is not None:
            done = self.log.last_round(latest.id)
            if done < self.opts.rounds:
                self.log.update_session(latest.id, status="running", model=self.opts.model,
                                        rounds=self.opts.rounds, config=self._config())
                spent, _ = self.log.spent(latest.id)
                if latest.model != self.opts.model:
                    self.echo(f"note: session {latest.id} used {latest.model}; continuing with {self.opts.model}")
                self.echo(f"resuming session {latest.id} at round {done + 1} of {self.opts.rounds} "
                          f"({done} round(s) recorded, ${spent.cost_usd:.4f} spent so far)")
                return latest.id, done + 1
            return latest.id, done + 1
        sid = self.log.new_session(self.opts.model, self.opts.rounds, self._config())
        self.echo(f"new discovery session {sid}: {self.opts.rounds} round(s) with {self.opts.model} "
                  f"via {self.explorer.endpoint}"
                  + (f", {self.opts.explorers} explorers per round" if self.opts.explorers > 1 else ""))
        return sid, 1

    def _config(self) -> dict[str, Any]:
        return {**self.opts.config(), "endpoint": self.explorer.endpoint}

    def run(self) -> SessionOutcome:
        sid, first = self.open_session()
        if first > self.opts.rounds:
            return SessionOutcome(sid, "nothing-to-do", first, first - 1,
                                  f"session {sid} already has {first - 1} round(s); pass --new to start another")
        self._system = [{"type": "text", "text": system_prompt(self.svc, self.opts.rounds, self.limits),
                         "cache_control": {"type": "ephemeral"}}]
        self._fixed_chars = len(orjson.dumps(self._system)) + len(orjson.dumps(self._tool_defs))
        status, note = "failed", ""
        try:
            for r in range(first, self.opts.rounds + 1):
                try:
                    self.run_round(sid, r)
                except BudgetStop as e:
                    status, note = "budget", str(e)
                    self.echo(f"budget: {e}")
                    break
            else:
                status = "done"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except ExplorerError as e:
            done = self.log.last_round(sid)
            saved = f"rounds 1–{done} are saved" if done else "no round was completed yet"
            raise ExplorerError(f"{e} ({saved}; run the same command again to continue)") from None
        finally:
            self.log.update_session(sid, status=status)
        return SessionOutcome(sid, status, first, self.log.last_round(sid), note)

    # ----- one round -----------------------------------------------------------------------------------------------
    def run_round(self, sid: str, r: int) -> DiscoveryRound:
        started = time.time()
        spent, _ = self.log.spent(sid)
        budget = None
        if self.opts.budget_usd is not None:
            budget = f"Budget: ${spent.cost_usd:.2f} of ${self.opts.budget_usd:.2f} spent."
        brief = round_brief(self.svc, self.log, sid, r, self.opts.rounds, self.limits, top_k=self.opts.top_k,
                            budget=budget, max_chars=self.opts.brief_chars)
        n = self.opts.explorers
        states = [RoundState(explorer=k) for k in range(1, n + 1)]
        self.echo(f"round {r}/{self.opts.rounds}: asking {self.opts.model}"
                  + (f" ({n} explorers in parallel)…" if n > 1 else "…"))
        if n == 1:  # in the main thread, so that Ctrl-C reaches the call in flight at once
            self._explore(sid, r, brief, states[0])
        else:
            with ThreadPoolExecutor(n, thread_name_prefix="explorer") as pool:
                for fut in [pool.submit(self._explore, sid, r, brief, st) for st in states]:
                    fut.result()
        stops = [st.budget_stop for st in states if st.budget_stop is not None]
        if stops and all(st.turns == 0 for st in states):
            raise stops[0]
        row = self._finish_round(sid, r, states, started, "partial" if stops else "done")
        if stops:
            raise stops[0]
        return row

    def _explore(self, sid: str, r: int, brief: str, st: RoundState) -> None:
        """One explorer's conversation of a round; what it did is left in `st`."""
        first: list[dict[str, Any]] = [{"type": "text", "text": brief}]
        if self.opts.explorers > 1:
            first.append({"type": "text", "text": PEERS.format(k=st.explorer, n=self.opts.explorers)})
        messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
        try:
            st.ended = self._converse(sid, r, st, messages)
        except BudgetStop as e:
            st.budget_stop, st.ended = e, f"stopped by the budget cap: {e}"

    def _say(self, st: RoundState, line: str) -> None:
        self.echo(line if self.opts.explorers == 1 else f"  [explorer {st.explorer}]{line[1:]}")

    def _converse(self, sid: str, r: int, st: RoundState, messages: list[dict[str, Any]]) -> str:
        """The tool loop of one conversation; returns why it ended."""
        while True:
            if st.turns >= self.opts.max_turns:
                return f"reply limit ({self.opts.max_turns}) reached"
            reserved = self._reserve(sid, st, messages)
            try:
                reply = self.explorer.create(system=self._system, tools=self._tool_defs,
                                             messages=_cache_last(messages), max_tokens=self.opts.max_tokens)
                msg = reply.message
                usage = self._usage(msg)
                self.log.record_call(DiscoveryCall(sid, r, self.opts.model, msg.stop_reason, usage, reply.seconds,
                                                   reply.retries))
            finally:
                with self._budget_lock:
                    self._reserved -= reserved
            st.turns += 1
            st.last_prompt = usage.prompt_tokens
            st.chars_at_last = self._chars(messages)
            blocks = [_as_param(b) for b in msg.content]
            text = "".join(getattr(b, "text", "") for b in msg.content if b.type == "text").strip()
            if text:
                st.texts.append(text)
            if blocks:
                messages.append({"role": "assistant", "content": blocks})
            tool_uses = [b for b in msg.content if b.type == "tool_use"]
            if msg.stop_reason == "max_tokens":
                st.cutoffs += 1
                self._say(st, f"  reply cut off at max_tokens ({self.opts.max_tokens})")
                results = [_result(tu.id, CUT_TOOL, True) for tu in tool_uses]
                if st.cutoffs > self.opts.max_continuations:
                    return f"cut off by max_tokens {st.cutoffs} times in a row"
                _add_user(messages, results + [{"type": "text", "text": CONTINUE}])
                continue
            st.cutoffs = 0
            if tool_uses:
                results = [self._tool(sid, r, st, tu) for tu in tool_uses]
                if st.turns == self.opts.max_turns - 1:
                    results.append({"type": "text", "text": LAST_TURN})
                _add_user(messages, results)
                continue
            if msg.stop_reason == "pause_turn":
                continue
            return f"the explorer ended its turn ({msg.stop_reason})"

    def _tool(self, sid: str, r: int, st: RoundState, tu: Any) -> dict[str, Any]:
        if st.tool_calls >= self.opts.max_tool_calls:
            return _result(tu.id, LIMIT.format(n=self.opts.max_tool_calls), True)
        st.tool_calls += 1
        out = self._call(tu.name, tu.input)
        run = self._run_of(out.run_id)
        if run is not None:
            st.runs.append(run)
            self.log.tag_run(run, sid, r)
        first = out.text.splitlines()[0] if out.text else ""
        self._say(st, f"  {tu.name}{' ERROR' if out.is_error else ''}: {first[:110]}")
        return _result(tu.id, out.text or "(no output)", out.is_error)

    def _call(self, name: str, arguments: Any) -> Any:
        if name != "run_controller":
            return self.toolbox.call(name, arguments)
        with self._eval_guard:
            return self.toolbox.call(name, arguments)

    @staticmethod
    def _run_of(run_id: str | None) -> int | None:
        if not run_id:
            return None
        try:
            return parse_run_id(run_id)
        except RunStoreError:
            return None

    def _finish_round(self, sid: str, r: int, states: list[RoundState], started: float, status: str
                      ) -> DiscoveryRound:
        outcomes = [self._outcome(r, st) for st in states]
        cands = list(dict.fromkeys(o.candidate for o in outcomes if o.candidate is not None))
        cand, how = None, "none"
        if len(cands) == 1:
            cand = cands[0]
        elif cands:
            sel = select_final(self.svc, list(cands), self.opts.select)
            cand = sel.run_id if sel is not None else cands[0]
        if cand is not None:
            how = next(o.how for o in outcomes if o.candidate == cand)
            if len(outcomes) > 1:
                how = f"explorer {next(o.explorer for o in outcomes if o.candidate == cand)}: {how}"
        ended = "; ".join(f"explorer {o.explorer}: {o.ended}" for o in outcomes) if len(outcomes) > 1 \
            else outcomes[0].ended
        row = self.log.complete_round(sid, r, status=status, candidate=cand, how=how, started=started,
                                      explorers=outcomes, note=ended)
        total, _ = self.log.spent(sid)
        if len(outcomes) > 1:
            for o in outcomes:
                self.echo(f"  explorer {o.explorer}: {self._describe(o.candidate, o.how)} · {o.turns} replies, "
                          f"{o.tool_calls} tool calls, {len(o.runs)} run(s)")
        self.echo(f"round {r}/{self.opts.rounds} {status}: {self._describe(cand, how)} · {row.turns} replies, "
                  f"{row.tool_calls} tool calls · ${row.usage.cost_usd:.4f} (total ${total.cost_usd:.4f})")
        return row

    def _describe(self, cand: int | None, how: str) -> str:
        if cand is None:
            return "no candidate"
        run = self.svc.store.run(cand, with_source=False)
        best = run.summary.best if run.status == "ok" and run.summary is not None else None
        return f"{run.run_id} '{run.name[:30]}' ({how})" + (
            f" {best.accuracy:.2f}% at {best.avg_tokens:,.0f} tokens (β={best.beta:g})" if best
            else f" {run.status}")

    def _outcome(self, r: int, st: RoundState) -> ExplorerOutcome:
        """An explorer's candidate (completed to the full β grid) and its closing words."""
        cand, how = self._pick(st)
        if cand is None and not st.runs and st.texts:
            code = _code_block(st.texts)
            if code is not None:
                out = self._call("run_controller", {"code": code, "name": f"round {r} reply"})
                run = self._run_of(out.run_id)
                if run is not None:
                    cand, how = run, "from-reply"
                    st.runs.append(run)
        if cand is not None:
            full = self._complete(cand)
            if full != cand:
                how = f"{how}, completed from r{cand:04d}"
                cand = full
                st.runs.append(full)
        closing = st.texts[-1] if st.texts else ""
        lesson = FINAL_LINE_RE.sub("", closing).strip()
        if len(lesson) > LESSON_CHARS:
            lesson = lesson[: LESSON_CHARS - 1] + "…"
        return ExplorerOutcome(st.explorer, cand, how, st.turns, st.tool_calls, list(dict.fromkeys(st.runs)),
                               lesson, st.ended)

    def _complete(self, run_id: int) -> int:
        """The run itself if it covers the study's full β grid on every search environment; otherwise its source
        evaluated on the full grid (a recorded full-grid run of the same source is reused)."""
        run = self.svc.store.run(run_id)
        study = self.svc.study
        if run.status != "ok" or (is_full_grid(run.betas, study.betas) and set(study.search_names) <= set(run.envs)):
            return run_id
        self.echo(f"  completing {run.run_id} (β {', '.join(f'{b:g}' for b in run.betas)} on {len(run.envs)} "
                  f"environment(s)) to the full β grid on every search environment…")
        out = self._call("run_controller", {"code": run.source, "name": run.name})
        full = self._run_of(out.run_id)
        if full is None:
            self.echo(f"  could not complete {run.run_id}: {out.text.splitlines()[0][:160] if out.text else '?'}")
            return run_id
        return full

    def _pick(self, st: RoundState) -> tuple[int | None, str]:
        runs = list(dict.fromkeys(st.runs))
        for text in reversed(st.texts):
            found = FINAL_RE.findall(text)
            if found:
                named = int(found[-1])
                if named in runs:
                    return named, "named"
                break
        scored = []
        for rid in runs:
            run = self.svc.store.run(rid, with_source=False)
            if run.status == "ok" and run.summary is not None:
                full = is_full_grid(run.betas, self.svc.study.betas)
                scored.append((not full, -run.summary.best.accuracy, run.summary.best.avg_tokens, rid))
        if scored:
            return min(scored)[3], "best-of-round"
        if runs:
            return runs[-1], "last-run"
        return None, "none"

    # ----- money ---------------------------------------------------------------------------------------------------
    def _usage(self, msg: Any) -> Usage:
        u = msg.usage
        usage = Usage(int(getattr(u, "input_tokens", 0) or 0), int(getattr(u, "output_tokens", 0) or 0),
                      int(getattr(u, "cache_creation_input_tokens", 0) or 0),
                      int(getattr(u, "cache_read_input_tokens", 0) or 0))
        return Usage(usage.input_tokens, usage.output_tokens, usage.cache_write_tokens, usage.cache_read_tokens,
                     self.prices.cost(self.opts.model, usage))

    def _chars(self, messages: list[dict[str, Any]]) -> int:
        return self._fixed_chars + len(orjson.dumps(messages))

    def reply_reserve(self, sid: str) -> tuple[int, str]:
        """(reply tokens a call reserves, where that number comes from)."""
        cap = self.opts.max_tokens
        if self.opts.expected_reply_tokens is not None:
            return min(cap, self.opts.expected_reply_tokens), "--expected-reply-tokens"
        seen = self.log.max_output_tokens(sid)
        if seen is None:
            return min(cap, FIRST_REPLY_TOKENS), "before the first reply"
        return min(cap, seen), "the longest reply so far"

    def _reserve(self, sid: str, st: RoundState, messages: list[dict[str, Any]]) -> float:
        """Reserve the next call's estimated cost under the budget (0 without one); raises BudgetStop if it
        does not fit beside what is spent and what the calls in flight reserved."""
        cap = self.opts.budget_usd
        if cap is None:
            return 0.0
        chars = self._chars(messages)
        if st.last_prompt is None:
            prompt = estimate_tokens(chars)
        else:
            prompt = st.last_prompt + estimate_tokens(max(0, chars - st.chars_at_last))
        reply, why = self.reply_reserve(sid)
        estimate = self.prices.estimate(self.opts.model, prompt, reply)
        with self._budget_lock:
            spent = self.log.spent(sid)[0].cost_usd
            if spent + self._reserved + estimate > cap:
                flight = f" and ${self._reserved:.4f} reserved by calls in flight" if self._reserved else ""
                raise BudgetStop(f"the next call (estimated at up to ${estimate:.4f}: ~{prompt:,} prompt tokens at "
                                 f"the dearest input rate, a {reply:,}-token reply ({why})) could take the spend "
                                 f"from ${spent:.4f}{flight} past the cap of ${cap:.2f}")
            self._reserved += estimate
        return estimate


# ----- message helpers -------------------------------------------------------------------------------------------
def _as_param(block: Any) -> dict[str, Any]:
    """A response content block as a request content block."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name,
                "input": block.input if isinstance(block.input, dict) else {}}
    return block.model_dump(mode="json", exclude_none=True)  # thinking blocks etc. go back unchanged


def _result(tool_use_id: str, text: str, is_error: bool) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": text, "is_error": is_error}


def _add_user(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    if messages and messages[-1]["role"] == "user":
        messages[-1]["content"] = list(messages[-1]["content"]) + blocks
    else:
        messages.append({"role": "user", "content": blocks})


def _cache_last(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy with a prompt-cache breakpoint on the last block, so each turn reads the previous turns from cache."""
    out = [dict(m) for m in messages]
    last = out[-1]
    content = [dict(b) for b in last["content"]]
    if content:
        content[-1]["cache_control"] = {"type": "ephemeral"}
    last["content"] = content
    return out


def _code_block(texts: list[str]) -> str | None:
    for text in reversed(texts):
        blocks = [b for b in CODE_RE.findall(text) if "def solve" in b]
        if blocks:
            return blocks[-1]
    return None
