"""The backtest stage's engine (vectorbt) against a straightforward pandas loop of the same rebalanced backtest.

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

Each side runs ``--repeat`` times (the loop once per repeat); the table gives the median and the spread of
``loop / engine`` (above 1: the engine is faster). Peak RSS (``ru_maxrss``) is read after the setup, after the
first backtests and after the first sweep.

    python benchmarks/bench_backtest.py [--symbols 40] [--days 5000] [--combinations 1000] [--chunk 25]
                                        [--loop-sample 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import resource
import statistics
import sys
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=40)
    p.add_argument("--days", type=int, default=5000)
    p.add_argument("--combinations", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=25, help="combinations per engine.sweep call")
    p.add_argument("--loop-sample", type=int, default=5, help="combinations the pandas loop runs per repeat")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args, _ = p.parse_known_args()

    close, price, weights = make_data(args.symbols, args.days, args.seed)
    grid = make_grid(args.combinations)
    rng = np.random.default_rng(args.seed)
    worst = max(range(len(grid)), key=lambda i: (grid[i]["gross"], grid[i]["fees"] + grid[i]["slippage"]))
    others = [i for i in range(len(grid)) if i != worst]
    sample = sorted({worst, *rng.choice(others, min(args.loop_sample, len(grid)) - 1, replace=False).tolist()})
    results: dict = {"symbols": args.symbols, "days": args.days, "rebalances": len(weights), "fees": FEES,
                     "slippage": SLIPPAGE, "lag": LAG, "combinations": len(grid), "chunk": args.chunk,
                     "loop_sample": sample, "repeat": args.repeat}
    print(f"  {args.symbols} symbols x {args.days:,} days, a rebalance every {EVERY} days ({len(weights):,}), "
          f"lag {LAG}, fees {FEES}, slippage {SLIPPAGE}", flush=True)
    rss = {"setup_mb": peak_mb()}

    # first calls: vectorbt's import, then its Numba functions (compiled, or loaded from the on-disk cache)
    import_s, _ = timed(lambda: __import__("vectorbt"))
    first_s, vbt_equity = timed(lambda: engine_backtest(close, price, weights))
    small = [grid[i] for i in sample[:2]]
    sweep_first_s, _ = timed(lambda: engine_sweep(close.iloc[:200], price.iloc[:200], weights.iloc[:40], small, 2))
    results.update(import_vectorbt_s=import_s, first_call_s=first_s, sweep_first_call_s=sweep_first_s)
    print(f"  import vectorbt {import_s:.2f} s; first engine call {first_s:.2f} s (Numba functions); first "
          f"sweep call (2 combinations x 200 days) {sweep_first_s:.2f} s", flush=True)

    # the loop must make the same equity curve before anything is timed
    loop_equity = loop_backtest(close, price, weights)
    err = relative_error(loop_equity, vbt_equity)
    assert err <= TOLERANCE, f"pandas loop differs from vectorbt: max relative error {err:.3g}"
    results["backtest_max_relative_error"] = err
    print(f"  equity curves equal: max relative error {err:.2g} over {len(close):,} closes "
          f"(final equity {vbt_equity.iloc[-1]:,.2f})", flush=True)

    bt_engine, bt_loop, sw_engine, sw_loop, sw_errors = [], [], [], [], []
    for r in range(args.repeat):
        t, _ = timed(lambda: engine_backtest(close, price, weights))
        bt_engine.append(t)
        t, _ = timed(lambda: loop_backtest(close, price, weights))
        bt_loop.append(t)
        if r == 0:
            rss["after_backtests_mb"] = peak_mb()
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
        print(f"  repeat {r + 1}/{args.repeat}: backtest engine {bt_engine[-1]:.3f} s, loop {bt_loop[-1]:.2f} s; "
              f"sweep {sw_engine[-1]:.1f} s ({len(grid) / sw_engine[-1]:,.1f} combinations/s), loop "
              f"{sw_loop[-1]:.2f} s a combination", flush=True)
    err = max(sw_errors)
    assert err <= TOLERANCE, f"pandas loop differs from the sweep: max relative error {err:.3g}"
    results["sweep_max_relative_error"] = err

    bt_ratio = [lo / en for lo, en in zip(bt_loop, bt_engine)]
    sw_rate = [len(grid) / t for t in sw_engine]
    loop_rate = [1.0 / t for t in sw_loop]
    sw_ratio = [s / lo for s, lo in zip(sw_rate, loop_rate)]
    results["backtest"] = {"engine_s": bt_engine, "loop_s": bt_loop, "ratio": bt_ratio, **spread(bt_ratio)}
    results["sweep"] = {"engine_s": sw_engine, "combinations_per_s": sw_rate, "loop_s_per_combination": sw_loop,
                        "loop_combinations_per_s": loop_rate, "ratio": sw_ratio, **spread(sw_ratio)}
    results["peak_rss"] = rss

    print(f"\n  {'case':<46}{'engine':>14}{'pandas loop':>14}{'loop/engine':>13}{'spread':>16}")
    print(f"  {f'backtest, {args.symbols} x {args.days:,} (s)':<46}{statistics.median(bt_engine):>14.3f}"
          f"{statistics.median(bt_loop):>14.2f}{statistics.median(bt_ratio):>12.1f}x"
          f"{f'{min(bt_ratio):.1f}-{max(bt_ratio):.1f}x':>16}")
    print(f"  {f'sweep, {len(grid):,} combinations (combinations/s)':<46}{statistics.median(sw_rate):>14.1f}"
          f"{statistics.median(loop_rate):>14.2f}{statistics.median(sw_ratio):>12.1f}x"
          f"{f'{min(sw_ratio):.1f}-{max(sw_ratio):.1f}x':>16}")
    print(f"  sweep: engine.sweep in batches of {args.chunk} combinations ({-(-len(grid) // args.chunk)} calls); "
          f"the pandas loop timed on {len(sample)} combinations ({', '.join(map(str, sample))}) per repeat and "
          f"extrapolated per combination; its final equity equals the sweep's (max relative error {err:.2g})")
    print(f"  first engine call {first_s:.2f} s (vectorbt's Numba functions; import vectorbt {import_s:.2f} s "
          f"apart); median over {args.repeat} warm runs")
    print(f"  peak RSS: {rss['setup_mb']:,.0f} MB after the setup, {rss['after_backtests_mb']:,.0f} MB after the "
          f"backtests, {rss['after_sweep_mb']:,.0f} MB after the first sweep")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_backtest_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"  written {path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
