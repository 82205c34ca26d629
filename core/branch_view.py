"""One episode seen branch by branch: what each opened branch cost, how far it got, what it answered along the
way and how it ended; and the episode's action list with finishes and answer changes marked.

Input is an episode's action events as `TracedReplayQuestion` records them — `(op, branch, cost, revealed answer
or None)` — plus, per branch in opening order, how many steps it has (`n_probes + 1`; `episode_branch_steps`
reads them from the environment). The events carry no "finished" flag and a cost does not tell it either: a
final step costs max(0, T − nΔ), which may be more than Δ, exactly Δ, or 0 (and stepping a finished branch again
costs 0 too). So a branch is *finished* here when the steps the events took on it reach its step count (or it was
read in full); the replay checks that every later step of it was free, and raises ValueError when the events
cannot come from branches of those lengths.

The answer history of a branch is the answer known at each depth 1..steps, run-length compressed
(`ERR×3 7×2 601×14`); a depth whose answer the episode never revealed (the action API's `branch`/`extend`
without a `probe` there) shows as `·`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from core.stops import StopReason, stop_reason

if TYPE_CHECKING:
    from core.environment import ReplayEnvironment

Event = tuple[str, int, int, str | None]
"""One action: (op, branch index, tokens charged, revealed answer or None)."""

PAGE_CHARS = 8_000
"""Default size limit of one rendered page, in characters."""

_OPS = frozenset({"open", "step", "read", "branch", "extend", "probe", "prune"})
UNREVEALED = "·"
"""How a depth whose answer was never revealed is shown in an answer history."""


class BranchStatus(StrEnum):
    """How a branch ended up when the episode stopped."""

    FINISHED = "finished"
    """Stepped to its final answer (it may have been pruned afterwards; see `BranchRow.pruned`)."""
    PRUNED = "pruned"
    """Pruned before it finished."""
    RUNNING = "running"
    """Left running: neither finished nor pruned when the controller answered."""
    READ = "read"
    """Read in full with `get_new_branch_final_answer` (all its tokens at once)."""


@dataclass(frozen=True)
class AnswerRun:
    """A run of consecutive depths of one branch giving the same answer."""

    answer: str | None
    """The answer (None: not revealed at these depths)."""
    count: int
    """How many consecutive depths."""


@dataclass(frozen=True)
class BranchRow:
    """One opened branch of an episode."""

    branch: int
    """Branch index, which is its opening order (0 = opened first); full reads open branches too."""
    finish_order: int | None
    """1-based rank among the branches that finished (full reads included) by when they finished; None if it
    did not finish."""
    tokens: int
    """Tokens charged to this branch: its steps, probes and full read."""
    steps: int
    """Steps it took (intervals generated, final step included); a full read counts all the branch's steps."""
    final_answer: str | None
    """Its final answer, if the episode revealed it (finishing step, a probe after finishing, or a full read)."""
    status: BranchStatus
    """finished / pruned / running (left running) / read (in full)."""
    pruned: bool
    """Whether PRUNE was called on it (also true for a branch pruned after it finished)."""
    history: tuple[AnswerRun, ...]
    """The answer known at each depth 1..steps, run-length compressed; a full read has one run, its final answer."""
    opened_at: int
    """Index in the event list of the action that opened it."""
    finished_at: int | None
    """Index in the event list of the action that finished it (None if it did not finish)."""


@dataclass(frozen=True)
class ActionRow:
    """One action of an episode, with what the replay of the events knows about it."""

    index: int
    """Position in the event list (0-based)."""
    op: str
    """open, step, read, branch, extend, probe or prune."""
    branch: int
    """Branch index (opening order)."""
    cost: int
    """Tokens charged."""
    answer: str | None
    """Answer it revealed (None: none)."""
    depth: int
    """The branch's steps taken after this action."""
    finished: bool
    """Whether this action finished the branch (its final step, or a full read)."""
    changed: bool
    """Whether it revealed an answer different from the last one revealed on this branch (False for the first)."""


@dataclass(frozen=True)
class BranchView:
    """An episode branch by branch."""

    n_actions: int
    """Actions in the episode."""
    pool_size: int
    """Branches the question has."""
    ceiling: int | None
    """The study's ceiling on branches per question (None: not given)."""
    answer: str | None
    """The controller's answer."""
    correct: bool | None
    """Whether the answer is the gold one (None: not known to the caller)."""
    tokens: int
    """Tokens the episode spent (sum of the action costs)."""
    stop: StopReason
    """Why it stopped opening branches (`core.stops`)."""
    rows: tuple[BranchRow, ...]
    """One row per opened branch, in opening order."""

    @property
    def status_counts(self) -> dict[BranchStatus, int]:
        """Branches per status (all four keys)."""
        c = Counter(r.status for r in self.rows)
        return {s: c.get(s, 0) for s in BranchStatus}

    @property
    def finished_answers(self) -> list[tuple[str, int]]:
        """Revealed final answers of finished or read branches with their counts, most common first."""
        return Counter(r.final_answer for r in self.rows if r.final_answer is not None).most_common()


