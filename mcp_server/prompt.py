"""Texts the server hands to an agent: the `discover` prompt and the controller-format resource.

Written for this project from the replay specification; kept here (not in the server module) so the future
`autotts discover` loop can send the same brief.
"""

from __future__ import annotations

from core.discovery.study import Study
from mcp_server.checks import ALLOWED_TEXT, MAX_SOURCE_BYTES

EXAMPLE_CONTROLLER = '''\
"""Finish a few branches at a time and stop once their final answers agree with enough confidence."""

from core.primitives import beta_confidence, vote_stats


class ConfidentVote:
    def __init__(self, beta: float = 0.5):
        beta = min(1.0, max(0.0, float(beta)))
        self.width = 2 + round(6 * beta)          # branches kept running side by side
        self.max_branches = 4 + round(60 * beta)  # never above the 64-branch ceiling
        self.threshold = 0.80 + 0.19 * beta       # confidence needed to stop early

    def solve(self, question):
        running = []    # indices of opened, unfinished branches
        finished = []   # final answers, in the order branches finished
        opened = 0
        while True:
            while len(running) < self.width and opened < self.max_branches:
                try:
                    answer, i, done = question.probe_new()
                except ValueError:                # no fresh branch left
                    break
                opened += 1
                if done:
                    finished.append(answer)
                else:
                    running.append(i)
            if not running:
                break
            # one batch call steps every running branch (the same as probe_more on each, in one round trip)
            for i, (answer, done) in zip(list(running), question.probe_more_many(running)):
                if done:
                    running.remove(i)
                    finished.append(answer)
            winner, top1, top2 = vote_stats(finished)
            if winner is not None and len(finished) >= 2 and beta_confidence(top1, top2) >= self.threshold:
                return winner
        return vote_stats(finished)[0]
'''
"""A complete, valid candidate (tests run it); the format resource shows it."""


SCORING = """\
## How answers are scored
An answer is right when it is exactly the gold answer string: no normalisation, no numeric comparison
(`"0.5"` is not `"1/2"`, `" 7"` is not `"7"`). A probe answer such as "ERR" (what a model answers mid-thought
before it has one) is a string like any other: returned, it is simply wrong; it also counts as a vote in
`majority`/`vote_stats` unless you filter it out. None scores 0.

## What the results say
* run_controller — *Objective*: tokens your β curve needs to reach SC@64's search accuracy, interpolated between
  β points linearly in log tokens ("not reached" if no β reaches it), as % of SC@64's tokens; the same as % of
  what CMC's β curve needs; AUC = mean accuracy over log10 tokens 4 … 6.5 (the curve held flat beyond its end
  points). The leaderboard ranks full runs by the first (lower is better), runs that never reach SC@64 after
  them by AUC. *β table*: acc% and mean tokens per question averaged over the search environments, ± their
  standard error over seeds; *vs CMC* = accuracy minus CMC's at the same β, paired over seeds, "noise" when
  within 2 standard errors; *vs the baselines* = dominated or not, the accuracy gap to the baselines' frontier at
  the same tokens, and the token difference to the cheapest baseline at least as accurate. Differences of a few
  tenths of a point on tens of questions are usually noise: check with compare_runs.
* Quick runs (`seeds=`, `questions=`) are compared with the baselines on the same seeds and questions, labelled
  QUICK and never ranked with full runs. Each result gives wall and CPU time, episodes per second and the
  machine's load (a busy machine makes evaluations slower, never different).
* inspect_trace digest — acc% / sc64% = share of seeds right (yours / SC@64's); lost / won = seeds where SC@64
  was right and you wrong / the reverse; tokens, opened = means over seeds; max_open = most branches opened;
  stops = why episodes stopped opening branches: own stop (branches still allowed), own budget (reached your
  `self.max_branches`), ceiling (the study's), pool used up (every branch opened).
* inspect_trace episode (`question=`) — the branch view: per branch its opening order (br), finish order
  (fin), tokens, steps taken (stp), status (finished, pruned, running = left running when you answered, read =
  read in full) and its answers step by step run-length compressed (`ERR×3 7×2 601×14`; `·` = not revealed).
  A final step costs the branch's remaining tokens, which can be more or less than Δ. `view="actions"` lists
  the actions, `only="finishes"` / `"changes"` filters them.
* compare_runs(a, b) — per-question differences and paired t-tests over seeds of accuracy and tokens; b may be a
  built-in (cmc, one-batch, sc:n=64) to see where a run beats or loses to it.
Every result fits in 8,000 characters; longer ones say "page k/N" — pass `page=`.
"""
"""How runs are scored and how to read the tools' results (the format resource and autotts://study carry it)."""


