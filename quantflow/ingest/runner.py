"""Ingest stage entry point: one feed, a date range and symbols -> raw lake tables.

``run`` pulls bounded batches from the feed (per symbol or per symbol-day), writes each table through
the lake with the requested write mode, collects every bad row the feed reported, and stores a JSON run
summary (plus a CSV of bad rows when there are any) as ``data_extractor_*`` artifacts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from quantflow.ingest.feeds.base import build_feed
from quantflow.metadata.manager import ProjectMetadata, get_metadata_manager
from quantflow.storage.lake import WRITE_MODES, WriteMode, WriteResult
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.tables import BAD_ROWS_SCHEMA, raw_table_name, spec_for_kind

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    feed: str
    kind: str
    start_date: dt.date
    end_date: dt.date
    symbols: list[str]
    write_mode: str
    tables: dict[str, WriteResult] = field(default_factory=dict)
    bad_rows: int = 0
    bad_rows_by_symbol: dict[str, int] = field(default_factory=dict)
    bad_rows_url: str | None = None
    summary_url: str | None = None
    table_urls: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    preview: dict[str, pl.DataFrame] = field(default_factory=dict)

    @property
    def rows_written(self) -> dict[str, int]:
        return {t: r.rows_written for t, r in self.tables.items()}

    def summary(self) -> dict:
        return {
            "feed": self.feed,
            "kind": self.kind,
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
            "symbols": self.symbols,
            "write_mode": self.write_mode,
            "tables": {t: {k: v for k, v in asdict(r).items() if k != "partitions"} | {"url": self.table_urls[t]}
                       for t, r in self.tables.items()},
            "bad_rows": self.bad_rows,
            "bad_rows_by_symbol": self.bad_rows_by_symbol,
            "bad_rows_url": self.bad_rows_url,
            "seconds": round(self.seconds, 3),
        }


def _load(project: str | Path | ProjectMetadata) -> ProjectMetadata:
    return project if isinstance(project, ProjectMetadata) else get_metadata_manager(project).load_all()


def run(
    project: str | Path | ProjectMetadata,
    feed: str,
    mode: WriteMode = "skip_if_exists",
    start_date: dt.date | None = None,
    end_date: dt.date | None = None,
    symbols: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> IngestResult:
    """Ingest ``feed`` for [start_date, end_date] (inclusive) into ``raw_<feed>_<kind>`` lake tables."""
    md = _load(project)
    if mode not in WRITE_MODES:
        raise ValueError(f"write mode must be one of {', '.join(WRITE_MODES)}; got {mode!r}")
    feeds = {f.name: f for f in md.project.ingest.feeds}
    if feed not in feeds:
        raise ValueError(f"feed {feed!r} is not in project_metadata/project.yaml; feeds: {', '.join(feeds) or 'none'}")
    cfg = feeds[feed]
    today = dt.date.today()
    start = start_date or today - dt.timedelta(days=1)
    end = end_date or today
    if start > end:
        raise ValueError(f"start_date {start} is after end_date {end}")
    symbols = list(symbols) if symbols else md.symbols
    say = progress or log.info

    source = build_feed(cfg, md.project_dir)
    lake = project_lake(md)
    result = IngestResult(feed, cfg.kind, start, end, symbols, mode)
    specs = {kind: spec_for_kind(raw_table_name(feed, kind), kind) for kind in source.kinds}
    for spec in specs.values():
        result.tables[spec.name] = WriteResult(spec.name)
        result.table_urls[spec.name] = lake.url(spec.name)
    bad_frames: list[pl.DataFrame] = []
    began = time.perf_counter()
    say(f"ingest {feed} ({cfg.kind}): {len(symbols)} symbols, {start} .. {end}, mode {mode}")
    for batch in source.iter_batches(symbols, start, end):
        for kind, df in batch.tables.items():
            if df.height == 0:
                continue
            spec = specs[kind]
            written = lake.write(spec, df, mode)
            result.tables[spec.name].merge(written)
            if spec.name not in result.preview:
                result.preview[spec.name] = df.head(5)
        if batch.bad_rows.height:
            bad_frames.append(batch.bad_rows)
        done = {t: r.rows_written for t, r in result.tables.items()}
        say(f"  {feed}: batch {', '.join(sorted(batch.tables))} done; rows so far {done}")
    result.seconds = time.perf_counter() - began

    artifacts = project_artifacts(md)
    if bad_frames:
        bad = pl.concat(bad_frames, how="vertical_relaxed").select(list(BAD_ROWS_SCHEMA))
        result.bad_rows = bad.height
        result.bad_rows_by_symbol = dict(bad.group_by("symbol").len().sort("symbol").iter_rows())
        buf = io.BytesIO()
        bad.write_csv(buf)
        result.bad_rows_url = artifacts.put("data_extractor_", "csv", buf.getvalue())
        say(f"  {feed}: {result.bad_rows} bad rows reported -> {result.bad_rows_url}")
    result.summary_url = artifacts.put("data_extractor_", "json", json.dumps(result.summary(), indent=2).encode())
    say(f"ingest {feed} done in {result.seconds:.1f}s: {result.rows_written}")
    return result
