"""The reports' figures, pure: pandas in, tables out (no plotting, no I/O).

Conventions: returns are simple daily returns; VaR and CVaR are positive loss fractions of the portfolio
(VaR 95% = 0.02: one day in twenty loses 2% or more); the parametric ones assume normal returns with the
sample mean and standard deviation (ddof=1). Information coefficients are Spearman rank correlations across
symbols on each date between a factor known at that date's close and the forward return from that close.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

# market stress periods (peak to trough of the S&P 500) a stress test replays when the data covers them
NAMED_CRISES: dict[str, tuple[str, str]] = {
    "dot-com crash": ("2000-03-24", "2002-10-09"),
    "September 2001": ("2001-09-10", "2001-09-21"),
    "2008 financial crisis": ("2008-09-01", "2009-03-09"),
    "2010 flash crash": ("2010-04-23", "2010-07-02"),
    "2011 US downgrade": ("2011-07-22", "2011-10-03"),
    "2018 Q4 selloff": ("2018-10-03", "2018-12-24"),
    "COVID-19 crash (March 2020)": ("2020-02-19", "2020-03-23"),
}


# --- factor report ------------------------------------------------------------------------------------------

def forward_returns(close: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """From each date's close to the close ``horizon`` trading days later."""
    return close.shift(-horizon) / close - 1


def information_coefficient(factor: pd.DataFrame, forward: pd.DataFrame) -> pd.Series:
    """Per date: Spearman correlation across symbols (dates with fewer than 3 symbols on both: NaN)."""
    f, r = factor.align(forward, join="inner")
    both = f.notna() & r.notna()
    fr, rr = f.where(both).rank(axis=1), r.where(both).rank(axis=1)
    ic = fr.corrwith(rr, axis=1)
    return ic.where(both.sum(axis=1) >= 3)


