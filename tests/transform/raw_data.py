"""Hand-made raw rows with known defects, and a small project whose lake holds them."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import polars as pl

from quantflow.metadata import get_metadata_manager
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import write_project

D1, D2, D3 = dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)

RAW_PROJECT_YAML = """\
project:
  name: dbt_test
  symbols: [AAA, BBB]
  ingest:
    feeds:
      - name: sample
        kind: synthetic
  data_processing:
    historical_data_engine: {engine}
"""


def at(day: dt.date, seconds: float) -> dt.datetime:
    """An instant on ``day`` (14:30 UTC = 09:30 New York) plus ``seconds``."""
    return dt.datetime.combine(day, dt.time(14, 30), tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def raw_trades() -> pl.DataFrame:
    rows = [
        # symbol, date, ts, trade_id, price, size, side
        ("AAA", D1, at(D1, 0), 0, 10.0, 100.0, 1),
        ("AAA", D1, at(D1, 1), 1, 10.1, 50.0, -1),
        ("AAA", D1, at(D1, 1), 1, 10.1, 50.0, -1),  # exact duplicate
        ("AAA", D1, at(D1, 2), 2, 10.2, 25.0, None),
        ("AAA", D1, at(D1, 3), 3, 0.0, 10.0, 1),  # zero price
        ("AAA", D1, at(D1, 4), 4, 10.3, -5.0, 1),  # negative size
        ("AAA", D1, at(D1, 5), 5, math.nan, 5.0, 1),  # NaN price
        ("aaa", D2, at(D2, 0.5), 0, 11.0, 10.0, 1),  # lower-case symbol
        ("aaa", D2, at(D2, 1.25), 1, 11.5, 20.0, -1),
        (" BBB", D1, at(D1, 10), 0, 20.0, 5.0, 1),  # padded symbol
        ("BBB", D1, at(D1, 11), 1, 20.5, 6.0, 0),  # invalid side -> null
        ("BBB", D1, at(D1, 12), 2, 21.0, 7.0, -1),
        ("BBB", D3, at(D3, 0), 0, 22.0, 8.0, 1),
    ]
    cols = ["symbol", "date", "ts", "trade_id", "price", "size", "side"]
    return pl.DataFrame(rows, schema=cols, orient="row").with_columns(pl.col("side").cast(pl.Int8))


def raw_quotes() -> pl.DataFrame:
    rows = [
        # symbol, date, ts, quote_id, bid, ask, bid_size, ask_size
        ("AAA", D1, at(D1, 0), 0, 9.99, 10.01, 100.0, 200.0),
        ("AAA", D1, at(D1, 0), 0, 9.99, 10.01, 100.0, 200.0),  # duplicate
        ("AAA", D1, at(D1, 1), 1, 10.05, 10.00, 100.0, 100.0),  # crossed: bid > ask
        ("AAA", D1, at(D1, 2), 2, 10.00, 10.00, 100.0, 100.0),  # locked: kept
        ("AAA", D1, at(D1, 3), 3, 10.00, 10.02, 0.0, 100.0),  # zero size
        ("AAA", D1, at(D1, 4), 4, -1.0, 10.02, 10.0, 100.0),  # negative bid
        ("bbb", D2, at(D2, 0), 0, 19.9, 20.1, 10.0, 10.0),
    ]
    cols = ["symbol", "date", "ts", "quote_id", "bid", "ask", "bid_size", "ask_size"]
    return pl.DataFrame(rows, schema=cols, orient="row")


def raw_bars() -> pl.DataFrame:
    rows = [
        # symbol, date, open, high, low, close, volume, adj_factor
        ("AAA", D1, 10.0, 10.5, 9.8, 10.2, 1e6, 1.0),
        ("AAA", D1, 10.0, 10.5, 9.8, 10.2, 1e6, 1.0),  # duplicate
        ("AAA", D2, 10.2, 10.1, 9.9, 10.3, 1e6, 1.0),  # high below close: inconsistent OHLC
        ("AAA", D3, 10.3, 10.6, 10.1, 10.4, 0.0, None),  # zero volume kept, missing adj_factor -> 1.0
        ("BBB", D1, -20.0, 20.5, 19.5, 20.2, 5e5, 1.0),  # negative open
        ("bbb", D2, 20.2, 20.8, 20.0, 20.6, 6e5, 0.5),
        ("BBB", D3, 20.6, 20.4, 20.5, 20.5, 6e5, 1.0),  # low above high
    ]
    cols = ["symbol", "date", "open", "high", "low", "close", "volume", "adj_factor"]
    return pl.DataFrame(rows, schema=cols, orient="row")


def fill_lake(md: ProjectMetadata, feed: str = "sample") -> None:
    lake = project_lake(md)
    for kind, df in (("trades", raw_trades()), ("quotes", raw_quotes()), ("bars_daily", raw_bars())):
        lake.write(spec_for_kind(f"raw_{feed}_{kind}", kind), df, "overwrite")


def make_project(root: Path, engine: str = "duckdb", local_yaml: str | None = None) -> ProjectMetadata:
    write_project(root, RAW_PROJECT_YAML.format(engine=engine), local_yaml)
    return get_metadata_manager(root).load_all()
