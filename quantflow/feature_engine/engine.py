"""The feature engine's pure part: bars of many segments in, feature columns out; no I/O, no Dagster.

A segment is a run of one symbol's bars in time order (a block of the lake and the warm-up bars before
it). ``time_series_features`` computes every time-series feature of a ``FeatureDAG`` over each segment
independently, in the DAG's order, so a feature can read another's outputs; ``cross_sectional_features``
then transforms columns across symbols at each bar time. ``warmup_bars`` says how many bars before a row
its features need (exactly, for windows; for recursive indicators, until their start weighs less than
e^-settle); the runner fixes where segments start, so that every run gives the same bits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from quantflow.feature_engine import kernels as k
from quantflow.metadata.schema.feature_engine import ALPHA158_NAMES, FeatureDAG, FeatureNode
from quantflow.storage.schemas import bar_time

KEYS = ("symbol", "date", "ts")
# TA-Lib functions whose output depends on where the series starts: running totals (the whole history is
# their warm-up) and recursive smoothing (EMA, Wilder) whose start fades: the unstable-period flag does not
# mark all of those, so the ones that were measured to depend on their start are named here (a test measures
# every TA-Lib function again and fails when this list is out of date).
TALIB_PATH_DEPENDENT = frozenset({"MAXINDEX", "MININDEX", "MINMAXINDEX"})
TALIB_DECAYING = frozenset({"ADXR", "APO", "CVI", "DEMA", "EFI", "ERI", "FOSC", "KC", "KDJ", "MACD", "MACDFIX",
                            "MASSI", "PPO", "PVO", "SMI", "STOCHRSI", "TEMA", "TRIX", "TSI", "ZLEMA"})


# ---------------------------------------------------------------- warm-up
def talib_memory(function: str, params: dict) -> str:
    """"window" (a fixed lookback), "decaying" (recursive smoothing) or "path" (the whole history)."""
    from quantflow.metadata.talib_catalog import catalog

    flags = catalog()[function]["flags"]
    if "Output is path-dependent" in flags or function in TALIB_PATH_DEPENDENT:
        return "path"
    smoothing = [v for name, v in params.items() if name.endswith("matype")]
    if "Function has an unstable period" in flags or function in TALIB_DECAYING or any(smoothing):
        return "decaying"
    return "window"


def talib_window(node: FeatureNode, settle: int) -> int | None:
    from talib import abstract

    name = node.params.function.upper()
    params = node.params.function_params()
    lookback = abstract.Function(name, **params).lookback
    memory = talib_memory(name, {**abstract.Function(name).parameters, **params})
    if memory == "path":
        return None
    if memory == "decaying":
        periods = [int(v) for p, v in {**abstract.Function(name).parameters, **params}.items() if "period" in p]
        return lookback + settle * max(periods, default=lookback or 1)
    return lookback


def node_window(node: FeatureNode, settle: int) -> int | None:
    """Bars before a row that the node reads from its inputs (None: all of them)."""
    p = node.params
    if node.kind == "alpha158":
        return int(k.A158_WINDOWS[-1])  # a 60-bar window of one-bar changes
    if node.kind == "talib":
        return talib_window(node, settle)
    if node.kind == "returns":
        return max(p.horizons)
    if node.kind in ("volatility", "beta", "correlation"):
        return p.window
    if node.kind in ("zscore", "rolling"):
        return p.window - 1
    if node.kind == "microstructure":
        return p.window + 1  # changes and their lags over the window; a segment's first bar is partial
    return 0  # calendar, cross-sectional: the row itself


def warmup_bars(dag: FeatureDAG, settle: int) -> int | None:
    """The longest path of windows through the DAG: bars before a row that its features need."""
    need: dict[str, int | None] = {}
    for node in dag.nodes:
        own = node_window(node, settle)
        before = [need[d] for d in node.depends_on]
        need[node.name] = None if own is None or None in before else own + max(before, default=0)
    values = list(need.values())
    return None if None in values else max(values, default=0)


# ---------------------------------------------------------------- time series
class SegmentData:
    """The columns of a task's bars (float64 arrays over all segments) and what features need beside them."""

    def __init__(self, bars: pl.DataFrame, starts: np.ndarray, benchmarks: dict[str, pl.DataFrame] | None = None,
                 trades: pl.DataFrame | None = None, quotes: pl.DataFrame | None = None):
        self.bars = bars
        self.starts = starts.astype(np.int64)
        self.columns: dict[str, np.ndarray] = {
            c: bars[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in bars.columns
            if c not in KEYS and bars[c].dtype.is_numeric()}
        self.benchmarks = benchmarks or {}
        self.trades = _in_time_order(trades)
        self.quotes = _in_time_order(quotes)
        self._per_bar: dict[str, np.ndarray] | None = None

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]

    def segments(self):
        for s in range(self.starts.size - 1):
            yield int(self.starts[s]), int(self.starts[s + 1])


