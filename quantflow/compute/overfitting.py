"""Overfitting statistics: probabilistic and deflated Sharpe ratios, minimum track record length, and the
probability of backtest overfitting.

Units and conventions (published examples differ on both, and the results move a lot):

- Every Sharpe ratio here is **per period** (per observation of the return series: per day for daily returns),
  not annualized, and ``n_obs`` counts those periods. Annualize inputs back with ``sr / sqrt(periods)``
  before calling (Bailey and López de Prado's DSR example: 2.5 annualized over 1,250 days is
  2.5 / sqrt(250) per day).
- ``kurtosis`` is the plain (Pearson) kurtosis, 3 for a normal distribution, not the excess kurtosis.
- ``trials_variance`` is the variance across trials of their **per-period** Sharpe ratios (ddof=1, as
  ``sharpe_ratio(...).var(ddof=1)``). A variance of annualized Sharpe ratios must be divided by the number
  of periods per year.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from math import e, sqrt

import numpy as np
from scipy.special import logit
from scipy.stats import kurtosis as _kurtosis
from scipy.stats import norm
from scipy.stats import skew as _skew

EULER_GAMMA = 0.5772156649015329


def sharpe_ratio(returns, periods_per_year: float | None = None) -> np.ndarray | float:
    """Mean over standard deviation (ddof=1) of each column, per period; ``periods_per_year`` annualizes."""
    r = np.asarray(returns, dtype=np.float64)
    sr = r.mean(axis=0) / r.std(axis=0, ddof=1)
    return sr * sqrt(periods_per_year) if periods_per_year else sr


def _moments(returns) -> tuple[float, int, float, float]:
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 3:
        raise ValueError(f"need at least 3 returns; got {r.size}")
    return float(sharpe_ratio(r)), r.size, float(_skew(r)), float(_kurtosis(r, fisher=False))


def _sharpe_std(sharpe: float, n_obs: int, skew: float, kurtosis: float) -> float:
    """Standard error of a per-period Sharpe ratio under non-normal returns (Mertens; Bailey-LdP eq. 2)."""
    if n_obs < 2:
        raise ValueError(f"n_obs must be >= 2; got {n_obs}")
    return sqrt(max(1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2, 1e-12) / (n_obs - 1))


def probabilistic_sharpe_ratio(sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0,
                               benchmark: float = 0.0) -> float:
    """PSR (Bailey and López de Prado 2012): the probability that the true per-period Sharpe ratio exceeds
    ``benchmark``, given one estimated from ``n_obs`` returns with this skew and (non-excess) kurtosis."""
    return float(norm.cdf((sharpe - benchmark) / _sharpe_std(sharpe, n_obs, skew, kurtosis)))


def psr_from_returns(returns, benchmark: float = 0.0) -> float:
    sr, n, sk, ku = _moments(returns)
    return probabilistic_sharpe_ratio(sr, n, sk, ku, benchmark)


def expected_max_sharpe(n_trials: int, trials_variance: float, mean: float = 0.0) -> float:
    """Expected maximum of ``n_trials`` per-period Sharpe ratios whose true value is ``mean``, estimated with
    variance ``trials_variance`` (False Strategy Theorem; Bailey and López de Prado 2014, eq. 6)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1; got {n_trials}")
    if n_trials == 1:
        return mean
    z = (1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials) + EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * e))
    return float(mean + sqrt(max(trials_variance, 0.0)) * z)


def deflated_sharpe_ratio(sharpe: float, n_obs: int, skew: float, kurtosis: float, n_trials: int,
                          trials_variance: float) -> float:
    """DSR (Bailey and López de Prado 2014): the PSR of the selected strategy against the Sharpe ratio the
    best of ``n_trials`` unskilled trials would reach by luck. All Sharpe figures per period."""
    return probabilistic_sharpe_ratio(sharpe, n_obs, skew, kurtosis, expected_max_sharpe(n_trials, trials_variance))


