"""The feature engine as users run it, against the same features written as a pandas and a polars script.

Cases (best of ``--repeat`` timed runs after one untimed warm-up, same data, same run):

- stage, default feature set: ``feature_engine.runner.run`` over a project lake (read the bars, plan,
  compute, write ``ft_features``), against a pandas script and a polars script (``.over("symbol")``) that
  read the same lake table, compute the same features and write one Parquet file. The default set is the
  sample project's minus its microstructure measures (these bars have no ticks): RSI 14, MACD, Bollinger
  bands 20, ATR 14, returns 1/5/20, volatility 20, a z-score of RSI, beta to the first symbol, calendar
  fields, a cross-sectional rank. Daily: 40 symbols x 5,000 bars (``../shared/data/daily_us_equities`` when
  present, else a random walk); intraday: 40 symbols x 25,000 one-minute bars. Targets 5x pandas, 8x polars.
- Alpha158: the preset alone on the daily set, stage against a straightforward polars implementation of
  Qlib's expressions (rolling operators with ``min_samples=1``, ``rolling_map`` where polars has no
  operator), read and write included; and kernel against polars in memory. Target 5x.

    python benchmarks/bench_feature_engine.py [--repeat 3] [--symbols 40] [--bars 5000] [--intraday-bars 25000]
        [--skip-pandas] [--skip-alpha158]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_state_engine import best_of  # noqa: E402

from quantflow.compute.stage import RunWindow  # noqa: E402
from quantflow.feature_engine import runner  # noqa: E402
from quantflow.metadata import get_metadata_manager  # noqa: E402
from quantflow.storage.project import project_lake  # noqa: E402
from quantflow.storage.schemas import TableSpec  # noqa: E402
from quantflow.storage.tables import partition_width  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data" / "daily_us_equities"
DEFAULT_SET = """\
      - {name: rsi14, kind: talib, params: {function: RSI, timeperiod: 14}}
      - {name: macd, kind: talib, params: {function: MACD}, outputs: [macd, macd_signal, macd_hist]}
      - {name: bb, kind: talib, params: {function: BBANDS, timeperiod: 20}, outputs: [bb_upper, bb_middle, bb_lower]}
      - {name: atr14, kind: talib, params: {function: ATR, timeperiod: 14}}
      - {name: ret, kind: returns, params: {horizons: [1, 5, 20], log: true}}
      - {name: vol20, kind: volatility, params: {window: 20, annualize: 252}}
      - {name: rsi14_z, kind: zscore, params: {column: rsi14, window: 20}}
      - {name: beta, kind: beta, params: {benchmark: BENCH, window: 20}}
      - {name: cal, kind: calendar, params: {fields: [day_of_week, month]}}
      - {name: ret5_rank, kind: cs_rank, params: {column: ret_5}}
