"""DuckDB catalog: every lake table as a view, so the lake can be queried with SQL.

Local lakes are read by DuckDB directly. For S3 lakes DuckDB reads through the same fsspec filesystem
(``register_filesystem``), so no DuckDB extension has to be downloaded at run time.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from quantflow.storage.lake import DATA_FILE, PATH_KEYS, Lake


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def lake_glob(lake: Lake, table: str) -> str:
    key = PATH_KEYS[lake.partition_width(table)]
    return lake.store.url(lake.store.path(table, "symbol=*", f"{key}=*", DATA_FILE))


def create_lake_views(con: duckdb.DuckDBPyConnection, lake: Lake, schema: str = "lake",
                      tables: list[str] | None = None) -> list[str]:
    """(Re)create one view per lake table in ``schema``; returns the table names."""
    if lake.store.remote:
        con.register_filesystem(lake.store.fs)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(schema)}")
    created = []
    for table in tables if tables is not None else lake.tables():
        if not lake.partitions(table):
            continue
        con.execute(
            f"CREATE OR REPLACE VIEW {_quote_ident(schema)}.{_quote_ident(table)} AS "
            f"SELECT symbol, * EXCLUDE (symbol, {PATH_KEYS[lake.partition_width(table)]}) FROM read_parquet("
            f"{_quote_str(lake_glob(lake, table))}, hive_partitioning = true, hive_types = {{'symbol': VARCHAR}}, "
            f"union_by_name = true)"
        )
        created.append(table)
    return created


def connect_catalog(lake: Lake, database: str | Path = ":memory:", schema: str = "lake") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's views, for notebooks and ad-hoc SQL."""
    con = duckdb.connect(str(database))
    create_lake_views(con, lake, schema)
    return con
