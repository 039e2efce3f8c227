"""The ``project.schedules``, ``project.sensors`` and ``project.telemetry`` sections: how the project runs
unattended (the Dagster daemon) and where it reports what ran."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from quantflow.metadata.schema.base import NAME_RE, MetadataModel, TimeZoneName


class RunOptions(MetadataModel):
    """Options every stage asset of the run takes that has them (as ``qf run`` takes them); the window
    itself comes from the schedule tick or the data that landed."""

    symbols: list[str] | None = Field(None, description="symbols to process; default the project's")
    write_mode: Literal["skip_if_exists", "overwrite", "append"] | None = None
    max_concurrency: int | None = Field(None, ge=1, description="state engine: parallel workers")
    shard_granularity: Literal["daily", "weekly", "monthly"] | None = None
    batch_days: int | None = Field(None, ge=1, description="dbt: split the window into runs of N days")
    skip_test: bool | None = Field(None, description="dbt: false runs the dbt tests as asset checks")

    def options(self) -> dict:
        return self.model_dump(exclude_none=True, exclude=set(self.model_extra or ()))


class ScheduleConfig(MetadataModel):
    """A cron schedule of a job. Each tick runs the window of ``days`` calendar days ending ``lag_days``
    before the tick's date (in ``timezone``): ``days: 1, lag_days: 0`` at 18:30 New York time is the day
    that just closed, processed incrementally (``skip_if_exists`` keeps what is stored)."""

    name: str = Field(pattern=NAME_RE)
    job: str = Field("quantflow_pipeline", description="quantflow_pipeline or quantflow_<stage>")
    cron: str = Field(description="cron expression, e.g. '30 18 * * 1-5' (weekdays at 18:30)")
    timezone: TimeZoneName = "UTC"
    days: int = Field(1, ge=1, description="calendar days in each run's window")
    lag_days: int = Field(0, ge=0, description="the window ends this many days before the tick's date")
    running: bool = Field(False, description="start running when first deployed (else switch it on in the UI)")
    run_config: RunOptions = RunOptions()

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(cron) or len(cron.split()) != 5:
            raise ValueError(f"{cron!r} is not a five-field cron expression (minute hour day month weekday)")
        return cron


class SensorConfig(MetadataModel):
    """``new_raw_data``: watches the raw lake tables of the enabled feeds and, when partitions are added or
    rewritten (by the ingest job, another process or a loader outside QuantFlow), runs the job's stages
    after ingest over the dates that changed."""

    name: str = Field(pattern=NAME_RE)
    kind: Literal["new_raw_data"] = "new_raw_data"
    job: str = Field("quantflow_pipeline", description="the job whose stages after ingest run")
    minimum_interval_s: int = Field(60, ge=5, description="seconds between two looks at the lake")
    running: bool = Field(False, description="start running when first deployed (else switch it on in the UI)")
    run_config: RunOptions = RunOptions(write_mode="overwrite")


class TelemetryConfig(MetadataModel):
    """One event per run and per stage (name, user where known, success, duration) in the Dagster event log,
    and as OpenTelemetry spans to an OTLP/HTTP endpoint when one is set here or in the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables."""

    enabled: bool = True
    otlp_endpoint: str | None = Field(None, description="e.g. http://otel-collector:4318 (OTLP over HTTP)")
    service_name: str = "quantflow"

    @field_validator("otlp_endpoint")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r}: the OTLP endpoint is an http:// or https:// URL (OTLP over HTTP)")
        return url or None

