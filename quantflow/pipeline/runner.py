"""``BatchPipelineRunner``: run a stage (or the whole pipeline) from a notebook or script.

It executes the same Dagster jobs the UI and the daemon run, in process, against the project's Dagster
instance (``DAGSTER_HOME``, by default ``<project>/.temp``) so the runs and materializations show up in
the UI afterwards, and returns a plain result object.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from quantflow.metadata.manager import MetadataManager, ProjectMetadata
from quantflow.pipeline.config import PipelineConfig, RunWindow, resolve
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata

log = logging.getLogger(__name__)

# Stages in pipeline order; each runs as its Dagster job, except the state engine, whose Numba/Ray work
# runs outside the Dagster process (its materializations are still recorded on the instance).
STAGE_ORDER = ("ingest", "dbt", "state_engine")
STAGES = ("all", *STAGE_ORDER)
DIRECT_STAGES = ("state_engine",)


@dataclass
class AssetOutcome:
    key: str
    metadata: dict[str, Any]


@dataclass
class PipelineRunResult:
    stage: str
    success: bool = True
    seconds: float = 0.0
    runs: list[tuple[str, str]] = field(default_factory=list)  # (job or direct stage, Dagster run id or "")
    materializations: dict[str, AssetOutcome] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def run_id(self) -> str | None:
        ids = [r for _, r in self.runs if r]
        return ids[-1] if ids else None

    def summary(self) -> str:
        done = ", ".join(f"{job} (run {rid})" if rid else f"{job} (direct)" for job, rid in self.runs)
        lines = [f"{'OK' if self.success else 'FAILED'}: stage {self.stage} in {self.seconds:.1f}s: {done}"]
        for key, outcome in self.materializations.items():
            meta = outcome.metadata
            lines.append(f"  {key}")
            for table in sorted(k.split("/", 1)[1] for k in meta if k.startswith("location/")):
                rows = meta.get(f"rows_written/{table}", "?")
                skipped = meta.get(f"days_skipped/{table}", 0)
                kept = f", {skipped} (symbol, day)s already stored, kept" if skipped else ""
                lines.append(f"    {table}: {rows} rows written{kept} -> {meta[f'location/{table}']}")
            for k in ("bad_rows", "summary_url", "bad_rows_url"):
                if k in meta:
                    lines.append(f"    {k}: {meta[k]}")
        for name, passed in self.checks.items():
            lines.append(f"  check {name}: {'passed' if passed else 'FAILED'}")
        lines.extend(f"  {note}" for note in self.notes)
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
        self._verbose = False

    def _progress(self, message: str) -> None:
        if self._verbose:
            print(message, flush=True)
        log.info(message)

    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
        return self._instance

    def job_names(self) -> list[str]:
        return sorted(job.name for job in self.defs.jobs or [])

    def stages(self) -> list[str]:
        """The stages this project has, in pipeline order."""
        jobs = set(self.job_names())
        return [st for st in STAGE_ORDER if f"quantflow_{st}" in jobs]

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
        """Run ``stage`` (or every stage, in order) for the window; stops at the first failing stage.

        ``log_level`` sets Dagster's console logger (DEBUG shows every event).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
        available = self.stages()
        if stage != "all" and stage not in available:
            raise ValueError(f"stage {stage!r} has no assets in this project (stages: {', '.join(available)})")
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
        window = resolve(config, self.metadata.symbols)  # fail fast on bad dates or symbols
        out = PipelineRunResult(stage)
        self._verbose = log_level.upper() in ("DEBUG", "INFO")
        began = time.perf_counter()
        for step in available if stage == "all" else [stage]:
            if step in DIRECT_STAGES:
                self._run_state_engine(window, out)
            else:
                self._run_job(f"quantflow_{step}", config, log_level, out)
            if not out.success:
                break
        out.seconds = time.perf_counter() - began
        return out

    def _run_job(self, job_name: str, config: PipelineConfig, log_level: str, out: PipelineRunResult) -> None:
        job = self.defs.resolve_job_def(job_name)
        ops = {node.name: {"config": config.model_dump()} for node in job.graph.nodes if node.definition.config_schema}
        run_config = {"ops": ops, "loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
        result = job.execute_in_process(run_config=run_config, instance=self.instance(), raise_on_error=False)
        out.runs.append((job_name, result.run_id))
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
            out.success = False
            out.error = "; ".join(m.strip() for m in messages if m) or f"{job_name} failed"

    def _run_state_engine(self, window: RunWindow, out: PipelineRunResult) -> None:
        """Run the state engine on Ray from here, then record its materializations on the instance."""
        from quantflow.pipeline.dagster.assets.state_engine import materialization_metadata
        from quantflow.state_engine import runner as state_runner

        out.runs.append(("state_engine", ""))
        try:
            result = state_runner.run_production(
                self.metadata, window.start_date, window.end_date, window.symbols, window.write_mode,
                window.max_concurrency, window.shard_granularity, progress=self._progress,
            )
        except state_runner.StateEngineError as exc:
            out.success, out.error = False, str(exc)
            return
        out.notes.append(
            f"state engine: {result.shards} shards ({result.shards_skipped} already stored) on {result.executor}, "
            f"{result.trades:,} trades in {result.seconds:.1f}s ({result.trades_per_second:,.0f} trades/s)")
        out.notes.extend(f"state engine skipped {s}" for s in result.skipped_bars)
        instance = self.instance()
        for table in state_runner.output_tables(self.metadata.project.state_engine):
            if table not in result.tables:
                continue
            meta = materialization_metadata(result, table)
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key=table, metadata={**meta, "recorded_by": "BatchPipelineRunner"}))
            out.materializations[table] = AssetOutcome(table, {k: _plain(v) for k, v in meta.items()})


def create_runner(manager: MetadataManager | ProjectMetadata | str | Path = ".",
                  instance: dg.DagsterInstance | None = None) -> BatchPipelineRunner:
    """A runner for a project: pass a metadata manager, loaded metadata, or a project directory."""
    if isinstance(manager, (str, Path)):
        manager = MetadataManager(manager)
    metadata = manager.load_all() if isinstance(manager, MetadataManager) else manager
    return BatchPipelineRunner(metadata, instance)
