"""Helpers that turn stage results into Dagster metadata values."""

from __future__ import annotations

import dagster as dg
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
