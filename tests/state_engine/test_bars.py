"""cdm_<type>_bars: every bar type against the reference, and the properties every bar set must have."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantflow.state_engine import BarSpec, StateEngineSpec, bars_from_trades, flush_state, process_shard
from quantflow.state_engine import bars as bar_module
from quantflow.state_engine.bars import parse_duration
from tests.state_engine import reference as ref
from tests.state_engine.helpers import UTC_NS, assert_close

BAR_COLUMNS = [
    "symbol",
    "date",
    "ts_first",
    "ts_last",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "dollar_volume",
    "vwap",
    "n_trades",
    "buy_volume",
    "sell_volume",
    "complete",
]

SPECS = (
    BarSpec("time", every="1m"),
    BarSpec("time", every="5s", offset="2s"),
    BarSpec("tick", threshold=7),
    BarSpec("volume", threshold=2000),
    BarSpec("dollar", expected_daily=3_000_000, bars_per_day=20),
    BarSpec("dollar", expected_daily=3_000_000, bars_per_day=20, trailing_days=2),
    BarSpec("tick", expected_daily=800, bars_per_day=30, trailing_days=1),
    BarSpec("tick_imbalance", expected_ticks=10),
    BarSpec("volume_imbalance", expected_ticks=10, span=5),
    BarSpec("dollar_imbalance", expected_ticks=10, imbalance_span=40),
    BarSpec("tick_run", expected_ticks=10),
    BarSpec("volume_run", expected_ticks=10, span=5, imbalance_span=25),
    BarSpec("dollar_run", expected_ticks=10, min_expected_ticks=4, max_expected_ticks=30),
)


def reference_bars(
    spec: BarSpec, enriched: pl.DataFrame, group_by: list[str]
) -> tuple[pl.DataFrame, list[str]]:
    if spec.type == "time":
        bars = ref.time_bars(enriched, parse_duration(spec.every), parse_duration(spec.offset), group_by)
        return bars, [*BAR_COLUMNS, "bar_start", "bar_end"]
    if spec.type in ("tick", "volume", "dollar"):
        if spec.trailing_days is None:
            return ref.threshold_bars(enriched, spec.type, spec.bar_threshold, group_by), BAR_COLUMNS
        days = ref.trailing_thresholds(enriched, spec.type, spec.trailing_days, spec.bars_per_day,
                                       spec.bar_threshold)
        bars = ref.threshold_bars(enriched, spec.type, spec.bar_threshold, group_by, days)
        return bars, [*BAR_COLUMNS, "threshold"]
    lo, hi = spec.ticks_bounds
    bars = ref.information_bars(enriched, spec.type, spec.expected_ticks, spec.span, spec.trade_span, lo, hi,
                                group_by)
    return bars, [*BAR_COLUMNS, "run" if spec.type.endswith("_run") else "imbalance", "threshold"]


@pytest.mark.parametrize("carry_state", [False, True])
def test_all_bar_types_match_reference(market, carry_state):
    trades, quotes = market
    spec = StateEngineSpec(bars=SPECS, lob_interval=None, carry_state=carry_state)
    out, state = process_shard(trades, quotes, spec)
    enriched = out["cdm_trade_enriched"]
    group_by = ["symbol"] if carry_state else ["symbol", "date"]
    open_bars = flush_state(state, spec) if carry_state else {}
    for b in SPECS:
        got = out[b.key]
        if carry_state:  # the bars still open at the end are in the state
            got = pl.concat([got, open_bars[b.key]]).sort("symbol", "ts_first")
        want, columns = reference_bars(b, enriched, group_by)
        assert got.height > 10, b.key
        assert_close(got, want, columns)


def test_lobster_bars_match_reference(lobster):
    trades, quotes, _ = lobster
    specs = (
        BarSpec("time", every="1m"),
        BarSpec("time", every="100ms"),
        BarSpec("tick", threshold=50),
        BarSpec("volume", threshold=10_000),
        BarSpec("dollar", threshold=1_000_000),
        BarSpec("tick_imbalance", expected_ticks=50),
        BarSpec("volume_imbalance", expected_ticks=50),
    )
    spec = StateEngineSpec(bars=specs, lob_interval=None, tie_break="sequence")
    out, _ = process_shard(trades, quotes, spec)
    enriched = out["cdm_trade_enriched"]
    for b in specs:
        want, columns = reference_bars(b, enriched, ["symbol", "date"])
        assert_close(out[b.key], want, columns)
    minute = out["cdm_time_1m_bars"]
    assert 380 <= minute.height <= 390  # 09:30-16:00 New York; minutes without an execution have no bar
    assert minute["volume"].sum() == trades["size"].sum()
    assert minute["n_trades"].sum() == trades.height


def test_bar_keys_and_schema():
    assert BarSpec("time", every="1m").key == "cdm_time_1m_bars"
    assert BarSpec("time", every="100ms").key == "cdm_time_100ms_bars"
    assert BarSpec("volume", threshold=50_000).key == "cdm_volume_50000_bars"
    assert BarSpec("dollar", expected_daily=1e9, bars_per_day=50).key == "cdm_dollar_50perday_bars"
    assert BarSpec("tick_imbalance", expected_ticks=100).key == "cdm_tick_imbalance_100_bars"
    assert BarSpec("tick", threshold=10, name="fast_ticks").key == "cdm_fast_ticks_bars"
    with pytest.raises(ValueError, match="every"):
        BarSpec("time")
    with pytest.raises(ValueError, match="exactly one"):
        BarSpec("volume")
    with pytest.raises(ValueError, match="bar type"):
        BarSpec("range", threshold=1)
    with pytest.raises(ValueError, match="duration"):
        BarSpec("time", every="1 minute")
    with pytest.raises(ValueError, match="expected_ticks"):
        BarSpec("tick_imbalance")


# ---------------------------------------------------------------------------------------------- properties


def bar_specs():
    return st.one_of(
        st.sampled_from(["1s", "7s", "1m", "250ms"]).map(lambda e: BarSpec("time", every=e)),
        st.integers(1, 12).map(lambda n: BarSpec("tick", threshold=n)),
        st.integers(1, 60).map(lambda v: BarSpec("volume", threshold=v)),
        st.integers(50, 3000).map(lambda v: BarSpec("dollar", threshold=v)),
        st.integers(1, 8).map(lambda n: BarSpec("tick_imbalance", expected_ticks=n, span=3)),
        st.integers(1, 8).map(lambda n: BarSpec("volume_imbalance", expected_ticks=n, span=3)),
        st.integers(1, 8).map(lambda n: BarSpec("dollar_imbalance", expected_ticks=n, imbalance_span=5)),
        st.integers(1, 8).map(lambda n: BarSpec("tick_run", expected_ticks=n, span=2)),
        st.integers(1, 8).map(lambda n: BarSpec("volume_run", expected_ticks=n, imbalance_span=3)),
        st.integers(1, 8).map(lambda n: BarSpec("dollar_run", expected_ticks=n)),
    )


@st.composite
def trade_frames(draw):
    n = draw(st.integers(1, 80))
    steps = draw(st.lists(st.integers(0, 4_000_000_000), min_size=n, max_size=n))
    prices = draw(st.lists(st.integers(90, 110), min_size=n, max_size=n))
    sizes = draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
    dirs = draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=n, max_size=n))
    return pl.DataFrame(
        {
            "symbol": "X",
            "date": dt.date(2024, 1, 2),
            "ts": 1_704_205_800_000_000_000 + np.cumsum(steps),
            "trade_id": np.arange(n),
            "price": np.array(prices, float),
            "size": np.array(sizes, float),
            "direction": np.array(dirs, np.int8),
        }
    ).with_columns(pl.col("ts").cast(UTC_NS))


@settings(max_examples=120, deadline=None)
@given(trades=trade_frames(), spec=bar_specs())
def test_bar_properties(trades, spec):
    bars = bars_from_trades(trades, spec)
    ts = trades["ts"].cast(pl.Int64).to_numpy()
    price, size = trades["price"].to_numpy(), trades["size"].to_numpy()
    direction = trades["direction"].to_numpy()

    # every trade in exactly one bar: the bars cut the trade sequence into consecutive runs
    counts = bars["n_trades"].to_numpy()
    assert counts.min() >= 1 and counts.sum() == trades.height
    ends = np.cumsum(counts)
    starts = ends - counts
    assert np.array_equal(bars["ts_first"].cast(pl.Int64).to_numpy(), ts[starts])
    assert np.array_equal(bars["ts_last"].cast(pl.Int64).to_numpy(), ts[ends - 1])
    assert np.array_equal(bars["open"].to_numpy(), price[starts])
    assert np.array_equal(bars["close"].to_numpy(), price[ends - 1])
    per_bar_volume = np.array([size[a:b].sum() for a, b in zip(starts, ends)])
    assert np.allclose(bars["volume"].to_numpy(), per_bar_volume)

    # volumes add up, buy/sell from the direction
    assert bars["volume"].sum() == pytest.approx(size.sum())
    assert bars["buy_volume"].sum() == pytest.approx(size[direction > 0].sum())
    assert bars["sell_volume"].sum() == pytest.approx(size[direction < 0].sum())
    assert bars["dollar_volume"].sum() == pytest.approx((price * size).sum())

    # OHLC consistent
    o, h, low, c, vwap = (bars[k].to_numpy() for k in ("open", "high", "low", "close", "vwap"))
    assert (low <= np.minimum(o, c)).all() and (h >= np.maximum(o, c)).all()
    assert (low <= vwap + 1e-9).all() and (vwap <= h + 1e-9).all()

    # timestamps monotone
    first, last = bars["ts_first"].to_numpy(), bars["ts_last"].to_numpy()
    assert (first <= last).all() and (last[:-1] <= first[1:]).all()
    if spec.type == "time":
        start = bars["bar_start"].cast(pl.Int64).to_numpy()
        end = bars["bar_end"].cast(pl.Int64).to_numpy()
        assert (np.diff(start) > 0).all()
        assert (start <= ts[starts]).all() and (ts[ends - 1] < end).all()
    if spec.type in ("volume", "dollar"):  # each complete bar closed on the trade that reached the threshold
        measure = bars["volume" if spec.type == "volume" else "dollar_volume"].to_numpy()
        last_trade = size[ends - 1] * (1.0 if spec.type == "volume" else price[ends - 1])
        assert (measure[:-1] >= spec.bar_threshold).all()
        assert (measure[:-1] - last_trade[:-1] < spec.bar_threshold).all()

    # no bar is built from later trades: the bars of any prefix are the full run's bars, but the last
    cut = max(1, trades.height // 2)
    prefix = bars_from_trades(trades.head(cut), spec)
    assert_close(prefix.head(prefix.height - 1), bars.head(prefix.height - 1), BAR_COLUMNS)


def test_complete_marks_the_bars_a_shard_end_cut_and_drop_leaves_them_out(market):
    """A bar closed by its own rule is complete; the one the end of the day cut short is not (AFML's bars
    never include it). ``incomplete: drop`` leaves those out and changes nothing else."""
    trades, quotes = market
    keep = (BarSpec("tick", threshold=7), BarSpec("time", every="1m"), BarSpec("volume", threshold=2000))
    spec = StateEngineSpec(bars=keep, lob_interval=None)
    out, _ = process_shard(trades, quotes, spec)
    ticks = out[keep[0].key]
    per_day = ticks.group_by("symbol", "date").agg(pl.col("complete").sum().alias("done"), pl.len().alias("n"),
                                                    pl.col("n_trades").last().alias("last_n"))
    for row in per_day.iter_rows(named=True):
        assert row["done"] == row["n"] - (row["last_n"] < 7)  # only a short last bar of a day is incomplete
    assert ticks.filter(pl.col("complete"))["n_trades"].unique().to_list() == [7]
    assert out[keep[1].key]["complete"].all()  # every 1-minute bucket is over by the end of its day
    volume = out[keep[2].key]
    assert (volume["complete"] == (volume["volume"] >= 2000)).all() and not volume["complete"].all()
    dropped = StateEngineSpec(bars=tuple(BarSpec(b.type, every=b.every, threshold=b.threshold,
                                                 expected_ticks=b.expected_ticks, incomplete="drop") for b in keep),
                              lob_interval=None)
    out_drop, _ = process_shard(trades, quotes, dropped)
    for b in keep:
        assert out_drop[b.key].equals(out[b.key].filter(pl.col("complete")))
    carried = StateEngineSpec(bars=keep[:1], lob_interval=None, carry_state=True)
    _, state = process_shard(trades, quotes, carried)
    tail = flush_state(state, carried)[keep[0].key]
    assert tail.height > 0 and not tail["complete"].any()  # the end of the history cuts the last bar
    with pytest.raises(ValueError, match="incomplete must be 'keep' or 'drop'"):
        BarSpec("tick", threshold=7, incomplete="sometimes")


# ---------------------------------------------------------------------------------------------- golden values


def signed_trades(directions: list[int], sizes: list[float] | None = None, days: list[int] | None = None):
    n = len(directions)
    return pl.DataFrame({
        "symbol": "X",
        "date": [dt.date(2024, 1, 2 + d) for d in (days or [0] * n)],
        "ts": [1_704_205_800_000_000_000 + 1_000_000_000 * i + 86_400_000_000_000 * (days or [0] * n)[i]
               for i in range(n)],
        "trade_id": np.arange(n),
        "price": 100.0,
        "size": sizes or [1.0] * n,
        "direction": np.array(directions, np.int8),
    }).with_columns(pl.col("ts").cast(UTC_NS))


def test_tick_imbalance_bars_by_hand():
    """span 1 and imbalance_span 1 make both EWMAs the last value: E[T] = the last bar's length, E[b] = the
    last trade's direction, so each threshold is worked out by hand.

    warm-up bar: 2 trades (++), then E[T] = 2, E[b] = +1: threshold 2;
    + - + + : theta 1 0 1 2 -> closes at 4 trades; E[T] = 4, E[b] = +1: threshold 4;
    - - - - : |theta| reaches 4 -> 4 trades; E[T] = 4, E[b] = -1: threshold 4;
    + - + 0 0 : cut by the end of the day (incomplete), threshold 4.
    """
    dirs = [1, 1, 1, -1, 1, 1, -1, -1, -1, -1, 1, -1, 1, 0, 0]
    bars = bars_from_trades(signed_trades(dirs), BarSpec("tick_imbalance", expected_ticks=2, span=1,
                                                         imbalance_span=1))
    assert bars["n_trades"].to_list() == [2, 4, 4, 5]
    assert bars["imbalance"].to_list() == [2.0, 2.0, -4.0, 1.0]
    assert bars["threshold"].to_list() == [None, 2.0, 4.0, 4.0]
    assert bars["complete"].to_list() == [True, True, True, False]


def test_run_bars_by_hand():
    """tick_run with the same last-value EWMAs: E[b+] = 1 after a buy, E[b-] = 1 after a sell.

    warm-up: + - (2 trades), then E[T] = 2, the last trade a sell: threshold 2 * max(0, 1) = 2;
    + - + : buy run 2 -> closes at 3 trades (runs need not be consecutive: AFML sums all of a side's
    trades); E[T] = 3, threshold 3;  - - + - : sell run 3 -> 4 trades.
    volume_run: the runs sum sizes; threshold E[T] * the last trade's size on its side.
    """
    dirs = [1, -1, 1, -1, 1, -1, -1, 1, -1]
    bars = bars_from_trades(signed_trades(dirs), BarSpec("tick_run", expected_ticks=2, span=1, imbalance_span=1))
    assert bars["n_trades"].to_list() == [2, 3, 4]
    assert bars["run"].to_list() == [1.0, 2.0, 3.0]
    assert bars["threshold"].to_list() == [None, 2.0, 3.0]

    sizes = [5.0, 1.0, 4.0, 2.0, 3.0, 1.0]  # warm-up (1 trade) then E[b+ v] = 5: threshold 1 * 5
    bars = bars_from_trades(signed_trades([1, 1, 1, -1, -1, 1], sizes),
                            BarSpec("volume_run", expected_ticks=1, span=1, imbalance_span=1))
    # bar 2: buys 1 + 4 = 5 >= 5 -> 2 trades; E[T] = 2, last a buy of 4: threshold 8;
    # bar 3: sells 2 + 3, buy 1: never 8 -> cut by the end of the day
    assert bars["n_trades"].to_list() == [1, 2, 3]
    assert bars["threshold"].to_list() == [None, 5.0, 8.0]
    assert bars["run"].to_list() == [5.0, 5.0, 5.0]


def test_information_bars_never_close_on_unsigned_trades():
    """Trades with no direction (b = 0) add nothing: a zero threshold does not cut one-trade bars."""
    bars = bars_from_trades(signed_trades([1, 1] + [0] * 20), BarSpec("tick_imbalance", expected_ticks=2,
                                                                      imbalance_span=1))
    assert bars["n_trades"].to_list() == [2, 20] and bars["complete"].to_list() == [True, False]


def test_information_bars_ewma_over_prior_trades():
    """E[b] is the bias-corrected EWMA of all prior trades' b (pandas ``ewm(span, adjust=True)``), taken at
    the bar's first trade: checked against pandas on a random sequence."""
    rng = np.random.default_rng(4)
    dirs = rng.choice([-1, 1], size=400, p=[0.3, 0.7]).tolist()
    spec = BarSpec("tick_imbalance", expected_ticks=5, span=3, imbalance_span=50)
    bars = bars_from_trades(signed_trades(dirs), spec)
    starts = np.cumsum(bars["n_trades"].to_numpy())[:-1]  # index of each later bar's first trade
    ewm = pd.Series(dirs, dtype=float).ewm(span=50, adjust=True).mean().to_numpy()
    e_t = [5.0]
    for n in bars["n_trades"].to_list()[:-1]:
        e_t.append(min(max(e_t[-1] + 0.5 * (n - e_t[-1]), 1.0), 50.0))
    want = np.array(e_t[1:]) * np.abs(ewm[starts - 1])
    np.testing.assert_allclose(bars["threshold"].to_numpy()[1:], want, rtol=1e-12)
    assert 3 < bars["n_trades"].mean() < 30  # with a 0.4 mean imbalance the bars stay near E[T]


