"""A seeded generator of SYNTHETIC replay environments that resemble the AutoTTS paper's replay data.

Nothing produced here comes from a language model: every question, answer and token count is drawn from the
small generative model below. It exists so that the project has a bundled, redistributable demo environment
(`replay_data/demo.json.gz`) and realistic inputs for property tests; the paper's own data stays outside the
repository. Environments made here carry `metadata["synthetic"] = True` and say so in `metadata["description"]`.

Regenerate the bundled demo (its parameters are the defaults)::

    python -m core.synthetic replay_data/demo.json.gz --seed 0

What the real data looks like (measured once over the 12 paper environments, Qwen3 0.6B–8B × AIME24/AIME25/
HMMT25, 360 questions × 128 branches, probe interval 500, at most 80 probes; rounded):

* Per-question pass@1 (share of a question's 128 final answers equal to gold) is strongly U-shaped: about 27 % of
  questions are never answered right, 16 % are right in under 10 % of branches, 11 % in every branch and 14 % in
  90–99.9 %; the rest spread evenly in between (mean 0.41; the mean is 0.09–0.17 for 0.6B, 0.4–0.75 for 4B/8B).
* Branch tokens: quantiles 5/25/50/75/95 % ≈ 3.8k / 8.6k / 15k / 22k / 34k, maximum 41.5k; about 2.6 % of
  branches run past 40k (the generation cap; 76–80 probes, almost always wrong). Correct branches are shorter
  than wrong ones overall (median 9.3k vs 19.7k tokens), but mostly because easy questions are short: a question's
  median length is ≈ 19k when pass@1 < 0.7, 12k at 0.7–0.9, 10k at 0.9–0.999 and 5k when always right, and within a
  question the most popular wrong answer's branches are only ≈ 1.1–1.25× longer than the correct ones.
* Probes: `n ≈ (T − tail)/500` where the answer written after thinking stops gets no probes, so
  `T − 500·n` has quantiles 5/25/50/75/95 % ≈ −170 / 100 / 370 / 780 / 1630 (min −410, max 4.2k): in about
  15 % of branches T is LESS than 500·n. Median 29 probes per branch; no branch has zero probes.
* Probe answers converge toward the branch's final answer: agreement with the final answer by relative-depth
  decile is ≈ 0.07, 0.08, 0.11, 0.15, 0.19, 0.25, 0.32, 0.41, 0.54, 0.80, and the last probe always equals the
  final answer. How depends on the answer: correct branches start near 0.01 and end near 0.92; branches ending
  in the most popular wrong answer already say it in ≈ 20 % of their earliest probes (the model commits early to
  a wrong idea); branches ending in a rare wrong answer show it only at the very end (the run of final-answer
  probes at the end starts at median relative depth 0.63 / 0.76 / 0.89 for these three kinds).
* Junk probes ("ERR", "No") are ≈ 10 % of all probes, most common mid-branch; ≈ 1 % of final answers are "ERR".
  Half of the other disagreeing probes are a final answer some branch of that question gives; the rest are
  intermediate values (a median question uses ≈ 80 distinct answer strings in all).
* Wrong final answers cluster: a median question has 22 distinct wrong answers and the most popular one holds
  ≈ 31 % of the wrong branches. Answers are short strings, mostly integers ("204"), sometimes expressions.

The generative model (all randomness from one `random.Random(seed)`, only its `random()` method, whose sequence
Python guarantees across versions; distributions are derived by hand):

1. Question q is *out of reach* with probability `unsolvable` (pass@1 = 0; gold never appears as a final answer);
   otherwise its pass@1 is p_q = sigmoid(logit(`skill`) + `spread`·z), z ~ N(0, 1) — a U-shaped spread around
   `skill`. Gold is an integer string in 0..999. The question gets 1–6 popular *distractors* with decaying
   weights and a share `pop` ~ U(0.25, 0.7) of its wrong branches that pick a distractor; the rest pick a fresh
   number (a long tail of one-off wrong answers); ≈ 1 % of wrong branches end in "ERR". It also gets 10–49
   *intermediate values* (Zipf-weighted) that off-track probes mostly say.
2. Branch b is correct with probability p_q, else wrong as above: its *kind* is gold, popular or other. Its
   length is log-normal (σ 0.32) around the question's median, which is (0.13 + 0.35·(1 − p_q⁴))·C times a
   per-question factor exp(0.3·z), where C = `max_probes`·`interval` is the generation budget; gold branches are
   0.9×, rare wrong ones 1.08× as long. A branch drawn longer than C is *truncated*: T ∈ [C, 1.0375·C], a little
   under `max_probes` probes, and (nine times in ten) a wrong final answer.
3. Probe count n = floor((T − a)/Δ) with an answer tail a = Δ·(min(8, LogNormal(0, 0.7)) − 0.95) that is
   sometimes negative, so T − nΔ runs from about −0.8Δ to 8Δ like the real data (capped at `max_probes`, ≥ 0).
4. Probe answers: the branch *converges* at relative depth c ~ Kumaraswamy(a, b) with (a, b) = (1.7, 1.0) for
   gold, (1.3, 0.55) for popular and (3.5, 0.6) for other branches; probes from index floor(c·n) on (always
   including the last) equal the final answer. Before that a sticky chain: with probability 0.55 a probe repeats
   the previous one, otherwise it is drawn afresh — junk ("ERR"/"No", 6 % rising to 20 % mid-branch), the
   branch's own final answer (gold: 0 → 8 % with depth; popular: a constant 18 %, the early commitment; other:
   1 → 6 %), the final answer of another random branch of the question (45 %), else an intermediate value.

With the defaults (`skill` 0.55, `unsolvable` 0.2, `spread` 3.5) a question set sits between the paper's
Qwen3-1.7B and Qwen3-4B environments (expected mean pass@1 ≈ 0.44; 30-question draws with seeds 0–19 range over 0.27–0.57), and the
built-in controllers behave as on the real data: CMC(β=0.5) about matches SC@64 with a third of its tokens, ASC
and ESC stop earlier than SC@64. What the generator reaches, measured over seeds 0–2 with the defaults
(real data in brackets): token quantiles 5/50/95 % ≈ 4.1k / 15k / 35k (3.8k / 15k / 34k), 1–6 % truncated
(2.6 %), T < nΔ in 16 % of branches (15 %), agreement by decile ≈ 0.07 … 0.28 (5th) … 0.84 (0.07 … 0.25 … 0.80),
junk 11 % (10 %), top wrong share 0.3 (0.31), ≈ 150 distinct answers per question (80). `describe(env)` computes
these statistics for any environment, real or synthetic, so the two can be compared.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.environment import ReplayEnvironment
from core.store import environment_from_records

GENERATOR_NAME = "core.synthetic"
GENERATOR_VERSION = 1
"""Bumped whenever the same parameters would produce a different environment."""

JUNK = ("ERR", "No")
_EXPRESSIONS = (
    "\\frac{1}{2}", "\\frac{1}{3}", "\\sqrt{3}", "2^{10}", "2^{12}", "\\frac{1}{7}", "a + b + c", "26!",
    "8\\sqrt{10}", "\\sqrt{2}", "\\frac{1}{4}", "Q + R",
)

DEFAULTS: dict[str, Any] = {
    "n_questions": 30,
    "n_branches": 128,
    "interval": 500,
    "max_probes": 80,
    "seed": 0,
    "skill": 0.55,
    "unsolvable": 0.2,
    "spread": 3.5,
    "model": "synthetic-demo",
    "benchmark": "demo",
}
"""The generator's defaults, which are also the bundled demo's parameters."""


# ----- distributions from random() alone ------------------------------------------------------------------------
class _Draw:
    """Samplers built only on `random.Random.random()` (its sequence is stable across Python versions)."""

    __slots__ = ("_u", "_spare")

    def __init__(self, seed: int):
        self._u = random.Random(seed).random
        self._spare: float | None = None

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * self._u()

    def below(self, n: int) -> int:
        """An integer in 0..n-1."""
        return min(n - 1, int(self._u() * n))

    def chance(self, p: float) -> bool:
        return self._u() < p

    def normal(self) -> float:
        """Standard normal (Box–Muller, the second value kept for the next call)."""
        if self._spare is not None:
            z, self._spare = self._spare, None
            return z
        u1 = 1.0 - self._u()  # (0, 1]
        u2 = self._u()
        r = math.sqrt(-2.0 * math.log(u1))
        self._spare = r * math.sin(2.0 * math.pi * u2)
        return r * math.cos(2.0 * math.pi * u2)

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.normal())

    def kumaraswamy(self, a: float, b: float) -> float:
        """Inverse-CDF draw from Kumaraswamy(a, b) on [0, 1] (a Beta-like shape with a closed-form CDF)."""
        return (1.0 - (1.0 - self._u()) ** (1.0 / b)) ** (1.0 / a)

    def weighted(self, weights: Sequence[float]) -> int:
        x = self._u() * sum(weights)
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


# ----- one question ---------------------------------------------------------------------------------------------
def _fresh_number(d: _Draw, avoid: set[str]) -> str:
    """A one-off wrong answer: mostly an integer below 1000, sometimes a larger one or an expression."""
    for _ in range(100):
        if d.chance(0.08):
            s = _EXPRESSIONS[d.below(len(_EXPRESSIONS))]
        else:
            s = str(d.below(1000) if d.chance(0.85) else d.below(100000))
        if s not in avoid:
            return s
    return "ERR"


# How each kind of branch converges: (Kumaraswamy a, b) of the relative depth where its final answer takes over,
# and the chance (at depth 0, added per unit of relative depth) that an earlier fresh probe already says it.
_PROFILES = {
    "gold": (1.7, 1.0, 0.0, 0.08),  # correct branches settle steadily; their answer rarely shows early
    "popular": (1.3, 0.55, 0.18, 0.0),  # popular wrong answers are committed to early and kept
    "other": (3.5, 0.6, 0.01, 0.05),  # one-off wrong answers appear only near the end
}
_LENGTH_MULTIPLIER = {"gold": 0.9, "popular": 1.0, "other": 1.08}


def _question(d: _Draw, qi: int, n_branches: int, interval: int, max_probes: int,
              skill: float, unsolvable: float, spread: float) -> dict[str, Any]:
    gold = str(d.below(1000))
    if d.chance(unsolvable):
        p = 0.0
    else:
        p = _sigmoid(_logit(skill) + spread * d.normal())
    # popular distractors with decaying weights
    n_pop = 1 + min(5, int(-math.log(1.0 - d.uniform()) * 2.0))
    distractors: list[str] = []
    taken = {gold}
    for _ in range(n_pop):
        s = _fresh_number(d, taken)
        taken.add(s)
        distractors.append(s)
    weights = [math.exp(-0.5 * k) * d.uniform(0.5, 1.5) for k in range(n_pop)]
    pop_share = d.uniform(0.25, 0.7)
    # intermediate values the reasoning passes through (shared by branches; what most off-track probes say)
    scratch = [_fresh_number(d, {gold}) for _ in range(10 + d.below(40))]
    scratch_weights = [1.0 / (k + 1) for k in range(len(scratch))]

    def wrong_answer() -> tuple[str, str]:
        if d.chance(0.01):
            return "ERR", "other"
        if d.chance(pop_share):
            return distractors[d.weighted(weights)], "popular"
        return _fresh_number(d, {gold}), "other"

    budget = max_probes * interval
    # hard questions run long (≈ 0.48 of the budget), questions the model has mastered short (≈ 0.13)
    median = budget * (0.13 + 0.35 * (1.0 - p**4)) * math.exp(0.3 * d.normal())
    drawn: list[tuple[str, str, int, int]] = []
    for _ in range(n_branches):
        final, kind = (gold, "gold") if d.chance(p) else wrong_answer()
        raw = d.lognormal(median * _LENGTH_MULTIPLIER[kind], 0.32)
        if raw > budget:  # ran into the generation cap: truncated, nearly always wrong
            t = budget + int(d.uniform(0.0, 0.0375) * budget)
            n = max(0, max_probes - int(d.uniform(0.0, 0.06) * max_probes))
            if kind == "gold" and not d.chance(0.1):
                final, kind = wrong_answer()
        else:
            t = max(1, int(raw))
            tail = interval * (min(8.0, d.lognormal(1.0, 0.7)) - 0.95)
            n = min(max_probes, max(0, math.floor((t - tail) / interval)))
        drawn.append((final, kind, t, n))

    finals = [f for f, _, _, _ in drawn]
    branches = [
        (_probes(d, n, final, _PROFILES[kind], finals, scratch, scratch_weights), t, final)
        for final, kind, t, n in drawn
    ]
    return {
        "question": f"Synthetic demo question {qi + 1} (no real problem text; the answer is an integer).",
        "gold_answer": gold,
        "interval": interval,
        "branches": branches,
    }


def _probes(d: _Draw, n: int, final: str, profile: tuple[float, float, float, float], finals: list[str],
            scratch: list[str], weights: list[float]) -> list[str]:
    if n == 0:
        return []
    ka, kb, final0, final_slope = profile
    start = min(n - 1, int(d.kumaraswamy(ka, kb) * n))
    probes: list[str] = []
    prev: str | None = None
    for k in range(start):
        if prev is not None and d.chance(0.55):
            a = prev
        else:
            r = k / n
            x = d.uniform()
            p_junk = 0.06 + 0.14 * math.sin(math.pi * r)
            p_final = p_junk + final0 + final_slope * r
            if x < p_junk:
                a = JUNK[0] if d.chance(0.6) else JUNK[1]
            elif x < p_final:
                a = final
            elif x < p_final + 0.45:
                a = finals[d.below(len(finals))]  # another branch's final answer (a distractor, or gold) …
                if a == final:
                    a = _off_track(d, final, scratch, weights)  # … but not this branch's own
            else:
                a = _off_track(d, final, scratch, weights)
        probes.append(a)
        prev = a
    probes.extend([final] * (n - start))
    return probes


def _off_track(d: _Draw, final: str, scratch: list[str], weights: list[float]) -> str:
    """An off-track probe answer: usually one of the question's intermediate values, sometimes a one-off."""
    if d.chance(0.85):
        a = scratch[d.weighted(weights)]
        if a != final:
            return a
    return _fresh_number(d, {final})


