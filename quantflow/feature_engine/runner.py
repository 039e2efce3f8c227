"""Feature-engine stage entry point: plan blocks, compute them in tasks on the executor, write ``ft_features``.

Where a computation starts decides its result to the last bit (a running sum, an EMA, TA-Lib's SMA all
depend on it), so each value is computed in a fixed place: the block that holds its bar, which is the
``ft_features`` partition it is written to (a decade of daily bars, a month of intraday bars), starting
``warmup_bars`` bars before the block's first bar (the longest chain of windows through the feature DAG; the
whole history for running totals such as OBV). A block is a unit of work; tasks pack units up to
``rows_per_task`` bars and read each symbol's rows once. So a one-day run, a run over twenty years, one task
or a hundred give the same bits, and no value reads a bar after its own (tested). A block as wide as its
partition keeps the warm-up a small share of the work (a MACD settles over 553 bars: a year of daily bars
computed 805 bars for its 252, a decade computes 3,073 for 2,520), and a run rewrites whole partitions anyway.

Cross-sectional features rank or scale across symbols at each bar time, so when the DAG has any, every
project symbol is computed and written, whatever symbols the run names: a symbol's cross-sectional values
depend on the others'.

``ft_features`` is derived and cheap to rebuild, so every write mode rewrites the window's rows (like
``cdm_labels``); rows outside the window stay. In ``skip_if_exists`` a window whose bars, tick tables,
configuration and code are as at its last run, and whose rows are still those it wrote, is kept as it is
(``storage.run_records``).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from quantflow.compute.executors import make_executor
from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult, counted
from quantflow.metadata.manager import ProjectMetadata
from quantflow.metadata.schema.feature_engine import FeatureDAG, FeatureEngineConfig
from quantflow.storage.filesystem import StorageOptions, Store
from quantflow.storage.lake import DEFAULT_COMPRESSION, Lake, period_end, period_start
from quantflow.storage.project import project_lake, storage_options
from quantflow.storage.run_records import RunRecords, code_version, digest, partition_signatures
from quantflow.storage.schemas import TableSpec
from quantflow.storage.tables import (
    ENRICHED_TABLE,
    FEATURES_TABLE,
    LABELS_TABLE,
    QUOTES_TABLE,
    features_partition_width,
)
from quantflow.storage.writes import WriteResult

STAGE = "feature_engine"
TRADE_COLUMNS = ["symbol", "date", "ts", "signed_volume", "spread_bps", "effective_spread_bps"]
QUOTE_COLUMNS = ["symbol", "date", "ts", "bid", "ask", "bid_size", "ask_size"]


@dataclass
class FeatureEngineResult(StageResult):
    features: int = 0
    rows: int = 0
    symbols: int = 0
    tasks: int = 0
    warmup_bars: int | None = 0
    nan_share: dict[str, float] = field(default_factory=dict)  # feature column -> share of nan in the window
    constant: list[str] = field(default_factory=list)  # columns with one value (or none) in the window
    label_coverage: dict[str, float] = field(default_factory=dict)  # label set -> share of events with all features
    kept: bool = False  # skip_if_exists, inputs as at the window's last run: its rows kept, nothing computed

    def headline(self) -> str:
        warmup = "all history" if self.warmup_bars is None else f"{self.warmup_bars} bars"
        symbols = counted(self.symbols, "symbol")
        if self.kept:
            return (f"{self.features} features x {self.rows:,} bars ({symbols}) kept: bars, "
                    f"configuration and code as at the window's last run ({self.seconds:.1f}s)")
        return (f"{self.features} features x {self.rows:,} bars ({symbols}) in {self.seconds:.1f}s, "
                f"{counted(self.tasks, 'task')}, warm-up {warmup}")

    def key_figures(self) -> dict[str, Any]:
        return {"features": self.features, "rows": self.rows, "symbols_with_bars": self.symbols, "tasks": self.tasks,
                "warmup_bars": "all" if self.warmup_bars is None else self.warmup_bars,
                "nan_share": {k: round(v, 4) for k, v in self.nan_share.items()},
                "entirely_nan_or_constant": ", ".join(self.constant) or "-",
                "label_coverage": {k: round(v, 4) for k, v in self.label_coverage.items()}, "kept": self.kept}


@dataclass(frozen=True)
class Unit:
    """One block of one symbol: its bars are rows ``[read, end)`` of the symbol's stored bars (the warm-up
    first), and rows from ``out`` on are written."""

    symbol: str
    block: dt.date
    read: int
    out: int
    end: int


@dataclass(frozen=True)
class FeatureTask:
    """What one worker needs: where to read, which rows, never the data itself."""

    lake_root: str
    storage: StorageOptions
    config: FeatureEngineConfig
    symbols: list[str]
    units: tuple[Unit, ...]
    # per symbol: the first stored date to read and the index of that date's first row
    reads: dict[str, tuple[dt.date, int]]
    last_date: dict[str, dt.date]
    benchmarks: dict[str, tuple[dt.date, dt.date]]  # per benchmark symbol: the dates to read
    trades: bool
    quotes: bool
    # in-process runs only: the bars the planner read (symbol -> its stored bars up to the window's end, in
    # time order), so they are not read twice; tasks for Ray workers carry None and read their own
    bars: dict[str, pl.DataFrame] | None = field(default=None, repr=False)
    compression: str = DEFAULT_COMPRESSION  # of the files it writes (``project.storage.compression``)

    def __str__(self) -> str:
        first, last = self.units[0], self.units[-1]
        return (f"{first.symbol} {first.block}" if len(self.units) == 1
                else f"{first.symbol} {first.block}..{last.symbol} {last.block} ({len(self.units)} blocks)")

    @property
    def rows(self) -> int:
        return sum(u.end - u.read for u in self.units)


def plan_units(dates: np.ndarray, symbol: str, window: RunWindow, warmup: int | None, width: str) -> list[Unit]:
    """The units of one symbol whose stored bars have ``dates`` (sorted): one per block with bars in the
    window."""
    lo = int(np.searchsorted(dates, np.datetime64(window.start_date), "left"))
    hi = int(np.searchsorted(dates, np.datetime64(window.end_date), "right"))
    units = []
    i = lo
    while i < hi:
        block = period_start(dates[i].astype("datetime64[D]").astype(dt.date), width)
        block_first = int(np.searchsorted(dates, np.datetime64(block), "left"))
        next_block = int(np.searchsorted(dates, np.datetime64(period_end(block, width)), "right"))
        end = min(next_block, hi)
        read = 0 if warmup is None else max(0, block_first - warmup)
        units.append(Unit(symbol, block, read, i, end))
        i = end
    return units


def pack_units(units: list[Unit], rows_per_task: int) -> list[list[Unit]]:
    """Consecutive units (symbol, then time order) grouped until a group holds ``rows_per_task`` bars."""
    packs: list[list[Unit]] = []
    rows = 0
    for u in units:
        if not packs or rows >= rows_per_task:
            packs.append([])
            rows = 0
        packs[-1].append(u)
        rows += u.end - u.read
    return packs


def run_task(task: FeatureTask) -> pl.DataFrame:
    """Compute the features of the task's units; returns their output rows. Runs in a worker."""
    from quantflow.feature_engine.engine import (
        SegmentData,
        bars_with_time,
        time_series_features,
    )

    cfg = task.config
    dag = FeatureDAG.compile(cfg)
    lake = Lake(Store(task.lake_root, task.storage), task.compression)
    pieces, starts, keep = [], [0], []
    trades, quotes = [], []
    for symbol in task.symbols:
        first_date, first_index = task.reads[symbol]
        if task.bars is not None:
            bars = task.bars[symbol].slice(first_index)
        else:
            bars = bars_with_time(lake.read(cfg.input, [symbol], first_date, task.last_date[symbol]))
        for u in (u for u in task.units if u.symbol == symbol):
            unit = bars.slice(u.read - first_index, u.end - u.read)
            if unit.height != u.end - u.read:
                raise ValueError(f"{cfg.input} {symbol}: found {unit.height} bars for block {u.block}, planned "
                                 f"{u.end - u.read}: the table changed during the run")
            pieces.append(unit)
            starts.append(starts[-1] + unit.height)
            keep.append(np.arange(u.out - u.read, u.end - u.read) + starts[-2])
        if task.trades:
            trades.append(lake.read(ENRICHED_TABLE, [symbol], first_date, task.last_date[symbol], TRADE_COLUMNS))
        if task.quotes:
            quotes.append(lake.read(QUOTES_TABLE, [symbol], first_date, task.last_date[symbol], QUOTE_COLUMNS))
    benchmarks = {b: task.bars[b] if task.bars is not None else bars_with_time(lake.read(cfg.input, [b], *span))
                  for b, span in task.benchmarks.items()}
    data = SegmentData(pl.concat(pieces, how="diagonal_relaxed"), np.array(starts), benchmarks,
                       _concat(trades, TRADE_COLUMNS) if task.trades else None,
                       _concat(quotes, QUOTE_COLUMNS) if task.quotes else None)
    features = time_series_features(data, dag)
    return features.select(pl.all().gather(np.concatenate(keep)))


