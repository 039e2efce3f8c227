"""Pydantic models of the project metadata (``project_metadata/*.yaml``).

Only the sections the built stages use live here; later stages add theirs. Every model forbids unknown
keys in strict mode (see ``loader``), so a typo in a key is caught rather than silently ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-_]{0,15}$")
NAME_RE = r"^[a-z][a-z0-9_]{0,40}$"


class MetadataModel(BaseModel):
    """Base: unknown keys are kept as extras, so the loader can report them (errors in strict mode)."""

    model_config = ConfigDict(extra="allow")


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


class SyntheticFeed(_FeedBase):
    kind: Literal["synthetic"]
    params: SyntheticFeedParams = SyntheticFeedParams()


class CsvFeed(_FeedBase):
    kind: Literal["csv"]
    params: CsvFeedParams


class LobsterFeed(_FeedBase):
    kind: Literal["lobster"]
    params: LobsterFeedParams


class YFinanceFeed(_FeedBase):
    kind: Literal["yfinance"]
    params: YFinanceFeedParams = YFinanceFeedParams()


class PolygonFeed(_FeedBase):
    kind: Literal["polygon"]
    params: PolygonFeedParams = PolygonFeedParams()


FeedConfig = Annotated[
    SyntheticFeed | CsvFeed | LobsterFeed | YFinanceFeed | PolygonFeed, Field(discriminator="kind")
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


# ---------------------------------------------------------------- engines and storage


class DataProcessingConfig(MetadataModel):
    historical_data_engine: Literal["duckdb", "postgres"] = "duckdb"


class StorageConfig(MetadataModel):
    """Roots of the lake (Parquet tables) and the blob store (artifacts); local folders or ``s3://``."""

    lake_root: str = ".quantflow/lake"
    blob_root: str = ".quantflow/artifacts"
    warehouse_path: str = ".quantflow/warehouse.duckdb"


# ---------------------------------------------------------------- state engine


_DURATION = r"^\d+(ns|us|ms|s|m|h|d|w)$"
BAR_TYPES = ("time", "tick", "volume", "dollar", "tick_imbalance", "volume_imbalance")


class BarTypeConfig(MetadataModel):
    """One bar type built by the state engine (table ``cdm_<type>_<label>_bars``, or ``cdm_<name>_bars``)."""

    type: Literal["time", "tick", "volume", "dollar", "tick_imbalance", "volume_imbalance"]
    every: str | None = Field(None, pattern=_DURATION, description="time bars: 100ms, 1s, 1m, 1h, 1d, 1w")
    offset: str = Field("0s", pattern=_DURATION)
    threshold: float | None = Field(None, gt=0, description="tick/volume/dollar bars: fixed threshold")
    expected_daily: float | None = Field(None, gt=0, description="tick/volume/dollar bars: expected per day")
    bars_per_day: float | None = Field(None, gt=0, description="with expected_daily: threshold = expected/bars")
    expected_ticks: float | None = Field(None, ge=1, description="imbalance bars: initial E[T]")
    span: float = Field(20.0, ge=1, description="imbalance bars: EWMA span in bars")
    min_expected_ticks: float | None = Field(None, ge=1)
    max_expected_ticks: float | None = Field(None, ge=1)
    name: str | None = Field(None, pattern=NAME_RE)

    @model_validator(mode="after")
    def _fields_for_type(self) -> BarTypeConfig:
        if self.type == "time" and not self.every:
            raise ValueError("time bars need 'every' (e.g. 1m, 100ms)")
        if self.type in ("tick", "volume", "dollar"):
            if (self.threshold is None) == (self.expected_daily is None):
                raise ValueError(f"{self.type} bars need exactly one of 'threshold' or 'expected_daily'")
            if self.expected_daily is not None and self.bars_per_day is None:
                raise ValueError(f"{self.type} bars with 'expected_daily' also need 'bars_per_day'")
        if self.type.endswith("_imbalance") and self.expected_ticks is None:
            raise ValueError(f"{self.type} bars need 'expected_ticks'")
        return self


class LobConfig(MetadataModel):
    interval: str | None = Field("1s", pattern=_DURATION, description="snapshot grid step; null: no table")
    offset: str = Field("0s", pattern=_DURATION)
    depth: int = Field(1, ge=1, le=50)
    source: Literal["quotes", "messages"] = Field(
        "quotes", description="quotes: cdm_quotes (top of book); messages: the book rebuilt from cdm_order_messages"
    )


class StateEngineConfig(MetadataModel):
    """The state engine: one Numba pass per (symbol, time shard) from CDM trades and quotes."""

    executor: Literal["ray", "local"] = "ray"
    carry_state: bool = False
    tie_break: Literal["quotes_first", "sequence"] = "quotes_first"
    timezone: str = "America/New_York"
    retries: int = Field(1, ge=0, le=10)
    lob: LobConfig = LobConfig()
    bars: list[BarTypeConfig] = [BarTypeConfig(type="time", every="1m")]

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, tz: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r} (expected an IANA name like America/New_York)") from None
        return tz


class ProjectConfig(MetadataModel):
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    symbols: list[str] = Field(min_length=1)
    ingest: IngestConfig = IngestConfig()
    data_processing: DataProcessingConfig = DataProcessingConfig()
    storage: StorageConfig = StorageConfig()
    state_engine: StateEngineConfig | None = None

    def consistency_issues(self) -> list[tuple[tuple, str]]:
        """Problems that span sections (field path, message); each section is valid on its own."""
        issues: list[tuple[tuple, str]] = []
        se = self.state_engine
        if se is not None and se.lob.interval is not None and se.lob.source == "messages":
            lob = ("project", "state_engine", "lob")
            producers = [f for f in self.ingest.enabled_feeds if "messages" in f.params.raw_kinds()]
            if not producers:
                issues.append((lob + ("source",), "the book is rebuilt from order messages, but no enabled feed "
                               "produces them (a lobster feed with order_messages: true does); use source: quotes"))
            for feed in producers:
                level = feed.params.level if feed.kind == "lobster" else None
                if level is not None and se.lob.depth > level:
                    issues.append((lob + ("depth",), f"depth {se.lob.depth} is deeper than the level-{level} files "
                                   f"of feed {feed.name!r}: the levels behind {level} are not in its messages; "
                                   f"use depth <= {level}"))
        return issues

    @field_validator("symbols")
    @classmethod
    def _valid_symbols(cls, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if not SYMBOL_RE.match(s)]
        if bad:
            raise ValueError(
                f"symbols must be upper-case tickers (A-Z, 0-9, '.', '-', '_'); invalid: {', '.join(map(repr, bad))}"
            )
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be unique")
        return symbols


class ProjectFile(MetadataModel):
    """``project.yaml``: the committed description of the research project."""

    project: ProjectConfig


# ---------------------------------------------------------------- local.yaml (connections, secrets)


class PostgresConnection(MetadataModel):
    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    password: str = ""
    dbname: str = "quantflow"
    schema_: str = Field("cdm", alias="schema")
    raw_schema: str = "raw"

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class S3Connection(MetadataModel):
    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None


class LocalConnections(MetadataModel):
    postgres: PostgresConnection = PostgresConnection()
    s3: S3Connection = S3Connection()


class LocalFile(MetadataModel):
    """``local.yaml``: machine-specific connections; never committed (``local.example.yaml`` is)."""

    local: LocalConnections = LocalConnections()
