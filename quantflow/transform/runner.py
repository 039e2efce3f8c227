"""dbt stage entry point: raw lake tables of a run window -> CDM tables (warehouse, then lake).

``run`` (re)generates the dbt project when the metadata calls for it, then per date batch: exposes the raw
tables to the warehouse, runs one dbt command (``run``, or ``build`` to run the dbt tests too) with the
batch as ``--vars``, and exports the batch's CDM rows to the lake with the write mode. A failing model or
test stops the run before its batch reaches the lake.

How dbt is invoked is passed in (``invoke``): by default dbt's Python API in this process; the Dagster
asset passes dagster-dbt's ``DbtCliResource.cli``, so each model still streams its own materialization
and each dbt test its asset check, while the batch loop, the export and the counts stay here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantflow.compute.dates import date_batches
from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.project import project_lake
from quantflow.storage.writes import WriteResult
from quantflow.transform import freshness
from quantflow.transform.environment import dbt_environment
from quantflow.transform.generator import DBTProjectGenerator, dbt_project_dir
from quantflow.transform.sources import cdm_tables
from quantflow.transform.vars import dbt_vars_args
from quantflow.transform.warehouse import (
    cdm_preview,
    cdm_row_counts,
    export_cdm_to_lake,
    prepare_raw_sources,
    warehouse_location,
    warehouse_lock,
)

STAGE = "transform"


@dataclass
class DbtOutcome:
    """What one dbt invocation did: ``models`` built, ``tests`` (name -> status), ``failures`` (one line each)."""

    success: bool
    models: set[str] = field(default_factory=set)
    tests: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


# invoke(args, node_done) runs ``dbt <args>`` (a command and its --vars) on the project and calls
# ``node_done(name)`` as each model or test finishes.
DbtInvoke = Callable[[list[str], Callable[[str], None]], DbtOutcome]


@dataclass
class TransformResult(StageResult):
    engine: str = ""
    command: str = "run"
    batches: list[tuple[Any, Any]] = field(default_factory=list)  # (start, end) of each dbt invocation done
    rows: dict[str, int] = field(default_factory=dict)  # CDM rows in the warehouse for the window
    tests: dict[str, str] = field(default_factory=dict)  # dbt test -> status (when tests ran)
    generated: list[Path] = field(default_factory=list)
    warehouse: str = ""
    failed_batch: tuple[Any, Any] | None = None
    up_to_date: bool = False  # skip_if_exists found the window built from the same raw partitions and models

    def headline(self) -> str:
        if self.up_to_date:
            return f"dbt skipped on {self.engine}: the window's raw tables and models are as at its last build"
        tests = f", {sum(s == 'pass' for s in self.tests.values())}/{len(self.tests)} dbt tests passed" \
            if self.tests else ""
        return f"dbt {self.command} on {self.engine}, {len(self.batches)} batch{'es' if len(self.batches) != 1 else ''}{tests}"

    def key_figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"engine": self.engine, "dbt_command": self.command,
                                   "batches": len(self.batches), "warehouse": self.warehouse}
        if self.failed_batch is not None:
            figures["lake_export"] = (f"stopped: dbt failed for {self.failed_batch[0]} .. {self.failed_batch[1]}, "
                                      "which was not exported to the lake (earlier batches were)")
        return figures


    def table_figures(self, table: str) -> dict[str, Any]:
        return {f"rows/{table}": self.rows[table]} if table in self.rows else {}


class DbtRunError(StageError):
    """dbt failed: a model errored or a test failed (``failures`` names them; ``result``: what was done)."""

    def __init__(self, message: str, failures: list[str], result: TransformResult):
        super().__init__(message, result=result)
        self.failures = failures


def dbt_command_args(md: ProjectMetadata, args: list[str]) -> list[str]:
    """``args`` pointed at the project's dbt project, profiles and engine target."""
    project = str(dbt_project_dir(md))
    return [*args, "--project-dir", project, "--profiles-dir", project, "--target", md.engine]


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


def invoke_dbt(md: ProjectMetadata, args: list[str], callbacks: list | None = None):
    """Run dbt in process (``dbtRunner``) with the metadata's connection settings in the environment."""
    from dbt.cli.main import dbtRunner

    with dbt_environment(md):
        try:
            return dbtRunner(callbacks=callbacks or []).invoke(args)
        finally:
            _release_duckdb()


def _status(node_result) -> str:
    return str(getattr(node_result.status, "value", node_result.status))


def in_process_invoke(md: ProjectMetadata) -> DbtInvoke:
    """The default ``invoke``: dbt's Python API in this process."""

    def invoke(args: list[str], node_done: Callable[[str], None]) -> DbtOutcome:
        def on_event(event) -> None:
            if event.info.name in ("LogModelResult", "LogTestResult"):
                node_done(getattr(event.data, "name", "") or getattr(event.data.node_info, "node_name", ""))

        res = invoke_dbt(md, dbt_command_args(md, args), callbacks=[on_event])
        outcome = DbtOutcome(bool(res.success))
        for node_result in getattr(res.result, "results", None) or []:
            node, status = node_result.node, _status(node_result)
            if node.resource_type == "test":
                outcome.tests[node.name] = status
            elif node.resource_type == "model" and status == "success":
                outcome.models.add(node.name)
            if status in ("error", "fail", "runtime error"):
                outcome.failures.append(f"{node.resource_type} {node.name}: {status}"
                                        + (f" ({node_result.message})" if node_result.message else ""))
        if not outcome.failures and res.exception is not None:
            outcome.failures.append(f"{type(res.exception).__name__}: {res.exception}")
        return outcome

    return invoke