# ----- the public generator ---------------------------------------------------------------------------------------
def generate(
    n_questions: int = DEFAULTS["n_questions"],
    n_branches: int = DEFAULTS["n_branches"],
    interval: int = DEFAULTS["interval"],
    max_probes: int = DEFAULTS["max_probes"],
    seed: int = DEFAULTS["seed"],
    *,
    skill: float = DEFAULTS["skill"],
    unsolvable: float = DEFAULTS["unsolvable"],
    spread: float = DEFAULTS["spread"],
    model: str = DEFAULTS["model"],
    benchmark: str = DEFAULTS["benchmark"],
) -> ReplayEnvironment:
    """A synthetic replay environment; the same arguments always give the same environment.

    Args:
        n_questions: questions (≥ 1).
        n_branches: branches per question (≥ 1); 128 like the paper so SC@64 and 64-chain methods make sense.
        interval: probe interval Δ in tokens (≥ 1).
        max_probes: probes at most per branch (≥ 1); the generation budget is `max_probes × interval` tokens and
            branch lengths scale with it.
        seed: the only source of randomness.
        skill: median pass@1 of the questions in reach, in (0, 1); higher is easier.
        unsolvable: share of questions no branch answers correctly, in [0, 1].
        spread: logit-scale spread of pass@1 around `skill` (≥ 0); larger gives more all-right / all-wrong
            questions, 0 gives every reachable question pass@1 = `skill`.
        model, benchmark: labels for the metadata and the environment name (`model/benchmark`).
    """
    if n_questions < 1 or n_branches < 1 or interval < 1 or max_probes < 1:
        raise ValueError("n_questions, n_branches, interval and max_probes must all be at least 1")
    if not 0.0 < skill < 1.0:
        raise ValueError(f"skill must lie strictly between 0 and 1, got {skill}")
    if not 0.0 <= unsolvable <= 1.0:
        raise ValueError(f"unsolvable must lie in [0, 1], got {unsolvable}")
    if spread < 0:
        raise ValueError(f"spread must be non-negative, got {spread}")
    d = _Draw(seed)
    records = [
        _question(d, qi, n_branches, interval, max_probes, skill, unsolvable, spread) for qi in range(n_questions)
    ]
    params = {
        "n_questions": n_questions, "n_branches": n_branches, "interval": interval, "max_probes": max_probes,
        "seed": seed, "skill": float(skill), "unsolvable": float(unsolvable), "spread": float(spread),
        "model": model, "benchmark": benchmark,
    }
    metadata = {
        "model": model,
        "benchmark": benchmark,
        "interval": interval,
        "synthetic": True,
        "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params},
        "description": (
            "SYNTHETIC replay environment generated by core.synthetic: no language model produced these answers "
            "and its numbers say nothing about any real model. It imitates the statistics of the AutoTTS paper's "
            "replay data (U-shaped pass@1, branch lengths up to the generation cap, probes converging to the "
            "final answer, wrong answers clustered on a few distractors)."
        ),
    }
    return environment_from_records(records, name=f"{model}/{benchmark}", metadata=metadata)


