"""How a stage asset runs its stage: progress, the stage's warnings, failures in one line, results.

``call_stage`` is the only way an asset calls ``quantflow.<stage>.runner.run``. It hands the runner a
``Progress`` from the run's ``StageReporter`` (resource ``quantflow_reporter``), logs the result's
warnings once, turns any exception into a ``dg.Failure`` whose description is the root cause in one line,
and gives the result object to the reporter. Every message and traceback it stores has the project's
secrets replaced by their ``${VAR}`` references.

The default reporter (the UI, the daemon, ``dagster job execute``) writes progress as a few lines in the
run's log; ``BatchPipelineRunner`` binds its own, which draws terminal progress bars and keeps the
result objects for its summary.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

from quantflow.compute.stage import Progress, StageError, StageResult, failure_line
from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.instance import fail_abandoned_runs, tag_run_process
from quantflow.pipeline.telemetry import TelemetryEvent, emit, user_of

REPORTER_KEY = "quantflow_reporter"


class LogProgress(Progress):
    """Progress as lines in the run's log: at most one per 10% or 30 s, plus details at debug level."""

    def __init__(self, log: Any, label: str, every_s: float = 30.0):
        self.log, self.label, self.every_s = log, label, every_s
        self.total: int | None = None
        self.unit = ""
        self.done = self.rows = 0
        self.began = self.last = time.monotonic()
        self.next_pct = 10

    def begin(self, total: int | None, unit: str, label: str | None = None) -> None:
        self.total, self.unit, self.done, self.rows = total, unit, 0, 0
        self.label = label or self.label
        self.began = self.last = time.monotonic()
        self.next_pct = 10

    def advance(self, n: int = 1, rows: int = 0) -> None:
        self.done += n
        self.rows += rows
        now = time.monotonic()
        pct = 100 * self.done // self.total if self.total else 0
        if n and ((self.total and pct >= self.next_pct) or now - self.last >= self.every_s):
            self.last = now
            self.next_pct = (pct // 10 + 1) * 10
            of = f"/{self.total}" if self.total else ""
            rate = self.rows / (now - self.began) if now > self.began else 0.0
            rows = f", {self.rows:,} rows ({rate:,.0f}/s)" if self.rows else ""
            self.log.info(f"{self.label}: {self.done}{of} {self.unit}{rows}")

    def detail(self, message: str) -> None:
        self.log.debug(message)

    def note(self, message: str) -> None:
        self.log.info(f"{self.label}: {message}")


class StageReporter:
    """What a stage asset reports to whoever launched its run (see the module docstring)."""

    def progress(self, log: Any, label: str) -> Progress:
        return LogProgress(log, label)

    def record(self, label: str, result: StageResult) -> None:
        """A stage finished (``label``: the asset or multi-asset that ran it)."""

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Around tools that print to stdout (dbt through dagster-dbt): by default, let them."""
        yield


def reporter_resource(reporter: StageReporter | None = None) -> dg.ResourceDefinition:
    return dg.ResourceDefinition.hardcoded_resource(reporter or StageReporter(),
                                                    "Where stage assets report progress and results.")


class StageFailed(dg.Failure):
    """A stage failed; ``description`` is the root cause in one line, ``partial`` what the stage had done."""

    def __init__(self, description: str, traceback_text: str, partial: StageResult | None):
        super().__init__(description=description, metadata={"traceback": dg.MetadataValue.text(traceback_text)},
                         allow_retries=False)
        self.partial = partial


def reporter_of(context: dg.AssetExecutionContext) -> StageReporter:
    return getattr(context.resources, REPORTER_KEY)


def call_stage(context: dg.AssetExecutionContext, md: ProjectMetadata, label: str,
               call: Callable[[Progress], StageResult]) -> StageResult:
    """Run ``call(progress)`` (a stage runner) for the asset ``label``; see the module docstring."""
    tag_run_process(context.instance, context.run)
    fail_abandoned_runs(context.instance)  # a run killed earlier ends as failed when the next one starts
    reporter = reporter_of(context)
    began, began_s = time.monotonic(), time.time()
    try:
        result = call(reporter.progress(context.log, label))
    except Exception as exc:
        _stage_telemetry(context, md, label, False, began, began_s)
        line = failure_line(exc, md.redact)
        text = md.redact("".join(traceback.format_exception(exc)))
        partial = exc.result if isinstance(exc, StageError) else None
        raise StageFailed(line, text, partial) from None
    _stage_telemetry(context, md, label, True, began, began_s)
    for warning in result.warnings:
        context.log.warning(md.redact(warning))
    reporter.record(label, result)
    return result


def _stage_telemetry(context: dg.AssetExecutionContext, md: ProjectMetadata, label: str, success: bool,
                     began: float, began_s: float) -> None:
    groups = set(context.assets_def.group_names_by_key.values())
    event = TelemetryEvent(kind="stage", name=label, success=success,
                           duration_ms=int(round((time.monotonic() - began) * 1000)),
                           user=user_of(context.run.tags), run_id=context.run.run_id, start_time_s=began_s,
                           stage=min(groups) if groups else None, project=md.name)
    emit(event, context.instance, context.run, md.project.telemetry)
