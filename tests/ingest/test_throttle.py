"""Pacing and retry delays of the web feeds, with a fake clock (no real waiting)."""

from __future__ import annotations

import datetime as dt

import pytest

from quantflow.ingest.feeds.throttle import RateLimiter, backoff_delay, parse_retry_after


def test_rate_limiter_sliding_window():
    now = {"t": 100.0}
    waits: list[float] = []

    def sleep(s):
        waits.append(s)
        now["t"] += s

    limiter = RateLimiter(3, clock=lambda: now["t"], sleep=sleep)
    for _ in range(3):
        assert limiter.wait() == 0.0
    now["t"] += 10
    assert limiter.wait() == pytest.approx(50.0)  # the oldest call leaves the window at 160
    now["t"] += 60
    assert limiter.wait() == 0.0 and waits == [pytest.approx(50.0)]


def test_backoff_and_retry_after():
    assert [backoff_delay(0.5, a) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(0.5, 3, retry_after=7) == 7
    assert backoff_delay(100, 10) == 600.0  # capped
    assert parse_retry_after("12") == 12.0 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = dt.datetime(2024, 1, 2, 15, 0, tzinfo=dt.UTC)
    assert parse_retry_after("Tue, 02 Jan 2024 15:00:30 GMT", now=now) == 30.0
