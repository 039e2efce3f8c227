"""The ``project.ingest`` section: feeds, one params model per feed kind.

Each params model declares the raw tables its feed produces (``raw_kinds``): ingest, dbt, Dagster and the
metadata checks all read that one declaration (``FeedConfig.raw_kinds()``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from quantflow.metadata.schema.base import NAME_RE, MetadataModel

# ---------------------------------------------------------------- ingest feeds: parameters per kind


class SyntheticFeedParams(MetadataModel):
    """Deterministic market simulator: ticks per (symbol, date, seed)."""

    seed: int = 42
    start_price: float = Field(100.0, gt=0)
    annual_volatility: float = Field(0.25, gt=0, le=5)
    trades_per_day: int = Field(20_000, ge=10, le=5_000_000)
    quotes_per_trade: float = Field(3.0, gt=0, le=100)
    spread_bps: float = Field(2.0, gt=0, le=1_000)
    tick_size: float = Field(0.01, gt=0)
    timezone: str = "America/New_York"
    session_open: dt.time = dt.time(9, 30)
    session_close: dt.time = dt.time(16, 0)
    daily_bars: bool = True

    def raw_kinds(self) -> tuple[str, ...]:
        """The raw tables (``raw_<feed>_<kind>``) a feed with these params produces: one declaration per
        feed kind (every params model has one), read by ingest, dbt, Dagster and ``consistency_issues``."""
        return ("trades", "quotes", "bars_daily") if self.daily_bars else ("trades", "quotes")


class CsvColumnMap(MetadataModel):
    """Column names in the source files, mapped to the canonical names."""

    date: str = "date"
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    volume: str = "volume"
    adjusted_close: str | None = None
    dividend: str | None = None
    split_coefficient: str | None = None
    symbol: str | None = None


class CsvFeedParams(MetadataModel):
    """A folder of per-symbol daily-bar CSV files."""

    path: str
    filename_pattern: str = "{symbol}.csv"
    columns: CsvColumnMap = CsvColumnMap()
    date_format: str = "%Y-%m-%d"
    adjust: Literal["adjusted_close", "none"] = "none"
    bad_rows: Literal["drop", "fail"] = "drop"

    def raw_kinds(self) -> tuple[str, ...]:
        return ("bars_daily",)

    @model_validator(mode="after")
    def _adjust_needs_column(self) -> CsvFeedParams:
        if self.adjust == "adjusted_close" and not self.columns.adjusted_close:
            raise ValueError("adjust: adjusted_close needs columns.adjusted_close to name the column")
        return self


class LobsterFeedParams(MetadataModel):
    """LOBSTER message + orderbook file pairs (``<SYM>_<DATE>_<start>_<end>_{message,orderbook}_<L>.csv``)."""

    path: str
    level: int = Field(1, ge=1, le=50)
    timezone: str = "America/New_York"
    has_header: bool | None = None  # None = detect
    order_messages: bool = True  # also ingest every message (raw_<feed>_messages) for book reconstruction

    def raw_kinds(self) -> tuple[str, ...]:
        return ("trades", "quotes", "messages") if self.order_messages else ("trades", "quotes")


class YFinanceFeedParams(MetadataModel):
    interval: Literal["1d"] = "1d"
    auto_adjust: bool = True
    max_retries: int = Field(5, ge=0, le=20)
    backoff_seconds: float = Field(1.0, ge=0)
    requests_per_minute: int = Field(60, ge=1)
    timeout_seconds: float = Field(30.0, gt=0)  # per HTTP request

    def raw_kinds(self) -> tuple[str, ...]:
        return ("bars_daily",)


class PolygonFeedParams(MetadataModel):
    data: Literal["bars_daily", "trades", "quotes"] = "bars_daily"
    api_key_env: str = "POLYGON_API_KEY"
    base_url: str = "https://api.polygon.io"
    adjusted: bool = True
    max_retries: int = Field(5, ge=0, le=20)
    backoff_seconds: float = Field(1.0, ge=0)
    requests_per_minute: int = Field(5, ge=1)
    page_limit: int = Field(50_000, ge=1, le=50_000)
    timezone: str = "America/New_York"  # exchange time zone: local dates of bars and tick-day windows
    timeout_seconds: float = Field(30.0, gt=0)  # per HTTP request

    def raw_kinds(self) -> tuple[str, ...]:
        return (self.data,)


class _FeedBase(MetadataModel):
    name: str = Field(pattern=NAME_RE)
    enabled: bool = True

    def raw_kinds(self) -> tuple[str, ...]:
        """The raw tables (``raw_<name>_<kind>``) this feed produces, as its params declare."""
        return self.params.raw_kinds()


class SyntheticFeedConfig(_FeedBase):
    kind: Literal["synthetic"]
    params: SyntheticFeedParams = SyntheticFeedParams()


class CsvFeedConfig(_FeedBase):
    kind: Literal["csv"]
    params: CsvFeedParams


class LobsterFeedConfig(_FeedBase):
    kind: Literal["lobster"]
    params: LobsterFeedParams


class YFinanceFeedConfig(_FeedBase):
    kind: Literal["yfinance"]
    params: YFinanceFeedParams = YFinanceFeedParams()


class PolygonFeedConfig(_FeedBase):
    kind: Literal["polygon"]
    params: PolygonFeedParams = PolygonFeedParams()


FeedConfig = Annotated[
    SyntheticFeedConfig | CsvFeedConfig | LobsterFeedConfig | YFinanceFeedConfig | PolygonFeedConfig,
    Field(discriminator="kind"),
]
FEED_KINDS = ("synthetic", "csv", "lobster", "yfinance", "polygon")


class IngestConfig(MetadataModel):
    feeds: list[FeedConfig] = []

    @field_validator("feeds")
    @classmethod
    def _unique_names(cls, feeds: list) -> list:
        names = [f.name for f in feeds]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feed names must be unique; repeated: {', '.join(dupes)}")
        return feeds

    @property
    def enabled_feeds(self) -> list:
        return [f for f in self.feeds if f.enabled]
