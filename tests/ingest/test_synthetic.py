"""The synthetic market: determinism, microstructure invariants (property tests) and stylised facts."""

from __future__ import annotations

import datetime as dt
import math
import time
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantflow.ingest.feeds.base import FeedError, build_feed
from quantflow.ingest.feeds.synthetic import SyntheticFeed, daily_shocks, stable_seed, trading_day_index
from quantflow.metadata.schema import SyntheticFeedConfig
from quantflow.storage.schemas import BARS_DAILY_SCHEMA, QUOTES_SCHEMA, TRADES_SCHEMA

NY = ZoneInfo("America/New_York")


def feed(**params) -> SyntheticFeed:
    return SyntheticFeed("sim", {"trades_per_day": 300, "quotes_per_trade": 2, **params}, ".")


def one_day(f: SyntheticFeed, symbol: str, day: dt.date):
    [batch] = list(f.iter_batches([symbol], day, day))
    return batch


weekdays_2000s = st.dates(dt.date(1995, 1, 1), dt.date(2035, 12, 31)).filter(lambda d: d.weekday() < 5)
params = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31),
        "trades_per_day": st.integers(10, 300),
        "quotes_per_trade": st.floats(0.2, 5),
        "spread_bps": st.floats(0.5, 80),
        "tick_size": st.sampled_from([0.01, 0.05, 0.0001, 0.25]),
        "start_price": st.floats(2, 2000),
        "annual_volatility": st.floats(0.05, 1.0),
    }
)
symbols = st.text("ABCXYZ", min_size=1, max_size=4)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(p=params, symbol=symbols, day=weekdays_2000s)
def test_day_is_identical_whatever_the_range_or_call_order(p, symbol, day):
    f = SyntheticFeed("sim", p, ".")
    ranged = list(f.iter_batches([symbol], day - dt.timedelta(days=3), day + dt.timedelta(days=3)))
    by_day = {b.tables["trades"]["date"][0]: b for b in ranged}
    again = SyntheticFeed("sim", p, ".")  # a fresh feed, days asked for in reverse order
    single_bars = []
    for d in sorted(by_day, reverse=True):
        single = one_day(again, symbol, d)
        for kind in ("trades", "quotes"):
            assert single.tables[kind].equals(by_day[d].tables[kind])
        single_bars.append(single.tables["bars_daily"])
    assert pl.concat(single_bars).sort("date").equals(ranged[-1].tables["bars_daily"])


@SETTINGS
@given(p=params, symbol=symbols, day=weekdays_2000s)
def test_microstructure_invariants(p, symbol, day):
    f = SyntheticFeed("sim", p, ".")
    batch = one_day(f, symbol, day)
    trades, quotes, bars = batch.tables["trades"], batch.tables["quotes"], batch.tables["bars_daily"]
    assert trades.schema == pl.Schema(TRADES_SCHEMA) and quotes.schema == pl.Schema(QUOTES_SCHEMA)
    assert bars.schema == pl.Schema(BARS_DAILY_SCHEMA)

    # positive prices and sizes on the tick grid, ids from 1
    assert (trades["price"] > 0).all() and (trades["size"] > 0).all()
    assert (quotes["bid"] > 0).all() and (quotes["ask"] > quotes["bid"]).all()
    assert (quotes["bid_size"] > 0).all() and (quotes["ask_size"] > 0).all()
    tick = p["tick_size"]
    for col in (trades["price"], quotes["bid"], quotes["ask"]):
        steps = col.to_numpy() / tick  # up to ~1e10 steps (0.0001 ticks): float64 keeps ~1e-6 of a step there
        np.testing.assert_allclose(steps, np.rint(steps), rtol=1e-12, atol=1e-6)
    assert trades["trade_id"].to_list() == list(range(1, trades.height + 1))
    assert quotes["quote_id"].to_list() == list(range(1, quotes.height + 1))

    # timestamps strictly increasing, inside the session (DST-aware), first quote at the open
    session_open = dt.datetime.combine(day, dt.time(9, 30), tzinfo=NY).astimezone(dt.UTC)
    session_close = dt.datetime.combine(day, dt.time(16, 0), tzinfo=NY).astimezone(dt.UTC)
    for ts in (trades["ts"], quotes["ts"]):
        ns = ts.dt.epoch("ns").to_numpy()
        assert (np.diff(ns) > 0).all()
        assert ts.min() >= session_open and ts.max() < session_close
    assert quotes["ts"][0] == session_open

    # every trade at or inside the prevailing quote (last quote at or before it), aggressor side consistent
    joined = trades.join_asof(quotes.select("ts", "bid", "ask"), on="ts", strategy="backward")
    assert joined["bid"].null_count() == 0
    assert (joined["price"] >= joined["bid"]).all() and (joined["price"] <= joined["ask"]).all()
    buys, sells = joined.filter(pl.col("side") == 1), joined.filter(pl.col("side") == -1)
    assert (buys["price"] > buys["bid"]).all() and (sells["price"] < sells["ask"]).all()
    assert buys.height + sells.height == trades.height

    # the daily bar is the day's trades
    bar = bars.row(0, named=True)
    assert bar["date"] == day and bar["adj_factor"] == 1.0
    assert bar["open"] == trades["price"][0] and bar["close"] == trades["price"][-1]
    assert bar["high"] == trades["price"].max() and bar["low"] == trades["price"].min()
    assert bar["volume"] == pytest.approx(trades["size"].sum())


