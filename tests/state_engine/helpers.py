"""Test data for the state engine: a small synthetic market, the real LOBSTER day, frame comparison."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
from polars.testing import assert_series_equal

UTC_NS = pl.Datetime("ns", "UTC")
NY = ZoneInfo("America/New_York")
LOBSTER_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "lobster_amzn_2012-06-21_level1"
LOBSTER_STEM = "AMZN_2012-06-21_34200000_57600000"
DAILY_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "daily_us_equities"


def _session_open_ns(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, 9, 30, tzinfo=NY).timestamp()) * 1_000_000_000


def make_market(
    seed: int = 0,
    symbols: tuple[str, ...] = ("AAA", "BBB"),
    dates: tuple[dt.date, ...] = (dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)),
    events_per_day: int = 600,
    trade_share: float = 0.4,
    span_s: float = 1800.0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Trades and quotes built to exercise every rule of the state engine.

    One interleaved event stream per (symbol, date): about a quarter of the events share the previous
    event's timestamp (ties between trades and quotes, and among each), trades and quotes are numbered
    in one sequence (``trade_id``/``quote_id`` = event number, as LOBSTER), some days open with trades
    before any quote, spreads are one or two ticks so trades at the mid happen, and trade prices fall at,
    inside and outside the quote.
    """
    rng = np.random.default_rng(seed)
    trades, quotes = [], []
    for sym in symbols:
        for day in dates:
            n = events_per_day
            gaps = rng.exponential(span_s * 1e9 / n, n).astype(np.int64) // 1_000_000 * 1_000_000
            gaps[rng.random(n) < 0.25] = 0
            ts = _session_open_ns(day) + np.cumsum(gaps)
            is_trade = rng.random(n) < trade_share
            is_trade[: rng.integers(0, 3)] = True  # sometimes trades before the first quote
            level = 10_000 + np.cumsum(rng.integers(-1, 2, n))  # bid in cents
            spread = rng.integers(1, 3, n)
            bid = level / 100.0
            ask = (level + spread) / 100.0
            # trade price relative to the last bid/ask: at bid, at ask, at mid, or a tick outside
            choice = rng.integers(0, 5, n)
            offset_c = np.select(
                [choice == 0, choice == 1, choice == 2, choice == 3], [0, spread, spread / 2, -1], spread + 1
            )
            price = np.round(level + offset_c) / 100.0
            price = np.where(choice == 2, (level + spread / 2) / 100.0, price)
            size = rng.integers(1, 500, n).astype(np.float64)
            seq = np.arange(n, dtype=np.int64)
            base = {"symbol": sym, "date": day}
            tr = pl.DataFrame(
                {
                    "ts": ts[is_trade],
                    "trade_id": seq[is_trade],
                    "price": price[is_trade],
                    "size": size[is_trade],
                    "side": rng.choice(np.array([-1, 1], np.int8), int(is_trade.sum())),
                }
            )
            qu = pl.DataFrame(
                {
                    "ts": ts[~is_trade],
                    "quote_id": seq[~is_trade],
                    "bid": bid[~is_trade],
                    "ask": ask[~is_trade],
                    "bid_size": rng.integers(1, 1000, int((~is_trade).sum())).astype(np.float64),
                    "ask_size": rng.integers(1, 1000, int((~is_trade).sum())).astype(np.float64),
                }
            )
            trades.append(tr.with_columns(**{k: pl.lit(v) for k, v in base.items()}))
            quotes.append(qu.with_columns(**{k: pl.lit(v) for k, v in base.items()}))
    t = pl.concat(trades).with_columns(pl.col("ts").cast(UTC_NS), pl.col("side").cast(pl.Int8))
    q = pl.concat(quotes).with_columns(pl.col("ts").cast(UTC_NS))
    t = t.select("symbol", "date", "ts", "trade_id", "price", "size", "side")
    q = q.select("symbol", "date", "ts", "quote_id", "bid", "ask", "bid_size", "ask_size")
    return t, q


def lobster_available() -> bool:
    return (LOBSTER_DIR / f"{LOBSTER_STEM}_message_1.csv").exists()


def load_lobster() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The LOBSTER AMZN day as CDM trades and quotes, plus the raw messages with their order-book rows.

    Message i and order-book row i share the id i: row i is the book *after* message i. Executions
    (types 4 visible, 5 hidden) are the trades; the aggressor side is the opposite of the resting order's
    ``Direction``. Every order-book row is a quote. Times are seconds after midnight New York, kept to
    the file's 10-microsecond resolution. Empty book sides (LOBSTER's +-9999999999 dummies) are null.
    """
    msg = pl.read_csv(LOBSTER_DIR / f"{LOBSTER_STEM}_message_1.csv")
    book = pl.read_csv(LOBSTER_DIR / f"{LOBSTER_STEM}_orderbook_1.csv")
    day = dt.date(2012, 6, 21)
    midnight = int(dt.datetime(2012, 6, 21, tzinfo=NY).timestamp()) * 1_000_000_000
    raw = pl.concat([msg, book], how="horizontal").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("id"),
        (pl.lit(midnight) + (pl.col("Time") * 100_000).round().cast(pl.Int64) * 10_000)
        .cast(UTC_NS)
        .alias("ts"),
    )
    dummy = 9_999_999_999
    quotes = raw.select(
        pl.lit("AMZN").alias("symbol"),
        pl.lit(day).alias("date"),
        "ts",
        pl.col("id").alias("quote_id"),
        pl.when(pl.col("BestBid").abs() != dummy).then(pl.col("BestBid") / 10_000).alias("bid"),
        pl.when(pl.col("BestAsk").abs() != dummy).then(pl.col("BestAsk") / 10_000).alias("ask"),
        pl.col("BestBidVolume").cast(pl.Float64).alias("bid_size"),
        pl.col("BestAskVolume").cast(pl.Float64).alias("ask_size"),
    )
    trades = raw.filter(pl.col("Type").is_in([4, 5])).select(
        pl.lit("AMZN").alias("symbol"),
        pl.lit(day).alias("date"),
        "ts",
        pl.col("id").alias("trade_id"),
        (pl.col("Price") / 10_000).alias("price"),
        pl.col("Size").cast(pl.Float64).alias("size"),
        (-pl.col("Direction")).cast(pl.Int8).alias("side"),
    )
    return trades, quotes, raw


def assert_close(
    actual: pl.DataFrame, expected: pl.DataFrame, columns: list[str], rtol: float = 1e-9
) -> None:
    """Same rows in the same order; floats to ``rtol`` (sums may be added in a different order)."""
    assert actual.height == expected.height, (actual.height, expected.height)
    for c in columns:
        a, e = actual[c], expected[c]
        if a.dtype.is_float() or e.dtype.is_float():
            assert_series_equal(
                a.cast(pl.Float64), e.cast(pl.Float64), check_names=False, rel_tol=rtol, abs_tol=1e-9
            )
        else:
            assert_series_equal(a, e.cast(a.dtype), check_names=False)
