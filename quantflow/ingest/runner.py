"""Ingest stage entry point: one feed over a run window -> raw lake tables ``raw_<feed>_<kind>``.

``run`` pulls bounded batches from the feed (per symbol or per symbol-day), writes each table through
the lake with the window's write mode, collects every bad row the feed reported, and stores a JSON run
summary (plus a CSV of bad rows when there are any) as ``data_extractor_*`` artifacts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from quantflow.compute.stage import CheckOutcome, Progress, RunWindow, StageResult
from quantflow.ingest import NO_BAD_ROWS
from quantflow.ingest.feeds.bar_checks import join_reasons, tick_checks
from quantflow.ingest.feeds.base import build_feed, empty_bad_rows, weekdays
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.lake import Lake
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.schemas import BAD_ROWS_SCHEMA, spec_for_kind
from quantflow.storage.tables import raw_table_name
from quantflow.storage.writes import WriteResult

STAGE = "ingest"


@dataclass
class IngestResult(StageResult):
    feed: str = ""
    kind: str = ""
    bad_rows: int = 0
    bad_rows_by_symbol: dict[str, int] = field(default_factory=dict)

    def headline(self) -> str:
        rows = sum(self.rows_written.values())
        bad = f", {self.bad_rows} bad rows reported" if self.bad_rows else ""
        return f"feed {self.feed} ({self.kind}): {rows:,} rows written{bad}"

    def key_figures(self) -> dict[str, Any]:
        return {"feed_kind": self.kind, "bad_rows": self.bad_rows}

    def summary(self) -> dict:
        """The JSON run summary stored as the ``data_extractor_*.json`` artifact."""
        return {
            "feed": self.feed,
            "kind": self.kind,
            "start_date": self.window.start_date.isoformat(),
            "end_date": self.window.end_date.isoformat(),
            "symbols": list(self.window.symbols),
            "write_mode": self.window.write_mode,
            "tables": {t: {k: v for k, v in asdict(r).items() if k != "partitions"} | {"url": self.table_urls[t]}
                       for t, r in self.tables.items()},
            "bad_rows": self.bad_rows,
            "bad_rows_by_symbol": self.bad_rows_by_symbol,
            "bad_rows_url": self.artifacts.get("bad_rows_url"),
            "seconds": round(self.seconds, 3),
        }


TICK_KINDS = ("trades", "quotes", "messages")


def _stored_days(lake: Lake, spec, symbol: str, start: dt.date, end: dt.date) -> set[dt.date]:
    if spec.partition == "day":  # one listing: the partitions are the days
        return {p.period_start for p in lake.partitions(spec.name, [symbol], start, end)}
    return lake.stored_days(spec.name, symbol, start, end)


def plan_requests(lake: Lake, source, specs: dict, window: RunWindow) -> tuple[list[tuple], int]:
    """What to ask the feed for: ``[(symbols, start, end)]`` and how many (symbol, weekday)s were left out.

    In ``skip_if_exists`` mode a (symbol, weekday) stored in every table of the feed is not fetched (nor
    simulated) again. A feed of ticks is asked for each run of missing days; a feed of daily bars, which
    answers a date range in one request, for the span from the first to the last missing day (a holiday
    is never stored, so it keeps a span open, but costs no extra request).
    """
    symbols, start, end = list(window.symbols), window.start_date, window.end_date
    if window.write_mode != "skip_if_exists":
        return [(symbols, start, end)], 0
    days = weekdays(start, end)
    position = {day: i for i, day in enumerate(days)}
    per_day = any(k in TICK_KINDS for k in source.kinds)
    requests, kept, untouched = [], 0, []
    for symbol in symbols:
        stored = set.intersection(*(_stored_days(lake, spec, symbol, start, end) for spec in specs.values()))
        missing = [d for d in days if d not in stored]
        kept += len(days) - len(missing)
        if len(missing) == len(days):
            untouched.append(symbol)
        elif missing and per_day:
            run = [missing[0]]
            for day in missing[1:]:
                if position[day] == position[run[-1]] + 1:
                    run.append(day)
                else:
                    requests.append(([symbol], run[0], run[-1]))
                    run = [day]
            requests.append(([symbol], run[0], run[-1]))
        elif missing:
            requests.append(([symbol], missing[0], missing[-1]))
    if untouched:  # nothing stored: one request for all of them, as without skipping
        requests.insert(0, (untouched, start, end))
    return requests, kept


def split_bad_ticks(feed: str, kind: str, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(good rows, bad-row reports) of a feed's trades or quotes: whatever feed produced them, a tick that
    cannot be right is reported (the ``no_bad_rows`` check) and kept out of the raw table."""
    checks = tick_checks(kind)
    if not checks:
        return df, empty_bad_rows()
    reasons = df.select(join_reasons(checks).alias("reason"))["reason"]
    bad_mask = reasons.is_not_null()
    if not bad_mask.any():
        return df, empty_bad_rows()
    bad = df.filter(bad_mask).select(
        pl.lit(feed).alias("feed"), pl.col("symbol"), pl.col("date").cast(pl.Utf8), pl.lit(None, pl.Utf8).alias("file"),
        pl.lit(None, pl.Int64).alias("line"), reasons.filter(bad_mask).alias("reason"))
    return df.filter(~bad_mask), bad


