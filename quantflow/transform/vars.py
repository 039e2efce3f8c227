"""dbt ``--vars`` for a date window: the only way the dbt models learn which days to (re)build."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence


def dbt_vars(start: dt.date, end: dt.date, symbols: Sequence[str] | None = None) -> dict:
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    out: dict = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    if symbols:
        out["symbols"] = sorted({s.strip().upper() for s in symbols})
    return out


def dbt_vars_args(start: dt.date, end: dt.date, symbols: Sequence[str] | None = None) -> list[str]:
    """``["--vars", '{"start_date": "2024-01-02", "end_date": "2024-01-31"}']`` (plus ``symbols`` if given)."""
    return ["--vars", json.dumps(dbt_vars(start, end, symbols))]
