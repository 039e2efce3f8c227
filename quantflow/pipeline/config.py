"""``PipelineConfig``: the run configuration every asset takes (dates, symbols, write mode, sharding).

It is a Dagster ``Config`` so the launchpad shows and validates it; ``resolve()`` turns it into plain
values for the stage runners, which never see Dagster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import dagster as dg
from pydantic import Field

from quantflow.storage.lake import WriteMode


class PipelineConfig(dg.Config):
    start_date: str | None = Field(None, description="First date (YYYY-MM-DD, inclusive); default yesterday.")
    end_date: str | None = Field(None, description="Last date (YYYY-MM-DD, inclusive); default today.")
    symbols: list[str] | None = Field(None, description="Symbols to process; default the project's symbols.")
    write_mode: Literal["skip_if_exists", "overwrite", "append"] = Field(
        "skip_if_exists", description="What to do with (symbol, day) data already stored."
    )
    max_concurrency: int = Field(4, ge=1, description="Parallel workers for sharded stages.")
    shard_granularity: Literal["daily", "weekly", "monthly"] = Field("daily", description="Time shard width.")
    batch_days: int | None = Field(None, ge=1, description="Split long date ranges into batches of N days.")
    skip_test: bool = Field(True, description="Skip dbt tests (when false they run and show as asset checks).")


@dataclass(frozen=True)
class RunWindow:
    """Resolved, validated run parameters handed to stage runners."""

    start_date: dt.date
    end_date: dt.date
    symbols: list[str]
    write_mode: WriteMode
    max_concurrency: int
    shard_granularity: str
    batch_days: int | None
    skip_test: bool


def _parse_date(value: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"PipelineConfig.{field}: expected a date as YYYY-MM-DD, got {value!r}") from None


def resolve(config: PipelineConfig, project_symbols: list[str], today: dt.date | None = None) -> RunWindow:
    today = today or dt.date.today()
    start = _parse_date(config.start_date, "start_date") if config.start_date else today - dt.timedelta(days=1)
    end = _parse_date(config.end_date, "end_date") if config.end_date else today
    if start > end:
        raise ValueError(f"PipelineConfig: start_date {start} is after end_date {end}")
    symbols = list(config.symbols) if config.symbols else list(project_symbols)
    unknown = [s for s in symbols if s not in project_symbols]
    if unknown:
        raise ValueError(f"PipelineConfig.symbols: {unknown} are not in the project's symbols {project_symbols}")
    return RunWindow(start, end, symbols, config.write_mode, config.max_concurrency, config.shard_granularity,
                     config.batch_days, config.skip_test)

