"""Group ``feature_engine``: the asset ``ft_features``, a thin adapter over ``quantflow.feature_engine.runner.run``.

It depends on the bar table its features read, on ``cdm_trade_enriched``/``cdm_quotes`` when microstructure
features need them, and on ``cdm_labels`` (the run reports how many labelled events have all their
features). An asset check fails when a feature is entirely nan or constant over the window.
"""

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import FeatureEngineRunConfig
from quantflow.pipeline.dagster.metadata import stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.storage.tables import FEATURES_TABLE, LABELS_TABLE

GROUP = "feature_engine"
CHECK = "features_vary"


def build_feature_engine_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    cfg = md.project.feature_engine
    if cfg is None:
        return []
    deps = [cfg.input, *cfg.tick_tables(), *([LABELS_TABLE] if md.project.label_engine is not None else [])]
    names = ", ".join([*(["alpha158 preset"] if cfg.preset else []), *(f"{f.name} ({f.kind})" for f in cfg.features)])

    @dg.asset(name=FEATURES_TABLE, group_name=GROUP, deps=[dg.AssetKey(t) for t in deps],
              kinds={"numba", "polars", "parquet"}, required_resource_keys={REPORTER_KEY},
              check_specs=[dg.AssetCheckSpec(CHECK, asset=FEATURES_TABLE, description="no feature is entirely "
                                             "nan, or constant over the window's bar times (calendar fields "
                                             "excepted)")],
              description=f"Features per bar of {cfg.input} (lake table ft_features): {names}.")
    def ft_features(context: dg.AssetExecutionContext, config: FeatureEngineRunConfig):
        # at run time: the definitions stay light
        from quantflow.feature_engine import runner as feature_runner

        window = config.window(md.symbols)
        result = call_stage(context, md, FEATURES_TABLE, lambda progress: feature_runner.run(md, window,
                                                                                             progress=progress))
        yield dg.MaterializeResult(
            metadata=stage_metadata(result, [FEATURES_TABLE]),
            check_results=[dg.AssetCheckResult(
                check_name=CHECK, passed=result.rows > 0 and not result.constant,
                metadata={"entirely_nan_or_constant": ", ".join(result.constant) or "-", "rows": result.rows})],
        )

    return [ft_features]
