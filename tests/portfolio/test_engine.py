"""Target weights: causal schedule and signals, constraints, riskfolio against an independent optimizer,
and no look-ahead (altering what comes after a rebalance leaves its weights as they were)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from quantflow.metadata.schema.portfolio import PortfolioConfig
from quantflow.portfolio import engine


def _cfg(**kw) -> PortfolioConfig:
    base = {"model": "m", "covariance": {"estimator": "hist", "window": 40}, "rebalance": {"every": 5},
            "max_weight": 0.5, "cash_buffer": 0.0}
    base.update(kw)
    return PortfolioConfig(**base)


def _market(days=200, assets=5, seed=1):
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2022-01-03", periods=days)
    vols = np.linspace(0.008, 0.02, assets)
    close = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0.0003, vols, (days, assets)), axis=0)), index=index,
                         columns=[f"S{i}" for i in range(assets)])
    signals = pd.DataFrame(rng.uniform(-1, 1, (days, assets)), index=index, columns=close.columns)
    signals.iloc[:50] = np.nan  # the model predicts from day 50 on
    return close, signals


def test_rebalance_dates_are_first_trading_days_or_every_n():
    dates = pd.DatetimeIndex(pd.bdate_range("2024-01-01", "2024-03-31").drop(pd.Timestamp("2024-01-15")))
    weekly = dates[engine.rebalance_dates(dates, "weekly")]
    assert all(d.weekday() == 0 for d in weekly if d != pd.Timestamp("2024-01-16"))
    assert pd.Timestamp("2024-01-16") in weekly  # Monday 15th was a holiday: Tuesday opens the week
    monthly = dates[engine.rebalance_dates(dates, "monthly")]
    assert list(monthly.strftime("%m-%d")) == ["01-01", "02-01", "03-01"]
    assert engine.rebalance_dates(dates, 10, first=3)[:3] == [3, 13, 23]


def test_signals_are_the_newest_prediction_no_older_than_max_age():
    dates = pd.bdate_range("2024-01-01", periods=8)
    pred = pd.DataFrame({"symbol": ["A", "A", "A"], "date": dates[[1, 1, 5]], "prediction": [0.1, 0.3, -0.2]})
    got = engine.latest_signals(pred, dates, max_age=2)["A"]
    assert np.isnan(got.iloc[0])
    assert got.iloc[1] == 0.3 and got.iloc[2] == 0.3  # the later of a date's two predictions, one day on
    assert np.isnan(got.iloc[3]) and np.isnan(got.iloc[4])  # too old
    assert got.iloc[5] == -0.2


def test_cap_weights_spreads_the_excess_and_leaves_cash_when_it_must():
    w = engine.cap_weights(np.array([0.7, 0.2, 0.1]), 0.5)
    assert w.max() <= 0.5 + 1e-12 and w.sum() == pytest.approx(1.0)
    assert w[1] / w[2] == pytest.approx(2.0)  # in proportion
    w = engine.cap_weights(np.array([0.6, -0.4]), 0.3)  # two names, cap 0.3: 40% cannot be placed
    assert w.tolist() == pytest.approx([0.3, -0.3])


def test_turnover_is_capped_along_the_move_and_the_first_allocation_is_free():
    target, current = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.2, 0.8])
    w, turnover = engine.limit_turnover(target, current, 0.2)
    assert turnover == 0.2 and 0.5 * np.abs(w - current).sum() == pytest.approx(0.2)
    assert w.sum() == pytest.approx(1.0)  # the budget holds along the way
    w, _ = engine.limit_turnover(target, np.zeros(3), 0.2)
    assert w.tolist() == target.tolist()


@pytest.mark.parametrize("method", ["mean_variance", "risk_parity", "hrp", "herc", "nco"])
@pytest.mark.parametrize("long_only", [True, False])
def test_weights_keep_every_constraint(method, long_only):
    close, signals = _market()
    cfg = _cfg(method=method, long_only=long_only, max_weight=0.35, cash_buffer=0.05, max_turnover=0.3)
    path = engine.weight_path(cfg, close, signals, close.index[-1])
    assert len(path.rebalances) >= 25
    previous = None
    for r in path.rebalances:
        assert np.abs(r.target).max() <= 0.35 * 0.95 + 1e-9
        assert np.abs(r.weights).max() <= 0.35 + 1e-12  # a drifted position the turnover cap keeps
        gross = 1 + 2 * cfg.max_short if method == "mean_variance" and not long_only else 1.0
        assert np.abs(r.target).sum() <= gross + 1e-6
        if long_only:
            assert (r.weights >= -1e-12).all()
            assert (r.target[~(r.signal > 0)] == 0).all()  # only names the model expects to rise (the turnover
            # cap may keep some of an earlier position while it moves)
        else:
            held = np.abs(r.target) > 1e-9
            if method != "mean_variance":  # the methods without expected returns take the signal's side
                assert (np.sign(r.target[held]) == np.sign(r.signal[held])).all()
        if previous is not None and previous.weights.any():  # a move out of all cash is exempt
            assert r.turnover <= 0.3 + 1e-9
        previous = r


@pytest.mark.parametrize("method", ["mean_variance", "hrp", "risk_parity"])
def test_no_look_ahead_later_data_leaves_earlier_weights_unchanged(method):
    close, signals = _market(seed=7)
    cfg = _cfg(method=method, long_only=False, max_turnover=0.4)
    cut = close.index[140]
    before = engine.weight_path(cfg, close, signals, close.index[-1])
    altered_close, altered_signals = close.copy(), signals.copy()
    later = close.index > cut
    rng = np.random.default_rng(99)
    altered_close.loc[later] *= np.exp(rng.normal(0, 0.05, (later.sum(), close.shape[1])))
    altered_signals.loc[later] = -altered_signals.loc[later]
    after = engine.weight_path(cfg, altered_close, altered_signals, close.index[-1])
    kept = [r for r in before.rebalances if r.date <= cut]
    assert len(kept) >= 15
    for a, b in zip(kept, after.rebalances):
        assert a.date == b.date
        np.testing.assert_array_equal(a.weights, b.weights)
    changed = [r for r in before.rebalances if r.date > cut]
    assert any(not np.allclose(a.weights, b.weights) for a, b in zip(changed, after.rebalances[len(kept):]))


def test_max_sharpe_weights_equal_an_independent_optimizer():
    """riskfolio's long-only max-Sharpe with a weight cap, against scipy's SLSQP on the same inputs."""
    close, signals = _market(days=120, seed=3)
    returns = close.pct_change().iloc[-60:]
    mu = pd.Series([0.002, 0.001, 0.0015, 0.0005, 0.0012], index=close.columns)
    cfg = _cfg(method="mean_variance", max_weight=0.4, covariance={"estimator": "hist", "window": 60})
    weights, _, note = engine.target_weights(cfg, returns, mu / returns.std(), returns.std())
    assert note == ""
    cov = returns.cov().to_numpy()
    m = mu.to_numpy()
    result = minimize(lambda w: -(w @ m) / np.sqrt(w @ cov @ w), np.full(5, 0.2), method="SLSQP",
                      bounds=[(0, 0.4)] * 5, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                      options={"ftol": 1e-14, "maxiter": 1000})
    np.testing.assert_allclose(weights, result.x, atol=2e-4)


def test_hrp_weights_follow_inverse_variance_for_uncorrelated_assets():
    """Uncorrelated assets: HRP's bisection gives inverse-variance weights (López de Prado 2016)."""
    rng = np.random.default_rng(11)
    vols = np.array([0.01, 0.02, 0.03, 0.015])
    returns = pd.DataFrame(rng.normal(0, 1, (5000, 4)) * vols, columns=list("ABCD"))
    returns = (returns - returns.mean()) / returns.std() * vols  # exact variances
    cfg = _cfg(method="hrp", max_weight=1.0, linkage="single")
    weights, _, _ = engine.target_weights(cfg, returns, pd.Series(1.0, index=returns.columns),
                                          returns.std())
    ivp = (1 / vols**2) / (1 / vols**2).sum()
    np.testing.assert_allclose(weights, ivp, atol=0.02)


