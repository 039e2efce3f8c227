"""Group ``validation``: one asset per model (``validation_<model>``), a thin adapter over
``quantflow.validation.runner.run``, with the overfitting gates as asset checks: PBO above ``pbo_max``,
DSR below ``dsr_min`` or a leaking prediction fail them; with ``project.validation.blocking`` (the default)
a failed gate stops the assets downstream of the model's validation."""

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import ValidationRunConfig
from quantflow.pipeline.dagster.metadata import check_results, stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.storage.tables import predictions_table

GROUP = "validation"


def _validation_asset(md: ProjectMetadata, cfg) -> dg.AssetsDefinition:
    name = f"validation_{cfg.name}"
    gates = md.project.validation
    checks = [
        dg.AssetCheckSpec("pbo_gate", asset=name, blocking=gates.blocking,
                          description=f"probability of backtest overfitting (CSCV) <= {gates.pbo_max}"),
        dg.AssetCheckSpec("dsr_gate", asset=name, blocking=gates.blocking,
                          description=f"deflated Sharpe ratio >= {gates.dsr_min}"),
        dg.AssetCheckSpec("no_leakage", asset=name, blocking=gates.blocking,
                          description="no prediction was made by a fold trained on a label that ended after "
                                      "the prediction's event started"),
    ]

    @dg.asset(name=name, group_name=GROUP, deps=[dg.AssetKey(predictions_table(cfg.name))], kinds={"scipy"},
              required_resource_keys={REPORTER_KEY}, check_specs=checks,
              description=f"Validation of model {cfg.name}: CV scores per fold, PSR, deflated Sharpe ratio, "
                          "PBO, minimum track record length, leakage.")
    def validation_asset(context: dg.AssetExecutionContext, config: ValidationRunConfig):
        from quantflow.validation import runner as validation_runner

        window = config.window(md.symbols)
        result = call_stage(context, md, name, lambda progress: validation_runner.run(
            md, window, progress=progress, model=cfg.name))
        return dg.MaterializeResult(metadata=stage_metadata(result, []),
                                    check_results=check_results(result, dg.AssetKey(name)))

    return validation_asset


def build_validation_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    return [_validation_asset(md, m) for m in md.project.models or []]
