"""Group ``state_engine``: the multi-asset ``state_engine_full``, one output per state-engine table.

A thin adapter over ``quantflow.state_engine.runner.run``: shards go to Ray (or the local executor) and
Dagster's process only coordinates. ``BatchPipelineRunner`` runs this same asset (job
``quantflow_state_engine``).
"""


import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import StateEngineRunConfig
from quantflow.pipeline.dagster.metadata import stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.state_engine.tables import input_tables, output_tables

GROUP = "state_engine"
ASSET = "state_engine_full"


def build_state_engine_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    cfg = md.project.state_engine
    if cfg is None:
        return []
    tables = output_tables(cfg)
    specs = [
        dg.AssetSpec(
            table,
            group_name=GROUP,
            deps=[dg.AssetKey(t) for t in input_tables(cfg, table)],
            kinds={"numba", "parquet"},
            skippable=True,
            description=f"State engine output `{table}` (lake table, partitioned by symbol and date).",
        )
        for table in tables
    ]

    @dg.multi_asset(name=ASSET, specs=specs, can_subset=False, required_resource_keys={REPORTER_KEY},
                    description="One Numba pass per (symbol, time shard) over CDM trades, quotes and order "
                                "messages, on Ray.")
    def state_engine_full(context: dg.AssetExecutionContext, config: StateEngineRunConfig):
        from quantflow.state_engine import runner as state_runner  # at run time: the definitions stay light

        window = config.window(md.symbols)
        result = call_stage(context, md, ASSET, lambda progress: state_runner.run(
            md, window, max_concurrency=config.max_concurrency, shard_granularity=config.shard_granularity,
            progress=progress))
        for table in tables:
            if table in result.tables:
                yield dg.MaterializeResult(asset_key=table, metadata=stage_metadata(result, [table]))

    return [state_engine_full]
