"""``project.yaml``: the project (name, symbols), where its data lives, and one section per stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from quantflow.metadata.schema.base import NAME_RE, SYMBOL_RE, MetadataModel, repeated
from quantflow.metadata.schema.feature_engine import FeatureDAG, FeatureEngineConfig
from quantflow.metadata.schema.ingest import IngestConfig
from quantflow.metadata.schema.label_engine import LabelEngineConfig
from quantflow.metadata.schema.models import ModelConfig, ValidationConfig
from quantflow.metadata.schema.operations import ScheduleConfig, SensorConfig, TelemetryConfig
from quantflow.metadata.schema.portfolio import BacktestConfig, PortfolioConfig, ReportsConfig
from quantflow.metadata.schema.state_engine import StateEngineConfig
from quantflow.storage.writes import LakeCompression


class DataProcessingConfig(MetadataModel):
    historical_data_engine: Literal["duckdb", "postgres"] = "duckdb"


class StorageConfig(MetadataModel):
    """Roots of the lake (Parquet tables) and the blob store (artifacts); local folders or ``s3://``.
    ``compression``: the codec of the lake's Parquet files (``storage/lake.py`` says why snappy by default)."""

    lake_root: str = ".quantflow/lake"
    blob_root: str = ".quantflow/artifacts"
    warehouse_path: str = ".quantflow/warehouse.duckdb"
    compression: LakeCompression = "snappy"


