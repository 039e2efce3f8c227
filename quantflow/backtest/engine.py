"""The backtest, pure: target weights and prices in, a vectorbt portfolio and its metrics out.

A rebalance decided at the close of bar ``t`` trades at bar ``t + execution_lag`` (at its open or close):
vectorbt ``Portfolio.from_orders`` with ``size_type="targetpercent"``, all symbols in one group sharing
cash, orders of a bar sorted so that sells fund buys (``call_seq="auto"``), proportional fees and slippage.
The equity is valued at each bar's close. The benchmarks trade the same bars with the same costs: equal
weight rebalanced at every execution bar, and buy-and-hold (equal weight once, at the first one).

Metrics use vectorbt's returns accessor (the definitions of empyrical: Sharpe with ddof=1, annualized by
``year_days``; Sortino against 0; Calmar = annualized return / |max drawdown|).
"""

from __future__ import annotations

import gc
import math
from typing import Any

import numpy as np
import pandas as pd


def execution_sizes(weights: pd.DataFrame, index: pd.DatetimeIndex, lag: int, gross: float = 1.0) -> pd.DataFrame:
    """dates x symbols: target percents at the execution bars (NaN: no order). ``weights``: rebalance dates
    x symbols. A rebalance whose execution bar lies past the data is dropped."""
    if lag < 0:
        raise ValueError(f"execution lag {lag}: orders cannot precede their decision")
    sizes = pd.DataFrame(np.nan, index=index, columns=weights.columns)
    at = index.get_indexer(weights.index)
    if (at < 0).any():
        missing = weights.index[at < 0][0].date()
        raise ValueError(f"rebalance date {missing} is not a trading date of the prices")
    keep = at + lag < len(index)
    sizes.iloc[at[keep] + lag] = weights.to_numpy()[keep] * gross
    return sizes


def simulate(close: pd.DataFrame, price: pd.DataFrame, sizes: pd.DataFrame, *, fees, slippage, init_cash: float,
             group_by: Any = True):
    """One vectorbt call: every column group is one portfolio sharing its cash.

    Numba compiles vectorbt's simulator once per combination of argument types, array layouts included,
    about 4 s each on first use: every call here passes the same ones (C-ordered frames, fees and slippage
    as one row per column, one initial cash per group), so a run's strategy, benchmarks and sweep share a
    single compiled simulator (the sweep compiled a second one before)."""
    import vectorbt as vbt

    def c_ordered(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(np.ascontiguousarray(frame.to_numpy(dtype=float)), index=frame.index,
                            columns=frame.columns)

    def per_column(value) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=float), (1, close.shape[1])))

    groups = None  # any other grouping: vectorbt broadcasts the scalar
    if group_by is True:
        groups = 1
    elif isinstance(group_by, str):  # a column level's name: a group per value
        groups = close.columns.get_level_values(group_by).nunique()
    return vbt.Portfolio.from_orders(c_ordered(close), size=c_ordered(sizes), size_type="targetpercent",
                                     price=c_ordered(price), fees=per_column(fees), slippage=per_column(slippage),
                                     init_cash=np.full(groups, float(init_cash)) if groups else init_cash,
                                     group_by=group_by, cash_sharing=True, call_seq="auto", freq="1D")


def equal_weight_sizes(sizes: pd.DataFrame, close: pd.DataFrame, buy_and_hold: bool) -> pd.DataFrame:
    """1/n of the symbols with a bar at each execution bar of ``sizes`` (only the first: buy and hold);
    ``close`` as stored (not forward-filled), so a symbol not yet listed or delisted gets nothing."""
    bars = np.flatnonzero(sizes.notna().any(axis=1).to_numpy())
    out = pd.DataFrame(np.nan, index=sizes.index, columns=sizes.columns)
    for i in bars[:1] if buy_and_hold else bars:
        live = close.iloc[i].notna().to_numpy()
        out.iloc[i] = np.where(live, 1.0 / max(live.sum(), 1), 0.0)
    return out


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def metrics(returns: pd.Series, year_days: int, benchmark: pd.Series | None = None) -> dict[str, float | None]:
    """Headline figures of daily returns (vectorbt's returns accessor: empyrical's definitions; the
    information ratio annualized like the tracking error)."""
    import vectorbt  # noqa: F401  (registers the .vbt accessor)

    acc = returns.vbt.returns(freq="1D", year_freq=f"{year_days} days")
    wealth = (1 + returns).cumprod()
    underwater = wealth / wealth.cummax() - 1
    out = {"total_return": _num(wealth.iloc[-1] - 1), "annual_return": _num(acc.annualized()),
           "annual_volatility": _num(acc.annualized_volatility()), "sharpe": _num(acc.sharpe_ratio()),
           "sortino": _num(acc.sortino_ratio()), "calmar": _num(acc.calmar_ratio()),
           "max_drawdown": _num(acc.max_drawdown()), "max_drawdown_days": int(_longest_underwater(underwater)),
           "days": int(returns.size)}
    if benchmark is not None:
        excess = returns - benchmark
        out.update({"beta": _num(acc.beta(benchmark)), "alpha": _num(acc.alpha(benchmark)),
                    "information_ratio": _num(acc.information_ratio(benchmark) * math.sqrt(year_days)),
                    "tracking_error": _num(excess.std(ddof=1) * math.sqrt(year_days)),
                    "excess_annual_return": _num(acc.annualized() - benchmark.vbt.returns(
                        freq="1D", year_freq=f"{year_days} days").annualized())})
    return out


