"""Group ``transform``: one asset per dbt model (``cdm_trades``, ``cdm_quotes``, ...) via dagster-dbt.

A thin adapter over ``quantflow.transform.runner.run``, which does the batch loop (raw tables into the
warehouse, dbt, export to the lake, counts); this module passes it a dbt invocation through dagster-dbt's
``DbtCliResource.cli``, so each model streams its own materialization (dbt's metadata plus QuantFlow's:
row counts, lake location, a preview) and each dbt test its asset check. The events of all batches are
merged: one materialization per model, a check passes only if it passed in every batch. dbt sources
``raw.raw_<feed>_<kind>`` map to the ingest asset ``raw_<feed>``, so lineage runs from the feeds through
the CDM.

dbt tests are asset checks, but not blocking ones: with ``skip_test: true`` (the default) they do not run,
and Dagster shows them as not executed rather than warning that a blocking check emitted nothing. When they
run (``dbt build``) a failing test fails dbt, and so the step, before its batch reaches the lake.
"""


import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from quantflow.compute.stage import one_line
from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import TransformRunConfig
from quantflow.pipeline.dagster.metadata import stage_metadata
from quantflow.pipeline.dagster.reporting import StageFailed, StageReporter, call_stage, reporter_of
from quantflow.storage.tables import CDM_TABLES, RAW_KIND_NAMES
from quantflow.transform.environment import dbt_environment  # light: the environment, not the warehouse code
from quantflow.transform.generator import DBTProjectGenerator, dbt_project_dir
from quantflow.transform.sources import cdm_tables

if TYPE_CHECKING:
    from quantflow.transform.runner import DbtOutcome

GROUP = "transform"
ASSET = "dbt_cdm"


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

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project) -> dg.AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        return dg.AssetCheckSpec(spec.name, asset=spec.asset_key, description=spec.description,
                                 additional_deps=spec.additional_deps, metadata=spec.metadata,
                                 blocking=False)  # see the module docstring


def _source_feed(props: Mapping[str, Any]) -> str | None:
    meta = {**(props.get("meta") or {}), **((props.get("config") or {}).get("meta") or {})}
    if meta.get("quantflow_feed"):
        return str(meta["quantflow_feed"])
    name = str(props.get("name", ""))
    for kind in RAW_KIND_NAMES:
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
    from quantflow.transform.runner import invoke_dbt

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


def build_transform_resources(md: ProjectMetadata) -> dict[str, Any]:
    return {"dbt": build_dbt_resource(md)}


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


class _DagsterDbt:
    """The transform runner's ``invoke`` through dagster-dbt: collects each model's ``Output`` and each test's
    check result (merged over batches), and removes the per-invocation target folder afterwards."""

    def __init__(self, context: dg.AssetExecutionContext, dbt: DbtCliResource, md: ProjectMetadata):
        self.context, self.dbt, self.md = context, dbt, md
        self.outputs: dict[str, dg.Output] = {}
        self.checks: dict[tuple, dg.AssetCheckResult] = {}
        self.other: list = []

    def __call__(self, args: list[str], node_done) -> "DbtOutcome":
        with dbt_environment(self.md):  # the dbt subprocess starts inside cli() and inherits these variables
            invocation = self.dbt.cli(args, context=self.context, raise_on_error=False)
        try:
            with reporter_of(self.context).quiet():
                for event in invocation.stream():
                    if isinstance(event, dg.Output):
                        self.outputs[event.output_name] = event
                        node_done(event.output_name)
                    elif isinstance(event, dg.AssetCheckResult):
                        self._merge_check(event)
                    else:
                        self.other.append(event)
            return self._outcome(invocation)
        finally:
            shutil.rmtree(invocation.target_path, ignore_errors=True)

    def _merge_check(self, event: dg.AssetCheckResult) -> None:
        """Across batches a check passes only if it passed every time: keep its first failing result."""
        key = (event.asset_key, event.check_name)
        if key not in self.checks or (self.checks[key].passed and not event.passed):
            self.checks[key] = event

    def _outcome(self, invocation) -> "DbtOutcome":
        from quantflow.transform.runner import DbtOutcome

        outcome = DbtOutcome(invocation.is_successful(), models=set(self.outputs))
        try:
            results = invocation.get_artifact("run_results.json").get("results", [])
        except (OSError, json.JSONDecodeError):
            results = []
        for node in results:
            # "model.quantflow.cdm_trades", "test.quantflow.cdm_trades_ts_near_date.<hash>"
            kind, _, name = (node.get("unique_id", "").split(".") + ["", "", ""])[:3]
            status = str(node.get("status"))
            if kind == "test":
                outcome.tests[name] = status
            if status in ("error", "fail", "runtime error"):
                message = f" ({one_line(self.md.redact(node['message']), 200)})" if node.get("message") else ""
                outcome.failures.append(f"{kind} {name}: {status}{message}")
        if not outcome.success and not outcome.failures:
            error = invocation.get_error()
            outcome.failures.append(one_line(self.md.redact(str(error)), 300) if error else "see the dbt log")
        return outcome


def build_transform_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """One asset per dbt model (group ``transform``); external ``AssetSpec``s when no enabled feed feeds dbt."""
    if not cdm_tables(md):
        return _external_cdm_specs()
    project = dbt_project_for(md)

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=dbt_translator(),
        name=ASSET,
    )
    def dbt_cdm(context: dg.AssetExecutionContext, config: TransformRunConfig, dbt: DbtCliResource,
                quantflow_reporter: dg.ResourceParam[StageReporter]):
        from quantflow.transform import runner as transform_runner  # at run time: the definitions stay light

        window = config.window(md.symbols)
        selected = [key.to_user_string() for key in context.selected_asset_keys]
        invoke = _DagsterDbt(context, dbt, md)
        try:
            result = call_stage(context, md, ASSET, lambda progress: transform_runner.run(
                md, window, batch_days=config.batch_days, skip_test=config.skip_test, tables=selected,
                invoke=invoke, progress=progress))
            failure = None
        except StageFailed as failed:
            result, failure = failed.partial, failed
        yield from invoke.other
        for name, event in invoke.outputs.items():
            extra = stage_metadata(result, [name]) if result is not None else {}
            yield dg.Output(value=None, output_name=name, metadata={**event.metadata, **extra},
                            data_version=event.data_version, tags=event.tags)
        yield from invoke.checks.values()
        if failure is not None:
            raise failure

    return [dbt_cdm]
