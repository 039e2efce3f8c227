"""The lake: Parquet tables partitioned by symbol and period on a local folder or S3.

Layout (hive partitions, readable as they are by polars, pandas, pyarrow and DuckDB):

    <root>/<table>/symbol=<S>/day=<YYYY-MM-DD>/data.parquet      tick tables: one partition per day
    <root>/<table>/symbol=<S>/month=<YYYY-MM>/data.parquet       intraday bars: one per month
    <root>/<table>/symbol=<S>/year=<YYYY>/data.parquet           daily-frequency tables: one per year
    <root>/<table>/symbol=<S>/decade=<YYYY>/data.parquet         wide daily tables (ft_features): per decade

A file holds every column of the table except ``symbol``, which only the path carries (a column both in
the path and in the file makes pandas and pyarrow refuse the dataset); the ``date`` column stays in the
file, so every reader gets it as a date, and the ``day`` / ``month`` / ``year`` / ``decade`` path key is only for pruning.
A table's partition width follows its rows per (symbol, day): ticks fill a file a day, a day of bars is a few
hundred rows (a month per file keeps their files few and large enough), daily bars one row.

Each partition is one file, replaced by a single atomic rename (local) or PUT (S3): a crash leaves the old
file or the new one, never a half-written partition. Every write of a partition is a read-modify-write
through ``Store.update`` (an exclusive lock on a local lake, compare-and-swap on S3), so runs writing the
same partition at once keep every row.

Write modes act on (symbol, day) units inside a partition:
- ``skip_if_exists``: days already stored are kept as they are; only new days are added.
- ``overwrite``: days present in the new data replace the stored rows of those days.
- ``append``: rows are added to what is stored, except rows whose key (the table's sort key, e.g.
  symbol, date, ts, trade_id) is stored already: appending the same rows twice stores them once.
``replace`` makes a date range of a derived table equal to the new rows: what the stages use to keep a
derived table equal to what its inputs imply.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from quantflow.storage.filesystem import DELETE, LOCKS_DIR, RECORDS_DIR, STAGING_DIR, Store
from quantflow.storage.schemas import TableSpec, conform
from quantflow.storage.tables import partition_width
from quantflow.storage.writes import COMPRESSIONS, WRITE_MODES, WriteMode, WriteResult

DATA_FILE = "data.parquet"
PATH_KEYS = {"day": "day", "month": "month", "year": "year", "decade": "decade"}  # partition width -> the path key after symbol=
_TRUNCATE = {"day": "1d", "month": "1mo", "year": "1y", "decade": "10y"}
WRITE_THREADS = max(2, min(8, os.cpu_count() or 2))
_PART_RE = re.compile(
    r"symbol=(?P<symbol>[^/]+)/(?P<key>day|month|year|decade)=(?P<value>\d{4}(?:-\d{2}(?:-\d{2})?)?)/"
    + re.escape(DATA_FILE) + "$"
)
_OLD_LAYOUT = "symbol=*/date=*/" + DATA_FILE  # before the hive-readable layout: see ``upgrade_layout``


_STAGED_KEY = "__partition"  # the key of staged writes: the first day of the partition's period


def _staged_file(args) -> str:
    """``<symbol>/<period start>.parquet`` in the staging folder: one file per partition."""
    keys = args.partition_keys.row(0, named=True)
    return f"{keys['symbol']}/{keys[_STAGED_KEY].isoformat()}.parquet"


def _period(width: str) -> pl.Expr:
    """The first day of each row's partition period."""
    return pl.col("date") if width == "day" else pl.col("date").dt.truncate(_TRUNCATE[width])


def _stage(df: pl.DataFrame, folder: Path, width: str, options: dict) -> None:
    """Encode ``df`` (sorted) as one file per (symbol, period) in a staging folder, in one polars call: every
    partition side by side in Rust, without the GIL (a Python loop over hundreds of small partitions spent
    most of its time around the encoder). ``symbol`` is left out of the files: it is in their paths."""
    df.lazy().with_columns(_period(width).alias(_STAGED_KEY)).sink_parquet(
        pl.PartitionBy(folder, key=["symbol", _STAGED_KEY], include_key=False, approximate_bytes_per_file=None,
                       file_path_provider=_staged_file),
        mkdir=True, **options)


def key_runs(df: pl.DataFrame, keys: list[str]) -> list[tuple]:
    """``(*key values, rows)`` of each run of equal ``keys`` in ``df``, in order: found by comparing each row
    with the one before it, without hashing every row's keys as a group-by does (a sorted frame has one run a
    key; an unsorted one may repeat a key)."""
    if not df.height:
        return []
    new_run = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift()) for k in keys])
    starts = df.select(*keys, pl.int_range(pl.len(), dtype=pl.Int64).alias("__row"), new_run.alias("__new")).filter("__new")
    rows = np.diff(np.append(starts["__row"].to_numpy(), df.height)).tolist()
    return [(*key, n) for key, n in zip(starts.select(keys).iter_rows(), rows, strict=True)]


