"""The lake: Parquet tables partitioned by symbol and date on a local folder or S3.

Layout: ``<root>/<table>/symbol=<S>/date=<YYYY-MM-DD>/data.parquet`` where the date is the start of the
partition period (a day for tick tables, a year for daily tables). Each partition is one file, so every
write is a single atomic rename (local) or PUT (S3): a crash leaves the old file or the new one, never a
half-written partition. Files carry their ``symbol`` and ``date`` columns; the path is for pruning.

Write modes act on (symbol, day) units inside a partition:
- ``skip_if_exists``: days already stored are kept as they are; only new days are added.
- ``overwrite``: days present in the new data replace the stored rows of those days.
- ``append``: rows are added to what is stored.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from quantflow.storage.filesystem import Store
from quantflow.storage.schemas import TableSpec, conform
from quantflow.storage.tables import partition_width
from quantflow.storage.writes import WRITE_MODES, WriteMode, WriteResult

DATA_FILE = "data.parquet"
TABLE_FILE = "_table.json"  # {"partition": "day" | "year"}: written once per table, read by readers
_PART_RE = re.compile(r"symbol=(?P<symbol>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/" + re.escape(DATA_FILE) + "$")


@dataclass(frozen=True)
class Partition:
    table: str
    symbol: str
    period_start: dt.date
    path: str


def period_start(day: dt.date, width: str) -> dt.date:
    if width == "day":
        return day
    if width == "year":
        return dt.date(day.year, 1, 1)
    raise ValueError(f"unknown partition width {width!r} (expected 'day' or 'year')")


def _period_end(start: dt.date, width: str) -> dt.date:
    return start if width == "day" else dt.date(start.year, 12, 31)


class Lake:
    """Reads and writes lake tables under one storage root."""

    def __init__(self, store: Store):
        self.store = store
        self._widths: dict[str, str] = {}

    # ------------------------------------------------------------------ paths
    def table_path(self, table: str) -> str:
        return self.store.path(table)

    def partition_path(self, table: str, symbol: str, start: dt.date) -> str:
        return self.store.path(table, f"symbol={symbol}", f"date={start.isoformat()}", DATA_FILE)

    def url(self, table: str) -> str:
        return self.store.url(self.table_path(table))

    def tables(self) -> list[str]:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.store.ls(self.store.path()) if "." not in p.rsplit("/", 1)[-1])

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
        for path in self.store.glob(self.store.path(table, "symbol=*", "date=*", DATA_FILE)):
            m = _PART_RE.search(path)
            if not m:
                continue
            symbol, pstart = m["symbol"], dt.date.fromisoformat(m["date"])
            if wanted is not None and symbol not in wanted:
                continue
            width = self.partition_width(table)
            if end is not None and pstart > end:
                continue
            if start is not None and _period_end(pstart, width) < start:
                continue
            found.append(Partition(table, symbol, pstart, path))
        return found

    def partition_width(self, table: str) -> str:
        """The table's partition width, from its ``_table.json`` (tables written before it: by name)."""
        if table not in self._widths:
            path = self.store.path(table, TABLE_FILE)
            width = partition_width(table)
            if self.store.exists(path):
                width = json.loads(self.store.read_bytes(path)).get("partition", width)
            self._widths[table] = width
        return self._widths[table]

    # ------------------------------------------------------------------ read
    def read_partition(self, path: str) -> pl.DataFrame:
        if not self.store.remote:
            return pl.read_parquet(path)  # polars' own reader: no pyarrow.dataset/pandas import in workers
        with self.store.fs.open(path, "rb") as fh:
            return pl.read_parquet(fh)

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
        frames = [self.read_partition(p.path) for p in parts]
        if not frames:
            return pl.DataFrame()
        df = pl.concat(frames, how="vertical_relaxed")
        if start is not None:
            df = df.filter(pl.col("date") >= start)
        if end is not None:
            df = df.filter(pl.col("date") <= end)
        return df.select(columns) if columns else df

    def stored_days(self, table: str, symbol: str, start: dt.date, end: dt.date) -> set[dt.date]:
        df = self.read(table, [symbol], start, end, columns=["date"])
        return set(df["date"].unique().to_list()) if df.height else set()

    # ------------------------------------------------------------------ write
    def write(self, spec: TableSpec, df: pl.DataFrame, mode: WriteMode = "skip_if_exists") -> WriteResult:
        """Write ``df`` (any number of symbols and days) into ``spec.name`` obeying ``mode``."""
        if mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {', '.join(WRITE_MODES)}; got {mode!r}")
        result = WriteResult(spec.name)
        if df.height == 0:
            return result
        df = conform(df, spec.schema, where=f"table {spec.name}")
        nulls = df.select(pl.col("symbol").null_count() + pl.col("date").null_count()).item()
        if nulls:
            raise ValueError(f"table {spec.name}: {nulls} rows have a null symbol or date; refusing to write")
        marker = self.store.path(spec.name, TABLE_FILE)
        if self._widths.get(spec.name) != spec.partition and not self.store.exists(marker):
            self.store.write_bytes_atomic(marker, json.dumps({"partition": spec.partition}).encode())
        self._widths[spec.name] = spec.partition
        keyed = df.with_columns(
            pl.col("date").dt.truncate("1y" if spec.partition == "year" else "1d").alias("__period")
        )
        for (symbol, pstart), part in keyed.group_by(["symbol", "__period"], maintain_order=True):
            result.merge(self._write_partition(spec, symbol, pstart, part.drop("__period"), mode))
        return result

    def delete_days(self, spec: TableSpec, symbol: str, days: Iterable[dt.date]) -> WriteResult:
        """Remove the rows of ``days`` for ``symbol``: a day partition's file goes (one atomic unlink or
        DELETE), a year partition is rewritten without those days (one atomic rename or PUT)."""
        result = WriteResult(spec.name)
        by_period: dict[dt.date, set[dt.date]] = {}
        for day in days:
            by_period.setdefault(period_start(day, spec.partition), set()).add(day)
        for pstart, gone in sorted(by_period.items()):
            path = self.partition_path(spec.name, symbol, pstart)
            if not self.store.exists(path):
                continue
            if spec.partition == "day":
                self.store.fs.rm_file(path)
                result.days_deleted += 1
                continue
            old = self.read_partition(path)
            kept = old.filter(~pl.col("date").is_in(list(gone)))
            result.days_deleted += len(gone & set(old["date"].unique().to_list()))
            if kept.height == 0:
                self.store.fs.rm_file(path)
            elif kept.height < old.height:
                buf = io.BytesIO()
                kept.write_parquet(buf, compression="zstd", statistics=True)
                self.store.write_bytes_atomic(path, buf.getvalue())
        return result

    def _write_partition(
        self, spec: TableSpec, symbol: str, pstart: dt.date, new: pl.DataFrame, mode: WriteMode
    ) -> WriteResult:
        path = self.partition_path(spec.name, symbol, pstart)
        result = WriteResult(spec.name)
        new_days = set(new["date"].unique().to_list())
        exists = self.store.exists(path)
        if exists and mode == "skip_if_exists" and spec.partition == "day":
            result.days_skipped = len(new_days)
            return result
        replaced_whole = mode == "overwrite" and spec.partition == "day"  # the new day replaces the file
        old = self.read_partition(path) if exists and not replaced_whole else None
        if old is not None and old.height:
            old = conform(old, spec.schema, where=path)
            if mode == "skip_if_exists":
                have = set(old["date"].unique().to_list())
                result.days_skipped = len(new_days & have)
                new = new.filter(~pl.col("date").is_in(list(have)))
                new_days -= have
                if new.height == 0:
                    return result
                merged = pl.concat([old, new])
            elif mode == "overwrite":
                merged = pl.concat([old.filter(~pl.col("date").is_in(list(new_days))), new])
            else:
                merged = pl.concat([old, new])
        else:
            merged = new
        merged = merged.sort(list(spec.sort_by), maintain_order=True)
        buf = io.BytesIO()
        merged.write_parquet(buf, compression="zstd", statistics=True)
        self.store.write_bytes_atomic(path, buf.getvalue())
        result.rows_written = new.height
        result.days_written = len(new_days)
        result.partitions.append(self.store.url(path))
        return result
