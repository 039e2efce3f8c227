"""Schedules and sensors from ``project.schedules`` / ``project.sensors``, evaluated as the daemon does."""

from __future__ import annotations

import datetime as dt
import json
import os
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline import create_runner
from quantflow.pipeline.dagster.automation import tick_window
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata
from quantflow.storage.landing import landed_since
from quantflow.storage.project import project_lake
from tests.conftest import REPO_ROOT, SMALL_PROJECT_YAML, metadata_issues, write_project

AUTOMATION = """\
  schedules:
    - name: nightly
      job: quantflow_pipeline
      cron: "30 18 * * 1-5"
      timezone: America/New_York
      days: 2
      lag_days: 1
      run_config: {write_mode: overwrite, max_concurrency: 1}
  sensors:
    - name: landed
      kind: new_raw_data
      minimum_interval_s: 30
"""
PROJECT = SMALL_PROJECT_YAML + """\
  state_engine:
    executor: local
    bars: [{type: time, every: 1m}]
""" + AUTOMATION


def _defs(root):
    return build_defs_from_metadata(get_metadata_manager(root).load_all())


def test_tick_window_is_the_local_date_of_the_tick_minus_the_lag():
    tick = dt.datetime(2024, 1, 10, 2, 0, tzinfo=dt.UTC)  # 21:00 on the 9th in New York
    assert tick_window(tick, "America/New_York", 1, 0) == (dt.date(2024, 1, 9), dt.date(2024, 1, 9))
    assert tick_window(tick, "UTC", 3, 1) == (dt.date(2024, 1, 7), dt.date(2024, 1, 9))


def test_schedule_runs_its_window_with_config_every_stage_accepts(tmp_path):
    defs = _defs(write_project(tmp_path / "p", PROJECT))
    schedule = defs.get_repository_def().get_schedule_def("nightly")
    assert schedule.cron_schedule == "30 18 * * 1-5"
    assert schedule.execution_timezone == "America/New_York"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    tick = dt.datetime(2024, 1, 5, 18, 30, tzinfo=ZoneInfo("America/New_York"))
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.run_key == "nightly:2024-01-03:2024-01-04"
    assert request.tags["quantflow/window"] == "2024-01-03..2024-01-04"
    ops = request.run_config["ops"]
    assert set(ops) == {"ingest_sample", "transform_cdm", "state_engine_full"} or len(ops) >= 3
    for config in ops.values():
        assert config["config"]["start_date"] == "2024-01-03" and config["config"]["end_date"] == "2024-01-04"
        assert config["config"]["write_mode"] == "overwrite"
    assert ops["state_engine_full"]["config"]["max_concurrency"] == 1
    job = defs.resolve_job_def("quantflow_pipeline")
    assert dg.validate_run_config(job, request.run_config)  # raises on a field a stage does not take


@pytest.mark.parametrize(("entry", "field", "words"), [
    ('cron: "61 * * * *"', "cron", "five-field cron"),
    ("timezone: Mars/Olympus", "timezone", "unknown time zone"),
    ("job: quantflow_portfolio", "job", "does not have"),
    ("run_config: {symbols: [ZZZ]}", "symbols", "ZZZ not in project.symbols"),
])
def test_bad_schedules_are_metadata_errors_naming_file_line_and_field(tmp_path, entry, field, words):
    fields = {"name": "nightly", "cron": '"0 1 * * *"'}
    key, _, value = entry.partition(": ")
    fields[key] = value
    yaml = SMALL_PROJECT_YAML + "  schedules:\n    - " + "\n      ".join(f"{k}: {v}" for k, v in fields.items()) + "\n"
    issues = metadata_issues(tmp_path / "p", yaml)
    assert any(field in i.field and words in i.message and i.file.endswith("project.yaml") and i.line
               for i in issues), issues


