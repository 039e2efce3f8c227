"""Groups ``ml`` and ``dl``: one asset per configured model (``pred_<model>``, its out-of-sample
predictions), a thin adapter over ``quantflow.models.runner.run``. Each depends on ``ft_features`` and
``cdm_labels``; its materialization links the fitted model, its card, the trials and the leaderboard."""

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import ModelRunConfig
from quantflow.pipeline.dagster.metadata import frame_preview, stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.storage.tables import FEATURES_TABLE, LABELS_TABLE, predictions_table

KINDS = {"ml": {"scikit-learn", "parquet"}, "dl": {"pytorch", "parquet"}}


def _model_asset(md: ProjectMetadata, cfg) -> dg.AssetsDefinition:
    table = predictions_table(cfg.name)
    what = cfg.estimator_path if cfg.kind == "ml" else f"{cfg.network} network"
    search = " tuned by Optuna" if cfg.tuning else " chosen by a sweep" if cfg.sweep else ""

    @dg.asset(name=table, group_name=cfg.kind, deps=[dg.AssetKey(FEATURES_TABLE), dg.AssetKey(LABELS_TABLE)],
              kinds=KINDS[cfg.kind], required_resource_keys={REPORTER_KEY},
              description=f"Model {cfg.name}: {what}{search} on label set {cfg.label_set} ({cfg.task}); "
                          f"walk-forward out-of-sample predictions (lake table {table}).")
    def model_asset(context: dg.AssetExecutionContext, config: ModelRunConfig):
        from quantflow.models import runner as model_runner  # at run time: sklearn and torch stay out

        window = config.window(md.symbols)
        result = call_stage(context, md, table, lambda progress: model_runner.run(md, window, progress=progress,
                                                                                 model=cfg.name))
        meta = stage_metadata(result, [table])
        if result.leaderboard is not None:
            meta["leaderboard"] = frame_preview(result.leaderboard, rows=10)
        return dg.MaterializeResult(metadata=meta)

    return model_asset


def _build(md: ProjectMetadata, kind: str) -> list[dg.AssetsDefinition]:
    return [_model_asset(md, m) for m in md.project.models or [] if m.kind == kind]


def build_ml_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    return _build(md, "ml")


def build_dl_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    return _build(md, "dl")