def _in_time_order(ticks: pl.DataFrame | None) -> pl.DataFrame | None:
    """Ticks in (symbol, ts) order; sorted only when they are not (the lake gives them in order)."""
    if ticks is None or ticks.height < 2:
        return ticks
    sym, ts = ticks["symbol"], ticks["ts"]
    same = sym.head(-1) == sym.tail(-1)
    ordered = (sym.head(-1) <= sym.tail(-1)).all() and ((ts.head(-1) <= ts.tail(-1)) | ~same).all()
    return ticks if ordered else ticks.sort("symbol", "ts", maintain_order=True)


def _talib(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    import talib

    fn = getattr(talib, node.params.function.upper())
    inputs = [np.ascontiguousarray(data.column(c)) for c in node.params.input_columns()]
    params = node.params.function_params()
    outs = [np.full(data.starts[-1], np.nan) for _ in node.outputs]
    for a, b in data.segments():
        result = fn(*(x[a:b] for x in inputs), **params)
        for out, values in zip(outs, result if isinstance(result, tuple) else (result,)):
            out[a:b] = values
    return outs


def _returns(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    x = data.column(node.params.column)
    outs = []
    for h in node.params.horizons:
        ratio = k.shifted_ratio(x, data.starts, h)
        outs.append(np.log(ratio) if node.params.log else ratio - 1.0)
    return outs


def _volatility(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    p = node.params
    vol = k.rolling_stat(k.log_returns(data.column(p.column), data.starts), data.starts, p.window, k.STAT_STD)
    return [vol * np.sqrt(p.annualize) if p.annualize else vol]


def _zscore(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    return [k.rolling_zscore(data.column(node.params.column), data.starts, node.params.window)]


def _rolling(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    p = node.params
    return [k.rolling_stat(data.column(p.column), data.starts, p.window, k.STATS[p.stat])]


def aligned_benchmark(data: SegmentData, benchmark: str, column: str) -> np.ndarray:
    """The benchmark's ``column`` as of each bar's time (its last bar at or before it; nan before its first)."""
    bench = data.benchmarks.get(benchmark)
    if bench is None or bench.height == 0:  # no bars of the benchmark (yet): nothing to regress on
        return np.full(data.bars.height, np.nan)
    bench_ts = bench["ts"].dt.epoch("ns").to_numpy()
    values = bench[column].cast(pl.Float64).to_numpy()
    at = np.searchsorted(bench_ts, data.bars["ts"].dt.epoch("ns").to_numpy(), side="right") - 1
    out = np.where(at >= 0, values[np.maximum(at, 0)], np.nan)
    return out


def _benchmark(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    p = node.params
    own = k.log_returns(data.column(p.column), data.starts)
    market = k.log_returns(aligned_benchmark(data, p.benchmark, p.column), data.starts)
    return [k.rolling_regression(own, market, data.starts, p.window, 0 if node.kind == "beta" else 1)]


def _calendar(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    date = data.bars["date"]
    local = data.bars["ts"].dt.convert_time_zone(node.params.timezone)
    intraday = "ts_last" in data.bars.columns
    fields = {
        "day_of_week": lambda: date.dt.weekday(),
        "day_of_month": lambda: date.dt.day(),
        "month": lambda: date.dt.month(),
        "quarter": lambda: date.dt.quarter(),
        "minute_of_day": lambda: (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute()) if intraday
        else pl.Series([None] * data.bars.height, dtype=pl.Int32),
    }
    return [fields[f]().cast(pl.Float64).fill_null(np.nan).to_numpy() for f in node.params.fields]


def _microstructure(node: FeatureNode, data: SegmentData) -> list[np.ndarray]:
    p, st, w = node.params, data.starts, node.params.window
    per_bar = _per_bar(data)
    close = data.column("close")
    if p.measure in ("spread", "effective_spread"):
        total = k.rolling_stat(per_bar[f"{p.measure}_sum"], st, w, k.STAT_SUM)
        count = k.rolling_stat(per_bar[f"{p.measure}_count"], st, w, k.STAT_SUM)
        return [np.where(count > 0, total / np.maximum(count, 1), np.nan)]
    if p.measure == "order_flow_imbalance":
        return [k.rolling_stat(per_bar["ofi"], st, w, k.STAT_SUM)]
    signed, volume = per_bar["signed_volume"], data.column("volume")
    if p.measure == "signed_volume_ratio":
        return [k.rolling_stat(signed, st, w, k.STAT_SUM) / k.rolling_stat(volume, st, w, k.STAT_SUM)]
    if p.measure == "vpin":
        return [k.rolling_stat(np.abs(signed), st, w, k.STAT_SUM) / k.rolling_stat(volume, st, w, k.STAT_SUM)]
    change = k.differences(close, st)
    if p.measure == "kyle_lambda":
        return [k.rolling_regression(change, signed, st, w, 0)]
    if p.measure == "roll":
        return [k.roll_spread(change, st, w)]
    # amihud: mean |log return| per dollar traded, per million dollars
    dollars = data.columns.get("dollar_volume", close * volume)
    illiquidity = np.abs(k.log_returns(close, st)) / dollars * 1e6
    return [k.rolling_stat(illiquidity, st, w, k.STAT_MEAN)]


def _tick_sums(data: SegmentData, ticks: pl.DataFrame, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per bar of each segment, the sums of ``values`` (one array per name, aligned with ``ticks``, which are
    in (symbol, ts) order) over the ticks the bar covers: with daily bars the ticks of its date; with bars
    from ticks those after the previous bar's last trade up to its own (a tick stamped with a bar's last
    trade's time counts in that bar). A segment's first bar also gets its day's earlier ticks: it is a
    warm-up bar unless the segment starts the symbol's history."""
    out = {name: np.zeros(int(data.starts[-1])) for name in values}
    daily = "ts_last" not in data.bars.columns
    bar_day = data.bars["date"].cast(pl.Int64).to_numpy()
    tick_day = ticks["date"].cast(pl.Int64).to_numpy()
    bar_key = bar_day if daily else data.bars["ts"].dt.epoch("ns").to_numpy()
    tick_key = tick_day if daily else ticks["ts"].dt.epoch("ns").to_numpy()
    symbols, tick_symbols = data.bars["symbol"], ticks["symbol"]  # ticks in symbol order
    for a, b in data.segments():
        lo, hi = (int(tick_symbols.search_sorted(symbols[a], side)) for side in ("left", "right"))
        first = lo + np.searchsorted(tick_day[lo:hi], bar_day[a], "left")
        last = lo + np.searchsorted(tick_key[lo:hi], bar_key[b - 1], "right")
        if last <= first:
            continue
        pos = np.searchsorted(bar_key[a:b], tick_key[first:last], "left")  # the first bar at or after the tick
        if daily:
            pos = np.where(bar_key[a:b][pos] == tick_key[first:last], pos, -1)
        ok = pos >= 0
        for name, v in values.items():
            out[name][a:b] += np.bincount(pos[ok], weights=v[first:last][ok], minlength=b - a)
    return out


def _per_bar(data: SegmentData) -> dict[str, np.ndarray]:
    """Per-bar sums of what the microstructure measures use."""
    if data._per_bar is not None:
        return data._per_bar
    sums: dict[str, np.ndarray] = {}
    if "buy_volume" in data.columns:
        sums["signed_volume"] = data.column("buy_volume") - data.column("sell_volume")
    if data.trades is not None:
        t = data.trades
        values = {"signed_volume": t["signed_volume"].fill_null(0.0).to_numpy()} if "signed_volume" not in sums else {}
        for measure, column in (("spread", "spread_bps"), ("effective_spread", "effective_spread_bps")):
            v = t[column].cast(pl.Float64).fill_null(np.nan).to_numpy()
            values[f"{measure}_sum"] = np.where(np.isnan(v), 0.0, v)
            values[f"{measure}_count"] = (~np.isnan(v)).astype(np.float64)
        sums.update(_tick_sums(data, t, values))
    if data.quotes is not None:
        q = data.quotes
        new_day = (q["symbol"].ne_missing(q["symbol"].shift(1)) | q["date"].ne_missing(q["date"].shift(1))).to_numpy()
        starts = np.append(np.flatnonzero(new_day), q.height).astype(np.int64)
        events = k.order_flow_events(*(q[c].cast(pl.Float64).to_numpy() for c in ("bid", "ask", "bid_size",
                                                                                   "ask_size")), starts)
        sums.update(_tick_sums(data, q, {"ofi": events}))
    data._per_bar = sums
    return sums


COMPUTE: dict[str, Callable[[FeatureNode, SegmentData], list[np.ndarray]]] = {
    "talib": _talib,
    "returns": _returns,
    "volatility": _volatility,
    "zscore": _zscore,
    "rolling": _rolling,
    "beta": _benchmark,
    "correlation": _benchmark,
    "calendar": _calendar,
    "microstructure": _microstructure,
}


def time_series_features(data: SegmentData, dag: FeatureDAG) -> pl.DataFrame:
    """The keys (symbol, date, ts) of every bar and the output columns of the DAG's time-series features."""
    out: dict[str, np.ndarray] = {}
    for node in dag.nodes:
        if node.cross_sectional:
            continue
        if node.kind == "alpha158":
            values = k.alpha158(*(data.columns.get(c, np.full(data.starts[-1], np.nan))
                                  for c in ("open", "high", "low", "close", "volume", "vwap")), data.starts)
            columns = dict(zip(ALPHA158_NAMES, values))
            arrays = [columns[name] for name in node.outputs]
        else:
            arrays = COMPUTE[node.kind](node, data)
        for name, values in zip(node.outputs, arrays):
            out[name] = values
            data.columns[name] = values  # later features read it
    return data.bars.select(KEYS).with_columns(pl.DataFrame(out) if out else [])


def cross_sectional_features(features: pl.DataFrame, dag: FeatureDAG) -> pl.DataFrame:
    """Apply the cross-sectional features at each bar time across the symbols present (nan ignored)."""
    for node in dag.nodes:
        if not node.cross_sectional:
            continue
        x = pl.col(node.params.column).fill_nan(None)
        if node.kind == "cs_rank":
            expr = x.rank("average").over("ts") / x.count().over("ts")
        elif node.kind == "cs_zscore":
            expr = (x - x.mean().over("ts")) / x.std().over("ts")
        else:
            expr = x - x.mean().over("ts")
        features = features.with_columns(expr.cast(pl.Float64).fill_null(np.nan).alias(node.outputs[0]))
    return features


def bars_with_time(bars: pl.DataFrame) -> pl.DataFrame:
    """``bars`` with its key ``ts`` (when each bar is known), in (symbol, ts) order."""
    return bars.with_columns(bar_time(bars.columns).alias("ts")).sort("symbol", "ts", maintain_order=True)

