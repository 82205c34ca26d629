"""The unattended discovery loop: R rounds of propose → evaluate → read traces → submit, with an explorer model.

A round is one fresh conversation. It opens with `context.round_brief` (the record so far); the explorer calls the
study's tools (`toolbox`) as often as the round's limits allow, and ends its turn naming a run (`FINAL: r0012`).
The round's candidate is that run if this round evaluated it; otherwise the best-scoring run of the round; else
its last run; else a ```python block of the closing reply, evaluated by the loop. Then the round is written to
the run store in one transaction (`DiscoveryLog.complete_round`) — a completed round is durable.

How replies are handled:
* `tool_use` — every tool_use block gets a tool_result; malformed calls (input not an object, unknown tool,
  missing or bad arguments) get an `is_error` result and the round goes on.
* `max_tokens` — the reply was cut off: tool calls in it are not run (an `is_error` result says so) and the
  explorer is asked to continue briefly; after `max_continuations` cut-offs in a row the round ends.
* `pause_turn` — the conversation is sent back as is to let the model continue.
* `end_turn`, `stop_sequence`, `refusal` — the round ends.

Money: every response's usage (input, output, cache writes, cache reads) is priced and recorded at once. With a
budget, each call is preceded by a conservative estimate (`PriceTable.estimate`: the last call's prompt plus what
was appended since, at the dearest input rate, plus a full max_tokens reply); if spent + estimate would pass the
cap the loop stops before calling, records a partly done round as `partial`, and goes on to selection.

Resume: the session is the study's latest (`--new` starts another); it continues after its last recorded round.
A round cut short by a crash or Ctrl-C is redone from its start; its earlier calls stay on the bill.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from core.discovery.log import DiscoveryLog
from core.discovery.records import DiscoveryCall, DiscoveryRound, Usage
from core.discovery.service import DiscoveryService
from core.discovery.store import RunStoreError, parse_run_id
from core.errors import AutoTTSError
from mcp_server.discover.client import Explorer, ExplorerError
from mcp_server.discover.context import RoundLimits, round_brief, system_prompt
from mcp_server.discover.pricing import PriceTable, PricingError, estimate_tokens
from mcp_server.discover.toolbox import Toolbox

FINAL_RE = re.compile(r"FINAL[*\s]*[:=][*`\s]*r?0*(\d+)", re.IGNORECASE)
CODE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

CUT_TOOL = ("your reply was cut off by the max_tokens limit before this call was complete, so it was not run; send "
            "it again (shorter, e.g. less commentary)")
CONTINUE = ("(Your reply was cut off by the max_tokens limit.) Continue from where you stopped, briefly. Put code "
            "into a run_controller call rather than into the text.")
LAST_TURN = ("This is your last reply of this round: do not call tools; summarise in two or three sentences and end "
             "with the line FINAL: r… naming the run you submit.")
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
    max_turns: int = 12
    """Explorer replies (API calls) per round."""
    max_tool_calls: int = 16
    """Tool calls per round."""
    max_continuations: int = 2
    """Cut-off replies (stop_reason max_tokens) in a row before a round is ended."""
    top_k: int = 3
    """Candidates whose code, curve and trace digest the round brief shows."""
    new_session: bool = False

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "new_session"}


@dataclass
class RoundState:
    turns: int = 0
    tool_calls: int = 0
    cutoffs: int = 0
    runs: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    last_prompt: int | None = None
    chars_at_last: int = 0


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
        self.limits = RoundLimits(options.max_turns, options.max_tool_calls)
        if options.budget_usd is not None and prices.price(options.model) is None:
            raise PricingError(f"no price for model '{options.model}', so --budget-usd cannot be enforced: pass "
                               '--prices FILE with {"' + options.model + '": {"input": …, "output": …}} (USD per '
                               "million tokens)")
        self.toolbox = toolbox or Toolbox(svc)
        self._tool_defs = self.toolbox.definitions()
        self._system: list[dict[str, Any]] = []
        self._fixed_chars = 0

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
                  f"via {self.explorer.endpoint}")
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
        st = RoundState()
        spent, _ = self.log.spent(sid)
        budget = None
        if self.opts.budget_usd is not None:
            budget = f"Budget: ${spent.cost_usd:.2f} of ${self.opts.budget_usd:.2f} spent."
        brief = round_brief(self.svc, self.log, sid, r, self.opts.rounds, self.limits, top_k=self.opts.top_k,
                            budget=budget)
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": brief}]}]
        self.echo(f"round {r}/{self.opts.rounds}: asking {self.opts.model}…")
        status, note = "done", ""
        try:
            note = self._converse(sid, r, st, messages)
        except BudgetStop as e:
            if st.turns == 0:
                raise
            status, note = "partial", f"stopped by the budget cap: {e}"
            self._finish_round(sid, r, st, started, status, note)
            raise
        return self._finish_round(sid, r, st, started, status, note)

    def _converse(self, sid: str, r: int, st: RoundState, messages: list[dict[str, Any]]) -> str:
        """The tool loop of one round; returns why it ended."""
        while True:
            if st.turns >= self.opts.max_turns:
                return f"reply limit ({self.opts.max_turns}) reached"
            self._check_budget(sid, st, messages)
            reply = self.explorer.create(system=self._system, tools=self._tool_defs, messages=_cache_last(messages),
                                         max_tokens=self.opts.max_tokens)
            msg = reply.message
            usage = self._usage(msg)
            self.log.record_call(DiscoveryCall(sid, r, self.opts.model, msg.stop_reason, usage, reply.seconds,
                                               reply.retries))
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
                self.echo(f"  reply cut off at max_tokens ({self.opts.max_tokens})")
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
        out = self.toolbox.call(tu.name, tu.input)
        run = None
        if tu.name == "run_controller" and out.run_id:
            try:
                run = parse_run_id(out.run_id)
            except RunStoreError:
                run = None
        if run is not None:
            st.runs.append(run)
            self.log.tag_run(run, sid, r)
        first = out.text.splitlines()[0] if out.text else ""
        self.echo(f"  {tu.name}{' ERROR' if out.is_error else ''}: {first[:110]}")
        return _result(tu.id, out.text or "(no output)", out.is_error)

    def _finish_round(self, sid: str, r: int, st: RoundState, started: float, status: str, note: str
                      ) -> DiscoveryRound:
        cand, how = self._pick(st)
        if cand is None and not st.runs and st.texts:
            code = _code_block(st.texts)
            if code is not None:
                out = self.toolbox.call("run_controller", {"code": code, "name": f"round {r} reply"})
                if out.run_id:
                    cand, how = parse_run_id(out.run_id), "from-reply"
                    st.runs.append(cand)
        closing = st.texts[-1] if st.texts else ""
        full_note = note + (f" — {closing[:600]}" if closing else "")
        row = self.log.complete_round(sid, r, status=status, candidate=cand, how=how, started=started,
                                      turns=st.turns, tool_calls=st.tool_calls, note=full_note,
                                      run_ids=list(dict.fromkeys(st.runs)))
        total, _ = self.log.spent(sid)
        what = "no candidate"
        if cand is not None:
            run = self.svc.store.run(cand, with_source=False)
            best = run.summary.best if run.status == "ok" and run.summary is not None else None
            what = f"{run.run_id} '{run.name[:30]}' ({how})" + (
                f" {best.accuracy:.2f}% at {best.avg_tokens:,.0f} tokens (β={best.beta:g})" if best
                else f" {run.status}")
        self.echo(f"round {r}/{self.opts.rounds} {status}: {what} · {st.turns} replies, {st.tool_calls} tool calls · "
                  f"${row.usage.cost_usd:.4f} (total ${total.cost_usd:.4f})")
        return row

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
                scored.append((-run.summary.best.accuracy, run.summary.best.avg_tokens, rid))
        if scored:
            return min(scored)[2], "best-of-round"
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

    def _check_budget(self, sid: str, st: RoundState, messages: list[dict[str, Any]]) -> None:
        cap = self.opts.budget_usd
        if cap is None:
            return
        chars = self._chars(messages)
        if st.last_prompt is None:
            prompt = estimate_tokens(chars)
        else:
            prompt = st.last_prompt + estimate_tokens(max(0, chars - st.chars_at_last))
        estimate = self.prices.estimate(self.opts.model, prompt, self.opts.max_tokens)
        spent = self.log.spent(sid)[0].cost_usd
        if spent + estimate > cap:
            raise BudgetStop(f"the next call (estimated at up to ${estimate:.4f}: ~{prompt:,} prompt tokens, "
                             f"{self.opts.max_tokens:,} max output) could take the spend from ${spent:.4f} past the "
                             f"cap of ${cap:.2f}")


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