def _concat(frames: list[pl.DataFrame], columns: list[str]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema={c: pl.Float64 for c in columns}).with_columns(
            pl.col("symbol").cast(pl.Utf8), pl.col("date").cast(pl.Date),
            pl.col("ts").cast(pl.Datetime("ns", "UTC")))
    return pl.concat(frames, how="diagonal_relaxed")


def run(md: ProjectMetadata, window: RunWindow, *, executor: str | None = None,
        progress: Progress | None = None) -> FeatureEngineResult:
    """Compute the configured features over the window and rewrite its rows of ``ft_features``."""
    from quantflow.feature_engine.engine import cross_sectional_features, warmup_bars

    progress = progress or Progress()
    cfg = md.project.feature_engine
    if cfg is None:
        raise ValueError("project_metadata/project.yaml has no project.feature_engine section")
    began = time.perf_counter()
    dag = FeatureDAG.compile(cfg, md.symbols)
    warmup = warmup_bars(dag, cfg.settle_periods)
    symbols = list(window.symbols)
    if any(n.cross_sectional for n in dag.nodes) and set(symbols) != set(md.symbols):
        progress.detail("feature engine: cross-sectional features: computing all project symbols")
        symbols = list(md.symbols)
    window = RunWindow(window.start_date, window.end_date, tuple(symbols), window.write_mode)
    result = FeatureEngineResult(STAGE, window, features=len(dag.outputs), warmup_bars=warmup)
    lake = project_lake(md)
    out_width = features_partition_width(cfg.input)
    if lake.partitions(FEATURES_TABLE) and lake.partition_width(FEATURES_TABLE) != out_width:
        raise StageError(f"feature engine: {lake.url(FEATURES_TABLE)} is stored in "
                         f"{lake.partition_width(FEATURES_TABLE)} partitions, features of {cfg.input} go in "
                         f"{out_width} partitions (was the input table changed?): the table is derived; remove "
                         "it and run the feature engine over the whole history", result=result)
    kind = executor or cfg.executor
    records, scope = RunRecords(lake, STAGE), f"{window.start_date}..{window.end_date} {','.join(sorted(symbols))}"
    inputs = _inputs_key(lake, md, cfg, dag, symbols, window)  # before anything is read
    if window.write_mode == "skip_if_exists" and _keep_last_run(records, scope, inputs, lake, md, dag, window,
                                                               result, progress):
        result.seconds = time.perf_counter() - began
        return result
    # the planner needs the dates of the bars the blocks read; in process it reads the bars once and hands
    # them over
    stored = _stored_bars(lake, cfg.input, sorted({*symbols, *dag.benchmarks}), window, warmup,
                          lake.partition_width(cfg.input), out_width, kind == "local")
    dates = {s: (df["date"].to_numpy() if df.height else np.array([], "datetime64[D]")) for s, df in stored.items()}
    units = [u for s in symbols for u in plan_units(dates[s], s, window, warmup, out_width)]
    if not units:
        result.warnings.append(f"no {cfg.input} bars in {window.describe()}: no features computed")
        result.seconds = time.perf_counter() - began
        return result
    trades, quotes = ENRICHED_TABLE in cfg.tick_tables(), QUOTES_TABLE in cfg.tick_tables()
    root, options = lake.store.root, storage_options(md)
    tasks = [_task(root, options, cfg, pack, dates, dag.benchmarks, trades, quotes,
                   stored if kind == "local" else None, lake.compression)
             for pack in pack_units(units, cfg.rows_per_task)]
    result.tasks = len(tasks)
    progress.begin(len(units), "blocks", "feature engine")
    progress.detail(f"feature engine: {len(dag.outputs)} features of {len(dag.nodes)} definitions over {cfg.input}, "
                    f"{len(units)} blocks in {counted(len(tasks), 'task')} on {kind}, warm-up "
                    f"{'all history' if warmup is None else f'{warmup} bars'}")
    env = {"NUMBA_CACHE_DIR": os.environ["NUMBA_CACHE_DIR"]} if os.environ.get("NUMBA_CACHE_DIR") else None
    runner = make_executor(kind, min(cfg.max_concurrency, len(tasks)), 1, env)

    def on_done(done: int, total: int, outcome) -> None:
        progress.advance(len(outcome.shard.units), outcome.shard.rows)

    report = runner.map(run_task, tasks, on_done)
    if report.failed:
        first = report.failed[0]
        raise StageError(f"feature engine: {len(report.failed)} of {len(tasks)} tasks failed; task {first.shard}: "
                         f"{first.error}", result=result)
    features = pl.concat([o.result for o in report.outcomes], how="vertical_relaxed")
    features = cross_sectional_features(features, dag)
    calendar = [o for n in dag.nodes if n.kind == "calendar" for o in n.outputs]
    _describe(result, features, dag.outputs, calendar)
    result.label_coverage = _label_coverage(lake, md, cfg.input, window, features, dag.outputs)
    spec = TableSpec(FEATURES_TABLE, dict(features.schema), out_width, ("symbol", "date", "ts"))
    # one replace for all symbols: their partitions are written side by side
    result.record_write(FEATURES_TABLE, lake.replace(spec, features, symbols, window.start_date, window.end_date))
    result.record_write(FEATURES_TABLE, WriteResult(FEATURES_TABLE), lake.url(FEATURES_TABLE))
    result.preview[FEATURES_TABLE] = features.select(features.columns[:10]).head(5)  # readable width
    records.save(scope, inputs, _outputs(lake, symbols, window), {f: getattr(result, f) for f in KEPT_FIGURES})
    result.seconds = time.perf_counter() - began
    return result


