"""The explorer model behind the Anthropic Messages API: one `create` call with retries and clear errors.

Transient failures — 429 rate limits, 408/409, any 5xx including 529 "overloaded", connection errors and
timeouts — are retried with exponential backoff and jitter (`RetryPolicy`); a `retry-after-ms` / `retry-after`
header is obeyed instead when the server sends one. The SDK's own retries are switched off (`max_retries=0`) so
that every wait is decided, and counted, here. Anything else is fatal and raised as `ExplorerError` with one line
naming the fix: a missing or rejected key (401), a model the endpoint does not know (404), a refused request.
Works with any server speaking `/v1/messages` (`base_url`, or the `ANTHROPIC_BASE_URL` environment variable).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic

from core.errors import AutoTTSError

log = logging.getLogger("autotts.discover")

KEY_HELP = ("set ANTHROPIC_API_KEY (a key from https://console.anthropic.com), or ANTHROPIC_AUTH_TOKEN; with "
            "--base-url, whatever key that endpoint expects")


class ExplorerError(AutoTTSError):
    """The API refused for good (bad key, unknown model, bad request) or kept failing; the message names the fix."""


@dataclass(frozen=True)
class RetryPolicy:
    """How transient API failures are retried."""

    max_retries: int = 8
    """Retries per call before giving up (so up to max_retries + 1 attempts)."""
    base_s: float = 2.0
    """First backoff; it doubles per retry."""
    cap_s: float = 60.0
    """Largest backoff."""
    max_retry_after_s: float = 900.0
    """A server asking to wait longer than this ends the run instead (resume later)."""

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with 'equal jitter': half the step fixed, half random."""
        step = min(self.cap_s, self.base_s * (2 ** attempt))
        return step / 2 + rng.uniform(0, step / 2)


@dataclass
class Reply:
    """A response and what it took to get it."""

    message: Any
    """anthropic.types.Message."""
    seconds: float
    retries: int


@dataclass
class Explorer:
    """A Messages API client for one model. `sleep` and `rng` are injectable for tests."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    on_retry: Callable[[str], None] | None = None
    """Told (one line) about each retry, e.g. to show it on the console."""
    waits: list[float] = field(default_factory=list)
    """Every wait so far, in seconds."""

    def __post_init__(self) -> None:
        kwargs: dict[str, Any] = {"max_retries": 0, "timeout": self.timeout_s}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        if self.api_key:
            kwargs["api_key"] = self.api_key
        try:
            self.client = anthropic.Anthropic(**kwargs)
        except anthropic.AnthropicError as e:  # e.g. CredentialsError: a profile named but unreadable
            raise ExplorerError(f"no usable Anthropic credentials ({str(e).splitlines()[0][:200]}): {KEY_HELP}") from None
        if not (self.client.api_key or self.client.auth_token or getattr(self.client, "credentials", None)):
            raise ExplorerError(f"no Anthropic API key: {KEY_HELP}")

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url).rstrip("/")

    def create(self, *, system: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]],
               messages: Sequence[dict[str, Any]], max_tokens: int) -> Reply:
        """One `messages.create`, retried on transient failures; raises ExplorerError otherwise."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                msg = self.client.messages.create(model=self.model, max_tokens=max_tokens, system=list(system),
                                                  tools=list(tools), messages=list(messages))
                return Reply(msg, time.monotonic() - started, attempt)
            except anthropic.APIStatusError as e:
                if not _retryable(e.status_code):
                    raise ExplorerError(self._fatal(e)) from None
                what = _describe(e)
                wait = _retry_after(e.response.headers)
            except anthropic.APIConnectionError as e:
                what = "timed out" if isinstance(e, anthropic.APITimeoutError) else f"connection failed ({e.message})"
                wait = None
            except anthropic.APIResponseValidationError as e:  # pragma: no cover - a broken proxy
                raise ExplorerError(f"{self.endpoint} answered with something that is not a Messages API "
                                    f"response ({e.message}); check --base-url") from None
            if attempt >= self.retry.max_retries:
                raise ExplorerError(f"the API kept failing ({what}) after {attempt} retries over "
                                    f"{time.monotonic() - started:.0f} s; try again later") from None
            if wait is not None and wait > self.retry.max_retry_after_s:
                raise ExplorerError(f"the API asks to wait {wait:.0f} s before retrying ({what}); try again later")
            delay = wait if wait is not None else self.retry.backoff(attempt, self.rng)
            attempt += 1
            note = (f"API {what}; retry {attempt}/{self.retry.max_retries} in {delay:.1f} s"
                    + (" (as the server asked)" if wait is not None else ""))
            log.info(note)
            if self.on_retry:
                self.on_retry(note)
            self.waits.append(delay)
            self.sleep(delay)

    def _fatal(self, e: anthropic.APIStatusError) -> str:
        what = _describe(e)
        if e.status_code == 401:
            return f"the API rejected the key ({what}): {KEY_HELP}"
        if e.status_code == 403:
            return f"the key may not do this ({what}): check the key's workspace and its access to model '{self.model}'"
        if e.status_code == 404:
            return (f"model '{self.model}' was not found at {self.endpoint} ({what}): check --model (a Messages API "
                    "model id such as claude-sonnet-4-6) and --base-url")
        if e.status_code == 402:
            return f"the API refused for billing reasons ({what}): check the account's credit"
        return f"the API refused the request ({what})"


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _describe(e: anthropic.APIStatusError) -> str:
    kind = getattr(e, "type", None)
    msg = getattr(e, "api_message", None)
    if msg is None:
        body = e.body if isinstance(e.body, str) else None
        msg = (body or "").strip().splitlines()[0][:120] if body else None
    return f"{e.status_code}" + (f" {kind}" if kind else "") + (f": {msg}" if msg else "")


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
