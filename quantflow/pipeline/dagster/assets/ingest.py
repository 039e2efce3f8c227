"""Group ``ingest``: one asset ``raw_<feed>`` per enabled feed, a thin adapter over ``ingest.runner.run``."""


import dagster as dg

from quantflow.ingest import NO_BAD_ROWS
from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import IngestRunConfig
from quantflow.pipeline.dagster.metadata import check_results, stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.storage.tables import raw_table_name

GROUP = "ingest"


def ingest_asset_key(feed_name: str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{feed_name}")


def _build_feed_asset(md: ProjectMetadata, feed) -> dg.AssetsDefinition:
    key = ingest_asset_key(feed.name)
    tables = [raw_table_name(feed.name, kind) for kind in feed.raw_kinds()]

    @dg.asset(
        key=key,
        group_name=GROUP,
        kinds={"python", "parquet"},
        description=f"Raw {feed.kind} feed `{feed.name}` -> lake tables {', '.join(tables)}.",
        check_specs=[dg.AssetCheckSpec(NO_BAD_ROWS, asset=key,
                                       description="The feed reported no bad rows.")],
        metadata={"feed_kind": feed.kind, "tables": ", ".join(tables)},
        required_resource_keys={REPORTER_KEY},
    )
    def _ingest(context: dg.AssetExecutionContext, config: IngestRunConfig):
        from quantflow.ingest import runner as ingest_runner  # at run time: the definitions stay light

        window = config.window(md.symbols)
        result = call_stage(context, md, key.to_user_string(),
                            lambda progress: ingest_runner.run(md, window, feed=feed.name, progress=progress))
        yield dg.MaterializeResult(metadata=stage_metadata(result, tables))
        yield from check_results(result, key)

    return _ingest


def build_ingest_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    return [_build_feed_asset(md, feed) for feed in md.project.ingest.enabled_feeds]
