"""Lake write modes, partition layout, crash safety and the DuckDB catalog, on a local folder."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from quantflow.storage.catalog import connect_catalog
from quantflow.storage.filesystem import Store
from quantflow.storage.lake import Lake, LakeLayoutError, key_runs
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import parquet_codecs

D1, D2, D3 = dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)
TRADES = spec_for_kind("raw_t_trades", "trades")
BARS = spec_for_kind("raw_t_bars_daily", "bars_daily")


def trades(day: dt.date, n: int, price: float = 10.0, symbol: str = "AAA") -> pl.DataFrame:
    base = dt.datetime.combine(day, dt.time(14, 30), tzinfo=dt.UTC)
    return pl.DataFrame({
        "symbol": [symbol] * n, "date": [day] * n,
        "ts": [base + dt.timedelta(seconds=i) for i in range(n)], "trade_id": list(range(n)),
        "price": [price] * n, "size": [100.0] * n,
    })


def bars(days: list[dt.date], close: float, symbol: str = "AAA") -> pl.DataFrame:
    n = len(days)
    return pl.DataFrame({"symbol": [symbol] * n, "date": days, "open": [close] * n, "high": [close] * n,
                         "low": [close] * n, "close": [close] * n, "volume": [1e6] * n})


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(Store(str(tmp_path / "lake")))


def test_layout_is_symbol_then_date_partition(lake, tmp_path):
    res = lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2), trades(D1, 1, symbol="BBB")]))
    assert res.rows_written == 6 and res.days_written == 3
    files = sorted(p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*.parquet"))
    assert files == [
        "raw_t_trades/symbol=AAA/day=2024-01-02/data.parquet",
        "raw_t_trades/symbol=AAA/day=2024-01-03/data.parquet",
        "raw_t_trades/symbol=BBB/day=2024-01-02/data.parquet",
    ]
    assert lake.read("raw_t_trades", ["AAA"], D2, D2).height == 2
    assert lake.tables() == ["raw_t_trades"]


def test_skip_if_exists_keeps_stored_days(lake):
    lake.write(TRADES, trades(D1, 3, price=10))
    res = lake.write(TRADES, pl.concat([trades(D1, 5, price=99), trades(D2, 2, price=99)]), "skip_if_exists")
    assert (res.days_skipped, res.days_written, res.rows_written) == (1, 1, 2)
    got = lake.read("raw_t_trades")
    assert got.filter(pl.col("date") == D1)["price"].to_list() == [10.0] * 3
    assert got.filter(pl.col("date") == D2).height == 2


def test_many_days_written_at_once_are_the_files_one_day_at_a_time_would_be(lake, tmp_path):
    """Day partitions written in one call (one encoder call for all, then a move per day under its lock)
    hold exactly the rows of their (symbol, day), sorted, without the symbol column; nothing stays staged."""
    days = [D1, D2, D3]
    frames = [trades(d, 2 + i + j, price=10.0 + i, symbol=s) for i, s in enumerate(["AAA", "BRK.B", "X-Y_1"])
              for j, d in enumerate(days)]
    df = pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=1)
    res = lake.write(TRADES, df, "overwrite")
    assert (res.rows_written, res.days_written, len(res.partitions)) == (df.height, 9, 9)
    for frame in frames:
        symbol, day = frame["symbol"][0], frame["date"][0]
        stored = pl.read_parquet(lake.partition_path("raw_t_trades", symbol, day))
        assert stored.columns == [c for c in TRADES.schema if c != "symbol"]  # conformed to the table's schema
        assert stored.select(frame.columns[1:]).equals(frame.drop("symbol")), (symbol, day)
    assert not [p for p in (tmp_path / "lake" / "_staging").rglob("*") if p.is_file()]
    again = lake.write(TRADES, pl.concat([trades(D1, 9, price=99.0), trades(dt.date(2024, 1, 5), 1)]),
                       "skip_if_exists")
    assert (again.days_skipped, again.days_written, again.rows_written) == (1, 1, 1)
    assert lake.read("raw_t_trades", ["AAA"], D1, D1)["price"].to_list() == [10.0, 10.0]


def test_key_runs_count_each_run_of_keys_as_a_group_by_would():
    """The runs of (symbol, date) that day writes count rows with, against polars' group-by: one run a key in
    a sorted frame; in a shuffled one the runs still cover every key and add up to its rows; nulls are keys."""
    df = pl.concat([trades(d, n, symbol=s) for s, n in (("AAA", 3), ("BRK.B", 1)) for d in (D1, D2, D3)])
    df = pl.concat([df, df.head(2).with_columns(pl.lit(None, pl.Utf8).alias("symbol"))])
    want = {(s, d): n for s, d, n in df.group_by("symbol", "date").len().iter_rows()}
    runs = key_runs(df, ["symbol", "date"])
    assert {(s, d): n for s, d, n in runs} == want and len(runs) == len(want)
    assert [(s, d) for s, d, _ in runs] == list(dict.fromkeys(df.select("symbol", "date").iter_rows()))
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=3)
    totals: dict = {}
    for s, d, n in key_runs(shuffled, ["symbol", "date"]):
        totals[(s, d)] = totals.get((s, d), 0) + n
    assert totals == want and len(key_runs(shuffled, ["symbol", "date"])) > len(want)
    assert key_runs(df.clear(), ["symbol", "date"]) == []


@pytest.mark.parametrize("table", [TRADES, BARS], ids=["day partitions", "month partitions"])
def test_before_install_runs_before_any_partition_changes_and_its_failure_changes_nothing(lake, tmp_path, table):
    """The state engine writes its done marker (the enriched trades) with the bar tables written meanwhile
    in ``before_install``: nothing of the table may be in place before it returns, nor after it raises."""
    make = (lambda d: trades(d, 2)) if table is TRADES else (lambda d: bars([d], close=1.0))
    lake.write(table, make(D1))
    seen = []

    def look():
        seen.append(lake.read(table.name).sort("date")["date"].to_list())

    lake.write(table, pl.concat([make(D2), make(D3)]), "overwrite", before_install=look)
    assert seen == [[D1] * lake.read(table.name, None, D1, D1).height]
    assert sorted(set(lake.read(table.name)["date"].to_list())) == [D1, D2, D3]

    def fail():
        raise RuntimeError("the other tables failed")

    before = lake.read(table.name).sort("date")
    with pytest.raises(RuntimeError, match="the other tables failed"):
        lake.write(table, pl.concat([make(D1), make(dt.date(2024, 1, 5))]), "overwrite", before_install=fail)
    assert lake.read(table.name).sort("date").equals(before)
    assert not [p for p in (tmp_path / "lake" / "_staging").rglob("*") if p.is_file()]


def test_overwrite_replaces_only_the_days_written(lake):
    lake.write(BARS, bars([D1, D2, D3], close=1.0))
    lake.write(BARS, bars([D2], close=2.0), "overwrite")
    got = lake.read("raw_t_bars_daily").sort("date")
    assert got["close"].to_list() == [1.0, 2.0, 1.0]
    # every stored day replaced (the staged file moved in as it is), beside a partition that is new
    every = lake.write(BARS, pl.concat([bars([D3, D1, D2], close=3.0), bars([D2], 4.0, "BBB")]), "overwrite")
    assert (every.rows_written, every.days_written, len(every.partitions)) == (4, 4, 2)
    got = lake.read("raw_t_bars_daily").sort("symbol", "date")
    assert got.select("symbol", "date", "close").rows() == [("AAA", D1, 3.0), ("AAA", D2, 3.0), ("AAA", D3, 3.0),
                                                           ("BBB", D2, 4.0)]


def test_append_adds_rows(lake):
    lake.write(TRADES, trades(D1, 3))
    later = trades(D1, 5, price=11).slice(3)  # two new trades: ids 3 and 4
    assert lake.write(TRADES, later, "append").rows_written == 2
    assert lake.read("raw_t_trades").height == 5


def test_append_never_stores_a_key_twice(lake):
    """Appending rows the table has (same symbol, date, ts, trade_id) adds nothing: no duplicate keys."""
    lake.write(TRADES, trades(D1, 3))
    res = lake.write(TRADES, trades(D1, 4, price=11), "append")
    assert (res.rows_written, res.days_written) == (1, 1)
    got = lake.read("raw_t_trades")
    assert got["price"].to_list() == [10.0, 10.0, 10.0, 11.0]
    assert lake.write(BARS, bars([D1, D2], close=7.0), "append").rows_written == 2
    assert lake.write(BARS, bars([D1, D2, D3], close=8.0), "append").rows_written == 1
    assert lake.read("raw_t_bars_daily")["close"].to_list() == [7.0, 7.0, 8.0]


def test_year_partitions_merge_new_days_in_skip_mode(lake, tmp_path):
    lake.write(BARS, bars([D1], close=1.0))
    res = lake.write(BARS, bars([D1, D2], close=5.0))
    assert (res.days_skipped, res.days_written) == (1, 1)
    assert lake.read("raw_t_bars_daily").sort("date")["close"].to_list() == [1.0, 5.0]
    assert len(list((tmp_path / "lake" / "raw_t_bars_daily").rglob("*.parquet"))) == 1


def test_bad_mode_and_null_keys_are_rejected(lake):
    with pytest.raises(ValueError, match="write_mode must be one of"):
        lake.write(TRADES, trades(D1, 1), "upsert")
    with pytest.raises(ValueError, match="null symbol or date"):
        lake.write(TRADES, trades(D1, 2).with_columns(pl.lit(None, pl.Utf8).alias("symbol")))
    with pytest.raises(ValueError, match=r"missing columns \['price'\]"):
        lake.write(TRADES, trades(D1, 2).drop("price"))
    assert lake.tables() == []


def test_failed_rename_leaves_old_data_and_no_temp_file(lake, tmp_path, monkeypatch):
    lake.write(TRADES, trades(D1, 3, price=10))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        lake.write(TRADES, trades(D1, 3, price=20), "overwrite")
    monkeypatch.undo()
    assert lake.read("raw_t_trades")["price"].to_list() == [10.0] * 3
    assert sorted(p.name for p in (tmp_path / "lake" / "raw_t_trades").rglob("*") if p.is_file()) == ["data.parquet"]
    assert not list((tmp_path / "lake").rglob("*.tmp"))


WRITER = textwrap.dedent("""
    import datetime as dt, sys
    import numpy as np, polars as pl
    from quantflow.storage.filesystem import Store
    from quantflow.storage.lake import Lake, LakeLayoutError, key_runs
    from quantflow.storage.schemas import spec_for_kind
    lake = Lake(Store(sys.argv[1]))
    spec = spec_for_kind("raw_t_trades", "trades")
    n = 3_000_000
    base = np.datetime64("2024-01-02T14:30:00", "ns").astype("int64")
    df = pl.DataFrame({"symbol": ["AAA"] * n, "date": [dt.date(2024, 1, 2)] * n,
                       "ts": pl.Series(base + np.arange(n) * 1000).cast(pl.Datetime("ns", "UTC")),
                       "trade_id": np.arange(n), "price": np.random.default_rng(0).random(n) + 50.0,
                       "size": np.full(n, 100.0)})
    print("ready", flush=True)
    while True:
        lake.write(spec, df, "overwrite")
