"""State-engine stage entry point: shard CDM trades and quotes by (symbol, time shard) and run the pass.

Each shard task carries the lake root and the Parquet paths of its inputs, never the data: the worker
(a Ray task, or this process with the local executor) reads its own partitions, runs ``process_shard``
and writes its own output partitions, honouring the write mode. Shards are independent (carry-state off)
or chained per symbol (carry-state on: one task walks a symbol's days in order, carrying the state), so
a failed shard is retried alone and a rerun in ``skip_if_exists`` mode skips finished shards.

Calendar bars (``every`` of 1w, 1mo, 1q, 1y) are built from ``cdm_bars_daily``; every other bar type
needs ticks, and is skipped with a log line for projects whose feeds only give daily bars. With
``lob.source: messages`` the book snapshots come from ``cdm_order_messages`` instead of ``cdm_quotes``.

A shard writes its tables one after another, ``cdm_trade_enriched`` last (``cdm_lob_l2`` on a day without
trades). In ``skip_if_exists`` mode the driver leaves out the shards whose days are stored in that table
and in every bar table (``stored_shards``), so a shard interrupted between two writes, or a bar type added
to the config, is run again; in ``overwrite`` and ``append`` a day whose input is gone leaves every table.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from quantflow.compute.executors import ExecutionReport, ShardOutcome, make_executor
from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult, counted
from quantflow.metadata.manager import ProjectMetadata
from quantflow.metadata.schema import StateEngineConfig
from quantflow.state_engine.tables import tick_tables, uses_messages
from quantflow.storage.filesystem import StorageOptions, Store
from quantflow.storage.lake import DEFAULT_COMPRESSION, PATH_KEYS, Lake, key_runs
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import TableSpec
from quantflow.storage.tables import (
    BARS_DAILY_TABLE,
    ENRICHED_TABLE,
    LOB_TABLE,
    MESSAGES_TABLE,
    QUOTES_TABLE,
    TRADES_TABLE,
    partition_width,
)
from quantflow.storage.writes import WriteResult

STAGE = "state_engine"
SORT_KEYS = {ENRICHED_TABLE: ("symbol", "date", "ts", "trade_id"), LOB_TABLE: ("symbol", "date", "ts")}


_BAR_FIELDS = ("type", "every", "offset", "threshold", "expected_daily", "bars_per_day", "trailing_days",
               "expected_ticks", "span", "imbalance_span", "min_expected_ticks", "max_expected_ticks", "name",
               "incomplete")


def _bar_dict(bar) -> dict:
    """A bar config as ``BarSpec`` fields (unset ones and unknown extras left out)."""
    return {k: v for k, v in bar.model_dump().items() if v is not None and k in _BAR_FIELDS}


def engine_spec(cfg: StateEngineConfig):
    """The pure engine's spec for the tick-based outputs of ``cfg`` (calendar bars left out)."""
    from quantflow.state_engine.engine import StateEngineSpec

    return StateEngineSpec.from_dict({
        "bars": [_bar_dict(b) for b in cfg.bars if not b.is_calendar],
        "lob_interval": cfg.lob.interval,
        "lob_offset": cfg.lob.offset,
        "lob_depth": cfg.lob.depth,
        "lob_source": cfg.lob.source,
        "carry_state": cfg.carry_state,
        "tie_break": cfg.tie_break,
        "timezone": cfg.timezone,
    })


@dataclass(frozen=True)
class ShardTask:
    """What one worker needs: where to read and write, never the data itself."""

    lake_root: str
    storage: StorageOptions
    symbol: str
    dates: tuple[dt.date, ...]
    # one entry per day of ``dates``, None where the table has no partition that day
    trade_paths: tuple[str | None, ...]
    quote_paths: tuple[str | None, ...]
    message_paths: tuple[str | None, ...]
    config: StateEngineConfig
    write_mode: str
    # daily measures (symbol, date, n_trades, volume, dollar_volume) of the trading days before ``dates``
    # that thresholds from trailing days need (``trailing_days``); the shard measures its own days
    daily: tuple[tuple, ...] = ()
    daily_error: str | None = None  # one of those days could not be read: the task fails with this
    compression: str = DEFAULT_COMPRESSION  # of the files it writes (``project.storage.compression``)

    def __str__(self) -> str:
        span = self.dates[0].isoformat() if len(self.dates) == 1 else f"{self.dates[0]}..{self.dates[-1]}"
        return f"{self.symbol} {span}"


@dataclass
class ShardResult:
    written: dict[str, WriteResult]
    trades: int
    seconds: float


