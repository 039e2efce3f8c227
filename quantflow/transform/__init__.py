"""The transform stage (Dagster group ``transform``, kind dbt): raw tables -> common data model (CDM) through dbt.

- ``sources``: which raw tables the enabled feeds produce (``FeedConfig.raw_kinds``), which CDM models exist.
- ``generator``: ``DBTProjectGenerator`` writes ``dbt_project/`` from the metadata.
- ``vars``: ``dbt_vars_args`` turns a date window into dbt ``--vars``.
- ``warehouse``: ``prepare_raw_sources`` before dbt, ``export_cdm_to_lake`` after it.
- ``runner``: ``run(metadata, window, ...) -> TransformResult``, the stage's entry point (dbt invoked in
  process by default, or through dagster-dbt by the Dagster asset; no Dagster import here).

Nothing is imported here, so each submodule costs only what it needs.
"""
