"""``build_defs_from_metadata``: assembles the registered stage groups' assets, jobs and resources."""

from __future__ import annotations

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.dagster.automation import build_automation
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, StageReporter, reporter_resource
from quantflow.pipeline.stages import PIPELINE_JOB, STAGE_GROUPS


def _runnable(assets: list) -> list[dg.AssetsDefinition]:
    return [a for a in assets if isinstance(a, dg.AssetsDefinition) and a.is_executable]


def build_jobs(assets_by_group: dict[str, list]) -> list:
    """``quantflow_pipeline`` (every stage) and ``quantflow_<group>`` per group that has runnable assets."""
    jobs = []
    if any(_runnable(a) for a in assets_by_group.values()):
        jobs.append(dg.define_asset_job(PIPELINE_JOB, selection=dg.AssetSelection.all(),
                                        description="Every QuantFlow stage for the project, in dependency order."))
    for group in STAGE_GROUPS:
        if _runnable(assets_by_group.get(group.name, [])):
            jobs.append(dg.define_asset_job(group.job_name, selection=dg.AssetSelection.groups(group.name),
                                            description=f"The `{group.name}` stage: {group.description}"))
    return jobs


def build_defs_from_metadata(md: ProjectMetadata, reporter: StageReporter | None = None) -> dg.Definitions:
    """``reporter``: where the stage assets report progress and results (default: the run's log). Schedules
    and sensors come from ``project.schedules`` / ``project.sensors`` (see ``automation``)."""
    assets_by_group = {group.name: group.build_assets(md) for group in STAGE_GROUPS}
    resources = {REPORTER_KEY: reporter_resource(reporter)}
    for group in STAGE_GROUPS:
        resources.update(group.build_resources(md))
    schedules, sensors = build_automation(md, assets_by_group)
    return dg.Definitions(
        assets=[a for assets in assets_by_group.values() for a in assets],
        jobs=build_jobs(assets_by_group),
        schedules=schedules,
        sensors=sensors,
        resources=resources,
    )
