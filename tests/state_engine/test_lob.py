"""cdm_lob_l2: order-book snapshots on a time grid, against the reference and LOBSTER's own book."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from quantflow.state_engine import StateEngineSpec, process_shard
from tests.state_engine import reference as ref
from tests.state_engine.helpers import assert_close

LEVEL_1 = [
    "bid_price_1",
    "bid_size_1",
    "ask_price_1",
    "ask_size_1",
    "imbalance_1",
    "bid_depth_1",
    "ask_depth_1",
]
TOP = ["symbol", "date", "ts", "quote_ts", "n_updates", "mid", "microprice", "spread", "spread_bps"]


def lob(trades, quotes, **spec) -> pl.DataFrame:
    return process_shard(trades, quotes, StateEngineSpec(bars=(), **spec))[0]["cdm_lob_l2"]


@pytest.mark.parametrize("interval", ["1s", "250ms"])
def test_matches_reference(market, interval):
    trades, quotes = market
    got = lob(trades, quotes, lob_interval=interval)
    want = ref.lob_snapshots(quotes, {"1s": 1_000_000_000, "250ms": 250_000_000}[interval])
    assert_close(got, want, TOP + LEVEL_1)
    assert (got["quote_ts"] <= got["ts"]).all()
    assert got["n_updates"].sum() <= quotes.height


def test_lobster_top_of_book_is_the_orderbook_file(lobster):
    """Each 1 s snapshot equals the LOBSTER order-book row of the last message at or before it."""
    trades, quotes, raw = lobster
    got = lob(trades, quotes, lob_interval="1s", tie_break="sequence")
    assert got.height == 6 * 3600 + 30 * 60 - 1  # 09:30:01 .. 15:59:59 New York
    msg_ts = raw["ts"].cast(pl.Int64).to_numpy()
    row = np.searchsorted(msg_ts, got["ts"].cast(pl.Int64).to_numpy(), side="right") - 1
    book = raw.select("BestBid", "BestBidVolume", "BestAsk", "BestAskVolume").to_numpy().astype(float)[row]
    assert np.allclose(got["bid_price_1"].to_numpy() * 10_000, book[:, 0], rtol=0, atol=1e-6)
    assert np.array_equal(got["bid_size_1"].to_numpy(), book[:, 1])
    assert np.allclose(got["ask_price_1"].to_numpy() * 10_000, book[:, 2], rtol=0, atol=1e-6)
    assert np.array_equal(got["ask_size_1"].to_numpy(), book[:, 3])
    assert_close(got, ref.lob_snapshots(quotes, 1_000_000_000), TOP + LEVEL_1)
    mid, micro = got["mid"].to_numpy(), got["microprice"].to_numpy()
    bid, ask = got["bid_price_1"].to_numpy(), got["ask_price_1"].to_numpy()
    assert (bid <= micro).all() and (micro <= ask).all() and (bid < mid).all() and (mid < ask).all()


def test_deeper_levels_when_the_quotes_carry_them(market):
    trades, quotes = market
    deep = quotes.with_columns(
        (pl.col("bid") - 0.01).alias("bid_2"),
        (pl.col("ask") + 0.01).alias("ask_2"),
        (pl.col("bid_size") * 2).alias("bid_size_2"),
        (pl.col("ask_size") * 3).alias("ask_size_2"),
    )
    got = lob(trades, deep, lob_interval="1s", lob_depth=3)
    assert (got["bid_price_2"] == got["bid_price_1"] - 0.01).all()
    assert np.allclose(got["bid_depth_2"].to_numpy(), 3 * got["bid_size_1"].to_numpy())
    assert np.allclose(got["ask_depth_2"].to_numpy(), 4 * got["ask_size_1"].to_numpy())
    assert np.allclose(got["imbalance_2"].to_numpy(), (2 * got["bid_size_1"] - 3 * got["ask_size_1"]).to_numpy()
                       / (2 * got["bid_size_1"] + 3 * got["ask_size_1"]).to_numpy())  # fmt: skip
    # a third level is asked for but not in the feed: its columns exist and are null
    assert got["bid_price_3"].null_count() == got.height
    assert lob(trades, quotes, lob_interval="1s", lob_depth=2)["ask_size_2"].null_count() == got.height
