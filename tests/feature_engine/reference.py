"""Plain, obviously-correct implementations the feature engine is checked against.

``alpha158`` evaluates Qlib's Alpha158 expressions with pandas exactly as Qlib's operators do
(``qlib/data/ops.py``: rolling windows with ``min_periods=1``, ``Greater`` = ``np.maximum``, ``Rank`` =
``rolling().rank(pct=True)``, ``IdxMax`` = ``argmax() + 1``, ``Corr``/``Rsquare`` set to nan where a rolling
std is within 2e-5 of 0; ``Slope``/``Rsquare``/``Resi`` are Qlib's Cython regressions on the position in the
window, written here with ``np.polyfit``). The others are loops over rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WINDOWS = (5, 10, 20, 30, 60)


def _rolling(s: pd.Series, d: int):
    return s.rolling(d, min_periods=1)


def _regression(y: pd.Series, d: int, what: str) -> pd.Series:
    values = y.to_numpy()
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        window = values[max(0, i - d + 1): i + 1]
        x = np.arange(len(window), dtype=float)
        ok = ~np.isnan(window)
        if ok.sum() < 2:
            continue
        slope, intercept = np.polyfit(x[ok], window[ok], 1)
        if what == "slope":
            out[i] = slope
        elif what == "rsquare":
            with np.errstate(invalid="ignore", divide="ignore"):  # a flat window: nan, as in Qlib
                out[i] = np.corrcoef(x[ok], window[ok])[0, 1] ** 2
        else:
            out[i] = window[-1] - (slope * x[-1] + intercept)
    return pd.Series(out, index=y.index)


def _near_zero_std(s: pd.Series, d: int) -> pd.Series:
    return pd.Series(np.isclose(_rolling(s, d).std(), 0, atol=2e-05), index=s.index)


def _corr(a: pd.Series, b: pd.Series, d: int) -> pd.Series:
    res = _rolling(a, d).corr(b)
    res.loc[_near_zero_std(a, d) | _near_zero_std(b, d)] = np.nan
    return res


def alpha158(bars: pd.DataFrame) -> pd.DataFrame:
    """Alpha158 of one symbol's bars (columns open, high, low, close, volume, vwap) in time order."""
    o, h, lo, c, v = (bars[x].astype(float) for x in ("open", "high", "low", "close", "volume"))
    vwap = bars["vwap"].astype(float) if "vwap" in bars else pd.Series(np.nan, index=bars.index)
    ref_c, ref_v = c.shift(1), v.shift(1)
    f: dict[str, pd.Series] = {
        "KMID": (c - o) / o, "KLEN": (h - lo) / o, "KMID2": (c - o) / (h - lo + 1e-12),
        "KUP": (h - np.maximum(o, c)) / o, "KUP2": (h - np.maximum(o, c)) / (h - lo + 1e-12),
        "KLOW": (np.minimum(o, c) - lo) / o, "KLOW2": (np.minimum(o, c) - lo) / (h - lo + 1e-12),
        "KSFT": (2 * c - h - lo) / o, "KSFT2": (2 * c - h - lo) / (h - lo + 1e-12),
        "OPEN0": o / c, "HIGH0": h / c, "LOW0": lo / c, "VWAP0": vwap / c,
    }
    gain, loss, move = np.maximum(c - ref_c, 0), np.maximum(ref_c - c, 0), (c - ref_c).abs()
    v_gain, v_loss, v_move = np.maximum(v - ref_v, 0), np.maximum(ref_v - v, 0), (v - ref_v).abs()
    weighted = (c / ref_c - 1).abs() * v
    up, down = (c > ref_c).astype(float), (c < ref_c).astype(float)
    families = {
        "ROC": lambda d: c.shift(d) / c,
        "MA": lambda d: _rolling(c, d).mean() / c,
        "STD": lambda d: _rolling(c, d).std() / c,
        "BETA": lambda d: _regression(c, d, "slope") / c,
        "RSQR": lambda d: _regression(c, d, "rsquare").mask(_near_zero_std(c, d)),
        "RESI": lambda d: _regression(c, d, "resi") / c,
        "MAX": lambda d: _rolling(h, d).max() / c,
        "MIN": lambda d: _rolling(lo, d).min() / c,
        "QTLU": lambda d: _rolling(c, d).quantile(0.8) / c,
        "QTLD": lambda d: _rolling(c, d).quantile(0.2) / c,
        "RANK": lambda d: _rolling(c, d).rank(pct=True),
        "RSV": lambda d: (c - _rolling(lo, d).min()) / (_rolling(h, d).max() - _rolling(lo, d).min() + 1e-12),
        "IMAX": lambda d: _rolling(h, d).apply(lambda x: x.argmax() + 1, raw=True) / d,
        "IMIN": lambda d: _rolling(lo, d).apply(lambda x: x.argmin() + 1, raw=True) / d,
        "IMXD": lambda d: (_rolling(h, d).apply(lambda x: x.argmax() + 1, raw=True)
                           - _rolling(lo, d).apply(lambda x: x.argmin() + 1, raw=True)) / d,
        "CORR": lambda d: _corr(c, np.log(v + 1), d),
        "CORD": lambda d: _corr(c / ref_c, np.log(v / ref_v + 1), d),
        "CNTP": lambda d: _rolling(up, d).mean(),
        "CNTN": lambda d: _rolling(down, d).mean(),
        "CNTD": lambda d: _rolling(up, d).mean() - _rolling(down, d).mean(),
        "SUMP": lambda d: _rolling(gain, d).sum() / (_rolling(move, d).sum() + 1e-12),
        "SUMN": lambda d: _rolling(loss, d).sum() / (_rolling(move, d).sum() + 1e-12),
        "SUMD": lambda d: (_rolling(gain, d).sum() - _rolling(loss, d).sum()) / (_rolling(move, d).sum() + 1e-12),
        "VMA": lambda d: _rolling(v, d).mean() / (v + 1e-12),
        "VSTD": lambda d: _rolling(v, d).std() / (v + 1e-12),
        "WVMA": lambda d: _rolling(weighted, d).std() / (_rolling(weighted, d).mean() + 1e-12),
        "VSUMP": lambda d: _rolling(v_gain, d).sum() / (_rolling(v_move, d).sum() + 1e-12),
        "VSUMN": lambda d: _rolling(v_loss, d).sum() / (_rolling(v_move, d).sum() + 1e-12),
        "VSUMD": lambda d: (_rolling(v_gain, d).sum() - _rolling(v_loss, d).sum()) / (_rolling(v_move, d).sum() + 1e-12),
    }
    for name, fn in families.items():
        for d in WINDOWS:
            f[f"{name}{d}"] = fn(d)
    return pd.DataFrame(f, index=bars.index)


