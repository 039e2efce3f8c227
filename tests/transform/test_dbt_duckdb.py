"""The dbt stage on DuckDB over a hand-made lake: CDM cleaning, incremental windows, lake export, dbt tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import polars as pl
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.storage.project import project_lake, warehouse_path
from quantflow.storage.schemas import spec_for_kind
from quantflow.transform import runner
from quantflow.transform.warehouse import prepare_raw_sources
from tests.conftest import window, write_project
from tests.transform.raw_data import D1, D2, D3, at, make_project, raw_trades

UTC_NS = pl.Datetime("ns", "UTC")


def _warehouse(md, sql: str) -> list[tuple]:
    con = duckdb.connect(str(warehouse_path(md)), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def check_cdm(lake, symbols=("AAA", "BBB")) -> None:
    """The CDM content expected from the hand-made raw rows (shared with the PostgreSQL test)."""
    trades = lake.read("cdm_trades", symbols, D1, D3).sort("symbol", "date", "trade_id")
    assert trades.schema == pl.Schema(spec_for_kind("cdm_trades", "trades").schema)
    assert trades["ts"].dtype == UTC_NS
    keys = list(zip(trades["symbol"], trades["date"], trades["trade_id"]))
    assert keys == [("AAA", D1, 0), ("AAA", D1, 1), ("AAA", D1, 2), ("AAA", D2, 0), ("AAA", D2, 1),
                    ("BBB", D1, 0), ("BBB", D1, 1), ("BBB", D1, 2), ("BBB", D3, 0)]
    assert trades["ts"].to_list()[3:5] == [at(D2, 0.5), at(D2, 1.25)]  # same instants, UTC, sub-second kept
    assert trades.filter(pl.col("symbol") == "BBB")["side"].to_list() == [1, None, -1, 1]  # side 0 -> null
    assert trades["price"].min() > 0 and trades["size"].min() > 0

    quotes = lake.read("cdm_quotes", symbols, D1, D3).sort("symbol", "date", "quote_id")
    assert quotes["ts"].dtype == UTC_NS
    assert list(zip(quotes["symbol"], quotes["date"], quotes["quote_id"])) == [
        ("AAA", D1, 0), ("AAA", D1, 2), ("BBB", D2, 0)]  # duplicate, crossed, zero size, negative bid gone
    assert (quotes["bid"] <= quotes["ask"]).all()

    bars = lake.read("cdm_bars_daily", symbols, D1, D3).sort("symbol", "date")
    assert list(zip(bars["symbol"], bars["date"])) == [("AAA", D1), ("AAA", D3), ("BBB", D2)]
    assert bars["adj_factor"].to_list() == [1.0, 1.0, 0.5]  # missing factor -> 1.0
    assert bars["volume"].to_list() == [1e6, 0.0, 6e5]


def test_dbt_run_builds_clean_cdm_in_warehouse_and_lake(raw_project):
    md = raw_project
    result = runner.run(md, window(md, D1, D3), batch_days=2)
    assert result.batches == [(D1, D2), (D3, D3)]
    assert result.rows == {"cdm_bars_daily": 3, "cdm_trades": 9, "cdm_quotes": 3}
    assert result.rows_written == result.rows
    lake = project_lake(md)
    assert result.table_urls["cdm_trades"] == lake.url("cdm_trades")
    check_cdm(lake)
    assert "| symbol |" not in str(result.preview["cdm_trades"].columns)
    assert result.preview["cdm_trades"].height == 5
    # in the warehouse: UTC timestamps, canonical symbols, the feed each row came from
    types = dict(_warehouse(md, "SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema = 'cdm' AND table_name = 'cdm_trades'"))
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE" and types["date"] == "DATE" and types["price"] == "DOUBLE"
    assert _warehouse(md, "SELECT DISTINCT symbol, feed FROM cdm.cdm_trades ORDER BY 1") == [
        ("AAA", "sample"), ("BBB", "sample")]
    # raw tables are views over the lake, not copies
    assert _warehouse(md, "SELECT table_type FROM information_schema.tables WHERE table_schema = 'raw' "
                          "AND table_name = 'raw_sample_trades'") == [("VIEW",)]


def test_window_rerun_replaces_exactly_its_days_and_lake_obeys_write_mode(raw_project):
    md = raw_project
    runner.run(md, window(md, D1, D3))
    lake = project_lake(md)
    # the feed corrects AAA's trades of D1 (now two trades) and BBB's of D1
    fixed = pl.DataFrame({"symbol": ["AAA", "AAA", "BBB"], "date": [D1] * 3,
                          "ts": [at(D1, 0), at(D1, 9), at(D1, 10)], "trade_id": [0, 1, 0],
                          "price": [9.5, 9.6, 30.0], "size": [1.0, 2.0, 3.0]})
    lake.write(spec_for_kind("raw_sample_trades", "trades"), fixed, "overwrite")

    # only AAA, only D1, default write mode: the warehouse changes for (AAA, D1) only, the lake keeps its day
    again = runner.run(md, window(md, D1, D1, ["AAA"]))
    assert again.rows["cdm_trades"] == 2
    assert again.tables["cdm_trades"].days_skipped == 1 and again.tables["cdm_trades"].rows_written == 0
    got = _warehouse(md, "SELECT symbol, date, count(*), sum(price) FROM cdm.cdm_trades GROUP BY 1, 2 ORDER BY 1, 2")
    assert got == [("AAA", D1, 2, pytest.approx(19.1)), ("AAA", D2, 2, pytest.approx(22.5)),
                   ("BBB", D1, 3, pytest.approx(61.5)), ("BBB", D3, 1, pytest.approx(22.0))]
    assert lake.read("cdm_trades", ["AAA"], D1, D1)["price"].to_list() == [10.0, 10.1, 10.2]

    # overwrite replaces the stored day in the lake
    over = runner.run(md, window(md, D1, D1, ["AAA"], "overwrite"))
    assert over.tables["cdm_trades"].rows_written == 2 and over.tables["cdm_trades"].days_written == 1
    assert lake.read("cdm_trades", ["AAA"], D1, D1)["price"].to_list() == [9.5, 9.6]
    assert lake.read("cdm_trades", ["AAA"], D2, D2).height == 2  # other days untouched
    # append adds raw rows; the CDM is derived from them, so the lake's day is re-derived, never duplicated
    appended = runner.run(md, window(md, D1, D1, ["AAA"], "append"))
    assert appended.tables["cdm_trades"].rows_written == 2
    assert lake.read("cdm_trades", ["AAA"], D1, D1)["price"].to_list() == [9.5, 9.6]

    # a day whose raw rows are gone disappears from the warehouse when its window is rebuilt
    Path(lake.partition_path("raw_sample_trades", "BBB", D3)).unlink()
    runner.run(md, window(md, D2, D3))
    assert _warehouse(md, "SELECT count(*) FROM cdm.cdm_trades WHERE symbol = 'BBB' AND date = DATE '2024-01-04'") \
        == [(0,)]
    assert _warehouse(md, "SELECT count(*) FROM cdm.cdm_trades") == [(2 + 2 + 3,)]
    # ... and from the lake when the window is rebuilt in overwrite mode (the default mode keeps it)
    assert lake.read("cdm_trades", ["BBB"], D3, D3).height == 1
    rebuilt = runner.run(md, window(md, D2, D3, None, "overwrite"))
    assert rebuilt.tables["cdm_trades"].days_deleted == 1
    assert lake.read("cdm_trades", ["BBB"], D3, D3).height == 0
    assert lake.read("cdm_trades", ["AAA"], D2, D2).height == 2


def test_copy_mode_replaces_the_window_of_raw_rows(raw_project):
    """The path taken for S3 lakes (and, with psycopg2, for PostgreSQL): raw rows copied into tables."""
    md = raw_project
    prepared = prepare_raw_sources(md, D1, D3, copy=True)
    assert {t: (p.how, p.rows) for t, p in prepared.items()} == {
        "raw_sample_trades": ("copied", 13), "raw_sample_quotes": ("copied", 7),
        "raw_sample_bars_daily": ("copied", 7)}
    # re-copying one day for one symbol replaces only those rows (symbols matched canonically)
    prepared = prepare_raw_sources(md, D2, D2, symbols=["AAA"], copy=True)
    assert prepared["raw_sample_trades"].rows == 2
    assert _warehouse(md, "SELECT count(*) FROM raw.raw_sample_trades") == [(13,)]
    assert _warehouse(md, "SELECT table_type FROM information_schema.tables WHERE table_schema = 'raw' "
                          "AND table_name = 'raw_sample_trades'") == [("BASE TABLE",)]
    # switching back to views replaces the copied tables
    assert prepare_raw_sources(md, D1, D3)["raw_sample_trades"].how == "view"


def test_missing_raw_tables_become_empty_sources(tmp_path):
    md = make_project(tmp_path / "empty")
    lake = project_lake(md)
    lake.write(spec_for_kind("raw_sample_trades", "trades"), raw_trades(), "overwrite")
    result = runner.run(md, window(md, D1, D3))
    assert result.rows == {"cdm_bars_daily": 0, "cdm_trades": 9, "cdm_quotes": 0}


def test_dbt_tests_fail_on_bad_data_only_when_tests_run(raw_project):
    md = raw_project
    lake = project_lake(md)
    # a feed bug: trades stamped three days after their trading date (no quality filter catches that)
    shifted = pl.DataFrame({"symbol": ["BBB"], "date": [D2], "ts": [at(D2, 0) + dt.timedelta(days=3)],
                            "trade_id": [0], "price": [20.0], "size": [1.0]})
    lake.write(spec_for_kind("raw_sample_trades", "trades"), shifted, "overwrite")
    ok = runner.run(md, window(md, D1, D3), skip_test=True)
    assert ok.rows["cdm_trades"] == 10 and ok.tests == {}
    with pytest.raises(runner.DbtRunError, match="cdm_trades_ts_near_date") as failed:
        runner.run(md, window(md, D1, D3, None, "overwrite"), skip_test=False)
    assert any("cdm_trades_ts_near_date" in f and "fail" in f for f in failed.value.failures)
    assert not any("cdm_quotes" in f for f in failed.value.failures)  # only the broken test fails
    with pytest.raises(ValueError, match="after end_date"):
        runner.run(md, window(md, D3, D1))


def test_two_feeds_one_feed_per_symbol_day_in_metadata_order(tmp_path):
    write_project(tmp_path, """\
        project:
          name: two
          symbols: [AAA]
          ingest:
            feeds:
              - {name: ticks, kind: synthetic}
              - {name: eod, kind: csv, params: {path: data}}
        """)
    md = get_metadata_manager(tmp_path).load_all()
    lake = project_lake(md)
    bars = {"symbol": ["AAA", "AAA"], "open": [10.0, 10.0], "high": [11.0, 11.0], "low": [9.0, 9.0],
            "volume": [1e6, 1e6]}
    lake.write(spec_for_kind("raw_ticks_bars_daily", "bars_daily"),
               pl.DataFrame({**bars, "date": [D1, D2], "close": [10.5, 10.6]}))
    lake.write(spec_for_kind("raw_eod_bars_daily", "bars_daily"),
               pl.DataFrame({**bars, "date": [D2, D3], "close": [10.7, 10.8]}))
    result = runner.run(md, window(md, D1, D3))
    assert result.rows == {"cdm_bars_daily": 3, "cdm_trades": 0, "cdm_quotes": 0}
    got = _warehouse(md, "SELECT date, close, feed FROM cdm.cdm_bars_daily ORDER BY date")
    assert got == [(D1, 10.5, "ticks"), (D2, 10.6, "ticks"), (D3, 10.8, "eod")]


def test_implausibly_large_prices_and_sizes_never_reach_the_cdm(tmp_path):
    md = make_project(tmp_path / "huge")
    rows = [("AAA", D1, at(D1, 0), 0, 10.0, 100.0), ("AAA", D1, at(D1, 1), 1, 1e308, 100.0),
            ("AAA", D1, at(D1, 2), 2, 10.0, 1e308), ("AAA", D1, at(D1, 3), 3, 10.1, 5.0)]
    trades = pl.DataFrame(rows, schema=["symbol", "date", "ts", "trade_id", "price", "size"], orient="row")
    project_lake(md).write(spec_for_kind("raw_sample_trades", "trades"), trades)
    result = runner.run(md, window(md, D1, D1))
    assert result.rows["cdm_trades"] == 2
    assert project_lake(md).read("cdm_trades")["trade_id"].to_list() == [0, 3]


def test_a_window_built_from_unchanged_raw_tables_is_not_built_again(raw_project):
    """skip_if_exists: same raw partitions and models -> no dbt, no export; any change -> a real build."""
    md = raw_project
    calls: list[list[str]] = []
    real = runner.in_process_invoke(md)

    def counting(args, node_done):
        calls.append(args)
        return real(args, node_done)

    first = runner.run(md, window(md, D1, D3), invoke=counting)
    assert len(calls) == 1 and not first.up_to_date
    again = runner.run(md, window(md, D1, D3), invoke=counting)
    assert len(calls) == 1 and again.up_to_date and "dbt skipped" in again.headline()
    assert again.rows["cdm_trades"] == first.rows["cdm_trades"]  # counted from the warehouse all the same
    inner = runner.run(md, window(md, D2, D2), invoke=counting)  # a window inside the built one
    assert len(calls) == 1 and inner.up_to_date
    # a rewritten raw partition: the window is built again
    lake = project_lake(md)
    lake.write(spec_for_kind("raw_sample_trades", "trades"), lake.read("raw_sample_trades", ["AAA"], D1, D1),
               "overwrite")
    assert not runner.run(md, window(md, D1, D3), invoke=counting).up_to_date and len(calls) == 2
    # a raw partition gone, the tests asked for, another model: built again each time
    Path(lake.partition_path("raw_sample_trades", "BBB", D3)).unlink()
    assert not runner.run(md, window(md, D1, D3), invoke=counting).up_to_date and len(calls) == 3
    assert not runner.run(md, window(md, D1, D3), skip_test=False, invoke=counting).up_to_date
    model = next((md.project_dir / "dbt_project" / "models").rglob("cdm_trades.sql"))
    model.write_text(model.read_text().replace("Generated by QuantFlow", "Edited by hand") + "\n-- edited\n")
    assert not runner.run(md, window(md, D1, D3), invoke=counting).up_to_date and len(calls) == 5
    assert runner.run(md, window(md, D1, D3), invoke=counting).up_to_date and len(calls) == 5
    # the outputs count too: a CDM day gone from the lake, or the warehouse gone, is built again
    Path(lake.partition_path("cdm_trades", "AAA", D1)).unlink()
    refill = runner.run(md, window(md, D1, D3), invoke=counting)
    assert not refill.up_to_date and refill.tables["cdm_trades"].days_written == 1 and len(calls) == 6
    assert lake.read("cdm_trades", ["AAA"], D1, D1).height > 0
    warehouse_path(md).unlink()
    assert not runner.run(md, window(md, D1, D3), invoke=counting).up_to_date and len(calls) == 7
    assert runner.run(md, window(md, D1, D3), invoke=counting).up_to_date and len(calls) == 7
    # a year partition rewritten and built for one window does not vouch for another window of that year
    bars = lake.read("raw_sample_bars_daily")
    lake.write(spec_for_kind("raw_sample_bars_daily", "bars_daily"),
               bars.with_columns(pl.when(pl.col("date") == D1).then(pl.col("volume") + 1).otherwise("volume")
                                 .alias("volume")), "overwrite")
    assert not runner.run(md, window(md, D3, D3), invoke=counting).up_to_date and len(calls) == 8
    assert not runner.run(md, window(md, D1, D2), invoke=counting).up_to_date and len(calls) == 9
