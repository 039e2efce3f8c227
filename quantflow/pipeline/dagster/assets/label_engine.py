"""Group ``label_engine``: the asset ``cdm_labels``, a thin adapter over ``quantflow.label_engine.runner.run``.

It depends on the bar tables its label sets read (``cdm_bars_daily`` or state-engine bar tables). An asset
check fails when a label set labelled no event in the window or gave one class only.
"""

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import LabelEngineRunConfig
from quantflow.pipeline.dagster.metadata import stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.storage.tables import LABELS_TABLE

GROUP = "label_engine"
CHECK = "labels_have_events_and_classes"


def build_label_engine_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    cfg = md.project.label_engine
    if cfg is None:
        return []
    inputs = sorted({s.input for s in cfg.labels})
    sets = ", ".join(f"{s.name} ({s.method} on {s.input})" for s in cfg.labels)

    @dg.asset(name=LABELS_TABLE, group_name=GROUP, deps=[dg.AssetKey(t) for t in inputs], kinds={"numba", "parquet"},
              required_resource_keys={REPORTER_KEY},
              check_specs=[dg.AssetCheckSpec(CHECK, asset=LABELS_TABLE, description="every label set labels some "
                                             "events in the window, with more than one class")],
              description=f"Labels and AFML sample weights per event (lake table, by symbol and month): {sets}.")
    def cdm_labels(context: dg.AssetExecutionContext, config: LabelEngineRunConfig):
        from quantflow.label_engine import runner as label_runner  # at run time: the definitions stay light

        window = config.window(md.symbols)
        result = call_stage(context, md, LABELS_TABLE, lambda progress: label_runner.run(md, window,
                                                                                         progress=progress))
        empty = [name for name, n in result.events.items() if n == 0]
        single = [name for name, shares in result.balance.items() if len(shares) < 2]
        yield dg.MaterializeResult(
            metadata=stage_metadata(result, [LABELS_TABLE]),
            check_results=[dg.AssetCheckResult(
                check_name=CHECK, passed=not empty and not single,
                metadata={"no_events": ", ".join(empty) or "-", "one_class": ", ".join(single) or "-"})],
        )

    return [cdm_labels]
