"""The CSV daily-bar feed: adjustment on real Alpha Vantage data, dirty-row reporting on real IEX data,
and every bad-row rule on small hand-written files."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import textwrap
from pathlib import Path

import polars as pl
import pytest

from quantflow.ingest.feeds.base import FeedError, build_feed
from quantflow.ingest.feeds.csv_daily import CsvDailyFeed
from quantflow.metadata.schema import CsvFeedConfig
from quantflow.storage.schemas import BAD_ROWS_SCHEMA, BARS_DAILY_SCHEMA

DIRTY = [
    "AOS",
    "BBY",
    "BHF",
    "CHD",
    "CHK",
    "DHR",
    "ES",
    "FTV",
    "IP",
    "LNT",
    "O",
    "REGN",
    "SPG",
    "UA",
    "VRTX",
    "WRK",
]
ALL_TIME = (dt.date(1990, 1, 1), dt.date(2030, 12, 31))


def adjusted_feed(folder: Path, **params) -> CsvDailyFeed:
    return CsvDailyFeed(
        "equities",
        {
            "path": str(folder),
            "columns": {
                "date": "timestamp",
                "adjusted_close": "adjusted_close",
                "dividend": "dividend_amount",
                "split_coefficient": "split_coefficient",
            },
            "adjust": "adjusted_close",
            **params,
        },
        ".",
    )


def bars_and_bad(feed, symbols, start=ALL_TIME[0], end=ALL_TIME[1]):
    batches = list(feed.iter_batches(symbols, start, end))
    return (pl.concat([b.tables["bars_daily"] for b in batches]), pl.concat([b.bad_rows for b in batches]))


# ------------------------------------------------------ real data: daily_us_equities (raw + adjusted)


def test_adjusted_aapl_matches_the_adjusted_close_column(shared_data):
    folder = shared_data / "daily_us_equities"
    bars, bad = bars_and_bad(adjusted_feed(folder), ["AAPL"])
    assert bad.height == 0 and bars.schema == pl.Schema(BARS_DAILY_SCHEMA)
    with open(folder / "AAPL.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert bars.height == len(rows)
    expected = {dt.date.fromisoformat(r["timestamp"]): float(r["adjusted_close"]) for r in rows}
    assert dict(zip(bars["date"].to_list(), bars["close"].to_list())) == expected
    assert bars.select(
        (
            (pl.col("low") <= pl.col("open"))
            & (pl.col("open") <= pl.col("high"))
            & (pl.col("low") <= pl.col("close"))
            & (pl.col("close") <= pl.col("high"))
        ).all()
    ).item()
    assert bars["date"].is_sorted() and bars["symbol"].unique().to_list() == ["AAPL"]


def test_aapl_2020_split_has_no_jump_when_adjusted(shared_data):
    folder = shared_data / "daily_us_equities"
    bars, _ = bars_and_bad(adjusted_feed(folder), ["AAPL"], dt.date(2020, 8, 24), dt.date(2020, 9, 4))
    assert bars["date"].min() == dt.date(2020, 8, 24) and bars["date"].max() == dt.date(2020, 9, 4)
    before = bars.filter(pl.col("date") == dt.date(2020, 8, 28)).row(0, named=True)
    after = bars.filter(pl.col("date") == dt.date(2020, 8, 31)).row(0, named=True)
    assert abs(after["open"] / before["close"] - 1) < 0.05  # the raw series drops ~75 % here
    closes = bars["close"].to_list()
    assert max(abs(b / a - 1) for a, b in itertools.pairwise(closes)) < 0.1
    # volume in post-split shares: the raw 2020-08-28 volume times 4, the 2020-08-31 volume as written
    with open(folder / "AAPL.csv", newline="") as fh:
        raw = {r["timestamp"]: r for r in csv.DictReader(fh)}
    assert before["volume"] == pytest.approx(4 * float(raw["2020-08-28"]["volume"]))
    assert after["volume"] == pytest.approx(float(raw["2020-08-31"]["volume"]))
    assert before["adj_factor"] == pytest.approx(
        float(raw["2020-08-28"]["adjusted_close"]) / float(raw["2020-08-28"]["close"])
    )

    raw_bars, _ = bars_and_bad(
        CsvDailyFeed("raw", {"path": str(folder), "columns": {"date": "timestamp"}}, "."),
        ["AAPL"],
        dt.date(2020, 8, 28),
        dt.date(2020, 8, 31),
    )
    assert raw_bars["close"].to_list() == [
        float(raw["2020-08-28"]["close"]),
        float(raw["2020-08-31"]["close"]),
    ]
    assert raw_bars["adj_factor"].to_list() == [1.0, 1.0]


def test_relative_path_resolves_against_the_project_dir(shared_data):
    cfg = CsvFeedConfig(
        name="eq", kind="csv", params={"path": "data/daily_us_equities", "columns": {"date": "timestamp"}}
    )
    feed = build_feed(cfg, shared_data.parent)
    bars, _ = bars_and_bad(feed, ["MSFT"], dt.date(2021, 4, 19), dt.date(2021, 4, 21))
    assert bars.height == 3


# ------------------------------------------------------ real data: the 5-year file set with dirty rows


def independent_bad_lines(path: Path) -> set[int]:
    """Lines of rows with a blank field or an impossible OHLC, found with the csv module alone."""
    bad = set()
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for line, row in enumerate(reader, start=2):
            rec = dict(zip(header, row))
            if len(row) != len(header) or any(v.strip() == "" for v in row):
                bad.add(line)
                continue
            o, h, lo, c, v = (float(rec[k]) for k in ("open", "high", "low", "close", "volume"))
            if h < max(o, c) or lo > min(o, c) or h < lo or min(o, h, lo, c) <= 0 or v < 0:
                bad.add(line)
    return bad


def test_dirty_rows_all_reported_with_their_lines_and_none_pass(shared_data):
    folder = shared_data / "daily_us_equities_5yr_raw"
    feed = CsvDailyFeed("iex", {"path": str(folder), "columns": {"symbol": "Name"}}, ".")
    batches = list(feed.iter_batches(DIRTY, *ALL_TIME))
    assert len(batches) == len(DIRTY)
    total_bad = 0
    for symbol, batch in zip(DIRTY, batches):
        path = folder / f"{symbol}.csv"
        bad, bars = batch.bad_rows, batch.tables["bars_daily"]
        assert bad.schema == pl.Schema(BAD_ROWS_SCHEMA)
        expected = independent_bad_lines(path)
        assert expected, f"{symbol} should have dirty rows"
        assert set(bad["line"].to_list()) == expected, symbol
        assert bad["symbol"].unique().to_list() == [symbol] and bad["feed"].unique().to_list() == ["iex"]
        assert bad["file"].unique().to_list() == [str(path)]
        assert bad["reason"].null_count() == 0
        lines = path.read_text().splitlines()
        for line, date in zip(bad["line"], bad["date"]):
            assert lines[line - 1].startswith(date + ",")  # the reported date is the one on that line
        assert not set(bad["date"].to_list()) & {d.isoformat() for d in bars["date"].to_list()}
        assert bars.height + bad.height == len(lines) - 1
        assert bars.select(
            (
                (pl.col("low") <= pl.min_horizontal("open", "close"))
                & (pl.col("high") >= pl.max_horizontal("open", "close"))
            ).all()
        ).item()
        total_bad += bad.height
    assert total_bad == 23


def test_dirty_rows_reasons_are_specific(shared_data):
    feed = CsvDailyFeed("iex", {"path": str(shared_data / "daily_us_equities_5yr_raw")}, ".")
    [batch] = list(feed.iter_batches(["DHR"], *ALL_TIME))
    reasons = dict(zip(batch.bad_rows["line"], batch.bad_rows["reason"]))
    assert reasons == {
        437: "low 80.49 > min(open, close) 78.47",
        600: "blank open",
        723: "blank open, high, low",
    }


def test_fail_policy_raises_before_yielding_anything(shared_data):
    feed = CsvDailyFeed(
        "iex", {"path": str(shared_data / "daily_us_equities_5yr_raw"), "bad_rows": "fail"}, "."
    )
    batches = feed.iter_batches(["AAPL", "BHF"], *ALL_TIME)
    with pytest.raises(FeedError) as err:
        next(batches)
    msg = str(err.value)
    assert "feed 'iex'" in msg and "symbol BHF" in msg and "BHF.csv line 9" in msg and "2017-07-26" in msg
    # the same files in a range without bad rows are fine
    ok = list(feed.iter_batches(["AAPL", "BHF"], dt.date(2017, 8, 1), dt.date(2017, 8, 31)))
    assert [b.tables["bars_daily"].height for b in ok] == [23, 23]


# ---------------------------------------------------------------- hand-written files: every rule


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


MESSY = """
Day,O,H,L,C,Vol,Ticker
01/02/2024,10,11,9,10.5,1000,XYZ
01/03/2024,10,11,9,10.5,-5,XYZ
01/04/2024,0,11,9,10.5,1000,XYZ

