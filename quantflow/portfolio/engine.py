"""Target weights from predictions, pure: pandas frames in, weights out; riskfolio-lib does the optimizing.

Everything a rebalance at date ``d`` sees is known at ``d``'s close: the signals (predictions made at or
before ``d``, less than ``signal_max_age`` trading days earlier), the trailing ``covariance.window`` daily returns
ending at ``d``, and the previous weights drifted by the prices up to ``d``. The rebalance dates themselves
are causal: the first trading day of a week or month is known to be one at its close (the last day of a
week is not, until the next day shows up).

The steps of one rebalance:
1. held symbols: signal > ``min_signal`` (long only) or |signal| > ``min_signal`` (long-short), with a full
   return window;
2. weights over them by the method: ``mean_variance`` (riskfolio ``Portfolio.optimization``, expected
   returns from the signals, ``|w| <= max_weight`` as linear constraints), ``risk_parity``
   (``rp_optimization``), ``hrp``/``herc``/``nco`` (``HCPortfolio.optimization``); the methods without
   expected returns allocate among the held symbols and take the signal's sign when long-short;
3. ``|w| <= max_weight``: the excess goes to the other held symbols in proportion, or to cash when all are
   at the cap; then ``1 - cash_buffer`` of the portfolio is invested;
4. ``max_turnover``: a move larger than the cap (one-way, 0.5 * sum |w - w_drifted|) is scaled down along
   its direction (a move out of all cash, such as the first allocation, is exempt); a drifted position it
   keeps above ``max_weight`` is cut to it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# cvxpy warns about riskfolio's matrix products on every solve: library internals, not the user's business
_SOLVER_NOISE = r"(?s).*(matrix multiplication|code path has been hit|Solution may be inaccurate).*"
HIERARCHICAL = {"hrp": "HRP", "herc": "HERC", "nco": "NCO"}


def rebalance_dates(dates: pd.DatetimeIndex, every: str | int, first: int = 0) -> list[int]:
    """Positions in ``dates`` (sorted trading dates) of the rebalances from position ``first`` on."""
    if isinstance(every, int):
        return list(range(first, len(dates), every))
    period = dates.to_period("W" if every == "weekly" else "M")
    starts = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])  # first trading day of each period
    return [int(i) for i in starts if i >= first]


def latest_signals(pred: pd.DataFrame, dates: pd.DatetimeIndex, max_age: int) -> pd.DataFrame:
    """dates x symbols: the newest prediction made on or before each date and less than ``max_age``
    trading days before it (max_age 1: only the date's own; NaN otherwise). ``pred``: symbol, date, prediction (several per date: the last counts)."""
    last = pred.groupby(["date", "symbol"], sort=True)["prediction"].last().unstack("symbol")
    wide = last.reindex(dates)
    return wide.ffill(limit=max_age - 1) if max_age > 1 else wide


def cap_weights(w: np.ndarray, cap: float) -> np.ndarray:
    """``|w_i| <= cap``: the excess is spread over the uncapped weights in proportion (water-filling); what
    cannot be placed stays in cash. Signs are kept."""
    size, sign = np.abs(w).astype(np.float64), np.sign(w)
    for _ in range(len(size)):
        over = size > cap + 1e-12
        if not over.any():
            break
        excess = float((size[over] - cap).sum())
        size[over] = cap
        free = (size > 0) & (size < cap - 1e-12)
        if not free.any():
            break
        size[free] += excess * size[free] / size[free].sum()
    return sign * np.minimum(size, cap)


def drift(weights: np.ndarray, growth: np.ndarray) -> np.ndarray:
    """Weights after prices moved by ``growth`` (P_now / P_then per asset); cash stays."""
    value = 1.0 + float(np.nansum(weights * (growth - 1.0)))
    return np.where(np.isfinite(growth), weights * growth, weights) / value


def limit_turnover(target: np.ndarray, current: np.ndarray, max_turnover: float | None) -> tuple[np.ndarray, float]:
    """Scale the move towards ``target`` so that its one-way turnover is at most ``max_turnover``."""
    move = target - current
    turnover = 0.5 * float(np.abs(move).sum())
    if max_turnover is None or turnover <= max_turnover or not np.any(current):
        return target, turnover
    return current + move * (max_turnover / turnover), max_turnover


@dataclass
class Rebalance:
    """One rebalance: its date, the weights and what the optimizer saw."""

    date: pd.Timestamp
    weights: np.ndarray
    target: np.ndarray
    signal: np.ndarray
    expected: np.ndarray
    turnover: float
    note: str = ""


@dataclass
class WeightPath:
    symbols: list[str]
    rebalances: list[Rebalance] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _optimize(cfg, returns: pd.DataFrame, mu: pd.Series) -> pd.Series | None:
    """riskfolio weights over ``returns``' columns (the held symbols), summing to the budget; None when the
    solver found none."""
    import riskfolio as rp

    cols = list(returns.columns)
    long_short = not cfg.long_only and cfg.method == "mean_variance"
    if len(cols) == 1:  # one name: all of the budget, on the signal's side when shorts are allowed
        return pd.Series([float(np.sign(mu.iloc[0])) if long_short else 1.0], index=cols)
    rm, est = cfg.risk_measure, cfg.covariance.estimator
    if cfg.method in HIERARCHICAL:
        port = rp.HCPortfolio(returns=returns)
        # two assets: riskfolio's two-difference gap rule cannot choose the number of clusters, so give it two;
        # NCO's objectives (Sharpe, Utility, MaxRet) use the signals' expected returns
        w = port.optimization(model=HIERARCHICAL[cfg.method], codependence="pearson", method_mu="custom_mu",
                              custom_mu=mu, method_cov=est, obj=cfg.objective, rm=rm, rf=0, l=cfg.risk_aversion,
                              linkage=cfg.linkage, leaf_order=True, k=2 if len(cols) == 2 else None)
        return None if w is None else w["weights"]
    n = len(cols)
    # riskfolio 7: upperlng / uppersht bound each weight, budget the net sum, budgetsht the shorts' sum
    port = rp.Portfolio(returns=returns, sht=long_short, upperlng=cfg.max_weight, uppersht=cfg.max_weight,
                        budget=1.0 if long_short else min(1.0, n * cfg.max_weight), budgetsht=cfg.max_short)
    port.assets_stats(method_mu="hist", method_cov=est)
    if cfg.method == "risk_parity":
        w = port.rp_optimization(model="Classic", rm=rm, rf=0, b=None, hist=True)
        return None if w is None else w["weights"]
    port.mu = mu.to_frame().T[cols]
    w = port.optimization(model="Classic", rm=rm, obj=cfg.objective, rf=0, l=cfg.risk_aversion, hist=True)
    return None if w is None else w["weights"]


def target_weights(cfg, returns: pd.DataFrame, signal: pd.Series, volatility: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
    """One rebalance's target weights (aligned to ``returns``' columns) and the expected returns used."""
    symbols = list(returns.columns)
    s = signal.reindex(symbols)
    held = (s > cfg.min_signal) if cfg.long_only else (s.abs() > cfg.min_signal)
    held &= returns.notna().all().reindex(symbols).fillna(False)  # a full window of returns
    held &= (returns.std() > 1e-12).reindex(symbols).fillna(False)  # a price that moves (a flat one has no risk)
    expected = s * volatility.reindex(symbols) if cfg.expected_returns == "signal_x_volatility" else s
    weights = np.zeros(len(symbols))
    names = [c for c in symbols if held[c]]
    if not names:
        return weights, expected.to_numpy(dtype=float), "no symbol with a usable signal: all cash"
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):  # riskfolio prints its failures
        warnings.filterwarnings("ignore", message=_SOLVER_NOISE)
        w = _optimize(cfg, returns[names], expected[names])
    if w is None or not np.isfinite(w.to_numpy(dtype=float)).all():
        said = " ".join(printed.getvalue().split())
        return weights, expected.to_numpy(dtype=float), (f"{cfg.method}: the solver found no weights"
                                                         f"{' (' + said + ')' if said else ''}: all cash")
    w = w.reindex(names).fillna(0.0).to_numpy(dtype=float)
    if not cfg.long_only and cfg.method != "mean_variance":  # allocation by risk, side by signal
        w = np.abs(w) * np.sign(s[names].to_numpy(dtype=float))
        w /= max(np.abs(w).sum(), 1e-12)
    weights[[symbols.index(c) for c in names]] = cap_weights(w, cfg.max_weight)
    return weights * (1.0 - cfg.cash_buffer), expected.to_numpy(dtype=float), ""


def plan_rebalances(cfg, dates: pd.DatetimeIndex, signals: pd.DataFrame, until: pd.Timestamp) -> list[int] | None:
    """Positions of the rebalances up to ``until``: from the first date with a signal and a full window of
    returns (None: no signal at all)."""
    has_signal = np.flatnonzero(signals.notna().any(axis=1).to_numpy())
    if not has_signal.size:
        return None
    first = max(int(has_signal[0]), cfg.covariance.window)  # a full window of returns (row 0 has none)
    return [i for i in rebalance_dates(dates, cfg.rebalance.every, first) if dates[i] <= until]


def weight_path(cfg, close: pd.DataFrame, signals: pd.DataFrame, until: pd.Timestamp,
                on_rebalance=None) -> WeightPath:
    """Every rebalance from the first date with a signal and a full return window up to ``until``.

    ``close``: dates x symbols (trading dates, NaN where a symbol has no bar); ``signals``: the same shape
    (``latest_signals``)."""
    symbols = list(close.columns)
    returns = close.pct_change(fill_method=None)
    volatility = returns.rolling(cfg.covariance.window, min_periods=2).std()
    path = WeightPath(symbols)
    plan = plan_rebalances(cfg, close.index, signals, until)
    if plan is None:
        path.notes.append("no predictions before the window's end")
        return path
    dates = close.index
    held, held_at = np.zeros(len(symbols)), None
    prices = close.ffill().to_numpy()
    for i in plan:
        window = returns.iloc[i - cfg.covariance.window + 1: i + 1]
        target, expected, note = target_weights(cfg, window, signals.iloc[i], volatility.iloc[i])
        current = drift(held, prices[i] / prices[held_at]) if held_at is not None else held
        weights, _ = limit_turnover(target, current, cfg.max_turnover)
        weights = np.clip(weights, -cfg.max_weight, cfg.max_weight)  # a drifted position kept by the cap
        turnover = 0.5 * float(np.abs(weights - current).sum())
        path.rebalances.append(Rebalance(dates[i], weights, target, signals.iloc[i].to_numpy(dtype=float),
                                         expected, turnover, note))
        held, held_at = weights, i
        if on_rebalance is not None:
            on_rebalance()
    return path
