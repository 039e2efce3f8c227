"""The lake from a notebook: ``read`` a table into a polars DataFrame, or ``scan`` it lazily.

    import quantflow.lake as qlake
    trades = qlake.read("cdm_trades", symbols=["AAA"], start="2024-01-02", end="2024-01-31")
    bars = qlake.scan("cdm_time_1m_bars").filter(pl.col("volume") > 0).collect()

The project is the one in the working directory (``project=`` points elsewhere); its ``lake_root`` may be a
local folder or ``s3://``. Only the partitions of the asked symbols and dates are opened. Every table has
``symbol`` first, then the table's columns (``date`` included); the ``day`` / ``month`` / ``year`` path keys, which are
only there for pruning, are left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from quantflow.storage.lake import PATH_KEYS, Lake

__all__ = ["open_lake", "read", "scan", "tables"]

_KEY_TYPES = {"day": pl.Date, "month": pl.String, "year": pl.Int64, "decade": pl.Int64}


def open_lake(project: str | Path = ".") -> Lake:
    """The ``Lake`` of the project at ``project`` (its metadata says where the lake lives)."""
    from quantflow.metadata import get_metadata_manager
    from quantflow.storage.project import project_lake

    return project_lake(get_metadata_manager(project).load_all())


def tables(project: str | Path = ".") -> list[str]:
    return open_lake(project).tables()


def _day(value: str | dt.date | None, name: str) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD, got {value!r}") from None


def _polars_storage_options(lake: Lake) -> dict[str, str] | None:
    """The lake's S3 settings in the names polars' own object-store reader takes."""
    if not lake.store.remote:
        return None
    opts, out = lake.store.options, {}
    if opts.key:
        out["aws_access_key_id"] = opts.key
    if opts.secret:
        out["aws_secret_access_key"] = opts.secret
    if opts.region:
        out["aws_region"] = opts.region
    endpoint = lake.store.options.for_s3().get("client_kwargs", {}).get("endpoint_url")
    if endpoint:
        out["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            out["aws_allow_http"] = "true"
    return out


def _schema(lake: Lake, parts) -> dict[str, pl.DataType]:
    """The table's columns: those of its newest partition (a partition written before a column was added reads
    with nulls there)."""
    newest = max(parts, key=lambda p: p.period_start).path
    if lake.store.remote:
        with lake.store.fs.open(newest, "rb") as fh:
            schema = pl.read_parquet_schema(fh)
    else:
        schema = pl.read_parquet_schema(newest)
    return {name: dtype for name, dtype in schema.items() if name != "symbol"}


def scan(
    table: str,
    symbols: Iterable[str] | None = None,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    columns: list[str] | None = None,
    *,
    project: str | Path = ".",
    lake: Lake | None = None,
) -> pl.LazyFrame:
    """A lazy frame over ``table``'s rows for ``symbols`` with ``start <= date <= end`` (inclusive)."""
    lake = lake or open_lake(project)
    start, end = _day(start, "start"), _day(end, "end")
    if start is not None and end is not None and start > end:
        raise ValueError(f"start {start} is after end {end}")
    wanted = list(symbols) if symbols is not None else None
    parts = lake.partitions(table, wanted, start, end)
    if not parts:
        every = lake.partitions(table)
        if not every:
            known = ", ".join(lake.tables()) or "none yet"
            raise ValueError(f"lake {lake.store.url(lake.store.path())} has no table {table!r}; tables: {known}")
        parts = every[:1]  # the table's columns, no rows
        start, end = dt.date(1, 1, 2), dt.date(1, 1, 1)
    key = PATH_KEYS[lake.partition_width(table)]
    files = [lake.store.url(p.path) for p in parts]
    frame = pl.scan_parquet(files, hive_partitioning=True, storage_options=_polars_storage_options(lake),
                            hive_schema={"symbol": pl.String, key: _KEY_TYPES[key]},
                            missing_columns="insert", extra_columns="ignore", schema=_schema(lake, parts))
    frame = frame.select(pl.col("symbol"), pl.all().exclude("symbol", key))
    if start is not None:
        frame = frame.filter(pl.col("date") >= start)
    if end is not None:
        frame = frame.filter(pl.col("date") <= end)
    return frame.select(columns) if columns else frame


def read(
    table: str,
    symbols: Iterable[str] | None = None,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    columns: list[str] | None = None,
    *,
    project: str | Path = ".",
    lake: Lake | None = None,
) -> pl.DataFrame:
    """``table``'s rows for ``symbols`` with ``start <= date <= end`` (inclusive), as a DataFrame."""
    return scan(table, symbols, start, end, columns, project=project, lake=lake).collect()