def scoring_notes() -> str:
    """The scoring and column notes, as the study resource carries them."""
    return SCORING


def controller_format() -> str:
    """The controller-format resource: what a candidate module must look like."""
    return f"""\
# Writing a controller for autotts

A candidate is the source of ONE Python module, passed as the `code` argument of `run_controller`.

## Shape
* Define one class with a `solve(self, question)` method. Its constructor takes the single knob:
  `def __init__(self, beta: float = 0.5)` (a `config` dict with a "beta" key also works). If a module defines
  several classes with `solve`, name the one to use: `CONTROLLER = MyClass`.
* `solve` is called once per question with a fresh question object and returns the answer string, or None for
  "no answer" (None is legal and simply scores 0 for that question; any other non-string is an error).
* Every setting your controller uses must be a function of β alone (clamp β to [0, 1]). Larger β should buy
  accuracy with more tokens: mean tokens must never fall as β rises. run_controller checks this per environment.
* Make it deterministic: the same question must lead to the same actions. Use `random.Random(fixed_seed)` if you
  need randomness; unseeded randomness fails the integrity audit and the trace re-runs.
* Treat each `solve` call on its own: do not carry information from one question to the next.
* Imports: only {ALLOWED_TEXT}. The useful project helpers are in `core.primitives`: `majority(answers)`,
  `vote_counts(answers)`, `vote_stats(answers) -> (winner, top1, top2)` and `beta_confidence(top1, top2)`
  (P(p > 0.5) under Beta(top1+1, top2+1); cached, cheap). Ties go to the answer seen first.
* No files, network, subprocesses or introspection; the question's private attributes are off limits. The
  code runs in a sandbox with a time limit; source is limited to {MAX_SOURCE_BYTES // 1024} KB.

## The question object
Branches are pre-sampled reasoning traces of one model on one question, in a random order per seed. Opening
a branch and stepping it costs the tokens it would have generated; each step is one probe interval Δ (500
tokens), after which you see the answer the model would give if stopped there (a *probe*; often junk early on,
such as "ERR"). A branch's last step reveals its final answer and reports it finished; the last step costs only
the remaining tokens. Branch indices count from 0 in the order you open branches.

The paper's API:
| call | returns | cost |
|---|---|---|
| `question.probe_new()` | `(answer, branch_index, finished)` for a newly opened branch after its first interval | Δ (or the whole branch if it is that short) |
| `question.probe_more(i)` | `(answer, finished)` after one more interval of opened branch i | Δ, the remainder on the last step, 0 once finished |
| `question.get_new_branch_final_answer()` | the final answer of a new branch, read in full | the branch's total tokens |
| `question.get_seq_and_total_tokens()` | `(0, tokens_spent_so_far)` | 0 |

`probe_new` raises ValueError (and `get_new_branch_final_answer` IndexError) when no fresh branch is left;
`probe_more(i)` raises ValueError for an index that is not an opened, stepped branch.

Batch calls (use them: an evaluation runs several times faster, because every call that reveals something is
one round trip to the sandbox's parent, and a batch call is one round trip for all its branches):
`question.probe_new_many(n)` -> list of `(answer, branch_index, finished)`, `question.probe_more_many(indices)`
-> list of `(answer, finished)`, `question.extend_many(indices)` -> list of `finished`,
`question.get_new_branch_final_answers(n)` -> list of answers. Each gives exactly what the single call in a loop
would give (answers, costs and errors; all indices are checked before anything is stepped; the `_many(n)`
openers stop quietly when the pool runs out).

The step-by-step action API (same state, finer control): `question.branch()` opens a branch through its
first interval and returns its index without revealing anything; `question.extend(i)` continues it one interval
and returns whether it finished; `question.probe(i)` returns its current answer (free); `question.prune(i)`
retires it. Also `question.is_finished(i)`, `question.depth(i)`, `question.num_opened`,
`question.fresh_branches_left` and `question.probe_freq` (Δ).

Opening more than the study's ceiling of branches per question (64 by default: count probe_new, branch and
full reads) gets the run refused. Set `self.max_branches` in `__init__` by plain arithmetic of β (as the example
does) and inspect_trace can tell an episode that used up your own budget from one that stopped on its own.

{SCORING}
## Example (a complete, valid candidate)
```python
{EXAMPLE_CONTROLLER}```
"""