KEPT_FIGURES = ("features", "rows", "symbols", "warmup_bars", "nan_share", "constant")  # of the rows written
LIBRARIES = ("polars", "ta-lib", "numpy", "numba")  # what computes the values


def _inputs_key(lake: Lake, md: ProjectMetadata, cfg: FeatureEngineConfig, dag: FeatureDAG, symbols: list[str],
                window: RunWindow) -> str:
    """What this window's features are computed from: the configuration, the code, the symbols, and every
    partition up to the window's end of the bars (benchmarks included) and of the tick tables the
    microstructure features read. (Labels only feed a figure, counted again when rows are kept.)"""
    tables = [cfg.input, *cfg.tick_tables()]
    return digest(cfg.model_dump_json(), code_version(__package__, "quantflow.compute", libraries=LIBRARIES),
                  sorted(symbols), str(window.start_date), str(window.end_date),
                  partition_signatures(lake, tables, sorted({*symbols, *dag.benchmarks}), None, window.end_date))


def _outputs(lake: Lake, symbols: list[str], window: RunWindow) -> dict[str, str]:
    return partition_signatures(lake, [FEATURES_TABLE], symbols, window.start_date, window.end_date)


def _keep_last_run(records: RunRecords, scope: str, inputs: str, lake: Lake, md: ProjectMetadata, dag: FeatureDAG,
                   window: RunWindow, result: FeatureEngineResult, progress: Progress) -> bool:
    """``skip_if_exists``: when the last run of this window read the same inputs and its rows are still those
    stored, keep them. Its figures of the rows become this run's (for the metadata and the asset checks); the
    label coverage is counted again, against the labels stored now."""
    symbols = list(window.symbols)
    if not records.restore(scope, inputs, _outputs(lake, symbols, window), result, KEPT_FIGURES):
        return False
    result.kept = True
    progress.begin(1, "windows", "feature engine")
    progress.advance(1)
    progress.detail("feature engine: bars, configuration and code as at the window's last run: its rows kept")
    if md.project.label_engine is not None:
        stored = lake.read(FEATURES_TABLE, symbols, window.start_date, window.end_date)
        result.label_coverage = _label_coverage(lake, md, md.project.feature_engine.input, window, stored,
                                                dag.outputs)
    else:  # the preview only
        stored = lake.read(FEATURES_TABLE, symbols[:1], window.start_date, window.end_date)
    result.record_write(FEATURES_TABLE, WriteResult(FEATURES_TABLE), lake.url(FEATURES_TABLE))
    result.preview[FEATURES_TABLE] = stored.select(stored.columns[:10]).head(5)
    return True