""")


def test_killed_writer_never_leaves_a_half_written_partition(lake, tmp_path):
    """SIGKILL a process in the middle of big overwrites: readers see the old or the new file, whole."""
    lake.write(TRADES, trades(D1, 3, price=10))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    for delay in (0.3, 0.9, 1.7):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "lake")], stdout=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[2])
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = lake.read("raw_t_trades")
        assert got.height in (3, 3_000_000)
        if got.height == 3:
            assert got["price"].to_list() == [10.0] * 3
        else:
            assert got["trade_id"].to_list()[-1] == 2_999_999
    # a later write cleans nothing it should not and still succeeds
    lake.write(TRADES, trades(D1, 4, price=12), "overwrite")
    assert lake.read("raw_t_trades")["price"].to_list() == [12.0] * 4


def test_duckdb_catalog_exposes_lake_tables_as_views(lake):
    lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2, symbol="BBB")]))
    lake.write(BARS, bars([D1, D2], close=3.0))
    con = connect_catalog(lake)
    assert con.execute("select count(*) from lake.raw_t_trades").fetchone()[0] == 5
    assert con.execute("select symbol, count(*) from lake.raw_t_trades group by 1 order by 1").fetchall() == [
        ("AAA", 3), ("BBB", 2)]
    assert con.execute("select sum(close) from lake.raw_t_bars_daily").fetchone()[0] == 6.0


def test_delete_days_removes_only_those_days(lake, tmp_path):
    lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2)]))
    lake.write(BARS, bars([D1, D2, D3], close=1.0))
    assert lake.delete_days(TRADES, "AAA", [D2]).days_deleted == 1
    assert lake.read("raw_t_trades")["date"].unique().to_list() == [D1]
    assert lake.delete_days(BARS, "AAA", [D1, D3]).days_deleted == 2
    assert lake.read("raw_t_bars_daily")["date"].to_list() == [D2]
    assert lake.delete_days(BARS, "AAA", [D2]).days_deleted == 1
    assert lake.read("raw_t_bars_daily").height == 0
    assert lake.delete_days(TRADES, "BBB", [D1]).days_deleted == 0  # nothing stored: nothing to do


def test_a_lake_of_the_earlier_layout_is_refused_then_upgraded_in_place(tmp_path):
    """Tables written as symbol=<S>/date=<period>/data.parquet with the symbol in the file: reading them says
    what to do, and `qf lake upgrade` converts them with every row kept."""
    root = tmp_path / "lake"
    old_trades = pl.concat([trades(D1, 3), trades(D2, 2, symbol="BBB")])
    for (symbol, day), part in old_trades.group_by(["symbol", "date"]):
        folder = root / "raw_t_trades" / f"symbol={symbol}" / f"date={day}"
        folder.mkdir(parents=True)
        part.write_parquet(folder / "data.parquet")
    (root / "raw_t_trades" / "_table.json").write_text('{"partition": "day"}')
    folder = root / "raw_t_bars_daily" / "symbol=AAA" / "date=2024-01-01"
    folder.mkdir(parents=True)
    bars([D1, D2], close=3.0).write_parquet(folder / "data.parquet")
    lake = Lake(Store(str(root)))
    with pytest.raises(LakeLayoutError, match="qf lake upgrade"):
        lake.read("raw_t_trades")
    assert lake.upgrade_layout() == 3
    got = lake.read("raw_t_trades").sort("symbol", "date", "trade_id")
    assert got.equals(old_trades.sort("symbol", "date", "trade_id").select(got.columns))
    assert lake.read("raw_t_bars_daily")["close"].to_list() == [3.0, 3.0]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet")) == [
        "raw_t_bars_daily/symbol=AAA/year=2024/data.parquet",
        "raw_t_trades/symbol=AAA/day=2024-01-02/data.parquet",
        "raw_t_trades/symbol=BBB/day=2024-01-03/data.parquet",
    ]
    assert not list(root.rglob("_table.json")) and lake.upgrade_layout() == 0


def test_qf_lake_upgrade_and_tables(small_project):
    folder = small_project / ".quantflow" / "lake" / "raw_sample_trades" / "symbol=AAA" / "date=2024-01-02"
    folder.mkdir(parents=True)
    trades(D1, 3).write_parquet(folder / "data.parquet")

    def qf(*args):
        return subprocess.run([sys.executable, "-m", "quantflow.cli", "--project-dir", str(small_project), "lake",
                               *args], capture_output=True, text=True)

    refused = qf("tables")
    assert refused.returncode == 1 and "run `qf lake upgrade`" in refused.stderr
    upgraded = qf("upgrade")
    assert upgraded.returncode == 0 and "1 partitions converted" in upgraded.stdout
    listed = qf("tables")
    assert listed.returncode == 0 and listed.stdout.startswith("raw_sample_trades: 1 partitions (day)")


def test_append_stores_a_key_once_even_within_one_frame(lake):
    doubled = pl.concat([trades(D1, 2), trades(D1, 2)])
    assert lake.write(TRADES, trades(D1, 1)).rows_written == 1
    assert lake.write(TRADES, doubled, "append").rows_written == 1
    assert lake.read("raw_t_trades")["trade_id"].to_list() == [0, 1]


def test_partitions_written_before_a_column_existed_still_read(lake, tmp_path):
    """A bar table gained ``complete``: old month files lack it, and every reader fills it with null."""
    import quantflow.lake as qlake
    from quantflow.storage.schemas import TableSpec

    old = pl.DataFrame({"symbol": ["AAA"], "date": [D1], "ts_first": [1], "volume": [1.0]})
    new = pl.DataFrame({"symbol": ["AAA"], "date": [dt.date(2024, 2, 1)], "ts_first": [2], "volume": [2.0],
                        "complete": [True]})
    lake.write(TableSpec("cdm_x_bars", dict(old.schema), "month", ("symbol", "date")), old)
    lake.write(TableSpec("cdm_x_bars", dict(new.schema), "month", ("symbol", "date")), new)
    for got in (lake.read("cdm_x_bars"), qlake.read("cdm_x_bars", lake=lake)):
        assert got.sort("date")["complete"].to_list() == [None, True]


def test_an_interrupted_upgrade_run_again_keeps_every_row(tmp_path):
    root = tmp_path / "lake"
    for day in (D1, D2):  # two old day folders of one month of a bar table
        folder = root / "cdm_x_bars" / "symbol=AAA" / f"date={day}"
        folder.mkdir(parents=True)
        pl.DataFrame({"symbol": ["AAA"], "date": [day], "v": [1.0]}).write_parquet(folder / "data.parquet")
    lake = Lake(Store(str(root)))
    # the first upgrade wrote the month file, then died after removing one old folder
    month = root / "cdm_x_bars" / "symbol=AAA" / "month=2024-01"
    month.mkdir(parents=True)
    pl.DataFrame({"date": [D1, D2], "v": [1.0, 1.0]}).write_parquet(month / "data.parquet")
    import shutil

    shutil.rmtree(root / "cdm_x_bars" / "symbol=AAA" / f"date={D1}")
    assert lake.upgrade_layout() == 1
    assert lake.read("cdm_x_bars")["date"].to_list() == [D1, D2]


@pytest.mark.parametrize("order", ["new_column_first", "new_column_last"])
def test_a_read_across_partitions_written_with_other_columns_fills_nulls(tmp_path, order):
    """One polars call reads a symbol's files when they share a schema; partitions from before a column
    existed (older or newer than the others) still read, with nulls there."""
    from quantflow.storage.schemas import TableSpec

    lake = Lake(Store(str(tmp_path)))
    old = pl.DataFrame({"symbol": "AAA", "date": [dt.date(2020, 5, 1), dt.date(2021, 5, 1)], "x": [1.0, 2.0]})
    new = pl.DataFrame({"symbol": "AAA", "date": [dt.date(2022, 5, 1)], "x": [3.0], "y": [9.0]})
    first, second = (new, old) if order == "new_column_first" else (old, new)
    for frame in (first, second):
        lake.write(TableSpec("wide", dict(frame.schema), "year", ("symbol", "date")), frame, "overwrite")
    got = lake.read("wide", ["AAA"]).sort("date")
    assert got["x"].to_list() == [1.0, 2.0, 3.0] and got["y"].to_list() == [None, None, 9.0]
    assert lake.read("wide", ["AAA"], columns=["date", "y"]).sort("date")["y"].to_list() == [None, None, 9.0]
    many = lake.read("wide", None).sort("date")  # every symbol, same files
    assert many.height == 3 and many["symbol"].to_list() == ["AAA"] * 3


def test_replace_makes_the_range_exactly_the_new_rows_and_keeps_the_rest(lake, tmp_path, monkeypatch):
    """Year partitions: one wholly in the range (no stored row read), one cut by it (rows outside kept),
    one with nothing new (emptied and removed), one symbol untouched; every new partition was staged,
    synced at once and moved in, and the staging area is left empty."""
    days = [dt.date(2022, 12, 30), dt.date(2023, 6, 1), dt.date(2023, 6, 2), dt.date(2024, 1, 2),
            dt.date(2024, 6, 3)]
    lake.write(BARS, pl.concat([bars(days, 1.0), bars(days, 1.0, "BBB")]), "overwrite")
    syncs = []
    monkeypatch.setattr(Store, "sync_staged", lambda self, folder, real=Store.sync_staged: (syncs.append(folder),
                                                                                          real(self, folder)))
    new = pl.concat([bars([dt.date(2023, 6, 2), dt.date(2023, 7, 3)], 2.0),
                     bars([dt.date(2024, 1, 2)], 3.0)])
    result = lake.replace(BARS, new, ["AAA"], dt.date(2023, 1, 1), dt.date(2024, 3, 31))
    assert len(syncs) == 1
    assert result.rows_written == 3 and result.days_written == 3
    assert result.days_deleted == 1  # 2023-06-01 left the range's rows; 2023-06-02 and 2024-01-02 replaced
    aaa = lake.read(BARS.name, ["AAA"]).sort("date")
    assert aaa.select("date", "close").rows() == [
        (dt.date(2022, 12, 30), 1.0), (dt.date(2023, 6, 2), 2.0), (dt.date(2023, 7, 3), 2.0),
        (dt.date(2024, 1, 2), 3.0), (dt.date(2024, 6, 3), 1.0)]
    assert lake.read(BARS.name, ["BBB"]).height == len(days)
    # a range that empties a whole partition removes its file
    emptied = lake.replace(BARS, bars([], 0.0).cast({"date": pl.Date}), ["AAA"], dt.date(2023, 1, 1),
                           dt.date(2023, 12, 31))
    assert emptied.days_deleted == 2 and emptied.rows_written == 0
    assert not (tmp_path / "lake" / BARS.name / "symbol=AAA" / "year=2023" / "data.parquet").exists()
    assert lake.read(BARS.name, ["AAA"])["date"].sort().to_list() == [dt.date(2022, 12, 30), dt.date(2024, 1, 2),
                                                                       dt.date(2024, 6, 3)]
    assert not list((tmp_path / "lake" / "_staging").rglob("*.parquet"))


def test_a_column_named_like_the_partition_key_reads_back_as_stored(lake):
    """Files of many partitions are read in one call with the symbol taken from their paths; a column
    called ``year`` (the key of daily partitions) must keep its stored values, not the path's."""
    spec = spec_for_kind("raw_t_bars_daily", "bars_daily")
    frame = bars([dt.date(2023, 6, 1), dt.date(2024, 6, 3)], 1.0).with_columns(year=pl.Series([7.0, 8.0]))
    spec = type(spec)(spec.name, {**spec.schema, "year": pl.Float64}, spec.partition, spec.sort_by)
    lake.write(spec, pl.concat([frame, frame.with_columns(symbol=pl.lit("BBB"))]), "overwrite")
    back = lake.read(spec.name).sort("symbol", "date")
    assert back["year"].to_list() == [7.0, 8.0, 7.0, 8.0] and back["symbol"].to_list() == ["AAA"] * 2 + ["BBB"] * 2
    assert lake.read(spec.name, columns=["symbol", "date", "year"])["year"].to_list() == [7.0, 8.0, 7.0, 8.0]