def discover_prompt(study: Study) -> str:
    """The `discover` prompt: the brief an agent starts a discovery session with."""
    envs = ", ".join(study.search_names)
    betas = ", ".join(f"{b:g}" for b in study.betas)
    return f"""\
You are designing a test-time-scaling controller for a reasoning LLM: the policy that decides, question by
question, how many reasoning branches to start, how far to run each one, when to look at what they currently
answer, and when to stop and commit to an answer. Good controllers reach the accuracy of heavy majority voting
while spending a fraction of its tokens.

## The environment
Everything is replayed offline from pre-generated data, so an evaluation is exact and cheap. For every
question of every environment there are up to 128 pre-sampled branches. Your controller sees a question object
and pays, in tokens, for everything it makes the model generate: opening a branch, continuing it by one probe
interval (500 tokens) to see its intermediate answer, or reading one in full. It never sees the gold answer.
Read the resource `autotts://controller-format` for the exact API and module format; in short:
`probe_new()` -> (answer, index, finished), `probe_more(i)` -> (answer, finished),
`get_new_branch_final_answer()` -> answer, plus the action API `branch()`, `extend(i)`, `probe(i)`, `prune(i)`.
Advance several branches per round with the batch calls (`probe_new_many(n)`, `probe_more_many(indices)`, …):
same results, and evaluations run several times faster. Helpers: `from core.primitives import majority, vote_stats, beta_confidence`.

This study's search environments: {envs}. Each evaluation runs {study.n_seeds} random branch orders (seeds) of
every question. Some further environments are held out; you cannot see or evaluate them, and they decide how
well your controller generalises, so do not tune to quirks of individual questions.

## The objective and the rules
1. Accuracy first, then tokens. A controller is judged as a curve: accuracy and mean tokens per question at
   each β of the grid [{betas}], averaged over the search environments, set against the baselines (SC@64
   majority voting, ASC, ESC, Parallel-Probe, and the CMC curve over the same β grid). The number to minimise:
   the tokens your curve needs to reach SC@64's accuracy, as % of SC@64's tokens (run_controller reports it,
   with the same against CMC's curve and an AUC; get_history ranks full runs by it).
2. One knob. The controller takes a single β in [0, 1] and derives every internal setting from it. Its token
   cost must rise (never fall) as β rises, on every environment: run_controller reports any violation.
3. At most {study.max_branches} branches per question; exceeding it gets the run refused.
4. No oracle use: decide only from what the question object has revealed. Do not touch private attributes,
   do not carry information across questions, and keep the controller deterministic. An audit re-runs episodes
   with the unrevealed data withheld; a controller whose actions change is refused.

## The tools
* `list_environments` — the search environments and the study's settings.
* `get_baselines` — the baselines' accuracy and tokens, per environment and averaged, and which lie on the
  frontier. Look at these first to know the target.
* `run_controller(code, name?, betas?, envs?, seeds?, questions?)` — evaluates your module (sandboxed) and
  records it. It returns a run id, the objective as numbers, per-β search averages with standard errors and
  their position against the baselines, per-environment numbers, the monotonicity check, timing, and for
  failures the error with the relevant traceback lines. Evaluations run one at a time; a full run can take a
  minute or more, so use `seeds=`, `questions=`, `betas=[...]` or `envs=[...]` for quick checks (labelled,
  never ranked).
* `inspect_trace(run_id, env?, beta?)` — a per-question digest: accuracy, tokens, branches opened, why each
  episode stopped, and where SC@64 was right but your controller wrong. Add `question=` (and `seed=`) for one
  episode branch by branch (`view="actions"` for its actions, `only="finishes"` or `"changes"`).
* `compare_runs(run_a, run_b, env?, beta?)` — per-question differences and whether the difference is noise; `run_b`
  may be a built-in (`cmc`, `one-batch`, `sc:n=64`), run on the same seeds.
* `get_history` — the leaderboard of every candidate so far; `get_controller(run_id)` — a candidate's source.
The resource `autotts://controller-format` says how answers are scored (exact strings) and what every column
of these results means.

## How to work
Start from a simple controller you understand, measure it, then study its failures with inspect_trace before
changing it: find questions where it stops too early on a wrong consensus or spends tokens where the vote was
already settled. Change one idea at a time, name runs after the idea, and keep the β schedule monotone. When you
finish, say which run you recommend and why, citing its numbers against the baselines.
"""
