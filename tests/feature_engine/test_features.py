"""Each feature kind against an independent computation: Qlib's operators in pandas for Alpha158, TA-Lib over
the whole series, loops for the rolling, benchmark and microstructure measures, pandas group-bys for the
cross-sectional transforms; and no feature reads a bar after its own."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import talib

from quantflow.feature_engine.engine import (
    SegmentData,
    bars_with_time,
    cross_sectional_features,
    time_series_features,
)
from quantflow.metadata.schema.feature_engine import ALPHA158_NAMES, FeatureDAG, FeatureEngineConfig
from tests.feature_engine import reference as ref

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "daily_us_equities"
UTC_NS = pl.Datetime("ns", "UTC")


def daily_bars(n: int, symbol: str = "X", seed: int = 0, start: dt.date = dt.date(2015, 1, 1)) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, n)))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.006, n)))
    volume = rng.lognormal(13, 0.4, n).round()
    dates = [start + dt.timedelta(days=i) for i in range(n)]
    return pl.DataFrame({"symbol": symbol, "date": dates, "open": open_, "high": high, "low": low, "close": close,
                         "volume": volume, "vwap": (high + low + close) / 3})


def real_bars(ticker: str) -> pl.DataFrame:
    if not SHARED.exists():
        pytest.skip("../shared/data/daily_us_equities is not here")
    df = pl.read_csv(SHARED / f"{ticker}.csv", try_parse_dates=True).sort("timestamp")
    adj = df["adjusted_close"] / df["close"]
    return pl.DataFrame({"symbol": ticker, "date": df["timestamp"], "open": df["open"] * adj, "high": df["high"] * adj,
                         "low": df["low"] * adj, "close": df["adjusted_close"], "volume": df["volume"].cast(pl.Float64)})


def compute(bars: pl.DataFrame, features: list[dict], preset: str | None = None, **data) -> pl.DataFrame:
    """Features of ``bars`` (any symbols), each symbol one segment from its first bar."""
    cfg = FeatureEngineConfig.model_validate({"preset": preset, "features": features,
                                              "input": data.pop("input", "cdm_bars_daily")})
    dag = FeatureDAG.compile(cfg)
    bars = bars_with_time(bars)
    counts = bars.group_by("symbol", maintain_order=True).len()["len"].to_numpy()
    starts = np.concatenate(([0], np.cumsum(counts)))
    out = time_series_features(SegmentData(bars, starts, **data), dag)
    return cross_sectional_features(out, dag)


# ---------------------------------------------------------------- Alpha158
def _with_gaps(bars: pl.DataFrame) -> pl.DataFrame:
    """A few nan closes and volumes, and a flat stretch (Qlib's near-zero-std rule applies there)."""
    close = bars["close"].to_numpy().copy()
    volume = bars["volume"].to_numpy().copy()
    close[[40, 41, 200]] = np.nan
    volume[[90, 300]] = np.nan
    close[500:520] = close[499]
    return bars.with_columns(pl.Series("close", close), pl.Series("volume", volume))


@pytest.mark.parametrize("source", ["synthetic", "AAPL", "JPM"])
def test_alpha158_equals_qlibs_operators_in_pandas(source):
    bars = _with_gaps(daily_bars(800)) if source == "synthetic" else real_bars(source)
    table = "cdm_time_1h_bars" if "vwap" in bars.columns else "cdm_bars_daily"  # bars with a vwap column
    got = compute(bars, [], preset="alpha158", input=table)
    want = ref.alpha158(bars.to_pandas())
    names = [n for n in ALPHA158_NAMES if n in got.columns]
    assert len(names) == (158 if "vwap" in bars.columns else 157)
    for name in names:
        a, b = got[name].to_numpy(), want[name].to_numpy()
        close = np.isclose(a, b, rtol=1e-7, atol=1e-10, equal_nan=True)
        assert close.all(), (name, np.flatnonzero(~close)[:5], a[~close][:3], b[~close][:3])


# ---------------------------------------------------------------- TA-Lib and rolling kinds
def test_talib_features_are_talib_over_the_series_with_its_own_parameters_and_outputs():
    bars = pl.concat([daily_bars(600, "A", 1), daily_bars(400, "B", 2)])
    got = compute(bars, [
        {"name": "rsi", "kind": "talib", "params": {"function": "RSI", "timeperiod": 9}},
        {"name": "macd", "kind": "talib", "params": {"function": "MACD", "fastperiod": 5}},
        {"name": "bb", "kind": "talib", "params": {"function": "BBANDS", "timeperiod": 10, "nbdevup": 1.5},
         "outputs": ["up", "mid", "low_band"]},
        {"name": "stoch", "kind": "talib", "params": {"function": "STOCH"}},
        {"name": "sma_rsi", "kind": "talib", "params": {"function": "SMA", "timeperiod": 5, "inputs": {"close": "rsi"}}},
    ])
    assert {"macd_macd", "macd_macdsignal", "macd_macdhist", "up", "mid", "low_band", "stoch_slowk",
            "stoch_slowd"} <= set(got.columns)
    for symbol, part in bars.group_by("symbol"):
        mine = got.filter(pl.col("symbol") == symbol[0])
        c, h, lo = (part[x].to_numpy() for x in ("close", "high", "low"))
        rsi = talib.RSI(c, timeperiod=9)
        for name, want in [("rsi", rsi), ("macd_macdhist", talib.MACD(c, fastperiod=5)[2]),
                           ("low_band", talib.BBANDS(c, timeperiod=10, nbdevup=1.5)[2]),
                           ("stoch_slowd", talib.STOCH(h, lo, c)[1]), ("sma_rsi", talib.SMA(rsi, 5))]:
            np.testing.assert_array_equal(mine[name].to_numpy(), want, err_msg=name)


def test_returns_volatility_zscore_rolling_equal_loops():
    bars = daily_bars(300)
    c = bars["close"].to_numpy()
    got = compute(bars, [
        {"name": "r", "kind": "returns", "params": {"horizons": [1, 7]}},
        {"name": "lr", "kind": "returns", "params": {"horizons": [3], "log": True}},
        {"name": "vol", "kind": "volatility", "params": {"window": 15, "annualize": 252}},
        {"name": "z", "kind": "zscore", "params": {"column": "r_7", "window": 12}},
        {"name": "hi", "kind": "rolling", "params": {"column": "high", "window": 8, "stat": "max"}},
        {"name": "sd", "kind": "rolling", "params": {"column": "volume", "window": 8, "stat": "std"}},
    ])
    r7 = np.full(len(c), np.nan)
    r7[7:] = c[7:] / c[:-7] - 1
    lr3 = np.full(len(c), np.nan)
    lr3[3:] = np.log(c[3:] / c[:-3])
    np.testing.assert_allclose(got["r_7"].to_numpy(), r7, rtol=1e-13)
    np.testing.assert_allclose(got["lr_3"].to_numpy(), lr3, rtol=1e-13)
    np.testing.assert_allclose(got["vol"].to_numpy(), ref.volatility(c, 15, 252), rtol=1e-10)
    np.testing.assert_allclose(got["z"].to_numpy(), ref.zscore(r7, 12), rtol=1e-9)
    np.testing.assert_allclose(got["hi"].to_numpy(), bars["high"].to_pandas().rolling(8).max(), rtol=0)
    np.testing.assert_allclose(got["sd"].to_numpy(), ref.rolling_std(bars["volume"].to_numpy(), 8), rtol=1e-10)


def test_beta_and_correlation_to_a_benchmark_use_its_bars_as_of_each_bar():
    market, stock = daily_bars(300, "MKT", 1), daily_bars(300, "STK", 2)
    stock = stock.with_columns((pl.col("close") * (market["close"] / 50) ** 1.3).alias("close"))
    stock = stock.filter(~pl.col("date").is_in(stock["date"][[50, 51, 120]].implode()))  # days the stock did not trade
    bench = bars_with_time(market)
    got = compute(stock, [{"name": "beta", "kind": "beta", "params": {"benchmark": "MKT", "window": 40}},
                          {"name": "corr", "kind": "correlation", "params": {"benchmark": "MKT", "window": 40}}],
                  benchmarks={"MKT": bench})
    aligned = stock.join(market.select("date", pl.col("close").alias("m")), on="date", how="left")
    y, x = (np.log(aligned[c].to_numpy()[1:] / aligned[c].to_numpy()[:-1]) for c in ("close", "m"))
    y, x = np.concatenate(([np.nan], y)), np.concatenate(([np.nan], x))
    np.testing.assert_allclose(got["beta"].to_numpy(), ref.beta(y, x, 40), rtol=1e-9)
    np.testing.assert_allclose(got["corr"].to_numpy(), ref.beta(y, x, 40, correlation=True), rtol=1e-9)
    assert 1.1 < np.nanmean(got["beta"].to_numpy()) < 1.5


def test_cross_sectional_transforms_equal_pandas_group_bys_per_date():
    bars = pl.concat([daily_bars(120, s, i) for i, s in enumerate(["A", "B", "C", "D"])])
    got = compute(bars, [
        {"name": "r", "kind": "returns", "params": {"horizons": [5]}},
        {"name": "rk", "kind": "cs_rank", "params": {"column": "r_5"}},
        {"name": "zs", "kind": "cs_zscore", "params": {"column": "r_5"}},
        {"name": "dm", "kind": "cs_demean", "params": {"column": "rk"}},
    ]).to_pandas()
    g = got.groupby("ts")["r_5"]
    np.testing.assert_allclose(got["rk"], g.rank(pct=True), rtol=1e-12)
    np.testing.assert_allclose(got["zs"], (got["r_5"] - g.transform("mean")) / g.transform("std"), rtol=1e-9)
    np.testing.assert_allclose(got["dm"], got["rk"] - got.groupby("ts")["rk"].transform("mean"), atol=1e-12)
    assert got["rk"].isna().sum() == 4 * 5  # the first five bars of each symbol have no 5-bar return


def test_calendar_fields_of_daily_bars():
    got = compute(daily_bars(10, start=dt.date(2024, 3, 28)),
                  [{"name": "cal", "kind": "calendar", "params": {"fields": ["day_of_week", "month", "quarter"]}}])
    assert got["cal_day_of_week"].to_list()[:4] == [4, 5, 6, 7] and got["cal_month"].to_list()[3:5] == [3, 4]
    assert got["cal_quarter"].to_list()[3:5] == [1, 2]


# ---------------------------------------------------------------- microstructure
def tick_market(days: int = 12, seed: int = 3):
    """Trades with quotes, their signs and spreads, over ``days`` days; and the time bars of 30 minutes
    and the daily bars they make."""
    rng = np.random.default_rng(seed)
    trades, quotes = [], []
    for d in range(days):
        day = dt.date(2024, 1, 1) + dt.timedelta(days=d)
        open_ns = int(dt.datetime(day.year, day.month, day.day, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)
        qt = np.sort(rng.integers(0, 6.5 * 3600 * 10**9, 900)) + open_ns
        mid = 100 + np.cumsum(rng.normal(0, 0.02, qt.size))
        half = rng.choice([0.01, 0.02, 0.03], qt.size)
        quotes.append(pl.DataFrame({"symbol": "X", "date": day, "ts": qt, "bid": (mid - half).round(2),
                                    "ask": (mid + half).round(2), "bid_size": rng.integers(1, 9, qt.size) * 100.0,
                                    "ask_size": rng.integers(1, 9, qt.size) * 100.0}))
        tt = np.sort(rng.integers(0, 6.5 * 3600 * 10**9, 400)) + open_ns
        at = np.searchsorted(qt, tt, "right") - 1
        sign = rng.choice([-1.0, 1.0], tt.size)
        bid, ask = quotes[-1]["bid"].to_numpy()[at], quotes[-1]["ask"].to_numpy()[at]
        price = np.where(sign > 0, ask, bid)
        size = rng.integers(1, 10, tt.size) * 100.0
        spread = (ask - bid) / ((ask + bid) / 2) * 1e4
        trades.append(pl.DataFrame({"symbol": "X", "date": day, "ts": tt, "price": price, "size": size,
                                    "signed_volume": sign * size, "spread_bps": spread,
                                    "effective_spread_bps": 2 * np.abs(price - (ask + bid) / 2) / ((ask + bid) / 2) * 1e4}))
    trades = pl.concat(trades).with_columns(pl.col("ts").cast(UTC_NS))
    quotes = pl.concat(quotes).with_columns(pl.col("ts").cast(UTC_NS))
    bucket = pl.col("ts").dt.truncate("30m")
    intraday = trades.group_by("symbol", "date", bucket.alias("bar"), maintain_order=True).agg(
        pl.col("price").first().alias("open"), pl.col("price").max().alias("high"),
        pl.col("price").min().alias("low"), pl.col("price").last().alias("close"),
        pl.col("size").sum().alias("volume"), (pl.col("price") * pl.col("size")).sum().alias("dollar_volume"),
        pl.col("size").filter(pl.col("signed_volume") > 0).sum().alias("buy_volume"),
        pl.col("size").filter(pl.col("signed_volume") < 0).sum().alias("sell_volume"),
        pl.col("ts").first().alias("ts_first"), pl.col("ts").last().alias("ts_last")).drop("bar")
    daily = trades.group_by("symbol", "date", maintain_order=True).agg(
        pl.col("price").first().alias("open"), pl.col("price").max().alias("high"),
        pl.col("price").min().alias("low"), pl.col("price").last().alias("close"), pl.col("size").sum().alias("volume"))
    return trades, quotes, intraday, daily


MEASURES = [{"name": m, "kind": "microstructure", "params": {"measure": m, "window": 6}}
            for m in ("order_flow_imbalance", "signed_volume_ratio", "spread", "effective_spread", "kyle_lambda",
                      "amihud", "vpin", "roll")]


def _expected_micro(bars: pl.DataFrame, trades: pl.DataFrame, quotes: pl.DataFrame, daily: bool) -> dict:
    """Per-bar sums by plain loops over the ticks, then the window measures."""
    n, w = bars.height, 6
    key = bars["date"].to_list() if daily else bars["ts_last"].to_list()
    def bar_of(ts, date):
        if daily:
            return key.index(date) if date in key else None
        for i, last in enumerate(key):
            if ts <= last:
                return i
        return None
    sums = {k: np.zeros(n) for k in ("sv", "spread", "spread_n", "eff", "eff_n", "ofi")}
    for row in trades.iter_rows(named=True):
        i = bar_of(row["ts"], row["date"])
        if i is None:
            continue
        sums["sv"][i] += row["signed_volume"]
        sums["spread"][i] += row["spread_bps"]
        sums["spread_n"][i] += 1
        sums["eff"][i] += row["effective_spread_bps"]
        sums["eff_n"][i] += 1
    for _, q in quotes.group_by("date", maintain_order=True):
        e = ref.order_flow_imbalance(*(q[c].to_numpy() for c in ("bid", "ask", "bid_size", "ask_size")))
        for ts, date, value in zip(q["ts"].to_list(), q["date"].to_list(), e):
            i = bar_of(ts, date)
            if i is not None:
                sums["ofi"][i] += value
    if not daily:
        sums["sv"] = (bars["buy_volume"] - bars["sell_volume"]).to_numpy()
    def window_sum(x):
        return pd.Series(x).rolling(w).sum().to_numpy()
    c, v = bars["close"].to_numpy(), bars["volume"].to_numpy()
    dollars = bars["dollar_volume"].to_numpy() if "dollar_volume" in bars.columns else c * v
    dp = np.concatenate(([np.nan], np.diff(c)))
    lr = np.concatenate(([np.nan], np.abs(np.log(c[1:] / c[:-1]))))
    return {
        "order_flow_imbalance": window_sum(sums["ofi"]),
        "signed_volume_ratio": window_sum(sums["sv"]) / window_sum(v),
        "spread": window_sum(sums["spread"]) / window_sum(sums["spread_n"]),
        "effective_spread": window_sum(sums["eff"]) / window_sum(sums["eff_n"]),
        "kyle_lambda": ref.beta(dp, sums["sv"], w),
        "amihud": pd.Series(lr / dollars * 1e6).rolling(w).mean().to_numpy(),
        "vpin": window_sum(np.abs(sums["sv"])) / window_sum(v),
        "roll": ref.roll_measure(c, w),
    }


@pytest.mark.parametrize("grid", ["daily", "intraday"])
def test_microstructure_measures_equal_loops_over_the_ticks(grid):
    trades, quotes, intraday, daily = tick_market()
    bars = daily if grid == "daily" else intraday
    got = compute(bars, MEASURES, input="cdm_bars_daily" if grid == "daily" else "cdm_time_30m_bars",
                  trades=trades, quotes=quotes)
    want = _expected_micro(bars_with_time(bars), trades, quotes, grid == "daily")
    for name, values in want.items():
        np.testing.assert_allclose(got[name].to_numpy(), values, rtol=1e-9, atol=1e-12, err_msg=name)
        assert np.isfinite(got[name].to_numpy()).sum() > (bars.height - 8) // 2, name


# ---------------------------------------------------------------- no look-ahead
NO_LOOK_AHEAD_SET = [
    {"name": "rsi", "kind": "talib", "params": {"function": "RSI", "timeperiod": 14}},
    {"name": "macd", "kind": "talib", "params": {"function": "MACD"}},
    {"name": "obv", "kind": "talib", "params": {"function": "OBV"}},
    {"name": "atr", "kind": "talib", "params": {"function": "ATR"}},
    {"name": "r", "kind": "returns", "params": {"horizons": [1, 5]}},
    {"name": "vol", "kind": "volatility", "params": {"window": 10}},
    {"name": "z", "kind": "zscore", "params": {"column": "rsi", "window": 10}},
    {"name": "mx", "kind": "rolling", "params": {"column": "high", "window": 5, "stat": "max"}},
    {"name": "beta", "kind": "beta", "params": {"benchmark": "X", "window": 10}},
    {"name": "corr", "kind": "correlation", "params": {"benchmark": "X", "window": 10}},
    {"name": "cal", "kind": "calendar", "params": {"fields": ["day_of_week", "month", "minute_of_day"]}},
    *MEASURES,
    {"name": "rank", "kind": "cs_rank", "params": {"column": "r_5"}},
    {"name": "zs", "kind": "cs_zscore", "params": {"column": "vol"}},
    {"name": "dm", "kind": "cs_demean", "params": {"column": "rsi"}},
]


@pytest.mark.parametrize("grid", ["daily", "intraday"])
def test_no_feature_changes_when_the_data_after_its_bar_is_altered_or_removed(grid):
    trades, quotes, intraday, daily = tick_market(days=20)
    bars = daily if grid == "daily" else intraday
    bars = bars.with_columns(pl.lit(None, pl.Float64).alias("vwap")) if grid == "daily" else \
        bars.with_columns((pl.col("dollar_volume") / pl.col("volume")).alias("vwap"))
    other = bars.with_columns(pl.lit("Y").alias("symbol"), pl.col("close") * 1.01)
    both = pl.concat([bars, other])
    table = "cdm_bars_daily" if grid == "daily" else "cdm_time_30m_bars"

    def run(b, t, q):
        return compute(b, NO_LOOK_AHEAD_SET, preset="alpha158", input=table, trades=t, quotes=q,
                       benchmarks={"X": bars_with_time(b.filter(pl.col("symbol") == "X"))})

    full = run(both, trades, quotes)
    names = [c for c in full.columns if c not in ("symbol", "date", "ts")]
    epoch = pl.col("ts").dt.epoch("ns")
    bar_ns = bars_with_time(both)["ts"].dt.epoch("ns")
    times = bars_with_time(bars)["ts"].dt.epoch("ns")
    rng = np.random.default_rng(9)
    for cut in (times[len(times) // 3], times[2 * len(times) // 3]):
        cut_day = bars_with_time(bars).filter(epoch == cut)["date"][0]
        # after the bar: later ticks; for a daily bar (stamped with its date) the ticks of later days
        after = epoch > cut if grid == "intraday" else pl.col("date") > cut_day
        bar_after = bar_ns > cut
        noise = pl.Series(rng.uniform(0.5, 2.0, both.height))
        altered = both.with_columns(*(pl.when(bar_after).then(pl.col(c) * noise).otherwise(pl.col(c))
                                      for c in ("open", "high", "low", "close", "volume")))
        for b, t, q in [(altered, trades.with_columns(pl.when(after).then(-pl.col("signed_volume"))
                                                      .otherwise(pl.col("signed_volume"))),
                         quotes.with_columns(pl.when(after).then(pl.col("bid_size") * 3).otherwise(pl.col("bid_size")))),
                        (both.filter(~bar_after), trades.filter(~after), quotes.filter(~after))]:
            got = run(b, t, q)
            before = full.filter(epoch <= cut)
            mine = got.filter(epoch <= cut)
            assert mine.height == before.height
            for name in names:
                np.testing.assert_array_equal(mine[name].to_numpy(), before[name].to_numpy(), err_msg=name)
