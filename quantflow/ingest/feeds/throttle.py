"""Rate limiting and retry delays for the web feeds (Yahoo via yfinance, Polygon via requests).

Vendors enforce request quotas per minute (Polygon's free tier: 5) and answer bursts with HTTP 429; a
client that paces itself and backs off exponentially on transient failures finishes a long backfill instead
of being throttled or banned. ``sleep`` and ``clock`` are injectable so tests can check the waits without
waiting.
"""

from __future__ import annotations

import collections
import datetime as dt
import email.utils
import time
from collections.abc import Callable

MAX_WAIT_SECONDS = 600.0  # no single wait longer than this, whatever a server's Retry-After says


class RateLimiter:
    """At most ``per_minute`` calls in any sliding 60-second window; ``wait()`` before each call."""

    def __init__(
        self,
        per_minute: int,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.window = window
        self._clock, self._sleep = clock, sleep
        self._calls: collections.deque[float] = collections.deque()

    def wait(self) -> float:
        """Block until a call is allowed, record it, and return the seconds waited."""
        waited = 0.0
        now = self._clock()
        while True:
            while self._calls and self._calls[0] <= now - self.window:
                self._calls.popleft()
            if len(self._calls) < self.per_minute:
                break
            delay = self._calls[0] + self.window - now
            self._sleep(delay)
            waited += delay
            now = max(self._clock(), self._calls[0] + self.window)
        self._calls.append(now)
        return waited


def backoff_delay(base_seconds: float, attempt: int, retry_after: float | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): ``base * 2**attempt``, or the server's Retry-After."""
    delay = retry_after if retry_after is not None else base_seconds * (2**attempt)
    return min(max(0.0, delay), MAX_WAIT_SECONDS)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())
