"""The warehouse side of the dbt stage: raw tables in before dbt runs, CDM tables out to the lake after.

- DuckDB engine with a local lake: the raw tables are views over the lake's Parquet files (nothing copied).
- DuckDB with an S3 lake, or PostgreSQL: the raw rows of the run window are copied into ``raw`` tables
  (the window's days replaced, tables created when missing), because dbt's own connection cannot read
  the lake through Python's fsspec.
- After dbt, each CDM table's window is read back and written into the lake with the run's write mode,
  so the compute stages read Parquet shards and never need the warehouse.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import duckdb
import polars as pl

from quantflow.compute.dates import date_batches
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.catalog import create_lake_views
from quantflow.storage.lake import Lake
from quantflow.storage.project import project_lake, warehouse_path
from quantflow.storage.schemas import RAW_KINDS, conform, spec_for_kind
from quantflow.storage.tables import partition_width
from quantflow.storage.writes import WriteMode, WriteResult
from quantflow.transform.environment import DUCKDB_RAW_SCHEMA, cdm_schema, raw_schema, warehouse_lock_path
from quantflow.transform.sources import cdm_tables, raw_sources

# ------------------------------------------------------------------------------------------ SQL helpers


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_type(dtype: pl.DataType, engine: str) -> str:
    if dtype == pl.Utf8:
        return "VARCHAR" if engine == "duckdb" else "TEXT"
    if dtype == pl.Date:
        return "DATE"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ"
    if dtype == pl.Int64:
        return "BIGINT"
    if dtype in (pl.Int8, pl.Int16):
        return "SMALLINT"
    if dtype == pl.Float64:
        return "DOUBLE PRECISION"
    raise TypeError(f"no warehouse type for {dtype}")


def _columns_ddl(kind: str, engine: str) -> str:
    return ", ".join(f"{_ident(c)} {_column_type(t, engine)}" for c, t in RAW_KINDS[kind].items())


def _canonical(symbols: Sequence[str] | None) -> list[str] | None:
    return sorted({s.strip().upper() for s in symbols}) if symbols else None


@dataclass(frozen=True)
class PreparedTable:
    """How a raw table reached the warehouse: a view over the lake, an empty stand-in, or copied rows."""

    table: str
    how: Literal["view", "empty", "copied"]
    rows: int | None = None


def _raw_frames(lake: Lake, table: str, kind: str, start: dt.date, end: dt.date,
                symbols: list[str] | None) -> Iterator[pl.DataFrame]:
    """The raw rows of [start, end], one lake period (day or year) at a time, symbols matched canonically."""
    parts = lake.partitions(table, None, start, end)
    by_period: dict[dt.date, list[str]] = {}
    for part in parts:
        by_period.setdefault(part.period_start, []).append(part.path)
    schema = RAW_KINDS[kind]
    for period in sorted(by_period):
        frames = [lake.read_partition(p) for p in sorted(by_period[period])]
        df = pl.concat(frames, how="vertical_relaxed")
        df = df.filter((pl.col("date") >= start) & (pl.col("date") <= end))
        if symbols is not None:
            df = df.filter(pl.col("symbol").str.strip_chars().str.to_uppercase().is_in(symbols))
        if df.height:
            yield conform(df, schema, where=f"lake table {table}")


# ------------------------------------------------------------------------------------------ DuckDB


def connect_duckdb(md: ProjectMetadata, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    path = warehouse_path(md)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist: run the dbt stage first")
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _duckdb_relation_type(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> str | None:
    row = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return row[0] if row else None


def _duckdb_drop(con: duckdb.DuckDBPyConnection, schema: str, table: str, unless: str) -> None:
    """Drop ``schema.table`` when it exists as something other than ``unless`` ('VIEW' or 'BASE TABLE')."""
    found = _duckdb_relation_type(con, schema, table)
    if found and found != unless:
        con.execute(f"DROP {'VIEW' if found == 'VIEW' else 'TABLE'} {_ident(schema)}.{_ident(table)}")


def _duckdb_views(con, lake: Lake, tables: dict[str, str]) -> dict[str, PreparedTable]:
    schema = DUCKDB_RAW_SCHEMA
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    for table in tables:
        _duckdb_drop(con, schema, table, unless="VIEW")
    created = set(create_lake_views(con, lake, schema=schema, tables=list(tables)))
    out = {}
    for table, kind in tables.items():
        if table in created:
            out[table] = PreparedTable(table, "view")
            continue
        # no data in the lake yet: an empty view with the table's columns keeps the dbt models valid
        cols = ", ".join(f"CAST(NULL AS {_column_type(t, 'duckdb')}) AS {_ident(c)}"
                         for c, t in RAW_KINDS[kind].items())
        con.execute(f"CREATE OR REPLACE VIEW {_ident(schema)}.{_ident(table)} AS SELECT {cols} WHERE false")
        out[table] = PreparedTable(table, "empty")
    return out


def _duckdb_copy(con, lake: Lake, tables: dict[str, str], start: dt.date, end: dt.date,
                 symbols: list[str] | None) -> dict[str, PreparedTable]:
    schema = DUCKDB_RAW_SCHEMA
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    out = {}
    for table, kind in tables.items():
        name = f"{_ident(schema)}.{_ident(table)}"
        cols = ", ".join(_ident(c) for c in RAW_KINDS[kind])
        _duckdb_drop(con, schema, table, unless="BASE TABLE")
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({_columns_ddl(kind, 'duckdb')})")
            where, params = "date BETWEEN ? AND ?", [start, end]
            if symbols is not None:
                where += " AND upper(trim(symbol)) IN (SELECT unnest(?::VARCHAR[]))"
                params.append(symbols)
            con.execute(f"DELETE FROM {name} WHERE {where}", params)
            rows = 0
            for df in _raw_frames(lake, table, kind, start, end, symbols):
                con.register("_qf_raw_batch", df.to_arrow())
                con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _qf_raw_batch")
                con.unregister("_qf_raw_batch")
                rows += df.height
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        out[table] = PreparedTable(table, "copied", rows)
    return out


# ------------------------------------------------------------------------------------------ PostgreSQL


def connect_postgres(md: ProjectMetadata):
    import psycopg2

    pg = md.local.postgres
    con = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password.get_secret_value(),
                           dbname=pg.dbname, connect_timeout=10)
    with con.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
    con.commit()
    return con


_LOCK_NAMESPACE = 0x5146  # "QF": the first key of QuantFlow's advisory locks


@contextlib.contextmanager
def warehouse_lock(md: ProjectMetadata, on_wait: Callable[[str], None] | None = None,
                   timeout_s: float | None = None) -> Iterator[None]:
    """Held by a transform run for its whole batch loop. DuckDB admits one writer per file: a lock file beside
    it (runs on this machine). PostgreSQL: a session advisory lock on the CDM schema, so runs on any host
    take turns (two dbt runs rebuilding one window at once would interleave their delete + insert); the
    holder's connection names it (``application_name``) for whoever waits, and the server frees the lock
    if the holder dies."""
    from quantflow.storage.locks import exclusive

    if md.engine == "duckdb":
        with exclusive(warehouse_lock_path(md), f"the duckdb warehouse ({warehouse_path(md)})", timeout_s=timeout_s,
                       on_wait=on_wait):
            yield
        return
    yield from _postgres_lock(md, on_wait, timeout_s)


def _postgres_lock(md: ProjectMetadata, on_wait, timeout_s: float | None) -> Iterator[None]:
    import os
    import socket
    import time

    from quantflow.storage.locks import DEFAULT_TIMEOUT_S, LockTimeout

    pg = md.local.postgres
    what = f"the postgres warehouse (schema {pg.schema_} on {pg.host}:{pg.port}/{pg.dbname})"
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    con = connect_postgres(md)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            me = f"quantflow pid {os.getpid()} on {socket.gethostname()}"[:63]
            cur.execute("SELECT set_config('application_name', %s, false), hashtext(%s)", (me, pg.schema_))
            key = cur.fetchone()[1]
            began, told = time.monotonic(), False
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, key))
                if cur.fetchone()[0]:
                    break
                cur.execute(
                    "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.classid = %s AND l.objid = %s::oid AND l.objsubid = 2", (_LOCK_NAMESPACE, key & 0xFFFFFFFF))
                row = cur.fetchone()
                holder = (f"{row[0] or 'a client'} (from {row[1] or 'a local socket'}, connected since "
                          f"{row[2]:%Y-%m-%d %H:%M:%S})") if row else "another run"
                if time.monotonic() - began >= timeout_s:
                    raise LockTimeout(f"{what} is in use by {holder}; gave up after {timeout_s:.0f} s "
                                      "(QF_LOCK_TIMEOUT_S sets the wait)")
                if not told and on_wait is not None:
                    on_wait(f"waiting for {what}: in use by {holder}")
                    told = True
                time.sleep(0.5)
        yield
    finally:
        con.close()  # ends the session: the server releases its advisory lock


def _csv_for_copy(df: pl.DataFrame, kind: str) -> bytes:
    exprs = []
    for col, dtype in RAW_KINDS[kind].items():
        if isinstance(dtype, pl.Datetime):
            exprs.append(pl.col(col).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S%.6f+00:00"))
        else:
            exprs.append(pl.col(col))
    buf = io.BytesIO()
    df.select(exprs).write_csv(buf, include_header=False, null_value="")
    return buf.getvalue()


def _postgres_copy(md: ProjectMetadata, lake: Lake, tables: dict[str, str], start: dt.date, end: dt.date,
                   symbols: list[str] | None) -> dict[str, PreparedTable]:
    schema = raw_schema(md)
    con = connect_postgres(md)
    out = {}
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        con.commit()
        for table, kind in tables.items():
            name = f"{_ident(schema)}.{_ident(table)}"
            cols = ", ".join(_ident(c) for c in RAW_KINDS[kind])
            with con.cursor() as cur:  # one transaction per table: the window's rows are replaced atomically
                cur.execute(f"CREATE TABLE IF NOT EXISTS {name} ({_columns_ddl(kind, 'postgres')})")
                cur.execute(f"CREATE INDEX IF NOT EXISTS {_ident(table + '_symbol_date')} ON {name} (symbol, date)")
                where, params = "date BETWEEN %s AND %s", [start, end]
                if symbols is not None:
                    where += " AND upper(trim(symbol)) = ANY(%s)"
                    params.append(symbols)
                cur.execute(f"DELETE FROM {name} WHERE {where}", params)
                rows = 0
                for df in _raw_frames(lake, table, kind, start, end, symbols):
                    cur.copy_expert(f"COPY {name} ({cols}) FROM STDIN WITH (FORMAT csv)",
                                    io.BytesIO(_csv_for_copy(df, kind)))
                    rows += df.height
            con.commit()
            out[table] = PreparedTable(table, "copied", rows)
    except BaseException:
        con.rollback()
        raise
    finally:
        con.close()
    return out


# ------------------------------------------------------------------------------------------ public API


def raw_tables(md: ProjectMetadata) -> dict[str, str]:
    """``{raw table: kind}`` of the enabled feeds."""
    return {s.table: s.kind for s in raw_sources(md)}


def prepare_raw_sources(md: ProjectMetadata, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None,
                        copy: bool | None = None) -> dict[str, PreparedTable]:
    """Make every raw table of the enabled feeds readable by dbt as ``raw.<table>``.

    ``copy`` forces (True) or forbids (False) copying for the DuckDB engine; by default a local lake is
    exposed as views and an S3 lake is copied. PostgreSQL always copies. Copying replaces the window's days
    (of ``symbols`` when given, matched after trimming and upper-casing).
    """
    tables = raw_tables(md)
    if not tables:
        return {}
    lake = project_lake(md)
    wanted = _canonical(symbols)
    if md.engine == "postgres":
        return _postgres_copy(md, lake, tables, start, end, wanted)
    if copy is None:
        copy = lake.store.remote
    con = connect_duckdb(md)
    try:
        if copy:
            return _duckdb_copy(con, lake, tables, start, end, wanted)
        return _duckdb_views(con, lake, tables)
    finally:
        con.close()


def _select_list(kind: str, engine: str) -> str:
    """The lake's columns of a CDM table, timestamps as UTC epoch microseconds (exact in both engines)."""
    exprs = []
    for col, dtype in RAW_KINDS[kind].items():
        if isinstance(dtype, pl.Datetime):
            exprs.append(f"epoch_us({_ident(col)}) AS {_ident(col)}" if engine == "duckdb" else
                         f"(extract(epoch from {_ident(col)}) * 1000000)::bigint AS {_ident(col)}")
        else:
            exprs.append(_ident(col))
    return ", ".join(exprs)


