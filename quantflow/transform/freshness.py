"""What the CDM of a window was last built from and what it wrote, so that a ``skip_if_exists`` run of a
window whose raw inputs, CDM lake partitions, dbt models and warehouse are as they were skips dbt and the
export altogether (and one where anything changed builds as before, filling what is missing).

A partition's signature is its size and modification time (local) or its ETag (S3): any rewrite or removal
changes it. It is recorded for each day of the window the partition covers. The record is a small SQLite file beside the warehouse, read and written only by a transform run
holding the warehouse lock, so runs never interleave on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.lake import Lake, period_end
from quantflow.storage.project import warehouse_path
from quantflow.transform.sources import raw_sources

Key = tuple[str, str, str]  # (table, symbol, day): every day of the window a partition covers


def state_path(md: ProjectMetadata) -> Path:
    if md.engine == "duckdb":
        path = warehouse_path(md)
        return path.with_name(path.name + ".built.sqlite")
    pg = md.local.postgres
    return md.project_dir / ".quantflow" / f"cdm-built-{pg.host}-{pg.port}-{pg.dbname}-{pg.schema_}.sqlite"


def dbt_signature(dbt_dir: Path, engine: str) -> str:
    """A hash of the dbt project's files and the engine: another model is another CDM."""
    digest = hashlib.sha256(engine.encode())
    files = [dbt_dir / "dbt_project.yml", dbt_dir / "profiles.yml"]
    for sub in ("models", "macros", "tests"):
        if (dbt_dir / sub).is_dir():
            files.extend(p for p in (dbt_dir / sub).rglob("*") if p.is_file())
    for path in sorted(f for f in files if f.exists()):
        digest.update(path.relative_to(dbt_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def models_signature(md: ProjectMetadata, dbt_dir: Path) -> str:
    """The dbt models and the warehouse they were built into (a DuckDB file deleted or replaced since is
    another warehouse)."""
    signature = dbt_signature(dbt_dir, md.engine)
    if md.engine == "duckdb":
        path = warehouse_path(md)
        signature += f":{path.stat().st_ino if path.exists() else 'missing'}"
    return signature


def signatures(lake: Lake, tables: Sequence[str], start: dt.date, end: dt.date,
               symbols: Sequence[str]) -> dict[Key, str]:
    """For every day of the window, the signature of the partition of each table holding it (symbols matched
    canonically). Per day, not per partition: a year partition rewritten for one window must not vouch for
    another window of the same year that was not built from it."""
    wanted = {s.strip().upper() for s in symbols}
    out: dict[Key, str] = {}
    for table in tables:
        width = lake.partition_width(table)
        for part in lake.partitions(table, None, start, end):
            if part.symbol.strip().upper() not in wanted:
                continue
            signature = lake.store.signature(part.path)
            day, last = max(part.period_start, start), min(period_end(part.period_start, width), end)
            while day <= last:
                out[(table, part.symbol, day.isoformat())] = signature
                day += dt.timedelta(days=1)
    return out


def raw_tables(md: ProjectMetadata) -> list[str]:
    return [s.table for s in raw_sources(md)]


@contextlib.contextmanager
def _connect(md: ProjectMetadata) -> Iterator[sqlite3.Connection]:
    path = state_path(md)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        con.execute("CREATE TABLE IF NOT EXISTS built (tbl TEXT, symbol TEXT, day TEXT, signature TEXT, "
                    "PRIMARY KEY (tbl, symbol, day))")
        con.execute("CREATE TABLE IF NOT EXISTS models (id INTEGER PRIMARY KEY CHECK (id = 1), signature TEXT)")
        yield con
        con.commit()
    finally:
        con.close()


def _recorded(con: sqlite3.Connection, tables: list[str], start: dt.date, end: dt.date,
              symbols: Sequence[str]) -> dict[Key, str]:
    """What was recorded for the days of the window, for ``tables`` and ``symbols``."""
    wanted = {s.strip().upper() for s in symbols}
    rows = con.execute(
        f"SELECT tbl, symbol, day, signature FROM built WHERE tbl IN ({','.join('?' * len(tables))}) "
        "AND day BETWEEN ? AND ?", [*tables, start.isoformat(), end.isoformat()]).fetchall()
    return {(t, sym, day): sig for t, sym, day, sig in rows if sym.strip().upper() in wanted}


def unchanged(md: ProjectMetadata, models: str, current: dict[Key, str], tables: Sequence[str], start: dt.date,
              end: dt.date, symbols: Sequence[str]) -> bool:
    """Whether the last build of this window used the same models and saw exactly these partitions."""
    if not current:
        return False
    with _connect(md) as con:
        row = con.execute("SELECT signature FROM models WHERE id = 1").fetchone()
        if row is None or row[0] != models:
            return False
        return _recorded(con, list(tables), start, end, symbols) == current


def record(md: ProjectMetadata, models: str, current: dict[Key, str], tables: Sequence[str], start: dt.date,
           end: dt.date, symbols: Sequence[str]) -> None:
    """After a successful build and export: the window's partitions of ``tables`` are ``current``."""
    with _connect(md) as con:
        old = con.execute("SELECT signature FROM models WHERE id = 1").fetchone()
        if old is not None and old[0] != models:
            con.execute("DELETE FROM built")  # built with other models: nothing recorded still holds
        con.execute("INSERT OR REPLACE INTO models (id, signature) VALUES (1, ?)", (models,))
        gone = set(_recorded(con, list(tables), start, end, symbols)) - set(current)
        con.executemany("DELETE FROM built WHERE tbl = ? AND symbol = ? AND day = ?", sorted(gone))
        con.executemany("INSERT OR REPLACE INTO built VALUES (?, ?, ?, ?)",
                        [(*key, sig) for key, sig in sorted(current.items())])