# ----- statistics -------------------------------------------------------------------------------------------------
def describe(env: ReplayEnvironment) -> dict[str, Any]:
    """The statistics the generator targets, for any environment with gold answers (real or synthetic).

    Returns a dict with `pass1` (float64[Q], share of branches whose final answer is gold), `pass1_mean`,
    `token_quantiles` (5/25/50/75/95/100 %), `tokens_correct_median` / `tokens_wrong_median`, `probes_median`,
    `share_tokens_below_probes` (branches with T < nΔ), `agreement_by_decile` (share of probes equal to their
    branch's final answer, by relative depth decile (k+1)/n), `junk_share` (probes that are "ERR"/"No") and
    `top_wrong_share_median` (the most popular wrong final answer's share of a question's wrong branches).
    """
    if env.gold_answers is None:
        raise ValueError(f"{env.name}: needs gold answers")
    counts = env.branch_counts
    owner = np.repeat(np.arange(env.n_questions), counts)
    correct = env.branch_final == env.gold_ids[owner]
    pass1 = np.array([correct[env.branch_offsets[q]:env.branch_offsets[q + 1]].mean() for q in range(env.n_questions)])
    tokens = env.branch_tokens
    nprobes = env.branch_nprobes.astype(np.int64)
    agree = np.zeros(10)
    total = np.zeros(10)
    junk = 0
    top_wrong = []
    for q in range(env.n_questions):
        vocab = env.answer_vocab[q]
        junk_ids = np.array([i for i, s in enumerate(vocab) if s in JUNK], dtype=np.int64)
        lo_b, hi_b = int(env.branch_offsets[q]), int(env.branch_offsets[q + 1])
        wrong = env.branch_final[lo_b:hi_b][~correct[lo_b:hi_b]]
        if wrong.size:
            top_wrong.append(np.bincount(wrong).max() / wrong.size)
        for g in range(lo_b, hi_b):
            lo, hi = int(env.probe_offsets[g]), int(env.probe_offsets[g + 1])
            n = hi - lo
            if n == 0:
                continue
            ids = env.probe_answers[lo:hi]
            dec = np.minimum(((np.arange(n) + 1) * 10) // n, 9)
            np.add.at(total, dec, 1)
            np.add.at(agree, dec, ids == env.branch_final[g])
            junk += int(np.isin(ids, junk_ids).sum())
    interval = env.interval[owner]
    return {
        "pass1": pass1,
        "pass1_mean": float(pass1.mean()),
        "token_quantiles": {q: int(np.quantile(tokens, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95, 1.0)},
        "tokens_correct_median": float(np.median(tokens[correct])) if correct.any() else float("nan"),
        "tokens_wrong_median": float(np.median(tokens[~correct])) if (~correct).any() else float("nan"),
        "probes_median": float(np.median(nprobes)),
        "share_tokens_below_probes": float(np.mean(tokens < nprobes * interval)),
        "agreement_by_decile": np.divide(agree, total, out=np.full(10, np.nan), where=total > 0),
        "junk_share": junk / max(1, int(total.sum())),
        "top_wrong_share_median": float(np.median(top_wrong)) if top_wrong else float("nan"),
    }


# ----- command line -----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.synthetic OUT.json.gz [--seed N ...]`: write a synthetic environment (project format)."""
    from core.store import save_environment

    parser = argparse.ArgumentParser(
        prog="python -m core.synthetic",
        description="Write a SYNTHETIC replay environment (project store format; gzipped when OUT ends in .gz). "
        "With the defaults this regenerates replay_data/demo.json.gz exactly.",
    )
    parser.add_argument("out", help="output file, e.g. replay_data/demo.json.gz")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--questions", type=int, default=DEFAULTS["n_questions"], dest="n_questions")
    parser.add_argument("--branches", type=int, default=DEFAULTS["n_branches"], dest="n_branches")
    parser.add_argument("--interval", type=int, default=DEFAULTS["interval"])
    parser.add_argument("--max-probes", type=int, default=DEFAULTS["max_probes"], dest="max_probes")
    parser.add_argument("--skill", type=float, default=DEFAULTS["skill"], help="median pass@1 of reachable questions")
    parser.add_argument("--unsolvable", type=float, default=DEFAULTS["unsolvable"],
                        help="share of questions never answered right")
    parser.add_argument("--spread", type=float, default=DEFAULTS["spread"], help="logit-scale spread of pass@1")
    parser.add_argument("--model", default=DEFAULTS["model"])
    parser.add_argument("--benchmark", default=DEFAULTS["benchmark"])
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    try:
        env = generate(**args)
    except ValueError as e:
        parser.error(str(e))
    path = save_environment(env, out)
    stats = describe(env)
    print(f"wrote {path} ({path.stat().st_size:,} bytes): SYNTHETIC {env.name}, {env.n_questions} questions × "
          f"{args['n_branches']} branches, mean pass@1 {stats['pass1_mean']:.3f}, "
          f"median tokens {stats['token_quantiles'][0.5]:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
