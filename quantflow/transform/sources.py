"""Which raw tables the enabled feeds produce (as each feed declares, ``FeedConfig.raw_kinds``), and so which dbt
sources and CDM models the project has."""

from __future__ import annotations

from dataclasses import dataclass

from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.tables import CDM_TABLES, raw_table_name

# Order of the CDM tables in generated files and results.
KIND_ORDER: tuple[str, ...] = ("bars_daily", "trades", "quotes", "messages")
CDM_BY_KIND: dict[str, str] = {kind: table for table, kind in CDM_TABLES.items()}


@dataclass(frozen=True)
class RawSource:
    """One raw table feeding the CDM: ``priority`` is the feed's position among the enabled feeds."""

    feed: str
    kind: str
    table: str
    priority: int


def raw_sources(md: ProjectMetadata) -> list[RawSource]:
    """Every raw table of the enabled feeds, in feed order (the first listed feed wins a (symbol, day))."""
    out = []
    for priority, feed in enumerate(md.project.ingest.enabled_feeds, start=1):
        for kind in feed.raw_kinds():
            out.append(RawSource(feed.name, kind, raw_table_name(feed.name, kind), priority))
    return out


def cdm_kinds(md: ProjectMetadata) -> list[str]:
    """Kinds with a CDM model: those produced by at least one enabled feed, in ``KIND_ORDER``."""
    produced = {s.kind for s in raw_sources(md)}
    return [k for k in KIND_ORDER if k in produced]


def cdm_tables(md: ProjectMetadata) -> dict[str, str]:
    """``{cdm table: kind}`` for the CDM models this project has."""
    return {CDM_BY_KIND[k]: k for k in cdm_kinds(md)}
