"""What every ingest feed is: a source of bounded batches of raw tables, plus the rows it rejected.

A feed turns one source (a simulator, a folder of files, a web API) into frames that already match the raw
table schemas of ``quantflow.storage.tables``; the ingest runner only writes them. Feeds never write to the
lake and never import Dagster, so each one is testable on its own.

Conventions shared by all feeds:

- ``iter_batches(symbols, start, end)`` covers the inclusive date range and yields one ``FeedBatch`` per
  symbol (daily data) or per symbol-day (ticks), so memory stays bounded by one batch, not by the range.
- Every batch carries a frame for each kind in ``feed.kinds`` (empty when that batch has none of it), each
  conformed to its schema, and a ``bad_rows`` frame (``BAD_ROWS_SCHEMA``) of the source rows it rejected.
- ``bars_daily.adj_factor`` is the factor already applied to the stored OHLC (adjusted / raw close), so
  ``raw = price / adj_factor``; it is 1.0 when the prices are stored as the source gave them and null when
  the source adjusted the prices but did not say by how much.
- Problems that make the output wrong or incomplete raise ``FeedError`` with the feed, symbol, file and line
  where they are known; problems confined to single source rows are reported in ``bad_rows``.
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ValidationError

from quantflow.compute.stage import StageError
from quantflow.storage.schemas import BAD_ROWS_SCHEMA, RAW_KINDS, conform


class FeedError(StageError):
    """A feed cannot produce correct data; the message names feed, symbol, file and line where known."""

    def __init__(
        self,
        message: str,
        *,
        feed: str | None = None,
        symbol: str | None = None,
        file: str | Path | None = None,
        line: int | None = None,
    ):
        self.feed = feed
        self.symbol = symbol
        self.file = str(file) if file is not None else None
        self.line = line
        self.reason = message
        where = []
        if feed:
            where.append(f"feed {feed!r}")
        if symbol:
            where.append(f"symbol {symbol}")
        if self.file:
            where.append(f"file {self.file}" + (f", line {line}" if line is not None else ""))
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def empty_table(kind: str) -> pl.DataFrame:
    return pl.DataFrame(schema=RAW_KINDS[kind])


def empty_bad_rows() -> pl.DataFrame:
    return pl.DataFrame(schema=BAD_ROWS_SCHEMA)


def bad_rows_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows given as dicts with (a subset of) the ``BAD_ROWS_SCHEMA`` keys."""
    if not rows:
        return empty_bad_rows()
    return pl.DataFrame({col: [r.get(col) for r in rows] for col in BAD_ROWS_SCHEMA}, schema=BAD_ROWS_SCHEMA)


@dataclass
class FeedBatch:
    """One bounded piece of a feed's output: raw tables by kind plus the source rows it rejected."""

    tables: dict[str, pl.DataFrame]
    bad_rows: pl.DataFrame = field(default_factory=empty_bad_rows)

    @classmethod
    def build(
        cls, kinds: tuple[str, ...], bad_rows: pl.DataFrame | None = None, **frames: pl.DataFrame | None
    ) -> FeedBatch:
        """Conform the given frames to their schemas; kinds of the feed that are not given become empty."""
        unknown = set(frames) - set(kinds)
        if unknown:
            raise ValueError(f"frames {sorted(unknown)} are not among the feed's kinds {kinds}")
        tables = {}
        for kind in kinds:
            df = frames.get(kind)
            tables[kind] = empty_table(kind) if df is None else conform(df, RAW_KINDS[kind], where=kind)
        bad = empty_bad_rows() if bad_rows is None else conform(bad_rows, BAD_ROWS_SCHEMA, where="bad_rows")
        return cls(tables, bad)

    @property
    def rows(self) -> dict[str, int]:
        return {kind: df.height for kind, df in self.tables.items()}


