"""Dollar prices of explorer models: a built-in table, a `--prices FILE` override, usage → cost, call estimates.

Prices are USD per million tokens in four classes, as Anthropic bills them: uncached input, output, prompt-cache
writes (5-minute TTL: 1.25× input) and prompt-cache reads (0.1× input unless the table says otherwise).
A model id is matched to the longest table key that is a prefix of it at a `-` boundary, after dropping a
provider prefix (`anthropic/`), a context suffix (`[1m]`) and turning dots into dashes, so
`claude-sonnet-4-5-20250929` is priced as `claude-sonnet-4` and `anthropic/claude-opus-4.6` as
`claude-opus-4-6`. A newer point release that the table lacks falls back to its family's entry.

The override file is JSON: `{"model-id-or-prefix": {"input": 3, "output": 15, "cache_write": 3.75,
"cache_read": 0.3}, ...}` (cache rates optional: 1.25× and 0.1× input). It is merged over the built-in table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from core.discovery.records import Usage
from core.errors import AutoTTSError


class PricingError(AutoTTSError):
    """A prices file is malformed, or a model has no price where one is needed (a budget cap)."""


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    @classmethod
    def of(cls, input: float, output: float, cache_write: float | None = None,
           cache_read: float | None = None) -> Price:
        return cls(float(input), float(output), 1.25 * input if cache_write is None else float(cache_write),
                   0.1 * input if cache_read is None else float(cache_read))

    def cost(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output
                + usage.cache_write_tokens * self.cache_write + usage.cache_read_tokens * self.cache_read) / 1e6


# Read off Anthropic's pricing page (platform.claude.com/docs/en/about-claude/pricing), late 2026. Entries whose
# rates were not confirmed there are left out on purpose: such models fall back to their family's (higher) rate,
# which errs on the side of stopping early under a budget. Check the page and override with --prices.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price.of(10, 50, 12.50, 0.25),
    "claude-mythos-5-1": Price.of(10, 50, 12.50, 0.25),
    "claude-fable-5": Price.of(10, 50, 12.50, 1.00),
    "claude-mythos-5": Price.of(10, 50, 12.50, 1.00),
    "claude-opus-5": Price.of(5, 25, 6.25, 0.50),
    "claude-opus-4-8": Price.of(5, 25, 6.25, 0.50),
    "claude-opus-4-7": Price.of(5, 25, 6.25, 0.50),
    "claude-opus-4-6": Price.of(5, 25, 6.25, 0.50),
    "claude-opus-4-5": Price.of(5, 25, 6.25, 0.50),
    "claude-opus-4-1": Price.of(15, 75, 18.75, 1.50),
    "claude-opus-4": Price.of(15, 75, 18.75, 1.50),
    "claude-sonnet-5": Price.of(2, 10, 2.50, 0.20),
    "claude-sonnet-4": Price.of(3, 15, 3.75, 0.30),
    "claude-3-7-sonnet": Price.of(3, 15, 3.75, 0.30),
    "claude-haiku-4-5": Price.of(1, 5, 1.25, 0.10),
    "claude-3-5-haiku": Price.of(0.80, 4, 1.00, 0.08),
    "claude-3-haiku": Price.of(0.25, 1.25, 0.30, 0.03),
    "claude-3-opus": Price.of(15, 75, 18.75, 1.50),
}


def normalise_model(model: str) -> str:
    m = model.strip().lower()
    if "/" in m:
        m = m.rsplit("/", 1)[1]
    if "[" in m:
        m = m.split("[", 1)[0]
    return m.replace(".", "-").replace("@", "-")


class PriceTable:
    """The built-in table, optionally overridden; `price(model)` is None for an unknown model."""

    def __init__(self, prices: dict[str, Price] | None = None):
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        table = cls()
        if path is None:
            return table
        p = Path(path)
        try:
            doc = orjson.loads(p.read_bytes())
        except OSError as e:
            raise PricingError(f"--prices {p}: cannot read it ({e.strerror})") from None
        except orjson.JSONDecodeError as e:
            raise PricingError(f"--prices {p}: invalid JSON ({e})") from None
        if isinstance(doc, dict) and isinstance(doc.get("models"), dict):
            doc = doc["models"]
        if not isinstance(doc, dict) or not doc:
            raise PricingError(f'--prices {p}: expected {{"model": {{"input": 3, "output": 15}}, ...}}')
        for model, spec in doc.items():
            table.prices[normalise_model(str(model))] = _parse_price(spec, f"--prices {p}: '{model}'")
        return table

    def match(self, model: str) -> str | None:
        """The table key used for a model id, or None."""
        m = normalise_model(model)
        best = None
        for key in self.prices:
            if (m == key or m.startswith(key + "-")) and (best is None or len(key) > len(best)):
                best = key
        return best

    def price(self, model: str) -> Price | None:
        key = self.match(model)
        return None if key is None else self.prices[key]

    def cost(self, model: str, usage: Usage) -> float:
        price = self.price(model)
        return 0.0 if price is None else price.cost(usage)

    def estimate(self, model: str, prompt_tokens: int, reply_tokens: int) -> float:
        """The price of a call: every prompt token at the dearer of the input and cache-write rates (what the
        prompt costs at most, on a cache miss), and a reply of `reply_tokens`."""
        price = self.price(model)
        if price is None:
            return 0.0
        return (prompt_tokens * max(price.input, price.cache_write) + reply_tokens * price.output) / 1e6


def estimate_tokens(chars: int) -> int:
    """Tokens for text of this many characters, rounded up generously (about 3 characters per token)."""
    return math.ceil(chars / 3)


def _parse_price(spec: Any, where: str) -> Price:
    if not isinstance(spec, dict) or "input" not in spec or "output" not in spec:
        raise PricingError(f'{where}: give at least "input" and "output" in USD per million tokens')
    vals = {}
    for k in ("input", "output", "cache_write", "cache_read"):
        v = spec.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise PricingError(f"{where}: '{k}' must be a non-negative number, got {v!r}")
        vals[k] = float(v)
    unknown = set(spec) - {"input", "output", "cache_write", "cache_read"}
    if unknown:
        raise PricingError(f"{where}: unknown key(s) {sorted(unknown)}; use input, output, cache_write, cache_read")
    return Price.of(**vals)
