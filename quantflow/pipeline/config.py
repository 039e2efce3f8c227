"""Run configuration of the stage assets: a shared window base and one Dagster ``Config`` class per stage.

Each asset takes its stage's class, so the launchpad shows (and validates) only the fields that stage
uses; the names are those every stage has always taken (``start_date``, ``write_mode``, ``batch_days``
...). ``WindowConfig.window`` turns the common fields into the ``RunWindow`` the stage runners take, which
never see Dagster.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import dagster as dg
from pydantic import Field

from quantflow.compute.stage import RunWindow


class WindowConfig(dg.Config):
    start_date: str | None = Field(None, description="First date (YYYY-MM-DD, inclusive); default yesterday.")
    end_date: str | None = Field(None, description="Last date (YYYY-MM-DD, inclusive); default today.")
    symbols: list[str] | None = Field(None, description="Symbols to process; default the project's symbols.")
    write_mode: Literal["skip_if_exists", "overwrite", "append"] = Field(
        "skip_if_exists", description="What to do with (symbol, day) data already stored."
    )

    def window(self, project_symbols: list[str], today: dt.date | None = None) -> RunWindow:
        return RunWindow.resolve(project_symbols, self.start_date, self.end_date, self.symbols, self.write_mode,
                                 today=today)


class IngestRunConfig(WindowConfig):
    """Run configuration of the ``ingest`` assets (one per feed)."""


class TransformRunConfig(WindowConfig):
    """Run configuration of the ``transform`` (dbt) assets."""

    batch_days: int | None = Field(None, ge=1, description="Split long date ranges into dbt runs of N days.")
    skip_test: bool = Field(True, description="Skip dbt tests (when false they run and show as asset checks).")


class StateEngineRunConfig(WindowConfig):
    """Run configuration of the ``state_engine`` assets."""

    max_concurrency: int = Field(4, ge=1, description="Parallel workers for the shards.")
    shard_granularity: Literal["daily", "weekly", "monthly"] = Field("daily", description="Time shard width.")


class LabelEngineRunConfig(WindowConfig):
    """Run configuration of the ``label_engine`` asset."""


class FeatureEngineRunConfig(WindowConfig):
    """Run configuration of the ``feature_engine`` asset."""


class ModelRunConfig(WindowConfig):
    """Run configuration of a model asset (groups ``ml`` and ``dl``): the window whose events it predicts."""


class ValidationRunConfig(WindowConfig):
    """Run configuration of a model's validation asset: its track record up to ``end_date``."""


class PortfolioRunConfig(WindowConfig):
    """Run configuration of ``pf_weights``: the rebalance dates whose weights it writes."""


class BacktestRunConfig(WindowConfig):
    """Run configuration of ``trading_report``: the window the strategy trades in (from cash)."""


class ReportsRunConfig(WindowConfig):
    """Run configuration of the report assets: the backtest's newest report, data up to ``end_date``."""