def _from_window(md: ProjectMetadata, table: str, symbols: list[str] | None, engine: str) -> str:
    ph = "?" if engine == "duckdb" else "%s"
    where = f"date BETWEEN {ph} AND {ph}"
    if symbols is not None:
        where += " AND symbol IN (SELECT unnest(?::VARCHAR[]))" if engine == "duckdb" else " AND symbol = ANY(%s)"
    return f"FROM {_ident(cdm_schema(md))}.{_ident(table)} WHERE {where}"


def _to_lake_types(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    exprs = []
    for col, dtype in RAW_KINDS[kind].items():
        if col not in df.columns:
            continue
        if isinstance(dtype, pl.Datetime):
            exprs.append(pl.from_epoch(pl.col(col).cast(pl.Int64), time_unit="us")
                         .dt.replace_time_zone("UTC").dt.cast_time_unit("ns").alias(col))
        else:
            exprs.append(pl.col(col).cast(dtype))
    return df.select(exprs)


class WarehouseReader:
    """Reads CDM tables back from the warehouse (one connection for many reads)."""

    def __init__(self, md: ProjectMetadata):
        self.md = md
        self.engine = md.engine
        self.con = connect_postgres(md) if self.engine == "postgres" else connect_duckdb(md, read_only=True)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _params(self, start: dt.date, end: dt.date, symbols: list[str] | None) -> list:
        return [start, end, *([symbols] if symbols is not None else [])]

    def read(self, table: str, kind: str, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None,
             limit: int | None = None) -> pl.DataFrame:
        wanted = _canonical(symbols)
        sort = ", ".join(_ident(c) for c in spec_for_kind(table, kind).sort_by)
        sql = (f"SELECT {_select_list(kind, self.engine)} {_from_window(self.md, table, wanted, self.engine)} "
               f"ORDER BY {sort}" + (f" LIMIT {int(limit)}" if limit else ""))
        params = self._params(start, end, wanted)
        if self.engine == "duckdb":
            df = self.con.sql(sql, params=params).pl()
        else:
            with self.con.cursor() as cur:
                copy_sql = cur.mogrify(sql, params).decode()
                buf = io.BytesIO()
                cur.copy_expert(f"COPY ({copy_sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", buf)
            self.con.rollback()
            schema = {c: (pl.Int64 if isinstance(t, pl.Datetime) else t) for c, t in RAW_KINDS[kind].items()}
            df = pl.read_csv(io.BytesIO(buf.getvalue()), schema_overrides=schema) if buf.tell() else pl.DataFrame()
            if df.height == 0:
                df = pl.DataFrame(schema=schema)
        return _to_lake_types(df, kind)

    def count(self, table: str, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None) -> int:
        wanted = _canonical(symbols)
        rest = _from_window(self.md, table, wanted, self.engine)
        params = self._params(start, end, wanted)
        if self.engine == "duckdb":
            return int(self.con.execute(f"SELECT count(*) {rest}", params).fetchone()[0])
        with self.con.cursor() as cur:
            cur.execute(f"SELECT count(*) {rest}", params)
            n = int(cur.fetchone()[0])
        self.con.rollback()
        return n


def export_cdm_to_lake(md: ProjectMetadata, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None,
                       write_mode: WriteMode = "skip_if_exists",
                       tables: Iterable[str] | None = None) -> dict[str, WriteResult]:
    """Write each CDM table's rows of [start, end] (and ``symbols``) from the warehouse into the lake.

    ``skip_if_exists`` keeps the (symbol, day)s the lake has. ``overwrite`` and ``append`` make the lake's
    window equal to the warehouse's (``Lake.replace``): the CDM is derived from the raw tables, so appending
    raw rows re-derives it rather than appending to it, and days that left the CDM leave the lake too.
    Tick tables are moved a day at a time, daily tables in one piece, so memory stays bounded by a day
    of ticks. ``tables`` restricts the export (default: every CDM table the project has).
    """
    available = cdm_tables(md)
    selected = {t: available[t] for t in (tables if tables is not None else available) if t in available}
    lake = project_lake(md)
    everyone = _canonical(symbols) or sorted(md.symbols)
    results: dict[str, WriteResult] = {}
    with WarehouseReader(md) as reader:
        for table, kind in selected.items():
            spec = spec_for_kind(table, kind)
            result = WriteResult(table)
            chunk_days = None if partition_width(table) == "year" else 1
            for chunk_start, chunk_end in date_batches(start, end, chunk_days):
                df = reader.read(table, kind, chunk_start, chunk_end, symbols)
                if write_mode == "skip_if_exists":
                    if df.height:
                        result.merge(lake.write(spec, df, write_mode))
                else:
                    result.merge(lake.replace(spec, df, everyone, chunk_start, chunk_end))
            results[table] = result
    return results


def cdm_row_counts(md: ProjectMetadata, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None,
                   tables: Iterable[str] | None = None) -> dict[str, int]:
    """Rows of each CDM table in the warehouse for [start, end] (and ``symbols``)."""
    available = cdm_tables(md)
    with WarehouseReader(md) as reader:
        return {t: reader.count(t, start, end, symbols) for t in (tables if tables is not None else available)
                if t in available}


def cdm_preview(md: ProjectMetadata, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None,
                rows: int = 5, tables: Iterable[str] | None = None) -> dict[str, pl.DataFrame]:
    """The first rows of each CDM table's window, for metadata previews."""
    available = cdm_tables(md)
    with WarehouseReader(md) as reader:
        return {t: reader.read(t, available[t], start, end, symbols, limit=rows)
                for t in (tables if tables is not None else available) if t in available}


def warehouse_location(md: ProjectMetadata) -> str:
    """Where the CDM tables live, for humans: the DuckDB file or ``postgresql://host:port/db/schema``."""
    if md.engine == "postgres":
        pg = md.local.postgres
        return md.redact(f"postgresql://{pg.host}:{pg.port}/{pg.dbname}/{pg.schema_}")
    return str(Path(warehouse_path(md)))