# ----- replaying the events -------------------------------------------------------------------------------------
@dataclass
class _Branch:
    opened_at: int
    n_steps: int | None
    depth: int = 0
    tokens: int = 0
    pruned: bool = False
    read: bool = False
    finished_at: int | None = None
    last_answer: str | None = None
    revealed: dict[int, str] | None = None


def _replay(events: Sequence[Event], branch_steps: Sequence[int | None]) -> tuple[list[ActionRow], list[_Branch]]:
    branches: list[_Branch] = []
    rows: list[ActionRow] = []
    for k, ev in enumerate(events):
        try:
            op, i, cost, answer = ev
        except (TypeError, ValueError):
            raise ValueError(f"event {k} is not (op, branch, cost, answer): {ev!r:.80}") from None
        if op not in _OPS:
            raise ValueError(f"event {k}: unknown op {op!r}")
        if not isinstance(cost, int) or cost < 0:
            raise ValueError(f"event {k}: cost must be a non-negative int, got {cost!r}")
        finished = changed = False
        if op in ("open", "branch", "read"):
            if i != len(branches):
                raise ValueError(f"event {k}: {op} of branch {i}, but the next fresh branch is {len(branches)}")
            if i >= len(branch_steps):
                raise ValueError(f"event {k}: branch {i} opened but only {len(branch_steps)} branch lengths given")
            n = branch_steps[i]
            b = _Branch(opened_at=k, n_steps=n, revealed={})
            branches.append(b)
            b.tokens += cost
            if op == "read":
                b.read, b.depth, b.finished_at, finished = True, n or 0, k, True
                b.last_answer = answer
            else:
                b.depth = 1
                if n == 1:
                    b.finished_at, finished = k, True
                if answer is not None:
                    b.revealed[1] = answer  # type: ignore[index]
                    b.last_answer = answer
        else:
            if not 0 <= i < len(branches):
                raise ValueError(f"event {k}: {op} of branch {i}, which is not open ({len(branches)} opened)")
            b = branches[i]
            if b.read or (b.pruned and op != "prune"):
                raise ValueError(f"event {k}: {op} of branch {i}, which was {'read' if b.read else 'pruned'}")
            b.tokens += cost
            done = b.finished_at is not None
            if op in ("step", "extend"):
                if done:
                    if cost:
                        raise ValueError(f"event {k}: {op} of finished branch {i} cost {cost}; the events do not "
                                         f"match a branch of {b.n_steps} steps")
                else:
                    b.depth += 1
                    if b.n_steps is not None and b.depth >= b.n_steps:
                        b.finished_at, finished = k, True
            elif op == "prune":
                b.pruned = True
            if answer is not None and op != "prune":
                if b.last_answer is not None and answer != b.last_answer:
                    changed = True
                b.last_answer = answer
                b.revealed.setdefault(b.depth, answer)  # type: ignore[union-attr]
        rows.append(ActionRow(k, op, i, cost, answer, b.depth, finished, changed))
    return rows, branches


def action_rows(events: Sequence[Event], branch_steps: Sequence[int | None]) -> list[ActionRow]:
    """Every action with its depth, whether it finished its branch and whether it changed the branch's answer.

    `branch_steps[i]`: steps of branch i (opening order), None where unknown (such a branch never counts as
    finished). Raises ValueError when the events are inconsistent with each other or with those lengths."""
    return _replay(events, branch_steps)[0]


def filter_actions(rows: Sequence[ActionRow], *, finishes: bool = False, changes: bool = False) -> list[ActionRow]:
    """The rows that finished a branch (`finishes`) and/or changed a branch's answer (`changes`); all rows when
    neither is asked for."""
    if not finishes and not changes:
        return list(rows)
    return [r for r in rows if (finishes and r.finished) or (changes and r.changed)]


def answer_runs(answers: Sequence[str | None]) -> tuple[AnswerRun, ...]:
    """Run-length compression of a sequence of answers."""
    runs: list[AnswerRun] = []
    for a in answers:
        if runs and runs[-1].answer == a:
            runs[-1] = AnswerRun(a, runs[-1].count + 1)
        else:
            runs.append(AnswerRun(a, 1))
    return tuple(runs)


