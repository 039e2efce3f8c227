"""Plain pandas implementations of the labels, written from the book's snippets (AFML 2.4, 3.1-3.6, 4.1-4.11;
MLAM 5.4), one event at a time: slow, obvious, independent of the kernels."""

from __future__ import annotations

import numpy as np
import pandas as pd


def daily_vol(close: pd.Series, span: int, min_bars: int) -> pd.Series:
    """AFML snippet 3.1 over one-bar log returns: an EWM standard deviation."""
    return np.log(close).diff().ewm(span=span, adjust=True, min_periods=min_bars).std()


def cusum(close: pd.Series, h: pd.Series) -> list[int]:
    """AFML snippet 2.4 (symmetric CUSUM filter) on log returns; positions of the events."""
    events, s_pos, s_neg = [], 0.0, 0.0
    diff = np.log(close).diff()
    for i in range(1, len(close)):
        s_pos, s_neg = max(0.0, s_pos + diff.iloc[i]), min(0.0, s_neg + diff.iloc[i])
        if np.isnan(h.iloc[i]):
            continue
        if s_neg < -h.iloc[i]:
            s_neg = 0.0
            events.append(i)
        elif s_pos > h.iloc[i]:
            s_pos = 0.0
            events.append(i)
    return events


def triple_barrier(close: pd.Series, events: list[int], target: pd.Series, side: pd.Series, pt_sl, num_bars: int,
                   meta: bool) -> pd.DataFrame:
    """AFML snippets 3.2-3.5 (applyPtSlOnT1, getEvents, getBins) with a vertical barrier ``num_bars`` ahead."""
    rows = []
    n = len(close)
    for s in events:
        trgt = target.iloc[s]
        vertical = s + num_bars if s + num_bars < n else None
        path = close.iloc[s: (vertical if vertical is not None else n - 1) + 1]
        returns = (path / close.iloc[s] - 1) * side.iloc[s]
        pt = pt_sl[0] * trgt if pt_sl[0] > 0 else np.inf
        sl = -pt_sl[1] * trgt if pt_sl[1] > 0 else -np.inf
        touch_sl = returns[returns < sl].index.min()
        touch_pt = returns[returns > pt].index.min()
        candidates = [t for t in (touch_sl, touch_pt, close.index[vertical] if vertical is not None else None)
                      if t is not None and not pd.isna(t)]
        if not candidates:
            continue  # no barrier within the data: not decided yet
        t1 = min(candidates)
        ret = (close.loc[t1] / close.iloc[s] - 1) * side.iloc[s]
        barrier = "sl" if t1 == touch_sl else "pt" if t1 == touch_pt else "vertical"
        label = int(ret > 0) if meta else int(np.sign(ret))
        rows.append({"start": s, "end": close.index.get_loc(t1), "ret": ret, "label": label, "barrier": barrier,
                     "target": trgt})
    return pd.DataFrame(rows)


def trend_scanning(close: pd.Series, windows: range) -> pd.DataFrame:
    """MLAM snippet 5.2 with the t-value of the OLS slope from numpy's least squares."""
    rows = []
    y_all = close.to_numpy()
    for s in range(len(close) - max(windows) + 1):
        best = None
        for length in windows:
            y = y_all[s: s + length]
            x = np.column_stack([np.ones(length), np.arange(length)])
            beta, *_ = np.linalg.lstsq(x, y, rcond=None)
            resid = y - x @ beta
            sigma2 = resid @ resid / (length - 2)
            se = np.sqrt(sigma2 * np.linalg.inv(x.T @ x)[1, 1])
            t = beta[1] / se if se > 0 else np.sign(beta[1]) * np.inf
            if best is None or abs(t) > abs(best[0]):
                best = (t, length)
        rows.append({"start": s, "end": s + best[1] - 1, "t_value": best[0], "window": best[1],
                     "label": int(np.sign(best[0]))})
    return pd.DataFrame(rows)


def weights(close: pd.Series, starts: list[int], ends: list[int], decay: float,
            undecided: list[int] = ()) -> pd.DataFrame:
    """AFML snippets 4.1 (concurrency; ``undecided`` events count as alive to the last bar), 4.2 (average
    uniqueness), 4.10 (return attribution, normalised to sum to the number of events) and 4.11 (time decay
    over cumulative uniqueness)."""
    n = len(close)
    count = pd.Series(0, index=range(n))
    for a, b in [*zip(starts, ends), *((s, n - 1) for s in undecided)]:
        count.loc[a:b] += 1
    ret = np.log(close.reset_index(drop=True)).diff()
    out = []
    for a, b in zip(starts, ends):
        c = count.loc[a:b]
        out.append({"concurrency": c.mean(), "uniqueness": (1.0 / c).mean(),
                    "attribution": abs((ret.loc[a:b] / c).sum())})
    df = pd.DataFrame(out)
    df["return_weight"] = df["attribution"] * len(df) / df["attribution"].sum()
    cum = df["uniqueness"].cumsum()
    slope = (1.0 - decay) / cum.iloc[-1] if decay >= 0 else 1.0 / ((decay + 1) * cum.iloc[-1])
    df["time_decay"] = (1.0 - slope * cum.iloc[-1] + slope * cum).clip(lower=0)
    return df
