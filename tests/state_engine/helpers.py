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


def random_stream(rng, n, mid=10_000.0, tick=1.0):
    """Submits around a mid, partial cancels / deletes of resting orders, executions at the best level,
    hidden executions, halts, and a few cancels of unknown orders (clamps)."""
    mtype = np.empty(n, np.int8)
    size = np.empty(n)
    price = np.empty(n)
    direction = np.empty(n, np.int8)
    orders: dict[int, list] = {}  # id -> [price, remaining, direction]
    next_id = 0
    for i in range(n):
        u = rng.random()
        if u < 0.45 or len(orders) < 5:
            d = 1 if rng.random() < 0.5 else -1
            p = mid - d * tick * rng.integers(1, 12)
            z = float(rng.integers(1, 300))
            orders[next_id] = [p, z, d]
            next_id += 1
            mtype[i], size[i], price[i], direction[i] = 1, z, p, d
        elif u < 0.93:
            kind = rng.choice([2, 3, 4]) if u < 0.9 else int(rng.choice([5, 7]))
            if kind == 4:  # execution at the best level of a random side
                d = 1 if rng.random() < 0.5 else -1
                side = [k for k, o in orders.items() if o[2] == d] or list(orders)
                best = max(side, key=lambda k: orders[k][0] * orders[k][2])
                oid = best
            else:
                oid = int(rng.choice(list(orders)))
            p, rem, d = orders[oid]
            if kind == 2:
                z = float(rng.integers(1, rem + 1))
            elif kind == 4:
                z = float(rng.integers(1, rem + 1))
            else:
                z = rem
            if kind in (2, 3, 4):
                orders[oid][1] -= z
                if orders[oid][1] <= 0:
                    del orders[oid]
            mtype[i], size[i], price[i], direction[i] = kind, z, p, d
        else:  # an order resting before the stream: unknown level or more than the known size
            d = 1 if rng.random() < 0.5 else -1
            mtype[i] = rng.choice([2, 3, 4])
            size[i] = float(rng.integers(1, 500))
            price[i] = mid - d * tick * rng.integers(1, 15)
            direction[i] = d
        mid += tick * rng.integers(-1, 2) * (rng.random() < 0.05)
    return mtype, size, price, direction


def make_messages(
    seed: int = 0,
    symbols: tuple[str, ...] = ("AAA", "BBB"),
    dates: tuple[dt.date, ...] = (dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)),
    per_day: int = 1500,
) -> pl.DataFrame:
    """CDM order messages (``cdm_order_messages``): one ``random_stream`` per (symbol, date) over a
    morning session, millisecond stamps with bursts of equal times, a few level sets, no order ids."""
    rng = np.random.default_rng(seed)
    frames = []
    for sym in symbols:
        for day in dates:
            mtype, size, price, direction = random_stream(rng, per_day, mid=100.0 + 10 * len(frames), tick=0.01)
            sets = rng.random(per_day) < 0.02
            mtype = np.where(sets, 9, mtype).astype(np.int8)
            size = np.where(sets & (rng.random(per_day) < 0.3), 0.0, size)
            ts = _session_open_ns(day) + np.cumsum(rng.choice([0, 0, 1, 5, 300, 2000], per_day)) * 1_000_000
            frames.append(pl.DataFrame({
                "symbol": sym, "date": day, "ts": ts, "seq": np.arange(1, per_day + 1), "message_id":
                np.arange(1, per_day + 1), "type": mtype, "order_id": None, "size": size,
                "price": np.round(price, 2), "direction": direction,
            }, schema_overrides={"order_id": pl.Int64}))
    return pl.concat(frames).with_columns(pl.col("ts").cast(UTC_NS), pl.col("date").cast(pl.Date))


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
