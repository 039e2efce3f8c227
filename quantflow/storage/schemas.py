"""Schemas of the lake tables (polars dtypes), shared by the stages that write and read them.

Every table has ``symbol`` and ``date`` columns: the lake partitions by them, tick tables per day and daily
tables per year, so a 20-year daily history is not 5,000 one-row files. Table names are in
``quantflow.storage.tables``.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from quantflow.storage.tables import SEQUENCE_COLUMN, partition_width

UTC_NS = pl.Datetime("ns", "UTC")

TRADES_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "date": pl.Date,  # exchange-local trading date
    "ts": UTC_NS,
    "trade_id": pl.Int64,  # sequence number within (symbol, date), preserves feed order
    "price": pl.Float64,
    "size": pl.Float64,
    "side": pl.Int8,  # aggressor side from the feed when it knows it: +1 buy, -1 sell, null unknown
}

QUOTES_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "date": pl.Date,
    "ts": UTC_NS,
    "quote_id": pl.Int64,  # sequence number within (symbol, date)
    "bid": pl.Float64,
    "ask": pl.Float64,
    "bid_size": pl.Float64,
    "ask_size": pl.Float64,
}

BARS_DAILY_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "date": pl.Date,
    "open": pl.Float64,  # split/dividend adjusted when the feed provides the information
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "adj_factor": pl.Float64,  # adjusted close / raw close (1.0 when unadjusted)
}

MESSAGES_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "date": pl.Date,
    "ts": UTC_NS,
    "seq": pl.Int64,  # position in the (symbol, date) stream: the order the book applies the messages in
    "message_id": pl.Int64,  # the feed's message number (a level set: the message whose book it restores)
    "type": pl.Int8,  # LOBSTER codes: 1 submit, 2 partial cancel, 3 delete, 4 visible / 5 hidden execution,
    # 6 cross, 7 halt; 9 level set (the feed's published book: size of one level, 0 = no level)
    "order_id": pl.Int64,  # null for level sets
    "size": pl.Float64,
    "price": pl.Float64,
    "direction": pl.Int8,  # side of the resting order: +1 buy (bid), -1 sell (ask)
}

# out-of-sample predictions of a model (``pred_<model>``): the same for ML and DL models
PREDICTIONS_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "date": pl.Date,
    "ts": UTC_NS,  # the event's start (its bar's close): when the prediction is known
    "t1": UTC_NS,  # the label's end
    "model": pl.Utf8,
    "kind": pl.Utf8,  # ml | dl
    "config": pl.Utf8,  # the method that made it (configuration, code, libraries): one track record per config
    "fold": pl.Int64,  # walk-forward fold that made the prediction
    "train_start": UTC_NS,  # the fold's first training event
    "train_end": UTC_NS,  # the fold's last training label end: before ts, always
    "prediction": pl.Float64,  # expected label (classification) or predicted value (regression)
    "predicted_label": pl.Int64,  # most probable class (null for regression)
    "probability": pl.Float64,  # its probability (null when the model gives none)
    "target": pl.Float64,  # what was learned, realized
    "ret": pl.Float64,  # the label's return
}

WEIGHTS_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "date": pl.Date,  # the rebalance date: the weights use what was known at its close
    "ts": UTC_NS,  # the date at 00:00 UTC, the lake's key for daily rows (the weights use that date's close)
    "weight": pl.Float64,  # the weight held from the next execution (after the turnover cap and cash buffer)
    "target": pl.Float64,  # what the optimizer asked for, before the turnover cap
    "signal": pl.Float64,  # the model's prediction used (null: none recent enough)
    "expected_return": pl.Float64,  # the expected daily return from the signal (what mean_variance and nco use)
    "method": pl.Utf8,
    "model": pl.Utf8,
    "config": pl.Utf8,  # hash of the portfolio configuration and the model's prediction config
}

BAD_ROWS_SCHEMA: dict[str, pl.DataType] = {
    "feed": pl.Utf8,
    "symbol": pl.Utf8,
    "date": pl.Utf8,  # as written in the source; may be unparseable
    "file": pl.Utf8,
    "line": pl.Int64,  # 1-based line in the source file (header is line 1), null when not file based
    "reason": pl.Utf8,
}

RAW_KINDS: dict[str, dict[str, pl.DataType]] = {
    "trades": TRADES_SCHEMA,
    "quotes": QUOTES_SCHEMA,
    "bars_daily": BARS_DAILY_SCHEMA,
    "messages": MESSAGES_SCHEMA,
}

# columns a feed may leave out: they are filled with their default (see ``conform``)
# complete: bars stored before it existed; config: predictions stored before it existed (null: an unknown
# method, which the validation stage does not judge)
OPTIONAL_COLUMNS = ("side", "adj_factor", "order_id", "complete", "config")


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: dict[str, pl.DataType]
    partition: str  # "day" or "year": width of the date partition
    sort_by: tuple[str, ...]


def bar_time(columns: list[str]) -> pl.Expr:
    """When a bar is known, the time every stage keys bars by: its last trade (``ts_last``, bars from
    ticks), or its date at 00:00 UTC (daily and calendar bars)."""
    if "ts_last" in columns:
        return pl.col("ts_last").cast(UTC_NS)
    return pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")


def spec_for_kind(table: str, kind: str) -> TableSpec:
    schema = RAW_KINDS[kind]
    if kind == "bars_daily":
        return TableSpec(table, schema, partition_width(table), ("symbol", "date"))
    return TableSpec(table, schema, "day", ("symbol", "date", "ts", SEQUENCE_COLUMN[kind]))


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], where: str = "") -> pl.DataFrame:
    """Select and cast ``df`` to ``schema`` (missing nullable columns become null); names what is missing."""
    missing = [c for c in schema if c not in df.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"{where or 'frame'} is missing columns {missing}; has {df.columns}")
    exprs = []
    for col, dtype in schema.items():
        if col in df.columns:
            exprs.append(pl.col(col).cast(dtype))
        elif col == "adj_factor":
            exprs.append(pl.lit(1.0, pl.Float64).alias(col))
        else:
            exprs.append(pl.lit(None, dtype).alias(col))
    return df.select(exprs)
