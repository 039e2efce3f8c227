"""Numba kernels of the label engine: loops over the bars of one symbol (typed arrays in, arrays out).

Conventions shared by all kernels: bars are in time order; an event is the index ``s`` of the bar at whose
close it is taken; what an event may use is known at that close (its volatility target, its side), and only
its label looks forward, up to the bar ``e`` it records (``t1``). ``-1`` marks "none" in index outputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BARRIER_NONE = 0
BARRIER_PT = 1  # profit taking (upper for a long side)
BARRIER_SL = 2  # stop loss
BARRIER_VERTICAL = 3


@njit(cache=True)
def cusum_events(log_close, threshold):
    """Symmetric CUSUM filter (AFML snippet 2.4) over log returns: indexes of the bars where the positive
    or negative running sum passes ``threshold[t]`` (strictly, as in the book), which then restarts.

    ``threshold`` is per bar (a constant, or a multiple of the volatility known at that bar); a NaN
    threshold (volatility still warming up) never fires, and the sums still run."""
    n = log_close.shape[0]
    out = np.empty(n, np.int64)
    k = 0
    s_pos = 0.0
    s_neg = 0.0
    for t in range(1, n):
        r = log_close[t] - log_close[t - 1]
        s_pos = max(0.0, s_pos + r)
        s_neg = min(0.0, s_neg + r)
        h = threshold[t]
        if np.isnan(h):
            continue
        if s_neg < -h:
            s_neg = 0.0
            out[k] = t
            k += 1
        elif s_pos > h:
            s_pos = 0.0
            out[k] = t
            k += 1
    return out[:k]


@njit(cache=True)
def vertical_by_time(ts, events, duration):
    """The vertical barrier of each event: the first bar stamped at or after ``ts[s] + duration`` (-1: none
    in the data)."""
    n = ts.shape[0]
    out = np.full(events.shape[0], -1, np.int64)
    j = 0
    for i in range(events.shape[0]):
        target = ts[events[i]] + duration
        j = max(j, events[i])
        while j < n and ts[j] < target:
            j += 1
        if j < n:
            out[i] = j
    return out


@njit(cache=True)
def triple_barrier(close, high, low, events, vertical, target, side, pt_mult, sl_mult, use_high_low):
    """First touch of the three barriers for each event (AFML 3.2-3.5).

    Returns of event ``i`` from bar ``s``: ``side * (price / close[s] - 1)``. The profit-taking barrier is
    ``pt_mult * target[i]``, the stop loss ``-sl_mult * target[i]`` (a zero multiple disables it); the
    vertical barrier is bar ``vertical[i]`` (-1: beyond the data). The path starts at the bar after the
    event; a horizontal barrier is touched when the return passes it strictly (AFML's ``>`` and ``<``). With
    ``use_high_low`` a bar touches a barrier when its high or low (the side's best and worst
    price) reaches it; when one bar reaches both, the stop loss counts (the order inside a bar is unknown,
    so the conservative outcome). Otherwise closes decide.

    Returns (end bar or -1 when no barrier is reached within the data, barrier code, return: at the end
    bar's close, or with ``use_high_low`` the touched barrier's level).
    """
    n = close.shape[0]
    m = events.shape[0]
    end = np.full(m, -1, np.int64)
    barrier = np.zeros(m, np.int8)
    ret = np.full(m, np.nan)
    for i in range(m):
        s = events[i]
        p0 = close[s]
        d = side[i]
        up = pt_mult * target[i] if pt_mult > 0 else np.inf
        down = -sl_mult * target[i] if sl_mult > 0 else -np.inf
        last = vertical[i] if vertical[i] >= 0 else n - 1
        for j in range(s + 1, last + 1):
            if use_high_low:
                best = (high[j] if d > 0 else low[j]) / p0 - 1.0
                worst = (low[j] if d > 0 else high[j]) / p0 - 1.0
                best *= d
                worst *= d
            else:
                best = d * (close[j] / p0 - 1.0)
                worst = best
            if worst < down:
                end[i] = j
                barrier[i] = BARRIER_SL
                break
            if best > up:
                end[i] = j
                barrier[i] = BARRIER_PT
                break
        if end[i] < 0 and vertical[i] >= 0:
            end[i] = vertical[i]
            barrier[i] = BARRIER_VERTICAL
        if barrier[i] == BARRIER_PT and use_high_low:
            ret[i] = up  # the bar's close may lie back inside: the barrier's level is what the bet got
        elif barrier[i] == BARRIER_SL and use_high_low:
            ret[i] = down
        elif end[i] >= 0:
            ret[i] = d * (close[end[i]] / p0 - 1.0)
    return end, barrier, ret


@njit(cache=True)
def trend_scanning(close, min_window, max_window, step):
    """Trend-scanning labels (López de Prado, MLAM 5.4): for each bar ``s``, the OLS fit of
    ``close[s : s + L]`` on ``0 .. L-1`` for each window ``L`` in ``min_window, min_window + step, ..,
    max_window``; the window with the largest |t-value| of the slope wins. Bars without ``max_window`` bars
    ahead get no label (-1). A perfect fit has an infinite t-value. Returns (t-value, window, end bar)."""
    n = close.shape[0]
    t_value = np.full(n, np.nan)
    window = np.full(n, -1, np.int64)
    end = np.full(n, -1, np.int64)
    for s in range(n - max_window + 1):
        sy = 0.0
        sxy = 0.0
        syy = 0.0
        best = -1.0
        for k in range(max_window):
            y = close[s + k] - close[s]  # centred: the one-pass sums keep their precision
            sy += y
            sxy += k * y
            syy += y * y
            length = k + 1
            if length < min_window or (length - min_window) % step != 0:
                continue
            mean_x = (length - 1) / 2.0
            mean_y = sy / length
            sxx = length * (length * length - 1) / 12.0
            cov = sxy - length * mean_x * mean_y
            var_y = syy - length * mean_y * mean_y
            beta = cov / sxx
            resid = max(var_y - beta * cov, 0.0)
            if resid == 0.0:
                t = np.inf if beta > 0 else (-np.inf if beta < 0 else 0.0)
            else:
                t = beta / np.sqrt(resid / (length - 2) / sxx)
            if abs(t) > best:
                best = abs(t)
                t_value[s] = t
                window[s] = length
                end[s] = s + length - 1
    return t_value, window, end


@njit(cache=True)
def concurrency(n_bars, starts, ends):
    """Events alive at each bar: an event counts on every bar from its start to its end, both included
    (AFML snippet 4.1)."""
    diff = np.zeros(n_bars + 1, np.int64)
    for i in range(starts.shape[0]):
        diff[starts[i]] += 1
        diff[ends[i] + 1] -= 1
    return np.cumsum(diff)[:n_bars]


@njit(cache=True)
def sample_weights(log_close, starts, ends, counts):
    """Per event: mean concurrency, average uniqueness (mean of 1/c_t over its bars, AFML snippet 4.2) and
    the absolute return attribution |sum of r_t / c_t| over its bars (snippet 4.10, unnormalised), r_t the
    log return into bar t; as in the snippet the sum includes the event bar's own return (with CUSUM events,
    the move that fired it)."""
    m = starts.shape[0]
    mean_c = np.empty(m)
    uniq = np.empty(m)
    attribution = np.empty(m)
    for i in range(m):
        c_sum = 0.0
        u_sum = 0.0
        r_sum = 0.0
        for t in range(starts[i], ends[i] + 1):
            c = counts[t]
            c_sum += c
            u_sum += 1.0 / c
            if t > 0:
                r_sum += (log_close[t] - log_close[t - 1]) / c
        length = ends[i] - starts[i] + 1
        mean_c[i] = c_sum / length
        uniq[i] = u_sum / length
        attribution[i] = abs(r_sum)
    return mean_c, uniq, attribution
