"""Dagster's own storage on PostgreSQL (dagster-postgres), as configured for production in docker/dagster.yaml."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline import create_runner
from tests.conftest import REPO_ROOT
from tests.postgres_server import postgres_server  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


def test_runs_and_materializations_persist_in_postgres(postgres_server, small_project, tmp_path,  # noqa: F811
                                                       monkeypatch):
    server = postgres_server
    server.create_database("dagster_instance")
    production = yaml.safe_load((REPO_ROOT / "docker" / "dagster.yaml").read_text())
    home = tmp_path / "dagster_home"
    home.mkdir()
    # the production storage section as committed (credentials from the environment); runs stay in process
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": production["storage"]}))
    for var, value in {"DAGSTER_PG_HOST": server.host, "DAGSTER_PG_PORT": str(server.port),
                       "DAGSTER_PG_USER": server.user, "DAGSTER_PG_PASSWORD": server.password,
                       "DAGSTER_PG_DB": "dagster_instance", "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(var, value)

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runner = create_runner(get_metadata_manager(small_project), instance=instance)
        result = runner.run(stage="ingest", start_date="2024-01-02", end_date="2024-01-02", symbols=["AAA"])
        assert result.success, result.error
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.job_name == "quantflow_ingest"
        assert instance.get_latest_materialization_event(dg.AssetKey("raw_sample")) is not None

    con = server.connect("dagster_instance")
    try:
        with con.cursor() as cur:
            cur.execute("select count(*) from runs where run_id = %s", (result.run_id,))
            assert cur.fetchone()[0] == 1
    finally:
        con.close()
