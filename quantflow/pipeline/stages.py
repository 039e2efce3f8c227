"""The one registry of stage groups, read by the Dagster definitions, ``BatchPipelineRunner`` and the CLI.

A stage group is a stage package (``quantflow/<name>/``, whose ``runner.run`` does the work), the Dagster
asset group of the same name, its run-configuration class and its job ``quantflow_<name>``. Adding a
stage is one package plus one entry here. Two groups may share a package: ``ml`` and ``dl`` are both
``quantflow.models`` (one runner, one asset per configured model, grouped by the model's kind). Like the feed kinds, entries name their Dagster pieces as
``"module:attribute"`` and are imported on first use, so ``qf validate`` or ``qf --help`` do not pay for
importing Dagster and dagster-dbt.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageGroup:
    name: str  # stage package = Dagster group name = job suffix
    description: str
    assets: str  # "module:function": metadata -> list of AssetsDefinition / AssetSpec
    config: str  # "module:Class": the assets' Dagster run configuration
    resources: str | None = None  # "module:function": metadata -> {resource key: resource}
    package: str | None = None  # the stage package when it is not ``name``

    @property
    def stage_package(self) -> str:
        return self.package or self.name

    @property
    def job_name(self) -> str:
        return f"quantflow_{self.name}"

    def build_assets(self, md) -> list:
        return _load(self.assets)(md)

    def build_resources(self, md) -> dict[str, Any]:
        return _load(self.resources)(md) if self.resources else {}

    @property
    def config_class(self) -> type:
        return _load(self.config)


_ASSETS = "quantflow.pipeline.dagster.assets"
_CONFIG = "quantflow.pipeline.config"

STAGE_GROUPS: tuple[StageGroup, ...] = (
    StageGroup("ingest", "Feeds -> raw lake tables.",
               f"{_ASSETS}.ingest:build_ingest_assets", f"{_CONFIG}:IngestRunConfig"),
    StageGroup("transform", "Raw tables -> the common data model, with dbt.",
               f"{_ASSETS}.transform:build_transform_assets", f"{_CONFIG}:TransformRunConfig",
               f"{_ASSETS}.transform:build_transform_resources"),
    StageGroup("state_engine", "CDM trades and quotes -> enriched trades, order-book snapshots, bars.",
               f"{_ASSETS}.state_engine:build_state_engine_assets", f"{_CONFIG}:StateEngineRunConfig"),
    StageGroup("label_engine", "Bar tables -> labels and sample weights (cdm_labels).",
               f"{_ASSETS}.label_engine:build_label_engine_assets", f"{_CONFIG}:LabelEngineRunConfig"),
    StageGroup("feature_engine", "Bar tables -> features (ft_features): TA-Lib, rolling, cross-sectional, "
               "microstructure, Alpha158.",
               f"{_ASSETS}.feature_engine:build_feature_engine_assets", f"{_CONFIG}:FeatureEngineRunConfig"),
    StageGroup("ml", "Features + labels -> out-of-sample predictions of scikit-learn models (pred_<model>).",
               f"{_ASSETS}.models:build_ml_assets", f"{_CONFIG}:ModelRunConfig", package="models"),
    StageGroup("dl", "Features + labels -> out-of-sample predictions of PyTorch models (pred_<model>).",
               f"{_ASSETS}.models:build_dl_assets", f"{_CONFIG}:ModelRunConfig", package="models"),
    StageGroup("validation", "Each model's track record judged: CV folds, PSR, deflated Sharpe, PBO, leakage "
               "(overfitting gates).",
               f"{_ASSETS}.validation:build_validation_assets", f"{_CONFIG}:ValidationRunConfig"),
    StageGroup("portfolio", "A model's predictions -> target weights per rebalance date (riskfolio-lib; pf_weights).",
               f"{_ASSETS}.portfolio:build_portfolio_assets", f"{_CONFIG}:PortfolioRunConfig"),
    StageGroup("backtest", "Target weights -> a vectorbt backtest against equal-weight and buy-and-hold "
               "benchmarks, metrics and a parameter sweep (trading_report).",
               f"{_ASSETS}.portfolio:build_backtest_assets", f"{_CONFIG}:BacktestRunConfig"),
    StageGroup("reports", "The backtested strategy -> plot, stress-test and risk reports (HTML, PNG, CSV).",
               f"{_ASSETS}.portfolio:build_reports_assets", f"{_CONFIG}:ReportsRunConfig"),
)
STAGE_NAMES: tuple[str, ...] = tuple(g.name for g in STAGE_GROUPS)
PIPELINE_JOB = "quantflow_pipeline"


def stage_group(name: str) -> StageGroup:
    for group in STAGE_GROUPS:
        if group.name == name:
            return group
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
