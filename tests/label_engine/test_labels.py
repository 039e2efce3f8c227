"""Labels against plain pandas references (AFML, MLAM), on random walks and on real daily prices, plus the
edge cases and the no-look-ahead property."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from quantflow.compute.sample_weights import training_weights
from quantflow.label_engine import label_bars
from quantflow.metadata.schema.label_engine import LabelSetConfig
from tests.label_engine import reference as ref

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "daily_us_equities"


def daily_bars(close: np.ndarray, symbol: str = "X", start: dt.date = dt.date(2020, 1, 1),
               high: np.ndarray | None = None, low: np.ndarray | None = None) -> pl.DataFrame:
    dates = pl.date_range(start, start + dt.timedelta(days=len(close) - 1), eager=True)
    return pl.DataFrame({"symbol": symbol, "date": dates, "close": close,
                         "high": close if high is None else high, "low": close if low is None else low})


def random_walk(n: int, seed: int, vol: float = 0.01) -> np.ndarray:
    return 100.0 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0.0002, vol, n)))


def real_closes() -> list[tuple[str, np.ndarray]]:
    if not SHARED.exists():
        pytest.skip("../shared/data/daily_us_equities is not here")
    out = []
    for ticker in ("AAPL", "JPM", "XOM"):
        df = pl.read_csv(SHARED / f"{ticker}.csv").sort("timestamp")
        out.append((ticker, df["adjusted_close"].to_numpy().astype(float)))
    return out


def series(sources: str) -> list[tuple[str, np.ndarray]]:
    return [("RW1", random_walk(600, 1)), ("RW2", random_walk(400, 2, 0.02))] if sources == "synthetic" \
        else real_closes()


def check_triple_barrier(close: np.ndarray, cfg: LabelSetConfig) -> pl.DataFrame:
    got = label_bars(daily_bars(close), cfg)
    c = pd.Series(close, index=pd.RangeIndex(len(close)))
    vol = ref.daily_vol(c, cfg.volatility_span, cfg.volatility_min_bars)
    if cfg.events == "cusum":
        events = ref.cusum(c, cfg.cusum_threshold * vol)
    else:
        events = list(range(len(c)))
    events = [s for s in events if np.isfinite(vol.iloc[s]) and vol.iloc[s] > cfg.min_ret]
    side = pd.Series(1.0, index=c.index)
    if cfg.side == "sma_crossover":
        side = np.sign(c.rolling(cfg.sma_fast).mean() - c.rolling(cfg.sma_slow).mean()).fillna(0.0)
        events = [s for s in events if side.iloc[s] != 0]
    want = ref.triple_barrier(c, events, vol, side, cfg.pt_sl, cfg.vertical_bars, cfg.meta_labeling)
    assert got.height == len(want) > 20
    starts = [(d - dt.date(2020, 1, 1)).days for d in got["date"]]
    ends = [(d - dt.date(2020, 1, 1)).days for d in got["t1_date"]]
    assert starts == want["start"].tolist() and ends == want["end"].tolist()
    np.testing.assert_allclose(got["ret"].to_numpy(), want["ret"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["target"].to_numpy(), want["target"].to_numpy(), rtol=1e-9)
    assert got["label"].to_list() == want["label"].tolist()
    assert got["barrier"].to_list() == want["barrier"].tolist()
    w = ref.weights(c, starts, ends, cfg.time_decay, undecided=sorted(set(events) - set(starts)))
    for column, want_column in (("concurrency", "concurrency"), ("uniqueness", "uniqueness"),
                                ("return_attribution", "attribution")):
        np.testing.assert_allclose(got[column].to_numpy(), w[want_column].to_numpy(), rtol=1e-9, err_msg=column)
    for kind, base in (("uniqueness", "uniqueness"), ("return_attribution", "return_weight")):
        weights = training_weights(got, kind, cfg.time_decay)
        np.testing.assert_allclose(weights.to_numpy(), (w[base] * w["time_decay"]).to_numpy(), rtol=1e-9)
    shuffled = got.sample(fraction=1.0, shuffle=True, seed=3)  # the weights follow the rows' order
    np.testing.assert_allclose(training_weights(shuffled, cfg.sample_weight, cfg.time_decay).to_numpy(), (w["uniqueness"] * w["time_decay"])
                               .to_numpy()[np.argsort(np.argsort(shuffled["ts"].to_numpy()))], rtol=1e-9)
    return got


@pytest.mark.parametrize("sources", ["synthetic", "real"])
def test_triple_barrier_matches_afml(sources):
    for _, close in series(sources):
        check_triple_barrier(close, LabelSetConfig(name="tb", method="triple_barrier", events="cusum",
                                                   cusum_threshold=1.5, volatility_span=50, pt_sl=(1.0, 2.0),
                                                   vertical_bars=10, time_decay=0.5))
        check_triple_barrier(close, LabelSetConfig(name="all", method="triple_barrier", pt_sl=(2.0, 0.0),
                                                   vertical_bars=5, min_ret=0.005, time_decay=-0.25))
        meta = check_triple_barrier(close, LabelSetConfig(
            name="meta", method="triple_barrier", side="sma_crossover", sma_fast=5, sma_slow=20,
            meta_labeling=True, vertical_bars=8))
        assert set(meta["label"].unique().to_list()) == {0, 1} and set(meta["side"].unique().to_list()) == {-1, 1}


@pytest.mark.parametrize("sources", ["synthetic", "real"])
def test_trend_scanning_matches_mlam(sources):
    for _, close in series(sources):
        close = close[:800]
        got = label_bars(daily_bars(close), LabelSetConfig(name="ts", method="trend_scanning", windows=(5, 21, 2)))
        want = ref.trend_scanning(pd.Series(close), range(5, 22, 2))
        assert got.height == len(want)
        np.testing.assert_allclose(got["t_value"].to_numpy(), want["t_value"].to_numpy(), rtol=1e-6)
        assert got["window"].to_list() == want["window"].tolist()
        assert got["label"].to_list() == want["label"].tolist()


def test_fixed_horizon_by_hand():
    close = np.array([100.0, 101.0, 99.5, 99.5, 103.0, 98.0])
    got = label_bars(daily_bars(close), LabelSetConfig(name="fh", method="fixed_horizon", horizon=2,
                                                       threshold=0.01))
    # returns over 2 bars: -0.5%, -1.49%, +3.52%, -1.51%; |r| must exceed 1% for a +-1 label
    np.testing.assert_allclose(got["ret"].to_numpy(), [-0.005, 99.5 / 101 - 1, 103 / 99.5 - 1, 98 / 99.5 - 1])
    assert got["label"].to_list() == [0, -1, 1, -1]
    assert got["n_bars"].to_list() == [2, 2, 2, 2]  # the last two bars have no bar 2 ahead: no label


def test_triple_barrier_edge_cases():
    cfg = dict(name="tb", method="triple_barrier", target="fixed", target_value=0.02, vertical_bars=3)
    # touched on the first bar after the event; never touched (vertical); the stop loss first
    close = np.array([100.0, 103.0, 103.5, 103.0, 102.5, 102.0, 101.0, 100.0, 97.0])
    got = label_bars(daily_bars(close), LabelSetConfig(**cfg))
    first = got.row(0, named=True)
    assert (first["barrier"], first["n_bars"], first["label"]) == ("pt", 1, 1)
    second = got.row(1, named=True)  # 103 -> 103.5, 103, 102.5: within 2%, the vertical barrier
    assert (second["barrier"], second["n_bars"]) == ("vertical", 3) and second["label"] == -1
    assert got.filter(pl.col("date") == dt.date(2020, 1, 6))["barrier"].to_list() == ["sl"]  # 102.5 -> 97
    # both barriers inside one bar (high and low): the stop loss counts
    high = np.array([100.0, 103.0, 100.5])
    low = np.array([100.0, 97.0, 99.5])
    hl = label_bars(daily_bars(np.array([100.0, 100.0, 100.0]), high=high, low=low),
                    LabelSetConfig(**cfg, use_high_low=True))
    first = hl.row(0, named=True)  # the close is back at 100: the return is the stop's level, -2%
    assert (first["barrier"], first["ret"], first["label"]) == ("sl", -0.02, -1)
    # no vertical barrier: only the horizontal ones end a label; a path that touches none is undecided
    none = label_bars(daily_bars(close), LabelSetConfig(**{**cfg, "vertical_bars": None}))
    assert set(none["barrier"].to_list()) <= {"pt", "sl"} and none.height >= 2
    # a series shorter than the vertical barrier and the volatility warm-up: no label, no error
    assert label_bars(daily_bars(np.array([100.0, 100.5])), LabelSetConfig(name="v", method="triple_barrier")).height == 0
    # a gap: the vertical barrier in time reaches the first bar at or after the event + 5 days
    gapped = daily_bars(np.array([100.0, 100.2, 100.1, 100.3])).with_columns(
        pl.Series("date", [dt.date(2020, 1, 1), dt.date(2020, 1, 2), dt.date(2020, 1, 9), dt.date(2020, 1, 10)]))
    timed = label_bars(gapped, LabelSetConfig(**{**cfg, "vertical_bars": None}, vertical_duration="5d"))
    assert timed["t1_date"].to_list()[:2] == [dt.date(2020, 1, 9), dt.date(2020, 1, 9)]


def test_bad_closes_name_the_symbol_and_date():
    close = np.array([100.0, 101.0, np.nan, 102.0])
    with pytest.raises(ValueError, match=r"label set 'tb': symbol X, 2020-01-03: close nan is not a positive"):
        label_bars(daily_bars(close), LabelSetConfig(name="tb", method="fixed_horizon"))


@pytest.mark.parametrize("method", ["triple_barrier", "fixed_horizon", "trend_scanning"])
def test_no_look_ahead_beyond_t1(method):
    """A label, its target and its side use nothing after its t1; the event set up to a bar uses nothing
    after that bar. Altering every bar after some time changes no label that ended before it."""
    close = random_walk(500, 7)
    cfg = LabelSetConfig(name="x", method=method, events="cusum" if method == "triple_barrier" else "all",
                         cusum_threshold=1.0, side="sma_crossover" if method == "triple_barrier" else "long",
                         meta_labeling=method == "triple_barrier", windows=(5, 15, 1))
    base = label_bars(daily_bars(close), cfg)
    cut = 300
    altered = close.copy()
    altered[cut:] = altered[cut:] * np.exp(np.random.default_rng(9).normal(0, 0.05, len(close) - cut))
    after = label_bars(daily_bars(altered), cfg)
    boundary = dt.date(2020, 1, 1) + dt.timedelta(days=cut)
    weights = ("concurrency", "uniqueness", "return_attribution")  # these also count overlapping later events
    done = base.filter(pl.col("t1_date") < boundary).drop(weights)
    assert done.height > 20
    assert done.equals(after.filter(pl.col("t1_date") < boundary).drop(weights))