def _sorted(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``df`` in ``keys`` order (a stable sort). A frame already in order, as a stage's output usually is, is
    recognised by comparing each row's keys with the previous row's, without gathering every column."""
    if not df.select(pl.any_horizontal(pl.col(keys).null_count() > 0)).item():
        in_order = pl.col(keys[-1]) >= pl.col(keys[-1]).shift(1)
        for key in reversed(keys[:-1]):
            before = pl.col(key).shift(1)
            in_order = (pl.col(key) > before) | ((pl.col(key) == before) & in_order)
        if df.select(in_order.fill_null(True).all()).item():  # null: the first row
            return df
    return df.sort(keys, maintain_order=True)


class LakeLayoutError(RuntimeError):
    """A table written in the lake layout of an earlier QuantFlow: ``qf lake upgrade`` converts it."""


@dataclass(frozen=True)
class Partition:
    table: str
    symbol: str
    period_start: dt.date
    path: str


def parse_partition(path: str) -> Partition | None:
    """The partition a file path names (``<table>/symbol=<S>/<key>=<value>/data.parquet``), or None."""
    m = _PART_RE.search(path)
    if not m:
        return None
    table = path[: m.start()].rstrip("/").rsplit("/", 1)[-1]
    return Partition(table, m["symbol"], _parse_path_value(m["value"], m["key"]), path)


def period_start(day: dt.date, width: str) -> dt.date:
    if width == "day":
        return day
    if width == "month":
        return day.replace(day=1)
    if width == "year":
        return dt.date(day.year, 1, 1)
    if width == "decade":
        return dt.date(day.year // 10 * 10, 1, 1)
    raise ValueError(f"unknown partition width {width!r} (expected 'day', 'month', 'year' or 'decade')")


def period_end(start: dt.date, width: str) -> dt.date:
    if width == "day":
        return start
    if width == "month":
        return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    return dt.date(start.year + (9 if width == "decade" else 0), 12, 31)


def _path_value(start: dt.date, width: str) -> str:
    return {"day": start.isoformat(), "month": start.isoformat()[:7], "year": str(start.year),
            "decade": str(start.year)}[width]


def _parse_path_value(value: str, width: str) -> dt.date:
    if width == "day":
        return dt.date.fromisoformat(value)
    if width == "month":
        return dt.date.fromisoformat(value + "-01")
    return dt.date(int(value), 1, 1)


# The lake's codec (``project.storage.compression``, one of ``COMPRESSIONS``). Snappy, the default: what
# pyarrow, DuckDB and Spark write; on tick data about 40% larger than zstd, but encoded in three quarters of the
# time and decoded in half, and a stage reads and writes every row. zstd (level 1: about the size of its default
# level, at a fraction of the encoding time) where storage costs more than time. Files of any codec read the same.
DEFAULT_COMPRESSION = "snappy"


def parquet_options(compression: str) -> dict:
    if compression not in COMPRESSIONS:
        raise ValueError(f"lake compression must be one of {', '.join(COMPRESSIONS)}; got {compression!r}")
    return {"compression": compression, "statistics": True, **({"compression_level": 1} if compression == "zstd" else {})}


class Lake:
    """Reads and writes lake tables under one storage root."""

    def __init__(self, store: Store, compression: str = DEFAULT_COMPRESSION):
        self.store = store
        self.compression = compression
        self._parquet = parquet_options(compression)
        self._widths: dict[str, str] = {}

    def _encode(self, df: pl.DataFrame) -> bytes:
        """One partition's file, in the lake's codec."""
        buf = io.BytesIO()
        df.write_parquet(buf, **self._parquet)
        return buf.getvalue()

    # ------------------------------------------------------------------ paths
    def table_path(self, table: str) -> str:
        return self.store.path(table)

    def partition_path(self, table: str, symbol: str, start: dt.date, width: str | None = None) -> str:
        width = width or self.partition_width(table)
        return self.store.path(table, f"symbol={symbol}", f"{PATH_KEYS[width]}={_path_value(start, width)}",
                               DATA_FILE)

    def url(self, table: str) -> str:
        return self.store.url(self.table_path(table))

    def tables(self) -> list[str]:
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in self.store.ls(self.store.path()))
        return sorted(n for n in names if "." not in n and n not in (LOCKS_DIR, STAGING_DIR, RECORDS_DIR))

    def partitions(
        self,
        table: str,
        symbols: Iterable[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> list[Partition]:
        """Partitions of ``table`` whose symbol is in ``symbols`` and whose period overlaps [start, end]."""
        wanted = set(symbols) if symbols is not None else None
        found = []
        one = f"symbol={next(iter(wanted))}" if wanted is not None and len(wanted) == 1 else None
        for path in self._partition_files(table, one):
            m = _PART_RE.search(path)
            if not m:
                if "/date=" in path:
                    raise LakeLayoutError(f"{self.store.url(path)}: written in the lake layout of an earlier "
                                          "QuantFlow (symbol=/date=); run `qf lake upgrade` to convert it in place")
                continue
            symbol, width = m["symbol"], m["key"]
            if wanted is not None and symbol not in wanted:
                continue
            pstart = _parse_path_value(m["value"], width)
            if end is not None and pstart > end:
                continue
            if start is not None and period_end(pstart, width) < start:
                continue
            found.append(Partition(table, symbol, pstart, path))
        return found

    def _partition_files(self, table: str, symbol_dir: str | None) -> list[str]:
        """``<table>/symbol=*/*=*/data.parquet`` (or one ``symbol_dir``), sorted. A local root walks the two
        folder levels with ``os.scandir`` (Python's glob took three times as long, and a stage lists its
        tables several times)."""
        if self.store.remote:
            return self.store.glob(self.store.path(table, symbol_dir or "symbol=*", "*=*", DATA_FILE))
        base = self.store.path(table)
        try:
            symbol_dirs = [f"{base}/{symbol_dir}"] if symbol_dir else \
                [e.path for e in os.scandir(base) if e.name.startswith("symbol=") and e.is_dir()]
        except FileNotFoundError:
            return []
        found = []
        for folder in symbol_dirs:
            try:
                periods = [e.path for e in os.scandir(folder)
                           if "=" in e.name and not e.name.startswith(".") and e.is_dir()]
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.extend(f for f in (f"{p}/{DATA_FILE}" for p in periods) if os.path.exists(f))
        return sorted(found)

    def partition_width(self, table: str) -> str:
        """The table's partition width, from the key of a stored partition (by name for a table not written
        yet): two listings, whatever the table's size. A table of the earlier layout is refused here,
        before anything reads or writes it."""
        if table not in self._widths:
            width = partition_width(table)
            symbols = [p for p in self.store.ls(self.store.path(table)) if p.rstrip("/").rsplit("/", 1)[-1]
                       .startswith("symbol=")]
            periods = self.store.ls(symbols[0]) if symbols else []
            if periods:
                key = periods[0].rstrip("/").rsplit("/", 1)[-1].split("=", 1)[0]
                if key == "date":
                    raise LakeLayoutError(f"{self.store.url(periods[0])}: written in the lake layout of an earlier "
                                          "QuantFlow (symbol=/date=); run `qf lake upgrade` to convert it in place")
                width = key if key in PATH_KEYS else width
            self._widths[table] = width
        return self._widths[table]

    # ------------------------------------------------------------------ read
    def read_partition(self, path: str, columns: list[str] | None = None) -> pl.DataFrame:
        """One partition file, with its ``symbol`` column (taken from the path) first; only ``columns``
        (and ``symbol``) when given."""
        m = _PART_RE.search(path)
        stored = [c for c in columns if c != "symbol"] if columns is not None else None
        try:
            df = self._read_parquet(path, stored)
        except pl.exceptions.ColumnNotFoundError:  # written before a column existed: ``read`` fills in nulls
            df = self._read_parquet(path, None)
        return self._with_symbol(df, m["symbol"] if m else None)

    def _read_parquet(self, path: str, columns: list[str] | None) -> pl.DataFrame:
        if self.store.remote:
            with self.store.fs.open(path, "rb") as fh:
                return pl.read_parquet(fh, columns=columns)
        return pl.read_parquet(path, columns=columns)  # polars' reader: no pyarrow.dataset/pandas in workers

    def _read_partitions(self, parts: list[Partition], columns: list[str] | None) -> list[pl.DataFrame]:
        """The partitions' frames, each with its ``symbol``. Local files are read in one polars call, the
        symbol taken from each path (its multi-file reader is several times faster than a call per small
        file); files that do not fit one schema, and remote ones, are read one by one, side by side."""
        if not self.store.remote and len(parts) > 1:
            stored = [c for c in columns if c != "symbol"] if columns is not None else None
            key = _PART_RE.search(parts[0].path)["key"]
            # a path's values would silently replace a file column of the same name (a feature named `year`)
            names = stored if stored is not None else list(pl.read_parquet_schema(parts[0].path))
            try:
                if key not in names and "symbol" not in names:
                    # the projection names ``symbol``: without it polars finds no such column, and every read
                    # of some columns fell back to a read per file
                    projected = None if stored is None else [*stored, "symbol"]
                    df = pl.read_parquet([p.path for p in parts], columns=projected, missing_columns="insert",
                                         hive_partitioning=True, hive_schema={"symbol": pl.Utf8, key: pl.Utf8})
                    return [df.select("symbol", pl.exclude("symbol", key))]
                by_symbol: dict[str, list[str]] = {}
                for p in parts:
                    by_symbol.setdefault(p.symbol, []).append(p.path)
                return [self._with_symbol(pl.read_parquet(paths, columns=stored, missing_columns="insert"), symbol)
                        for symbol, paths in by_symbol.items()]
            except pl.exceptions.PolarsError:  # columns added or retyped between partitions: one by one
                pass
        if len(parts) > 1:  # polars decodes Parquet without the GIL: read the files side by side
            with ThreadPoolExecutor(max_workers=min(len(parts), WRITE_THREADS)) as pool:
                return list(pool.map(lambda p: self.read_partition(p.path, columns), parts))
        return [self.read_partition(p.path, columns) for p in parts]

    @staticmethod
    def _with_symbol(df: pl.DataFrame, symbol: str | None) -> pl.DataFrame:
        if symbol is None or "symbol" in df.columns:
            return df
        return df.select(pl.lit(symbol, pl.Utf8).alias("symbol"), pl.all())

    def read(
        self,
        table: str,
        symbols: Iterable[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """Rows of ``table`` for ``symbols`` with ``start <= date <= end`` (an empty frame when none)."""
        parts = self.partitions(table, symbols, start, end)
        wanted = None if columns is None else list(dict.fromkeys([*columns, "date"]))
        frames = self._read_partitions(parts, wanted)
        if not frames:
            return pl.DataFrame()
        df = pl.concat(frames, how="diagonal_relaxed")  # partitions written before a column existed: nulls
        if start is not None:
            df = df.filter(pl.col("date") >= start)
        if end is not None:
            df = df.filter(pl.col("date") <= end)
        if columns:
            missing = [c for c in columns if c not in df.columns]
            df = df.with_columns(pl.lit(None).alias(c) for c in missing).select(columns)
        return df

    def stored_days(self, table: str, symbol: str, start: dt.date, end: dt.date) -> set[dt.date]:
        df = self.read(table, [symbol], start, end, columns=["date"])
        return set(df["date"].unique().to_list()) if df.height else set()

    # ------------------------------------------------------------------ write
    def _prepare(self, spec: TableSpec, df: pl.DataFrame) -> pl.DataFrame:
        df = conform(df, spec.schema, where=f"table {spec.name}")
        nulls = df.select(pl.col("symbol").null_count() + pl.col("date").null_count()).item()
        if nulls:
            raise ValueError(f"table {spec.name}: {nulls} rows have a null symbol or date; refusing to write")
        stored = self.partition_width(spec.name)
        if stored != spec.partition and self.partitions(spec.name):
            raise ValueError(f"table {spec.name} is stored in {stored} partitions; refusing to write "
                             f"{spec.partition} partitions beside them")
        self._widths[spec.name] = spec.partition
        return df

    def _by_partition(self, spec: TableSpec, df: pl.DataFrame):
        keyed = df.with_columns(_period(spec.partition).alias(_STAGED_KEY))
        for (symbol, pstart), part in keyed.partition_by(["symbol", _STAGED_KEY], maintain_order=True,
                                                         as_dict=True).items():
            yield symbol, pstart, part.drop(_STAGED_KEY)

    def write(self, spec: TableSpec, df: pl.DataFrame, mode: WriteMode = "skip_if_exists",
              before_install: Callable[[], object] | None = None) -> WriteResult:
        """Write ``df`` (any number of symbols and days) into ``spec.name`` obeying ``mode``.

        ``before_install`` runs before the first partition changes (an exception from it changes nothing):
        a caller that must have other tables written first lets them be written while this one is encoded,
        which local day partitions do before they call it."""
        if mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {', '.join(WRITE_MODES)}; got {mode!r}")
        result = WriteResult(spec.name)
        if df.height == 0:
            if before_install:
                before_install()
            return result
        df = _sorted(self._prepare(spec, df), list(dict.fromkeys(["symbol", "date", *spec.sort_by])))
        if spec.partition == "day" and mode != "append" and not self.store.remote:
            return self._write_days(spec, df, mode, before_install)
        if mode == "overwrite" and not self.store.remote:
            return self._overwrite_periods(spec, df, before_install)
        if before_install:
            before_install()

        def one(item) -> WriteResult:
            symbol, pstart, part = item
            if spec.partition == "day" and mode != "append":  # remote roots (local ones: ``_write_days``)
                return self._write_day(spec, symbol, pstart, part, mode)
            replaced = pl.col("date").is_in(part["date"].unique().implode()) if mode == "overwrite" else None
            return self._update_partition(spec, symbol, pstart, _merge_by_mode(part, mode, spec.sort_by),
                                          replaced=replaced)

        parts = list(self._by_partition(spec, df))
        if len(parts) == 1:
            result.merge(one(parts[0]))
            return result
        # partitions are independent files, each under its own lock: encode and write them side by side
        # (polars encodes Parquet without the GIL)
        with ThreadPoolExecutor(max_workers=min(len(parts), WRITE_THREADS)) as pool:
            for written in pool.map(one, parts):
                result.merge(written)
        return result

    def _write_days(self, spec: TableSpec, df: pl.DataFrame, mode: WriteMode,
                    before_install: Callable[[], object] | None = None) -> WriteResult:
        """Whole local day partitions, as :meth:`_write_day` writes them, for many days at once: one polars
        call encodes every partition side by side (in Rust, without the GIL: a Python loop over many small
        days spent most of its time around the encoder) into a staging folder; then each file moves into
        place under its partition's lock, kept out when the day is stored (``skip_if_exists``)."""
        result = WriteResult(spec.name)
        rows = {(symbol, day): n for symbol, day, n in key_runs(df, ["symbol", "date"])}  # sorted by ``write``
        if mode == "skip_if_exists":  # days stored already are not encoded (checked again under the lock)
            stored = [k for k in rows if self.store.exists(self.partition_path(spec.name, *k, "day"))]
            if stored:
                result.merge(WriteResult(spec.name, days_skipped=len(stored)))
                for key in stored:
                    del rows[key]
                keys = pl.DataFrame(stored, schema={"symbol": pl.Utf8, "date": pl.Date}, orient="row")
                df = df.join(keys, on=["symbol", "date"], how="anti", maintain_order="left")
            if not rows:
                if before_install:
                    before_install()
                return result
        with self.store.staging_folder() as folder:
            _stage(df, folder, "day", self._parquet)
            self.store.sync_staged(folder)
            if before_install:
                before_install()
            for (symbol, day), n in sorted(rows.items()):
                staged = folder / symbol / f"{day.isoformat()}.parquet"
                path = self.partition_path(spec.name, symbol, day, "day")
                with self.store.lock(path):
                    if mode == "skip_if_exists" and self.store.exists(path):
                        result.merge(WriteResult(spec.name, days_skipped=1))
                        continue
                    self.store.install(staged, path)
                result.merge(WriteResult(spec.name, rows_written=n, days_written=1, partitions=[self.store.url(path)]))
        return result

    def _overwrite_periods(self, spec: TableSpec, df: pl.DataFrame,
                           before_install: Callable[[], object] | None = None) -> WriteResult:
        """``overwrite`` of local partitions wider than a day (intraday bars by month, daily bars by year):
        every partition's new rows encoded in one polars call, as :meth:`_write_days` does; then, under each
        partition's lock, its staged file moved in when every stored row is of a day the new rows replace
        (from the stored ``date`` column alone), or the stored rows of other days merged with the new ones."""
        result = WriteResult(spec.name)
        # what each partition replaces, worked out before ``before_install``: from there on polars' thread
        # pool may be busy encoding another table, and the moves below need none of it
        parts = [(symbol, pstart, _merge_by_mode(part, "overwrite", spec.sort_by), part["date"].unique())
                 for symbol, pstart, part in self._by_partition(spec, df)]
        with self.store.staging_folder() as folder:
            _stage(df, folder, spec.partition, self._parquet)
            self.store.sync_staged(folder)
            if before_install:
                before_install()

            def one(item) -> WriteResult:
                symbol, pstart, merge, days = item
                return self._update_partition(spec, symbol, pstart, merge,
                                              staged=folder / symbol / f"{pstart.isoformat()}.parquet",
                                              replaced_days=days.to_numpy())

            with ThreadPoolExecutor(max_workers=max(1, min(len(parts), WRITE_THREADS))) as pool:
                for written in pool.map(one, parts):
                    result.merge(written)
        return result

    def _write_day(self, spec: TableSpec, symbol: str, day: dt.date, part: pl.DataFrame,
                   mode: WriteMode) -> WriteResult:
        """A whole day partition: kept when stored (``skip_if_exists``) or replaced (``overwrite``), with no
        read of the stored file; under the partition's lock, so no read-modify-write interleaves."""
        path = self.partition_path(spec.name, symbol, day, "day")
        with self.store.lock(path):
            if mode == "skip_if_exists" and self.store.exists(path):
                return WriteResult(spec.name, days_skipped=1)
            data = self._encode(part.drop("symbol"))  # sorted by ``write``
            if mode == "skip_if_exists" and self.store.remote:
                try:  # create only: a run that stored the day meanwhile wins
                    self.store.fs.pipe_file(path, data, IfNoneMatch="*")
                except FileExistsError:
                    return WriteResult(spec.name, days_skipped=1)
            else:
                self.store.write_bytes_atomic(path, data)
        return WriteResult(spec.name, rows_written=part.height, days_written=1,
                           partitions=[self.store.url(path)])

    def replace(self, spec: TableSpec, df: pl.DataFrame, symbols: Iterable[str], start: dt.date,
                end: dt.date) -> WriteResult:
        """Make the rows of ``symbols`` with ``start <= date <= end`` exactly ``df``: stored rows in that range
        go (also on days ``df`` has no rows for), rows outside it stay. Each partition changes atomically."""
        result = WriteResult(spec.name)
        new: dict[tuple[str, dt.date], tuple[int, pl.Series]] = {}  # (symbol, period) -> rows, their days
        if df.height:  # sorted once here, so a partition with no stored rows to keep is written as it comes
            df = self._prepare(spec, df).sort(list(spec.sort_by), maintain_order=True)
            summary = df.group_by("symbol", _period(spec.partition).alias(_STAGED_KEY), maintain_order=True).agg(
                pl.len().alias("rows"), pl.col("date").unique().alias("days"))
            days = summary["days"]
            new = {(s, p): (n, days[i]) for i, (s, p, n) in
                   enumerate(zip(summary["symbol"], summary[_STAGED_KEY], summary["rows"], strict=True))}
        targets = set(new)
        symbols = list(symbols)
        if spec.partition == "day" and start == end:  # one day (the usual chunk): one existence check a symbol
            targets.update((s, start) for s in symbols
                           if self.store.exists(self.partition_path(spec.name, s, start, "day")))
        elif symbols:  # one listing for all symbols
            targets.update((p.symbol, p.period_start) for p in self.partitions(spec.name, symbols, start, end))
        # a remote root uploads each partition's rows; a local one stages them all at once and needs a
        # partition's rows only where stored rows outside the range are kept beside them
        parts = {(s, p): part for s, p, part in self._by_partition(spec, df)} if new and self.store.remote else {}

        def rows_of(target: tuple[str, dt.date]) -> pl.DataFrame:
            if target in parts:
                return parts[target]
            symbol, pstart = target
            return df.filter((pl.col("symbol") == symbol) & (_period(spec.partition) == pstart))

        with contextlib.ExitStack() as stack:
            folder = None
            if new and not self.store.remote:  # every new partition encoded at once, moved in one by one below
                folder = stack.enter_context(self.store.staging_folder())
                _stage(df, folder, spec.partition, self._parquet)
                self.store.sync_staged(folder)

            def one(target: tuple[str, dt.date]) -> WriteResult:
                symbol, pstart = target
                covered = start <= pstart and period_end(pstart, spec.partition) <= end
                staged = folder / symbol / f"{pstart.isoformat()}.parquet" if folder and target in new else None
                return self._replace_partition(spec, target, new.get(target), lambda: rows_of(target), start, end,
                                               covered, staged)

            # partitions are independent files, each under its own lock: side by side, as ``write`` does
            with ThreadPoolExecutor(max_workers=max(1, min(len(targets), WRITE_THREADS))) as pool:
                for written in pool.map(one, sorted(targets)):
                    result.merge(written)
        return result

    def _replace_partition(self, spec: TableSpec, target: tuple[str, dt.date], new: tuple[int, pl.Series] | None,
                           rows: Callable[[], pl.DataFrame], start: dt.date, end: dt.date, covered: bool,
                           staged: Path | None) -> WriteResult:
        """One partition of :meth:`replace` under ``Store.update``; ``new``: how many rows it gets and their
        days (None: none), ``rows()`` the rows. The stored file's dates are read first; only when some lie
        outside [start, end] (and the period is not ``covered``) is the whole file parsed to keep those rows.
        Otherwise the ``staged`` file (local roots) is moved in as it is. Few polars calls a partition: a
        replace rewrites hundreds of small files."""
        symbol, pstart = target
        path = self.partition_path(spec.name, symbol, pstart, spec.partition)
        new_days = new[1] if new is not None else pl.Series("date", [], pl.Date)
        in_range = pl.col("date").is_between(start, end)
        outcome: dict[str, WriteResult] = {}

        def change(current: bytes | None):
            result = outcome["r"] = WriteResult(spec.name)  # reset: a compare-and-swap may call this again
            if new is not None:
                result.rows_written, result.days_written = new[0], new_days.len()
            if current is None and new is None:
                return None
            kept = None
            if current is not None:
                stats = pl.read_parquet(io.BytesIO(current), columns=["date"]).select(
                    outside=(~in_range).sum(), replaced=pl.col("date").filter(in_range).n_unique(),
                    deleted=(~pl.col("date").filter(in_range).unique().is_in(new_days.implode())).sum(),
                ).row(0, named=True)
                result.days_deleted = stats["deleted"]
                if new is None and not stats["replaced"]:
                    return None  # nothing stored in the range, nothing new: the file stays as it is
                if stats["outside"] and not covered:
                    old = conform(self._with_symbol(pl.read_parquet(io.BytesIO(current)), symbol), spec.schema,
                                  where=self.store.url(path))
                    kept = old.filter(~in_range)
            if kept is not None:
                merged = pl.concat([kept, rows()]).sort(list(spec.sort_by), maintain_order=True) \
                    if new is not None else kept
            elif staged is not None:
                return staged
            elif new is not None:
                merged = rows()  # sorted by ``replace``
            elif self._may_delete(spec.partition):
                return DELETE
            else:
                merged = pl.DataFrame(schema=spec.schema)
            return self._encode(merged.drop("symbol"))

        wrote = self.store.update(path, change)
        result = outcome["r"]
        if wrote and result.rows_written:
            result.partitions.append(self.store.url(path))
        return result

    def delete_days(self, spec: TableSpec, symbol: str, days: Iterable[dt.date]) -> WriteResult:
        """Remove the rows of ``days`` for ``symbol`` (a partition left empty is removed)."""
        result = WriteResult(spec.name)
        by_period: dict[dt.date, set[dt.date]] = {}
        for day in days:
            by_period.setdefault(period_start(day, spec.partition), set()).add(day)
        for pstart, gone in sorted(by_period.items()):
            result.merge(self._update_partition(spec, symbol, pstart, _merge_deleting(gone)))
        return result

    def drop_day(self, table: str, symbol: str, day: dt.date) -> WriteResult:
        """Remove one (symbol, day) of a table: its file for a day partition, its rows otherwise (under the
        partition's lock or compare-and-swap, like every write)."""
        width = self.partition_width(table)
        path = self.partition_path(table, symbol, period_start(day, width), width)
        if width == "day":  # the whole file goes: nothing to read first
            with self.store.lock(path):
                if not self.store.exists(path):
                    return WriteResult(table)
                if self.store.remote:
                    self.store.fs.rm_file(path)  # S3: an unconditional DELETE (see README, Storage)
                else:
                    os.unlink(path)
            return WriteResult(table, days_deleted=1)
        removed = []

        def change(current: bytes | None):
            removed.clear()
            if current is None:
                return None
            old = pl.read_parquet(io.BytesIO(current))
            kept = old.filter(pl.col("date") != day)
            if kept.height == old.height:
                return None
            removed.append(day)
            return self._encode(kept) if kept.height or not self._may_delete(width) else DELETE

        self.store.update(path, change)
        return WriteResult(table, days_deleted=len(removed))

    def _may_delete(self, width: str) -> bool:
        """Whether an emptied partition may be deleted rather than rewritten empty. S3 has no conditional
        DELETE everywhere, so a month or year partition other runs may be updating at the same moment is
        rewritten empty with a compare-and-swap PUT instead (a day partition has one writer per day)."""
        return width == "day" or not self.store.remote

    def _update_partition(self, spec: TableSpec, symbol: str, pstart: dt.date, merge: Callable,
                          parse_old: bool = True, replaced: pl.Expr | None = None,
                          staged: Path | None = None, replaced_days=None) -> WriteResult:
        """Apply ``merge(old | None, result) -> new | None`` to one partition under ``Store.update``;
        ``parse_old=False``: ``old`` holds only the stored ``date`` column (a merge that replaces it all);
        ``replaced``: the same when this condition on ``date`` holds for every stored row (an overwrite or a
        replacement of them all), found from the ``date`` column alone; ``staged`` (local roots): the merge's
        new rows, encoded already, moved in as they are when it keeps no stored row; ``replaced_days`` (with
        ``staged``, instead of ``replaced``: the days the new rows replace, as numpy dates): the staged file
        moves in when every stored row is of one of them, checked with pyarrow on this thread, away from
        polars' thread pool, which another table's encoding may keep busy; otherwise the stored file is
        parsed and merged."""
        path = self.partition_path(spec.name, symbol, pstart, spec.partition)
        outcome: dict[str, WriteResult] = {}

        def change(current: bytes | None):
            result = outcome["r"] = WriteResult(spec.name)  # reset: a compare-and-swap may call this again
            if staged is not None and replaced_days is not None and current is not None:
                import pyarrow.parquet as pq

                stored = pq.read_table(io.BytesIO(current), columns=["date"], use_threads=False).column(0)
                if np.isin(stored.to_numpy(), replaced_days).all():
                    return staged if merge(None, result) is not None else None
            old = None
            if current is not None and (not parse_old or replaced is not None):
                old = pl.read_parquet(io.BytesIO(current), columns=["date"])
                if parse_old and not old.select(replaced.all()).item():
                    old = None  # some stored days stay: parse the whole file
            dates_only = old is not None
            if current is not None and old is None:
                old = conform(self._with_symbol(pl.read_parquet(io.BytesIO(current)), symbol), spec.schema,
                              where=self.store.url(path))
            new = merge(old, result)
            if new is None:
                return None
            if staged is not None and (current is None or dates_only):
                return staged
            if new.height == 0:
                if self._may_delete(spec.partition):
                    return DELETE
                new = pl.DataFrame(schema=spec.schema)
            return self._encode(new.sort(list(spec.sort_by), maintain_order=True).drop("symbol"))

        wrote = self.store.update(path, change)
        result = outcome["r"]
        if wrote and result.rows_written:
            result.partitions.append(self.store.url(path))
        return result

    # ------------------------------------------------------------------ older layouts
    def upgrade_layout(self) -> int:
        """Convert tables written as ``symbol=<S>/date=<period>/data.parquet`` (with ``symbol`` in the file)
        to the hive-readable layout at each table's current partition width, one new partition at a time
        (new file first, old ones removed after), and remove the old ``_table.json`` files. Returns the old
        partitions converted."""
        converted = 0
        for table in self.tables():
            width = partition_width(table)
            groups: dict[tuple[str, dt.date], list[str]] = {}
            for old in self.store.glob(self.store.path(table, _OLD_LAYOUT)):
                m = re.search(r"symbol=(?P<s>[^/]+)/date=(?P<d>\d{4}-\d{2}-\d{2})/", old)
                key = (m["s"], period_start(dt.date.fromisoformat(m["d"]), width))
                groups.setdefault(key, []).append(old)
            for (symbol, pstart), olds in sorted(groups.items()):
                df = pl.concat([pl.read_parquet(self.store.read_bytes(o)) for o in sorted(olds)],
                               how="diagonal_relaxed").drop("symbol", strict=False)
                target = self.partition_path(table, symbol, pstart, width)
                if self.store.exists(target):  # an upgrade interrupted earlier: keep what it converted
                    done = pl.read_parquet(self.store.read_bytes(target))
                    df = pl.concat([done.filter(~pl.col("date").is_in(df["date"].unique().implode())), df],
                                   how="diagonal_relaxed")
                self.store.write_bytes_atomic(target, self._encode(df.sort("date", maintain_order=True)))
                for old in olds:
                    self.store.fs.rm(old.rsplit("/", 1)[0], recursive=True)
                converted += len(olds)
            marker = self.store.path(table, "_table.json")
            if self.store.exists(marker):
                self.store.fs.rm_file(marker)
        self._widths.clear()
        return converted


