"""What landed in lake tables since the last look: the partitions written after a cursor, and the window
(symbols, first and last date) they hold. The ``new_raw_data`` sensors read the raw tables this way,
whoever wrote them (the ingest job, another process, a loader outside QuantFlow).

The cursor is the newest modification time seen plus the partitions stamped with exactly that time: S3
stamps whole seconds, so a partition written in the same second as the last look is still found. A
partition rewritten within the second of the last look, with the same stamp, is not (S3 only).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from quantflow.storage.lake import DATA_FILE, Lake, Partition, parse_partition


@dataclass
class Landing:
    partitions: list[Partition] = field(default_factory=list)
    cursor: dict = field(default_factory=dict)  # {"since": epoch seconds, "at_since": [paths]}

    @property
    def symbols(self) -> list[str]:
        return sorted({p.symbol for p in self.partitions})


def landed_since(lake: Lake, tables: list[str], cursor: dict | None) -> Landing:
    """Partitions of ``tables`` written after ``cursor`` (all of them when it is None), and the next cursor."""
    since = cursor.get("since") if cursor else None
    seen = set(cursor.get("at_since", [])) if cursor else set()
    times: dict[str, float] = {}
    for table in tables:
        times.update(lake.store.modified_times(lake.store.path(table, "symbol=*", "*=*", DATA_FILE)))
    newest = max(times.values(), default=since)
    landed = Landing(cursor={"since": newest, "at_since": sorted(p for p, t in times.items() if t == newest)})
    for path, mtime in sorted(times.items()):
        if since is not None and (mtime < since or (mtime == since and path in seen)):
            continue
        part = parse_partition(path)
        if part is not None:
            landed.partitions.append(part)
    return landed


def landed_dates(lake: Lake, partitions: list[Partition]) -> tuple[dt.date, dt.date] | None:
    """The first and last date stored in ``partitions`` (read from their ``date`` column)."""
    first = last = None
    for part in partitions:
        dates = lake.read_partition(part.path, columns=["date"])["date"]
        if dates.len() == 0:
            continue
        lo, hi = dates.min(), dates.max()
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    return None if first is None else (first, last)
