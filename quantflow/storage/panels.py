"""Wide frames the research stages share, read from the lake: daily prices as dates x symbols, and a
model's predictions of its newest configuration (the record its card and the validation stage judge)."""

from __future__ import annotations

import json

import pandas as pd
import polars as pl

from quantflow.compute.stage import StageError
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.artifacts import MODEL_CARD_PREFIX
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.tables import BARS_DAILY_TABLE, predictions_table


def daily_panel(md: ProjectMetadata, end, columns=("close",)) -> dict[str, pd.DataFrame]:
    """dates x symbols of daily bar columns (every project symbol, up to ``end``): trading dates are the
    union of the symbols' dates; a symbol without a bar on a date has NaN there."""
    bars = project_lake(md).read(BARS_DAILY_TABLE, list(md.symbols), None, end, ["symbol", "date", *columns])
    if not bars.height:
        raise StageError(f"{BARS_DAILY_TABLE} has no rows up to {end}: run ingest and transform first")
    frame = bars.to_pandas()
    frame["date"] = pd.to_datetime(frame["date"])
    return {c: frame.pivot_table(index="date", columns="symbol", values=c, aggfunc="last")
            .reindex(columns=list(md.symbols)).sort_index() for c in columns}


def newest_config(md: ProjectMetadata, model: str) -> str | None:
    """The configuration key of the model's newest card (None: no card yet)."""
    cfg = next(m for m in md.project.models or [] if m.name == model)
    cards = project_artifacts(md, f"models/{model}")
    url = cards.latest(MODEL_CARD_PREFIX[cfg.kind], "json")
    return json.loads(cards.get(url))["config_key"] if url else None


def model_predictions(md: ProjectMetadata, model: str, end) -> tuple[pl.DataFrame, str | None, list[str]]:
    """The model's stored predictions up to ``end`` of its newest configuration (its card's), the
    configuration key, and warnings."""
    pred = project_lake(md).read(predictions_table(model), list(md.symbols), None, end)
    key = newest_config(md, model)
    if not pred.height or key is None:
        return pred, None, []
    mine = pred.filter(pl.col("config") == key)
    notes = []
    if mine.height < pred.height:
        notes.append(f"model {model}: {pred.height - mine.height:,} stored predictions of earlier configurations "
                     "are not used")
    return mine, key, notes