def _merge_by_mode(new: pl.DataFrame, mode: WriteMode, key: tuple[str, ...]) -> Callable:
    new_days = set(new["date"].unique().to_list())

    def merge(old: pl.DataFrame | None, result: WriteResult) -> pl.DataFrame | None:
        days, rows = new_days, new
        if old is not None and old.height:
            have = set(old["date"].unique().to_list())
            if mode == "skip_if_exists":
                result.days_skipped = len(new_days & have)
                days = new_days - have
                rows = new.filter(pl.col("date").is_in(list(days)))
                if rows.height == 0:
                    return None
                merged = pl.concat([old, rows])
            elif mode == "overwrite":
                kept = old.filter(~pl.col("date").is_in(list(new_days)))
                merged = pl.concat([kept, new]) if kept.height else new  # ``old`` may be its dates alone
            else:  # append: the rows whose key is not stored yet, so appending twice adds nothing twice
                rows = new.unique(subset=list(key), keep="first", maintain_order=True).join(
                    old.select(key).unique(), on=list(key), how="anti", nulls_equal=True)
                days = set(rows["date"].unique().to_list())
                if rows.height == 0:
                    return None
                merged = pl.concat([old, rows])
        else:
            merged = new
        result.rows_written, result.days_written = rows.height, len(days)
        return merged

    return merge


def _merge_deleting(days: set[dt.date]) -> Callable:
    def merge(old: pl.DataFrame | None, result: WriteResult) -> pl.DataFrame | None:
        if old is None:
            return None
        kept = old.filter(~pl.col("date").is_in(list(days)))
        result.days_deleted = len(days & set(old["date"].unique().to_list()))
        return kept if kept.height < old.height else None

    return merge
