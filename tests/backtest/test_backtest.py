"""The vectorbt backtest against an independent numpy simulation, and its metrics against empyrical."""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import pytest

from quantflow.backtest import engine
from tests.backtest.reference import rebalanced_equity


def _market(days=260, assets=4, seed=0):
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2021-01-04", periods=days)
    close = pd.DataFrame(50 * np.exp(np.cumsum(rng.normal(0, 0.012, (days, assets)), axis=0)), index=index,
                         columns=[f"S{i}" for i in range(assets)])
    open_ = close.shift(1).fillna(close.iloc[0]) * np.exp(rng.normal(0, 0.004, (days, assets)))
    return close, open_, rng


def _weights(close, rng, every=10, long_short=False):
    dates = close.index[::every][:-1]
    raw = rng.random((len(dates), close.shape[1]))
    if long_short:
        raw *= rng.choice([-1.0, 1.0], raw.shape)
    w = raw / np.abs(raw).sum(axis=1, keepdims=True) * 0.95
    return pd.DataFrame(w, index=dates, columns=close.columns)


@pytest.mark.parametrize("long_short", [False, True])
@pytest.mark.parametrize("lag,use_open", [(1, True), (2, True), (0, False), (1, False)])
def test_equity_curve_equals_an_independent_numpy_simulation(long_short, lag, use_open):
    close, open_, rng = _market()
    weights = _weights(close, rng, long_short=long_short)
    price = open_ if use_open else close
    sizes = engine.execution_sizes(weights, close.index, lag)
    pf = engine.simulate(close, price, sizes, fees=0.001, slippage=0.0005, init_cash=1e6)
    expected = rebalanced_equity(close.to_numpy(), price.to_numpy(), sizes.to_numpy(), 0.001, 0.0005, 1e6)
    np.testing.assert_allclose(pf.value().to_numpy(), expected, rtol=1e-10)
    # the orders start `lag` bars after each decision, never before
    first_order = pf.orders.records_readable["Timestamp"].min()
    assert close.index.get_loc(first_order) == close.index.get_loc(weights.index[0]) + lag


def test_execution_sizes_shift_by_the_lag_and_drop_what_falls_past_the_data():
    index = pd.bdate_range("2022-01-03", periods=6)
    weights = pd.DataFrame({"A": [0.5, 0.2], "B": [0.5, 0.8]}, index=index[[1, 5]])
    sizes = engine.execution_sizes(weights, index, 1, gross=0.5)
    assert sizes.notna().any(axis=1).sum() == 1  # the second decision would trade after the last bar
    assert sizes.loc[index[2]].tolist() == [0.25, 0.25]
    with pytest.raises(ValueError, match="not a trading date"):
        engine.execution_sizes(pd.DataFrame({"A": [1.0]}, index=[pd.Timestamp("2022-01-01")]), index, 1)


def test_headline_metrics_equal_empyricals():
    close, open_, rng = _market(days=400, seed=4)
    sizes = engine.execution_sizes(_weights(close, rng), close.index, 1)
    pf = engine.simulate(close, open_, sizes, fees=0.0005, slippage=0.0, init_cash=1e6)
    bench_pf = engine.simulate(close, open_, engine.equal_weight_sizes(sizes, close, False), fees=0.0005,
                               slippage=0.0, init_cash=1e6)
    r, b = pf.returns(), bench_pf.returns()
    m = engine.metrics(r, 252, b)
    assert m["sharpe"] == pytest.approx(empyrical.sharpe_ratio(r, annualization=252), rel=1e-9)
    assert m["sortino"] == pytest.approx(empyrical.sortino_ratio(r, annualization=252), rel=1e-9)
    assert m["max_drawdown"] == pytest.approx(empyrical.max_drawdown(r), rel=1e-9)
    assert m["annual_return"] == pytest.approx(empyrical.annual_return(r, annualization=252), rel=1e-9)
    assert m["annual_volatility"] == pytest.approx(empyrical.annual_volatility(r, annualization=252), rel=1e-9)
    assert m["calmar"] == pytest.approx(empyrical.calmar_ratio(r, annualization=252), rel=1e-9)
    alpha, beta = empyrical.alpha_beta(r, b, annualization=252)
    assert (m["alpha"], m["beta"]) == (pytest.approx(alpha, rel=1e-9), pytest.approx(beta, rel=1e-9))
    assert m["total_return"] == pytest.approx(pf.value().iloc[-1] / 1e6 - 1, rel=1e-12)
    # the longest time under water, counted by hand
    wealth = (1 + r).cumprod()
    under = (wealth < wealth.cummax()).to_numpy()
    runs = np.diff(np.flatnonzero(np.r_[True, ~under, True])) - 1
    assert m["max_drawdown_days"] == runs.max()


