"""dbt stage: raw tables -> common data model (CDM) through dbt.

- ``sources``: which raw tables the enabled feeds produce (``feed_kinds``), which CDM models exist.
- ``generator``: ``DBTProjectGenerator`` writes ``dbt_project/`` from the metadata.
- ``vars``: ``dbt_vars_args`` turns a date window into dbt ``--vars``.
- ``warehouse``: ``prepare_raw_sources`` before dbt, ``export_cdm_to_lake`` after it.
- ``runner``: ``run(...) -> TransformResult``, the stage's plain entry point (dbt's Python API, no Dagster).

Nothing is imported here, so ``quantflow.transform.sources`` stays cheap for the ingest stage.
"""
