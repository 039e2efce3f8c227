"""Numba kernels of the feature engine: typed arrays in, arrays out, over many segments in one call.

A segment is one unit of work (a symbol's warm-up bars, then the bars of one block): ``starts`` holds the
first row of each segment and ends with the total length, and no window reaches across a segment start.
Every value at row i is a function of rows up to i only.

Windows are evaluated directly (each window's values read again, O(window) per row), not by running sums:
no cancellation error builds up along a series, and the result at row i does not depend on where the
segment starts, beyond the rows the window covers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NUMPY = {"cache": True, "error_model": "numpy"}  # x / 0 gives inf or nan, as numpy and pandas do

# rolling statistics of ``rolling_stat``
STAT_MEAN, STAT_STD, STAT_MIN, STAT_MAX, STAT_SUM = 0, 1, 2, 3, 4
STATS = {"mean": STAT_MEAN, "std": STAT_STD, "min": STAT_MIN, "max": STAT_MAX, "sum": STAT_SUM}


@njit(**_NUMPY)
def shifted_ratio(x, starts, h):
    """x_t / x_{t-h} (nan when t-h is before the segment start)."""
    out = np.full(x.size, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + h, starts[s + 1]):
            out[i] = x[i] / x[i - h]
    return out


@njit(cache=True)
def differences(x, starts):
    """x_t - x_{t-1} (nan at each segment's first row)."""
    out = np.full(x.size, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + 1, starts[s + 1]):
            out[i] = x[i] - x[i - 1]
    return out


@njit(**_NUMPY)
def log_returns(x, starts):
    out = np.full(x.size, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + 1, starts[s + 1]):
            out[i] = np.log(x[i] / x[i - 1])
    return out


@njit(**_NUMPY)
def rolling_stat(x, starts, window, stat):
    """Mean, standard deviation (ddof 1), min, max or sum of the last ``window`` values; nan unless all of
    them are numbers (pandas ``rolling(window)``)."""
    out = np.full(x.size, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + window - 1, starts[s + 1]):
            lo = i - window + 1
            total, low, high, ok = 0.0, np.inf, -np.inf, True
            for j in range(lo, i + 1):
                v = x[j]
                if np.isnan(v):
                    ok = False
                    break
                total += v
                low = min(low, v)
                high = max(high, v)
            if not ok:
                continue
            if stat == STAT_SUM:
                out[i] = total
            elif stat == STAT_MEAN:
                out[i] = total / window
            elif stat == STAT_MIN:
                out[i] = low
            elif stat == STAT_MAX:
                out[i] = high
            elif window > 1:
                mean = total / window
                ss = 0.0
                for j in range(lo, i + 1):
                    ss += (x[j] - mean) ** 2
                out[i] = np.sqrt(ss / (window - 1))
    return out


@njit(**_NUMPY)
def rolling_zscore(x, starts, window):
    out = np.full(x.size, np.nan)
    # np.int64(): a constant would be typed as a literal, and Numba would compile rolling_stat once more
    mean = rolling_stat(x, starts, window, np.int64(STAT_MEAN))
    std = rolling_stat(x, starts, window, np.int64(STAT_STD))
    for i in range(x.size):
        out[i] = (x[i] - mean[i]) / std[i]
    return out


@njit(**_NUMPY)
def rolling_regression(y, x, starts, window, want):
    """Over the last ``window`` rows where both are numbers (nan unless all are): 0 the slope of y on x
    (beta, Kyle's lambda), 1 their correlation, 2 their covariance."""
    out = np.full(y.size, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + window - 1, starts[s + 1]):
            lo = i - window + 1
            sx, sy, ok = 0.0, 0.0, True
            for j in range(lo, i + 1):
                if np.isnan(x[j]) or np.isnan(y[j]):
                    ok = False
                    break
                sx += x[j]
                sy += y[j]
            if not ok:
                continue
            mx, my = sx / window, sy / window
            cxy, cxx, cyy = 0.0, 0.0, 0.0
            for j in range(lo, i + 1):
                dx, dy = x[j] - mx, y[j] - my
                cxy += dx * dy
                cxx += dx * dx
                cyy += dy * dy
            if want == 0:
                out[i] = cxy / cxx
            elif want == 1:
                out[i] = cxy / np.sqrt(cxx * cyy)
            else:
                out[i] = cxy / (window - 1)
    return out


@njit(**_NUMPY)
def roll_spread(dp, starts, window):
    """Roll (1984): 2 sqrt(-cov(dp_t, dp_{t-1})) over the last ``window`` pairs; nan when the covariance is
    not negative (the measure is undefined there)."""
    lagged = np.full(dp.size, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + 1, starts[s + 1]):
            lagged[i] = dp[i - 1]
    cov = rolling_regression(dp, lagged, starts, window, np.int64(2))  # not a literal: see rolling_zscore
    out = np.full(dp.size, np.nan)
    for i in range(dp.size):
        if cov[i] < 0:
            out[i] = 2.0 * np.sqrt(-cov[i])
    return out


@njit(cache=True)
def order_flow_events(bid, ask, bid_size, ask_size, starts):
    """Cont, Kukanov and Stoikov (2014) order-flow event of each quote update against the previous quote of
    its segment (0 for the first)."""
    out = np.zeros(bid.size)
    for s in range(starts.size - 1):
        for n in range(starts[s] + 1, starts[s + 1]):
            e = 0.0
            if bid[n] >= bid[n - 1]:
                e += bid_size[n]
            if bid[n] <= bid[n - 1]:
                e -= bid_size[n - 1]
            if ask[n] <= ask[n - 1]:
                e -= ask_size[n]
            if ask[n] >= ask[n - 1]:
                e += ask_size[n - 1]
            out[n] = e
    return out


# ---------------------------------------------------------------------------------------------- Alpha158
A158_WINDOWS = np.array([5, 10, 20, 30, 60], dtype=np.int64)
A158_FIRST_ROLLING = 13  # 9 K-bar + 4 price columns come first, then 29 families x 5 windows
(F_ROC, F_MA, F_STD, F_BETA, F_RSQR, F_RESI, F_MAX, F_MIN, F_QTLU, F_QTLD, F_RANK, F_RSV, F_IMAX, F_IMIN, F_IMXD,
 F_CORR, F_CORD, F_CNTP, F_CNTN, F_CNTD, F_SUMP, F_SUMN, F_SUMD, F_VMA, F_VSTD, F_WVMA, F_VSUMP, F_VSUMN,
 F_VSUMD) = range(29)
A158_COLUMNS = A158_FIRST_ROLLING + 29 * 5
EPS = 1e-12
STD_ZERO = 2e-5  # Qlib sets Rsquare and Corr to nan where a rolling std is this close to 0


@njit(**_NUMPY)
def _sd(n, s1, s2):
    """Sample standard deviation (ddof 1) from the count, sum and sum of squares of values shifted by one
    of them: a flat window gives exactly 0 (as pandas does), and no large squares cancel."""
    if n < 2:
        return np.nan
    return np.sqrt(max(0.0, (s2 - s1 * s1 / n) / (n - 1)))


@njit(cache=True)
def _pair_add(sums, a, b):
    """Count a pair of shifted values into ``sums`` (n, Sa, Sb, Saa, Sbb, Sab) when both are numbers."""
    if not (np.isnan(a) or np.isnan(b)):
        sums[0] += 1.0
        sums[1] += a
        sums[2] += b
        sums[3] += a * a
        sums[4] += b * b
        sums[5] += a * b


@njit(**_NUMPY)
def _corr(sums):
    """pandas' rolling correlation from pair sums (nan below two pairs)."""
    n, sa, sb, saa, sbb, sab = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]
    if n < 2:
        return np.nan
    return (n * sab - sa * sb) / np.sqrt((n * saa - sa * sa) * (n * sbb - sb * sb))


