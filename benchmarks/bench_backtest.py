"""The backtest stage's engine (vectorbt), and the whole stage, against a straightforward pandas loop of the same
rebalanced backtest.

Same run, same data: synthetic, seeded: ``--symbols`` x ``--days`` log-normal closes, opens = the previous
close times a small noise, long-only target weights (random, about a quarter of the symbols at zero, summing
to 0.95) decided every 5 days. Cases:

- ``backtest``: ``engine.execution_sizes(weights, close.index, lag=1)`` + ``engine.simulate(close, open, sizes,
  fees=0.0005, slippage=0.0005, init_cash=1e6)`` + ``pf.value()`` (vectorbt ``Portfolio.from_orders``,
  target percents, one group sharing cash, ``call_seq="auto"``) against ``pandas_backtest``: a loop over the
  dates with pandas rows: at an execution bar the portfolio value at the execution price, target shares
  ``w * V / price``, orders sorted by value ascending (sells fund buys, as ``call_seq="auto"``), buys at
  ``price * (1 + slippage)`` and sells at ``price * (1 - slippage)``, proportional fees, buys limited by the
  cash; equity at each close. The loop's equity curve must equal vectorbt's within 1e-9 (relative, checked
  before anything is timed). The first engine call of the process is timed on its own (``first_call_s``:
  loading, or compiling, vectorbt's Numba functions; ``import vectorbt`` is timed apart); the timed calls
  are warm.
- ``sweep``: ``engine.sweep`` over ``--combinations`` combinations of fees x slippage x execution lag x gross
  (one column group per combination, in batches of ``--chunk`` combinations: a batch holds several
  ``days x (combinations x symbols)`` float64 arrays, 1.6 GB each for 1,000 x 40 x 5,000; here 25 a call was
  the fastest, 100 a call 2.5x slower), in combinations/s, against the pandas loop run per
  combination. The loop is timed on ``--loop-sample`` combinations (the most expensive one of the grid, the
  cash-limited buys at the highest gross, among them) and its cost per combination extrapolated; its final
  equity must equal the sweep's (1e-9 relative).
- ``stage``: the whole backtest stage as a user runs it, ``quantflow.backtest.runner.run(md, window)`` over the
  whole period, against the script a researcher writes for the same outputs from the same lake. Setup
  (untimed): a temp project whose lake holds ``cdm_bars_daily`` (the same closes and opens, highs and lows
  around them, a volume) and ``pf_weights`` (the same weights: a row for every symbol at every rebalance
  date, one configuration key), ``backtest: {fees: 0.0005, slippage: 0.0005}``, no sweep. The stage reads
  both tables, simulates the strategy, an equal-weight benchmark (at the same execution bars) and
  buy-and-hold with vectorbt, computes the metrics and trading figures (orders, trades, turnover,
  exposure) and writes the trading report JSON, the equity curve and the orders (Parquet) to the blob
  store. The peer script reads both tables with ``pl.read_parquet`` over the hive folders, pivots them to
  wide pandas, runs ``pandas_backtest`` for the strategy and the two benchmarks, computes the headline
  metrics with empyrical (total and annual return, volatility, Sharpe, Sortino, Calmar, max drawdown) and
  writes an equity-curve Parquet and a JSON report. Before anything is timed, its three equity curves must
  equal those of the Parquet file the stage stored, and its headline metrics the stage's (1e-9 relative).
  Each side's first call is reported (``first_call_s``, ``peer_first_call_s``; ``import vectorbt`` is timed
  apart, before any case); the timed calls are warm, alternating, ``--repeat`` of each. ``--profile``
  prints a cProfile (top 15, cumulative) of one more stage call.

Each side runs ``--repeat`` times (the loop once per repeat); the table gives the median and the spread of
``peer / quantflow`` (the loop or the peer script over the engine or the stage; above 1: quantflow is
faster). ``--cases`` picks the cases (default all three). Peak RSS (``ru_maxrss``) is read after the setup,
after the first backtests, after the first sweep and after the stage case.

    python benchmarks/bench_backtest.py [--cases backtest,sweep,stage] [--symbols 40] [--days 5000]
                                        [--combinations 1000] [--chunk 25] [--loop-sample 5] [--repeat 5]
                                        [--profile]
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from quantflow.backtest import engine  # noqa: E402

FEES, SLIPPAGE, INIT_CASH, LAG, EVERY, YEAR_DAYS, TOLERANCE = 0.0005, 0.0005, 1e6, 1, 5, 252, 1e-9


# ---------------------------------------------------------------- data
def make_data(symbols: int, days: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Closes, opens (dates x symbols) and target weights (rebalance dates x symbols, long-only, sum 0.95)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2000-01-03", periods=days)
    names = [f"S{i:02d}" for i in range(symbols)]
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, (days, symbols)), axis=0))
    prev = np.vstack([close[:1], close[:-1]])
    open_ = prev * np.exp(rng.normal(0.0, 0.005, (days, symbols)))
    rebalance = dates[::EVERY]
    w = rng.random((len(rebalance), symbols)) * (rng.random((len(rebalance), symbols)) > 0.25)
    w = 0.95 * w / w.sum(axis=1, keepdims=True)
    return (pd.DataFrame(close, index=dates, columns=names), pd.DataFrame(open_, index=dates, columns=names),
            pd.DataFrame(w, index=rebalance, columns=names))


def make_grid(n: int) -> list[dict[str, float]]:
    """fees x slippage x execution lag x gross: 10 x 5 x 2 x 10 = 1,000 at the default; a smaller ``n``
    takes the first ``n`` of that product, a larger one more fee levels."""
    slippages, lags, grosses = np.linspace(0.0, 0.002, 5), (1, 2), np.linspace(0.5, 1.4, 10)
    per_fee = len(slippages) * len(lags) * len(grosses)
    fees = np.linspace(0.0, 0.0018, max(10, -(-n // per_fee)))
    grid = [{"fees": float(f), "slippage": float(s), "execution_lag": lag, "gross": float(g)}
            for f, s, lag, g in itertools.product(fees, slippages, lags, grosses)]
    return grid[:n]


# ---------------------------------------------------------------- the pandas loop
def pandas_backtest(close: pd.DataFrame, price: pd.DataFrame, weights: pd.DataFrame, *, lag: int, gross: float,
                    fees: float, slippage: float, init_cash: float) -> pd.Series:
    """The rebalanced backtest as a researcher writes it with pandas: equity at each close."""
    dates = close.index
    targets = {}
    for date, w in weights.iterrows():
        at = dates.get_loc(date) + lag
        if at < len(dates):
            targets[dates[at]] = w * gross
    cash = init_cash
    shares = pd.Series(0.0, index=close.columns)
    equity = pd.Series(np.nan, index=dates)
    for date in dates:
        if date in targets:
            px = price.loc[date]
            value = cash + (shares * px).sum()
            target_value = targets[date] * value
            order_value = target_value - shares * px
            for symbol in order_value.sort_values(kind="stable").index:  # sells first: they fund the buys
                p = px[symbol]
                delta = target_value[symbol] / p - shares[symbol]
                if delta < 0:
                    proceeds = -delta * p * (1 - slippage)
                    cash += proceeds - proceeds * fees
                    shares[symbol] += delta
                elif delta > 0:
                    paid = p * (1 + slippage)
                    cost = delta * paid
                    total = cost + cost * fees
                    if total > cash:  # not enough cash: buy what it pays for, fees included
                        delta = cash / (1 + fees) / paid
                        total = cash
                    cash -= total
                    shares[symbol] += delta
        equity[date] = cash + (shares * close.loc[date]).sum()
    return equity


# ---------------------------------------------------------------- cases
def engine_backtest(close, price, weights) -> pd.Series:
    sizes = engine.execution_sizes(weights, close.index, lag=LAG)
    pf = engine.simulate(close, price, sizes, fees=FEES, slippage=SLIPPAGE, init_cash=INIT_CASH)
    return pf.value()


def loop_backtest(close, price, weights) -> pd.Series:
    return pandas_backtest(close, price, weights, lag=LAG, gross=1.0, fees=FEES, slippage=SLIPPAGE,
                           init_cash=INIT_CASH)


def engine_sweep(close, price, weights, grid, chunk: int) -> pd.DataFrame:
    """The leaderboard of the whole grid (``engine.sweep`` runs ``chunk`` combinations per vectorbt call)."""
    board, _ = engine.sweep(close, price, weights, grid, init_cash=INIT_CASH, year_days=YEAR_DAYS, chunk=chunk)
    return board.sort_index()


def loop_combination(close, price, weights, g) -> pd.Series:
    return pandas_backtest(close, price, weights, lag=int(g["execution_lag"]), gross=g["gross"], fees=g["fees"],
                           slippage=g["slippage"], init_cash=INIT_CASH)


# ---------------------------------------------------------------- the stage case
STAGE_YAML = """\
project:
  name: bench_backtest_stage
  symbols: [{symbols}]
  label_engine:
    labels:
      - {{name: fwd5, method: fixed_horizon, horizon: 5}}
  feature_engine:
    features:
      - {{name: ret, kind: returns, params: {{horizons: [1, 5]}}}}
  models:
    - name: rf
      kind: ml
      label_set: fwd5
      estimator: RandomForest
      walk_forward: {{train: 120, test: 40}}
  portfolio:
    model: rf
  backtest:
    fees: {fees}
    slippage: {slippage}