def run_shard(task: ShardTask) -> ShardResult:
    """Read one shard's partitions, run the single pass, write its outputs. Runs in a Ray worker."""
    from quantflow.state_engine.bars import daily_measures
    from quantflow.state_engine.engine import flush_state, process_shard

    began = time.perf_counter()
    if task.daily_error:
        raise ValueError(task.daily_error)
    lake = Lake(Store(task.lake_root, task.storage), task.compression)
    spec = engine_spec(task.config)
    tables = tick_tables(task.config)
    # the driver sends only shards with something missing (``stored_shards``); in skip_if_exists each table
    # keeps the days it has
    written: dict[str, WriteResult] = {t: WriteResult(t) for t in tables}
    n_trades, state, held = 0, None, None
    daily, trailing = _daily(task.daily), any(b.trailing_days for b in spec.bars)
    # one day at a time keeps memory flat; state carries across when configured
    held_day = None
    for day, trade_path, quote_path, message_path in zip(task.dates, task.trade_paths, task.quote_paths,
                                                         task.message_paths):
        trades, messages = _read(lake, trade_path), _read(lake, message_path)
        if trades is None and messages is None:
            continue
        n_trades += trades.height if trades is not None else 0
        if held is not None:
            _write_outputs(lake, held, task, held_day, tables, written)
        held, state = process_shard(trades, _read(lake, quote_path), spec, state, messages, daily)
        held_day = day
        if trailing and trades is not None:  # the next day's thresholds count this one
            daily = pl.concat([d for d in (daily, daily_measures(trades)) if d is not None])
    if held is not None and spec.carry_state and state is not None:
        # the bars still open at the end of the chain close on its last day: written with that day
        for table, tail in flush_state(state, spec).items():
            held[table] = pl.concat([held[table], tail], how="vertical_relaxed") if tail.height else held[table]
    if held is not None:
        _write_outputs(lake, held, task, held_day, tables, written)
    return ShardResult(written, n_trades, time.perf_counter() - began)


@dataclass(frozen=True)
class TaskPack:
    """Several (symbol, time shard) units done as one task: (symbol, day) stays the unit of idempotency and
    write modes, not the unit of work. The units' partitions are read in one call, the kernels run over all
    their segments in one pass, and each table is written once per partition the units touch."""

    units: tuple[ShardTask, ...]
    trades: int  # input rows, from the Parquet footers: what the pack was sized by

    def __str__(self) -> str:
        first, last = self.units[0], self.units[-1]
        return first.__str__() if len(self.units) == 1 else f"{first}..{last} ({len(self.units)} shards)"


def run_task(task: ShardTask | TaskPack) -> ShardResult:
    """One executor task: a pack of independent units in one pass, a carried chain (or a lone unit) by
    ``run_shard``."""
    if isinstance(task, ShardTask):
        return run_shard(task)
    if task.units[0].config.carry_state or len(task.units) == 1:
        results = [run_shard(u) for u in task.units]
        written: dict[str, WriteResult] = {}
        for r in results:
            for table, w in r.written.items():
                written.setdefault(table, WriteResult(table)).merge(w)
        return ShardResult(written, sum(r.trades for r in results), sum(r.seconds for r in results))
    return run_pack(task)


def run_pack(pack: TaskPack) -> ShardResult:
    """The units of ``pack`` (carry-state off: each (symbol, day) is its own segment) in one engine pass."""
    from quantflow.state_engine.engine import process_shard

    began = time.perf_counter()
    first = pack.units[0]
    if any(u.daily_error for u in pack.units):
        raise ValueError(next(u.daily_error for u in pack.units if u.daily_error))
    lake = Lake(Store(first.lake_root, first.storage), first.compression)
    cfg, mode = first.config, first.write_mode
    tables = tick_tables(cfg)

    def paths(attr: str) -> list[str]:
        return [p for u in pack.units for p in getattr(u, attr) if p is not None]

    trades, quotes, messages = _read_tables(lake, [paths(a) for a in ("trade_paths", "quote_paths", "message_paths")])
    written: dict[str, WriteResult] = {t: WriteResult(t) for t in tables}
    if trades is None and messages is None:
        return ShardResult(written, 0, time.perf_counter() - began)
    daily = _daily(tuple(row for u in pack.units for row in u.daily))
    out, _ = process_shard(trades, quotes, engine_spec(cfg), None, messages, daily)
    units = {(u.symbol, d) for u in pack.units for d in u.dates}

    def write(table: str, before_install=None) -> None:
        df = out.get(table)
        have: set = set()
        if df is not None and df.height:
            spec = TableSpec(table, dict(df.schema), partition_width(table),
                             SORT_KEYS.get(table, ("symbol", "date", "ts_first")))
            written[table].merge(lake.write(spec, df, "skip_if_exists" if mode == "skip_if_exists" else "overwrite",
                                            before_install=before_install))
            have = {(symbol, day) for symbol, day, _ in key_runs(df, ["symbol", "date"])}
        elif before_install:
            before_install()
        if mode != "skip_if_exists":  # a unit with no rows in the table this time loses what it had
            for symbol, day in sorted(units - have):
                written[table].merge(lake.drop_day(table, symbol, day))

    # the done marker last (see the module docstring): the bars, then the book; in process, the enriched
    # trades are encoded meanwhile (Parquet encoding in polars holds no GIL) and installed once the others
    # are written. A Ray task has one core (one polars thread): there it writes one table after another.
    others = sorted((t for t in tables if t != ENRICHED_TABLE), key=lambda t: t == LOB_TABLE)
    if ENRICHED_TABLE not in tables or pl.thread_pool_size() == 1:
        for table in [*others, *(t for t in tables if t == ENRICHED_TABLE)]:
            write(table)
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            rest = pool.submit(lambda: [write(t) for t in others])
            write(ENRICHED_TABLE, before_install=rest.result)
    return ShardResult(written, trades.height if trades is not None else 0, time.perf_counter() - began)