def run(md: ProjectMetadata, window: RunWindow, *, feed: str, progress: Progress | None = None) -> IngestResult:
    """Ingest ``feed`` (a feed name of project.yaml) for the window."""
    progress = progress or Progress()
    feeds = {f.name: f for f in md.project.ingest.feeds}
    if feed not in feeds:
        raise ValueError(f"feed {feed!r} is not in project_metadata/project.yaml; feeds: {', '.join(feeds) or 'none'}")
    cfg = feeds[feed]
    began = time.perf_counter()
    source = build_feed(cfg, md.project_dir)
    lake = project_lake(md)
    result = IngestResult(STAGE, window, feed=feed, kind=cfg.kind)
    specs = {kind: spec_for_kind(raw_table_name(feed, kind), kind) for kind in source.kinds}
    for spec in specs.values():
        result.record_write(spec.name, WriteResult(spec.name), lake.url(spec.name))
    bad_frames: list[pl.DataFrame] = []
    requests, kept = plan_requests(lake, source, specs, window)
    for spec in specs.values():
        result.tables[spec.name].days_skipped += kept
    expected = [source.expected_batches(*r) for r in requests]
    progress.begin(None if None in expected else sum(expected), "batches", f"ingest {feed}")
    progress.detail(f"ingest {feed} ({cfg.kind}): {window.describe()}; {len(requests)} requests, {kept} stored "
                    "(symbol, day)s not fetched")
    batches = (batch for request in requests for batch in source.iter_batches(*request))
    for batch in batches:
        rows = 0
        for kind, df in batch.tables.items():
            if df.height == 0:
                continue
            df, bad = split_bad_ticks(feed, kind, df)
            if bad.height:
                bad_frames.append(bad)
            spec = specs[kind]
            result.record_write(spec.name, lake.write(spec, df, window.write_mode))
            rows += df.height
            if spec.name not in result.preview:
                result.preview[spec.name] = df.head(5)
        if batch.bad_rows.height:
            bad_frames.append(batch.bad_rows)
        progress.advance(1, rows)

    artifacts = project_artifacts(md)
    if bad_frames:
        bad = pl.concat(bad_frames, how="vertical_relaxed").select(list(BAD_ROWS_SCHEMA))
        result.bad_rows = bad.height
        result.bad_rows_by_symbol = dict(bad.group_by("symbol").len().sort("symbol").iter_rows())
        buf = io.BytesIO()
        bad.write_csv(buf)
        result.artifacts["bad_rows_url"] = artifacts.put("data_extractor_", "csv", buf.getvalue())
        progress.detail(f"{feed}: {result.bad_rows} bad rows reported -> {result.artifacts['bad_rows_url']}")
    result.checks[NO_BAD_ROWS] = CheckOutcome(
        NO_BAD_ROWS, result.bad_rows == 0, "The feed reported no bad rows.",
        metadata={"bad_rows": result.bad_rows, **{f"bad_rows/{s}": n for s, n in result.bad_rows_by_symbol.items()}},
    )
    empty = [t for t, w in result.tables.items() if w.rows_written == 0 and w.days_skipped == 0]
    if empty:
        result.warnings.append(f"feed {feed} gave no rows for {', '.join(empty)} in {window.describe()}")
    result.seconds = time.perf_counter() - began
    result.artifacts["summary_url"] = artifacts.put(
        "data_extractor_", "json", json.dumps(result.summary(), indent=2).encode())
    return result