def _stored_bars(lake: Lake, table: str, symbols: list[str], window: RunWindow, warmup: int | None, width: str,
                 block_width: str, whole: bool) -> dict[str, pl.DataFrame]:
    """The stored bars a run reads, per symbol in time order: its partitions from the one holding the start
    of the window's first block to the window's end, and before them enough earlier partitions for
    ``warmup`` bars and one more (all of them when the warm-up is the whole history); all columns
    (``whole``) or only the dates. One listing and one read for all symbols."""
    from quantflow.feature_engine.engine import bars_with_time

    starts: dict[str, dt.date | None] = dict.fromkeys(symbols)
    if warmup is not None:
        first = period_start(window.start_date, block_width)
        stored = lake.partitions(table, symbols, None, window.end_date)
        for symbol in symbols:
            earlier = sorted((p for p in stored if p.symbol == symbol and p.period_start < first),
                             key=lambda p: p.period_start)
            rows, start = 0, period_start(first, width)
            while earlier and rows <= warmup:
                part = earlier.pop()
                rows += lake.read_partition(part.path, ["date"]).height
                start = part.period_start
            starts[symbol] = start
    known = [d for d in starts.values() if d is not None]
    since = min(known) if len(known) == len(starts) else None
    bars = lake.read(table, symbols, since, window.end_date, None if whole else ["symbol", "date"])
    if bars.height:
        bars = bars_with_time(bars) if whole else bars.sort("symbol", "date", maintain_order=True)
    by_symbol = bars.partition_by("symbol", as_dict=True, maintain_order=True) if bars.height else {}
    empty = pl.DataFrame(schema={"symbol": pl.Utf8, "date": pl.Date})
    out = {}
    for symbol in symbols:
        df = by_symbol.get((symbol,), empty)
        out[symbol] = df if starts[symbol] in (None, since) else df.filter(pl.col("date") >= starts[symbol])
    return out