def min_track_record_length(sharpe: float, skew: float = 0.0, kurtosis: float = 3.0, benchmark: float = 0.0,
                            alpha: float = 0.05) -> float:
    """MinTRL (Bailey and López de Prado 2012): the number of periods needed for PSR(benchmark) >= 1 - alpha
    with these per-period moments; infinite when the Sharpe ratio does not exceed the benchmark."""
    if sharpe <= benchmark:
        return float("inf")
    factor = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return float(1.0 + factor * (norm.ppf(1 - alpha) / (sharpe - benchmark)) ** 2)


def _cscv_sharpes(m: np.ndarray, n_blocks: int, combos: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """In- and out-of-sample Sharpe ratios (combinations x trials) from per-block sums, all at once."""
    size = m.shape[0] // n_blocks
    blocks = m.reshape(n_blocks, size, m.shape[1])
    sums, squares = blocks.sum(axis=1), (blocks**2).sum(axis=1)  # blocks x trials
    chosen = np.zeros((len(combos), n_blocks))
    for c, combo in enumerate(combos):
        chosen[c, list(combo)] = 1.0
    half = size * n_blocks // 2

    def sharpe(weights: np.ndarray) -> np.ndarray:
        total, sq = weights @ sums, weights @ squares
        mean = total / half
        var = (sq - total * mean) / (half - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return mean / np.sqrt(np.maximum(var, 0.0))

    return sharpe(chosen), sharpe(1.0 - chosen)


@dataclass(frozen=True)
class PBOResult:
    """CSCV outcome: ``pbo`` is the share of the C(S, S/2) splits whose in-sample best trial ranks at or below
    the out-of-sample median (logit <= 0)."""

    pbo: float
    logits: np.ndarray = field(repr=False)
    n_blocks: int = 0
    n_combinations: int = 0
    n_trials: int = 0
    prob_oos_loss: float = 0.0  # share of splits where the in-sample best has an out-of-sample metric < 0
    degradation_slope: float = float("nan")  # OLS slope of OOS on IS metric of the selected trials


def probability_of_backtest_overfitting(returns, n_blocks: int = 16, metric=sharpe_ratio) -> PBOResult:
    """PBO by combinatorially symmetric cross-validation (Bailey, Borwein, López de Prado, Zhu 2017).

    ``returns``: T x N, one column per trial (strategy configuration), one row per period. The rows are cut
    into ``n_blocks`` (even) equal blocks, the first ``T % n_blocks`` rows dropped; every half of the blocks
    is in turn the in-sample set and its complement the out-of-sample set. The relative rank of the IS-best
    trial out of sample is rank / (N + 1) with average ranks for ties, as in the paper."""
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"returns must be T x N with N >= 2 trials; got shape {m.shape}")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be an even number >= 2; got {n_blocks}")
    t, n = m.shape
    if t < 2 * n_blocks:
        raise ValueError(f"{t} periods are too few for {n_blocks} blocks (need at least 2 per block)")
    m = m[t % n_blocks:]
    combos = list(combinations(range(n_blocks), n_blocks // 2))
    if metric is sharpe_ratio:
        r_is, r_oos = _cscv_sharpes(m, n_blocks, combos)
    else:
        blocks = np.split(np.arange(m.shape[0]), n_blocks)
        r_is, r_oos = np.empty((len(combos), n)), np.empty((len(combos), n))
        for c, chosen in enumerate(combos):
            inside = np.concatenate([blocks[b] for b in chosen])
            outside = np.concatenate([blocks[b] for b in range(n_blocks) if b not in chosen])
            r_is[c], r_oos[c] = metric(m[inside]), metric(m[outside])
    rows = np.arange(len(combos))
    best = np.argmax(r_is, axis=1)
    value = r_oos[rows, best][:, None]
    rank = (r_oos < value).sum(axis=1) + ((r_oos == value).sum(axis=1) + 1) / 2  # average rank, as rankdata
    logits = logit(rank / (n + 1))
    is_best, oos_best = r_is[rows, best], r_oos[rows, best]
    lam = np.asarray(logits, dtype=np.float64)
    x, y = np.asarray(is_best), np.asarray(oos_best)
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else float("nan")
    return PBOResult(float(np.mean(lam <= 0)), lam, n_blocks, lam.size, n, float(np.mean(y < 0)), slope)