01/05/2024,10,9,9.5,10,1000,XYZ
2024-01-08,10,11,9,10.5,1000,XYZ
01/09/2024,abc,11,9,10.5,1000,XYZ
01/10/2024,10,11,9,10.5
01/11/2024,10,11,9,10.5,1000,XYZ
01/11/2024,10,12,9,10.5,2000,XYZ
01/12/2024,10,11,9,10.5,1000,ABC
"",10,11,9,10.5,1000,XYZ
01/16/2024,10,11,9,10.5,1000,XYZ
"""

MESSY_COLUMNS = {
    "date": "Day",
    "open": "O",
    "high": "H",
    "low": "L",
    "close": "C",
    "volume": "Vol",
    "symbol": "Ticker",
}


def messy_feed(folder: Path, **params) -> CsvDailyFeed:
    return CsvDailyFeed(
        "messy",
        {
            "path": str(folder),
            "filename_pattern": "{symbol}_daily.csv",
            "columns": MESSY_COLUMNS,
            "date_format": "%m/%d/%Y",
            **params,
        },
        ".",
    )


def test_every_bad_row_rule_with_lines(tmp_path):
    path = write(tmp_path, "XYZ_daily.csv", MESSY)
    [batch] = list(messy_feed(tmp_path).iter_batches(["XYZ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))
    bad = {r["line"]: (r["date"], r["reason"]) for r in batch.bad_rows.iter_rows(named=True)}
    assert bad == {
        3: ("01/03/2024", "negative volume -5.0"),
        4: (
            "01/04/2024",
            ("non-positive price (open 0.0, high 11.0, low 9.0, close 10.5); low 9.0 > min(open, close) 0.0"),
        ),
        6: ("01/05/2024", "high 9.0 < max(open, close) 10.0; high 9.0 < low 9.5"),
        7: ("2024-01-08", "unparseable date 2024-01-08 (date_format %m/%d/%Y)"),
        8: ("01/09/2024", "unparseable open abc"),
        9: ("01/10/2024", "expected 7 fields, found 5"),
        11: ("01/11/2024", "duplicate date, first seen on line 10"),
        12: ("01/12/2024", "symbol column says ABC"),
        13: ("", "blank date"),
    }
    assert set(batch.bad_rows["file"]) == {str(path)}
    bars = batch.tables["bars_daily"]
    assert bars["date"].to_list() == [dt.date(2024, 1, 2), dt.date(2024, 1, 11), dt.date(2024, 1, 16)]
    assert (
        bars.filter(pl.col("date") == dt.date(2024, 1, 11))["volume"].item() == 1000.0
    )  # the first one kept


def test_fail_policy_lists_the_rows(tmp_path):
    write(tmp_path, "XYZ_daily.csv", MESSY)
    with pytest.raises(
        FeedError, match=r"(?s)9 bad rows.*XYZ_daily.csv line 3 \(XYZ, date '01/03/2024'\)"
    ) as err:
        list(
            messy_feed(tmp_path, bad_rows="fail").iter_batches(
                ["XYZ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)
            )
        )
    assert err.value.symbol == "XYZ" and err.value.feed == "messy"


def test_range_filters_bars_and_bad_rows(tmp_path):
    write(tmp_path, "XYZ_daily.csv", MESSY)
    [batch] = list(messy_feed(tmp_path).iter_batches(["XYZ"], dt.date(2024, 1, 10), dt.date(2024, 1, 16)))
    assert batch.tables["bars_daily"]["date"].to_list() == [dt.date(2024, 1, 11), dt.date(2024, 1, 16)]
    # rows dated out of range are not reported; rows whose date cannot be read always are
    assert batch.bad_rows["line"].to_list() == [7, 9, 11, 12, 13]


def test_missing_file_names_the_expected_path(tmp_path):
    write(tmp_path, "XYZ_daily.csv", MESSY)
    with pytest.raises(FeedError, match=r"symbol QQQ: no file for this symbol: expected .*QQQ_daily\.csv"):
        list(messy_feed(tmp_path).iter_batches(["QQQ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))


def test_missing_column_names_column_and_file(tmp_path):
    write(tmp_path, "XYZ.csv", "date,open,high,low,close\n2024-01-02,1,1,1,1\n")
    feed = CsvDailyFeed("c", {"path": str(tmp_path)}, ".")
    with pytest.raises(FeedError, match=r"XYZ\.csv, line 1: missing columns 'volume' \(for volume\)"):
        list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))


def test_a_header_only_file_is_an_error_not_zero_rows(tmp_path):
    write(tmp_path, "XYZ.csv", "date,open,high,low,close,volume\n\n")
    feed = CsvDailyFeed("c", {"path": str(tmp_path)}, ".")
    with pytest.raises(FeedError, match=r"symbol XYZ, file .*XYZ\.csv, line 1: the file has a header but no data rows"):
        list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))


def test_implausibly_large_prices_and_volumes_are_bad_rows(tmp_path):
    write(tmp_path, "XYZ.csv", "date,open,high,low,close,volume\n2024-01-02,10,11,9,10,100\n"
                               "2024-01-03,10,1e308,9,10,100\n2024-01-04,10,11,9,10,1e308\n")
    feed = CsvDailyFeed("c", {"path": str(tmp_path)}, ".")
    [batch] = list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))
    assert batch.tables["bars_daily"]["date"].to_list() == [dt.date(2024, 1, 2)]
    reasons = dict(zip(batch.bad_rows["line"], batch.bad_rows["reason"]))
    assert reasons == {3: "implausible price (open 10.0, high 1e+308, low 9.0, close 10.0; 1e+09 or more)",
                       4: "implausible volume 1e+308 (1e+15 or more)"}


def test_missing_folder_is_an_error(tmp_path):
    feed = CsvDailyFeed("c", {"path": "nowhere"}, tmp_path)
    with pytest.raises(FeedError, match="does not exist"):
        list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))


def test_split_volume_adjustment_and_bad_rows_keep_their_split(tmp_path):
    write(
        tmp_path,
        "S.csv",
        """
        timestamp,open,high,low,close,adjusted_close,volume,split_coefficient
        2024-01-02,100,110,90,100,49,10,1.0
        2024-01-03,100,,90,100,49,10,1.0
        2024-01-04,50,55,45,50,49.5,20,2.0
        2024-01-05,50,55,45,50,50,20,1.0
        """,
    )
    feed = CsvDailyFeed(
        "s",
        {
            "path": str(tmp_path),
            "columns": {
                "date": "timestamp",
                "adjusted_close": "adjusted_close",
                "split_coefficient": "split_coefficient",
            },
            "adjust": "adjusted_close",
        },
        ".",
    )
    [batch] = list(feed.iter_batches(["S"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))
    bars = batch.tables["bars_daily"]
    assert bars["volume"].to_list() == [20.0, 20.0, 20.0]
    assert bars["close"].to_list() == [49.0, 49.5, 50.0]
    assert bars["open"].to_list() == pytest.approx([49.0, 49.5, 50.0])
    assert batch.bad_rows["line"].to_list() == [3]
