"""dbt stage entry point: raw lake tables of a date window -> CDM tables (warehouse, then lake).

``run`` (re)generates the dbt project when the metadata calls for it, then per date batch: exposes the raw
tables to the warehouse, runs dbt (``run``, or ``build`` to run the dbt tests too) through dbt's Python API
with the window as ``--vars``, and exports the batch's CDM rows to the lake with the write mode. A failing
model or test stops the run before its batch reaches the lake.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from quantflow.compute.dates import date_batches
from quantflow.metadata.manager import ProjectMetadata, get_metadata_manager
from quantflow.storage.lake import WRITE_MODES, WriteMode, WriteResult
from quantflow.storage.project import project_lake
from quantflow.transform.generator import DBTProjectGenerator, dbt_project_dir
from quantflow.transform.sources import cdm_tables
from quantflow.transform.vars import dbt_vars_args
from quantflow.transform.warehouse import (
    cdm_preview,
    cdm_row_counts,
    dbt_environment,
    export_cdm_to_lake,
    prepare_raw_sources,
    warehouse_location,
)

log = logging.getLogger(__name__)


class DbtRunError(RuntimeError):
    """dbt failed: a model errored or a test failed (``failures`` names them)."""

    def __init__(self, message: str, failures: list[str]):
        super().__init__(message)
        self.failures = failures


@dataclass
class TransformResult:
    engine: str
    start_date: dt.date
    end_date: dt.date
    symbols: list[str]
    write_mode: str
    batches: list[tuple[dt.date, dt.date]] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # CDM rows in the warehouse for the window
    tables: dict[str, WriteResult] = field(default_factory=dict)  # lake export per CDM table
    table_urls: dict[str, str] = field(default_factory=dict)
    tests: dict[str, str] = field(default_factory=dict)  # dbt test -> status (when tests ran)
    generated: list[Path] = field(default_factory=list)
    warehouse: str = ""
    preview: dict[str, pl.DataFrame] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_written(self) -> dict[str, int]:
        return {t: r.rows_written for t, r in self.tables.items()}


def dbt_command_args(md: ProjectMetadata, command: str, start: dt.date, end: dt.date,
                     symbols: Sequence[str] | None = None) -> list[str]:
    """Arguments of one dbt invocation for a batch (project, profiles and target from the metadata)."""
    project = str(dbt_project_dir(md))
    return [command, *dbt_vars_args(start, end, symbols), "--project-dir", project, "--profiles-dir", project,
            "--target", md.engine]


def _failures(result) -> list[str]:
    out = []
    for node_result in getattr(result.result, "results", None) or []:
        status = str(getattr(node_result.status, "value", node_result.status))
        if status in ("error", "fail", "runtime error"):
            node = node_result.node
            out.append(f"{node.resource_type} {node.name}: {status}" +
                       (f" ({node_result.message})" if node_result.message else ""))
    if not out and result.exception is not None:
        out.append(str(result.exception))
    return out


def _release_duckdb() -> None:
    """dbt-duckdb keeps its DuckDB database open in a class attribute after an in-process invocation; close
    it so the warehouse file can be opened again (by this process with other settings, or another one)."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    with DuckDBConnectionManager._LOCK:
        env = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
    if env is not None:
        env.close()


def invoke_dbt(md: ProjectMetadata, args: list[str]):
    """Run dbt in process (``dbtRunner``) with the metadata's connection settings in the environment."""
    from dbt.cli.main import dbtRunner

    with dbt_environment(md):
        try:
            return dbtRunner().invoke(args)
        finally:
            _release_duckdb()


def _as_date(value: str | dt.date, name: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD, got {value!r}") from None


def _load(project: str | Path | ProjectMetadata) -> ProjectMetadata:
    return project if isinstance(project, ProjectMetadata) else get_metadata_manager(project).load_all()


def run(
    project: str | Path | ProjectMetadata,
    start_date: str | dt.date,
    end_date: str | dt.date,
    symbols: list[str] | None = None,
    write_mode: WriteMode = "skip_if_exists",
    batch_days: int | None = None,
    skip_test: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TransformResult:
    """Build the CDM tables for [start_date, end_date] and ``symbols`` (default: the project's symbols)."""
    began = time.perf_counter()
    md = _load(project)
    start, end = _as_date(start_date, "start_date"), _as_date(end_date, "end_date")
    if start > end:
        raise ValueError(f"start_date {start} is after end_date {end}")
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {', '.join(WRITE_MODES)}; got {write_mode!r}")
    tables = cdm_tables(md)
    if not tables:
        raise ValueError("no enabled ingest feed produces trades, quotes or daily bars: nothing for dbt to build")
    symbols = list(symbols) if symbols else md.symbols
    say = progress or log.info
    result = TransformResult(md.engine, start, end, symbols, write_mode, warehouse=warehouse_location(md))
    result.generated = DBTProjectGenerator(md).generate()
    for path in result.generated:
        say(f"dbt project: wrote {path}")
    command = "run" if skip_test else "build"
    lake = project_lake(md)
    for batch_start, batch_end in date_batches(start, end, batch_days):
        prepare_raw_sources(md, batch_start, batch_end, symbols)
        say(f"dbt {command} {batch_start} .. {batch_end} on {md.engine}")
        outcome = invoke_dbt(md, dbt_command_args(md, command, batch_start, batch_end, symbols))
        for node_result in getattr(outcome.result, "results", None) or []:
            if node_result.node.resource_type == "test":
                result.tests[node_result.node.name] = str(getattr(node_result.status, "value", node_result.status))
        if not outcome.success:
            failures = _failures(outcome)
            raise DbtRunError(f"dbt {command} failed for {batch_start} .. {batch_end}: " + "; ".join(failures),
                              failures)
        exported = export_cdm_to_lake(md, batch_start, batch_end, symbols, write_mode)
        for table, written in exported.items():
            result.tables.setdefault(table, WriteResult(table)).merge(written)
        result.batches.append((batch_start, batch_end))
    result.rows = cdm_row_counts(md, start, end, symbols)
    result.preview = cdm_preview(md, start, end, symbols)
    result.table_urls = {t: lake.url(t) for t in tables}
    result.seconds = time.perf_counter() - began
    return result
