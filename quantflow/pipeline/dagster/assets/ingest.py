"""Group ``ingest``: one asset ``raw_<feed>`` per enabled feed, a thin adapter over the ingest runner."""


import dagster as dg

from quantflow.ingest import runner as ingest_runner
from quantflow.ingest.feeds.base import feed_kinds
from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import PipelineConfig, resolve
from quantflow.pipeline.dagster.metadata import frame_preview

GROUP = "ingest"


def ingest_asset_key(feed_name: str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{feed_name}")


def _build_feed_asset(md: ProjectMetadata, feed) -> list:
    key = ingest_asset_key(feed.name)
    tables = [f"raw_{feed.name}_{kind}" for kind in feed_kinds(feed)]
    check_name = "no_bad_rows"

    @dg.asset(
        key=key,
        group_name=GROUP,
        kinds={"python", "parquet"},
        description=f"Raw {feed.kind} feed `{feed.name}` -> lake tables {', '.join(tables)}.",
        check_specs=[dg.AssetCheckSpec(check_name, asset=key, description="The feed reported no bad rows.")],
        metadata={"feed_kind": feed.kind, "tables": ", ".join(tables)},
    )
    def _ingest(context: dg.AssetExecutionContext, config: PipelineConfig):
        window = resolve(config, md.symbols)
        result = ingest_runner.run(
            md, feed.name, window.write_mode, window.start_date, window.end_date, window.symbols,
            progress=context.log.info,
        )
        meta: dict = {
            "start_date": window.start_date.isoformat(),
            "end_date": window.end_date.isoformat(),
            "symbols": ", ".join(window.symbols),
            "write_mode": window.write_mode,
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "bad_rows": dg.MetadataValue.int(result.bad_rows),
            "summary_url": dg.MetadataValue.path(result.summary_url),
        }
        for table, written in result.tables.items():
            meta[f"rows_written/{table}"] = dg.MetadataValue.int(written.rows_written)
            meta[f"days_written/{table}"] = dg.MetadataValue.int(written.days_written)
            meta[f"days_skipped/{table}"] = dg.MetadataValue.int(written.days_skipped)
            meta[f"location/{table}"] = dg.MetadataValue.path(result.table_urls[table])
        for table, df in result.preview.items():
            meta[f"preview/{table}"] = frame_preview(df)
        if result.bad_rows_url:
            meta["bad_rows_url"] = dg.MetadataValue.path(result.bad_rows_url)
        yield dg.MaterializeResult(metadata=meta)
        yield dg.AssetCheckResult(
            check_name=check_name,
            passed=result.bad_rows == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"bad_rows": result.bad_rows, **{f"bad_rows/{s}": n for s, n in result.bad_rows_by_symbol.items()}},
        )

    return [_ingest]


def build_ingest_assets(md: ProjectMetadata) -> list:
    assets: list = []
    for feed in md.project.ingest.enabled_feeds:
        assets.extend(_build_feed_asset(md, feed))
    return assets
