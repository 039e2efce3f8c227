"""Bar specifications and the Numba bar kernels: time, tick, volume, dollar, imbalance and run bars.

Every bar carries open, high, low, close, volume, dollar volume, VWAP, trade count, buy and sell volume
(from the Lee-Ready direction of ``kernels.enrich_trades``) and the timestamps of its first and last
trade. Time bars add their bucket ``[bar_start, bar_end)``; imbalance and run bars add the imbalance (or
run) the bar reached and the threshold it had to reach; tick, volume and dollar bars with thresholds from
trailing daily volume add their day's threshold.

How the kernels are built, and why (each choice measured on this project's 2-core machine):

- The bar being built lives in local variables and a row is written only when a bar closes. Locals stay
  in registers; updating an output row on every trade made each trade a load-modify-store chain (620M
  vs 250M trades/s for 1-minute bars).
- An outer loop walks bars, an inner ``_take_*`` / ``_accumulate*`` loop the trades of one bar, with
  unsigned indices (a signed index makes Numba add a negative-index check to every access, which halved
  the inner loop's speed), and one compiled loop per bar type.
- Output rows go to a preallocated array that doubles when full, outside the inner loop.

Inputs must be sorted by time within each segment (``engine`` checks and sorts). Segments,
``load``/state arrays and ``keep_open`` follow the conventions in ``kernels.py``. At the end of a
segment the open bar is emitted unless ``keep_open[s]`` (carry-state on: the bar continues in the next
shard); a time bar is kept open only if its bucket ends after the segment (``seg_end[s]``), so the last
1-minute bar of a session is written with that session. A bar's ``date`` is the date of its last trade,
in sharded and unsharded runs alike. Every bar says whether it is ``complete``: closed by its own rule (the
threshold reached, the time bucket over by the end of the segment), or cut short by the segment's end.

Daily input (no ticks) has its own small polars resampler, ``resample_daily_bars``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import int64, njit, uint64

from quantflow.metadata.schema.base import duration_ns
from quantflow.metadata.schema.state_engine import BAR_TYPES, bar_table_name
from quantflow.state_engine.kernels import NO_TS

KIND_TICK = 0
KIND_VOLUME = 1
KIND_DOLLAR = 2

# State of the bar being built, shared by all bar kernels.
# int64:   [n_trades, ts_first, ts_last, date, bucket_start]
# float64: [open, high, low, close, volume, dollar, buy, sell, then for information bars: theta (the buy run
#           for run bars), E[T], threshold of the open bar (NaN: warm-up), EWMA numerator of b*m (of b+ m),
#           EWMA denominator, sell run, EWMA numerator of b- m]
BAR_STATE_I = 5
BAR_STATE_F = 15

# Emitted rows. int64: [bar_start, ts_first, ts_last, n_trades, segment, date (days since epoch), complete]
# (complete: 1 when the bar's own rule closed it, 0 when the end of the segment cut it)
# float64: [open, high, low, close, volume, dollar_volume, vwap, buy_volume, sell_volume, imbalance, threshold]
OUT_I = 7
OUT_F = 11
OUT_I_NAMES = ("bar_start", "ts_first", "ts_last", "n_trades", "segment", "date", "complete")
OUT_F_NAMES = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "dollar_volume",
    "vwap",
    "buy_volume",
    "sell_volume",
    "imbalance",
    "threshold",
)


def parse_duration(text: str) -> int:
    """``"100ms"``, ``"1s"``, ``"1m"`` (minute), ``"1h"``, ``"1d"``, ``"1w"`` -> nanoseconds."""
    return duration_ns(text)


INFORMATION_TYPES = ("tick_imbalance", "volume_imbalance", "dollar_imbalance", "tick_run", "volume_run",
                     "dollar_run")
DAILY_MEASURES = {"tick": "n_trades", "volume": "volume", "dollar": "dollar_volume"}


@dataclass(frozen=True)
class BarSpec:
    """One configured bar type. Conventions shared by all: trades are never split, a bar closes on the
    trade that reaches its rule (``>=``), the running measure restarts at zero for the next bar.

    - ``time``: ``every`` (``"1m"``, ``"100ms"``...) on the grid ``offset + k * every`` (UTC epoch based).
    - ``tick`` / ``volume`` / ``dollar``: a bar closes on the trade that brings its trade count, volume or
      dollar volume to the threshold. The threshold is ``threshold``, or ``expected_daily / bars_per_day``,
      or, with ``trailing_days`` N, one per (symbol, day): the mean daily trade count, volume or dollar
      volume of the symbol's N previous trading days (fewer at the start of its history; days with trades
      only, the day itself never) over ``bars_per_day``; ``expected_daily`` seeds the days with no
      earlier day.
    - Information-driven bars (AFML 2.3.2), over the trade's measure ``m`` (1, its size, or price * size)
      and Lee-Ready direction ``b``: ``tick_imbalance`` / ``volume_imbalance`` / ``dollar_imbalance`` close
      when ``|sum b m| >= E[T] * |E[b m]|``; ``tick_run`` / ``volume_run`` / ``dollar_run`` when ``max(sum
      of m over buys, over sells) >= E[T] * max(E[b+ m], E[b- m])``. ``E[T]``: EWMA of prior bars' lengths
      over ``span`` bars, starting at ``expected_ticks``, clamped to ``[min_expected_ticks,
      max_expected_ticks]`` (default: a tenth and ten times ``expected_ticks``). ``E[b m]`` and the run
      expectations: EWMAs over all prior trades with ``imbalance_span`` trades (default ten
      ``expected_ticks``). Both are taken when the bar opens. The first bar of a fresh state is a warm-up
      bar of ``expected_ticks`` trades (threshold null). See ``information_bars``.
    """

    type: str
    every: str | None = None
    offset: str = "0s"
    threshold: float | None = None
    expected_daily: float | None = None
    bars_per_day: float | None = None
    trailing_days: int | None = None
    expected_ticks: float | None = None
    span: float = 20.0
    imbalance_span: float | None = None
    min_expected_ticks: float | None = None
    max_expected_ticks: float | None = None
    name: str | None = None
    incomplete: str = "keep"  # "drop": leave out the bars the end of a shard (or of the history) cut short

    def __post_init__(self) -> None:
        if self.incomplete not in ("keep", "drop"):
            raise ValueError(f"incomplete must be 'keep' or 'drop', got {self.incomplete!r}")
        if self.type not in BAR_TYPES:
            raise ValueError(f"bar type {self.type!r} is not one of {', '.join(BAR_TYPES)}")
        if self.trailing_days is not None and (self.type not in DAILY_MEASURES or self.expected_daily is None):
            raise ValueError("'trailing_days' is for tick, volume and dollar bars with 'expected_daily' (the "
                             "seed for days with no earlier day) and 'bars_per_day'")
        if self.type == "time":
            if not self.every:
                raise ValueError("time bars need 'every' (e.g. '1m', '100ms')")
            if parse_duration(self.every) <= 0:
                raise ValueError(f"time bars need a positive 'every', got {self.every!r}")
            parse_duration(self.offset)
        elif self.type in DAILY_MEASURES:
            if (self.threshold is None) == (self.expected_daily is None):
                raise ValueError(f"{self.type} bars need exactly one of 'threshold' or 'expected_daily'")
            if self.expected_daily is not None and not self.bars_per_day:
                raise ValueError(f"{self.type} bars with 'expected_daily' also need 'bars_per_day'")
            if self.bar_threshold <= 0:
                raise ValueError(f"{self.type} bars need a positive threshold")
            if self.trailing_days is not None and self.trailing_days < 1:
                raise ValueError("'trailing_days' must be >= 1")
        else:
            if not self.expected_ticks or self.expected_ticks < 1:
                raise ValueError(f"{self.type} bars need 'expected_ticks' >= 1")
            if self.span < 1:
                raise ValueError(f"{self.type} bars need 'span' >= 1 (bars)")
            if self.imbalance_span is not None and self.imbalance_span < 1:
                raise ValueError(f"{self.type} bars need 'imbalance_span' >= 1 (trades)")
            lo, hi = self.ticks_bounds
            if not 1 <= lo <= self.expected_ticks <= hi:
                raise ValueError(
                    f"{self.type} bars need 1 <= min_expected_ticks <= expected_ticks <= max_expected_ticks"
                )

    @property
    def is_information(self) -> bool:
        return self.type in INFORMATION_TYPES

    @property
    def bar_threshold(self) -> float:
        """The constant threshold (with ``trailing_days``: the seed for days with no history)."""
        if self.threshold is not None:
            return float(self.threshold)
        return float(self.expected_daily) / float(self.bars_per_day)

    @property
    def trade_span(self) -> float:
        """Span in trades of the per-trade EWMAs of information bars."""
        return float(self.imbalance_span) if self.imbalance_span is not None else 10.0 * self.expected_ticks

    @property
    def ticks_bounds(self) -> tuple[float, float]:
        lo = (
            self.min_expected_ticks
            if self.min_expected_ticks is not None
            else max(1.0, self.expected_ticks / 10)
        )
        hi = self.max_expected_ticks if self.max_expected_ticks is not None else self.expected_ticks * 10
        return float(lo), float(hi)

    @property
    def key(self) -> str:
        """Table name, e.g. ``cdm_time_1m_bars``, ``cdm_volume_50000_bars``, ``cdm_tick_imbalance_100_bars``."""
        return bar_table_name(self.type, self.every, self.offset, self.threshold, self.bars_per_day,
                              self.expected_ticks, self.name, self.trailing_days)


def daily_thresholds(daily: pl.DataFrame, spec: BarSpec) -> pl.DataFrame:
    """The threshold of each (symbol, date) of ``daily`` for a bar spec with ``trailing_days``.

    ``daily`` has one row per (symbol, date) with trades: ``n_trades``, ``volume``, ``dollar_volume``
    (``daily_measures``). A day's threshold is the mean of the measure over the symbol's ``trailing_days``
    previous rows, over ``bars_per_day``: only earlier days, so no bar depends on its own day's volume.
    Days with no earlier row (or a non-positive mean) take the seed ``expected_daily / bars_per_day``.
    """
    measure = DAILY_MEASURES[spec.type]
    trailing = (
        pl.col(measure).cast(pl.Float64).shift(1).rolling_mean(spec.trailing_days, min_samples=1).over("symbol")
    )
    return (
        daily.sort("symbol", "date")
        .with_columns(trailing.alias("__mean"))
        .select(
            "symbol",
            "date",
            pl.when(pl.col("__mean") > 0)
            .then(pl.col("__mean") / spec.bars_per_day)
            .otherwise(spec.bar_threshold)
            .alias("threshold"),
        )
    )


def daily_measures(trades: pl.DataFrame) -> pl.DataFrame:
    """Per (symbol, date): trade count, volume and dollar volume, the inputs of ``daily_thresholds``."""
    return (
        trades.group_by("symbol", "date")
        .agg(
            pl.len().cast(pl.Int64).alias("n_trades"),
            pl.col("size").cast(pl.Float64).sum().alias("volume"),
            (pl.col("price") * pl.col("size")).cast(pl.Float64).sum().alias("dollar_volume"),
        )
        .sort("symbol", "date")
    )


def bar_fresh_state(spec: BarSpec) -> tuple[np.ndarray, np.ndarray]:
    """State with no open bar (and, for imbalance bars, the initial expectations)."""
    si = np.zeros(BAR_STATE_I, np.int64)
    sf = np.zeros(BAR_STATE_F, np.float64)
    if spec.is_information:
        sf[9] = float(spec.expected_ticks)
        sf[10] = np.nan
    return si, sf


@njit(cache=True)
def _grow(out_i, out_f):
    """Double the output arrays. Kept out of ``_emit`` so that writing a bar does not rebind the arrays:
    every rebinding costs reference-count updates, which showed up at 100+ ns per bar. The rows are copied
    in a loop: a slice assignment makes Numba compile its shape-mismatch error message (string formatting),
    3 s of a cold first run."""
    nb = out_i.shape[0]
    new_i = np.empty((max(64, 2 * nb), OUT_I), np.int64)
    new_f = np.empty((max(64, 2 * nb), OUT_F), np.float64)
    for r in range(nb):
        for j in range(OUT_I):
            new_i[r, j] = out_i[r, j]
        for j in range(OUT_F):
            new_f[r, j] = out_f[r, j]
    return new_i, new_f


@njit(cache=True)
def _emit(out_i, out_f, nb, ints, floats):
    """Write bar ``nb``: ``ints`` (bar_start, ts_first, ts_last, n_trades, segment, date, complete), ``floats`` (open,
    high, low, close, volume, dollar volume, buy volume, sell volume, imbalance, threshold)."""
    for j in range(OUT_I):
        out_i[nb, j] = ints[j]
    for j in range(6):
        out_f[nb, j] = floats[j]
    volume = floats[4]
    out_f[nb, 6] = floats[5] / volume if volume > 0 else np.nan  # VWAP
    for j in range(6, 10):
        out_f[nb, j + 1] = floats[j]


@njit(cache=True)
def _accumulate(price, size, direction, i, e, h, lo, v, dv, buy, sell):
    """Add trades ``[i, e)`` to a bar: the hot loop of every bar kernel.

    Indices are unsigned: with a signed index Numba adds a negative-index wraparound check to every
    array access, which blocked the compiler and halved the speed of this loop (measured 240 vs 590M
    trades/s). ``q * (d > 0)`` compiles to a select, with no branch to mispredict.
    """
    for j in range(uint64(i), uint64(e)):
        p = price[j]
        q = size[j]
        d = direction[j]
        h = max(h, p)
        lo = min(lo, p)
        v += q
        dv += p * q
        buy += q * (d > 0)
        sell += q * (d < 0)
    return h, lo, v, dv, buy, sell


# Bar-closing accumulators. Each takes the trades from ``i`` (at most up to ``e``) into the open bar of
# ``n`` trades and stops after the trade that closes it; one function per bar type, and one compiled
# driver per bar type (``_threshold_impl``, ``_imbalance_impl``): with the bar type tested inside a
# shared loop the compiler kept the test per trade and allocated registers worse (measured 25-35%
# slower). The sums run in trade order, so the closing trade is the one a plain sequential loop finds.
# Returns (end, closed, h, lo, v, dv, buy, sell, theta).


@njit(cache=True)
def _take_ticks(price, size, direction, i, e, n, threshold, h, lo, v, dv, buy, sell, theta):
    """Tick bars: the bar's length is known, so this is a counted loop. A bar carried into a day whose
    threshold it already exceeds closes on that day's first trade, as volume and dollar bars do."""
    length = int64(np.ceil(threshold))
    k = min(e, i + max(1, length - n))
    h, lo, v, dv, buy, sell = _accumulate(price, size, direction, i, k, h, lo, v, dv, buy, sell)
    return k, n + (k - i) >= length, h, lo, v, dv, buy, sell, theta


