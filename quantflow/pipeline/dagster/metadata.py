"""The one translation of stage results into Dagster: materialization metadata and asset check results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

from quantflow.compute.stage import StageResult

if TYPE_CHECKING:
    import polars as pl


def frame_preview(df: pl.DataFrame, rows: int = 5) -> dg.MetadataValue:
    """A small markdown table of the first rows, shown in the asset's materialization panel."""
    head = df.head(rows)
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _value(value: Any) -> Any:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, dict):
        return dg.MetadataValue.json(value)
    return str(value)


def stage_metadata(result: StageResult, tables: list[str]) -> dict[str, Any]:
    """Materialization metadata of an asset that stands for ``tables`` of ``result``: the window, the stage's
    key figures and artifacts, and per table rows and days written or kept, its location and a preview."""
    window = result.window
    meta: dict[str, Any] = {
        "start_date": window.start_date.isoformat(),
        "end_date": window.end_date.isoformat(),
        "symbols": ", ".join(window.symbols),
        "write_mode": window.write_mode,
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
    }
    meta.update({k: _value(v) for k, v in result.key_figures().items()})
    meta.update({k: dg.MetadataValue.path(url) for k, url in result.artifacts.items()})
    for table in tables:
        meta.update({k: _value(v) for k, v in result.table_figures(table).items()})
        written = result.tables.get(table)
        if written is not None:
            meta[f"rows_written/{table}"] = dg.MetadataValue.int(written.rows_written)
            meta[f"days_written/{table}"] = dg.MetadataValue.int(written.days_written)
            meta[f"days_skipped/{table}"] = dg.MetadataValue.int(written.days_skipped)
        if table in result.table_urls:
            meta[f"location/{table}"] = dg.MetadataValue.path(result.table_urls[table])
        if table in result.preview:
            meta[f"preview/{table}"] = frame_preview(result.preview[table])
    return meta


def check_results(result: StageResult, asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=check.name,
            passed=check.passed,
            severity=dg.AssetCheckSeverity.ERROR if check.severity == "error" else dg.AssetCheckSeverity.WARN,
            metadata={k: _value(v) for k, v in check.metadata.items()},
        )
        for check in result.checks.values()
    ]