def _daily(rows: tuple[tuple, ...]) -> pl.DataFrame | None:
    if not rows:
        return None
    schema = {"symbol": pl.Utf8, "date": pl.Date, "n_trades": pl.Int64, "volume": pl.Float64,
              "dollar_volume": pl.Float64}
    return pl.DataFrame(list(dict.fromkeys(rows)), schema=schema, orient="row")


def with_trailing_days(lake: Lake, cfg: StateEngineConfig, tasks: list[ShardTask]) -> list[ShardTask]:
    """Give each task the daily measures of the trading days before it that its bars' thresholds use
    (``trailing_days``): the symbol's last N days with trades before the task's first day, measured here
    from their CDM trades (price and size only). Days with trades are those with a trades partition."""
    import dataclasses

    from quantflow.state_engine.bars import daily_measures

    depth = max(((b.trailing_days or 0) for b in cfg.bars if not b.is_calendar), default=0)
    if not depth or not tasks:
        return tasks
    symbols = sorted({t.symbol for t in tasks})
    last = max(d for t in tasks for d in t.dates)
    history = {}
    for part in lake.partitions(TRADES_TABLE, symbols, None, last):
        history.setdefault(part.symbol, []).append((part.period_start, part.path))
    needed: dict[str, str] = {}
    before: dict[int, list[tuple[str, dt.date]]] = {}
    for i, task in enumerate(tasks):
        days = sorted(d for d in history.get(task.symbol, []) if d[0] < task.dates[0])[-depth:]
        before[i] = [(task.symbol, d) for d, _ in days]
        needed.update({path: task.symbol for _, path in days})
    if not needed:
        return tasks
    columns = ["date", "price", "size"]
    try:
        frames = [_read_many(lake, sorted(needed), columns)]
        unreadable: dict[tuple[str, dt.date], str] = {}
    except (OSError, pl.exceptions.PolarsError):  # find the bad partitions: the tasks after them fail, saying why
        frames, unreadable = [], {}
        for path, symbol in needed.items():
            try:
                frames.append(_read_many(lake, [path], columns))
            except (OSError, pl.exceptions.PolarsError) as exc:
                day = next(d for d, p in history[symbol] if p == path)
                unreadable[symbol, day] = f"{type(exc).__name__}: {exc}"
    trades = pl.concat([f for f in frames if f is not None]) if any(f is not None for f in frames) else None
    measured = {(r[0], r[1]): r for r in daily_measures(trades).iter_rows()} if trades is not None else {}
    out = []
    for i, task in enumerate(tasks):
        bad = [k for k in before[i] if k in unreadable]
        error = (f"thresholds from trailing days need {TRADES_TABLE} of {bad[0][0]} {bad[0][1]}, which cannot be "
                 f"read ({unreadable[bad[0]]})") if bad else None
        out.append(dataclasses.replace(task, daily=tuple(measured[k] for k in before[i] if k in measured),
                                       daily_error=error))
    return out


def _read_many(lake: Lake, paths: list[str], columns: list[str] | None = None) -> pl.DataFrame | None:
    """Many partitions in one read (polars reads the files in parallel); ``symbol`` from the paths."""
    return _read_tables(lake, [paths], columns)[0]