@njit(cache=True)
def _take_volume(price, size, direction, i, e, n, threshold, h, lo, v, dv, buy, sell, theta):
    k = e
    for j in range(uint64(i), uint64(e)):
        p = price[j]
        q = size[j]
        d = direction[j]
        h = max(h, p)
        lo = min(lo, p)
        v += q
        dv += p * q
        buy += q * (d > 0)
        sell += q * (d < 0)
        if v >= threshold:
            k = int64(j) + 1
            break
    return k, v >= threshold, h, lo, v, dv, buy, sell, theta


@njit(cache=True)
def _take_dollars(price, size, direction, i, e, n, threshold, h, lo, v, dv, buy, sell, theta):
    k = e
    for j in range(uint64(i), uint64(e)):
        p = price[j]
        q = size[j]
        d = direction[j]
        h = max(h, p)
        lo = min(lo, p)
        v += q
        dv += p * q
        buy += q * (d > 0)
        sell += q * (d < 0)
        if dv >= threshold:
            k = int64(j) + 1
            break
    return k, dv >= threshold, h, lo, v, dv, buy, sell, theta


@njit(cache=True)
def _accumulate_before(ts, price, size, direction, i, e, bar_end, h, lo, v, dv, buy, sell):
    """Add the trades from ``i`` that are stamped before ``bar_end`` (at most up to ``e``); returns where
    it stopped.

    Timestamps are sorted, so the last of a block of 8 tells whether the whole block belongs to the bar:
    one compare per 8 trades, with a fixed-length inner loop the compiler unrolls. Measured against
    finding the bar's end first with a galloping search: about 10% slower for 1-minute bars of 25,000
    trades, 10-15% faster for bars of a few hundred trades or fewer, where the search's cache misses and
    mispredicted bisection steps dominate (and 15% faster over 100 symbols).
    """
    j = uint64(i)
    end = uint64(e)
    while j + uint64(8) <= end and ts[j + uint64(7)] < bar_end:
        for u in range(8):
            k = j + uint64(u)
            p = price[k]
            q = size[k]
            d = direction[k]
            h = max(h, p)
            lo = min(lo, p)
            v += q
            dv += p * q
            buy += q * (d > 0)
            sell += q * (d < 0)
        j += uint64(8)
    while j < end and ts[j] < bar_end:
        p = price[j]
        q = size[j]
        d = direction[j]
        h = max(h, p)
        lo = min(lo, p)
        v += q
        dv += p * q
        buy += q * (d > 0)
        sell += q * (d < 0)
        j += uint64(1)
    return int64(j), h, lo, v, dv, buy, sell


