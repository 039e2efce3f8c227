"""Names of the lake tables and the facts about them that need no data library (so the Dagster
definitions and the dbt generator can name tables without importing polars).

Raw tables are named ``raw_<feed>_<kind>`` (kind: ``trades``, ``quotes``, ``bars_daily``, ``messages``); the
CDM tables produced by dbt carry the same columns under ``cdm_*``. Their columns are in
``quantflow.storage.schemas``.
"""

from __future__ import annotations

import re

RAW_KIND_NAMES: tuple[str, ...] = ("trades", "quotes", "bars_daily", "messages")

CDM_TABLES: dict[str, str] = {
    "cdm_trades": "trades",
    "cdm_quotes": "quotes",
    "cdm_bars_daily": "bars_daily",
    "cdm_order_messages": "messages",
}
TRADES_TABLE, QUOTES_TABLE, BARS_DAILY_TABLE, MESSAGES_TABLE = CDM_TABLES
# the state engine's fixed tables (its bar tables are named by ``metadata.schema.bar_table_name``)
ENRICHED_TABLE = "cdm_trade_enriched"
LOB_TABLE = "cdm_lob_l2"
LABELS_TABLE = "cdm_labels"  # the label engine's: one row per labelled event and label set
FEATURES_TABLE = "ft_features"  # the feature engine's: one row per bar of its input table
WEIGHTS_TABLE = "pf_weights"  # the portfolio stage's: target weights per (symbol, rebalance date)
PREDICTIONS_PREFIX = "pred_"  # the models stage's: ``pred_<model>``, out-of-sample predictions per event
DAILY_BAR_COLUMNS = ("open", "high", "low", "close", "volume", "adj_factor")
# the state engine's bars from ticks add these (calendar bars come from cdm_bars_daily: daily columns)
TICK_BAR_COLUMNS = ("open", "high", "low", "close", "volume", "dollar_volume", "vwap", "n_trades", "buy_volume",
                    "sell_volume")

# Above these a price or a size (shares, contracts, volume) is not a market value but a corrupt one
# (1e308 is finite and positive): ingest reports such rows as bad and the CDM drops them.
MAX_PLAUSIBLE_PRICE = 1e9
MAX_PLAUSIBLE_SIZE = 1e15
SEQUENCE_COLUMN = {"trades": "trade_id", "quotes": "quote_id", "messages": "seq"}


def partition_width(table: str) -> str:
    """The width a table's partitions get by its rows per (symbol, day): daily-frequency tables (daily and
    calendar bars) per year, intraday bars per month, ticks (trades, quotes, messages, enriched trades, book
    snapshots) per day; labels (one per bar at most, per label set) per month."""
    if table.endswith("bars_daily") or re.search(r"_time_1(w|mo|q|y)_bars$", table):
        return "year"
    return "month" if table.endswith("_bars") or table == LABELS_TABLE else "day"


def features_partition_width(input_table: str) -> str:
    """``ft_features`` partitions: a decade of daily bars (a feature table is wide: a year of daily rows
    is a small file of many column chunks, slow to write and to read), a month of intraday bars."""
    width = partition_width(input_table)
    return "decade" if width == "year" else width


def bar_columns(table: str) -> tuple[str, ...]:
    """The value columns of a bar table (``cdm_bars_daily``, or a state-engine ``cdm_<type>_..._bars``)."""
    if table.endswith("bars_daily") or re.search(r"_time_1(w|mo|q|y)_bars$", table):
        return DAILY_BAR_COLUMNS
    return TICK_BAR_COLUMNS


def raw_table_name(feed: str, kind: str) -> str:
    return f"raw_{feed}_{kind}"


def predictions_table(model: str) -> str:
    return f"{PREDICTIONS_PREFIX}{model}"


def predictions_partition_width(label_input: str) -> str:
    """``pred_<model>``: a year of events on daily bars, a month of intraday ones (as ``cdm_labels``)."""
    return "year" if partition_width(label_input) == "year" else "month"