# ---------------------------------------------------------------- plain loops
def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    for i in range(window - 1, len(x)):
        w = x[i - window + 1: i + 1]
        if not np.isnan(w).any():
            out[i] = np.std(w, ddof=1)
    return out


def volatility(close: np.ndarray, window: int, annualize: int | None) -> np.ndarray:
    r = np.full(len(close), np.nan)
    r[1:] = np.log(close[1:] / close[:-1])
    vol = rolling_std(r, window)
    return vol * np.sqrt(annualize) if annualize else vol


def zscore(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    for i in range(window - 1, len(x)):
        w = x[i - window + 1: i + 1]
        if not np.isnan(w).any():
            out[i] = (x[i] - w.mean()) / w.std(ddof=1)
    return out


def beta(y: np.ndarray, x: np.ndarray, window: int, correlation: bool = False) -> np.ndarray:
    """OLS slope of y on x (or their correlation) over the last ``window`` rows."""
    out = np.full(len(y), np.nan)
    for i in range(window - 1, len(y)):
        a, b = y[i - window + 1: i + 1], x[i - window + 1: i + 1]
        if np.isnan(a).any() or np.isnan(b).any():
            continue
        out[i] = np.corrcoef(a, b)[0, 1] if correlation else np.cov(a, b, ddof=1)[0, 1] / np.var(b, ddof=1)
    return out


def roll_measure(close: np.ndarray, window: int) -> np.ndarray:
    dp = np.full(len(close), np.nan)
    dp[1:] = np.diff(close)
    out = np.full(len(close), np.nan)
    for i in range(window, len(close)):
        a, b = dp[i - window + 1: i + 1], dp[i - window: i]
        if np.isnan(a).any() or np.isnan(b).any():
            continue
        cov = np.cov(a, b, ddof=1)[0, 1]
        if cov < 0:
            out[i] = 2 * np.sqrt(-cov)
    return out


def order_flow_imbalance(bid, ask, bid_size, ask_size) -> np.ndarray:
    """Cont, Kukanov and Stoikov (2014), eq. (2): e_n for consecutive quotes (e_0 = 0)."""
    e = np.zeros(len(bid))
    for n in range(1, len(bid)):
        e[n] = (bid_size[n] * (bid[n] >= bid[n - 1]) - bid_size[n - 1] * (bid[n] <= bid[n - 1])
                - ask_size[n] * (ask[n] <= ask[n - 1]) + ask_size[n - 1] * (ask[n] >= ask[n - 1]))
    return e
