"""Group ``dbt``: one asset per dbt model (``cdm_trades``, ``cdm_quotes``, ``cdm_bars_daily``) via dagster-dbt.

A thin adapter over ``quantflow.transform``: per date batch it exposes the raw tables to the warehouse,
streams ``dbt run`` (or ``dbt build`` when tests are wanted: they surface as asset checks) with the window
as ``--vars``, and exports the batch's CDM rows to the lake. The dbt events of all batches are merged, so
each model yields one materialization, carrying dbt's metadata plus QuantFlow's (row counts, lake location,
a preview). dbt sources ``raw.raw_<feed>_<kind>`` map to the ingest asset ``raw_<feed>``, so lineage runs
from the feeds through the CDM.
"""


import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from quantflow.compute.dates import date_batches
from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import PipelineConfig, resolve
from quantflow.pipeline.dagster.metadata import frame_preview
from quantflow.storage.lake import WriteResult
from quantflow.storage.project import project_lake
from quantflow.storage.tables import CDM_TABLES, RAW_KINDS
from quantflow.transform.generator import DBTProjectGenerator, dbt_project_dir
from quantflow.transform.runner import invoke_dbt
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

GROUP = "dbt"
log = logging.getLogger(__name__)


class QuantflowDbtTranslator(DagsterDbtTranslator):
    """Models keep their name as key (``cdm_trades``); source tables map to their feed's ingest asset."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props.get("resource_type") == "source":
            feed = _source_feed(dbt_resource_props)
            if feed:
                return dg.AssetKey(f"raw_{feed}")  # the ingest asset of the feed (group `ingest`)
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey(dbt_resource_props["name"])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP


def _source_feed(props: Mapping[str, Any]) -> str | None:
    meta = {**(props.get("meta") or {}), **((props.get("config") or {}).get("meta") or {})}
    if meta.get("quantflow_feed"):
        return str(meta["quantflow_feed"])
    name = str(props.get("name", ""))
    for kind in RAW_KINDS:
        if name.startswith("raw_") and name.endswith(f"_{kind}") and len(name) > len(f"raw__{kind}"):
            return name[len("raw_"):-len(f"_{kind}")]
    return None


def dbt_translator() -> QuantflowDbtTranslator:
    return QuantflowDbtTranslator(
        settings=DagsterDbtTranslatorSettings(enable_asset_checks=True, enable_duplicate_source_asset_keys=True)
    )


# ------------------------------------------------------------------------------------------ project


_PROJECTS: dict[tuple[str, str], DbtProject] = {}
_PROJECTS_LOCK = threading.Lock()


def _newest_source_mtime(dbt_dir: Path) -> float:
    paths = [dbt_dir / "dbt_project.yml", dbt_dir / "profiles.yml"]
    for sub in ("models", "macros", "tests"):
        if (dbt_dir / sub).is_dir():
            paths.extend(p for p in (dbt_dir / sub).rglob("*") if p.is_file())
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _parse_manifest(md: ProjectMetadata, project: DbtProject) -> None:
    """``dbt parse`` into a private target folder, then move the manifest into place atomically, so a
    process reading it meanwhile never sees half a file."""
    scratch = project.project_dir / project.target_path / f".parse-{uuid.uuid4().hex}"
    args = ["parse", "--quiet", "--project-dir", str(project.project_dir), "--profiles-dir",
            str(project.profiles_dir), "--target", md.engine, "--target-path", str(scratch)]
    try:
        outcome = invoke_dbt(md, args)
        built = scratch / "manifest.json"
        if not outcome.success or not built.exists():
            raise RuntimeError(f"dbt parse of {project.project_dir} failed: {outcome.exception or 'see dbt log'}")
        project.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built, project.manifest_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dbt_project_for(md: ProjectMetadata) -> DbtProject:
    """The project's ``DbtProject``, created once per dbt project folder and target.

    The dbt files are (re)generated from the metadata first; under ``dagster dev`` ``prepare_if_dev``
    re-parses, elsewhere the manifest is parsed once when it is missing or older than the project files.
    """
    dbt_dir = dbt_project_dir(md)
    key = (str(dbt_dir), md.engine)
    with _PROJECTS_LOCK:
        written = DBTProjectGenerator(md, dbt_dir).generate()
        project = _PROJECTS.get(key)
        if project is None:
            project = DbtProject(project_dir=dbt_dir, profiles_dir=dbt_dir, target=md.engine)
            _put_dbt_on_path()  # prepare_if_dev runs `dbt parse` through a DbtCliResource looking up PATH
            with dbt_environment(md):
                project.prepare_if_dev()
        manifest = project.manifest_path
        if written or not manifest.exists() or manifest.stat().st_mtime < _newest_source_mtime(dbt_dir):
            _parse_manifest(md, project)
        _PROJECTS[key] = project
        return project


def dbt_executable() -> str:
    """The dbt next to this Python (a virtualenv that is not activated has it off PATH), else PATH's."""
    sibling = Path(sys.executable).with_name("dbt")
    return str(sibling) if sibling.exists() else (shutil.which("dbt") or "dbt")


def _put_dbt_on_path() -> None:
    """Make the dbt next to this Python findable on PATH (``.venv/bin/dagster dev`` without activation)."""
    sibling = Path(sys.executable).with_name("dbt")
    if shutil.which("dbt") is None and sibling.exists():
        os.environ["PATH"] = os.pathsep.join([str(sibling.parent), os.environ.get("PATH", "")])


