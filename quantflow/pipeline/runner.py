"""``BatchPipelineRunner``: run a stage (or the whole pipeline) from a notebook or script.

It executes the same Dagster jobs the UI and the daemon run, in process, against the project's Dagster
instance (``DAGSTER_HOME``, by default ``<project>/.temp``) so the runs and materializations show up in
the UI afterwards, and returns a plain result object.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from quantflow.metadata.manager import MetadataManager, ProjectMetadata
from quantflow.pipeline.config import PipelineConfig, resolve
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata

STAGE_JOBS = {"all": "quantflow_pipeline", "ingest": "quantflow_ingest", "dbt": "quantflow_dbt"}


@dataclass
class AssetOutcome:
    key: str
    metadata: dict[str, Any]


@dataclass
class PipelineRunResult:
    stage: str
    job: str
    run_id: str
    success: bool
    seconds: float
    materializations: dict[str, AssetOutcome] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> str:
        lines = [f"{'OK' if self.success else 'FAILED'}: job {self.job} (run {self.run_id}) in {self.seconds:.1f}s"]
        for key, outcome in self.materializations.items():
            meta = outcome.metadata
            lines.append(f"  {key}")
            for table in sorted(k.split("/", 1)[1] for k in meta if k.startswith("location/")):
                rows = meta.get(f"rows_written/{table}", "?")
                skipped = meta.get(f"days_skipped/{table}", 0)
                kept = f", {skipped} (symbol, day)s already stored, kept" if skipped else ""
                lines.append(f"    {table}: {rows} rows written{kept} -> {meta[f'location/{table}']}")
            for k in ("bad_rows", "summary_url", "bad_rows_url"):
                if k in outcome.metadata:
                    lines.append(f"    {k}: {outcome.metadata[k]}")
        for name, passed in self.checks.items():
            lines.append(f"  check {name}: {'passed' if passed else 'FAILED'}")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


class BatchPipelineRunner:
    def __init__(self, metadata: ProjectMetadata, instance: dg.DagsterInstance | None = None):
        self.metadata = metadata
        self.defs = build_defs_from_metadata(metadata)
        self._instance = instance

    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
        return self._instance

    def job_names(self) -> list[str]:
        return sorted(job.name for job in self.defs.jobs or [])

    def run(
        self,
        stage: str = "all",
        symbols: list[str] | None = None,
        start_date: str | dt.date | None = None,
        end_date: str | dt.date | None = None,
        write_mode: str = "skip_if_exists",
        max_concurrency: int = 4,
        shard_granularity: str = "daily",
        batch_days: int | None = None,
        skip_test: bool = True,
        log_level: str = "INFO",
    ) -> PipelineRunResult:
        """Run ``stage`` for the window; ``log_level`` sets Dagster's console logger (DEBUG shows every event)."""
        if stage not in STAGE_JOBS:
            raise ValueError(f"stage must be one of {', '.join(STAGE_JOBS)}; got {stage!r}")
        job_name = STAGE_JOBS[stage]
        if job_name not in self.job_names():
            raise ValueError(f"stage {stage!r} has no assets in this project (jobs: {', '.join(self.job_names())})")
        config = PipelineConfig(
            start_date=str(start_date) if start_date else None,
            end_date=str(end_date) if end_date else None,
            symbols=symbols,
            write_mode=write_mode,
            max_concurrency=max_concurrency,
            shard_granularity=shard_granularity,
            batch_days=batch_days,
            skip_test=skip_test,
        )
        resolve(config, self.metadata.symbols)  # fail fast on bad dates or symbols, before Dagster starts
        job = self.defs.resolve_job_def(job_name)
        ops = {node.name: {"config": config.model_dump()} for node in job.graph.nodes if node.definition.config_schema}
        began = time.perf_counter()
        run_config = {"ops": ops, "loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
        result = job.execute_in_process(run_config=run_config, instance=self.instance(), raise_on_error=False)
        out = PipelineRunResult(stage, job_name, result.run_id, result.success, time.perf_counter() - began)
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            out.materializations[mat.asset_key.to_user_string()] = AssetOutcome(
                mat.asset_key.to_user_string(), {k: _plain(v) for k, v in mat.metadata.items()}
            )
        for evaluation in result.get_asset_check_evaluations():
            out.checks[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = evaluation.passed
        if not result.success:
            failures = [e for e in result.all_events if e.is_failure and e.event_specific_data is not None]
            messages = [getattr(getattr(e.event_specific_data, "error", None), "message", "") for e in failures]
            out.error = "; ".join(m.strip() for m in messages if m) or "run failed"
        return out


def create_runner(manager: MetadataManager | ProjectMetadata | str | Path = ".",
                  instance: dg.DagsterInstance | None = None) -> BatchPipelineRunner:
    """A runner for a project: pass a metadata manager, loaded metadata, or a project directory."""
    if isinstance(manager, (str, Path)):
        manager = MetadataManager(manager)
    metadata = manager.load_all() if isinstance(manager, MetadataManager) else manager
    return BatchPipelineRunner(metadata, instance)