def ic_decay(factor: pd.DataFrame, close: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Mean IC per forward horizon, over every date, and its t-statistic over every ``h``-th date (the
    ``h``-day forward returns of neighbouring dates overlap, which would inflate it by about sqrt(h))."""
    rows = []
    for h in horizons:
        ic = information_coefficient(factor, forward_returns(close, h)).dropna()
        apart = ic.iloc[::h]
        t = (apart.mean() / apart.std(ddof=1) * math.sqrt(apart.size)
             if apart.size > 2 and apart.std(ddof=1) > 0 else np.nan)
        rows.append({"horizon": h, "mean_ic": ic.mean() if ic.size else np.nan, "t_stat": t, "dates": ic.size})
    return pd.DataFrame(rows)


def quantile_returns(factor: pd.DataFrame, forward: pd.DataFrame, quantiles: int) -> pd.DataFrame:
    """Mean forward return per factor quantile (1 = lowest), quantiles cut across symbols on each date."""
    f, r = factor.align(forward, join="inner")
    both = f.notna() & r.notna()
    pct = f.where(both).rank(axis=1, pct=True)
    bucket = np.ceil(pct * quantiles).clip(1, quantiles)
    frame = pd.DataFrame({"quantile": bucket.stack(), "forward_return": r.where(both).stack()}).dropna()
    out = frame.groupby("quantile")["forward_return"].agg(["mean", "count"]).reset_index()
    out["quantile"] = out["quantile"].astype(int)
    return out.rename(columns={"mean": "mean_forward_return", "count": "observations"})


# --- risk ---------------------------------------------------------------------------------------------------

def var_table(returns: pd.Series, levels: list[float]) -> pd.DataFrame:
    """Historical and parametric (normal) one-day VaR and CVaR at each confidence level."""
    r = returns.dropna().to_numpy()
    mu, sd = r.mean(), r.std(ddof=1)
    rows = []
    for level in levels:
        cut = np.quantile(r, 1 - level)
        z = stats.norm.ppf(1 - level)
        rows.append({"level": level, "historical_var": -cut, "historical_cvar": -r[r <= cut].mean(),
                     "parametric_var": -(mu + z * sd), "parametric_cvar": -(mu - sd * stats.norm.pdf(z) / (1 - level)),
                     "days": r.size})
    return pd.DataFrame(rows)


def drawdowns(equity: pd.Series, top: int = 5) -> pd.DataFrame:
    """The ``top`` deepest drawdowns: peak, trough, recovery (NaT: not recovered), depth, and the bars spent
    under the peak."""
    peak = equity.cummax()
    under = equity / peak - 1
    rows, start = [], None
    for i, (day, depth) in enumerate(under.items()):
        if depth < 0 and start is None:
            start = i - 1
        if start is not None and (depth == 0 or i == len(under) - 1):
            span = under.iloc[start: i + 1]
            recovered = depth == 0
            rows.append({"peak": under.index[start], "trough": span.idxmin(), "recovery": day if recovered else pd.NaT,
                         "depth": span.min(), "days": i - start - recovered})  # bars under water
            start = None
    out = pd.DataFrame(rows, columns=["peak", "trough", "recovery", "depth", "days"])
    return out.sort_values("depth").head(top).reset_index(drop=True)


def rolling_risk(returns: pd.Series, benchmark: pd.Series, window: int, year_days: int) -> pd.DataFrame:
    """Rolling annualized volatility of both and the rolling beta of ``returns`` to ``benchmark``."""
    cov = returns.rolling(window).cov(benchmark)
    return pd.DataFrame({"volatility": returns.rolling(window).std() * math.sqrt(year_days),
                         "benchmark_volatility": benchmark.rolling(window).std() * math.sqrt(year_days),
                         "beta": cov / benchmark.rolling(window).var()})


def risk_contributions(weights: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Each asset's share of the portfolio's variance, w_i (S w)_i / w'S w (sums to 1)."""
    total = float(weights @ cov @ weights)
    return weights * (cov @ weights) / total if total > 0 else np.zeros_like(weights)


# --- stress tests -------------------------------------------------------------------------------------------

def window_stats(portfolio: pd.Series, market: pd.Series) -> dict[str, float]:
    wealth = (1 + portfolio).cumprod()
    return {"return": float(wealth.iloc[-1] - 1), "max_drawdown": float((wealth / wealth.cummax() - 1).min()),
            "worst_day": float(portfolio.min()), "market_return": float((1 + market).prod() - 1),
            "days": int(portfolio.size)}


def worst_windows(portfolio: pd.Series, window: int, count: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The ``count`` worst non-overlapping ``window``-day spans of cumulative return."""
    growth = np.log1p(portfolio.fillna(0)).rolling(window).sum().dropna().sort_values()
    chosen: list[int] = []
    where = {day: i for i, day in enumerate(portfolio.index)}
    for end in growth.index:
        i = where[end]
        if all(abs(i - j) >= window for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return [(portfolio.index[i - window + 1], portfolio.index[i]) for i in chosen]


def covered_crises(index: pd.DatetimeIndex) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """The named crises whose whole span the data covers."""
    first, last = index.min(), index.max()
    return {name: (pd.Timestamp(a), pd.Timestamp(b)) for name, (a, b) in NAMED_CRISES.items()
            if first <= pd.Timestamp(a) and pd.Timestamp(b) <= last}


def simulate_losses(weights: np.ndarray, mean: np.ndarray, cov: np.ndarray, horizon: int, draws: int,
                    rng: np.random.Generator, df: float | None = None) -> np.ndarray:
    """Portfolio returns over ``horizon`` days from daily draws: multivariate normal, or Student-t with
    ``df`` degrees of freedom scaled to the same covariance (heavier tails, same variance)."""
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(mean)))
    z = rng.standard_normal((draws, horizon, len(mean))) @ chol.T
    if df is not None:
        z *= np.sqrt((df - 2) / rng.chisquare(df, (draws, horizon, 1)))
    daily = z + mean
    return np.expm1(np.log1p(daily @ weights).sum(axis=1))


def tail(losses: np.ndarray, level: float) -> tuple[float, float]:
    """VaR and CVaR (positive losses) of simulated returns."""
    cut = np.quantile(losses, 1 - level)
    return float(-cut), float(-losses[losses <= cut].mean())


def stressed_covariance(cov: np.ndarray, correlation: float) -> np.ndarray:
    """The same volatilities with every pairwise correlation set to ``correlation``."""
    vol = np.sqrt(np.diag(cov))
    corr = np.full_like(cov, correlation)
    np.fill_diagonal(corr, 1.0)
    return corr * np.outer(vol, vol)


def crash_impacts(weights: np.ndarray, cov: np.ndarray, crash: float) -> pd.DataFrame:
    """Each asset falling by ``crash``: the direct loss (its weight times the fall) and the loss with the
    others moving by their expected co-move under joint normality (E[r_j | r_i] = S_ji / S_ii * r_i)."""
    rows = []
    for i in range(len(weights)):
        move = cov[:, i] / cov[i, i] * crash if cov[i, i] > 0 else np.eye(len(weights))[i] * crash
        move[i] = crash
        rows.append({"direct": float(weights[i] * crash), "with_co_moves": float(weights @ move)})
    return pd.DataFrame(rows)