def test_no_signal_means_cash():
    close, signals = _market(days=120)
    cfg = _cfg(method="hrp", min_signal=2.0)  # no signal is that strong
    path = engine.weight_path(cfg, close, signals, close.index[-1])
    assert path.rebalances and all(not r.weights.any() and r.note for r in path.rebalances)


def test_one_held_symbol_long_short_takes_the_signals_side():
    close, _ = _market(days=80)
    returns = close.pct_change().iloc[-40:]
    signal = pd.Series([-0.5, 0.0, 0.0, 0.0, 0.0], index=close.columns)
    cfg = _cfg(method="mean_variance", long_only=False, max_weight=0.4, min_signal=0.1)
    weights, _, note = engine.target_weights(cfg, returns, signal, returns.std())
    assert note == "" and weights[0] == pytest.approx(-0.4) and not weights[1:].any()


@pytest.mark.parametrize("method", ["hrp", "herc", "nco", "mean_variance", "risk_parity"])
def test_a_flat_price_is_not_held_and_does_not_stop_the_others(method):
    close, _ = _market(days=80)
    close["S2"] = 42.0  # a halted or stale symbol: no variance
    returns = close.pct_change().iloc[-40:]
    signal = pd.Series(0.5, index=close.columns)
    weights, _, note = engine.target_weights(_cfg(method=method, objective="MinRisk"), returns, signal,
                                             returns.std())
    assert note == "" and weights[2] == 0 and np.count_nonzero(weights) == 4


def test_turnover_recorded_is_the_move_made():
    close, signals = _market(seed=5)
    cfg = _cfg(method="hrp", long_only=False, max_turnover=0.2, max_weight=0.3)
    path = engine.weight_path(cfg, close, signals, close.index[-1])
    prices = close.ffill().to_numpy()
    dates = list(close.index)
    for before, r in zip(path.rebalances, path.rebalances[1:]):
        i, j = dates.index(before.date), dates.index(r.date)
        drifted = engine.drift(before.weights, prices[j] / prices[i])
        assert r.turnover == pytest.approx(0.5 * np.abs(r.weights - drifted).sum())