def branch_view(
    events: Sequence[Event],
    branch_steps: Sequence[int | None],
    *,
    pool_size: int | None = None,
    ceiling: int | None = None,
    own_budget: int | None = None,
    answer: str | None = None,
    correct: bool | None = None,
) -> BranchView:
    """The branch view of one episode.

    `branch_steps`: steps per branch in opening order (see `episode_branch_steps`); `pool_size`: branches the
    question has (default `len(branch_steps)`); `ceiling`: the study's ceiling on branches per question;
    `own_budget`: the controller's own branch cap where known (`core.stops.own_branch_budget`); `answer`: what the
    controller returned; `correct`: whether that is the gold answer, if the caller knows."""
    _, states = _replay(events, branch_steps)
    pool = len(branch_steps) if pool_size is None else int(pool_size)
    finish_rank = {id(b): r + 1 for r, b in enumerate(sorted(
        (b for b in states if b.finished_at is not None), key=lambda b: b.finished_at))}  # type: ignore[arg-type,return-value]
    rows = []
    for i, b in enumerate(states):
        if b.read:
            history = answer_runs([b.last_answer])
            final = b.last_answer
            status = BranchStatus.READ
        else:
            revealed = b.revealed or {}
            history = answer_runs([revealed.get(d) for d in range(1, b.depth + 1)])
            final = revealed.get(b.n_steps) if b.finished_at is not None and b.n_steps else None
            status = (BranchStatus.FINISHED if b.finished_at is not None
                      else BranchStatus.PRUNED if b.pruned else BranchStatus.RUNNING)
        rows.append(BranchRow(branch=i, finish_order=finish_rank.get(id(b)), tokens=b.tokens, steps=b.depth,
                              final_answer=final, status=status, pruned=b.pruned, history=history,
                              opened_at=b.opened_at, finished_at=b.finished_at))
    return BranchView(
        n_actions=len(events), pool_size=pool, ceiling=ceiling, answer=answer, correct=correct,
        tokens=sum(int(e[2]) for e in events),
        stop=stop_reason(len(states), pool, ceiling=ceiling, own_budget=own_budget), rows=tuple(rows),
    )


# ----- from an environment ----------------------------------------------------------------------------------------
def episode_branch_steps(env: ReplayEnvironment, q: int, seed: int | None) -> list[int | None]:
    """Steps of each branch of question q in the order seed `seed` presents them (`n_probes + 1`); None for a
    partial branch of a recorded live run (its end was never recorded)."""
    from core.environment import shuffle_order

    n = env.n_branches(q)
    order = list(range(n)) if seed is None or env.stored_order else shuffle_order(n, seed)
    lo = int(env.branch_offsets[q])
    nprobes = env.branch_nprobes
    partial = env.partial_branches(q)
    return [None if b in partial else int(nprobes[lo + b]) + 1 for b in order]


def episode_branch_view(env: ReplayEnvironment, q: int, seed: int | None, events: Sequence[Event],
                        answer: str | None, *, ceiling: int | None = None,
                        own_budget: int | None = None) -> BranchView:
    """`branch_view` of episode (seed, q) of `env`, with correctness when the environment holds gold answers."""
    gold = None if env.gold_answers is None else env.gold_answers[q]
    correct = None if env.gold_answers is None else (answer is not None and answer == gold)
    return branch_view(events, episode_branch_steps(env, q, seed), pool_size=env.n_branches(q), ceiling=ceiling,
                       own_budget=own_budget, answer=answer, correct=correct)


# ----- rendering ----------------------------------------------------------------------------------------------------
def format_answer(answer: str | None, width: int = 12) -> str:
    """An answer as one short token: `·` for unrevealed, `""` for empty, whitespace shown as `_`, long ones cut
    with `…`."""
    if answer is None:
        return UNREVEALED
    if answer == "":
        return '""'
    a = "_".join(answer.split()) if any(c.isspace() for c in answer) else answer
    return a if len(a) <= width else a[: max(1, width - 1)] + "…"


def format_runs(runs: Sequence[AnswerRun], width: int | None = None, answer_width: int = 12) -> str:
    """`ERR×3 7×2 601×14` (a run of one shows without `×1`). With `width`, the text is at most `width` characters:
    middle runs are elided as `…+k…` (k runs left out), keeping the first run and as many of the last runs as fit
    (the first run too goes when even that does not fit)."""
    parts = [format_answer(r.answer, answer_width) + (f"×{r.count}" if r.count > 1 else "") for r in runs]
    text = " ".join(parts)
    if width is None or len(text) <= width:
        return text

    def build(head: list[str], tail: list[str]) -> str:
        elided = len(parts) - len(head) - len(tail)
        return " ".join([*head, *([f"…+{elided}…"] if elided else []), *tail])

    for head in (parts[:1], []):
        tail: list[str] = []
        for p in reversed(parts[len(head):]):
            if len(build(head, [p, *tail])) > width:
                break
            tail.insert(0, p)
        if tail:  # every candidate was checked against width
            return build(head, tail)
    last = build([], parts[-1:])
    return last[: max(0, width - 1)] + "…" if width > 0 else ""


