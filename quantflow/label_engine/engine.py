"""The label engine's pure entry point: bars of one or many symbols in, one row per labelled event out.

``label_bars(bars, spec)`` follows one configured label set (``LabelSetConfig``) over each symbol's bars,
in time order, and returns the ``cdm_labels`` rows: the event (``date``, ``ts``: when its bar closed), the
end of its label (``t1``, the bar whose close decided it), the return to there, the label, and the sample
weights of AFML ch. 4 that belong to one event (concurrency, average uniqueness, return attribution) over the
events of that set and symbol; ``quantflow.compute.sample_weights.training_weights`` turns them into a training
set's weights. No I/O, no Dagster.

Time of a bar: ``ts_last`` (its last trade) for bars built from ticks, the ``date`` at 00:00 UTC for daily
bars. Every input a label's event uses (volatility target, CUSUM filter, primary side) is known at the
event's close; only the label looks forward, and ``t1`` records how far.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from quantflow.label_engine import kernels as _k
from quantflow.metadata.schema.label_engine import LabelSetConfig
from quantflow.storage.schemas import bar_time

UTC_NS = pl.Datetime("ns", "UTC")
BARRIER_NAMES = {_k.BARRIER_PT: "pt", _k.BARRIER_SL: "sl", _k.BARRIER_VERTICAL: "vertical"}
LABEL_SCHEMA = {
    "symbol": pl.Utf8,
    "date": pl.Date,
    "label_set": pl.Utf8,
    "method": pl.Utf8,
    "ts": UTC_NS,
    "t1": UTC_NS,
    "t1_date": pl.Date,
    "n_bars": pl.Int64,
    "close": pl.Float64,
    "target": pl.Float64,
    "side": pl.Int8,
    "ret": pl.Float64,
    "label": pl.Int8,
    "barrier": pl.Utf8,
    "t_value": pl.Float64,
    "window": pl.Int64,
    "concurrency": pl.Float64,
    "uniqueness": pl.Float64,
    "return_attribution": pl.Float64,
}


def label_bars(bars: pl.DataFrame, spec: LabelSetConfig) -> pl.DataFrame:
    """The labels of ``spec`` over ``bars`` (columns ``symbol``, ``date``, ``close`` and, for bars from
    ticks, ``ts_last``; ``high``/``low`` with ``use_high_low``), one symbol at a time."""
    for column in ("symbol", "date", "close", *(("high", "low") if spec.use_high_low else ())):
        if column not in bars.columns:
            raise ValueError(f"label set {spec.name!r}: input bars have no {column!r} column")
    frames = []
    ties = [c for c in ("ts_first", "bar_start") if c in bars.columns]  # bars closing at one instant
    data = bars.with_columns(bar_time(bars.columns).alias("__ts")).sort("symbol", "__ts", *ties, maintain_order=True)
    for (symbol,), one in data.group_by("symbol", maintain_order=True):
        labels = _label_symbol(one, spec)
        if labels.height:
            frames.append(labels.with_columns(pl.lit(symbol, pl.Utf8).alias("symbol")))
    if not frames:
        return pl.DataFrame(schema=LABEL_SCHEMA)
    return pl.concat(frames).select([pl.col(c).cast(t) for c, t in LABEL_SCHEMA.items()])


def volatility(log_close: pl.Series, span: int, min_bars: int) -> np.ndarray:
    """EWM standard deviation of one-bar log returns (pandas ``ewm(span, adjust=True).std()``), known at
    each bar's close; NaN until ``min_bars`` returns."""
    r = log_close.diff()
    return r.ewm_std(span=span, adjust=True, bias=False, min_samples=min_bars).to_numpy().astype(np.float64)


def primary_side(close: pl.Series, spec: LabelSetConfig) -> np.ndarray:
    """The side of a primary model at each bar's close: +1 long, -1 short, 0 none. ``long``/``short``: a
    constant; ``sma_crossover``: long when the fast simple moving average is above the slow one."""
    if spec.side == "long":
        return np.ones(close.len(), np.int8)
    if spec.side == "short":
        return -np.ones(close.len(), np.int8)
    fast = close.rolling_mean(spec.sma_fast).to_numpy()
    slow = close.rolling_mean(spec.sma_slow).to_numpy()
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.sign(fast - slow), nan=0.0).astype(np.int8)