def test_intraday_u_shape_and_trade_mix():
    f = feed(trades_per_day=8000, quotes_per_trade=3, spread_bps=8)
    batches = list(f.iter_batches(["AAA"], dt.date(2024, 3, 4), dt.date(2024, 3, 8)))
    trades = pl.concat([b.tables["trades"] for b in batches])
    quotes = pl.concat([b.tables["quotes"] for b in batches])
    local = trades.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York").dt.time().alias("t"))

    def count(a, b):
        return local.filter(pl.col("t").is_between(dt.time(*a), dt.time(*b), closed="left")).height

    first, midday, last = count((9, 30), (10, 0)), count((12, 30), (13, 0)), count((15, 30), (16, 0))
    assert first > 2 * midday and last > 2 * midday

    joined = trades.join_asof(quotes.select("ts", "bid", "ask"), on="ts", strategy="backward")
    at_touch = ((pl.col("side") == 1) & (pl.col("price") == pl.col("ask"))) | (
        (pl.col("side") == -1) & (pl.col("price") == pl.col("bid"))
    )
    share_touch = joined.select(at_touch.mean()).item()
    assert 0.75 < share_touch < 0.97  # mostly at the touch, some inside the spread
    assert 2.5 < quotes.height / trades.height < 3.5
    sides = trades["side"].cast(pl.Float64).to_numpy()
    assert 0.15 < np.corrcoef(sides[:-1], sides[1:])[0, 1] < 0.45  # persistent order flow
    sizes = trades["size"].to_numpy()
    assert np.quantile(sizes, 0.99) > 5 * np.median(sizes)  # heavy right tail


def test_days_connect_through_overnight_gaps():
    f = feed(trades_per_day=200, annual_volatility=0.3)
    bars = pl.concat(
        [b.tables["bars_daily"] for b in f.iter_batches(["AAA"], dt.date(2023, 1, 2), dt.date(2023, 6, 30))]
    )
    gaps = np.log(bars["open"].to_numpy()[1:] / bars["close"].to_numpy()[:-1])
    moves = np.log(bars["close"].to_numpy() / bars["open"].to_numpy())
    sigma_day = 0.3 / math.sqrt(252)
    assert 0.5 * sigma_day * math.sqrt(0.2) < gaps.std() < 2 * sigma_day * math.sqrt(0.2)
    assert 0.6 * sigma_day * math.sqrt(0.8) < moves.std() < 1.6 * sigma_day * math.sqrt(0.8)


def test_daily_shock_sums_are_consistent_across_blocks_and_before_the_epoch():
    for n in (-2050, -1025, -1024, -1, 0, 1, 1023, 1024, 3000):
        s_now = daily_shocks("AAA", 7, n)
        s_next = daily_shocks("AAA", 7, n + 1)
        assert s_next[0] - s_now[0] == pytest.approx(s_now[2], abs=1e-9)
    assert daily_shocks("AAA", 7, 0)[:2] == (0.0, 0.0)
    assert trading_day_index(dt.date(2000, 1, 3)) == 0 and trading_day_index(dt.date(1999, 12, 31)) == -1
    assert trading_day_index(dt.date(2000, 1, 10)) == 5
    assert stable_seed("AAA", 1) == stable_seed("AAA", 1) != stable_seed("AAA", 2)


def test_weekends_produce_nothing_and_dst_moves_the_session():
    f = feed()
    assert list(f.iter_batches(["AAA"], dt.date(2024, 3, 9), dt.date(2024, 3, 10))) == []
    winter = one_day(f, "AAA", dt.date(2024, 3, 8)).tables["quotes"]["ts"][0]
    summer = one_day(f, "AAA", dt.date(2024, 3, 11)).tables["quotes"]["ts"][0]
    assert winter.time() == dt.time(14, 30) and summer.time() == dt.time(13, 30)


def test_bars_come_once_per_symbol_in_its_last_batch():
    f = feed()
    batches = list(f.iter_batches(["AAA", "BBB"], dt.date(2024, 1, 1), dt.date(2024, 1, 5)))
    assert len(batches) == 10
    counts = [b.tables["bars_daily"].height for b in batches]
    assert counts == [0, 0, 0, 0, 5, 0, 0, 0, 0, 5]
    assert f.kinds == ("trades", "quotes", "bars_daily")
    assert feed(daily_bars=False).kinds == ("trades", "quotes")


def test_seeds_and_symbols_differ():
    a = one_day(feed(seed=1), "AAA", dt.date(2024, 1, 2)).tables["trades"]
    b = one_day(feed(seed=2), "AAA", dt.date(2024, 1, 2)).tables["trades"]
    c = one_day(feed(seed=1), "BBB", dt.date(2024, 1, 2)).tables["trades"]
    assert not a["price"].equals(b["price"]) and not a["price"].equals(c["price"])


def test_fast_enough():
    f = SyntheticFeed("sim", {"trades_per_day": 20_000}, ".")
    began = time.perf_counter()
    rows = sum(
        b.tables["trades"].height
        for b in f.iter_batches(["AAA", "BBB"], dt.date(2024, 1, 1), dt.date(2024, 1, 5))
    )
    elapsed = time.perf_counter() - began
    assert rows > 150_000
    assert elapsed < 5.0  # about 0.1 s on a 2-core machine; 5 symbols x 60 days takes about 3 s


def test_bad_params_are_feed_errors():
    with pytest.raises(FeedError, match="timezone"):
        feed(timezone="Mars/Olympus")
    with pytest.raises(FeedError, match="session_close"):
        feed(session_open="16:00", session_close="09:30")
    with pytest.raises(FeedError, match="trades_per_day"):
        feed(trades_per_day=-5)


def test_registry_builds_it(tmp_path):
    cfg = SyntheticFeedConfig(name="sample", kind="synthetic", params={"seed": 3})
    f = build_feed(cfg, tmp_path)
    assert isinstance(f, SyntheticFeed) and f.params.seed == 3 and f.name == "sample"
