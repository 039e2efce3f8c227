"""Date-range helpers shared by stages (batching long ranges, trading-day calendars)."""

from __future__ import annotations

import datetime as dt


def date_batches(start: dt.date, end: dt.date, batch_days: int | None) -> list[tuple[dt.date, dt.date]]:
    """Split [start, end] into consecutive inclusive ranges of at most ``batch_days`` days."""
    if not batch_days:
        return [(start, end)]
    out, cur = [], start
    while cur <= end:
        stop = min(end, cur + dt.timedelta(days=batch_days - 1))
        out.append((cur, stop))
        cur = stop + dt.timedelta(days=1)
    return out