"""


# ---------------------------------------------------------------- data
def daily_bars(symbols: int, bars: int) -> pl.DataFrame:
    if SHARED.exists():
        frames = []
        for path in sorted(SHARED.glob("*.csv"))[:symbols]:
            df = pl.read_csv(path, try_parse_dates=True).sort("timestamp").tail(bars)
            adj = df["adjusted_close"] / df["close"]
            frames.append(pl.DataFrame({"symbol": path.stem, "date": df["timestamp"], "open": df["open"] * adj,
                                        "high": df["high"] * adj, "low": df["low"] * adj,
                                        "close": df["adjusted_close"], "volume": df["volume"].cast(pl.Float64)}))
        if len(frames) == symbols:
            return pl.concat(frames)
    rng = np.random.default_rng(7)
    days = [d for d in (dt.date(1990, 1, 1) + dt.timedelta(days=i) for i in range(bars * 2)) if d.weekday() < 5]
    frames = []
    for s in range(symbols):
        close = 50 * np.exp(np.cumsum(rng.normal(0.0002, 0.015, bars)))
        frames.append(pl.DataFrame({"symbol": f"S{s:03d}", "date": days[:bars], "open": close * 1.001,
                                    "high": close * 1.01, "low": close * 0.99, "close": close,
                                    "volume": rng.lognormal(14, 0.4, bars).round()}))
    return pl.concat(frames)


def intraday_bars(symbols: int, bars: int) -> pl.DataFrame:
    rng = np.random.default_rng(8)
    per_day = 390
    days = [d for d in (dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(bars // per_day * 2 + 10))
            if d.weekday() < 5][: -(-bars // per_day)]
    ts = np.concatenate([np.datetime64(f"{d}T14:30") + np.arange(1, per_day + 1) * np.timedelta64(60, "s")
                         for d in days])[:bars].astype("datetime64[ns]")
    date = np.repeat(np.array(days, dtype="datetime64[D]"), per_day)[:bars]
    frames = []
    for s in range(symbols):
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.0008, bars)))
        volume = rng.lognormal(8, 0.5, bars).round()
        frames.append(pl.DataFrame({"symbol": f"S{s:03d}", "date": date, "ts_first": ts, "ts_last": ts,
                                    "open": close, "high": close * 1.0005, "low": close * 0.9995, "close": close,
                                    "volume": volume, "dollar_volume": close * volume, "vwap": close,
                                    "n_trades": np.int64(10), "buy_volume": volume / 2, "sell_volume": volume / 2})
                      .with_columns(pl.col("ts_first", "ts_last").dt.replace_time_zone("UTC")))
    return pl.concat(frames)


def make_project(root: Path, bars: pl.DataFrame, table: str, features: str, preset: str | None) -> object:
    symbols = bars["symbol"].unique(maintain_order=True).to_list()
    state = "  state_engine: {executor: local, bars: [{type: time, every: 1m}]}\n" if table != "cdm_bars_daily" else ""
    text = f"project:\n  name: bench\n  symbols: [{', '.join(symbols)}]\n{state}"
    text += f"  feature_engine:\n    input: {table}\n" + (f"    preset: {preset}\n" if preset else "")
    text += "    features:\n" + features.replace("BENCH", symbols[0]) if features else ""
    (root / "project_metadata").mkdir(parents=True, exist_ok=True)
    (root / "project_metadata" / "project.yaml").write_text(text)
    md = get_metadata_manager(root).load_all()
    spec = TableSpec(table, dict(bars.schema), partition_width(table), ("symbol", "date"))
    project_lake(md).write(spec, bars, "overwrite")
    return md


# ---------------------------------------------------------------- peers: the default set
def pandas_features(df: pd.DataFrame, bench: str) -> pd.DataFrame:
    df = df.sort_values(["symbol", "ts"]).reset_index(drop=True)
    g = df.groupby("symbol", sort=False)
    c = df["close"]
    out = df[["symbol", "date", "ts"]].copy()
    delta = g["close"].diff()
    gain = delta.clip(lower=0).groupby(df["symbol"]).transform(lambda s: s.ewm(alpha=1 / 14, adjust=False).mean())
    loss = (-delta).clip(lower=0).groupby(df["symbol"]).transform(lambda s: s.ewm(alpha=1 / 14, adjust=False).mean())
    out["rsi14"] = 100 - 100 / (1 + gain / loss)
    fast = g["close"].transform(lambda s: s.ewm(span=12, adjust=False).mean())
    slow = g["close"].transform(lambda s: s.ewm(span=26, adjust=False).mean())
    out["macd"] = fast - slow
    out["macd_signal"] = out.groupby(df["symbol"])["macd"].transform(lambda s: s.ewm(span=9, adjust=False).mean())
    out["macd_hist"] = out["macd"] - out["macd_signal"]
    mid = g["close"].transform(lambda s: s.rolling(20).mean())
    sd = g["close"].transform(lambda s: s.rolling(20).std(ddof=0))
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = mid + 2 * sd, mid, mid - 2 * sd
    prev = g["close"].shift(1)
    tr = pd.concat([df["high"] - df["low"], (df["high"] - prev).abs(), (df["low"] - prev).abs()], axis=1).max(axis=1)
    out["atr14"] = tr.groupby(df["symbol"]).transform(lambda s: s.ewm(alpha=1 / 14, adjust=False).mean())
    logc = np.log(c)
    for h in (1, 5, 20):
        out[f"ret_{h}"] = logc - logc.groupby(df["symbol"]).shift(h)
    out["vol20"] = out.groupby("symbol")["ret_1"].transform(lambda s: s.rolling(20).std()) * np.sqrt(252)
    out["rsi14_z"] = out.groupby("symbol")["rsi14"].transform(lambda s: (s - s.rolling(20).mean()) / s.rolling(20).std())
    market = out.loc[out["symbol"] == bench, ["ts", "ret_1"]].rename(columns={"ret_1": "m"})
    merged = out[["symbol", "ts", "ret_1"]].merge(market, on="ts", how="left")
    cov = merged.groupby("symbol")[["ret_1", "m"]].apply(
        lambda x: x["ret_1"].rolling(20).cov(x["m"]) / x["m"].rolling(20).var()).reset_index(level=0, drop=True)
    out["beta"] = cov.sort_index().to_numpy()
    out["cal_day_of_week"] = pd.to_datetime(out["date"]).dt.dayofweek + 1
    out["cal_month"] = pd.to_datetime(out["date"]).dt.month
    out["ret5_rank"] = out.groupby("ts")["ret_5"].rank(pct=True)
    return out


def polars_features(df: pl.DataFrame, bench: str) -> pl.DataFrame:
    df = df.sort("symbol", "ts")
    c = pl.col("close")
    delta = c.diff().over("symbol")
    def wilder(e):
        return e.ewm_mean(alpha=1 / 14, adjust=False).over("symbol")
    out = df.with_columns(
        (100 - 100 / (1 + wilder(delta.clip(lower_bound=0)) / wilder((-delta).clip(lower_bound=0)))).alias("rsi14"),
        (c.ewm_mean(span=12, adjust=False) - c.ewm_mean(span=26, adjust=False)).over("symbol").alias("macd"),
        c.rolling_mean(20).over("symbol").alias("bb_middle"),
        c.rolling_std(20, ddof=0).over("symbol").alias("bb_sd"),
        wilder(pl.max_horizontal(pl.col("high") - pl.col("low"), (pl.col("high") - c.shift(1).over("symbol")).abs(),
                                 (pl.col("low") - c.shift(1).over("symbol")).abs())).alias("atr14"),
        *((c.log() - c.log().shift(h)).over("symbol").alias(f"ret_{h}") for h in (1, 5, 20)),
        pl.col("date").dt.weekday().alias("cal_day_of_week"), pl.col("date").dt.month().alias("cal_month"),
    ).with_columns(
        pl.col("macd").ewm_mean(span=9, adjust=False).over("symbol").alias("macd_signal"),
        (pl.col("bb_middle") + 2 * pl.col("bb_sd")).alias("bb_upper"),
        (pl.col("bb_middle") - 2 * pl.col("bb_sd")).alias("bb_lower"),
        (pl.col("ret_1").rolling_std(20).over("symbol") * np.sqrt(252)).alias("vol20"),
        ((pl.col("rsi14") - pl.col("rsi14").rolling_mean(20)) / pl.col("rsi14").rolling_std(20)).over("symbol")
        .alias("rsi14_z"),
        pl.col("ret_5").rank("average").over("ts").truediv(pl.col("ret_5").count().over("ts")).alias("ret5_rank"),
    ).with_columns((pl.col("macd") - pl.col("macd_signal")).alias("macd_hist"))
    market = out.filter(pl.col("symbol") == bench).select("ts", pl.col("ret_1").alias("m"))
    out = out.join(market, on="ts", how="left")
    mean = lambda e: e.rolling_mean(20).over("symbol")  # noqa: E731
    beta = (mean(pl.col("ret_1") * pl.col("m")) - mean(pl.col("ret_1")) * mean(pl.col("m"))) / \
        (mean(pl.col("m") ** 2) - mean(pl.col("m")) ** 2)
    return out.with_columns(beta.alias("beta")).drop("m", "bb_sd")


# ---------------------------------------------------------------- peer: Alpha158 in polars
def polars_alpha158(df: pl.DataFrame) -> pl.DataFrame:
    """Qlib's expressions, one polars expression each (``min_samples=1`` as Qlib's ``min_periods=1``)."""
    o, h, lo, c, v = (pl.col(x) for x in ("open", "high", "low", "close", "volume"))
    df = df.sort("symbol", "ts").with_columns(pl.int_range(pl.len()).over("symbol").cast(pl.Float64).alias("t"))
    t = pl.col("t")
    ref_c, ref_v = c.shift(1).over("symbol"), v.shift(1).over("symbol")

    def roll(e, fn, d, *args, **kw):
        return getattr(e, f"rolling_{fn}")(*args, window_size=d, min_samples=1, **kw).over("symbol")

    exprs = {"KMID": (c - o) / o, "KLEN": (h - lo) / o, "KMID2": (c - o) / (h - lo + 1e-12),
             "KUP": (h - pl.max_horizontal(o, c)) / o, "KUP2": (h - pl.max_horizontal(o, c)) / (h - lo + 1e-12),
             "KLOW": (pl.min_horizontal(o, c) - lo) / o, "KLOW2": (pl.min_horizontal(o, c) - lo) / (h - lo + 1e-12),
             "KSFT": (2 * c - h - lo) / o, "KSFT2": (2 * c - h - lo) / (h - lo + 1e-12),
             "OPEN0": o / c, "HIGH0": h / c, "LOW0": lo / c}
    up, down = (c > ref_c).fill_null(False).cast(pl.Float64), (c < ref_c).fill_null(False).cast(pl.Float64)
    weighted = (c / ref_c - 1).abs() * v
    lv, lvr = (v + 1).log(), (v / ref_v + 1).log()
    for d in (5, 10, 20, 30, 60):
        mean_t, mean_c = roll(t, "mean", d), roll(c, "mean", d)
        slope = (roll(t * c, "mean", d) - mean_t * mean_c) / (roll(t * t, "mean", d) - mean_t ** 2)
        gain, loss, move = (c - ref_c).clip(lower_bound=0), (ref_c - c).clip(lower_bound=0), (c - ref_c).abs()
        vg, vl, vm = (v - ref_v).clip(lower_bound=0), (ref_v - v).clip(lower_bound=0), (v - ref_v).abs()
        hi, low = roll(h, "max", d), roll(lo, "min", d)
        argmax = h.rolling_map(lambda s: s.arg_max() + 1, window_size=d, min_samples=1).over("symbol")
        argmin = lo.rolling_map(lambda s: s.arg_min() + 1, window_size=d, min_samples=1).over("symbol")
        exprs.update({
            f"ROC{d}": c.shift(d).over("symbol") / c, f"MA{d}": mean_c / c, f"STD{d}": roll(c, "std", d) / c,
            f"BETA{d}": slope / c,
            f"RSQR{d}": pl.rolling_corr(t, c, window_size=d, min_samples=1).over("symbol") ** 2,
            f"RESI{d}": (c - (slope * t + mean_c - slope * mean_t)) / c,
            f"MAX{d}": hi / c, f"MIN{d}": low / c,
            f"QTLU{d}": roll(c, "quantile", d, 0.8, interpolation="linear") / c,
            f"QTLD{d}": roll(c, "quantile", d, 0.2, interpolation="linear") / c,
            f"RANK{d}": roll(c, "rank", d) / roll(c.is_not_null().cast(pl.Float64), "sum", d),
            f"RSV{d}": (c - low) / (hi - low + 1e-12),
            f"IMAX{d}": argmax / d, f"IMIN{d}": argmin / d, f"IMXD{d}": (argmax - argmin) / d,
            f"CORR{d}": pl.rolling_corr(c, lv, window_size=d, min_samples=1).over("symbol"),
            f"CORD{d}": pl.rolling_corr(c / ref_c, lvr, window_size=d, min_samples=1).over("symbol"),
            f"CNTP{d}": roll(up, "mean", d), f"CNTN{d}": roll(down, "mean", d),
            f"CNTD{d}": roll(up, "mean", d) - roll(down, "mean", d),
            f"SUMP{d}": roll(gain, "sum", d) / (roll(move, "sum", d) + 1e-12),
            f"SUMN{d}": roll(loss, "sum", d) / (roll(move, "sum", d) + 1e-12),
            f"SUMD{d}": (roll(gain, "sum", d) - roll(loss, "sum", d)) / (roll(move, "sum", d) + 1e-12),
            f"VMA{d}": roll(v, "mean", d) / (v + 1e-12), f"VSTD{d}": roll(v, "std", d) / (v + 1e-12),
            f"WVMA{d}": roll(weighted, "std", d) / (roll(weighted, "mean", d) + 1e-12),
            f"VSUMP{d}": roll(vg, "sum", d) / (roll(vm, "sum", d) + 1e-12),
            f"VSUMN{d}": roll(vl, "sum", d) / (roll(vm, "sum", d) + 1e-12),
            f"VSUMD{d}": (roll(vg, "sum", d) - roll(vl, "sum", d)) / (roll(vm, "sum", d) + 1e-12)})
    return df.select("symbol", "date", "ts", *(e.alias(name) for name, e in exprs.items()))


# ---------------------------------------------------------------- timing
def script(md, table: str, compute, out: Path, as_pandas: bool):
    """A user's script: read the lake table, compute, write one Parquet file."""
    from quantflow.storage.schemas import bar_time

    def run():
        bars = project_lake(md).read(table)
        bars = bars.with_columns(bar_time(bars.columns).alias("ts"))
        if as_pandas:
            compute(bars.to_pandas()).to_parquet(out)
        else:
            compute(bars).write_parquet(out)
    return run