def build_dbt_resource(md: ProjectMetadata) -> dg.ResourceDefinition | DbtCliResource:
    """The ``dbt`` resource: a ``DbtCliResource`` on the project's dbt project and engine target."""
    if not cdm_tables(md):
        return dg.ResourceDefinition.none_resource(description="No enabled feed: the project has no dbt models.")
    return DbtCliResource(project_dir=dbt_project_for(md), dbt_executable=dbt_executable())


# ------------------------------------------------------------------------------------------ assets


def _external_cdm_specs() -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            table,
            group_name=GROUP,
            kinds={"dbt"},
            description=f"CDM table `{table}`: no enabled ingest feed produces {kind.replace('_', ' ')}, so "
                        "QuantFlow does not build it (enable a feed in project.yaml to get a dbt model).",
        )
        for table, kind in CDM_TABLES.items()
    ]


def _merge_check(found: dict, event: dg.AssetCheckResult) -> None:
    """Across batches a check passes only if it passed every time: keep its first failing result."""
    key = (event.asset_key, event.check_name)
    if key not in found or (found[key].passed and not event.passed):
        found[key] = event


def _quantflow_metadata(md: ProjectMetadata, table: str, window, command: str, batches: int,
                        exported: dict[str, WriteResult], rows: dict[str, int], previews: dict,
                        lake_url: str, failed_batch: tuple | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "start_date": window.start_date.isoformat(),
        "end_date": window.end_date.isoformat(),
        "symbols": ", ".join(window.symbols),
        "write_mode": window.write_mode,
        "engine": md.engine,
        "dbt_command": command,
        "batches": dg.MetadataValue.int(batches),
        "warehouse": warehouse_location(md),
    }
    if table in rows:
        meta[f"rows/{table}"] = dg.MetadataValue.int(rows[table])
    if table in exported:
        written = exported[table]
        meta[f"rows_written/{table}"] = dg.MetadataValue.int(written.rows_written)
        meta[f"days_written/{table}"] = dg.MetadataValue.int(written.days_written)
        meta[f"days_skipped/{table}"] = dg.MetadataValue.int(written.days_skipped)
        meta[f"location/{table}"] = dg.MetadataValue.path(lake_url)
    if failed_batch is not None:
        meta["lake_export"] = (f"stopped: dbt failed for {failed_batch[0]} .. {failed_batch[1]}, which was not "
                               "exported to the lake (earlier batches were)")
    if table in previews:
        meta[f"preview/{table}"] = frame_preview(previews[table])
    return meta


def _materialize(context: dg.AssetExecutionContext, config: PipelineConfig, dbt: DbtCliResource,
                 md: ProjectMetadata) -> Iterator:
    window = resolve(config, md.symbols)
    selected = {key.to_user_string() for key in context.selected_asset_keys}
    tables = [t for t in cdm_tables(md) if t in selected]
    command = "run" if window.skip_test else "build"
    outputs: dict[str, dg.Output] = {}
    checks: dict = {}
    exported: dict[str, WriteResult] = {}
    batches = date_batches(window.start_date, window.end_date, window.batch_days)
    error: Exception | None = None
    failed_batch: tuple | None = None
    for batch_start, batch_end in batches:
        prepared = prepare_raw_sources(md, batch_start, batch_end, window.symbols)
        context.log.info(f"raw tables for {batch_start} .. {batch_end}: "
                         + ", ".join(f"{t} ({p.how}{'' if p.rows is None else f', {p.rows} rows'})"
                                     for t, p in prepared.items()))
        with dbt_environment(md):  # the dbt subprocess starts inside cli() and inherits these variables
            invocation = dbt.cli([command, *dbt_vars_args(batch_start, batch_end, window.symbols)],
                                 context=context, raise_on_error=False)
        for event in invocation.stream():
            if isinstance(event, dg.Output):
                outputs[event.output_name] = event
            elif isinstance(event, dg.AssetCheckResult):
                _merge_check(checks, event)
            else:
                yield event
        if not invocation.is_successful():
            error, failed_batch = invocation.get_error(), (batch_start, batch_end)
            break
        for table, written in export_cdm_to_lake(md, batch_start, batch_end, window.symbols, window.write_mode,
                                                  tables=tables).items():
            exported.setdefault(table, WriteResult(table)).merge(written)
    built = [t for t in tables if t in outputs]  # tables dbt materialized, so they exist in the warehouse
    rows = cdm_row_counts(md, window.start_date, window.end_date, window.symbols, tables=built) if built else {}
    previews = cdm_preview(md, window.start_date, window.end_date, window.symbols, tables=built) if built else {}
    lake = project_lake(md)
    for output_name, event in outputs.items():
        table = output_name
        extra = _quantflow_metadata(md, table, window, command, len(batches), exported, rows, previews,
                                    lake.url(table), failed_batch)
        yield dg.Output(value=None, output_name=output_name, metadata={**event.metadata, **extra},
                        data_version=event.data_version, tags=event.tags)
    yield from checks.values()
    if error is not None:
        raise dg.Failure(description=f"dbt {command} failed; the window was not exported to the lake.\n\n{error}")


def build_dbt_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """One asset per dbt model (group ``dbt``); external ``AssetSpec``s when no enabled feed feeds dbt."""
    if not cdm_tables(md):
        return _external_cdm_specs()
    project = dbt_project_for(md)

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=dbt_translator(),
        name="dbt_cdm",
    )
    def dbt_cdm(context: dg.AssetExecutionContext, config: PipelineConfig, dbt: DbtCliResource):
        yield from _materialize(context, config, dbt, md)

    return [dbt_cdm]