# the path's values as text: an inferred schema made a symbol such as 0700 the integer 700
_HIVE_SCHEMA = {"symbol": pl.Utf8, **{key: pl.Utf8 for key in PATH_KEYS.values()}}


def _read_tables(lake: Lake, tables: list[list[str]], columns: list[str] | None = None) -> list[pl.DataFrame | None]:
    """Several tables' partitions (trades, quotes, messages) read together: locally one ``collect_all`` of
    their scans, so one table's files are decoded while another's are opened."""
    if lake.store.remote:
        frames = [pl.concat([lake.read_partition(p) for p in paths], how="vertical_relaxed") if paths else None
                  for paths in tables]
        frames = [df.select("symbol", *columns) if columns and df is not None else df for df in frames]
    else:
        scans = {i: pl.scan_parquet(paths, hive_partitioning=True, hive_schema=_HIVE_SCHEMA).select(
                     "symbol", *(columns or [pl.all().exclude(*_HIVE_SCHEMA)]))
                 for i, paths in enumerate(tables) if paths}
        read = dict(zip(scans, pl.collect_all(list(scans.values())), strict=True))
        frames = [read.get(i) for i in range(len(tables))]
    return [df if df is not None and df.height else None for df in frames]


def pack_tasks(lake: Lake, units: list[ShardTask], workers: int, max_trades: int) -> list[TaskPack]:
    """Units in (symbol, date) order, cut into packs by trades: as few as ``max_trades`` allows (a pack's data
    stays a few hundred MB in memory), and with several workers at least two per worker and a multiple of the
    workers, so every worker gets work and all finish together (13 packs on 2 workers would leave one worker
    a seventh pack while the other idles); a job of more rounds than that has its last round cut finer
    (``pack_sizes``)."""
    import pyarrow.parquet as pq

    def rows(path: str) -> int:
        try:  # the footer only; an unreadable file counts 1 and fails in its task, where it is reported
            if lake.store.remote:
                with lake.store.fs.open(path, "rb") as fh:
                    return pq.read_metadata(fh).num_rows
            return pq.read_metadata(path).num_rows
        except (OSError, ValueError):
            return 1

    def unit_rows(unit: ShardTask) -> int:
        return sum(rows(p) for p in unit.trade_paths if p is not None)

    return balanced_packs([(u, unit_rows(u)) for u in units], workers, max_trades)