def stage(md, bars: pl.DataFrame):
    window = RunWindow(bars["date"].min(), bars["date"].max(), tuple(md.symbols), "overwrite")
    return lambda: runner.run(md, window)


def row(label: str, ours: float, peer: float, peer_name: str, target: float, rows: int) -> dict:
    ratio = peer / ours
    print(f"  {label:<44}{rows / ours:>14,.0f}{rows / peer:>14,.0f}  {peer_name:<8}{ratio:>8.2f}x"
          f"{target:>7.0f}x  {'met' if ratio >= target else 'MISSED'}", flush=True)
    return {"case": label, "peer": peer_name, "ours_s": ours, "peer_s": peer, "ratio": ratio, "target": target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=40)
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--intraday-bars", type=int, default=25_000)
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--skip-alpha158", action="store_true", help="its polars peer takes minutes")
    args, _ = parser.parse_known_args()
    results = []
    print(f"  {'case':<44}{'ours rows/s':>14}{'peer rows/s':>14}  {'peer':<8}{'ratio':>9}{'target':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        daily = daily_bars(args.symbols, args.bars)
        intraday = intraday_bars(args.symbols, args.intraday_bars)
        for name, bars, table in [("daily", daily, "cdm_bars_daily"), ("intraday", intraday, "cdm_time_1m_bars")]:
            md = make_project(tmp / name, bars, table, DEFAULT_SET, None)
            bench = md.symbols[0]
            ours = best_of(stage(md, bars), args.repeat)
            polars_s = best_of(script(md, table, lambda b, bench=bench: polars_features(b, bench), tmp / "p.parquet", False),
                               args.repeat)
            results.append(row(f"stage, default set, {name} ({bars.height:,} bars)", ours, polars_s, "polars", 8,
                               bars.height))
            if not args.skip_pandas:
                pandas_s = best_of(script(md, table, lambda b, bench=bench: pandas_features(b, bench), tmp / "q.parquet", True), 1)
                results.append(row(f"stage, default set, {name}", ours, pandas_s, "pandas", 5, bars.height))
            results += _compute_only(md, bars, bench, name, args.repeat, args.skip_pandas)
        if args.skip_alpha158:
            return _save(results)
        md = make_project(tmp / "alpha", daily, "cdm_bars_daily", "", "alpha158")
        ours = best_of(stage(md, daily), args.repeat)
        peer = best_of(script(md, "cdm_bars_daily", polars_alpha158, tmp / "a.parquet", False), 1)
        results.append(row(f"stage, alpha158, daily ({daily.height:,} bars)", ours, peer, "polars", 5, daily.height))
        results.append(_alpha_kernel(daily, args.repeat))
    return _save(results)


def _save(results: list[dict]) -> int:
    out = HERE / "results" / "feature_engine.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return 0


def _compute_only(md, bars: pl.DataFrame, bench: str, name: str, repeat: int, skip_pandas: bool) -> list[dict]:
    """The engine's computation of the default set (every symbol from its first bar, in memory) against
    the polars and pandas computations in memory: what the stage's own work costs, without the lake."""
    from quantflow.feature_engine.engine import (
        SegmentData,
        bars_with_time,
        cross_sectional_features,
        time_series_features,
    )
    from quantflow.metadata.schema.feature_engine import FeatureDAG

    dag = FeatureDAG.compile(md.project.feature_engine)
    framed = bars_with_time(bars)
    counts = framed.group_by("symbol", maintain_order=True).len()["len"].to_numpy()
    starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    market = {bench: framed.filter(pl.col("symbol") == bench)}

    def ours():
        return cross_sectional_features(time_series_features(SegmentData(framed, starts, market), dag), dag)

    ours_s = best_of(ours, repeat)
    out = [row(f"compute, default set, {name}", ours_s, best_of(lambda: polars_features(framed, bench), repeat),
               "polars", 8, bars.height)]
    if not skip_pandas:
        pandas_in = framed.to_pandas()
        out.append(row(f"compute, default set, {name}", ours_s, best_of(lambda: pandas_features(pandas_in, bench), 1),
                       "pandas", 5, bars.height))
    return out


def _alpha_kernel(bars: pl.DataFrame, repeat: int) -> dict:
    """The Alpha158 kernel over the symbols in memory, against the polars expressions in memory."""
    from quantflow.feature_engine import kernels as k

    bars = bars.sort("symbol", "date").with_columns(pl.col("date").cast(pl.Datetime("ns")).alias("ts"))
    counts = bars.group_by("symbol", maintain_order=True).len()["len"].to_numpy()
    starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    cols = [bars[c].to_numpy() for c in ("open", "high", "low", "close", "volume")] + [np.full(bars.height, np.nan)]
    ours = best_of(lambda: k.alpha158(*cols, starts), repeat)
    began = time.perf_counter()
    polars_alpha158(bars)
    peer = time.perf_counter() - began
    return row(f"kernel, alpha158 ({bars.height:,} bars)", ours, peer, "polars", 5, bars.height)


if __name__ == "__main__":
    sys.exit(main())