def _label_symbol(one: pl.DataFrame, spec: LabelSetConfig) -> pl.DataFrame:
    n = one.height
    close_s = one["close"].cast(pl.Float64)
    close = np.ascontiguousarray(close_s.to_numpy())
    bad = np.flatnonzero(~np.isfinite(close) | (close <= 0))
    if bad.size:
        raise ValueError(f"label set {spec.name!r}: symbol {one['symbol'][0]}, {one['date'][int(bad[0])]}: close "
                         f"{close[bad[0]]} is not a positive number")
    if n < 2:
        return pl.DataFrame()
    log_close_s = close_s.log()
    log_close = log_close_s.to_numpy()
    ts = one["__ts"].cast(pl.Int64).to_numpy()
    vol = volatility(log_close_s, spec.volatility_span, spec.volatility_min_bars)
    side = primary_side(close_s, spec)

    if spec.events == "cusum":
        threshold = spec.cusum_threshold * vol if spec.cusum_scale == "volatility" else np.full(n, spec.cusum_threshold)
        events = _k.cusum_events(log_close, np.ascontiguousarray(threshold))
    else:
        events = np.arange(n, dtype=np.int64)

    target = np.full(events.shape[0], np.nan)
    t_value = np.full(events.shape[0], np.nan)
    window = np.full(events.shape[0], -1, np.int64)
    barrier = np.zeros(events.shape[0], np.int8)
    if spec.method == "triple_barrier":
        target = vol[events] if spec.target == "volatility" else np.full(events.shape[0], spec.target_value)
        keep = np.isfinite(target) & (target > spec.min_ret)
        if spec.side == "sma_crossover":  # no primary side yet (warm-up, equal averages): no bet to label
            keep &= side[events] != 0
        events, target = events[keep], target[keep]
        if spec.vertical_duration is not None:
            vertical = _k.vertical_by_time(ts, events, spec.vertical_ns)
        elif spec.vertical_bars is not None:
            vertical = np.where(events + spec.vertical_bars < n, events + spec.vertical_bars, -1)
        else:  # no vertical barrier: only the horizontal ones end a label
            vertical = np.full(events.shape[0], -1, np.int64)
        high = one["high"].cast(pl.Float64).to_numpy() if spec.use_high_low else close
        low = one["low"].cast(pl.Float64).to_numpy() if spec.use_high_low else close
        ends, barrier, ret = _k.triple_barrier(
            close, np.ascontiguousarray(high), np.ascontiguousarray(low), events, vertical.astype(np.int64), target,
            side[events].astype(np.float64), spec.pt_sl[0], spec.pt_sl[1], spec.use_high_low,
        )  # fmt: skip
        t_value = np.full(events.shape[0], np.nan)
        window = np.full(events.shape[0], -1, np.int64)
    elif spec.method == "fixed_horizon":
        ends = np.where(events + spec.horizon < n, events + spec.horizon, -1)
        ret = np.where(ends >= 0, close[np.maximum(ends, 0)] / close[events] - 1.0, np.nan)
        tau = spec.threshold * vol[events] if spec.threshold_scale == "volatility" else np.full(events.shape[0],
                                                                                                 spec.threshold)
        target = tau
        ends = np.where(np.isfinite(tau), ends, -1)
    else:  # trend_scanning
        lo, hi, step = spec.windows
        t_all, w_all, e_all = _k.trend_scanning(close, lo, hi, step)
        t_value, window = t_all[events], w_all[events]
        chosen = e_all[events]  # the return runs to the chosen window's end ...
        ret = np.where(chosen >= 0, close[np.maximum(chosen, 0)] / close[events] - 1.0, np.nan)
        ends = np.where(chosen >= 0, events + hi - 1, -1)  # ... but the choice saw every window: t1 is the longest's

    # concurrency counts the undecided events too, as alive to the last bar (AFML 4.1); only decided ones
    # are labelled
    counts = _k.concurrency(n, events, np.where(ends >= 0, ends, n - 1))
    done = ends >= 0
    events, ends, ret, target, barrier = events[done], ends[done], ret[done], target[done], barrier[done]
    t_value, window = t_value[done], window[done]
    ev_side = side[events]
    label = _labels(spec, ret, target, t_value, ev_side)
    mean_c, uniq, attribution = _k.sample_weights(log_close, events, ends, counts)
    return pl.DataFrame({
        "date": one["date"].gather(events),
        "label_set": spec.name,
        "method": spec.method,
        "ts": pl.Series(ts[events]).cast(UTC_NS),
        "t1": pl.Series(ts[ends]).cast(UTC_NS),
        "t1_date": one["date"].gather(ends),
        "n_bars": ends - events,
        "close": close[events],
        "target": target,
        "side": pl.Series(ev_side if spec.method == "triple_barrier" else [None] * events.shape[0], dtype=pl.Int8),
        "ret": ret,
        "label": label,
        "barrier": pl.Series([BARRIER_NAMES.get(int(b)) for b in barrier], dtype=pl.Utf8),
        "t_value": t_value,
        "window": pl.Series(window).replace(-1, None),
        "concurrency": mean_c,
        "uniqueness": uniq,
        "return_attribution": attribution,
    })


def _labels(spec: LabelSetConfig, ret, target, t_value, side) -> np.ndarray:
    if spec.method == "triple_barrier":
        if spec.meta_labeling:  # the primary side's bet won or not (AFML 3.6)
            return (ret > 0).astype(np.int8)
        return np.sign(ret).astype(np.int8)  # AFML getBins: the sign of the return at t1 (side-adjusted)
    if spec.method == "fixed_horizon":
        return np.where(ret > target, 1, np.where(ret < -target, -1, 0)).astype(np.int8)
    return np.sign(np.nan_to_num(t_value)).astype(np.int8)


def horizon_bars(spec: LabelSetConfig) -> int | None:
    """How many bars ahead a label of ``spec`` may look (None: unbounded, or set by time)."""
    if spec.method == "fixed_horizon":
        return spec.horizon
    if spec.method == "trend_scanning":
        return spec.windows[1] - 1
    return spec.vertical_bars if spec.vertical_duration is None else None