"""
STAGE_CONFIG = "bench0000000000"  # the pf_weights rows' portfolio configuration key (one configuration)
HEADLINE = ("total_return", "annual_return", "annual_volatility", "sharpe", "sortino", "calmar", "max_drawdown")


def stage_project(root: Path, close: pd.DataFrame, open_: pd.DataFrame, weights: pd.DataFrame, seed: int):
    """A project whose lake holds ``cdm_bars_daily`` (the closes and opens, highs and lows around them, a
    volume) and ``pf_weights`` (every symbol at every rebalance date, one configuration), as the ingest,
    transform and portfolio stages leave them; no portfolio_optimization artifact, no model artifacts."""
    import polars as pl

    from quantflow.metadata import get_metadata_manager
    from quantflow.portfolio.runner import WEIGHTS_SPEC
    from quantflow.storage.project import project_lake
    from quantflow.storage.schemas import spec_for_kind

    meta = root / "project_metadata"
    meta.mkdir(parents=True)
    (meta / "project.yaml").write_text(STAGE_YAML.format(symbols=", ".join(close.columns), fees=FEES,
                                                         slippage=SLIPPAGE))
    md = get_metadata_manager(root).load_all()
    rng = np.random.default_rng(seed + 1)
    names, days = list(close.columns), close.index.values.astype("datetime64[D]")
    c, o = close.to_numpy().T.ravel(), open_.to_numpy().T.ravel()  # symbol-major, like the lake's partitions
    wick = np.abs(rng.normal(0.0, 0.005, (2, c.size)))
    bars = pl.DataFrame({"symbol": np.repeat(names, len(days)), "date": np.tile(days, len(names)), "open": o,
                         "high": np.maximum(o, c) * (1 + wick[0]), "low": np.minimum(o, c) * (1 - wick[1]),
                         "close": c, "volume": rng.lognormal(12.0, 0.3, c.size)})
    lake = project_lake(md)
    lake.write(spec_for_kind("cdm_bars_daily", "bars_daily"), bars, "overwrite")
    w = weights.to_numpy().T.ravel()
    rows = pl.DataFrame({"symbol": np.repeat(names, len(weights)),
                         "date": np.tile(weights.index.values.astype("datetime64[D]"), len(names)),
                         "weight": w, "target": w, "signal": None, "expected_return": None, "method": "hrp",
                         "model": "rf", "config": STAGE_CONFIG},
                        schema_overrides={"signal": pl.Float64, "expected_return": pl.Float64})
    rows = rows.with_columns(ts=pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"))
    lake.write(WEIGHTS_SPEC, rows, "overwrite")
    return md


def stage_run(md, window):
    from quantflow.backtest import runner

    return runner.run(md, window)


def stage_equity(md, result) -> pd.DataFrame:
    """The equity curve parquet the stage stored (dates x strategy, equal_weight, buy_and_hold, ...)."""
    import polars as pl

    from quantflow.storage.project import project_artifacts

    store = project_artifacts(md, "backtest")
    frame = pl.read_parquet(io.BytesIO(store.get(result.artifacts["equity_curve_url"]))).to_pandas()
    return frame.set_index(pd.to_datetime(frame["date"])).drop(columns="date")


def peer_metrics(returns: pd.Series) -> dict[str, float]:
    import empyrical

    return {"total_return": float((1 + returns).prod() - 1),
            "annual_return": float(empyrical.annual_return(returns, annualization=YEAR_DAYS)),
            "annual_volatility": float(empyrical.annual_volatility(returns, annualization=YEAR_DAYS)),
            "sharpe": float(empyrical.sharpe_ratio(returns, annualization=YEAR_DAYS)),
            "sortino": float(empyrical.sortino_ratio(returns, annualization=YEAR_DAYS)),
            "calmar": float(empyrical.calmar_ratio(returns, annualization=YEAR_DAYS)),
            "max_drawdown": float(empyrical.max_drawdown(returns))}


def peer_script(lake_root: Path, out: Path) -> pd.DataFrame:
    """What a researcher writes for the same outputs: the lake's two tables read with polars, pivoted to
    wide pandas, the pandas loop for the strategy and the two benchmarks, empyrical's metrics, a parquet and
    a JSON written. Returns the equity curves (dates x strategy, equal_weight, buy_and_hold)."""
    import polars as pl

    rows = pl.read_parquet(lake_root / "pf_weights", hive_partitioning=True)
    rows = rows.filter(pl.col("config") == rows["config"][-1])
    weights = rows.pivot(on="symbol", index="date", values="weight").sort("date").to_pandas().set_index("date")
    weights.index = pd.to_datetime(weights.index)
    weights = weights[sorted(weights.columns)]
    bars = pl.read_parquet(lake_root / "cdm_bars_daily", hive_partitioning=True,
                           columns=["date", "open", "close", "symbol"])

    def wide(column: str) -> pd.DataFrame:
        frame = bars.pivot(on="symbol", index="date", values=column).sort("date").to_pandas().set_index("date")
        frame.index = pd.to_datetime(frame.index)
        return frame[weights.columns].loc[weights.index[0]:]

    close, price = wide("close").ffill(), wide("open")
    price = price.where(price.notna(), close)
    start = close.index[close.index.get_loc(weights.index[0]) + LAG]  # the first execution bar: from cash
    equal = pd.DataFrame(1.0 / weights.shape[1], index=weights.index, columns=weights.columns)
    costs = {"lag": LAG, "gross": 1.0, "fees": FEES, "slippage": SLIPPAGE, "init_cash": INIT_CASH}
    equity = pd.DataFrame({"strategy": pandas_backtest(close, price, weights, **costs),
                           "equal_weight": pandas_backtest(close, price, equal, **costs),
                           "buy_and_hold": pandas_backtest(close, price, equal.iloc[:1], **costs)}).loc[start:]
    returns = equity.pct_change()
    returns.iloc[0] = equity.iloc[0] / INIT_CASH - 1
    report = {"first_execution": str(start.date()), "fees": FEES, "slippage": SLIPPAGE,
              "metrics": {name: peer_metrics(returns[name]) for name in equity}}
    curves = equity.join(returns.add_suffix("_return"))
    curves["drawdown"] = equity["strategy"] / equity["strategy"].cummax() - 1
    out.mkdir(parents=True, exist_ok=True)
    pl.from_pandas(curves.rename_axis("date").reset_index()).write_parquet(out / "equity_curve.parquet")
    (out / "trading_report.json").write_text(json.dumps(report, indent=2))
    return equity


def stage_case(close, price, weights, repeat: int, seed: int, profile: bool) -> dict:
    from quantflow.compute.stage import RunWindow

    with tempfile.TemporaryDirectory(prefix="bench_backtest_stage_") as tmp:
        root = Path(tmp) / "project"
        began = time.perf_counter()
        md = stage_project(root, close, price, weights, seed)
        setup_s = time.perf_counter() - began
        # overwrite: a skip_if_exists rerun would keep the first run's result (run records) and compute nothing
        window = RunWindow.resolve(md.symbols, close.index[0].date(), close.index[-1].date(), write_mode="overwrite")
        lake_root, peer_out = root / md.project.storage.lake_root, Path(tmp) / "peer"
        print(f"  stage: project with {len(md.symbols)} symbols x {len(close):,} days of cdm_bars_daily and "
              f"{weights.size:,} pf_weights rows written in {setup_s:.1f} s", flush=True)
        first_s, result = timed(lambda: stage_run(md, window))
        peer_first_s, peer = timed(lambda: peer_script(lake_root, peer_out))
        stored = stage_equity(md, result)
        assert stored.index.equals(peer.index), "the peer's equity curve has other dates than the stage's"
        errors = {name: relative_error(peer[name], stored[name]) for name in ("strategy", "equal_weight",
                                                                              "buy_and_hold")}
        worst = max(errors.values())
        assert worst <= TOLERANCE, f"the peer's equity curves differ from the stage's: {errors}"
        report = json.loads((peer_out / "trading_report.json").read_text())["metrics"]
        metric_errors = [relative_error(report[name][k], (result.metrics if name == "strategy" else
                                                          result.benchmarks[name])[k])
                         for name in ("strategy", "equal_weight", "buy_and_hold") for k in HEADLINE]
        assert max(metric_errors) <= TOLERANCE, f"the peer's metrics differ: {max(metric_errors):.3g}"
        print(f"  stage: first call {first_s:.2f} s, the peer's first {peer_first_s:.2f} s; equity curves equal "
              f"(max relative error {worst:.2g} over {len(stored):,} closes x 3 curves), headline metrics "
              f"equal (max relative error {max(metric_errors):.2g}); {result.headline()}", flush=True)
        stage_s, peer_s = [], []
        for r in range(repeat):
            t, _ = timed(lambda: stage_run(md, window))
            stage_s.append(t)
            t, _ = timed(lambda: peer_script(lake_root, peer_out))
            peer_s.append(t)
            print(f"  stage repeat {r + 1}/{repeat}: stage {stage_s[-1]:.2f} s, peer script {peer_s[-1]:.2f} s",
                  flush=True)
        profile_text = None
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(stage_run, md, window)
            buffer = io.StringIO()
            pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(15)
            profile_text = buffer.getvalue()
    ratio = [pe / st for pe, st in zip(peer_s, stage_s)]
    return {"setup_s": setup_s, "first_call_s": first_s, "peer_first_call_s": peer_first_s,
            "max_relative_error": worst, "metrics_max_relative_error": max(metric_errors), "stage_s": stage_s,
            "peer_s": peer_s, "ratio": ratio, **spread(ratio), "profile": profile_text}


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def timed(fn):
    gc.collect()
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


CASES = ("backtest", "sweep", "stage")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of backtest, sweep, stage")
    p.add_argument("--symbols", type=int, default=40)
    p.add_argument("--days", type=int, default=5000)
    p.add_argument("--combinations", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=25, help="combinations per engine.sweep call")
    p.add_argument("--loop-sample", type=int, default=5, help="combinations the pandas loop runs per repeat")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="stage: cProfile one more call (top 15, cumulative)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args, _ = p.parse_known_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        p.error(f"--cases: {', '.join(unknown) or 'none given'}; choose among {', '.join(CASES)}")
    run_bt, run_sw = "backtest" in cases, "sweep" in cases

    close, price, weights = make_data(args.symbols, args.days, args.seed)
    grid = make_grid(args.combinations)
    rng = np.random.default_rng(args.seed)
    worst = max(range(len(grid)), key=lambda i: (grid[i]["gross"], grid[i]["fees"] + grid[i]["slippage"]))
    others = [i for i in range(len(grid)) if i != worst]
    sample = sorted({worst, *rng.choice(others, min(args.loop_sample, len(grid)) - 1, replace=False).tolist()})
    results: dict = {"cases": cases, "symbols": args.symbols, "days": args.days, "rebalances": len(weights),
                     "fees": FEES, "slippage": SLIPPAGE, "lag": LAG, "repeat": args.repeat}
    if run_sw:
        results.update(combinations=len(grid), chunk=args.chunk, loop_sample=sample)
    print(f"  {args.symbols} symbols x {args.days:,} days, a rebalance every {EVERY} days ({len(weights):,}), "
          f"lag {LAG}, fees {FEES}, slippage {SLIPPAGE}; cases {', '.join(cases)}", flush=True)
    rss = {"setup_mb": peak_mb()}

    # first calls: vectorbt's import, then its Numba functions (compiled, or loaded from the on-disk cache)
    import_s, _ = timed(lambda: __import__("vectorbt"))
    results["import_vectorbt_s"] = import_s
    first_s = sweep_first_s = None
    if run_bt:
        first_s, vbt_equity = timed(lambda: engine_backtest(close, price, weights))
        results["first_call_s"] = first_s
    if run_sw:
        small = [grid[i] for i in sample[:2]]
        sweep_first_s, _ = timed(lambda: engine_sweep(close.iloc[:200], price.iloc[:200], weights.iloc[:40], small,
                                                      2))
        results["sweep_first_call_s"] = sweep_first_s
    print(f"  import vectorbt {import_s:.2f} s"
          + (f"; first engine call {first_s:.2f} s (Numba functions)" if run_bt else "")
          + (f"; first sweep call (2 combinations x 200 days) {sweep_first_s:.2f} s" if run_sw else ""), flush=True)

    if run_bt:  # the loop must make the same equity curve before anything is timed
        loop_equity = loop_backtest(close, price, weights)
        err = relative_error(loop_equity, vbt_equity)
        assert err <= TOLERANCE, f"pandas loop differs from vectorbt: max relative error {err:.3g}"
        results["backtest_max_relative_error"] = err
        print(f"  equity curves equal: max relative error {err:.2g} over {len(close):,} closes "
              f"(final equity {vbt_equity.iloc[-1]:,.2f})", flush=True)

    bt_engine, bt_loop, sw_engine, sw_loop, sw_errors = [], [], [], [], []
    for r in range(args.repeat if run_bt or run_sw else 0):
        line = [f"  repeat {r + 1}/{args.repeat}:"]
        if run_bt:
            t, _ = timed(lambda: engine_backtest(close, price, weights))
            bt_engine.append(t)
            t, _ = timed(lambda: loop_backtest(close, price, weights))
            bt_loop.append(t)
            if r == 0:
                rss["after_backtests_mb"] = peak_mb()
            line.append(f"backtest engine {bt_engine[-1]:.3f} s, loop {bt_loop[-1]:.2f} s;")
        if run_sw:
            t, board = timed(lambda: engine_sweep(close, price, weights, grid, args.chunk))
            sw_engine.append(t)
            if r == 0:
                rss["after_sweep_mb"] = peak_mb()
            loop_s = 0.0
            for i in sample:
                t, equity = timed(lambda i=i: loop_combination(close, price, weights, grid[i]))
                loop_s += t
                sw_errors.append(relative_error(equity.iloc[-1], INIT_CASH * (1 + board.loc[i, "total_return"])))
            sw_loop.append(loop_s / len(sample))
            del board
            line.append(f"sweep {sw_engine[-1]:.1f} s ({len(grid) / sw_engine[-1]:,.1f} combinations/s), loop "
                        f"{sw_loop[-1]:.2f} s a combination")
        print(" ".join(line).rstrip(";"), flush=True)
    if run_sw:
        sw_err = max(sw_errors)
        assert sw_err <= TOLERANCE, f"pandas loop differs from the sweep: max relative error {sw_err:.3g}"
        results["sweep_max_relative_error"] = sw_err

    if "stage" in cases:
        results["stage"] = stage_case(close, price, weights, args.repeat, args.seed, args.profile)
        rss["after_stage_mb"] = peak_mb()

    print(f"\n  {'case':<46}{'quantflow':>14}{'peer':>14}{'peer/qf':>13}{'spread':>16}")
    if run_bt:
        bt_ratio = [lo / en for lo, en in zip(bt_loop, bt_engine)]
        results["backtest"] = {"engine_s": bt_engine, "loop_s": bt_loop, "ratio": bt_ratio, **spread(bt_ratio)}
        print(f"  {f'backtest, {args.symbols} x {args.days:,} (s)':<46}{statistics.median(bt_engine):>14.3f}"
              f"{statistics.median(bt_loop):>14.2f}{statistics.median(bt_ratio):>12.1f}x"
              f"{f'{min(bt_ratio):.1f}-{max(bt_ratio):.1f}x':>16}")
    if run_sw:
        sw_rate = [len(grid) / t for t in sw_engine]
        loop_rate = [1.0 / t for t in sw_loop]
        sw_ratio = [s / lo for s, lo in zip(sw_rate, loop_rate)]
        results["sweep"] = {"engine_s": sw_engine, "combinations_per_s": sw_rate, "loop_s_per_combination": sw_loop,
                            "loop_combinations_per_s": loop_rate, "ratio": sw_ratio, **spread(sw_ratio)}
        print(f"  {f'sweep, {len(grid):,} combinations (combinations/s)':<46}{statistics.median(sw_rate):>14.1f}"
              f"{statistics.median(loop_rate):>14.2f}{statistics.median(sw_ratio):>12.1f}x"
              f"{f'{min(sw_ratio):.1f}-{max(sw_ratio):.1f}x':>16}")
    if "stage" in cases:
        st = results["stage"]
        spread_text = f"{st['min']:.2f}-{st['max']:.2f}x"
        print(f"  {f'stage, {args.symbols} x {args.days:,} (s)':<46}{statistics.median(st['stage_s']):>14.2f}"
              f"{statistics.median(st['peer_s']):>14.2f}{st['median']:>12.2f}x"
              f"{spread_text:>16}")
    if run_sw:
        print(f"  sweep: engine.sweep in batches of {args.chunk} combinations ({-(-len(grid) // args.chunk)} calls); "
              f"the pandas loop timed on {len(sample)} combinations ({', '.join(map(str, sample))}) per repeat and "
              f"extrapolated per combination; its final equity equals the sweep's (max relative error {sw_err:.2g})")
    if "stage" in cases:
        st = results["stage"]
        print(f"  stage: backtest.runner.run over the whole period against the peer script (the lake read with "
              f"polars, the pandas loop x 3, empyrical, a parquet and a JSON); equity curves equal (max relative "
              f"error {st['max_relative_error']:.2g}); first stage call {st['first_call_s']:.2f} s, the peer's "
              f"{st['peer_first_call_s']:.2f} s")
    print(f"  import vectorbt {import_s:.2f} s"
          + (f"; first engine call {first_s:.2f} s (vectorbt's Numba functions)" if run_bt else "")
          + f"; medians over {args.repeat} warm runs")
    print("  peak RSS: " + ", ".join(f"{mb:,.0f} MB {name[:-3].replace('_', ' ')}" for name, mb in rss.items()))
    results["peak_rss"] = rss
    if results.get("stage", {}).get("profile"):
        print("\n  cProfile of one warm stage call (top 15, cumulative):\n" + results["stage"]["profile"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_backtest_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"  written {path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