def test_daily_thresholds_use_earlier_days_only():
    daily = pl.DataFrame({"symbol": ["A"] * 4 + ["B"], "date": [dt.date(2024, 1, d) for d in (2, 3, 4, 5, 2)],
                          "n_trades": [10, 20, 40, 80, 7], "volume": [1.0, 2.0, 3.0, 4.0, 5.0],
                          "dollar_volume": [100.0, 200.0, 400.0, 800.0, 9.0]})
    spec = BarSpec("dollar", expected_daily=50, bars_per_day=10, trailing_days=2)
    got = bar_module.daily_thresholds(daily, spec)
    assert got["threshold"].to_list() == [5.0, 10.0, 15.0, 30.0, 5.0]  # seed, 100/10, 150/10, 300/10; B: seed
    ticks = bar_module.daily_thresholds(daily, BarSpec("tick", expected_daily=8, bars_per_day=2, trailing_days=3))
    assert ticks["threshold"].to_list() == [4.0, 5.0, 7.5, 70 / 3 / 2, 4.0]


def test_trailing_thresholds_have_no_look_ahead():
    """Changing a day's trades changes the thresholds of later days only."""
    dirs = [1, -1] * 30
    days = [0] * 20 + [1] * 20 + [2] * 20
    base = signed_trades(dirs, [float(i % 7 + 1) for i in range(60)], days)
    spec = BarSpec("volume", expected_daily=40, bars_per_day=4, trailing_days=1)
    before = bars_from_trades(base, spec)
    later = base.with_columns(pl.when(pl.col("date") == dt.date(2024, 1, 3)).then(pl.col("size") * 10)
                              .otherwise(pl.col("size")).alias("size"))
    after = bars_from_trades(later, spec)
    day = pl.col("date")

    def thresholds(df, d):
        return df.filter(day == dt.date(2024, 1, d))["threshold"].unique().to_list()

    assert before.filter(day == dt.date(2024, 1, 2)).equals(after.filter(day == dt.date(2024, 1, 2)))
    assert thresholds(after, 3) == thresholds(before, 3) == [sum(float(i % 7 + 1) for i in range(20)) / 4]
    assert thresholds(after, 4) == [thresholds(before, 4)[0] * 10]
