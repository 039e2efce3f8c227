"""Telemetry: one event per run and per stage in the Dagster event log, and as OTLP spans to a collector
(here an in-process OTLP/HTTP receiver on 127.0.0.1)."""

from __future__ import annotations

import http.server
import threading
import time

import dagster as dg
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline import create_runner
from quantflow.pipeline.telemetry import KIND_KEY, report_run
from tests.conftest import SMALL_PROJECT_YAML, write_project


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: keeps the spans of every request it receives."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans, paths = self.spans, self.paths = [], []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                paths.append(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            spans.append((service, span))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _attributes(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else (
            v.bool_value if v.HasField("bool_value") else v.int_value)
    return out


def _telemetry_events(instance, run_id) -> list[dict]:
    events = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data
        metadata = {k: getattr(v, "value", v) for k, v in (data.metadata or {}).items()}
        if KIND_KEY in metadata:
            events.append({**metadata, "message": record.dagster_event.message})
    return events


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


def test_runs_and_stages_emit_one_event_each_to_the_event_log_and_the_collector(tmp_path, receiver):
    yaml = SMALL_PROJECT_YAML + f"""\
  telemetry: {{otlp_endpoint: "{receiver.url}", service_name: qf_test}}
"""
    root = write_project(tmp_path / "p", yaml)
    instance = dg.DagsterInstance.ephemeral()
    runner = create_runner(get_metadata_manager(root), instance=instance)
    result = runner.run(stage="all", start_date="2024-01-02", end_date="2024-01-02")
    assert result.success, result.error
    for job, run_id in result.runs:
        events = _telemetry_events(instance, run_id)
        assert sorted(e[KIND_KEY] for e in events) == ["run", "stage"], events
        run_event = next(e for e in events if e[KIND_KEY] == "run")
        assert run_event["name"] == job and run_event["success"] is True and run_event["user"]
        assert run_event["duration_ms"] >= next(e for e in events if e[KIND_KEY] == "stage")["duration_ms"]
        assert run_event["message"].startswith(f"telemetry: run {job} succeeded in ")
        assert not report_run(instance, run_id, runner.metadata.project.telemetry)  # never twice
    assert set(receiver.paths) == {"/v1/traces"}
    spans = [(service, span.name, _attributes(span), span) for service, span in receiver.spans]
    assert len(spans) == 2 * len(result.runs) and {s[0] for s in spans} == {"qf_test"}
    runs = [s for s in spans if s[1] == "quantflow.run"]
    assert sorted(a["quantflow.name"] for _, _, a, _ in runs) == sorted(job for job, _ in result.runs)
    stage = next(a for _, name, a, _ in spans if name == "quantflow.stage" and a["quantflow.stage"] == "ingest")
    assert stage["quantflow.success"] is True and stage["quantflow.project"] == "test_project"
    for _, _, attributes, span in spans:  # the span lasts what the event says
        assert abs((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
                   - attributes["quantflow.duration_ms"]) <= 1


def test_a_failed_stage_is_reported_failed(tmp_path, receiver, monkeypatch):
    root = write_project(tmp_path / "p", SMALL_PROJECT_YAML)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)  # the standard variable

    def feed_down(*args, **kwargs):
        raise ConnectionError("the feed is down")

    monkeypatch.setattr("quantflow.ingest.runner.run", feed_down)
    instance = dg.DagsterInstance.ephemeral()
    runner = create_runner(get_metadata_manager(root), instance=instance)
    result = runner.run(stage="ingest", start_date="2024-01-02", end_date="2024-01-02")
    assert not result.success and "the feed is down" in result.error
    events = _telemetry_events(instance, result.run_id)
    assert sorted((e[KIND_KEY], e["success"]) for e in events) == [("run", False), ("stage", False)]
    assert sorted((span.name, span.status.code) for _, span in receiver.spans) == [
        ("quantflow.run", 2), ("quantflow.stage", 2)]  # STATUS_CODE_ERROR


def test_an_unreachable_collector_costs_seconds_not_the_run(tmp_path, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yaml = SMALL_PROJECT_YAML + f"""\
  telemetry: {{otlp_endpoint: "http://127.0.0.1:{port}"}}
"""
    root = write_project(tmp_path / "p", yaml)
    instance = dg.DagsterInstance.ephemeral()
    runner = create_runner(get_metadata_manager(root), instance=instance)
    began = time.monotonic()
    result = runner.run(stage="ingest", start_date="2024-01-02", end_date="2024-01-02")
    assert result.success
    assert time.monotonic() - began < 30
    assert len(_telemetry_events(instance, result.run_id)) == 2  # the event log has them all the same


def test_telemetry_can_be_switched_off(tmp_path):
    root = write_project(tmp_path / "p", SMALL_PROJECT_YAML + "  telemetry: {enabled: false}\n")
    instance = dg.DagsterInstance.ephemeral()
    result = create_runner(get_metadata_manager(root), instance=instance).run(
        stage="ingest", start_date="2024-01-02", end_date="2024-01-02")
    assert result.success and _telemetry_events(instance, result.run_id) == []
