"""Telemetry: one event per run and per stage (name, user where known, success, duration_ms).

Every event goes into the run's Dagster event log as an engine event whose metadata holds those fields
(``quantflow/telemetry``: ``run`` or ``stage``), so the UI shows it in the run's log and
``instance.all_logs`` finds it. When an OTLP/HTTP endpoint is configured (``project.telemetry.otlp_endpoint``,
or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``), each event is
also an OpenTelemetry span (``quantflow.run`` / ``quantflow.stage``) with the run's start and end times.

Who emits: a stage asset emits its stage's event as it finishes (``call_stage``), wherever it runs. A run's
event comes from ``BatchPipelineRunner`` (``qf run``, notebooks) right after the run, and from the
``quantflow_run_telemetry`` sensors for runs the daemon sees finish (the UI, schedules, sensors,
``dagster job execute`` on a deployment's instance); the run tag ``quantflow/telemetry`` marks a run whose
event is out, so no run is reported twice. Telemetry never fails a run: an unreachable collector costs at
most ``EXPORT_TIMEOUT_S`` and one warning.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

KIND_KEY = "quantflow/telemetry"  # engine-event metadata key, and the run tag of a reported run
USER_TAG = "quantflow/user"
EXPORT_TIMEOUT_S = 5.0
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass(frozen=True)
class TelemetryEvent:
    kind: str  # "run" | "stage"
    name: str  # the job (run) or the stage asset (stage)
    success: bool
    duration_ms: int
    user: str | None
    run_id: str
    start_time_s: float  # epoch seconds
    stage: str | None = None  # the stage group of a stage event
    project: str | None = None

    def message(self) -> str:
        outcome = "succeeded" if self.success else "failed"
        return f"telemetry: {self.kind} {self.name} {outcome} in {self.duration_ms} ms"

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def local_user() -> str | None:
    """The OS user running ``qf run`` or a notebook: who launched the run, as far as QuantFlow can tell."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def user_of(tags: dict[str, str]) -> str | None:
    """Who started a run: the launching user (``quantflow/user``), else the schedule or sensor."""
    if tags.get(USER_TAG):
        return tags[USER_TAG]
    for tag, what in (("dagster/schedule_name", "schedule"), ("dagster/sensor_name", "sensor")):
        if tags.get(tag):
            return f"{what}:{tags[tag]}"
    return None


def otlp_endpoint(configured: str | None) -> str | None:
    """The traces URL: the project's endpoint (``/v1/traces`` added), else the standard variables."""
    if configured:
        return configured.rstrip("/") + "/v1/traces"
    if os.environ.get(_ENDPOINT_VARS[0]):
        return os.environ[_ENDPOINT_VARS[0]]
    if os.environ.get(_ENDPOINT_VARS[1]):
        return os.environ[_ENDPOINT_VARS[1]].rstrip("/") + "/v1/traces"
    return None


class _SpanSender:
    """One OTLP exporter per (endpoint, service) in a process; spans are sent as each event happens."""

    _lock = threading.Lock()
    _senders: dict[tuple[str, str], _SpanSender] = {}

    def __init__(self, endpoint: str, service_name: str):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                         timeout=EXPORT_TIMEOUT_S)))
        self.tracer = provider.get_tracer("quantflow")
        self.warned = False

    @classmethod
    def get(cls, endpoint: str, service_name: str) -> _SpanSender:
        with cls._lock:
            key = (endpoint, service_name)
            if key not in cls._senders:
                cls._senders[key] = _SpanSender(endpoint, service_name)
            return cls._senders[key]

    def send(self, event: TelemetryEvent) -> None:
        from opentelemetry.trace import Status, StatusCode

        start_ns = int(event.start_time_s * 1e9)
        attributes = {f"quantflow.{k}": v for k, v in event.fields().items() if k != "start_time_s"}
        span = self.tracer.start_span(f"quantflow.{event.kind}", start_time=start_ns, attributes=attributes)
        span.set_status(Status(StatusCode.OK if event.success else StatusCode.ERROR))
        span.end(end_time=start_ns + event.duration_ms * 1_000_000)


def emit(event: TelemetryEvent, instance, run, config) -> None:
    """Record ``event`` in ``run``'s event log and send it to the OTLP endpoint when there is one.
    ``config``: the project's ``TelemetryConfig``."""
    if not config.enabled:
        return
    from dagster._core.events import EngineEventData

    metadata = {KIND_KEY: event.kind, **{k: v for k, v in event.fields().items() if k != "kind"}}
    instance.report_engine_event(event.message(), run, EngineEventData(metadata=metadata))
    endpoint = otlp_endpoint(config.otlp_endpoint)
    if endpoint is None:
        return
    sender = _SpanSender.get(endpoint, config.service_name)
    began = time.monotonic()
    try:
        sender.send(event)
    except Exception as exc:  # never fail a run for telemetry
        if not sender.warned:
            sender.warned = True
            log.warning("telemetry: could not send to the OTLP endpoint (%s); runs go on without it",
                        type(exc).__name__)
    if time.monotonic() - began > EXPORT_TIMEOUT_S and not sender.warned:
        sender.warned = True
        log.warning("telemetry: the OTLP endpoint did not answer within %.0f s", EXPORT_TIMEOUT_S)


def run_event(instance, run, project: str | None = None) -> TelemetryEvent | None:
    """The run's event from its stored start and end times; None while it has not finished."""
    import dagster as dg

    stats = instance.get_run_stats(run.run_id)
    if stats.end_time is None:
        return None
    start = stats.start_time or stats.launch_time or stats.end_time
    return TelemetryEvent(
        kind="run", name=run.job_name, success=run.status == dg.DagsterRunStatus.SUCCESS,
        duration_ms=int(round((stats.end_time - start) * 1000)), user=user_of(run.tags), run_id=run.run_id,
        start_time_s=start, project=project)


def report_run(instance, run_id: str, config, project: str | None = None) -> bool:
    """Emit a finished run's event unless it is out already; True when this call emitted it."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.tags.get(KIND_KEY) == "sent" or not config.enabled:
        return False
    event = run_event(instance, run, project)
    if event is None:
        return False
    instance.add_run_tags(run_id, {KIND_KEY: "sent"})
    emit(event, instance, run, config)
    return True