def run(
    md: ProjectMetadata,
    window: RunWindow,
    *,
    batch_days: int | None = None,
    skip_test: bool = True,
    tables: list[str] | None = None,
    invoke: DbtInvoke | None = None,
    progress: Progress | None = None,
) -> TransformResult:
    """Build the CDM tables (all of the project's, or ``tables``) for the window."""
    began = time.perf_counter()
    progress = progress or Progress()
    available = cdm_tables(md)
    if not available:
        raise ValueError("no enabled ingest feed produces trades, quotes or daily bars: nothing for dbt to build")
    selected = [t for t in available if tables is None or t in tables]
    invoke = invoke or in_process_invoke(md)
    command = "run" if skip_test else "build"
    result = TransformResult(STAGE, window, engine=md.engine, command=command, warehouse=warehouse_location(md))
    result.generated = DBTProjectGenerator(md).generate()
    for path in result.generated:
        progress.detail(f"dbt project: wrote {path}")
    lake = project_lake(md)
    result.table_urls = {t: lake.url(t) for t in selected}
    with warehouse_lock(md, on_wait=progress.note):
        _build(md, window, result, selected, batch_days, command, invoke, progress, began)
    return result


def _build(md: ProjectMetadata, window: RunWindow, result: TransformResult, selected: list[str],
           batch_days: int | None, command: str, invoke: DbtInvoke, progress: Progress, began: float) -> None:
    """The batch loop, holding the warehouse: raw tables in, dbt, the CDM back to the lake. In
    ``skip_if_exists`` mode a window built from the same raw partitions and dbt models is not built again."""
    lake = project_lake(md)
    batches = date_batches(window.start_date, window.end_date, batch_days)
    symbols = list(window.symbols)
    models = freshness.models_signature(md, dbt_project_dir(md))
    raw, cdm = freshness.raw_tables(md), list(cdm_tables(md))
    inputs = freshness.signatures(lake, raw, window.start_date, window.end_date, symbols)
    if window.write_mode == "skip_if_exists" and command == "run" and freshness.unchanged(
            md, models, {**inputs, **freshness.signatures(lake, cdm, window.start_date, window.end_date, symbols)},
            raw + cdm, window.start_date, window.end_date, symbols):
        result.up_to_date = True
        progress.begin(len(selected), "models", "transform (dbt)")
        progress.advance(len(selected))
        progress.detail("transform: raw tables and dbt models unchanged since the window's last build: dbt skipped")
        for table in selected:
            result.record_write(table, WriteResult(table), lake.url(table))
        _finish(md, window, result, selected, began)
        return
    progress.begin(len(batches) * len(selected), "models", "transform (dbt)")
    built: set[str] = set()
    for batch_start, batch_end in batches:
        prepared = prepare_raw_sources(md, batch_start, batch_end, symbols)
        progress.detail(f"raw tables for {batch_start} .. {batch_end}: " + ", ".join(
            f"{t} ({p.how}{'' if p.rows is None else f', {p.rows} rows'})" for t, p in prepared.items()))
        progress.detail(f"dbt {command} {batch_start} .. {batch_end} on {md.engine}")

        def node_done(name: str) -> None:
            if name in selected:
                progress.advance(1)

        outcome = invoke([command, *dbt_vars_args(batch_start, batch_end, symbols)], node_done)
        result.tests.update(outcome.tests)
        built |= outcome.models & set(selected)
        if not outcome.success:
            result.failed_batch = (batch_start, batch_end)
            _finish(md, window, result, sorted(built), began)
            failures = outcome.failures or ["see the dbt log"]
            raise DbtRunError(f"dbt {command} failed for {batch_start} .. {batch_end}: " + "; ".join(failures),
                              failures, result)
        for table, written in export_cdm_to_lake(md, batch_start, batch_end, symbols, window.write_mode,
                                                  tables=selected).items():
            result.record_write(table, written, lake.url(table))
            progress.advance(0, written.rows_written)
        result.batches.append((batch_start, batch_end))
    if set(selected) == set(cdm):  # a build of some models only does not make the window built
        outputs = freshness.signatures(lake, cdm, window.start_date, window.end_date, symbols)
        freshness.record(md, freshness.models_signature(md, dbt_project_dir(md)), {**inputs, **outputs}, raw + cdm,
                         window.start_date, window.end_date, symbols)
    _finish(md, window, result, [t for t in selected if t in built or not built], began)


def _finish(md: ProjectMetadata, window: RunWindow, result: TransformResult, tables: list[str],
            began: float) -> None:
    """Warehouse row counts and previews of the tables dbt built (they exist in the warehouse)."""
    if tables:
        symbols = list(window.symbols)
        result.rows = cdm_row_counts(md, window.start_date, window.end_date, symbols, tables=tables)
        result.preview = cdm_preview(md, window.start_date, window.end_date, symbols, tables=tables)
    result.seconds = time.perf_counter() - began
