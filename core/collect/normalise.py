"""Answer normalisation: raw boxed contents → canonical strings, so that equivalent forms vote together.

Per question, in branch order (so the result never depends on the order branches finished in):

1. light clean-up: strip `$`, `\\text{}`/`\\mathrm{}` wrappers, `\\left`/`\\right`, LaTeX spacing commands,
   `\\dfrac`/`\\tfrac` → `\\frac`, a trailing period, and spaces next to non-letters; empty or missing → "ERR";
2. math-verify parses it (wrapped in `$…$`, which avoids its bare-string mis-extractions); an expression without
   free symbols is evaluated to 12 significant digits and keyed by value, anything else by its sympy text;
3. an answer whose key equals the gold answer's — or that math-verify `verify`s against the gold — becomes the
   gold string verbatim; any other answer becomes the first cleaned-up string seen with the same key.

Without math-verify installed, step 2 keys by the cleaned-up string. The paper's `"no"` → `"No"` rule is not copied.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from core.collect.protocol import NO_ANSWER

_MAX_PARSE_CHARS = 200
_TIMEOUT_S = 3


def light_normalise(raw: str | None) -> str:
    """Cheap textual clean-up of a boxed answer; "ERR" for None or an empty answer."""
    if raw is None:
        return NO_ANSWER
    s = raw.strip().strip("$").strip()
    for _ in range(3):
        s2 = re.sub(r"\\(?:text|mathrm|textbf|mathbf|boxed)\s*\{([^{}]*)\}", r"\1", s)
        if s2 == s:
            break
        s = s2
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[,;:! ]|~", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r" (?=[^A-Za-z])|(?<=[^A-Za-z]) ", "", s)
    s = s.rstrip(".").strip()
    return s or NO_ANSWER


def math_verify_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("math-verify")
    except Exception:  # noqa: BLE001
        return None


def _timeout() -> int | None:
    # math-verify enforces timeouts with signal.alarm, which only works in the main thread
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=100_000)
def _parse(s: str) -> Any:
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    except ImportError:
        return None
    if s == NO_ANSWER or len(s) > _MAX_PARSE_CHARS:
        return None
    try:
        res = parse(f"${s}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                    parsing_timeout=_timeout(), raise_on_error=False)
    except Exception:  # noqa: BLE001 - a parser failure only means "compare as text"
        return None
    return res or None


def _key(s: str) -> tuple[str, str]:
    parsed = _parse(s)
    if not parsed:
        return ("text", s)
    expr = parsed[0]
    try:
        import sympy

        if isinstance(expr, sympy.Basic) and not expr.free_symbols:
            v = complex(sympy.N(expr, 15))
            if v.imag == 0:
                return ("num", f"{v.real:.12g}")
            return ("num", f"{v.real:.12g}{v.imag:+.12g}j")
    except Exception:  # noqa: BLE001 - sets, relations, matrices…: fall back to the printed form
        pass
    return ("expr", str(expr))


def _verify(gold: str, s: str) -> bool:
    g, a = _parse(gold), _parse(s)
    if not g or not a:
        return False
    try:
        from math_verify import verify

        return bool(verify(g, a, timeout_seconds=_timeout(), raise_on_error=False))
    except Exception:  # noqa: BLE001
        return False


class AnswerCanon:
    """Canonical strings for one question's answers, one answer at a time (steps 1-3 above).

    The same raw answer always gets the same string; a new answer joins the first class seen with the same key, and
    answers equivalent to `gold` (when known) become the gold string verbatim. Collected stores (fed in branch
    order) and live runs both normalise through this, so a recorded run is scored like a collected one."""

    def __init__(self, gold: str | None = None):
        self.gold = gold
        self._by_raw: dict[str | None, str] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._gold_clean = light_normalise(gold) if gold is not None else None
        if gold is not None and self._gold_clean is not None:
            self._by_key[_key(self._gold_clean)] = gold

    def __call__(self, raw: str | None) -> str:
        out = self._by_raw.get(raw)
        if out is not None:
            return out
        s = light_normalise(raw)
        if s == NO_ANSWER:
            out = NO_ANSWER
        else:
            k = _key(s)
            out = self._by_key.get(k)
            if out is None:
                same = self._gold_clean is not None and k[0] != "num" and _verify(self._gold_clean, s)
                out = self._by_key[k] = self.gold if same and self.gold is not None else s
        self._by_raw[raw] = out
        return out


def canonical_answers(raw: Sequence[str | None], gold: str) -> list[str]:
    """Canonical strings for one question's raw answers (given in branch order, probes before finals)."""
    canon = AnswerCanon(gold)
    return [canon(r) for r in raw]
