"""The environment a dbt invocation runs in: the variables ``dbt_project/profiles.yml`` reads, and the
warehouse schemas, from the metadata (light: the Dagster definitions use it without loading the warehouse
code)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.project import warehouse_path

DUCKDB_RAW_SCHEMA = "raw"
DUCKDB_CDM_SCHEMA = "cdm"


def raw_schema(md: ProjectMetadata) -> str:
    return md.local.postgres.raw_schema if md.engine == "postgres" else DUCKDB_RAW_SCHEMA


def cdm_schema(md: ProjectMetadata) -> str:
    return md.local.postgres.schema_ if md.engine == "postgres" else DUCKDB_CDM_SCHEMA


def dbt_env(md: ProjectMetadata) -> dict[str, str]:
    """Environment variables that ``dbt_project/profiles.yml`` reads, from the metadata (local.yaml)."""
    pg = md.local.postgres
    env = {
        "QF_DBT_TARGET": md.engine,
        "QF_WAREHOUSE_PATH": str(warehouse_path(md)),
        "QF_CDM_SCHEMA": DUCKDB_CDM_SCHEMA,
        "QF_RAW_SCHEMA": raw_schema(md),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    if md.engine == "postgres":
        env.update({
            "QF_PG_HOST": pg.host,
            "QF_PG_PORT": str(pg.port),
            "QF_PG_USER": pg.user,
            # dbt scrubs variables named DBT_ENV_SECRET_* from its logs and artifacts
            "DBT_ENV_SECRET_QF_PG_PASSWORD": pg.password.get_secret_value(),
            "QF_PG_DBNAME": pg.dbname,
            "QF_PG_SCHEMA": pg.schema_,
        })
    return env


@contextlib.contextmanager
def dbt_environment(md: ProjectMetadata) -> Iterator[dict[str, str]]:
    """Set :func:`dbt_env` in ``os.environ`` for a dbt invocation (in process or a subprocess started
    inside the block), restoring the previous values afterwards."""
    env = dbt_env(md)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def warehouse_lock_path(md: ProjectMetadata) -> Path:
    """The lock file a transform run holds on a DuckDB warehouse (``warehouse.warehouse_lock``)."""
    path = warehouse_path(md)
    return path.with_name(path.name + ".lock")
