"""A lake table folder opens as it is in the tools researchers use (polars, pandas, pyarrow, DuckDB), with the
right dtypes, and through QuantFlow's own notebook API (``quantflow.lake``)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import quantflow.lake as qlake
from quantflow.storage.filesystem import StorageOptions, Store
from quantflow.storage.lake import Lake
from tests.storage.test_lake import BARS, D1, D2, D3, TRADES, bars, trades
from tests.storage.test_s3 import s3_endpoint  # noqa: F401  (fixture)


@pytest.fixture
def filled(tmp_path) -> Lake:
    lake = Lake(Store(str(tmp_path / "lake")))
    lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2), trades(D1, 4, symbol="BBB")]))
    lake.write(BARS, pl.concat([bars([D1, D2, D3], close=5.0), bars([D1], close=6.0, symbol="BBB"),
                                bars([dt.date(2023, 12, 29)], close=4.0)]))
    # files hold every column but symbol (the path's): a column in both makes pandas and pyarrow refuse
    assert "symbol" not in pl.read_parquet_schema(lake.partitions("raw_t_trades")[0].path)
    return lake


def _expected(lake: Lake, table: str) -> pl.DataFrame:
    return lake.read(table).sort("symbol", "date")


def test_polars_reads_a_table_folder(filled):
    for table in ("raw_t_trades", "raw_t_bars_daily"):
        got = pl.scan_parquet(filled.url(table), hive_partitioning=True).collect()
        assert got.schema["symbol"] == pl.String and got.schema["date"] == pl.Date
        want = _expected(filled, table)
        assert got.select(want.columns).sort("symbol", "date").equals(want)
    assert pl.scan_parquet(filled.url("raw_t_trades"), hive_partitioning=True).collect().schema["ts"] == \
        pl.Datetime("ns", "UTC")


def test_pandas_reads_a_table_folder(filled):
    got = pd.read_parquet(filled.url("raw_t_trades"))
    assert len(got) == 9 and str(got["ts"].dtype) == "datetime64[ns, UTC]" and got["price"].dtype == "float64"
    assert set(got["symbol"].astype(str)) == {"AAA", "BBB"}
    assert set(got["date"]) == {D1, D2}  # a date column of dates, not strings
    daily = pd.read_parquet(filled.url("raw_t_bars_daily"))
    assert len(daily) == 5 and sorted(daily["date"])[0] == dt.date(2023, 12, 29)


def test_pyarrow_dataset_reads_a_table_folder(filled):
    table = ds.dataset(filled.url("raw_t_trades"), partitioning="hive").to_table()
    assert table.num_rows == 9
    assert table.schema.field("date").type == pa.date32() and table.schema.field("symbol").type == pa.string()
    assert table.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    daily = ds.dataset(filled.url("raw_t_bars_daily"), partitioning="hive").to_table()
    assert daily.num_rows == 5 and daily.schema.field("date").type == pa.date32()


def test_duckdb_reads_a_table_folder(filled):
    for table, rows in (("raw_t_trades", 9), ("raw_t_bars_daily", 5)):
        rel = duckdb.sql(f"select * from read_parquet('{filled.url(table)}/**/*.parquet', hive_partitioning=true)")
        types = dict(zip(rel.columns, [str(t) for t in rel.types]))
        assert types["date"] == "DATE" and types["symbol"] == "VARCHAR"
        assert len(rel.fetchall()) == rows


def test_notebook_api_reads_and_scans_with_pruning(filled):
    got = qlake.read("raw_t_trades", symbols=["AAA"], start="2024-01-03", end=D3, lake=filled)
    assert got.columns[:2] == ["symbol", "date"] and "day" not in got.columns
    assert got["date"].unique().to_list() == [D2] and got.height == 2
    daily = qlake.scan("raw_t_bars_daily", start=D1, end=D2, lake=filled).collect()
    assert sorted(daily["close"].to_list()) == [5.0, 5.0, 6.0] and "year" not in daily.columns
    assert qlake.read("raw_t_trades", columns=["symbol", "price"], lake=filled).columns == ["symbol", "price"]
    empty = qlake.read("raw_t_trades", start="2030-01-01", end="2030-01-02", lake=filled)
    assert empty.height == 0 and empty.columns == got.columns
    with pytest.raises(ValueError, match="has no table 'cdm_nothing'; tables: raw_t_bars_daily, raw_t_trades"):
        qlake.read("cdm_nothing", lake=filled)
    with pytest.raises(ValueError, match="after end"):
        qlake.read("raw_t_trades", start=D2, end=D1, lake=filled)


def test_notebook_api_finds_the_project_lake(small_project, monkeypatch):
    from quantflow.metadata import get_metadata_manager
    from quantflow.storage.project import project_lake

    lake = project_lake(get_metadata_manager(small_project).load_all())
    lake.write(TRADES, trades(D1, 3))
    monkeypatch.chdir(small_project)
    assert qlake.tables() == ["raw_t_trades"] and qlake.read("raw_t_trades").height == 3


@pytest.mark.slow
def test_notebook_api_scans_an_s3_lake(s3_endpoint, request):  # noqa: F811
    options = StorageOptions(endpoint_url=s3_endpoint, key="test", secret="test", region="us-east-1")
    lake = Lake(Store(f"s3://research/{request.node.name}/lake", options))
    lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2, symbol="BBB")]))
    got = qlake.read("raw_t_trades", symbols=["BBB"], lake=lake)
    assert got.height == 2 and got["symbol"].unique().to_list() == ["BBB"]