class ProjectConfig(MetadataModel):
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    symbols: list[str] = Field(min_length=1)
    ingest: IngestConfig = IngestConfig()
    data_processing: DataProcessingConfig = DataProcessingConfig()
    storage: StorageConfig = StorageConfig()
    state_engine: StateEngineConfig | None = None
    label_engine: LabelEngineConfig | None = None
    feature_engine: FeatureEngineConfig | None = None
    models: list[ModelConfig] | None = None
    validation: ValidationConfig = ValidationConfig()
    portfolio: PortfolioConfig | None = None
    backtest: BacktestConfig | None = None
    reports: ReportsConfig | None = None
    schedules: list[ScheduleConfig] = []
    sensors: list[SensorConfig] = []
    telemetry: TelemetryConfig = TelemetryConfig()

    def configured_stages(self) -> list[str]:
        """The stages this project runs, in pipeline order (each is a job ``quantflow_<stage>``)."""
        kinds = {m.kind for m in self.models or []}
        present = {"ingest": True, "transform": True, "state_engine": self.state_engine is not None,
                   "label_engine": self.label_engine is not None, "feature_engine": self.feature_engine is not None,
                   "ml": "ml" in kinds, "dl": "dl" in kinds, "validation": bool(self.models),
                   "portfolio": self.portfolio is not None, "backtest": self.backtest is not None,
                   "reports": self.reports is not None}
        return [stage for stage, configured in present.items() if configured]

    def consistency_issues(self) -> list[tuple[tuple, str]]:
        """Problems that span sections (field path, message); each section is valid on its own."""
        issues: list[tuple[tuple, str]] = []
        se = self.state_engine
        if se is not None and se.lob.interval is not None and se.lob.source == "messages":
            lob = ("project", "state_engine", "lob")
            producers = [f for f in self.ingest.enabled_feeds if "messages" in f.raw_kinds()]
            if not producers:
                issues.append((lob + ("source",), "the book is rebuilt from order messages, but no enabled feed "
                               "produces them (a lobster feed with order_messages: true does); use source: quotes"))
            for feed in producers:
                level = feed.params.level if feed.kind == "lobster" else None
                if level is not None and se.lob.depth > level:
                    issues.append((lob + ("depth",), f"depth {se.lob.depth} is deeper than the level-{level} files "
                                   f"of feed {feed.name!r}: the levels behind {level} are not in its messages; "
                                   f"use depth <= {level}"))
        bar_tables = ["cdm_bars_daily", *([b.table for b in se.bars] if se is not None else [])]
        if self.label_engine is not None:
            for i, label_set in enumerate(self.label_engine.labels):
                if label_set.input not in bar_tables:
                    issues.append((("project", "label_engine", "labels", i, "input"),
                                   f"label set {label_set.name!r} reads {label_set.input}, which no stage writes "
                                   f"(known: {', '.join(bar_tables)})"))
        fe = self.feature_engine
        if fe is not None:
            where = ("project", "feature_engine")
            if fe.input not in bar_tables:
                issues.append((where + ("input",), f"the feature engine reads {fe.input}, which no stage writes "
                               f"(known: {', '.join(bar_tables)})"))
            issues += [(where + loc, message) for loc, message in FeatureDAG.issues(fe, self.symbols)]
            if se is None:
                for i, f in enumerate(fe.features):
                    if f.kind == "microstructure":
                        issues.append((where + ("features", i, "kind"), f"feature {f.name!r}: microstructure "
                                       "features need the state engine's cdm_trade_enriched (no state_engine)"))
        issues += self._model_issues()
        issues += self._portfolio_issues()
        issues += self._operations_issues()
        return issues

    def _operations_issues(self) -> list[tuple[tuple, str]]:
        issues: list[tuple[tuple, str]] = []
        jobs = ["quantflow_pipeline", *(f"quantflow_{stage}" for stage in self.configured_stages())]
        names = [s.name for s in self.schedules] + [s.name for s in self.sensors]
        for section, entries in (("schedules", self.schedules), ("sensors", self.sensors)):
            for i, entry in enumerate(entries):
                where = ("project", section, i)
                if entry.job not in jobs:
                    issues.append((where + ("job",), f"{entry.name!r} runs job {entry.job!r}, which this project "
                                   f"does not have (jobs: {', '.join(jobs)})"))
                if names.count(entry.name) > 1:
                    issues.append((where + ("name",), f"schedule and sensor names must be distinct; "
                                   f"{entry.name!r} is used twice"))
                unknown = sorted(set(entry.run_config.symbols or []) - set(self.symbols))
                if unknown:
                    issues.append((where + ("run_config", "symbols"), f"{', '.join(unknown)} not in "
                                   "project.symbols"))
            if section == "sensors" and entries and not self.ingest.enabled_feeds:
                issues.append((("project", "sensors"), "the new_raw_data sensors watch the raw tables of the "
                               "enabled feeds, and no feed is enabled"))
        return issues

    def _portfolio_issues(self) -> list[tuple[tuple, str]]:
        issues: list[tuple[tuple, str]] = []
        models = {m.name: m for m in self.models or []}
        pf = self.portfolio
        if pf is not None:
            label_sets = {s.name: s for s in (self.label_engine.labels if self.label_engine else [])}
            model = models.get(pf.model)
            if model is None:
                issues.append((("project", "portfolio", "model"), f"the portfolio takes the predictions of model "
                               f"{pf.model!r}, which project.models does not define (known: {', '.join(models) or 'none'})"))
            elif getattr(label_sets.get(model.label_set), "meta_labeling", False):
                issues.append((("project", "portfolio", "model"), f"model {pf.model!r} learns meta-labels (did the "
                               "primary bet win): its predictions carry no side to hold; use a model of a "
                               "fixed_horizon, trend_scanning or side-less triple_barrier label set"))
        if self.backtest is not None and pf is None:
            issues.append((("project", "backtest"), "the backtest trades the portfolio's weights: configure "
                           "project.portfolio"))
        if self.reports is not None and (pf is None or self.backtest is None):
            issues.append((("project", "reports"), "the reports read the portfolio and its backtest: configure "
                           "project.portfolio and project.backtest"))
        return issues

    def _model_issues(self) -> list[tuple[tuple, str]]:
        from fnmatch import fnmatchcase

        issues: list[tuple[tuple, str]] = []
        label_sets = {s.name: s for s in (self.label_engine.labels if self.label_engine else [])}
        try:  # a broken feature DAG is reported where it is; its models' feature names are then not checked
            features = FeatureDAG.compile(self.feature_engine, self.symbols).outputs if self.feature_engine else None
        except ValueError:
            features = None
        for i, m in enumerate(self.models or []):
            where = ("project", "models", i)
            if m.label_set not in label_sets:
                issues.append((where + ("label_set",), f"model {m.name!r} learns label set {m.label_set!r}, which "
                               f"project.label_engine does not define (known: {', '.join(label_sets) or 'none'})"))
            elif m.target == "t_value" and label_sets[m.label_set].method != "trend_scanning":
                issues.append((where + ("target",), f"model {m.name!r}: only trend_scanning labels have a t_value"))
            if self.feature_engine is None:
                issues.append((where, f"model {m.name!r} needs features: configure project.feature_engine"))
                continue
            for j, pattern in enumerate(m.features or []):
                if features is not None and not any(fnmatchcase(f, pattern) for f in features):
                    issues.append((where + ("features", j), f"model {m.name!r}: {pattern!r} matches no feature of "
                                   f"ft_features"))
        return issues

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, models: list[ModelConfig] | None) -> list[ModelConfig] | None:
        twice = repeated([m.name for m in models or []])
        if twice:
            raise ValueError(f"model names must be distinct; repeated: {', '.join(twice)}")
        return models

    @field_validator("symbols")
    @classmethod
    def _valid_symbols(cls, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if not SYMBOL_RE.match(s)]
        if bad:
            raise ValueError(
                f"symbols must be upper-case tickers (A-Z, 0-9, '.', '-', '_'); invalid: {', '.join(map(repr, bad))}"
            )
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be unique")
        return symbols


class ProjectFile(MetadataModel):
    """``project.yaml``: the committed description of the research project."""

    project: ProjectConfig
