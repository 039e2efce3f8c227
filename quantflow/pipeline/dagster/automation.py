"""What the Dagster daemon runs unattended, from the metadata: ``project.schedules`` (cron), the
``project.sensors`` of kind ``new_raw_data``, and the run-telemetry sensors.

- A schedule tick runs its job over the window of ``days`` calendar days ending ``lag_days`` before the
  tick's date in the schedule's time zone; its run key is the schedule and window, so a tick is never run
  twice. Every stage asset of the job gets the window and the schedule's ``run_config`` options.
- A ``new_raw_data`` sensor looks at the raw lake tables of the enabled feeds every ``minimum_interval_s``.
  Its first look only records what is there; after that, partitions written since the last look start one
  run of the job's stages after ingest (dbt onward) over the symbols and dates they hold.
- ``quantflow_run_telemetry_success`` / ``_failure`` emit the telemetry event of every run that finishes
  (see ``quantflow.pipeline.telemetry``); they run from the start, and only when telemetry is enabled.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.stages import PIPELINE_JOB
from quantflow.pipeline.telemetry import report_run

INGEST_GROUP = "ingest"
WINDOW_TAG = "quantflow/window"


def stage_ops_config(nodes: Iterable[tuple[str, dg.NodeDefinition]], options: dict) -> dict:
    """Run config ``{"ops": ...}`` giving each stage op the options its config class has."""
    ops = {}
    for name, definition in nodes:
        schema = definition.config_schema
        if schema:
            fields = schema.config_type.fields
            ops[name] = {"config": {k: v for k, v in options.items() if k in fields}}
    return {"ops": ops}


def _status(running: bool):
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def job_assets(job: str, assets_by_group: dict[str, list]) -> list[dg.AssetsDefinition]:
    """The executable assets a ``quantflow_*`` job materializes."""
    groups = [g for g in assets_by_group if job in (PIPELINE_JOB, f"quantflow_{g}")]
    return [a for g in groups for a in assets_by_group[g] if isinstance(a, dg.AssetsDefinition) and a.is_executable]


def _nodes(assets: list[dg.AssetsDefinition]) -> list[tuple[str, dg.NodeDefinition]]:
    return [(a.node_def.name, a.node_def) for a in assets]


def tick_window(tick: dt.datetime, timezone: str, days: int, lag_days: int) -> tuple[dt.date, dt.date]:
    """The dates a schedule tick runs: ``days`` days ending ``lag_days`` before the tick's local date."""
    end = tick.astimezone(ZoneInfo(timezone)).date() - dt.timedelta(days=lag_days)
    return end - dt.timedelta(days=days - 1), end


def build_schedule(cfg, assets_by_group: dict[str, list]) -> dg.ScheduleDefinition:
    nodes = _nodes(job_assets(cfg.job, assets_by_group))

    @dg.schedule(name=cfg.name, cron_schedule=cfg.cron, execution_timezone=cfg.timezone, job_name=cfg.job,
                 default_status=_status(cfg.running),
                 description=f"{cfg.job} over {cfg.days} day(s) ending {cfg.lag_days} day(s) before each tick.")
    def _schedule(context: dg.ScheduleEvaluationContext):
        start, end = tick_window(context.scheduled_execution_time, cfg.timezone, cfg.days, cfg.lag_days)
        options = {"start_date": start.isoformat(), "end_date": end.isoformat(), **cfg.run_config.options()}
        return dg.RunRequest(run_key=f"{cfg.name}:{start}:{end}", run_config=stage_ops_config(nodes, options),
                             tags={WINDOW_TAG: f"{start}..{end}"})

    return _schedule


def build_raw_data_sensor(md: ProjectMetadata, cfg, assets_by_group: dict[str, list]) -> dg.SensorDefinition:
    from quantflow.storage.tables import raw_table_name

    downstream = [a for a in job_assets(cfg.job, assets_by_group)
                  if INGEST_GROUP not in set(a.group_names_by_key.values())]
    nodes = _nodes(downstream)
    keys = [key for a in downstream for key in a.keys]
    tables = [raw_table_name(f.name, kind) for f in md.project.ingest.enabled_feeds for kind in f.raw_kinds()]

    @dg.sensor(name=cfg.name, job_name=cfg.job, minimum_interval_seconds=cfg.minimum_interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING if cfg.running else dg.DefaultSensorStatus.STOPPED,
               description=f"Runs the stages of {cfg.job} after ingest when raw data lands in "
                           f"{', '.join(tables)}.")
    def _sensor(context: dg.SensorEvaluationContext):
        from quantflow.storage.landing import landed_dates, landed_since
        from quantflow.storage.project import project_lake

        lake = project_lake(md)
        cursor = json.loads(context.cursor) if context.cursor else None
        landed = landed_since(lake, tables, cursor)
        if cursor is None:
            context.update_cursor(json.dumps(landed.cursor))
            return dg.SkipReason(f"watching {len(landed.partitions)} stored raw partitions; runs start when "
                                 "new ones land")
        if not landed.partitions:
            return dg.SkipReason("no raw data landed since the last look")
        window = landed_dates(lake, landed.partitions)
        context.update_cursor(json.dumps(landed.cursor))
        if window is None:
            return dg.SkipReason(f"{len(landed.partitions)} raw partitions were written, with no rows")
        symbols = [s for s in landed.symbols if s in md.symbols]
        if not symbols:
            return dg.SkipReason(f"raw data landed only for symbols outside project.symbols: "
                                 f"{', '.join(landed.symbols)}")
        options = {**cfg.run_config.options(), "start_date": window[0].isoformat(),
                   "end_date": window[1].isoformat(), "symbols": symbols}
        context.log.info(f"{len(landed.partitions)} raw partitions landed: {', '.join(symbols)} "
                         f"{window[0]}..{window[1]}")
        return dg.RunRequest(run_key=f"{cfg.name}:{landed.cursor['since']}", asset_selection=keys,
                             run_config=stage_ops_config(nodes, options),
                             tags={WINDOW_TAG: f"{window[0]}..{window[1]}"})

    return _sensor


def build_telemetry_sensors(md: ProjectMetadata) -> list[dg.SensorDefinition]:
    config = md.project.telemetry
    if not config.enabled:
        return []
    sensors = []
    for status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
        @dg.run_status_sensor(run_status=status, name=f"quantflow_run_telemetry_{status.value.lower()}",
                              default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10,
                              description="The telemetry event of each run that finishes (event log, OTLP).")
        def _telemetry(context: dg.RunStatusSensorContext):
            report_run(context.instance, context.dagster_run.run_id, config, md.name)

        sensors.append(_telemetry)
    return sensors


def build_automation(md: ProjectMetadata, assets_by_group: dict[str, list]) -> tuple[list, list]:
    """(schedules, sensors) of the project."""
    schedules = [build_schedule(cfg, assets_by_group) for cfg in md.project.schedules]
    sensors = [build_raw_data_sensor(md, cfg, assets_by_group) for cfg in md.project.sensors]
    return schedules, sensors + build_telemetry_sensors(md)
