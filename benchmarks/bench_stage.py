"""The state-engine stage as a user runs it, against a polars script that makes the same tables from the same lake.

Both start from a lake of CDM trades and quotes (``symbol=/day=`` partitions) and write enriched trades and
1-minute, tick, volume and dollar bars as hive partitions per (symbol, day):

- ``stage``: ``quantflow.state_engine.runner.run`` in ``overwrite`` mode, on the in-process executor and on
  a local Ray (``--executors``), timed end to end (planning, reads, kernels, writes).
- ``polars script``: read every trade and quote with ``pl.scan_parquet(hive_partitioning=True)``,
  ``join_asof`` per symbol for the prevailing quote, mid / spread / Lee-Ready (quote rule, tick rule), the
  bars (``group_by_dynamic`` for time bars, cumulative-measure bucketing for tick, volume and dollar bars,
  per (symbol, day)), then ``write_parquet(partition_by=...)``.

Each side runs ``--repeat`` times (a fresh output folder each time, after an untimed ``os.sync()`` so that
neither waits for the other's unwritten files); the table prints the median and the spread of the ratio ``polars script / stage`` (above 1: the stage is faster). Issue target: at least 2x on
the sample project and on a large one (``--symbols 20 --days 20 --trades-per-day 125000``: 50M trades).
Row counts of the enriched trades and the 1-minute bars are checked equal before anything is timed.
``--ceiling`` also measures what this machine gives two workers over one for this work with no scheduler at
all: two processes of one thread, each running the stage in process over half the symbols, side by side
against one after the other (what Ray's 2 workers against 1 can expect, target 1.7x).

    python benchmarks/bench_stage.py                       # the sample project's size: 5 symbols x 63 days
    python benchmarks/bench_stage.py --symbols 20 --days 20 --trades-per-day 125000 --quotes-per-trade 1 \
        --executors local,ray,ray1 --repeat 5 [--ceiling]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# first, as ``qf run`` does: QuantFlow sets polars' allocator options, read when polars loads (the script
# below runs in this process, so it gets them too)
import quantflow  # noqa: E402, F401, I001

import polars as pl  # noqa: E402
from bench_state_engine import bar_aggregations, polars_enrich, polars_time_bars  # noqa: E402

from quantflow.compute.executors import ONE_THREAD_VARS  # noqa: E402
from quantflow.compute.stage import RunWindow  # noqa: E402
from quantflow.ingest.feeds.synthetic import SyntheticFeed  # noqa: E402
from quantflow.metadata import get_metadata_manager  # noqa: E402
from quantflow.state_engine import runner  # noqa: E402
from quantflow.storage.project import project_lake  # noqa: E402
from quantflow.storage.schemas import spec_for_kind  # noqa: E402

TICK, VOLUME, DOLLAR = 100, 20_000.0, 1_000_000.0
PROJECT = """\
project:
  name: bench_stage
  symbols: [{symbols}]
  state_engine:
    executor: local
    lob: {{interval: null}}
    bars:
      - {{type: time, every: 1m}}
      - {{type: tick, threshold: {tick}}}
      - {{type: volume, threshold: {volume}}}
      - {{type: dollar, threshold: {dollar}}}