def _longest_underwater(underwater: pd.Series) -> int:
    """Bars of the longest stretch below a previous peak (still open at the end counts)."""
    longest = run = 0
    for below in (underwater.to_numpy() < 0):
        run = run + 1 if below else 0
        longest = max(longest, run)
    return longest


def trading_figures(pf, sizes: pd.DataFrame) -> dict[str, float | int | None]:
    """Turnover, orders, closed trades and their win rate, exposure of one grouped vectorbt portfolio."""
    value = pf.value()
    orders = pf.orders.records_readable
    traded = (orders["Size"] * orders["Price"]).groupby(orders["Timestamp"]).sum()
    per_bar = traded / value.shift(1).reindex(traded.index).fillna(pf.init_cash)
    asset_value = pf.asset_value(group_by=False)
    exposure = asset_value.abs().sum(axis=1) / value
    trades = pf.trades
    closed = int(trades.closed.count())
    return {"orders": int(len(orders)), "closed_trades": closed,
            "win_rate": _num(trades.closed.win_rate()) if closed else None,
            "rebalances_executed": int(sizes.notna().any(axis=1).sum()),
            "turnover_per_rebalance": _num(0.5 * per_bar.mean()) if len(per_bar) else 0.0,
            "turnover_total": _num(0.5 * per_bar.sum()) if len(per_bar) else 0.0,
            "exposure": _num(exposure.mean()), "fees_paid": _num(orders["Fees"].sum())}


def sweep(close: pd.DataFrame, price: pd.DataFrame, weights: pd.DataFrame, grid: list[dict[str, float]],
          init_cash: float, year_days: int, start: pd.Timestamp | None = None,
          chunk: int = 25) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every combination of ``grid`` (fees, slippage, execution_lag, gross), ``chunk`` combinations per
    vectorbt call (a column group per combination; memory grows with the columns of one call: 25 x 40
    symbols x 5,000 days is a few hundred MB). Returns the leaderboard (one row per combination, best
    Sharpe first) and the daily returns (dates x combinations) from ``start`` (default: the first date) on."""
    returns = []
    for first in range(0, len(grid), chunk):
        r, _ = _simulate_combinations(close, price, weights, grid[first: first + chunk], init_cash)
        returns.append(r.loc[start:].copy())
        gc.collect()  # vectorbt's portfolio objects hold reference cycles: free each batch's arrays now
    # C order, as ``metrics`` gets its returns: vectorbt's statistics then compile once for both (``simulate``)
    daily = pd.concat(returns, axis=1, ignore_index=True)
    daily = pd.DataFrame(np.ascontiguousarray(daily.to_numpy()), index=daily.index)
    acc = daily.vbt.returns(freq="1D", year_freq=f"{year_days} days")
    board = pd.DataFrame(grid)
    board["sharpe"] = acc.sharpe_ratio().to_numpy()
    board["annual_return"] = acc.annualized().to_numpy()
    board["max_drawdown"] = acc.max_drawdown().to_numpy()
    board["total_return"] = ((1 + daily).prod() - 1).to_numpy()  # over the same days as the other figures
    board.index.name = "combination"
    return board.sort_values("sharpe", ascending=False, kind="stable"), daily


def _simulate_combinations(close, price, weights, grid, init_cash) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One vectorbt call for ``grid``: daily returns and values, a column per combination. The combinations
    with a shorter lag than the base trade before ``start``: their figures count from ``start`` too."""
    n, symbols = len(grid), list(close.columns)
    columns = pd.MultiIndex.from_product([range(n), symbols], names=["combination", "symbol"])
    sizes = np.concatenate([execution_sizes(weights, close.index, int(g["execution_lag"]), g["gross"]).to_numpy()
                            for g in grid], axis=1)
    tile = lambda frame: pd.DataFrame(np.tile(frame.to_numpy(), n), index=close.index, columns=columns)  # noqa: E731
    fees = np.repeat([g["fees"] for g in grid], len(symbols))[None, :]
    slippage = np.repeat([g["slippage"] for g in grid], len(symbols))[None, :]
    pf = simulate(tile(close), tile(price), pd.DataFrame(sizes, index=close.index, columns=columns), fees=fees,
                  slippage=slippage, init_cash=init_cash, group_by="combination")
    return pf.returns(), pf.value()