def test_schedule_and_sensor_names_are_distinct(tmp_path):
    yaml = SMALL_PROJECT_YAML + """\
  schedules: [{name: same, cron: "0 1 * * *"}]
  sensors: [{name: same}]
"""
    issues = metadata_issues(tmp_path / "p", yaml)
    assert any("used twice" in i.message for i in issues), issues


def test_configured_stages_are_the_jobs_the_definitions_build():
    md = get_metadata_manager(REPO_ROOT).load_all()
    jobs = {job.name for job in build_defs_from_metadata(md).jobs}
    assert jobs == {"quantflow_pipeline", *(f"quantflow_{s}" for s in md.project.configured_stages())}


@pytest.mark.slow
def test_raw_data_sensor_runs_the_stages_after_ingest_over_what_landed(tmp_path):
    root = write_project(tmp_path / "p", PROJECT)
    defs = _defs(root)
    sensor = defs.get_repository_def().get_sensor_def("landed")
    instance = dg.DagsterInstance.ephemeral()

    def evaluate(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
            data = sensor.evaluate_tick(context)
        return data, data.cursor

    data, cursor = evaluate(None)  # the first look records what is there
    assert not data.run_requests and "watching 0" in data.skip_message
    runner = create_runner(get_metadata_manager(root), instance=instance)
    assert runner.run(stage="ingest", start_date="2024-01-03", end_date="2024-01-04", symbols=["BBB"]).success
    data, cursor = evaluate(cursor)
    [request] = data.run_requests
    keys = {k.to_user_string() for k in request.asset_selection}
    assert "raw_sample" not in keys and "cdm_trades" in keys and "cdm_time_1m_bars" in keys
    config = request.run_config["ops"]["state_engine_full"]["config"]
    assert (config["start_date"], config["end_date"], config["symbols"]) == ("2024-01-03", "2024-01-04", ["BBB"])
    assert config["write_mode"] == "overwrite"
    job = defs.resolve_job_def("quantflow_pipeline").get_subset(asset_selection=set(request.asset_selection))
    assert dg.validate_run_config(job, request.run_config)
    data, cursor = evaluate(cursor)  # nothing new since
    assert not data.run_requests and "no raw data landed" in data.skip_message
    # the run the sensor asked for, executed as the daemon would: the downstream tables for that window
    result = job.execute_in_process(run_config=request.run_config, instance=instance)
    assert result.success
    assert project_lake(get_metadata_manager(root).load_all()).stored_days(
        "cdm_time_1m_bars", "BBB", dt.date(2024, 1, 3), dt.date(2024, 1, 4)) == {dt.date(2024, 1, 3), dt.date(2024, 1, 4)}


def test_landing_cursor_finds_partitions_written_in_the_second_of_the_last_look(small_project):
    md = get_metadata_manager(small_project).load_all()
    runner = create_runner(md, instance=dg.DagsterInstance.ephemeral())
    assert runner.run(stage="ingest", start_date="2024-01-03", end_date="2024-01-03").success
    lake = project_lake(md)
    tables = ["raw_sample_trades", "raw_sample_quotes"]
    first = landed_since(lake, tables, None)
    assert len(first.partitions) == 4 and first.symbols == ["AAA", "BBB"]
    stamp = 1_700_000_000.0
    for part in first.partitions:  # all stamped in one whole second, as S3 does
        os.utime(part.path, (stamp, stamp))
    cursor = json.loads(json.dumps(landed_since(lake, tables, None).cursor))
    assert cursor["since"] == stamp and len(cursor["at_since"]) == 4
    assert landed_since(lake, tables, cursor).partitions == []
    assert runner.run(stage="ingest", start_date="2024-01-04", end_date="2024-01-04", symbols=["AAA"]).success
    new = [p for p in lake.partitions("raw_sample_trades", ["AAA"]) if p.period_start == dt.date(2024, 1, 4)]
    os.utime(new[0].path, (stamp, stamp))  # same second as the last look, a path not seen then
    landed = landed_since(lake, tables, cursor)
    assert [p.path for p in landed.partitions if p.table == "raw_sample_trades"] == [new[0].path]
