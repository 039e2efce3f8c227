"""The production deployment, for real on this machine: PostgreSQL storage, the user-code gRPC server and
every run in containers of the project image (DockerRunLauncher), the daemon's schedules and sensors,
telemetry, a restart, and ``dagster job execute`` on the production configuration.

The tests of this module share one deployment and run in order (each builds on the runs before it).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import dagster as dg
import pytest

from tests.deploy.deployment import CONTAINER_PROJECT, IMAGE, Deployment, docker_engine, project_image
from tests.postgres_server import binaries_missing, running_postgres

pytestmark = pytest.mark.slow

PROJECT = """\
project:
  name: deployed
  symbols: [AAA, BBB]
  ingest:
    feeds:
      - {name: sample, kind: synthetic, params: {seed: 5, trades_per_day: 300, quotes_per_trade: 2}}
  schedules:
    - {name: every_minute, job: quantflow_ingest, cron: "* * * * *", days: 7, running: true}
  sensors:
    - {name: landed, kind: new_raw_data, job: quantflow_pipeline, minimum_interval_s: 5, running: true}
"""


def ingest_config(start: str, end: str) -> dict:
    window = {"start_date": start, "end_date": end}
    return {"ops": {"raw_sample": {"config": window}}}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    reason = binaries_missing()
    if reason:
        pytest.skip(reason)
    docker_engine()
    project_image()
    root = tmp_path_factory.mktemp("deployment")
    metadata = root / "project_metadata"
    metadata.mkdir()
    (metadata / "project.yaml").write_text(textwrap.dedent(PROJECT))
    os.chmod(root, 0o755)
    with running_postgres("dagster", listen="*") as postgres:
        deployment = Deployment(root, postgres, metadata).start()
        try:
            yield deployment
        finally:
            deployment.stop()


def _runs(deployment, tag: str, value: str) -> list[tuple[str, str]]:
    return deployment.sql("select r.run_id, r.status from runs r join run_tags t on t.run_id = r.run_id "
                          "where t.key = %s and t.value = %s", tag, value)


def test_a_run_executes_in_its_own_container_and_writes_the_shared_lake(deployment):
    client = deployment.client()
    run_id = client.submit_job_execution("quantflow_ingest", run_config=ingest_config("2024-01-02", "2024-01-03"))
    assert deployment.wait_for_run(run_id) == "SUCCESS", deployment.diagnostics()
    # stored in PostgreSQL: the run, its container, its event log
    assert deployment.sql("select status from runs where run_id = %s", run_id) == [("SUCCESS",)]
    tags = dict(deployment.sql("select key, value from run_tags where run_id = %s", run_id))
    assert tags["dagster/image"] == IMAGE and tags["docker/container_id"]
    events = dict(deployment.sql("select dagster_event_type, count(*) from event_logs where run_id = %s "
                                 "group by dagster_event_type", run_id))
    assert events["ASSET_MATERIALIZATION"] == 1 and events[dg.DagsterEventType.RUN_SUCCESS.value] == 1
    # written by the container into the shared lake volume (the running schedule may already have stored the
    # last week beside it: only 2024 is this run's)
    partitions = sorted(p.relative_to(deployment.lake_dir / "lake" / "raw_sample_trades").parts[:2]
                        for p in (deployment.lake_dir / "lake" / "raw_sample_trades").rglob("data.parquet"))
    this_run = [(symbol, day) for symbol, day in partitions if day.startswith("day=2024-")]
    assert this_run == [(f"symbol={s}", f"day={d}") for s in ("AAA", "BBB") for d in ("2024-01-02", "2024-01-03")]


def test_a_run_over_its_memory_limit_fails_with_the_reason_and_spares_the_others(deployment):
    client = deployment.client()
    starved = client.submit_job_execution("quantflow_ingest", run_config=ingest_config("2024-01-08", "2024-01-08"),
                                          tags={"quantflow/memory_limit": "160m"})
    healthy = client.submit_job_execution("quantflow_ingest", run_config=ingest_config("2024-01-09", "2024-01-09"))
    assert deployment.wait_for_run(starved) == "FAILURE"
    assert deployment.wait_for_run(healthy) == "SUCCESS", deployment.diagnostics()
    messages = [e.dagster_event.message for e in deployment.events(starved, dg.DagsterEventType.RUN_FAILURE.value)]
    assert len(messages) == 1  # the run worker died starting: the failure comes with the container's state
    assert "exceeding its memory limit (160 MiB; OOM kill, exit code 137)" in messages[0], messages
    assert deployment.services_running()  # the daemon, webserver and code server go on


def test_the_daemon_fires_the_schedule_and_the_sensor_follows_new_raw_data(deployment):
    scheduled = deployment.wait_for(lambda: [r for r in _runs(deployment, "dagster/schedule_name", "every_minute")
                                             if r[1] == "SUCCESS"], 240, "a scheduled run to succeed", every=3)
    assert ("SUCCESS",) in deployment.sql("select status from job_ticks where type = 'SCHEDULE'")  # in PostgreSQL
    # raw data landed (the first test's run, the schedule's): the sensor ran dbt onward over it
    sensed = deployment.wait_for(lambda: [r for r in _runs(deployment, "dagster/sensor_name", "landed")
                                          if r[1] == "SUCCESS"], 300, "a sensor run to succeed", every=3)
    assert scheduled and sensed
    windows = [v for (v,) in deployment.sql("select t.value from run_tags t join run_tags s on s.run_id = t.run_id "
                                            "where t.key = 'quantflow/window' and s.key = 'dagster/sensor_name'")]
    assert any(w.startswith("2024-01-02") for w in windows), windows
    cdm = deployment.lake_dir / "lake" / "cdm_trades"
    assert any(cdm.rglob("data.parquet")), "the sensor's run wrote no CDM trades"


def test_every_daemon_run_has_its_telemetry_event(deployment):
    finished = [r for (r,) in deployment.sql("select run_id from runs where status in ('SUCCESS', 'FAILURE')")]

    def reported():
        bodies = deployment.sql("select run_id, event from event_logs where dagster_event_type = 'ENGINE_EVENT' "
                                "and event like '%%telemetry: run %%'")
        return {run_id for run_id, _ in bodies} >= set(finished) and bodies

    bodies = deployment.wait_for(reported, 60, "the run telemetry sensors", every=2)
    assert len(bodies) == len({run_id for run_id, _ in bodies})  # one event per run
    stage_events = deployment.sql("select count(*) from event_logs where dagster_event_type = 'ENGINE_EVENT' "
                                  "and event like '%%telemetry: stage raw_sample%%'")
    assert stage_events[0][0] >= 2


def test_runs_and_ticks_survive_a_restart_of_webserver_and_daemon(deployment):
    before = {r for (r,) in deployment.sql("select run_id from runs")}
    deployment.stop_services()
    deployment.start_services()
    query = "{ runsOrError { ... on Runs { results { runId status } } } }"
    listed = {r["runId"]: r["status"] for r in deployment.graphql(query)["runsOrError"]["results"]}
    assert before <= set(listed)
    schedule = deployment.graphql(SCHEDULE_TICKS)["scheduleOrError"]
    assert schedule["scheduleState"]["status"] == "RUNNING"
    ticks_before = len(schedule["scheduleState"]["ticks"])
    assert "SUCCESS" in {t["status"] for t in schedule["scheduleState"]["ticks"]}
    deployment.wait_for(lambda: len(deployment.graphql(SCHEDULE_TICKS)["scheduleOrError"]["scheduleState"]["ticks"])
                        > ticks_before, 150, "a schedule tick after the restart", every=3)


SCHEDULE_TICKS = """{ scheduleOrError(scheduleSelector: {repositoryLocationName: "quantflow",
  repositoryName: "__repository__", scheduleName: "every_minute"}) {
  ... on Schedule { scheduleState { status ticks(limit: 100) { status } } } } }"""


def test_dagster_job_execute_on_the_production_configuration(deployment):
    """As CI would: ``dagster job execute`` in the image, on the production instance (PostgreSQL)."""
    env = [arg for k, v in deployment.env().items() for arg in ("-e", f"{k}={v}")]
    volumes = [arg for v in deployment.volumes() for arg in ("-v", v)]
    config = deployment.root / "run_config.yaml"
    config.write_text(json.dumps(ingest_config("2024-01-10", "2024-01-10")))  # JSON is YAML
    config.chmod(0o644)
    before = {r for (r,) in deployment.sql("select run_id from runs")}
    out = subprocess.run(["docker", "run", "--rm", "--network", deployment.network, *env, *volumes,
                          "-v", f"{config}:/tmp/run_config.yaml:ro", IMAGE,
                          "dagster", "job", "execute", "-m", "quantflow.pipeline.dagster.auto",
                          "-d", CONTAINER_PROJECT, "-j", "quantflow_ingest", "-c", "/tmp/run_config.yaml"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    executed = [(run_id, status) for run_id, status, job in deployment.sql("select run_id, status, pipeline_name from runs")
                if run_id not in before and job == "quantflow_ingest"
                and "docker/container_id" not in dict(deployment.sql("select key, value from run_tags where "
                                                                     "run_id = %s", run_id))]
    assert [status for _, status in executed] == ["SUCCESS"]
    assert (deployment.lake_dir / "lake" / "raw_sample_trades" / "symbol=AAA" / "day=2024-01-10").is_dir()
