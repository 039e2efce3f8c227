"""The feed contract: registry, batches conformed to the raw schemas, error messages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from quantflow.ingest.feeds import FEED_CLASSES, FeedBatch, FeedError, build_feed, feed_class
from quantflow.ingest.feeds.base import Feed, bad_rows_frame, weekdays
from quantflow.metadata.schema import FEED_KINDS, CsvFeedConfig
from quantflow.storage.schemas import BAD_ROWS_SCHEMA, BARS_DAILY_SCHEMA, QUOTES_SCHEMA, TRADES_SCHEMA


def test_every_metadata_feed_kind_has_a_feed_class():
    assert set(FEED_KINDS) == set(FEED_CLASSES)
    for kind in FEED_KINDS:
        cls = feed_class(kind)
        assert issubclass(cls, Feed) and cls.kind == kind
    with pytest.raises(FeedError, match="unknown feed kind 'ftp'"):
        feed_class("ftp")


def test_build_feed_from_metadata_config(tmp_path):
    cfg = CsvFeedConfig(name="daily", kind="csv", params={"path": "data"})
    feed = build_feed(cfg, tmp_path)
    assert feed.name == "daily" and feed.kinds == ("bars_daily",)
    assert feed.resolve_path("data") == tmp_path / "data"
    assert feed.resolve_path("/abs/x") == Path("/abs/x")


def test_batch_conforms_and_fills_missing_kinds():
    trades = pl.DataFrame(
        {
            "symbol": ["A"],
            "date": [dt.date(2024, 1, 2)],
            "ts": [dt.datetime(2024, 1, 2, 15, tzinfo=dt.UTC)],
            "trade_id": [1],
            "price": [10],
            "size": [5],
            "extra": ["dropped"],
        }
    )
    batch = FeedBatch.build(("trades", "quotes", "bars_daily"), trades=trades)
    assert batch.tables["trades"].schema == pl.Schema(TRADES_SCHEMA)
    assert batch.tables["trades"]["side"].to_list() == [None]
    assert batch.tables["quotes"].schema == pl.Schema(QUOTES_SCHEMA) and batch.tables["quotes"].height == 0
    assert batch.tables["bars_daily"].schema == pl.Schema(BARS_DAILY_SCHEMA)
    assert batch.bad_rows.schema == pl.Schema(BAD_ROWS_SCHEMA) and batch.rows == {
        "trades": 1,
        "quotes": 0,
        "bars_daily": 0,
    }
    with pytest.raises(ValueError, match="not among the feed's kinds"):
        FeedBatch.build(("quotes",), trades=trades)


def test_bad_rows_frame_and_error_message():
    bad = bad_rows_frame([{"feed": "f", "symbol": "A", "date": "x", "reason": "why"}])
    assert bad.schema == pl.Schema(BAD_ROWS_SCHEMA) and bad["line"].to_list() == [None]
    err = FeedError("broken", feed="f", symbol="A", file="/d/A.csv", line=7)
    assert str(err) == "feed 'f', symbol A, file /d/A.csv, line 7: broken"
    assert (err.feed, err.symbol, err.file, err.line, err.reason) == ("f", "A", "/d/A.csv", 7, "broken")
    assert str(FeedError("plain")) == "plain"


def test_params_errors_and_range_checks(tmp_path):
    with pytest.raises(FeedError, match="feed 'c': invalid params for a csv feed"):
        feed_class("csv")("c", {"adjust": "adjusted_close"}, tmp_path)
    feed = feed_class("synthetic")("s", None, tmp_path)
    with pytest.raises(FeedError, match="after end"):
        list(feed.iter_batches(["A"], dt.date(2024, 1, 5), dt.date(2024, 1, 4)))
    with pytest.raises(FeedError, match="list of tickers"):
        list(feed.iter_batches("AAA", dt.date(2024, 1, 4), dt.date(2024, 1, 4)))


def test_weekdays():
    assert weekdays(dt.date(2024, 1, 5), dt.date(2024, 1, 8)) == [dt.date(2024, 1, 5), dt.date(2024, 1, 8)]
    assert weekdays(dt.date(2024, 1, 6), dt.date(2024, 1, 7)) == []


def test_implausible_ticks_are_reported_and_kept_out_of_the_raw_table():
    """Any feed's trades and quotes: 1e308, non-finite, non-positive prices or sizes and crossed quotes are
    bad rows (the no_bad_rows check), never raw rows."""
    from quantflow.ingest.runner import split_bad_ticks

    day = dt.date(2024, 1, 2)
    ts = [dt.datetime(2024, 1, 2, 15, i, tzinfo=dt.UTC) for i in range(5)]
    trades = pl.DataFrame({"symbol": ["AAA"] * 5, "date": [day] * 5, "ts": ts, "trade_id": list(range(5)),
                           "price": [10.0, 1e308, float("nan"), 10.0, -1.0], "size": [1.0, 1.0, 1.0, 1e308, 1.0]})
    good, bad = split_bad_ticks("poly", "trades", trades)
    assert good["trade_id"].to_list() == [0]
    assert bad.columns == list(BAD_ROWS_SCHEMA) and bad.height == 4
    assert "implausible price" in bad["reason"][0] and "implausible size" in bad["reason"][2]
    quotes = pl.DataFrame({"symbol": ["AAA"] * 2, "date": [day] * 2, "ts": ts[:2], "quote_id": [0, 1],
                           "bid": [10.0, 10.2], "ask": [10.1, 10.1], "bid_size": [1.0, 1.0], "ask_size": [1.0, 1.0]})
    good, bad = split_bad_ticks("poly", "quotes", quotes)
    assert good["quote_id"].to_list() == [0] and bad["reason"].to_list() == ["crossed quote: bid 10.2 > ask 10.1"]
    assert split_bad_ticks("poly", "bars_daily", trades)[0].height == 5  # daily bars have their own checks