def _task(root, options, cfg, pack: list[Unit], dates, benchmarks, trades: bool, quotes: bool,
          stored: dict[str, pl.DataFrame] | None, compression: str) -> FeatureTask:
    symbols = list(dict.fromkeys(u.symbol for u in pack))
    reads, last = {}, {}
    for s in symbols:
        first = min(u.read for u in pack if u.symbol == s)
        day = dates[s][first]
        reads[s] = (_date(day), int(np.searchsorted(dates[s], day, "left")))
        last[s] = _date(dates[s][max(u.end for u in pack if u.symbol == s) - 1])
    span_start, span_end = min(d for d, _ in reads.values()), max(last.values())
    spans = {}
    for b in benchmarks:  # from its last bar at or before the task's first bar (an as-of join needs it)
        at = int(np.searchsorted(dates[b], np.datetime64(span_start), "right")) - 1
        spans[b] = (_date(dates[b][at]) if at >= 0 else span_start, span_end)
    mine = None if stored is None else {s: stored[s] for s in [*symbols, *benchmarks]}
    return FeatureTask(root, options, cfg, symbols, tuple(pack), reads, last, spans, trades, quotes, mine, compression)


def _date(value: np.datetime64) -> dt.date:
    return value.astype("datetime64[D]").astype(dt.date)


def _describe(result: FeatureEngineResult, features: pl.DataFrame, outputs: list[str], calendar: list[str]) -> None:
    """Rows, symbols, nan share, and the columns that say nothing over the window: entirely nan, or one
    value over more than one bar time (calendar fields excepted: a month's run has one month)."""
    result.rows, result.symbols = features.height, features["symbol"].n_unique()
    if not features.height:
        return
    numbers = [pl.col(c).fill_nan(None) for c in outputs]
    stats = features.select(
        *(pl.col(c).is_nan().mean().alias(f"nan:{c}") for c in outputs),
        *(n.min().alias(f"min:{c}") for n, c in zip(numbers, outputs)),
        *(n.max().alias(f"max:{c}") for n, c in zip(numbers, outputs)),
    ).row(0, named=True)
    result.nan_share = {c: float(stats[f"nan:{c}"]) for c in outputs}
    times = features["ts"].n_unique()
    result.constant = [c for c in outputs if stats[f"min:{c}"] is None
                       or (times > 1 and c not in calendar and stats[f"min:{c}"] == stats[f"max:{c}"])]


def _label_coverage(lake: Lake, md: ProjectMetadata, table: str, window: RunWindow, features: pl.DataFrame,
                    outputs: list[str]) -> dict[str, float]:
    """Per label set on the same bars: the share of its events in the window whose features are all numbers
    (the rows a model can train on without filling)."""
    if md.project.label_engine is None:
        return {}
    sets = [s.name for s in md.project.label_engine.labels if s.input == table]
    if not sets:
        return {}
    labels = lake.read(LABELS_TABLE, list(window.symbols), window.start_date, window.end_date,
                       ["symbol", "label_set", "ts"])
    if not labels.height:
        return {}
    complete = features.select("symbol", "ts", pl.all_horizontal(
        [pl.col(c).is_not_nan() for c in outputs]).alias("complete"))
    joined = labels.filter(pl.col("label_set").is_in(sets)).join(complete, on=["symbol", "ts"], how="left")
    shares = joined.group_by("label_set").agg(pl.col("complete").fill_null(False).mean())
    return {name: float(share) for name, share in shares.iter_rows()}
