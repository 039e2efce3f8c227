"""The ``project.state_engine`` section: bar types, order-book snapshots, execution."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from quantflow.metadata.schema.base import DURATION_RE, NAME_RE, MetadataModel, TimeZoneName, repeated

BAR_TYPES = ("time", "tick", "volume", "dollar", "tick_imbalance", "volume_imbalance", "dollar_imbalance",
             "tick_run", "volume_run", "dollar_run")
CALENDAR_EVERY = ("1w", "1mo", "1q", "1y")  # time bars built from daily bars, not from ticks
EVERY_RE = r"^(\d+(ns|us|ms|s|m|h|d|w)|1mo|1q|1y)$"  # a duration (DURATION_RE), or a calendar period


def _compact(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}".replace(".", "p")


def bar_table_name(type: str, every: str | None = None, offset: str = "0s", threshold: float | None = None,
                   bars_per_day: float | None = None, expected_ticks: float | None = None,
                   name: str | None = None, trailing_days: int | None = None) -> str:
    """The lake table of a bar type, e.g. ``cdm_time_1m_bars``, ``cdm_volume_50perday_bars``,
    ``cdm_dollar_50perday_20d_bars`` (thresholds from 20 trailing days), ``cdm_tick_imbalance_100_bars``,
    ``cdm_volume_run_100_bars`` (``cdm_<name>_bars`` when named). One rule for the metadata, the Dagster
    asset keys and the engine (``BarSpec.key``)."""
    if name:
        return f"cdm_{name}_bars"
    if type == "time":
        label = every if offset in ("0s", "0") or every in CALENDAR_EVERY else f"{every}_{offset}"
    elif type in ("tick", "volume", "dollar"):
        label = _compact(threshold) if threshold is not None else f"{_compact(bars_per_day)}perday"
        label += f"_{trailing_days}d" if trailing_days is not None else ""
    else:
        label = _compact(expected_ticks)
    return f"cdm_{type}_{label}_bars"


class BarTypeConfig(MetadataModel):
    """One bar type built by the state engine (table ``cdm_<type>_<label>_bars``, or ``cdm_<name>_bars``)."""

    type: Literal[BAR_TYPES]
    every: str | None = Field(None, pattern=EVERY_RE,
                              description="time bars: 100ms, 1s, 1m, 1h, 1d; calendar bars 1w, 1mo, 1q, 1y")
    offset: str = Field("0s", pattern=DURATION_RE)
    threshold: float | None = Field(None, gt=0, description="tick/volume/dollar bars: fixed threshold")
    expected_daily: float | None = Field(None, gt=0, description="tick/volume/dollar bars: expected per day")
    bars_per_day: float | None = Field(None, gt=0, description="with expected_daily: threshold = expected/bars")
    trailing_days: int | None = Field(None, ge=1, description="tick/volume/dollar bars: threshold per day = mean "
                                      "daily measure of the N previous days / bars_per_day (expected_daily seeds)")
    expected_ticks: float | None = Field(None, ge=1, description="imbalance/run bars: initial E[T]")
    span: float = Field(20.0, ge=1, description="imbalance/run bars: EWMA span of E[T], in bars")
    imbalance_span: float | None = Field(None, ge=1, description="imbalance/run bars: EWMA span of E[b m], in "
                                         "trades (default 10 * expected_ticks)")
    min_expected_ticks: float | None = Field(None, ge=1)
    max_expected_ticks: float | None = Field(None, ge=1)
    name: str | None = Field(None, pattern=NAME_RE)
    incomplete: Literal["keep", "drop"] = Field(
        "keep", description="bars cut short by the end of a shard or day (complete = false): keep or drop them")

    @model_validator(mode="after")
    def _fields_for_type(self) -> BarTypeConfig:
        if self.type == "time" and not self.every:
            raise ValueError("time bars need 'every' (e.g. 1m, 100ms)")
        if self.type in ("tick", "volume", "dollar"):
            if (self.threshold is None) == (self.expected_daily is None):
                raise ValueError(f"{self.type} bars need exactly one of 'threshold' or 'expected_daily'")
            if self.expected_daily is not None and self.bars_per_day is None:
                raise ValueError(f"{self.type} bars with 'expected_daily' also need 'bars_per_day'")
        if self.trailing_days is not None and (self.type not in ("tick", "volume", "dollar")
                                               or self.expected_daily is None):
            raise ValueError("'trailing_days' is for tick, volume and dollar bars, with 'expected_daily' (the seed "
                             "for days with no earlier day) and 'bars_per_day'")
        if self.type.endswith(("_imbalance", "_run")) and self.expected_ticks is None:
            raise ValueError(f"{self.type} bars need 'expected_ticks'")
        return self

    @property
    def is_calendar(self) -> bool:
        """Weekly and longer time bars come from ``cdm_bars_daily``; every other bar needs ticks."""
        return self.type == "time" and self.every in CALENDAR_EVERY

    @property
    def table(self) -> str:
        return bar_table_name(self.type, self.every, self.offset, self.threshold, self.bars_per_day,
                              self.expected_ticks, self.name, self.trailing_days)


class LobConfig(MetadataModel):
    interval: str | None = Field("1s", pattern=DURATION_RE, description="snapshot grid step; null: no table")
    offset: str = Field("0s", pattern=DURATION_RE)
    depth: int = Field(1, ge=1, le=50)
    source: Literal["quotes", "messages"] = Field(
        "quotes", description="quotes: cdm_quotes (top of book); messages: the book rebuilt from cdm_order_messages"
    )


class StateEngineConfig(MetadataModel):
    """The state engine: one Numba pass per (symbol, time shard) from CDM trades and quotes."""

    executor: Literal["ray", "local"] = "ray"
    carry_state: bool = False
    tie_break: Literal["quotes_first", "sequence"] = "quotes_first"
    timezone: TimeZoneName = "America/New_York"
    retries: int = Field(1, ge=0, le=10)
    ray_min_trades: int = Field(2_000_000, ge=0, description="executor ray: a run with fewer trades runs in "
                                "process (starting Ray would cost more than it saves); 0: always Ray")
    lob: LobConfig = LobConfig()
    bars: list[BarTypeConfig] = [BarTypeConfig(type="time", every="1m")]

    @field_validator("bars")
    @classmethod
    def _distinct_tables(cls, bars: list[BarTypeConfig]) -> list[BarTypeConfig]:
        dupes = repeated([b.table for b in bars])
        if dupes:
            raise ValueError(f"bar types write the same table twice: {', '.join(dupes)}; give them distinct 'name's")
        return bars
