"""State-engine benchmark: the Numba kernels against the best polars / pandas formulation, side by side.

    python benchmarks/bench_state_engine.py [--trades 10_000_000] [--symbols 100] [--repeat 3]

Every case times each contender on the same in-memory data (best of ``--repeat`` runs, after one
untimed warm-up run that also compiles the Numba kernels) and prints ratios: how many times faster the
state engine is than its peer. Ratios, not absolute seconds, are the result: they survive a change of
machine. A JSON copy goes to ``benchmarks/results/`` (git-ignored).

Contenders are named after what they include:
- ``numba kernel``: the kernel on numpy arrays (no DataFrame conversion);
- ``engine``: the public API (``process_shard`` / ``bars_from_trades``): polars in, polars out;
- ``read floor``: a Numba loop that only reads the arrays the time-bar kernel reads (ts, price, size,
  direction), the memory-bandwidth bound for any single-pass bar kernel;
- ``polars``: the best polars formulation we found; ``pandas``: the best of several pandas ones.

Volume and dollar bars in polars are cut where the *cumulative* volume crosses a multiple of the
threshold (a vectorisable formulation); the engine restarts the count after each bar (the usual
definition, which needs a sequential loop). The two produce slightly different bars: that is the
price of vectorising, and the reason to compare against it as the best polars can do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantflow.state_engine import BarSpec, StateEngineSpec, bars_from_trades, process_shard
from quantflow.state_engine import bars as bk

UTC_NS = pl.Datetime("ns", "UTC")
DAY = dt.date(2024, 1, 2)
OPEN_NS = 1_704_205_800_000_000_000  # 2024-01-02 09:30 New York
SESSION_NS = 23_400 * 1_000_000_000
MINUTE_NS = 60_000_000_000


# ---------------------------------------------------------------------------------------------- data


def make_trades(n: int, seed: int, symbol: str = "SYM") -> dict[str, np.ndarray]:
    """One session of ``n`` trades: a log-normal price on a cent grid, integer sizes, random direction."""
    rng = np.random.default_rng(seed)
    ts = OPEN_NS + np.sort(rng.integers(0, SESSION_NS, n, dtype=np.int64))
    price = np.round(100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02 / np.sqrt(n), n))), 2)
    size = rng.integers(1, 1000, n).astype(np.float64)
    direction = rng.choice(np.array([-1, 0, 1], np.int8), n, p=[0.48, 0.04, 0.48])
    return {"ts": ts, "price": price, "size": size, "direction": direction}


def make_quotes(trades: dict[str, np.ndarray], ratio: float, seed: int) -> dict[str, np.ndarray]:
    """Quotes around the trade price path: one- or two-cent spreads, random sizes."""
    rng = np.random.default_rng(seed + 1)
    m = int(len(trades["ts"]) * ratio)
    ts = OPEN_NS + np.sort(rng.integers(0, SESSION_NS, m, dtype=np.int64))
    ts[0] = OPEN_NS  # a quote before the first trade
    mid = np.interp(ts, trades["ts"], trades["price"])
    bid = np.floor(mid * 100.0) / 100.0
    ask = bid + rng.integers(1, 3, m) / 100.0
    return {
        "ts": ts,
        "bid": bid,
        "ask": ask,
        "bid_size": rng.integers(1, 2000, m).astype(np.float64),
        "ask_size": rng.integers(1, 2000, m).astype(np.float64),
    }


def trades_frame(t: dict[str, np.ndarray], symbol: str | np.ndarray = "SYM") -> pl.DataFrame:
    n = len(t["ts"])
    sym = pl.Series("symbol", symbol) if isinstance(symbol, np.ndarray) else pl.repeat(symbol, n, eager=True)
    return pl.DataFrame(
        {
            "symbol": sym,
            "date": pl.repeat(DAY, n, eager=True),
            "ts": pl.Series(t["ts"]).cast(UTC_NS),
            "trade_id": np.arange(n, dtype=np.int64),
            "price": t["price"],
            "size": t["size"],
            "direction": t["direction"],
        }
    )


def quotes_frame(q: dict[str, np.ndarray]) -> pl.DataFrame:
    m = len(q["ts"])
    return pl.DataFrame(
        {
            "symbol": pl.repeat("SYM", m, eager=True),
            "date": pl.repeat(DAY, m, eager=True),
            "ts": pl.Series(q["ts"]).cast(UTC_NS),
            "quote_id": np.arange(m, dtype=np.int64),
            **{k: q[k] for k in ("bid", "ask", "bid_size", "ask_size")},
        }
    )


# ---------------------------------------------------------------------------------------------- timing


def best_of(fn, repeat: int) -> float:
    out = fn()  # warm-up (and Numba compile / cache load)
    del out
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        del out
    return best


@njit(cache=True)
def read_floor(ts, price, size, direction):
    """Reads every input the time-bar kernel reads, and nothing else."""
    a = 0
    b = 0.0
    c = 0.0
    d = 0
    for i in range(ts.shape[0]):
        a += ts[i]
        b += price[i]
        c += size[i]
        d += direction[i]
    return a, b, c, d


def _ro(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.flags.writeable = False
    return a


def kernel_time_bars(t, every_ns=MINUTE_NS, off=None):
    n = len(t["ts"])
    off = np.array([0, n], np.int64) if off is None else off
    n_seg = off.shape[0] - 1
    si, sf = bk.bar_fresh_state(BarSpec("time", every="1m"))
    return bk.time_bars(
        t["ts"], t["price"], t["size"], t["direction"], off, np.zeros(n_seg, np.int64),
        np.zeros(n_seg, np.int64), np.zeros(n_seg, np.bool_), every_ns, 0, np.ones(n_seg, np.bool_),
        np.tile(si, (n_seg, 1)), np.tile(sf, (n_seg, 1)), 1024,
    )  # fmt: skip


def kernel_threshold_bars(t, kind, threshold):
    n = len(t["ts"])
    si, sf = bk.bar_fresh_state(BarSpec("tick", threshold=1))
    return bk.threshold_bars(
        t["ts"], t["price"], t["size"], t["direction"], np.array([0, n], np.int64), np.zeros(1, np.int64),
        np.zeros(1, np.bool_), kind, np.full(1, threshold), np.ones(1, np.bool_), si[None], sf[None], 1024,
    )  # fmt: skip


def bar_aggregations() -> list[pl.Expr]:
    """The columns of a bar from its trades, as the polars peers compute them."""
    dollar = pl.col("price") * pl.col("size")
    return [
        pl.col("ts").first().alias("ts_first"),
        pl.col("ts").last().alias("ts_last"),
        pl.col("price").first().alias("open"),
        pl.col("price").max().alias("high"),
        pl.col("price").min().alias("low"),
        pl.col("price").last().alias("close"),
        pl.col("size").sum().alias("volume"),
        dollar.sum().alias("dollar_volume"),
        pl.len().alias("n_trades"),
        pl.col("size").filter(pl.col("direction") > 0).sum().alias("buy_volume"),
        pl.col("size").filter(pl.col("direction") < 0).sum().alias("sell_volume"),
    ]


def polars_time_bars(df: pl.DataFrame, by: str | None = None) -> pl.DataFrame:
    return (
        df.group_by_dynamic("ts", every="1m", group_by=by, label="left")
        .agg(bar_aggregations())
        .with_columns((pl.col("dollar_volume") / pl.col("volume")).alias("vwap"))
    )


def pandas_time_bars_variants(pdf: pd.DataFrame):
    """Three pandas formulations; the benchmark keeps the fastest."""
    aggs = {
        "open": ("price", "first"),
        "high": ("price", "max"),
        "low": ("price", "min"),
        "close": ("price", "last"),
        "volume": ("size", "sum"),
        "dollar_volume": ("dollar", "sum"),
        "n_trades": ("size", "count"),
        "buy_volume": ("buy", "sum"),
        "sell_volume": ("sell", "sum"),
        "ts_first": ("ts", "first"),
        "ts_last": ("ts", "last"),
    }

    def prep():
        return pdf.assign(
            dollar=pdf["price"] * pdf["size"],
            buy=pdf["size"].where(pdf["direction"] > 0, 0.0),
            sell=pdf["size"].where(pdf["direction"] < 0, 0.0),
        )

    def resample():
        out = prep().groupby(pd.Grouper(key="ts", freq="1min")).agg(**aggs)
        out = out[out["n_trades"] > 0]
        return out.assign(vwap=out["dollar_volume"] / out["volume"])

    def groupby_floor():
        d = prep()
        out = d.groupby(d["ts"].dt.floor("1min")).agg(**aggs)
        return out.assign(vwap=out["dollar_volume"] / out["volume"])

    def groupby_int():
        d = prep()
        out = d.groupby(d["ts"].astype("int64").to_numpy() // MINUTE_NS, sort=True).agg(**aggs)
        return out.assign(vwap=out["dollar_volume"] / out["volume"])

    return {"resample(Grouper)": resample, "groupby_floor": groupby_floor, "groupby_int": groupby_int}


def polars_cumsum_bars(df: pl.DataFrame, measure: pl.Expr, threshold: float, maintain_order: bool):
    """Vectorised threshold bars: cut where the cumulative measure crosses a multiple of the threshold."""
    bar_id = ((measure.cum_sum() - measure) // threshold).cast(pl.Int64).alias("bar_id")
    out = df.with_columns(bar_id).group_by("bar_id", maintain_order=maintain_order).agg(bar_aggregations())
    out = out.with_columns((pl.col("dollar_volume") / pl.col("volume")).alias("vwap"))
    return out if maintain_order else out.sort("bar_id")


def polars_enrich(trades: pl.DataFrame, quotes: pl.DataFrame, by_symbol: bool) -> pl.DataFrame:
    """join_asof (backward: last quote at or before the trade) plus the same columns as the engine.

    ``by_symbol=False`` joins on time alone, valid here because the data holds one symbol; the benchmark
    keeps the faster of the two.
    """
    q = quotes.select("symbol", "ts", pl.col("ts").alias("quote_ts"), "bid", "ask", "bid_size", "ask_size")
    mid = (pl.col("bid") + pl.col("ask")) / 2
    quote_dir = (pl.col("price") - pl.col("mid")).sign().fill_null(0)
    tick = pl.col("price").diff().sign()
    last_tick = pl.when(tick != 0).then(tick).forward_fill().fill_null(0)
    eff = 2 * (pl.col("price") - pl.col("mid")).abs()
    return (
        trades.drop("direction", strict=False)
        .join_asof(
            q, on="ts", by="symbol" if by_symbol else None, strategy="backward", check_sortedness=False
        )
        .with_columns(mid.alias("mid"))
        .with_columns(
            (pl.col("ask") - pl.col("bid")).alias("spread"),
            ((pl.col("ask") - pl.col("bid")) / pl.col("mid") * 1e4).alias("spread_bps"),
            quote_dir.alias("_qd"),
            last_tick.alias("_lt"),
            eff.alias("effective_spread"),
            (eff / pl.col("mid") * 1e4).alias("effective_spread_bps"),
        )
        .with_columns(
            pl.when(pl.col("_qd") != 0)
            .then(pl.col("_qd"))
            .otherwise(pl.col("_lt"))
            .cast(pl.Int8)
            .alias("direction"),
            pl.when(pl.col("_qd") != 0)
            .then(1)
            .when(pl.col("_lt") != 0)
            .then(2)
            .otherwise(0)
            .cast(pl.Int8)
            .alias("direction_method"),
        )
        .with_columns((pl.col("direction") * pl.col("size")).alias("signed_volume"))
        .drop("_qd", "_lt")
    )


# ---------------------------------------------------------------------------------------------- cases


class Report:
    """Collects the rows and prints them as they come."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, case: str, engine: str, engine_s: float, peer: str, peer_s: float, target: float | None):
        ratio = peer_s / engine_s
        met = None if target is None else bool(ratio >= target)
        self.rows.append(
            {
                "case": case,
                "engine": engine,
                "engine_s": engine_s,
                "peer": peer,
                "peer_s": peer_s,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )
        status = "" if met is None else ("met" if met else "MISSED")
        tgt = "" if target is None else f">= {target:g}x"
        print(
            f"{case:<34} {engine:<13} {engine_s * 1e3:9.1f} ms  {peer:<26} {peer_s * 1e3:9.1f} ms"
            f"  {ratio:7.2f}x {tgt:>8} {status}",
            flush=True,
        )


def bench_time_bars(rep: Report, t: dict, df: pl.DataFrame, repeat: int, with_pandas: bool) -> None:
    case = "time bars 1m, 1 symbol"
    numba_s = best_of(lambda: kernel_time_bars(t), repeat)
    engine_s = best_of(lambda: bars_from_trades(df, BarSpec("time", every="1m")), repeat)
    floor_s = best_of(lambda: read_floor(t["ts"], t["price"], t["size"], t["direction"]), repeat)
    polars_s = best_of(lambda: polars_time_bars(df), repeat)
    rep.add(case, "numba kernel", numba_s, "polars group_by_dynamic", polars_s, 2.5)
    rep.add(case, "engine", engine_s, "polars group_by_dynamic", polars_s, None)
    rep.add(case, "numba kernel", numba_s, "read floor (speed fraction)", floor_s, 0.5)
    if with_pandas:
        pdf = df.select("ts", "price", "size", "direction").to_pandas()
        variants = pandas_time_bars_variants(pdf)
        times = {k: best_of(f, max(1, repeat - 1)) for k, f in variants.items()}
        best = min(times, key=times.get)
        rep.add(case, "numba kernel", numba_s, f"pandas {best}", times[best], 5.0)


def bench_threshold_bars(
    rep: Report, t: dict, df: pl.DataFrame, repeat: int, vol_thr: float, trades_per_bar: int
):
    for label, kind, thr, measure in (
        ("volume", bk.KIND_VOLUME, vol_thr, pl.col("size")),
        ("dollar", bk.KIND_DOLLAR, vol_thr * 100.0, pl.col("price") * pl.col("size")),
    ):
        case = f"{label} bars (~{trades_per_bar} trades/bar)"
        numba_s = best_of(lambda kind=kind, thr=thr: kernel_threshold_bars(t, kind, thr), repeat)
        spec = BarSpec(label, threshold=thr)
        engine_s = best_of(lambda spec=spec: bars_from_trades(df, spec), repeat)
        polars_s = min(
            best_of(lambda mo=mo, m=measure, thr=thr: polars_cumsum_bars(df, m, thr, mo), repeat)
            for mo in (True, False)
        )
        rep.add(case, "numba kernel", numba_s, "polars cumsum+group_by", polars_s, 10.0)
        rep.add(case, "engine", engine_s, "polars cumsum+group_by", polars_s, None)


def bench_many_symbols(rep: Report, n: int, k: int, seed: int, repeat: int) -> None:
    per = n // k
    parts = [make_trades(per, seed + 10 + i) for i in range(k)]
    t = {key: _ro(np.concatenate([p[key] for p in parts])) for key in parts[0]}
    df = trades_frame(t, np.repeat(np.array([f"S{i:03d}" for i in range(k)]), per))
    off = np.arange(0, per * k + 1, per, dtype=np.int64)
    case = f"time bars 1m, {k} symbols"
    numba_s = best_of(lambda: kernel_time_bars(t, off=off), repeat)
    engine_s = best_of(lambda: bars_from_trades(df, BarSpec("time", every="1m")), repeat)
    polars_s = best_of(lambda: polars_time_bars(df, by="symbol"), repeat)
    rep.add(case, "numba kernel", numba_s, "polars gbd(group_by=symbol)", polars_s, 8.0)
    rep.add(case, "engine", engine_s, "polars gbd(group_by=symbol)", polars_s, None)


def bench_enrich_and_pass(
    rep: Report, trades: pl.DataFrame, quotes: pl.DataFrame, repeat: int, vol_thr: float
):
    enrich_only = StateEngineSpec(bars=(), lob_interval=None)
    engine_s = best_of(lambda: process_shard(trades, quotes, enrich_only), repeat)
    polars_s = min(best_of(lambda by=by: polars_enrich(trades, quotes, by), repeat) for by in (True, False))
    rep.add("enriched trades", "engine", engine_s, "polars join_asof+exprs", polars_s, 1.0)

    bars = (
        BarSpec("time", every="1m"),
        BarSpec("volume", threshold=vol_thr),
        BarSpec("dollar", threshold=vol_thr * 100.0),
    )
    whole = StateEngineSpec(bars=bars, lob_interval=None)

    def polars_pipeline():
        e = polars_enrich(trades, quotes, False)
        return (
            e,
            polars_time_bars(e),
            polars_cumsum_bars(e, pl.col("size"), vol_thr, True),
            polars_cumsum_bars(e, pl.col("price") * pl.col("size"), vol_thr * 100.0, True),
        )

    engine_s = best_of(lambda: process_shard(trades, quotes, whole), repeat)
    polars_s = best_of(polars_pipeline, repeat)
    rep.add("single pass: enriched+time+vol+$", "engine", engine_s, "polars pipeline", polars_s, 2.0)


def run(args) -> dict:
    n, repeat = args.trades, args.repeat
    vol_thr = float(args.volume_bar_trades * 500)  # mean trade size is ~500 shares
    print(f"state engine benchmark: {n:,} trades, best of {repeat}, {os.cpu_count()} cores\n")
    rep = Report()
    t = {k: _ro(v) for k, v in make_trades(n, args.seed).items()}
    df = trades_frame(t)
    bench_time_bars(rep, t, df, repeat, not args.skip_pandas)
    gc.collect()
    bench_threshold_bars(rep, t, df, repeat, vol_thr, args.volume_bar_trades)
    gc.collect()
    bench_many_symbols(rep, n, args.symbols, args.seed, repeat)
    gc.collect()
    quotes = quotes_frame(make_quotes(t, args.quote_ratio, args.seed))
    trades = df.drop("direction")
    del df, t
    gc.collect()
    bench_enrich_and_pass(rep, trades, quotes, repeat, vol_thr)
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "trades": n,
        "symbols": args.symbols,
        "quote_ratio": args.quote_ratio,
        "repeat": repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {"polars": pl.__version__, "pandas": pd.__version__, "numpy": np.__version__},
        "rows": rep.rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trades", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    p.add_argument("--symbols", type=int, default=100, help="symbols in the multi-symbol time-bar case")
    p.add_argument("--quote-ratio", type=float, default=1.0, help="quotes per trade")
    p.add_argument(
        "--volume-bar-trades", type=int, default=2000, help="about this many trades per volume bar"
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--skip-pandas", action="store_true", help="pandas needs several GB at 50M trades")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"state_engine_{dt.datetime.now():%Y%m%d_%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    missed = [r for r in result["rows"] if r["met"] is False]
    print(f"\n{len(missed)} target(s) missed; results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