def _status_text(r: BranchRow) -> str:
    if r.status is BranchStatus.FINISHED and r.pruned:
        return "fin+prn"
    return r.status.value


def render_branch_view(view: BranchView, *, max_chars: int = PAGE_CHARS, page: int = 1) -> str:
    """The branch view as text of at most `max_chars` characters: a header, one line per branch, a legend.

    Answer histories are shortened to fit; if even short histories do not fit, the rows are paged (the last line
    says so) and `page` picks one."""
    sc = view.status_counts
    verdict = "" if view.correct is None else (" (correct)" if view.correct else " (wrong)")
    votes = " ".join(f"{format_answer(a, 10)}×{n}" if n > 1 else format_answer(a, 10)
                     for a, n in view.finished_answers[:8])
    if len(view.finished_answers) > 8:
        votes += f" …+{len(view.finished_answers) - 8}"
    head = [
        f"Branch view · {view.n_actions:,} actions · {view.tokens:,} tokens · answer "
        f"{format_answer(view.answer, 24)}{verdict}",
        f"opened {len(view.rows)} of {view.pool_size} branches"
        + (f" (ceiling {view.ceiling})" if view.ceiling is not None else "") + f" · stop: {view.stop.text()}",
        f"finished {sc[BranchStatus.FINISHED]} · pruned {sc[BranchStatus.PRUNED]} · left running "
        f"{sc[BranchStatus.RUNNING]} · read in full {sc[BranchStatus.READ]} · final answers: {votes or 'none'}",
        f"{'br':>3} {'fin':>3} {'tokens':>9} {'stp':>4} {'status':<8} {'final':<10} answers by step",
    ]
    legend = ("br = opening order, fin = finish order, stp = steps taken; answers by step: a×n = n steps "
              f"answering a, {UNREVEALED} = not revealed, …+k… = k runs left out")
    prefix = 3 + 1 + 3 + 1 + 9 + 1 + 4 + 1 + 8 + 1 + 10 + 1
    fixed = sum(len(h) + 1 for h in head) + len(legend) + 1
    n = len(view.rows)
    min_hist = 14
    pager_line = 60
    if n == 0:
        return "\n".join(head[:3] + ["(no branch opened)"])[:max_chars]
    per_row = (max_chars - fixed) // n - 1
    if per_row >= prefix + min_hist:
        rows_per_page, hist_width = n, min(per_row - prefix, 400)
        pages = 1
    else:
        rows_per_page = max(1, (max_chars - fixed - pager_line) // (prefix + min_hist + 1))
        hist_width = min_hist
        pages = -(-n // rows_per_page)
    if not 1 <= page <= pages:
        raise ValueError(f"page {page} out of range 1..{pages}")
    lines = list(head)
    for r in view.rows[(page - 1) * rows_per_page: page * rows_per_page]:
        fin = "-" if r.finish_order is None else str(r.finish_order)
        final = format_answer(r.final_answer, 10) if r.final_answer is not None else "-"
        lines.append(f"{r.branch:>3} {fin:>3} {r.tokens:>9,} {r.steps:>4} {_status_text(r):<8} {final:<10} "
                     + format_runs(r.history, hist_width, answer_width=10))
    lines.append(legend)
    if pages > 1:
        lines.append(f"page {page}/{pages} ({n} branches, {rows_per_page} a page): pass page=N for the others")
    return "\n".join(lines)


def render_actions(rows: Sequence[ActionRow], *, max_chars: int = PAGE_CHARS, page: int = 1) -> str:
    """Action rows as text pages of at most `max_chars` characters (`#index op branch cost answer flags`, where the
    flags are `fin` for a finishing action and `chg` for an answer change)."""
    header = f"{'#':>5} {'op':<6} {'br':>3} {'cost':>6} {'d':>3} answer flags"
    body = []
    for r in rows:
        flags = " ".join(f for f, on in (("fin", r.finished), ("chg", r.changed)) if on)
        ans = "" if r.answer is None else format_answer(r.answer, 16)
        body.append(f"{r.index:>5} {r.op:<6} {r.branch:>3} {r.cost:>6,} {r.depth:>3} {ans} {flags}".rstrip())
    budget = max_chars - len(header) - 1 - 80
    pages: list[list[str]] = [[]]
    used = 0
    for line in body:
        if used + len(line) + 1 > budget and pages[-1]:
            pages.append([])
            used = 0
        pages[-1].append(line)
        used += len(line) + 1
    if not 1 <= page <= len(pages):
        raise ValueError(f"page {page} out of range 1..{len(pages)}")
    out = [header, *pages[page - 1]]
    if len(pages) > 1:
        out.append(f"page {page}/{len(pages)} ({len(rows):,} actions): pass page=N for the others")
    return "\n".join(out)