def test_trading_figures_count_orders_turnover_and_exposure():
    close, open_, rng = _market(days=120, seed=2)
    weights = _weights(close, rng, every=20)
    sizes = engine.execution_sizes(weights, close.index, 1)
    pf = engine.simulate(close, open_, sizes, fees=0.0, slippage=0.0, init_cash=1e6)
    figures = engine.trading_figures(pf, sizes)
    assert figures["rebalances_executed"] == len(weights)
    assert figures["orders"] == len(pf.orders.records_readable)
    # the first rebalance from cash buys 95% of the portfolio: one-way turnover 0.475 at least that day
    assert figures["turnover_total"] >= 0.475
    assert 0.9 < figures["exposure"] < 1.0  # 95% invested, drifting between rebalances


def test_a_sweep_runs_every_combination_in_one_call_and_matches_single_runs():
    close, open_, rng = _market(days=200, seed=5)
    weights = _weights(close, rng)
    grid = [{"fees": f, "slippage": 0.0005, "execution_lag": lag, "gross": g}
            for f in (0.0, 0.002) for lag in (1, 2) for g in (0.5, 1.0)]
    board, returns = engine.sweep(close, open_, weights, grid, 1e6, 252)
    assert len(board) == len(grid) and returns.shape[1] == len(grid)
    assert board["sharpe"].is_monotonic_decreasing
    for combo in (0, 5):
        g = grid[combo]
        single = engine.simulate(close, open_, engine.execution_sizes(weights, close.index, g["execution_lag"],
                                                                       g["gross"]),
                                 fees=g["fees"], slippage=g["slippage"], init_cash=1e6)
        assert board.loc[combo, "sharpe"] == pytest.approx(engine.metrics(single.returns(), 252)["sharpe"], rel=1e-9)
    # more fees never help: at equal lag and gross, the cheaper combination's return is higher
    cheap = board[(board.fees == 0.0) & (board.execution_lag == 1) & (board.gross == 1.0)]["total_return"].item()
    dear = board[(board.fees == 0.002) & (board.execution_lag == 1) & (board.gross == 1.0)]["total_return"].item()
    assert cheap > dear


def test_strategy_benchmark_and_sweep_share_one_compiled_simulator(monkeypatch):
    """Numba compiles vectorbt's simulator (and each statistic) once per combination of argument types and
    array layouts, 4-8 s each on a first run: the strategy (on frames sliced as the stage slices them), its
    equal-weight benchmark and the sweep must reach them with one combination."""
    import numba
    import vectorbt.portfolio.nb as portfolio_nb
    import vectorbt.returns.nb as returns_nb

    seen: dict[str, set] = {"simulator": set(), "sharpe": set()}

    def spy(name, kernel):
        def call(*args, **kwargs):
            seen[name].add(tuple(numba.typeof(a) for a in (*args, *kwargs.values())))
            return kernel(*args, **kwargs)
        return call

    monkeypatch.setattr(portfolio_nb, "simulate_from_orders_nb", spy("simulator", portfolio_nb.simulate_from_orders_nb))
    monkeypatch.setattr(returns_nb, "sharpe_ratio_nb", spy("sharpe", returns_nb.sharpe_ratio_nb))
    close, open_, rng = _market(days=120, seed=6)
    weights = _weights(close, rng)
    price = open_.where(open_ > 0, close).loc[close.index[3]:]  # a slice of a frame: not C-ordered
    sizes = engine.execution_sizes(weights, close.index, 1).loc[close.index[3]:]
    strategy = engine.simulate(close.loc[close.index[3]:], price, sizes, fees=0.001, slippage=0.0, init_cash=1e6)
    equal = engine.simulate(close.loc[close.index[3]:], price, engine.equal_weight_sizes(sizes, close, False),
                            fees=0.001, slippage=0.0, init_cash=1e6)
    engine.metrics(strategy.returns(), 252, equal.returns())
    grid = [{"fees": 0.001, "slippage": s, "execution_lag": 1, "gross": 1.0} for s in (0.0, 0.001)]
    engine.sweep(close, open_, weights, grid, 1e6, 252)
    assert len(seen["simulator"]) == 1, seen["simulator"]
    assert len(seen["sharpe"]) == 1, seen["sharpe"]
