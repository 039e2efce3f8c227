"""Label-engine stage entry point: read each label set's bar table, label every symbol, write ``cdm_labels``.

A label looks at bars after its event (up to its barrier), and a volatility target or a CUSUM filter depends
on all the bars before it; so each symbol is labelled over all of its stored bars (milliseconds for daily
bars: the kernels label millions of bars a second). An event is stored once its label is decided (its
barrier within the bars); the concurrency and uniqueness of an event also depend on the events overlapping
it. So a run rewrites, in every write mode, the rows from two label horizons before the window's start
(per symbol, counted in trading days of the input: at least that many bars) to its end: the events a previous run could not decide yet,
and their neighbours, get their final values; and a daily run of one new day labels the events that day's
bar decided. A label set without a horizon in bars (a vertical barrier in time, or none) rewrites the
symbol's whole history.

In ``skip_if_exists`` a window whose input bars (all of them: a label looks past the window's end),
configuration and code are as at its last run, and whose rows are still those it wrote, is kept as it is
(``storage.run_records``).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from quantflow.compute.stage import Progress, RunWindow, StageResult
from quantflow.metadata.manager import ProjectMetadata
from quantflow.metadata.schema.label_engine import LabelEngineConfig
from quantflow.storage.lake import Lake
from quantflow.storage.project import project_lake
from quantflow.storage.run_records import RunRecords, code_version, digest, partition_signatures
from quantflow.storage.schemas import TableSpec
from quantflow.storage.tables import LABELS_TABLE, partition_width
from quantflow.storage.writes import WriteResult

STAGE = "label_engine"
KEPT_FIGURES = ("events", "balance", "uniqueness", "warnings")  # what a kept window reports again


@dataclass
class LabelEngineResult(StageResult):
    events: dict[str, int] = field(default_factory=dict)  # label set -> events labelled in the window
    balance: dict[str, dict[str, float]] = field(default_factory=dict)  # label set -> label -> share
    uniqueness: dict[str, float] = field(default_factory=dict)  # label set -> mean average uniqueness
    kept: bool = False  # skip_if_exists, inputs as at the window's last run: its rows kept, nothing computed

    def headline(self) -> str:
        sets = ", ".join(f"{name} {n:,}" for name, n in self.events.items())
        kept = " kept: bars, configuration and code as at the window's last run" if self.kept else ""
        return f"{sum(self.events.values()):,} labelled events ({sets}){kept} in {self.seconds:.1f}s"

    def key_figures(self) -> dict[str, Any]:
        return {"events": dict(self.events), "label_balance": {k: dict(v) for k, v in self.balance.items()},
                "mean_uniqueness": {k: round(v, 4) for k, v in self.uniqueness.items()}, "kept": self.kept}


def _rewrite_from(bars: pl.DataFrame, label_set, window: RunWindow) -> dt.date:
    """The first date to rewrite for one symbol: two label horizons before the window's start, counted in
    trading days (exact for daily bars, more than enough for intraday ones), or the symbol's first bar when
    the horizon is not a number of bars."""
    from quantflow.label_engine.engine import horizon_bars

    dates = bars["date"].unique().sort()
    horizon = horizon_bars(label_set)
    if horizon is None:
        return dates[0]
    before = dates.filter(dates < window.start_date)
    return before[max(0, before.len() - 2 * horizon)] if before.len() else window.start_date


def run(md: ProjectMetadata, window: RunWindow, *, progress: Progress | None = None) -> LabelEngineResult:
    """Label the window's symbols with every configured label set."""
    from quantflow.label_engine.engine import LABEL_SCHEMA, label_bars

    progress = progress or Progress()
    cfg = md.project.label_engine
    if cfg is None:
        raise ValueError("project_metadata/project.yaml has no project.label_engine section")
    began = time.perf_counter()
    result = LabelEngineResult(STAGE, window)
    lake = project_lake(md)
    symbols = list(window.symbols)
    records, scope = RunRecords(lake, STAGE), f"{window.start_date}..{window.end_date} {','.join(sorted(symbols))}"
    key = _inputs_key(lake, cfg, symbols, window)  # before anything is read
    if window.write_mode == "skip_if_exists" and records.restore(scope, key, _outputs(lake, symbols, window),
                                                                result, KEPT_FIGURES):
        result.kept = True
        progress.begin(1, "windows", "label engine")
        progress.advance(1)
        progress.detail("label engine: bars, configuration and code as at the window's last run: its rows kept")
        result.record_write(LABELS_TABLE, WriteResult(LABELS_TABLE), lake.url(LABELS_TABLE))
        stored = lake.read(LABELS_TABLE, symbols[:1], window.start_date, window.end_date)
        if stored.height:
            result.preview[LABELS_TABLE] = stored.head(5)
        result.seconds = time.perf_counter() - began
        return result
    progress.begin(len(cfg.labels) * len(symbols), "series", "label engine")  # (label set, symbol) pairs
    found: dict[str, list[pl.DataFrame]] = {s.name: [] for s in cfg.labels}
    since = {symbol: window.start_date for symbol in symbols}
    for symbol in symbols:
        inputs: dict[str, pl.DataFrame] = {}  # each input table read once per symbol, whatever sets share it
        for label_set in cfg.labels:
            if label_set.input not in inputs:
                inputs[label_set.input] = lake.read(label_set.input, [symbol])
            bars = inputs[label_set.input]
            if bars.height:
                found[label_set.name].append(label_bars(bars, label_set))
                since[symbol] = min(since[symbol], _rewrite_from(bars, label_set, window))
            progress.advance(1, bars.height)
    frames = []
    for label_set in cfg.labels:
        if not found[label_set.name]:
            result.warnings.append(f"label set {label_set.name}: no {label_set.input} rows for the window's symbols")
        labelled = pl.concat(found[label_set.name]) if found[label_set.name] else pl.DataFrame(schema=LABEL_SCHEMA)
        frames.append(labelled)
        in_window = labelled.filter(pl.col("date").is_between(window.start_date, window.end_date))
        result.events[label_set.name] = in_window.height
        if in_window.height:
            shares = in_window["label"].value_counts(normalize=True, name="share").sort("label")
            result.balance[label_set.name] = {str(k): round(v, 4) for k, v in shares.iter_rows()}
            result.uniqueness[label_set.name] = float(in_window["uniqueness"].mean())
        progress.detail(f"label engine: {label_set.name} ({label_set.method} on {label_set.input}): "
                        f"{in_window.height:,} events in the window")
    labels = pl.concat(frames)
    spec = TableSpec(LABELS_TABLE, dict(labels.schema), partition_width(LABELS_TABLE),
                     ("symbol", "date", "label_set", "ts"))
    for symbol in symbols:
        mine = labels.filter((pl.col("symbol") == symbol) & pl.col("date").is_between(since[symbol], window.end_date))
        result.record_write(LABELS_TABLE, lake.replace(spec, mine, [symbol], since[symbol], window.end_date))
    result.record_write(LABELS_TABLE, WriteResult(LABELS_TABLE), lake.url(LABELS_TABLE))
    if labels.height:
        result.preview[LABELS_TABLE] = labels.head(5)
    records.save(scope, key, _outputs(lake, symbols, window), {f: getattr(result, f) for f in KEPT_FIGURES})
    result.seconds = time.perf_counter() - began
    return result


def _inputs_key(lake: Lake, cfg: LabelEngineConfig, symbols: list[str], window: RunWindow) -> str:
    """What the window's labels are computed from: the configuration, the code, the symbols and every stored
    partition of the bar tables the label sets read (all history: barriers look past the window's end)."""
    tables = sorted({s.input for s in cfg.labels})
    return digest(cfg.model_dump_json(), code_version(__package__, "quantflow.compute",
                                                      libraries=("polars", "numpy", "numba")),
                  sorted(symbols), str(window.start_date), str(window.end_date),
                  partition_signatures(lake, tables, sorted(symbols)))


def _outputs(lake: Lake, symbols: list[str], window: RunWindow) -> dict[str, str]:
    return partition_signatures(lake, [LABELS_TABLE], symbols, None, window.end_date)