class Feed(abc.ABC):
    """Base of all feeds: ``Feed(name, params, project_dir)``; subclasses set ``kind`` and ``params_model``.

    ``params`` may be the pydantic params model of the feed kind or a plain dict of its fields.
    Relative paths in params are relative to ``project_dir`` (the folder holding ``project_metadata/``).
    """

    kind: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]

    def __init__(self, name: str, params: BaseModel | dict | None, project_dir: str | Path):
        self.name = name
        self.project_dir = Path(project_dir)
        if params is None:
            params = {}
        if isinstance(params, BaseModel) and not isinstance(params, self.params_model):
            params = params.model_dump()
        if not isinstance(params, self.params_model):
            try:
                params = self.params_model.model_validate(params)
            except ValidationError as exc:
                raise FeedError(f"invalid params for a {self.kind} feed: {exc}", feed=name) from exc
        self.params = params

    @property
    def kinds(self) -> tuple[str, ...]:
        """The raw table kinds ("trades", "quotes", "bars_daily", "messages") this feed produces, as its
        params model declares (``raw_kinds`` in ``quantflow.metadata.schema``)."""
        return self.params.raw_kinds()

    @abc.abstractmethod
    def iter_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> Iterator[FeedBatch]:
        """Batches covering ``symbols`` over ``[start, end]`` (inclusive), bounded in size."""

    def expected_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> int | None:
        """How many batches ``iter_batches`` will yield, for progress bars: one per symbol by default (the
        daily feeds); per symbol-day feeds override it; None when it cannot be known up front."""
        return len(symbols)

    # ------------------------------------------------------------------ helpers for subclasses
    def resolve_path(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.project_dir / p)

    def error(
        self,
        message: str,
        *,
        symbol: str | None = None,
        file: str | Path | None = None,
        line: int | None = None,
    ) -> FeedError:
        return FeedError(message, feed=self.name, symbol=symbol, file=file, line=line)

    def batch(self, bad_rows: pl.DataFrame | None = None, **frames: pl.DataFrame | None) -> FeedBatch:
        return FeedBatch.build(self.kinds, bad_rows, **frames)

    def check_range(self, symbols: list[str], start: dt.date, end: dt.date) -> list[str]:
        if isinstance(symbols, str):
            raise self.error(f"symbols must be a list of tickers, got the string {symbols!r}")
        if start > end:
            raise self.error(f"start {start} is after end {end}")
        return list(symbols)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kinds={self.kinds})"


def weekdays(start: dt.date, end: dt.date) -> list[dt.date]:
    """Monday to Friday dates in ``[start, end]`` (exchange holidays are the source's business)."""
    out = []
    day = start
    while day <= end:
        if day.weekday() < 5:
            out.append(day)
        day += dt.timedelta(days=1)
    return out


# kind -> "module:Class"; imported on demand so e.g. the CSV feed never pays for importing yfinance.
FEED_CLASSES: dict[str, str] = {
    "synthetic": "quantflow.ingest.feeds.synthetic:SyntheticFeed",
    "csv": "quantflow.ingest.feeds.csv_daily:CsvDailyFeed",
    "lobster": "quantflow.ingest.feeds.lobster:LobsterFeed",
    "yfinance": "quantflow.ingest.feeds.yfinance_feed:YFinanceFeed",
    "polygon": "quantflow.ingest.feeds.polygon:PolygonFeed",
}


def feed_class(kind: str) -> type[Feed]:
    if kind not in FEED_CLASSES:
        raise FeedError(f"unknown feed kind {kind!r}; known kinds: {', '.join(FEED_CLASSES)}")
    module, _, cls = FEED_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_feed(feed_config: Any, project_dir: str | Path, **options: Any) -> Feed:
    """The feed described by a metadata ``FeedConfig`` (``.name``, ``.kind``, ``.params``).

    ``options`` go to the feed's constructor (e.g. an HTTP session for the web feeds in tests).
    """
    cls = feed_class(feed_config.kind)
    return cls(feed_config.name, feed_config.params, project_dir, **options)
