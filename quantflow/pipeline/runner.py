"""``BatchPipelineRunner``: run a stage (or the whole pipeline) from a notebook, a script or ``qf run``.

It executes the same Dagster jobs the UI and the daemon run (``quantflow_<stage>``, one per stage group
of the registry), in process, against the project's Dagster instance (``DAGSTER_HOME``, by default
``<project>/.temp``), so the runs and materializations show up in the UI afterwards. The stage assets
report to the runner's ``ConsoleReporter``: progress bars while they work, and the stage result objects,
which ``PipelineRunResult.summary`` reads.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from quantflow.compute.stage import RunWindow, StageResult, one_line
from quantflow.metadata.manager import MetadataManager, ProjectMetadata
from quantflow.pipeline.console import ConsoleReporter
from quantflow.pipeline.dagster.assets.transform import GROUP as DBT_GROUP
from quantflow.pipeline.dagster.automation import stage_ops_config
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata
from quantflow.pipeline.instance import PROCESS_TAG, fail_abandoned_runs, process_tag, project_instance
from quantflow.pipeline.stages import STAGE_GROUPS, STAGE_NAMES, stage_group
from quantflow.pipeline.telemetry import USER_TAG, local_user, report_run

STAGES = ("all", *STAGE_NAMES)


@dataclass
class AssetOutcome:
    key: str
    metadata: dict[str, Any]


@dataclass
class PipelineRunResult:
    stage: str
    success: bool = True
    seconds: float = 0.0
    runs: list[tuple[str, str]] = field(default_factory=list)  # (job, Dagster run id)
    results: dict[str, StageResult] = field(default_factory=dict)  # asset (or multi-asset) -> its stage result
    materializations: dict[str, AssetOutcome] = field(default_factory=dict)  # as recorded in Dagster
    checks: dict[str, bool] = field(default_factory=dict)  # "<asset>:<check>" -> passed
    error: str | None = None  # stage, asset and root cause, one line

    @property
    def run_id(self) -> str | None:
        return self.runs[-1][1] if self.runs else None

    def summary(self) -> str:
        done = ", ".join(f"{job} (run {rid[:8]})" for job, rid in self.runs)
        lines = [f"{'OK' if self.success else 'FAILED'}: stage {self.stage} in {self.seconds:.1f}s: {done}"]
        for label, result in self.results.items():
            headline = result.headline()
            lines.append(f"  {result.stage} {label}" + (f": {headline}" if headline else ""))
            for table, written in result.tables.items():
                kept = f", {written.days_skipped} (symbol, day)s already stored, kept" if written.days_skipped else ""
                where = _shown(result.table_urls.get(table, ""))
                lines.append(f"    {table}: {written.rows_written} rows written{kept} -> {where}")
            for what, url in result.artifacts.items():
                if result.summary_artifacts is None or what in result.summary_artifacts:
                    lines.append(f"    {what}: {_shown(url)}")
            lines.extend(f"    warning: {w}" for w in result.warnings)
        failed = [name for name, passed in self.checks.items() if not passed]
        if self.checks:
            lines.append(f"  checks: {len(self.checks) - len(failed)} of {len(self.checks)} passed"
                         + (f"; FAILED: {', '.join(failed)}" if failed else ""))
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def _shown(url: str) -> str:
    """A location as a person reads it: relative to the working directory when it is inside it."""
    if "://" in url or not url:
        return url
    try:
        return str(Path(url).relative_to(Path.cwd()))
    except ValueError:
        return url


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _root_error(info, redact) -> str:
    """The innermost error of a serialized Dagster error chain, one line (secrets replaced first)."""
    while info is not None and (info.cause or info.context):
        info = info.cause or info.context
    if info is None:
        return "unknown error"
    message = one_line(redact(info.message.split("\n\n")[0]))
    message = re.sub(rf"^(\w+\.)+{re.escape(info.cls_name)}: ", "", message)  # "dagster._core...Error: "
    return message if message.startswith(info.cls_name) else f"{info.cls_name}: {message}"


class BatchPipelineRunner:
    def __init__(self, metadata: ProjectMetadata, instance: dg.DagsterInstance | None = None,
                 reporter: ConsoleReporter | None = None):
        self.metadata = metadata
        self.reporter = reporter or ConsoleReporter()
        self.defs = build_defs_from_metadata(metadata, self.reporter)
        self._instance = instance
        self._checked_abandoned = False

    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = project_instance(self.metadata.project_dir)
        if not self._checked_abandoned:
            self._checked_abandoned = True
            fail_abandoned_runs(self._instance)
        return self._instance

    def job_names(self) -> list[str]:
        return sorted(job.name for job in self.defs.jobs or [])

    def stages(self) -> list[str]:
        """The stages this project has, in pipeline order."""
        jobs = set(self.job_names())
        return [g.name for g in STAGE_GROUPS if g.job_name in jobs]

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
        log_level: str = "CRITICAL",
    ) -> PipelineRunResult:
        """Run ``stage`` (or every stage, in order) for the window; stops at the first failing stage.

        ``log_level`` sets Dagster's console logger: by default it is silent, because the progress bars
        and ``summary()`` already show progress, warnings and failures (each once); INFO or DEBUG bring
        Dagster's own lines back.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
        available = self.stages()
        if stage != "all" and stage not in available:
            raise ValueError(f"stage {stage!r} has no assets in this project (stages: {', '.join(available)})")
        window = RunWindow.resolve(self.metadata.symbols, start_date, end_date, symbols, write_mode)  # fail fast
        options = {
            "start_date": window.start_date.isoformat(), "end_date": window.end_date.isoformat(),
            "symbols": list(symbols) if symbols else None, "write_mode": write_mode,
            "max_concurrency": max_concurrency, "shard_granularity": shard_granularity,
            "batch_days": batch_days, "skip_test": skip_test,
        }
        out = PipelineRunResult(stage)
        began = time.perf_counter()
        for step in available if stage == "all" else [stage]:
            self._run_job(step, options, log_level, out)
            if not out.success:
                break
        out.seconds = time.perf_counter() - began
        return out

    def _job(self, step: str, skip_test: bool) -> dg.JobDefinition:
        """The stage's job; without the dbt tests' checks when they are skipped, so none is planned."""
        job = self.defs.resolve_job_def(stage_group(step).job_name)
        graph = job.asset_layer.asset_graph
        checks = set(graph.asset_check_keys)
        kept = {k for k in checks if not (skip_test and graph.get(k.asset_key).group_name == DBT_GROUP)}
        if kept == checks:
            return job
        return job.get_subset(asset_selection=set(job.asset_layer.selected_asset_keys), asset_check_selection=kept)

    def _run_job(self, step: str, options: dict[str, Any], log_level: str, out: PipelineRunResult) -> None:
        job = self._job(step, options["skip_test"])
        run_config = {**stage_ops_config(((n.name, n.definition) for n in job.graph.nodes), options),
                      "loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
        self.reporter.results.clear()
        try:
            tags = {PROCESS_TAG: process_tag(), **({USER_TAG: user} if (user := local_user()) else {})}
            result = job.execute_in_process(run_config=run_config, instance=self.instance(), raise_on_error=False,
                                            tags=tags)
        finally:
            self.reporter.close()
        report_run(self.instance(), result.run_id, self.metadata.project.telemetry, self.metadata.name)
        out.runs.append((job.name, result.run_id))
        out.results.update(self.reporter.results)
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            key = mat.asset_key.to_user_string()
            out.materializations[key] = AssetOutcome(key, {k: _plain(v) for k, v in mat.metadata.items()})
        for evaluation in result.get_asset_check_evaluations():
            out.checks[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = evaluation.passed
        if not result.success:
            out.success = False
            out.error = self._failure(step, result)

    def _failure(self, step: str, result) -> str:
        for event in result.all_events:
            if not event.is_step_failure:
                continue
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            cause = user.description if user is not None and user.description else _root_error(data.error, self.metadata.redact)
            return self.metadata.redact(f"stage {step}, asset {event.step_key}: {cause}")
        for event in result.all_events:
            if event.is_failure and event.event_specific_data is not None:
                info = getattr(event.event_specific_data, "error", None)
                return self.metadata.redact(f"stage {step}: {_root_error(info, self.metadata.redact) if info else event.message}")
        return f"stage {step}: job {stage_group(step).job_name} failed"


def create_runner(manager: MetadataManager | ProjectMetadata | str | Path = ".",
                  instance: dg.DagsterInstance | None = None, verbose: bool = False) -> BatchPipelineRunner:
    """A runner for a project: pass a metadata manager, loaded metadata, or a project directory."""
    if isinstance(manager, (str, Path)):
        manager = MetadataManager(manager)
    metadata = manager.load_all() if isinstance(manager, MetadataManager) else manager
    return BatchPipelineRunner(metadata, instance, ConsoleReporter(verbose=verbose))
