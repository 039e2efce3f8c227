"""``build_defs_from_metadata``: assembles the stage factories, jobs and resources; nothing else."""

from __future__ import annotations

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.dagster.assets.dbt import build_dbt_assets, build_dbt_resource
from quantflow.pipeline.dagster.assets.ingest import build_ingest_assets
from quantflow.pipeline.dagster.assets.state_engine import build_state_engine_assets

# (job name, asset group or None for every asset); a job exists only when its group has assets.
STAGE_JOBS: tuple[tuple[str, str | None], ...] = (
    ("quantflow_pipeline", None),
    ("quantflow_ingest", "ingest"),
    ("quantflow_dbt", "dbt"),
    ("quantflow_state_engine", "state_engine"),
)


def _materializable(assets: list) -> list:
    return [a for a in assets if isinstance(a, dg.AssetsDefinition) and a.is_executable]


def _group_of(asset: dg.AssetsDefinition) -> set[str]:
    return set(asset.group_names_by_key.values())


def build_jobs(assets: list) -> list:
    runnable = _materializable(assets)
    jobs = []
    for name, group in STAGE_JOBS:
        members = [a for a in runnable if group is None or group in _group_of(a)]
        if not members:
            continue
        selection = dg.AssetSelection.all() if group is None else dg.AssetSelection.groups(group)
        jobs.append(dg.define_asset_job(name, selection=selection, description=_job_description(name, group)))
    return jobs


def _job_description(name: str, group: str | None) -> str:
    if group is None:
        return "Every QuantFlow stage for the project, in dependency order."
    return f"The `{group}` stage of the QuantFlow pipeline."


def build_defs_from_metadata(md: ProjectMetadata) -> dg.Definitions:
    assets = [*build_ingest_assets(md), *build_dbt_assets(md), *build_state_engine_assets(md)]
    return dg.Definitions(
        assets=assets,
        jobs=build_jobs(assets),
        resources={"dbt": build_dbt_resource(md)},
    )