def balanced_packs(sized: list[tuple[ShardTask, int]], workers: int, max_trades: int) -> list[TaskPack]:
    """``pack_tasks`` once every unit's trades are known."""
    total = max(1, sum(n for _, n in sized))
    n_packs = -(-total // max(1, max_trades))
    if workers > 1:
        n_packs = -(-max(n_packs, 2 * workers) // workers) * workers
    sizes = pack_sizes(n_packs, workers) if n_packs + 2 * workers <= len(sized) else [1.0] * n_packs
    sizes = sizes[:len(sized)] or [1.0]
    # a unit goes to the pack its middle trade falls in: contiguous packs within one unit of their share
    ends = list(itertools.accumulate(size * total / sum(sizes) for size in sizes))
    packs: list[list[tuple[ShardTask, int]]] = [[] for _ in sizes]
    before = 0
    for unit, n in sized:
        packs[min(len(sizes) - 1, bisect.bisect_right(ends, before + n / 2))].append((unit, n))
        before += n
    out: list[TaskPack] = []
    for pack in (p for p in packs if p):  # uneven units can leave a pack over max_trades: cut it
        current: list[ShardTask] = []
        count = 0
        for unit, n in pack:
            if current and count + n > max_trades:
                out.append(TaskPack(tuple(current), count))
                current, count = [], 0
            current.append(unit)
            count += n
        out.append(TaskPack(tuple(current), count))
    return out


def pack_sizes(n_packs: int, workers: int) -> list[float]:
    """Relative sizes of ``n_packs`` packs for ``workers`` pulling them in order: with one worker all equal;
    with several, the last round of ``workers`` packs becomes three rounds of a half, a quarter and a quarter.
    Tasks of the same size take a quarter more or less time from one to the next on a busy machine, so with
    equal packs one worker could finish a whole task before the other and idle (1-3 s of a 30 s run of 50M
    trades on 2 workers); small packs last let the worker that is ahead take more of the end, and the two
    finish within about a quarter task of each other, for two tasks more a worker. A job of only the minimum
    two rounds keeps equal packs: on the 1.5M-trade sample its quarter packs were about 0.1 s of work, and
    Ray's cost per task made the stage slower (1.43x the polars script instead of 1.79x)."""
    if workers <= 1 or n_packs <= 2 * workers:
        return [1.0] * n_packs
    return [1.0] * (n_packs - workers) + [0.5] * workers + [0.25] * (2 * workers)


def _done_marker(has_trades: bool) -> str:
    """The table a shard writes last on a day: enriched trades, or the book on a day of messages only."""
    return ENRICHED_TABLE if has_trades else LOB_TABLE


def _read(lake: Lake, path: str | None) -> pl.DataFrame | None:
    """One partition, or None when there is none (or it is empty)."""
    if path is None:
        return None
    df = lake.read_partition(path)
    return df if df.height else None


def _write_outputs(lake: Lake, out: dict[str, pl.DataFrame], task: ShardTask, day: dt.date, tables: list[str],
                   written: dict[str, WriteResult]) -> None:
    """One day's outputs. ``skip_if_exists`` keeps stored days; ``overwrite`` and ``append`` (which adds raw
    rows, so derived tables are recomputed) make the day equal to this pass: a table with no rows that day
    loses what an earlier pass stored. The done marker goes last: see the module docstring."""
    enriched = out.get(ENRICHED_TABLE)
    marker = _done_marker(enriched is not None and enriched.height > 0)
    for table in sorted(tables, key=lambda t: t == marker):
        df = out.get(table)
        result = written.setdefault(table, WriteResult(table))
        if df is None or df.height == 0:
            if task.write_mode != "skip_if_exists":
                result.merge(lake.drop_day(table, task.symbol, day))
            continue
        spec = TableSpec(table, dict(df.schema), partition_width(table),
                         SORT_KEYS.get(table, ("symbol", "date", "ts_first")))
        result.merge(lake.write(spec, df, "skip_if_exists" if task.write_mode == "skip_if_exists" else "overwrite"))


@dataclass
class StateEngineResult(StageResult):
    executor: str = ""
    shards: int = 0
    shards_skipped: int = 0
    shards_failed: list[str] = field(default_factory=list)
    plan: str = ""  # how the shards were run: tasks, trades, executor (and why)
    nodes: int = 0  # the Ray nodes that ran tasks (0 in process)
    trades: int = 0
    skipped_tables: dict[str, str] = field(default_factory=dict)  # table -> why it was not built

    def skip(self, tables: list[str], reason: str) -> None:
        self.skipped_tables.update(dict.fromkeys(tables, reason))
        self.warnings.append(f"skipped {', '.join(tables)}: {reason}")

    @property
    def trades_per_second(self) -> float:
        return self.trades / self.seconds if self.seconds > 0 else 0.0

    def headline(self) -> str:
        kept = f" ({self.shards_skipped} already stored)" if self.shards_skipped else ""
        nodes = f" ({self.nodes} nodes)" if self.nodes > 1 else ""
        return (f"{self.shards} shards{kept} on {self.executor}{nodes}, {self.trades:,} trades in {self.seconds:.1f}s "
                f"({self.trades_per_second:,.0f} trades/s)")

    def key_figures(self) -> dict[str, Any]:
        figures = {"executor": self.executor, "shards": self.shards, "shards_skipped": self.shards_skipped,
                   "trades": self.trades, "trades_per_second": round(self.trades_per_second, 1),
                   **({"ray_nodes": self.nodes} if self.nodes else {})}
        return {**figures, "task_plan": self.plan} if self.plan else figures


def _shard_groups(days: list[dt.date], granularity: str) -> list[list[dt.date]]:
    def key(d: dt.date):
        if granularity == "daily":
            return d
        if granularity == "weekly":
            return d.isocalendar()[:2]
        if granularity == "monthly":
            return (d.year, d.month)
        raise ValueError(f"shard_granularity must be daily, weekly or monthly; got {granularity!r}")

    groups: dict = {}
    for d in sorted(days):
        groups.setdefault(key(d), []).append(d)
    return list(groups.values())


def plan_shards(md: ProjectMetadata, cfg: StateEngineConfig, start: dt.date, end: dt.date, symbols: list[str],
                write_mode: str, granularity: str = "daily") -> list[ShardTask]:
    """One task per (symbol, time shard) with CDM trades (or, for a book from messages, order messages);
    one per symbol when state is carried across days."""
    lake = project_lake(md)
    tasks = []

    def parts(table: str) -> dict[tuple[str, dt.date], str]:
        return {(p.symbol, p.period_start): p.path for p in lake.partitions(table, symbols, start, end)}

    trade_parts, quote_parts = parts(TRADES_TABLE), parts(QUOTES_TABLE)
    message_parts = parts(MESSAGES_TABLE) if uses_messages(cfg) else {}
    by_symbol: dict[str, set[dt.date]] = {}
    for symbol, day in (*trade_parts, *message_parts):  # a day of messages alone still has a book
        by_symbol.setdefault(symbol, set()).add(day)
    for symbol in symbols:
        days = by_symbol.get(symbol, set())
        groups = [sorted(days)] if cfg.carry_state and days else _shard_groups(list(days), granularity)
        for group in groups:

            def paths(found: dict, group=group, symbol=symbol) -> tuple[str | None, ...]:
                return tuple(found.get((symbol, d)) for d in group)

            tasks.append(ShardTask(
                lake.store.root, lake.store.options, symbol, tuple(group), paths(trade_parts), paths(quote_parts),
                paths(message_parts), cfg, write_mode, compression=lake.compression,
            ))
    return tasks


def calendar_period(day: dt.date, every: str) -> tuple[dt.date, dt.date]:
    """The calendar period (``1w`` weeks from Monday, ``1mo``, ``1q``, ``1y``) holding ``day``: first, last day."""
    if every == "1w":
        first = day - dt.timedelta(days=day.weekday())
        return first, first + dt.timedelta(days=6)
    months = {"1mo": 1, "1q": 3, "1y": 12}[every]
    month = (day.month - 1) // months * months + 1
    first = dt.date(day.year, month, 1)
    after = dt.date(first.year + (month + months - 1) // 12, (month + months - 1) % 12 + 1, 1)
    return first, after - dt.timedelta(days=1)


def _calendar_bars(md: ProjectMetadata, cfg: StateEngineConfig, window: RunWindow, result: StateEngineResult,
                   progress: Progress) -> None:
    """Calendar bars are recomputed whole, in every write mode: every period the window touches is rebuilt
    from all the daily bars stored for it (also days after the window), and replaces what was stored for
    that period. So a bar cut by a window's end is never kept beside, or instead of, the full one: it is the
    bar of the days known so far, until a run that reaches further rebuilds it."""
    from quantflow.state_engine.bars import resample_daily_bars

    bars = [b for b in cfg.bars if b.is_calendar]
    if not bars:
        return
    lake = project_lake(md)
    for b in bars:
        first, last = calendar_period(window.start_date, b.every)[0], calendar_period(window.end_date, b.every)[1]
        # a month past the last period: a later daily bar there tells that period is over
        daily = lake.read(BARS_DAILY_TABLE, window.symbols, first, last + dt.timedelta(days=31))
        periods = daily.filter(pl.col("date") <= last) if daily.height else daily
        if periods.height == 0:
            result.skip([b.table], f"no {BARS_DAILY_TABLE} rows in the window")
            continue
        known = daily.group_by("symbol").agg(pl.col("date").max().alias("__known"))
        df = resample_daily_bars(periods, b.every)
        # complete once the days known reach the period's last calendar day: the run's window end, or a
        # later daily bar stored for the symbol (a Friday's weekly bar is complete when the window passes Sunday)
        df = (df.join(known, on="symbol", how="left")
              .with_columns((pl.col("period_start").dt.offset_by(b.every) - pl.duration(days=1)
                             <= pl.max_horizontal(pl.col("__known"), pl.lit(window.end_date))).alias("complete"))
              .drop("__known"))
        if b.incomplete == "drop":
            df = df.filter(pl.col("complete"))
        spec = TableSpec(b.table, dict(df.schema), partition_width(b.table), ("symbol", "date"))
        result.record_write(b.table, lake.replace(spec, df, window.symbols, first, last), lake.url(b.table))
        result.preview[b.table] = df.head(5)
        progress.detail(f"state engine: {b.table}: {result.tables[b.table].rows_written} rows from daily bars")


def _stored_days(lake: Lake, tables: list[str], symbols: list[str], window: RunWindow) -> dict[tuple, set[dt.date]]:
    """(table, symbol) -> the days stored in the window: a listing for day partitions, the ``date`` column
    of the (small) month partitions of bar tables; one listing or one read a table, for all symbols."""
    out: dict[tuple, set[dt.date]] = {(table, symbol): set() for table in tables for symbol in symbols}
    for table in tables:
        if lake.partition_width(table) == "day":
            for p in lake.partitions(table, symbols, window.start_date, window.end_date):
                out[table, p.symbol].add(p.period_start)
        else:
            stored = lake.read(table, symbols, window.start_date, window.end_date, columns=["symbol", "date"])
            for symbol, day in stored.unique().iter_rows() if stored.height else ():
                out[table, symbol].add(day)
    return out


def stored_shards(lake: Lake, cfg: StateEngineConfig, tasks: list[ShardTask], window: RunWindow) -> set[int]:
    """Indexes of the tasks whose every day is stored already in every table that must have it (the done
    marker, and each bar table but those that drop incomplete bars, which may have none on a day), found
    here with a listing or a small read per (table, symbol): a re-run of a stored window starts no worker,
    and a bar type added to the config is built for the days stored before it."""
    symbols = sorted({t.symbol for t in tasks})
    bars = [b.table for b in cfg.bars if not b.is_calendar and b.incomplete == "keep"]
    done = _stored_days(lake, [ENRICHED_TABLE, *(t for t in (LOB_TABLE,) if cfg.lob.interval), *bars], symbols,
                        window)

    def stored(task: ShardTask, day: dt.date, has_trades: bool) -> bool:
        if not has_trades:  # a day of order messages only: the book is all it has
            return day in done.get((LOB_TABLE, task.symbol), set())
        return all(day in done[table, task.symbol] for table in (ENRICHED_TABLE, *bars))

    return {i for i, task in enumerate(tasks)
            if all(stored(task, d, t is not None) for d, t in zip(task.dates, task.trade_paths))}


def drop_days_without_input(lake: Lake, cfg: StateEngineConfig, tasks: list[ShardTask], window: RunWindow,
                            result: StateEngineResult) -> None:
    """``overwrite`` / ``append``: a (symbol, day) of the window stored in a tick table but with no input any
    more (its CDM trades, and messages, are gone) leaves the table too, as a derived table must."""
    planned = {(t.symbol, d) for t in tasks for d in t.dates}
    tables = tick_tables(cfg)
    for (table, symbol), days in _stored_days(lake, tables, list(window.symbols), window).items():
        for day in sorted(d for d in days if (symbol, d) not in planned):
            result.record_write(table, lake.drop_day(table, symbol, day))


PACK_MAX_TRADES = 4_000_000  # a pack's trades (and its quotes) stay a few hundred MB in memory


def plan_work(lake: Lake, cfg: StateEngineConfig, units: list[ShardTask], kind: str, max_concurrency: int,
              result: StateEngineResult) -> tuple[list, str]:
    """The tasks and the executor for ``units``: packs sized by trades (chains of carried state stay one task
    each), in process when the job is small and no cluster is named (``RAY_ADDRESS``). Recorded in
    ``result.plan`` for the log and the materialization metadata."""
    if cfg.carry_state:
        work: list = list(units)
        total = None
    else:
        workers = max_concurrency if kind == "ray" else 1
        work = pack_tasks(lake, units, workers, PACK_MAX_TRADES)
        total = sum(p.trades for p in work)
        if kind == "ray" and total < cfg.ray_min_trades and not os.environ.get("RAY_ADDRESS"):
            kind = "local"
            work = pack_tasks(lake, units, 1, PACK_MAX_TRADES)
    size = f", {total:,} trades" if total is not None else ""
    why = " (a small job: in process)" if kind == "local" and result.executor == "ray" else ""
    result.executor = kind
    tasks = counted(len(work), "task")
    result.plan = f"{len(units)} shards in {tasks}{size} on {kind}{why}"
    return work, kind


def run(
    md: ProjectMetadata,
    window: RunWindow,
    *,
    max_concurrency: int = 4,
    shard_granularity: str = "daily",
    executor: str | None = None,
    progress: Progress | None = None,
) -> StateEngineResult:
    """Run the state engine for the window over the CDM tables in the lake."""
    progress = progress or Progress()
    cfg = md.project.state_engine
    if cfg is None:
        raise ValueError("project_metadata/project.yaml has no project.state_engine section")
    kind = executor or cfg.executor
    result = StateEngineResult(STAGE, window, executor=kind)
    lake = project_lake(md)
    began = time.perf_counter()
    symbols = list(window.symbols)

    tasks = plan_shards(md, cfg, window.start_date, window.end_date, symbols, window.write_mode, shard_granularity)
    result.shards = len(tasks)
    stored = stored_shards(lake, cfg, tasks, window) if window.write_mode == "skip_if_exists" else set()
    if window.write_mode != "skip_if_exists":
        drop_days_without_input(lake, cfg, tasks, window, result)
    result.shards_skipped = len(stored)
    pending = with_trailing_days(lake, cfg, [t for i, t in enumerate(tasks) if i not in stored])
    if not tasks:  # nothing downstream of the tick tables runs either
        ticks = any("trades" in feed.raw_kinds() for feed in md.project.ingest.enabled_feeds)
        why = "no trading day in it, or none ingested" if ticks else "the feeds give no ticks"
        result.skip(tick_tables(cfg), f"no {TRADES_TABLE} in the window ({why})")
    else:
        progress.begin(len(tasks), "shards", "state engine")
        progress.advance(len(stored))
        if not pending:
            progress.detail(f"state engine: all {len(tasks)} shards are stored (skip_if_exists): nothing to run")
        else:
            progress.detail(f"state engine: {len(pending)} shards ({shard_granularity}) for {len(symbols)} symbols "
                            f"on {kind}, {len(stored)} stored")
            if uses_messages(cfg) and not any(p for t in pending for p in t.message_paths):
                result.skip([LOB_TABLE], f"lob.source is messages and there are no {MESSAGES_TABLE} in the window")
            work, kind = plan_work(lake, cfg, pending, kind, max_concurrency, result)
            progress.detail(f"state engine: {result.plan}")
            env = {"NUMBA_CACHE_DIR": os.environ["NUMBA_CACHE_DIR"]} if os.environ.get("NUMBA_CACHE_DIR") else None
            runner = make_executor(kind, max_concurrency, cfg.retries, env)

            def units(task) -> int:
                return len(task.units) if isinstance(task, TaskPack) else 1

            def on_done(done: int, total: int, outcome: ShardOutcome) -> None:
                if outcome.ok:
                    progress.detail(f"task {done}/{total} {outcome.shard}: {outcome.result.trades} trades in "
                                    f"{outcome.seconds:.2f}s")
                    progress.advance(units(outcome.shard), outcome.result.trades)
                else:
                    progress.detail(f"task {done}/{total} {outcome.shard} FAILED after {outcome.attempts} attempts: "
                                    f"{outcome.error}")
                    progress.advance(units(outcome.shard))

            report: ExecutionReport = runner.map(run_task, work, on_done)
            result.nodes = len(report.nodes)
            failed_packs = [o for o in report.outcomes if not o.ok and isinstance(o.shard, TaskPack)]
            if failed_packs:  # run those units one by one, so a bad shard fails alone and the others are written
                progress.detail(f"state engine: {len(failed_packs)} tasks failed; running their shards one by one")
                retry = runner.map(run_task, [u for o in failed_packs for u in o.shard.units])
                report.outcomes = [o for o in report.outcomes if o not in failed_packs] + retry.outcomes
            for outcome in report.outcomes:
                if not outcome.ok:
                    result.shards_failed.append(f"{outcome.shard}: {outcome.error}")
                    continue
                shard: ShardResult = outcome.result
                result.trades += shard.trades
                for table, written in shard.written.items():
                    result.record_write(table, written)
            result.warnings.extend(_collapsed_bars(cfg, result))
        for table in tick_tables(cfg):
            result.record_write(table, WriteResult(table), lake.url(table))
            parts = lake.partitions(table, symbols, window.start_date, window.end_date)
            if parts:
                result.preview[table] = lake.read_partition(parts[0].path).head(5)

    _calendar_bars(md, cfg, window, result, progress)
    result.seconds = time.perf_counter() - began
    if result.shards_failed:
        result.shards_failed.sort()  # (symbol, date) order: the first is the earliest, often the cause of the rest
        raise StateEngineError(result)
    return result


def _collapsed_bars(cfg: StateEngineConfig, result: StateEngineResult) -> list[str]:
    """Information-driven bar tables with under two trades a bar this run: on balanced order flow
    (|E[b]| near 0) AFML's threshold falls to about one trade's imbalance and every trade closes a bar, as
    the definition says; a researcher who asked for bars of ``expected_ticks`` trades wants to know."""
    out = []
    for b in cfg.bars:
        rows = result.tables[b.table].rows_written if b.table in result.tables else 0
        if ("imbalance" in b.type or b.type.endswith("_run")) and rows and result.trades < 2 * rows:
            out.append(f"{b.table}: {result.trades / rows:.1f} trades a bar ({rows:,} bars from {result.trades:,} "
                       f"trades, expected_ticks {b.expected_ticks:g}): the threshold fell to about one trade, as "
                       "it does on balanced order flow; raise min_expected_ticks or use run bars")
    return out


class StateEngineError(StageError):
    """Some shards failed (after their retries); the others were written. ``result`` has the details.

    The message is one line: how many failed, then the first failure's shard (symbol, dates) and cause."""

    def __init__(self, result: StateEngineResult):
        failed = result.shards_failed
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        super().__init__(f"{len(failed)} of {result.shards} state-engine shards failed, the others were written; "
                         f"shard {failed[0]}{more}", result=result)
