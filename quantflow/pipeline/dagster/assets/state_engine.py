"""Group ``state_engine``: the multi-asset ``state_engine_full``, one output per state-engine table.

The asset is a thin adapter over ``quantflow.state_engine.runner.run_production``: shards go to Ray (or
the local executor) and Dagster's process only coordinates. ``BatchPipelineRunner`` calls the runner
directly and records the same materializations with ``record_state_engine_materializations``.
"""

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import PipelineConfig, resolve
from quantflow.pipeline.dagster.metadata import frame_preview
from quantflow.state_engine import runner as state_runner

GROUP = "state_engine"


def materialization_metadata(result: state_runner.StateEngineResult, table: str) -> dict:
    written = result.tables.get(table)
    meta: dict = {
        "start_date": result.start_date.isoformat(),
        "end_date": result.end_date.isoformat(),
        "symbols": ", ".join(result.symbols),
        "executor": result.executor,
        "shards": dg.MetadataValue.int(result.shards),
        "shards_skipped": dg.MetadataValue.int(result.shards_skipped),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "trades": dg.MetadataValue.int(result.trades),
        "trades_per_second": dg.MetadataValue.float(round(result.trades_per_second, 1)),
    }
    if written is not None:
        meta[f"rows_written/{table}"] = dg.MetadataValue.int(written.rows_written)
        meta[f"days_written/{table}"] = dg.MetadataValue.int(written.days_written)
        meta[f"days_skipped/{table}"] = dg.MetadataValue.int(written.days_skipped)
    if table in result.table_urls:
        meta[f"location/{table}"] = dg.MetadataValue.path(result.table_urls[table])
    if table in result.preview:
        meta[f"preview/{table}"] = frame_preview(result.preview[table])
    return meta


def build_state_engine_assets(md: ProjectMetadata) -> list:
    cfg = md.project.state_engine
    if cfg is None:
        return []
    specs = [
        dg.AssetSpec(
            table,
            group_name=GROUP,
            deps=[dg.AssetKey(t) for t in state_runner.input_tables(cfg, table)],
            kinds={"numba", "parquet"},
            skippable=True,
            description=f"State engine output `{table}` (lake table, partitioned by symbol and date).",
        )
        for table in state_runner.output_tables(cfg)
    ]

    @dg.multi_asset(name="state_engine_full", specs=specs, can_subset=False,
                    description="One Numba pass per (symbol, time shard) over CDM trades, quotes and order "
                                "messages, on Ray.")
    def state_engine_full(context: dg.AssetExecutionContext, config: PipelineConfig):
        window = resolve(config, md.symbols)
        result = state_runner.run_production(
            md, window.start_date, window.end_date, window.symbols, window.write_mode, window.max_concurrency,
            window.shard_granularity, progress=context.log.info,
        )
        for table in state_runner.output_tables(cfg):
            if table in result.tables:
                yield dg.MaterializeResult(asset_key=table, metadata=materialization_metadata(result, table))
        for skipped in result.skipped_bars:
            context.log.warning(f"skipped {skipped}")

    return [state_engine_full]
