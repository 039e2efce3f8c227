"""The LOBSTER feed: the real AMZN 2012-06-21 level-1 sample and small hand-written file pairs."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantflow.compute.order_book import LEVEL_SET
from quantflow.ingest.feeds.base import FeedError, build_feed
from quantflow.ingest.feeds.lobster import LobsterFeed
from quantflow.metadata.schema import LobsterFeedConfig
from quantflow.state_engine.book import book_per_message
from quantflow.storage.schemas import MESSAGES_SCHEMA, QUOTES_SCHEMA, TRADES_SCHEMA

DAY = dt.date(2012, 6, 21)
DAY2 = dt.date(2024, 1, 16)  # the hand-written files' day
UTC = dt.UTC


@pytest.fixture(scope="module")
def amzn(shared_data):
    folder = shared_data / "lobster_amzn_2012-06-21_level1"
    feed = LobsterFeed("lob", {"path": str(folder)}, ".")
    [batch] = list(feed.iter_batches(["AMZN"], dt.date(2012, 6, 18), dt.date(2012, 6, 22)))
    with open(next(folder.glob("*_message_1.csv")), newline="") as fh:
        messages = list(csv.reader(fh))[1:]
    with open(next(folder.glob("*_orderbook_1.csv")), newline="") as fh:
        book = list(csv.reader(fh))[1:]
    return batch, messages, book


def test_amzn_executions_match_an_independent_count(amzn):
    batch, messages, _ = amzn
    trades = batch.tables["trades"]
    assert trades.schema == pl.Schema(TRADES_SCHEMA)
    executions = [(i, m) for i, m in enumerate(messages, start=1) if m[1] in ("4", "5")]
    assert trades.height == len(executions) and trades.height > 10_000
    assert trades["trade_id"].to_list() == [i for i, _ in executions]
    assert trades["side"].to_list() == [-int(m[5]) for _, m in executions]
    assert trades["size"].to_list() == [float(m[3]) for _, m in executions]
    assert trades["ts"][0] == dt.datetime(2012, 6, 21, 13, 30, 0, 17460, tzinfo=UTC)  # 09:30:00.01746 EDT
    assert trades["price"][0] == 223.82
    assert 215 < trades["price"].min() and trades["price"].max() < 235
    assert trades["price"].mean() == pytest.approx(223.8, abs=3)
    assert trades["date"].unique().to_list() == [DAY] and trades["symbol"].unique().to_list() == ["AMZN"]
    last = dt.datetime.combine(DAY, dt.time(20, 0), tzinfo=UTC)
    assert trades["ts"].max() < last and trades["ts"].is_sorted()


def test_amzn_quotes_are_top_of_book_changes(amzn):
    batch, messages, book = amzn
    quotes = batch.tables["quotes"]
    assert quotes.schema == pl.Schema(QUOTES_SCHEMA)
    changed = [i for i, row in enumerate(book, start=1) if i == 1 or row != book[i - 2]]
    assert quotes["quote_id"].to_list() == changed
    first = quotes.row(0, named=True)
    assert (first["ask"], first["ask_size"], first["bid"], first["bid_size"]) == (
        223.95,
        100.0,
        223.18,
        100.0,
    )
    assert quotes["ts"].is_sorted() and (quotes["ask"] > quotes["bid"]).all()
    # the book row of message i is the state after message i, stamped with message i's time
    row = quotes.filter(pl.col("quote_id") == changed[5]).row(0, named=True)
    seconds = float(messages[changed[5] - 1][0])
    assert row["ts"] == dt.datetime(2012, 6, 21, 4, 0, tzinfo=UTC) + dt.timedelta(seconds=seconds)


def test_registry_and_relative_path(shared_data):
    cfg = LobsterFeedConfig(
        name="lob", kind="lobster", params={"path": "data/lobster_amzn_2012-06-21_level1"}
    )
    feed = build_feed(cfg, shared_data.parent)
    assert isinstance(feed, LobsterFeed) and feed.kinds == ("trades", "quotes", "messages")
    cfg.params.order_messages = False
    assert build_feed(cfg, shared_data.parent).kinds == ("trades", "quotes")
    assert [d for d, _ in feed.message_files("AMZN", DAY, DAY)] == [DAY]
    assert feed.message_files("AMZN", dt.date(2012, 6, 22), dt.date(2012, 6, 30)) == []


# ---------------------------------------------------------------- hand-written files

MESSAGES = [  # time, type, order id, size, price, direction
    "34200.000000001,1,1,100,1000000,1",
    "34200.5,1,2,50,1001000,-1",
    "34201.25,4,2,20,1001000,-1",  # a buy hits the resting sell at the ask
    "34202,3,9,10,990000,1",  # deep-book delete: top unchanged
    "34203,7,0,0,-1,-1",  # halt
    "34204,5,7,30,1000500,1",  # hidden buy order executed by a seller
    "34205.75,3,1,100,1000000,1",  # the bid side empties
]
BOOK = [
    "9999999999,0,1000000,100",
    "1001000,50,1000000,100",
    "1001000,30,1000000,100",
    "1001000,30,1000000,100",
    "1001000,30,1000000,100",
    "1001000,30,1000000,100",
    "1001000,30,-9999999999,0",
]


def write_day(
    folder: Path, symbol="XYZ", day="2024-01-16", messages=MESSAGES, book=BOOK, header=False, level=1
):
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{symbol}_{day}_34200000_57600000"
    (folder / f"{stem}_message_{level}.csv").write_text(
        ("Time,Type,OrderId,Size,Price,Direction\n" if header else "") + "\n".join(messages) + "\n"
    )
    if book is not None:
        (folder / f"{stem}_orderbook_{level}.csv").write_text(
            ("BestAsk,BestAskVolume,BestBid,BestBidVolume\n" if header else "") + "\n".join(book) + "\n"
        )


@pytest.mark.parametrize("header", [False, True])
def test_small_day_mapping(tmp_path, header):
    write_day(tmp_path, header=header)
    feed = LobsterFeed("lob", {"path": str(tmp_path)}, ".")
    [batch] = list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 15), dt.date(2024, 1, 19)))
    trades, quotes = batch.tables["trades"], batch.tables["quotes"]
    assert trades.select("trade_id", "price", "size", "side").rows() == [
        (3, 100.1, 20.0, 1),
        (6, 100.05, 30.0, -1),
    ]
    # January: EST, UTC-5; nanosecond precision survives
    assert trades["ts"][0] == dt.datetime(2024, 1, 16, 14, 30, 1, 250000, tzinfo=UTC)
    first_quote_ns = quotes.select(pl.col("ts").dt.epoch("ns")).item(0, 0)
    assert first_quote_ns % 1_000_000_000 == 1
    assert quotes["quote_id"].to_list() == [1, 2, 3, 7]  # unchanged rows (4, 5 halt, 6) dropped
    assert quotes.row(0, named=True)["ask"] is None and quotes.row(0, named=True)["ask_size"] is None
    last = quotes.row(3, named=True)
    assert last["bid"] is None and last["bid_size"] is None and last["ask"] == 100.1


def test_explicit_has_header_false_on_a_header_file_fails_clearly(tmp_path):
    write_day(tmp_path, header=True)
    feed = LobsterFeed("lob", {"path": str(tmp_path), "has_header": False}, ".")
    with pytest.raises(FeedError, match=r"message_1\.csv, line 1: 1 rows with missing or non-numeric fields"):
        list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 16), dt.date(2024, 1, 16)))


def test_row_count_mismatch_and_missing_book(tmp_path):
    write_day(tmp_path / "a", book=BOOK[:-1])
    with pytest.raises(FeedError, match="7 messages but 6 order-book rows"):
        list(
            LobsterFeed("lob", {"path": str(tmp_path / "a")}, ".").iter_batches(
                ["XYZ"], dt.date(2024, 1, 16), dt.date(2024, 1, 16)
            )
        )
    write_day(tmp_path / "b", book=None)
    with pytest.raises(FeedError, match=r"symbol XYZ, file .*message_1\.csv: order-book file .* is missing"):
        list(
            LobsterFeed("lob", {"path": str(tmp_path / "b")}, ".").iter_batches(
                ["XYZ"], dt.date(2024, 1, 16), dt.date(2024, 1, 16)
            )
        )


def test_bad_number_names_the_line(tmp_path):
    bad = list(MESSAGES)
    bad[3] = "34202,3,9,ten,990000,1"
    write_day(tmp_path, messages=bad, header=True)
    feed = LobsterFeed("lob", {"path": str(tmp_path)}, ".")
    with pytest.raises(FeedError, match=r"line 5: .*'34202,3,9,ten,990000,1'"):
        list(feed.iter_batches(["XYZ"], dt.date(2024, 1, 16), dt.date(2024, 1, 16)))


def test_files_are_picked_by_symbol_date_and_level(tmp_path):
    write_day(tmp_path, day="2024-01-16")
    write_day(tmp_path, day="2024-01-17")
    write_day(tmp_path, symbol="XYZW", day="2024-01-16")
    write_day(tmp_path, day="2024-01-18", level=5)
    feed = LobsterFeed("lob", {"path": str(tmp_path)}, ".")
    batches = list(feed.iter_batches(["XYZ", "NONE"], dt.date(2024, 1, 1), dt.date(2024, 1, 31)))
    assert [b.tables["trades"]["date"][0] for b in batches] == [dt.date(2024, 1, 16), dt.date(2024, 1, 17)]
    assert {b.tables["trades"]["symbol"][0] for b in batches} == {"XYZ"}


# ---------------------------------------------------------------- order messages and level sets


def test_amzn_messages_and_level_sets_rebuild_the_order_book_file(amzn):
    """Every LOBSTER message is in the messages table, in file order; the level sets after them make the
    book rebuilt from the table equal the order-book file's row after every message (checked against the
    file read with the csv module)."""
    batch, messages, book = amzn
    msgs = batch.tables["messages"]
    assert msgs.schema == pl.Schema(MESSAGES_SCHEMA)
    assert msgs["seq"].to_list() == list(range(1, msgs.height + 1)) and msgs["ts"].is_sorted()
    own = msgs.filter(pl.col("type") != LEVEL_SET)
    assert own["message_id"].to_list() == list(range(1, len(messages) + 1))
    assert own["order_id"].to_list() == [int(m[2]) for m in messages]
    assert own["type"].to_list() == [int(m[1]) for m in messages]
    assert own["price"].to_list() == [round(int(m[4]) / 10_000, 4) for m in messages]
    sets = msgs.filter(pl.col("type") == LEVEL_SET)
    assert sets["order_id"].null_count() == sets.height > 0
    res = book_per_message(
        np.ascontiguousarray(msgs["type"].to_numpy()), msgs["size"].to_numpy(), msgs["price"].to_numpy(),
        np.ascontiguousarray(msgs["direction"].to_numpy()), np.array([0, msgs.height], np.int64), 1,
    )
    after = msgs.with_row_index("row").group_by("message_id").agg(pl.col("row").max()).sort("message_id")
    rows = after["row"].to_numpy()

    def side(px: str, sz: str) -> tuple[list, list]:
        ok = [abs(int(px)) != 9_999_999_999 for px, _ in ((r[px], r[sz]) for r in book_rows)]
        return ([int(r[px]) / 10_000 if k else None for r, k in zip(book_rows, ok)],
                [float(r[sz]) if k else None for r, k in zip(book_rows, ok)])

    book_rows = [dict(zip(("ask", "ask_size", "bid", "bid_size"), r)) for r in book]
    for col, (px, sz) in ((0, side("bid", "bid_size")), (2, side("ask", "ask_size"))):
        got_px = [None if np.isnan(v) else round(v, 4) for v in res[col][rows, 0]]
        got_sz = [None if np.isnan(v) else v for v in res[col + 1][rows, 0]]
        assert got_px == px and got_sz == sz
    assert res[-1][0] == 0  # no message ever hit a level the rebuilt book did not know
    print(f"AMZN level 1: {sets.height} level sets for {len(messages)} messages")
    assert sets.height < 0.25 * len(messages)  # measured 10,972 for 57,515 messages


def test_small_day_messages_and_level_sets(tmp_path):
    # the top bid empties on message 2 and the file reveals 99.90 x 40 behind it, which no message created
    messages = ["34200.1,1,1,100,1000000,1", "34200.2,4,1,100,1000000,1", "34200.3,2,5,10,999000,1"]
    book = ["9999999999,0,1000000,100", "9999999999,0,999000,40", "9999999999,0,999000,30"]
    write_day(tmp_path, messages=messages, book=book)
    [batch] = list(LobsterFeed("lob", {"path": str(tmp_path)}, ".").iter_batches(["XYZ"], DAY2, DAY2))
    got = batch.tables["messages"].select("seq", "message_id", "type", "order_id", "size", "price", "direction")
    assert got.rows() == [
        (1, 1, 1, 1, 100.0, 100.0, 1),
        (2, 2, 4, 1, 100.0, 100.0, 1),
        (3, 2, LEVEL_SET, None, 40.0, 99.9, 1),
        (4, 3, 2, 5, 10.0, 99.9, 1),
    ]
    ts = batch.tables["messages"]["ts"]
    assert ts[2] == ts[1]  # a level set carries the time of the message whose book it restores
    off = LobsterFeed("lob", {"path": str(tmp_path), "order_messages": False}, ".")
    [batch] = list(off.iter_batches(["XYZ"], DAY2, DAY2))
    assert set(batch.tables) == {"trades", "quotes"}


def test_level_2_files_feed_every_published_level(tmp_path):
    messages = ["34200.1,1,1,10,1000000,1", "34200.2,4,1,10,1000000,1"]
    book = ["1010000,5,1000000,10,1020000,7,990000,20", "1010000,5,990000,20,1020000,7,980000,15"]
    write_day(tmp_path, messages=messages, book=book, level=2)
    feed = LobsterFeed("lob", {"path": str(tmp_path), "level": 2}, ".")
    [batch] = list(feed.iter_batches(["XYZ"], DAY2, DAY2))
    sets = batch.tables["messages"].filter(pl.col("type") == LEVEL_SET)
    assert sets.select("message_id", "price", "size", "direction").rows() == [
        (1, 99.0, 20.0, 1), (1, 101.0, 5.0, -1), (1, 102.0, 7.0, -1), (2, 98.0, 15.0, 1),
    ]
    assert batch.tables["quotes"].select("bid", "ask").rows() == [(100.0, 101.0), (99.0, 101.0)]