"""


def make_project(root: Path, n_symbols: int, n_days: int, trades_per_day: int,
                 quotes_per_trade: int = 3) -> tuple[object, RunWindow]:
    symbols = [f"S{i:02d}" for i in range(n_symbols)]
    meta = root / "project_metadata"
    meta.mkdir(parents=True)
    (meta / "project.yaml").write_text(textwrap.dedent(PROJECT.format(
        symbols=", ".join(symbols), tick=TICK, volume=VOLUME, dollar=DOLLAR)))
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    feed = SyntheticFeed("sim", {"seed": 3, "trades_per_day": trades_per_day, "quotes_per_trade": quotes_per_trade,
                                 "daily_bars": False}, root)
    start = dt.date(2024, 1, 2)
    days = [d for d in (start + dt.timedelta(days=i) for i in range(n_days * 2)) if d.weekday() < 5][:n_days]
    for batch in feed.iter_batches(symbols, days[0], days[-1]):
        for kind, df in batch.tables.items():
            lake.write(spec_for_kind(f"cdm_{kind}", kind), df, "overwrite")
    return md, RunWindow.resolve(symbols, days[0], days[-1], write_mode="overwrite")


def threshold_bars(df: pl.DataFrame, measure: pl.Expr, threshold: float, keys: list[str]) -> pl.DataFrame:
    """Per (symbol, day): a bar ends where the day's cumulative measure crosses a multiple of the threshold
    (the vectorised polars formulation; see bench_state_engine's ``polars_cumsum_bars``)."""
    bar_id = ((measure.cum_sum().over(keys) - measure) // threshold).cast(pl.Int64).alias("bar_id")
    return (
        df.with_columns(bar_id)
        .group_by([*keys, "bar_id"], maintain_order=True)
        .agg(bar_aggregations())
        .with_columns((pl.col("dollar_volume") / pl.col("volume")).alias("vwap"))
    )


def polars_script(lake_root: Path, out: Path) -> dict[str, int]:
    """What a researcher would write with polars alone: the same tables, hive partitions per (symbol, day)."""
    trades = pl.scan_parquet(lake_root / "cdm_trades", hive_partitioning=True).drop("day").collect()
    quotes = pl.scan_parquet(lake_root / "cdm_quotes", hive_partitioning=True).drop("day").collect()
    trades = trades.sort("symbol", "ts", "trade_id")
    quotes = quotes.sort("symbol", "ts", "quote_id")
    enriched = polars_enrich(trades, quotes, by_symbol=True)
    keys = ["symbol", "date"]
    tables = {"cdm_trade_enriched": enriched}
    tables["cdm_time_1m_bars"] = polars_time_bars(enriched.sort(["symbol", "date", "ts"]),
                                                  by=keys).sort("symbol", "ts")  # type: ignore[arg-type]
    for name, measure, threshold in (("cdm_tick_100_bars", pl.col("price").is_not_null().cast(pl.Float64), TICK),
                                     ("cdm_volume_20000_bars", pl.col("size"), VOLUME),
                                     ("cdm_dollar_1000000_bars", pl.col("price") * pl.col("size"), DOLLAR)):
        tables[name] = threshold_bars(enriched, measure, threshold, keys)
    rows = {}
    for name, df in tables.items():
        target = out / name
        target.mkdir(parents=True)
        df.write_parquet(target, partition_by=keys)
        rows[name] = df.height
    return rows


def run_stage(md, window: RunWindow, executor: str) -> dict[str, int]:
    """``executor``: ``local``, ``ray`` (2 workers) or ``ray1`` (1 worker: the scaling baseline)."""
    md.project.state_engine.ray_min_trades = 0  # "ray" means Ray here, however small the job
    workers = 1 if executor == "ray1" else 2
    result = runner.run(md, window, executor=executor.rstrip("1"), max_concurrency=workers)
    return {t: w.rows_written for t, w in result.tables.items()}


def _half(root: str, window: RunWindow, ready, go, out) -> None:
    """A child process with one thread, as a Ray worker has: the stage in process over ``window``'s symbols,
    timed from ``go``, which the children of one measurement wait on together."""
    md = get_metadata_manager(Path(root)).load_all()
    first = RunWindow(window.start_date, window.start_date, window.symbols[:1], "overwrite")
    runner.run(md, first, executor="local", max_concurrency=1)  # untimed: imports, kernels from the cache
    ready.put(None)
    go.wait()
    began = time.time()
    runner.run(md, window, executor="local", max_concurrency=1)
    out.put((began, time.time()))


def halves(root: Path, window: RunWindow, together: bool) -> list[tuple[float, float]]:
    """(start, end) of each half of the symbols, run in two one-thread processes side by side or in turn."""
    ctx = multiprocessing.get_context("spawn")
    n = len(window.symbols) // 2
    parts = [RunWindow(window.start_date, window.end_date, s, "overwrite")
             for s in (window.symbols[:n], window.symbols[n:])]
    # one thread in each child: its libraries read these when they load
    with mock.patch.dict(os.environ, {v: "1" for v in ONE_THREAD_VARS}):
        spans = []
        for group in ([parts] if together else [[p] for p in parts]):
            ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_half, args=(str(root), part, ready, go, out)) for part in group]
            for proc in procs:
                proc.start()
            for _ in procs:
                _get(ready, procs)
            os.sync()
            go.set()
            spans += [_get(out, procs) for _ in procs]
            for proc in procs:
                proc.join()
        return spans