@pytest.mark.parametrize("columns", [["date"], ["symbol", "date", "close"], ["close", "symbol"]])
def test_a_read_of_some_columns_across_partitions_is_one_call_with_each_rows_symbol(lake, monkeypatch, columns):
    """Reads of a few columns (``stored_days``, labels, features) take the multi-file path, not a read per file:
    a projection that left out the hive column ``symbol`` made polars fail there and fall back."""
    days = [dt.date(2023, 6, 1), dt.date(2024, 6, 3), dt.date(2025, 1, 2)]
    lake.write(BARS, pl.concat([bars(days, 1.0), bars(days[1:], 2.0, symbol="BBB")]), "overwrite")
    monkeypatch.setattr(Lake, "read_partition", lambda *a, **k: pytest.fail("read one partition at a time"))
    back = lake.read(BARS.name, columns=columns)
    assert back.columns == columns and back.height == 5
    if "close" in columns and "symbol" in columns:
        assert sorted(back.select("symbol", "close").iter_rows()) == [("AAA", 1.0)] * 3 + [("BBB", 2.0)] * 2
    assert lake.stored_days(BARS.name, "BBB", days[0], days[-1]) == set(days[1:])


@pytest.mark.parametrize("seed", range(3))
def test_rows_are_stored_in_key_order_whether_or_not_they_come_in_it(lake, seed):
    """``write`` skips its sort when the rows come in (symbol, date, ts, trade_id) order; rows out of order,
    ties on ts, and null sort keys are still stored in that order (ties keep their arrival order)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 400
    base = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)
    df = pl.DataFrame({
        "symbol": rng.choice(["AAA", "BBB"], n).tolist(),
        "date": [D1 + dt.timedelta(days=int(d)) for d in rng.integers(0, 2, n)],
        "ts": [base + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 5, n)],
        "trade_id": rng.integers(0, 3, n).tolist(),
        "price": np.arange(n, dtype=float).tolist(), "size": [100.0] * n,
    })
    keys = ["symbol", "date", "ts", "trade_id"]
    in_order = df.sort(keys, maintain_order=True)
    # in order but for a null trade_id at the end of its (symbol, date, ts): a sort puts nulls first
    with_null = in_order.with_columns(trade_id=pl.when(pl.int_range(pl.len()) == n - 1).then(None)
                                      .otherwise(pl.col("trade_id")))
    # ts going back while trade_id goes up: only a comparison of the keys in order sees it
    ts_back = trades(D1, 4).with_columns(pl.col("ts").reverse())
    for frame in (df, in_order, in_order.reverse(), with_null, ts_back):
        lake.write(TRADES, frame, "overwrite")
        stored = lake.read("raw_t_trades").select(frame.columns).join(
            frame.select("symbol", "date").unique(), on=["symbol", "date"], how="semi", maintain_order="left")
        expected = frame.sort(keys, maintain_order=True)
        assert stored.equals(expected.with_columns(pl.col("ts").dt.cast_time_unit("ns").dt.replace_time_zone("UTC")))


@pytest.mark.parametrize("compression", [None, "zstd", "lz4", "uncompressed"])
def test_every_write_path_uses_the_lakes_codec(tmp_path, compression):
    """Day partitions staged at once, a day rewritten in place, year partitions merged, moved in and emptied."""
    lake = Lake(Store(str(tmp_path / "lake")), *([compression] if compression else []))
    lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2)]))
    lake.write(TRADES, trades(D1, 4, price=11.0), "overwrite")
    lake.write(BARS, bars([D1], close=1.0))
    lake.write(BARS, bars([D2], close=2.0), "append")  # merged with the stored day
    lake.write(BARS, bars([D1, D2], close=3.0, symbol="BBB"), "overwrite")
    lake.delete_days(BARS, "AAA", [D2])
    expected = {(compression or "snappy").upper()}  # pyarrow names polars' LZ4_RAW "LZ4"
    assert parquet_codecs(tmp_path / "lake") == expected
    assert lake.read("raw_t_trades").height == 6 and lake.read("raw_t_bars_daily").height == 3


def test_an_unknown_codec_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="lake compression must be one of snappy, zstd, lz4, uncompressed; got 'gzip'"):
        Lake(Store(str(tmp_path / "lake")), "gzip")
    assert not (tmp_path / "lake").exists()
