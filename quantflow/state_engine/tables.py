"""Which tables the state engine writes for a config and what each is computed from: named from the
metadata alone, so the Dagster definitions can declare the assets and their lineage without loading the
engine (Numba, polars)."""

from __future__ import annotations

from quantflow.metadata.schema import StateEngineConfig
from quantflow.storage.tables import (
    BARS_DAILY_TABLE,
    ENRICHED_TABLE,
    LOB_TABLE,
    MESSAGES_TABLE,
    QUOTES_TABLE,
    TRADES_TABLE,
)


def tick_tables(cfg: StateEngineConfig) -> list[str]:
    """The tables computed from ticks (named from the metadata alone: no Numba import)."""
    tables = [ENRICHED_TABLE] + ([LOB_TABLE] if cfg.lob.interval else [])
    return tables + [b.table for b in cfg.bars if not b.is_calendar]


def calendar_tables(cfg: StateEngineConfig) -> list[str]:
    return [b.table for b in cfg.bars if b.is_calendar]


def uses_messages(cfg: StateEngineConfig) -> bool:
    """Whether ``cdm_lob_l2`` is rebuilt from order messages (rather than taken from the quotes)."""
    return cfg.lob.interval is not None and cfg.lob.source == "messages"


def input_tables(cfg: StateEngineConfig, table: str) -> list[str]:
    """The CDM tables an output table is computed from (its lineage)."""
    if table in calendar_tables(cfg):
        return [BARS_DAILY_TABLE]
    if table == LOB_TABLE:
        return [MESSAGES_TABLE] if uses_messages(cfg) else [QUOTES_TABLE]
    return [TRADES_TABLE, QUOTES_TABLE]


def output_tables(cfg: StateEngineConfig) -> list[str]:
    """Every table the state engine can write for ``cfg``, in a stable order (one Dagster asset each)."""
    return tick_tables(cfg) + calendar_tables(cfg)