@njit(**_NUMPY)
def _quantile(sorted_values, m, q):
    """Linear interpolation between the order statistics (pandas ``rolling().quantile``)."""
    pos = q * (m - 1)
    below = int(np.floor(pos))
    above = min(below + 1, m - 1)
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * (pos - below)


@njit(cache=True)
def _sorted_update(buf, m, add, remove, has_remove):
    """Keep ``buf[:m]`` sorted while the window moves: take out ``remove`` (when there is one), put in
    ``add`` (when it is a number); returns the new count. The values move in loops, not slice copies: a slice
    assignment makes Numba compile its shape-mismatch error message (string formatting), 2-3 s of a cold
    first run, and the copies allocated."""
    if has_remove and not np.isnan(remove):
        at = np.searchsorted(buf[:m], remove)
        for i in range(at, m - 1):
            buf[i] = buf[i + 1]
        m -= 1
    if not np.isnan(add):
        at = np.searchsorted(buf[:m], add)
        for i in range(m, at, -1):
            buf[i] = buf[i - 1]
        buf[at] = add
        m += 1
    return m


@njit(cache=True)
def _shift(x):
    return 0.0 if np.isnan(x) else x


@njit(**_NUMPY)
def alpha158(open_, high, low, close, volume, vwap, starts):
    """Qlib's Alpha158 factors (``quantflow.feature_engine.alpha158`` documents them): an array with one
    row per factor in ``ALPHA158_NAMES`` order (factors x bars). Rolling operators use the rows available
    when fewer than the window exist, as Qlib does (``min_periods=1``), and skip nan as pandas does.

    Each row is one pass backwards over its last 60 bars that emits the windows of 5, 10, 20, 30 and 60 as
    it reaches them; values are summed shifted by the row's own value, so flat windows give exact zeros
    and no squares of large prices or volumes cancel. Quantiles and ranks come from sorted windows kept
    as the row advances."""
    n = close.size
    out = np.full((A158_COLUMNS, n), np.nan)  # one row per factor: each written in time order
    prev_close = np.full(n, np.nan)
    prev_volume = np.full(n, np.nan)
    for s in range(starts.size - 1):
        for i in range(starts[s] + 1, starts[s + 1]):
            prev_close[i] = close[i - 1]
            prev_volume[i] = volume[i - 1]
    ratio = close / prev_close
    d_close = close - prev_close
    d_volume = volume - prev_volume
    log_volume = np.log(volume + 1.0)
    log_volume_ratio = np.log(volume / prev_volume + 1.0)
    weighted = np.abs(ratio - 1.0) * volume
    for i in range(n):
        o, h, lw, c = open_[i], high[i], low[i], close[i]
        rng = h - lw + EPS
        top = np.nan if np.isnan(o) or np.isnan(c) else max(o, c)  # Qlib's Greater/Less keep nan
        bottom = np.nan if np.isnan(o) or np.isnan(c) else min(o, c)
        out[0, i] = (c - o) / o
        out[1, i] = (h - lw) / o
        out[2, i] = (c - o) / rng
        out[3, i] = (h - top) / o
        out[4, i] = (h - top) / rng
        out[5, i] = (bottom - lw) / o
        out[6, i] = (bottom - lw) / rng
        out[7, i] = (2 * c - h - lw) / o
        out[8, i] = (2 * c - h - lw) / rng
        out[9, i] = o / c
        out[10, i] = h / c
        out[11, i] = lw / c
        out[12, i] = vwap[i] / c
    nw = A158_WINDOWS.size
    longest = A158_WINDOWS[-1]
    bufs = np.empty((nw, longest))
    pair_a = np.zeros(6)
    pair_b = np.zeros(6)
    sizes = np.zeros(nw, dtype=np.int64)
    for s in range(starts.size - 1):
        first, end = starts[s], starts[s + 1]
        sizes[:] = 0
        for i in range(first, end):
            c, v = close[i], volume[i]
            for w in range(nw):
                d = A158_WINDOWS[w]
                sizes[w] = _sorted_update(bufs[w], sizes[w], c, close[i - d] if i - d >= first else np.nan,
                                          i - d >= first)
            kc, klv, kr = _shift(c), _shift(log_volume[i]), _shift(ratio[i])
            klr, kv, kw = _shift(log_volume_ratio[i]), _shift(v), _shift(weighted[i])
            # close: count, shifted sums, regression on the distance back; log volume, ratio, log volume
            # ratio, volume, weighted move: count and shifted sums; two correlated pairs; signs and moves
            nc, c1, c2, sx, sxx, sxy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
            nlv, lv1, lv2, nr, r1, r2, nlr, lr1, lr2 = 0, 0.0, 0.0, 0, 0.0, 0.0, 0, 0.0, 0.0
            nv, v1, v2, nwm, w1, w2 = 0, 0.0, 0.0, 0, 0.0, 0.0
            pair_a[:] = 0.0  # close with log volume
            pair_b[:] = 0.0  # close ratio with log volume ratio
            ups, downs, n_moves, gains, losses, moves = 0.0, 0.0, 0, 0.0, 0.0, 0.0
            n_vmoves, v_gains, v_losses, v_moves = 0, 0.0, 0.0, 0.0
            top, bottom, top_back, bottom_back = -np.inf, np.inf, -1, -1
            top_nan, bottom_nan = -1, -1
            w = 0
            for back in range(longest):
                j = i - back
                x = close[j]
                if not np.isnan(x):
                    y = x - kc
                    nc += 1
                    c1 += y
                    c2 += y * y
                    sx += back
                    sxx += back * back
                    sxy += back * y
                lv = log_volume[j]
                if not np.isnan(lv):
                    nlv += 1
                    lv1 += lv - klv
                    lv2 += (lv - klv) ** 2
                _pair_add(pair_a, x - kc, lv - klv)
                r, lr = ratio[j], log_volume_ratio[j]
                if not np.isnan(r):
                    nr += 1
                    r1 += r - kr
                    r2 += (r - kr) ** 2
                if not np.isnan(lr):
                    nlr += 1
                    lr1 += lr - klr
                    lr2 += (lr - klr) ** 2
                _pair_add(pair_b, r - kr, lr - klr)
                vol = volume[j]
                if not np.isnan(vol):
                    nv += 1
                    v1 += vol - kv
                    v2 += (vol - kv) ** 2
                wm = weighted[j]
                if not np.isnan(wm):
                    nwm += 1
                    w1 += wm - kw
                    w2 += (wm - kw) ** 2
                dc = d_close[j]
                if dc > 0:  # nan comparisons are False: Qlib's $close > Ref($close, 1)
                    ups += 1.0
                elif dc < 0:
                    downs += 1.0
                if not np.isnan(dc):
                    n_moves += 1
                    gains += max(dc, 0.0)
                    losses += max(-dc, 0.0)
                    moves += abs(dc)
                dv = d_volume[j]
                if not np.isnan(dv):
                    n_vmoves += 1
                    v_gains += max(dv, 0.0)
                    v_losses += max(-dv, 0.0)
                    v_moves += abs(dv)
                hj, lj = high[j], low[j]
                if np.isnan(hj):
                    top_nan = back  # numpy's argmax: the first nan in time
                elif hj >= top:  # ties: the first in time, as argmax
                    top, top_back = hj, back
                if np.isnan(lj):
                    bottom_nan = back
                elif lj <= bottom:
                    bottom, bottom_back = lj, back
                at_start = j == first
                while w < nw and (back + 1 == A158_WINDOWS[w] or at_start):
                    d = A158_WINDOWS[w]
                    m = back + 1  # rows in the window
                    base = A158_FIRST_ROLLING + w  # family f's row: base + 5 f
                    out[base + 5 * F_ROC, i] = close[i - d] / c if i - d >= first else np.nan
                    mean_c = kc + c1 / nc if nc > 0 else np.nan
                    std_c = _sd(nc, c1, c2)
                    out[base + 5 * F_MA, i] = mean_c / c
                    out[base + 5 * F_STD, i] = std_c / c
                    # regression on the distance back: the slope in time is its negative
                    den = nc * sxx - sx * sx
                    slope = -(nc * sxy - sx * c1) / den
                    out[base + 5 * F_BETA, i] = slope / c
                    rsq = (nc * sxy - sx * c1) ** 2 / (den * (nc * c2 - c1 * c1))
                    out[base + 5 * F_RSQR, i] = np.nan if abs(std_c) <= STD_ZERO else rsq
                    out[base + 5 * F_RESI, i] = ((c - kc) - (c1 / nc + slope * sx / nc)) / c
                    hi_ = top if top_back >= 0 else np.nan
                    lo_ = bottom if bottom_back >= 0 else np.nan
                    out[base + 5 * F_MAX, i] = hi_ / c
                    out[base + 5 * F_MIN, i] = lo_ / c
                    k = sizes[w]
                    if k > 0:
                        out[base + 5 * F_QTLU, i] = _quantile(bufs[w], k, 0.8) / c
                        out[base + 5 * F_QTLD, i] = _quantile(bufs[w], k, 0.2) / c
                        if not np.isnan(c):
                            less = np.searchsorted(bufs[w, :k], c)
                            equal = np.searchsorted(bufs[w, :k], c, side="right") - less
                            out[base + 5 * F_RANK, i] = (less + (equal + 1) / 2.0) / k
                    out[base + 5 * F_RSV, i] = (c - lo_) / (hi_ - lo_ + EPS)
                    imax = m - (top_nan if top_nan >= 0 else top_back)
                    imin = m - (bottom_nan if bottom_nan >= 0 else bottom_back)
                    if top_back < 0 and top_nan < 0:
                        imax = 1
                    if bottom_back < 0 and bottom_nan < 0:
                        imin = 1
                    out[base + 5 * F_IMAX, i] = imax / d
                    out[base + 5 * F_IMIN, i] = imin / d
                    out[base + 5 * F_IMXD, i] = (imax - imin) / d
                    corr = _corr(pair_a)
                    flat = abs(std_c) <= STD_ZERO or abs(_sd(nlv, lv1, lv2)) <= STD_ZERO
                    out[base + 5 * F_CORR, i] = np.nan if flat else corr
                    cord = _corr(pair_b)
                    flat = abs(_sd(nr, r1, r2)) <= STD_ZERO or abs(_sd(nlr, lr1, lr2)) <= STD_ZERO
                    out[base + 5 * F_CORD, i] = np.nan if flat else cord
                    out[base + 5 * F_CNTP, i] = ups / m
                    out[base + 5 * F_CNTN, i] = downs / m
                    out[base + 5 * F_CNTD, i] = (ups - downs) / m
                    if n_moves > 0:
                        out[base + 5 * F_SUMP, i] = gains / (moves + EPS)
                        out[base + 5 * F_SUMN, i] = losses / (moves + EPS)
                        out[base + 5 * F_SUMD, i] = (gains - losses) / (moves + EPS)
                    if nv > 0:
                        out[base + 5 * F_VMA, i] = (kv + v1 / nv) / (v + EPS)
                    out[base + 5 * F_VSTD, i] = _sd(nv, v1, v2) / (v + EPS)
                    if nwm > 0:
                        out[base + 5 * F_WVMA, i] = _sd(nwm, w1, w2) / (kw + w1 / nwm + EPS)
                    if n_vmoves > 0:
                        out[base + 5 * F_VSUMP, i] = v_gains / (v_moves + EPS)
                        out[base + 5 * F_VSUMN, i] = v_losses / (v_moves + EPS)
                        out[base + 5 * F_VSUMD, i] = (v_gains - v_losses) / (v_moves + EPS)
                    w += 1
                if at_start:
                    break
    return out