@njit(cache=True)
def time_bars(
    ts,
    price,
    size,
    direction,
    off,
    seg_date,
    seg_end,
    keep_open,
    every,
    offset,
    load,
    st_i_in,
    st_f_in,
    capacity,
):
    """Time bars on the grid ``offset + k * every``; buckets without trades produce no bar.

    The trades of a bucket are accumulated by ``_accumulate_before``; the integer division that finds a
    bucket runs once per bar, not per trade.
    """
    n_seg = off.shape[0] - 1
    out_i = np.empty((capacity, OUT_I), np.int64)
    out_f = np.empty((capacity, OUT_F), np.float64)
    st_i = np.empty((n_seg, BAR_STATE_I), np.int64)
    st_f = np.empty((n_seg, BAR_STATE_F), np.float64)
    nb = 0
    n = 0
    ts_first = 0
    ts_last = 0
    bar_date = 0
    bstart = 0
    bend = NO_TS
    o = 0.0
    h = 0.0
    lo = 0.0
    c = 0.0
    v = 0.0
    dv = 0.0
    buy = 0.0
    sell = 0.0
    for s in range(n_seg):
        if load[s]:
            n = st_i_in[s, 0]
            ts_first = st_i_in[s, 1]
            ts_last = st_i_in[s, 2]
            bar_date = st_i_in[s, 3]
            bstart = st_i_in[s, 4]
            bend = bstart + every if n > 0 else NO_TS
            o = st_f_in[s, 0]
            h = st_f_in[s, 1]
            lo = st_f_in[s, 2]
            c = st_f_in[s, 3]
            v = st_f_in[s, 4]
            dv = st_f_in[s, 5]
            buy = st_f_in[s, 6]
            sell = st_f_in[s, 7]
        i = off[s]
        b = off[s + 1]
        in_seg = False  # the open bar has a trade in this segment (its date is this segment's)
        while i < b:
            t = ts[i]
            if t >= bend:  # trade i opens a new bucket
                if n > 0:
                    date = seg_date[s] if in_seg else bar_date
                    if nb == out_i.shape[0]:
                        out_i, out_f = _grow(out_i, out_f)
                    _emit(
                        out_i,
                        out_f,
                        nb,
                        (bstart, ts_first, ts_last, n, s, date, 1),
                        (o, h, lo, c, v, dv, buy, sell, np.nan, np.nan),
                    )
                    nb += 1
                bstart = ((t - offset) // every) * every + offset
                bend = bstart + every
                n = 0
                o = price[i]
                h = o
                lo = o
                v = 0.0
                dv = 0.0
                buy = 0.0
                sell = 0.0
                ts_first = t
            e, h, lo, v, dv, buy, sell = _accumulate_before(
                ts, price, size, direction, i, b, bend, h, lo, v, dv, buy, sell
            )
            n += e - i
            c = price[e - 1]
            ts_last = ts[e - 1]
            in_seg = True
            i = e
        if n > 0 and in_seg:
            bar_date = seg_date[s]
        if n > 0 and (not keep_open[s] or bend <= seg_end[s]):
            if nb == out_i.shape[0]:
                out_i, out_f = _grow(out_i, out_f)
            _emit(
                out_i,
                out_f,
                nb,
                (bstart, ts_first, ts_last, n, s, bar_date, int64(bend <= seg_end[s])),
                (o, h, lo, c, v, dv, buy, sell, np.nan, np.nan),
            )
            nb += 1
            n = 0
            bend = NO_TS
        st_i[s, 0] = n
        st_i[s, 1] = ts_first
        st_i[s, 2] = ts_last
        st_i[s, 3] = bar_date
        st_i[s, 4] = bstart
        st_f[s, 0] = o
        st_f[s, 1] = h
        st_f[s, 2] = lo
        st_f[s, 3] = c
        st_f[s, 4] = v
        st_f[s, 5] = dv
        st_f[s, 6] = buy
        st_f[s, 7] = sell
        st_f[s, 8:] = 0.0
    return out_i[:nb], out_f[:nb], st_i, st_f


def threshold_bars(
    ts, price, size, direction, off, seg_date, keep_open, kind, thresholds, load, st_i_in, st_f_in, capacity
):
    """Tick (``kind`` 0), volume (1) or dollar (2) bars: close on the trade that reaches the threshold.

    ``thresholds`` holds one threshold per segment (a constant, or one per day from trailing daily volume,
    see ``daily_thresholds``); a bar carried into the next segment is measured against that segment's.

    The running measure restarts at zero after each bar (the overshoot of the closing trade is not carried
    into the next bar), the usual definition; a cumulative-sum formulation that cuts at multiples of the
    threshold gives different bars. Dispatches to one compiled kernel per bar type.
    """
    kernel = {KIND_TICK: _tick_bars, KIND_VOLUME: _volume_bars, KIND_DOLLAR: _dollar_bars}[kind]
    return kernel(
        ts, price, size, direction, off, seg_date, keep_open, thresholds, load, st_i_in, st_f_in, capacity
    )


@njit(cache=True)
def _tick_bars(
    ts, price, size, direction, off, seg_date, keep_open, thresholds, load, st_i_in, st_f_in, capacity
):
    return _threshold_impl(
        KIND_TICK,
        ts,
        price,
        size,
        direction,
        off,
        seg_date,
        keep_open,
        thresholds,
        load,
        st_i_in,
        st_f_in,
        capacity,
    )


@njit(cache=True)
def _volume_bars(
    ts, price, size, direction, off, seg_date, keep_open, thresholds, load, st_i_in, st_f_in, capacity
):
    return _threshold_impl(
        KIND_VOLUME,
        ts,
        price,
        size,
        direction,
        off,
        seg_date,
        keep_open,
        thresholds,
        load,
        st_i_in,
        st_f_in,
        capacity,
    )


@njit(cache=True)
def _dollar_bars(
    ts, price, size, direction, off, seg_date, keep_open, thresholds, load, st_i_in, st_f_in, capacity
):
    return _threshold_impl(
        KIND_DOLLAR,
        ts,
        price,
        size,
        direction,
        off,
        seg_date,
        keep_open,
        thresholds,
        load,
        st_i_in,
        st_f_in,
        capacity,
    )


@njit(cache=True, inline="always")
def _threshold_impl(
    kind, ts, price, size, direction, off, seg_date, keep_open, thresholds, load, st_i_in, st_f_in, capacity
):
    """The bar loop of ``threshold_bars``. Inlined into one wrapper per bar type, where ``kind`` is a
    constant and the compiler drops the other bar types' code."""
    n_seg = off.shape[0] - 1
    out_i = np.empty((capacity, OUT_I), np.int64)
    out_f = np.empty((capacity, OUT_F), np.float64)
    st_i = np.empty((n_seg, BAR_STATE_I), np.int64)
    st_f = np.empty((n_seg, BAR_STATE_F), np.float64)
    nb = 0
    n = 0
    ts_first = 0
    ts_last = 0
    bar_date = 0
    o = 0.0
    h = 0.0
    lo = 0.0
    c = 0.0
    v = 0.0
    dv = 0.0
    buy = 0.0
    sell = 0.0
    for s in range(n_seg):
        if load[s]:
            n = st_i_in[s, 0]
            ts_first = st_i_in[s, 1]
            ts_last = st_i_in[s, 2]
            bar_date = st_i_in[s, 3]
            o = st_f_in[s, 0]
            h = st_f_in[s, 1]
            lo = st_f_in[s, 2]
            c = st_f_in[s, 3]
            v = st_f_in[s, 4]
            dv = st_f_in[s, 5]
            buy = st_f_in[s, 6]
            sell = st_f_in[s, 7]
        i = off[s]
        b = off[s + 1]
        threshold = thresholds[s]
        in_seg = False
        while i < b:
            if n == 0:
                o = price[i]
                h = o
                lo = o
                ts_first = ts[i]
            if kind == KIND_TICK:
                e, closed, h, lo, v, dv, buy, sell, _ = _take_ticks(
                    price, size, direction, i, b, n, threshold, h, lo, v, dv, buy, sell, 0.0
                )
            elif kind == KIND_VOLUME:
                e, closed, h, lo, v, dv, buy, sell, _ = _take_volume(
                    price, size, direction, i, b, n, threshold, h, lo, v, dv, buy, sell, 0.0
                )
            else:
                e, closed, h, lo, v, dv, buy, sell, _ = _take_dollars(
                    price, size, direction, i, b, n, threshold, h, lo, v, dv, buy, sell, 0.0
                )
            n += e - i
            c = price[e - 1]
            ts_last = ts[e - 1]
            in_seg = True
            i = e
            if closed:
                if nb == out_i.shape[0]:
                    out_i, out_f = _grow(out_i, out_f)
                _emit(
                    out_i,
                    out_f,
                    nb,
                    (ts_first, ts_first, ts_last, n, s, seg_date[s], 1),
                    (o, h, lo, c, v, dv, buy, sell, np.nan, threshold),
                )
                nb += 1
                n = 0
                v = 0.0
                dv = 0.0
                buy = 0.0
                sell = 0.0
                in_seg = False
        if n > 0 and in_seg:
            bar_date = seg_date[s]
        if n > 0 and not keep_open[s]:
            if nb == out_i.shape[0]:
                out_i, out_f = _grow(out_i, out_f)
            _emit(
                out_i,
                out_f,
                nb,
                (ts_first, ts_first, ts_last, n, s, bar_date, 0),
                (o, h, lo, c, v, dv, buy, sell, np.nan, threshold),
            )
            nb += 1
            n = 0
            v = 0.0
            dv = 0.0
            buy = 0.0
            sell = 0.0
        st_i[s, 0] = n
        st_i[s, 1] = ts_first
        st_i[s, 2] = ts_last
        st_i[s, 3] = bar_date
        st_i[s, 4] = 0
        st_f[s, 0] = o
        st_f[s, 1] = h
        st_f[s, 2] = lo
        st_f[s, 3] = c
        st_f[s, 4] = v
        st_f[s, 5] = dv
        st_f[s, 6] = buy
        st_f[s, 7] = sell
        st_f[s, 8:] = 0.0
        st_f[s, 10] = threshold  # the open bar's, for ``flush_state``
    return out_i[:nb], out_f[:nb], st_i, st_f


# Information-driven bars (AFML 2.3.2): ``kind`` = family * 3 + measure, measure 0 tick, 1 volume, 2 dollar.
KIND_TICK_IMBALANCE = 0
KIND_VOLUME_IMBALANCE = 1
KIND_DOLLAR_IMBALANCE = 2
KIND_TICK_RUN = 3
KIND_VOLUME_RUN = 4
KIND_DOLLAR_RUN = 5
INFORMATION_KINDS = {
    "tick_imbalance": KIND_TICK_IMBALANCE,
    "volume_imbalance": KIND_VOLUME_IMBALANCE,
    "dollar_imbalance": KIND_DOLLAR_IMBALANCE,
    "tick_run": KIND_TICK_RUN,
    "volume_run": KIND_VOLUME_RUN,
    "dollar_run": KIND_DOLLAR_RUN,
}


def information_bars(
    ts,
    price,
    size,
    direction,
    off,
    seg_date,
    keep_open,
    kind,
    bar_alpha,
    trade_decay,
    min_ticks,
    max_ticks,
    load,
    st_i_in,
    st_f_in,
    capacity,
):
    """Imbalance and run bars (AFML 2.3.2.1-2.3.2.4) with EWMA expectations; see ``BarSpec``.

    ``m_t`` is the trade's measure (1, its size, or its price * size) and ``b_t`` its Lee-Ready direction.
    Imbalance bars (``kind`` 0-2): ``theta = sum b_t m_t`` over the bar; the bar closes on the first trade
    where ``|theta| >= E[T] * |E[b m]|``. Run bars (3-5): ``theta = max(sum of m_t over buys, sum over
    sells)``; it closes where ``theta >= E[T] * max(E[b+ m], E[b- m])`` (``b+ = 1`` on a buy, else 0).
    Either way ``theta`` must also be non-zero, so a zero threshold does not cut one-trade bars of unsigned
    trades.

    The threshold is fixed when the bar opens, from trades and bars before it (never its own or later
    ones): ``E[T]`` is an EWMA of the lengths of prior bars (``bar_alpha``, starting at the spec's
    ``expected_ticks``, clamped to ``[min_ticks, max_ticks]``); ``E[b m]`` (``E[b+ m]``, ``E[b- m]``) is an
    EWMA of that quantity over all prior trades, bias-corrected like pandas' ``adjust=True``: ``num =
    decay * num + x``, ``den = decay * den + 1``, estimate ``num / den``, ``decay = 1 - 2 / (span + 1)``.
    With no prior trade (a fresh state) the bar is a warm-up bar of ``ceil(E[T])`` trades, with a NaN
    threshold. Dispatches to one compiled kernel per kind.
    """
    kernel = _INFORMATION_KERNELS[kind]
    return kernel(
        ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
        st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True)
def _tick_imbalance_bars(
    ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
    st_i_in, st_f_in, capacity,
):  # fmt: skip
    return _information_impl(
        KIND_TICK_IMBALANCE, ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks,
        max_ticks, load, st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True)
def _volume_imbalance_bars(
    ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
    st_i_in, st_f_in, capacity,
):  # fmt: skip
    return _information_impl(
        KIND_VOLUME_IMBALANCE, ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks,
        max_ticks, load, st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True)
def _dollar_imbalance_bars(
    ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
    st_i_in, st_f_in, capacity,
):  # fmt: skip
    return _information_impl(
        KIND_DOLLAR_IMBALANCE, ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks,
        max_ticks, load, st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True)
def _tick_run_bars(
    ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
    st_i_in, st_f_in, capacity,
):  # fmt: skip
    return _information_impl(
        KIND_TICK_RUN, ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks,
        max_ticks, load, st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True)
def _volume_run_bars(
    ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
    st_i_in, st_f_in, capacity,
):  # fmt: skip
    return _information_impl(
        KIND_VOLUME_RUN, ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks,
        max_ticks, load, st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True)
def _dollar_run_bars(
    ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks, max_ticks, load,
    st_i_in, st_f_in, capacity,
):  # fmt: skip
    return _information_impl(
        KIND_DOLLAR_RUN, ts, price, size, direction, off, seg_date, keep_open, bar_alpha, trade_decay, min_ticks,
        max_ticks, load, st_i_in, st_f_in, capacity,
    )  # fmt: skip


@njit(cache=True, inline="always")
def _take_information(kind, price, size, direction, i, e, thr, h, lo, v, dv, buy, sell, th_a, th_b, num_a, num_b,
                      den, decay):  # fmt: skip
    """Trades from ``i`` (up to ``e``) into an information bar, stopping after the one that reaches ``thr``.

    Per trade, besides the bar's sums: the running ``theta`` (``th_a``; for runs the buy run ``th_a`` and the
    sell run ``th_b``) and the per-trade EWMA numerators and denominator. Returns (end, closed, h, lo, v, dv,
    buy, sell, th_a, th_b, num_a, num_b, den).
    """
    k = e
    closed = False
    for j in range(uint64(i), uint64(e)):
        p = price[j]
        q = size[j]
        d = direction[j]
        h = max(h, p)
        lo = min(lo, p)
        v += q
        dv += p * q
        buy += q * (d > 0)
        sell += q * (d < 0)
        if kind % 3 == 0:
            m = 1.0
        elif kind % 3 == 1:
            m = q
        else:
            m = p * q
        den = den * decay + 1.0
        if kind < 3:
            x = d * m
            th_a += x
            num_a = num_a * decay + x
            reached = abs(th_a)
        else:
            mb = m * (d > 0)
            ms = m * (d < 0)
            th_a += mb
            th_b += ms
            num_a = num_a * decay + mb
            num_b = num_b * decay + ms
            reached = max(th_a, th_b)
        if reached >= thr and reached > 0.0:
            k = int64(j) + 1
            closed = True
            break
    return k, closed, h, lo, v, dv, buy, sell, th_a, th_b, num_a, num_b, den


@njit(cache=True, inline="always")
def _information_impl(
    kind,
    ts,
    price,
    size,
    direction,
    off,
    seg_date,
    keep_open,
    bar_alpha,
    trade_decay,
    min_ticks,
    max_ticks,
    load,
    st_i_in,
    st_f_in,
    capacity,
):
    """The bar loop of ``information_bars``, inlined into one wrapper per kind (see ``_threshold_impl``)."""
    n_seg = off.shape[0] - 1
    out_i = np.empty((capacity, OUT_I), np.int64)
    out_f = np.empty((capacity, OUT_F), np.float64)
    st_i = np.empty((n_seg, BAR_STATE_I), np.int64)
    st_f = np.empty((n_seg, BAR_STATE_F), np.float64)
    nb = 0
    n = 0
    ts_first = 0
    ts_last = 0
    bar_date = 0
    o = 0.0
    h = 0.0
    lo = 0.0
    c = 0.0
    v = 0.0
    dv = 0.0
    buy = 0.0
    sell = 0.0
    th_a = 0.0
    th_b = 0.0
    e_t = 1.0
    thr = np.nan
    num_a = 0.0
    num_b = 0.0
    den = 0.0
    for s in range(n_seg):
        if load[s]:
            n = st_i_in[s, 0]
            ts_first = st_i_in[s, 1]
            ts_last = st_i_in[s, 2]
            bar_date = st_i_in[s, 3]
            o = st_f_in[s, 0]
            h = st_f_in[s, 1]
            lo = st_f_in[s, 2]
            c = st_f_in[s, 3]
            v = st_f_in[s, 4]
            dv = st_f_in[s, 5]
            buy = st_f_in[s, 6]
            sell = st_f_in[s, 7]
            th_a = st_f_in[s, 8]
            e_t = st_f_in[s, 9]
            thr = st_f_in[s, 10]
            num_a = st_f_in[s, 11]
            den = st_f_in[s, 12]
            th_b = st_f_in[s, 13]
            num_b = st_f_in[s, 14]
        i = off[s]
        b = off[s + 1]
        in_seg = False
        while i < b:
            if n == 0:
                o = price[i]
                h = o
                lo = o
                ts_first = ts[i]
                if den == 0.0:  # no prior trade: a warm-up bar
                    thr = np.nan
                elif kind < 3:
                    thr = e_t * abs(num_a / den)
                else:
                    thr = e_t * max(num_a, num_b) / den
            if np.isnan(thr):  # warm-up: a tick bar of ceil(E[T]) trades
                length = int64(np.ceil(e_t))
                e, _, h, lo, v, dv, buy, sell, th_a, th_b, num_a, num_b, den = _take_information(
                    kind, price, size, direction, i, min(b, i + length - n), np.inf, h, lo, v, dv, buy, sell,
                    th_a, th_b, num_a, num_b, den, trade_decay,
                )  # fmt: skip
                closed = n + (e - i) >= length
            else:
                e, closed, h, lo, v, dv, buy, sell, th_a, th_b, num_a, num_b, den = _take_information(
                    kind, price, size, direction, i, b, thr, h, lo, v, dv, buy, sell, th_a, th_b, num_a, num_b,
                    den, trade_decay,
                )  # fmt: skip
            n += e - i
            c = price[e - 1]
            ts_last = ts[e - 1]
            in_seg = True
            i = e
            if closed:
                if nb == out_i.shape[0]:
                    out_i, out_f = _grow(out_i, out_f)
                theta = th_a if kind < 3 else max(th_a, th_b)
                _emit(
                    out_i,
                    out_f,
                    nb,
                    (ts_first, ts_first, ts_last, n, s, seg_date[s], 1),
                    (o, h, lo, c, v, dv, buy, sell, theta, thr),
                )
                nb += 1
                e_t = min(max(e_t + bar_alpha * (n - e_t), min_ticks), max_ticks)
                n = 0
                v = 0.0
                dv = 0.0
                buy = 0.0
                sell = 0.0
                th_a = 0.0
                th_b = 0.0
                in_seg = False
        if n > 0 and in_seg:
            bar_date = seg_date[s]
        if n > 0 and not keep_open[s]:
            if nb == out_i.shape[0]:
                out_i, out_f = _grow(out_i, out_f)
            theta = th_a if kind < 3 else max(th_a, th_b)
            _emit(
                out_i,
                out_f,
                nb,
                (ts_first, ts_first, ts_last, n, s, bar_date, 0),
                (o, h, lo, c, v, dv, buy, sell, theta, thr),
            )
            nb += 1
            n = 0
            v = 0.0
            dv = 0.0
            buy = 0.0
            sell = 0.0
            th_a = 0.0
            th_b = 0.0
        st_i[s, 0] = n
        st_i[s, 1] = ts_first
        st_i[s, 2] = ts_last
        st_i[s, 3] = bar_date
        st_i[s, 4] = 0
        st_f[s, 0] = o
        st_f[s, 1] = h
        st_f[s, 2] = lo
        st_f[s, 3] = c
        st_f[s, 4] = v
        st_f[s, 5] = dv
        st_f[s, 6] = buy
        st_f[s, 7] = sell
        st_f[s, 8] = th_a
        st_f[s, 9] = e_t
        st_f[s, 10] = thr
        st_f[s, 11] = num_a
        st_f[s, 12] = den
        st_f[s, 13] = th_b
        st_f[s, 14] = num_b
    return out_i[:nb], out_f[:nb], st_i, st_f


_INFORMATION_KERNELS = (
    _tick_imbalance_bars,
    _volume_imbalance_bars,
    _dollar_imbalance_bars,
    _tick_run_bars,
    _volume_run_bars,
    _dollar_run_bars,
)


def resample_daily_bars(daily: pl.DataFrame, every: str = "1w") -> pl.DataFrame:
    """Weekly (``"1w"``, weeks starting Monday) or monthly (``"1mo"``) bars from daily bars, per symbol.

    open = first open, high = max, low = min, close = last close, volume = sum, ``adj_factor`` = the last
    day's. ``date`` is the last trading day in the period (when the bar is known: no look-ahead), and
    ``period_start`` the calendar start of the period. Input columns: the ``cdm_bars_daily`` schema.
    """
    if every not in ("1w", "1mo", "1q", "1y"):
        raise ValueError(f"daily bars resample to '1w', '1mo', '1q' or '1y', not {every!r}")
    cols = ["symbol", "date", "open", "high", "low", "close", "volume"]
    missing = [c for c in cols if c not in daily.columns]
    if missing:
        raise ValueError(f"daily bars are missing columns {missing}")
    adj = pl.col("adj_factor") if "adj_factor" in daily.columns else pl.lit(1.0)
    return (
        daily.with_columns(adj.cast(pl.Float64).alias("adj_factor"))
        .sort("symbol", "date")
        .group_by_dynamic("date", every=every, group_by="symbol", label="left", start_by="window")
        .agg(
            pl.col("date").last().alias("last_date"),
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
            pl.col("adj_factor").last(),
            pl.len().cast(pl.Int64).alias("n_days"),
        )
        .rename({"date": "period_start"})
        .rename({"last_date": "date"})
        .select(
            "symbol", "date", "period_start", "open", "high", "low", "close", "volume", "adj_factor", "n_days"
        )
        .sort("symbol", "date")
    )