def _get(queue, procs):
    """The next item a child puts on ``queue``; a child that died first is reported instead of waited for."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=1)
        except queues.Empty:
            dead = [p.exitcode for p in procs if p.exitcode]
            if dead:
                raise SystemExit(f"--ceiling: a child running half the symbols failed (exit code {dead[0]}); "
                                 "its traceback is above") from None


def ceiling(root: Path, window: RunWindow, repeat: int) -> list[float]:
    """The machine's own 2-vs-1 for this work, free of any scheduler: the two halves one after the other
    (the sum of their times) against side by side (first start to last end). What two Ray workers against
    one can expect: what two busy cores cost each other (memory, caches) they pay too."""
    ratios = []
    for _ in range(repeat):
        alone = sum(end - began for began, end in halves(root, window, together=False))
        both = halves(root, window, together=True)
        ratios.append(alone / (max(e for _, e in both) - min(b for b, _ in both)))
    return ratios


def timed(fn) -> float:
    """``fn``'s wall time, from a page cache with nothing left to write: the stage's ``fsync`` calls commit
    ext4's journal, which first writes every file written before it, so without the (untimed) sync the stage
    would pay for the script's unwritten output, and the script, which never syncs, for none of its own."""
    os.sync()
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--days", type=int, default=63)
    parser.add_argument("--trades-per-day", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quotes-per-trade", type=int, default=3)
    parser.add_argument("--executors", default="local,ray",
                        help="local, ray (2 workers), ray1 (1 worker: add it to measure 2 workers vs 1)")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure the machine's own 2-vs-1 for this work: two one-thread processes over "
                             "half the symbols each, side by side against one after the other")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_stage_"))
    try:
        began = time.perf_counter()
        md, window = make_project(tmp / "project", args.symbols, args.days, args.trades_per_day,
                                  args.quotes_per_trade)
        lake_root = tmp / "project" / ".quantflow" / "lake"
        n_trades = pl.scan_parquet(lake_root / "cdm_trades", hive_partitioning=True).select(pl.len()).collect().item()
        print(f"  {args.symbols} symbols x {args.days} days, {n_trades:,} trades; lake written in "
              f"{time.perf_counter() - began:.1f} s", flush=True)
        script_rows = polars_script(lake_root, tmp / "check")  # also warms the page cache
        first: dict[str, float] = {}
        for executor in args.executors.split(","):
            began = time.perf_counter()
            stage_rows = run_stage(md, window, executor)  # also compiles / loads the kernels, starts Ray
            first[executor] = time.perf_counter() - began
            for table in ("cdm_trade_enriched", "cdm_time_1m_bars", "cdm_tick_100_bars"):
                if stage_rows[table] != script_rows[table]:
                    raise SystemExit(f"{table}: the stage wrote {stage_rows[table]} rows, the script "
                                     f"{script_rows[table]}: not the same tables")
        script_s, stage_s = [], {e: [] for e in args.executors.split(",")}
        for i in range(args.repeat):
            out = tmp / f"script_{i}"
            script_s.append(timed(lambda out=out: polars_script(lake_root, out)))
            shutil.rmtree(out)
            for executor in stage_s:
                stage_s[executor].append(timed(lambda e=executor: run_stage(md, window, e)))
        print(f"  {'case':<34}{'stage s':>10}{'script s':>10}{'script/stage':>14}{'spread':>16}{'target':>8}")
        for executor, times in stage_s.items():
            ratios = [s / t for s, t in zip(script_s, times)]
            print(f"  {'whole stage, ' + executor + ' executor':<34}{statistics.median(times):>10.2f}"
                  f"{statistics.median(script_s):>10.2f}{statistics.median(ratios):>13.2f}x"
                  f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>16}{'2.0x':>8}")
        print("  first run of the stage in this process (kernels from the on-disk cache; Ray started): " + ", ".join(
            f"{e} {t:.2f} s" for e, t in first.items()) + "; the timed runs reuse that Ray")
        if "ray" in stage_s and "ray1" in stage_s:
            scaling = [one / two for one, two in zip(stage_s["ray1"], stage_s["ray"])]
            print(f"  Ray 2 workers vs 1: median {statistics.median(scaling):.2f}x, spread "
                  f"{min(scaling):.2f}-{max(scaling):.2f}x (target 1.7x)")
        if args.ceiling:
            ratios = ceiling(tmp / "project", window, args.repeat)
            print(f"  the machine's own 2 vs 1 (two one-thread processes, half the symbols each, side by side "
                  f"vs in turn): median {statistics.median(ratios):.2f}x, spread {min(ratios):.2f}-{max(ratios):.2f}x")
        print("  trades per second, stage: " + ", ".join(
            f"{e} {n_trades / statistics.median(t):,.0f}" for e, t in stage_s.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
