"""Portfolio stage entry point: one model's out-of-sample predictions -> target weights per rebalance date.

``run(md, window)`` reads ``pred_<model>`` (the newest configuration's record: the one its card and the
validation stage judge) and the daily closes of every project symbol up to the window's end, replays the
rebalances from the first usable prediction (each one sees only what was known at its close; the turnover
cap makes a rebalance depend on the previous one, so the path is replayed rather than read back), and
replaces ``pf_weights`` up to the window's end with that path, for every project symbol (the table equals
what its inputs imply; the window's start only chooses the rebalances the summary reports).
``portfolio/portfolio_optimization_<ts>.json`` holds the configuration and each rebalance.

In ``skip_if_exists`` a window whose predictions, prices, configuration and code are as at its last run, whose
rows are still those it wrote and whose optimization report is still the newest, is kept as it is
(``storage.run_records``): nothing is optimized again and no new report is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import polars as pl

from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.panels import daily_panel, model_predictions, newest_config
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.run_records import (
    RunRecords,
    artifact_signatures,
    code_version,
    digest,
    partition_signatures,
)
from quantflow.storage.schemas import UTC_NS, WEIGHTS_SCHEMA, TableSpec
from quantflow.storage.tables import BARS_DAILY_TABLE, WEIGHTS_TABLE, predictions_table
from quantflow.storage.writes import WriteResult

STAGE = "portfolio"
WEIGHTS_SPEC = TableSpec(WEIGHTS_TABLE, WEIGHTS_SCHEMA, "year", ("symbol", "date"))
# what a kept window reports again
KEPT_FIGURES = ("rebalances", "mean_held", "mean_turnover", "mean_gross", "last_weights", "warnings", "artifacts")


@dataclass
class PortfolioResult(StageResult):
    method: str = ""
    model: str = ""
    rebalances: int = 0
    mean_held: float = 0.0
    mean_turnover: float = 0.0
    mean_gross: float = 0.0
    last_weights: dict[str, float] | None = None
    kept: bool = False  # skip_if_exists, inputs as at the window's last run: nothing optimized again
    summary_artifacts: ClassVar[tuple[str, ...]] = ("optimization_url",)

    def headline(self) -> str:
        last = ", ".join(f"{s} {w:+.2f}" for s, w in (self.last_weights or {}).items() if abs(w) > 1e-9)
        return (f"{self.method} on {self.model}: {self.rebalances} rebalances, {self.mean_held:.1f} symbols held, "
                f"gross {self.mean_gross:.2f}, turnover {self.mean_turnover:.2f}/rebalance"
                + (f"; last: {last}" if last else "")
                + ("; kept: predictions, prices, configuration and code as at the window's last run" if self.kept
                   else ""))

    def key_figures(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model, "rebalances": self.rebalances,
                "mean_symbols_held": round(self.mean_held, 4), "mean_gross_exposure": round(self.mean_gross, 6),
                "mean_turnover": round(self.mean_turnover, 6), "kept": self.kept}


def config_hash(cfg, prediction_config: str | None) -> str:
    return hashlib.sha256(f"{cfg.model_dump_json()}\x1f{prediction_config}".encode()).hexdigest()[:16]


def _rows(path, model: str, method: str, key: str) -> pl.DataFrame:
    rows = []
    for r in path.rebalances:
        day = r.date.date()
        for j, symbol in enumerate(path.symbols):
            rows.append((symbol, day, float(r.weights[j]), float(r.target[j]),
                         None if np.isnan(r.signal[j]) else float(r.signal[j]),
                         None if np.isnan(r.expected[j]) else float(r.expected[j])))
    frame = pl.DataFrame(rows, schema=["symbol", "date", "weight", "target", "signal", "expected_return"],
                         orient="row")
    return frame.with_columns(
        ts=pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").cast(UTC_NS),
        method=pl.lit(method), model=pl.lit(model), config=pl.lit(key))


def run(md: ProjectMetadata, window: RunWindow, *, progress: Progress | None = None) -> PortfolioResult:
    from quantflow.portfolio import engine

    progress = progress or Progress()
    began = time.perf_counter()
    cfg = md.project.portfolio
    if cfg is None:
        raise StageError(f"{STAGE}: project.portfolio is not configured")
    result = PortfolioResult(STAGE, window, method=cfg.method, model=cfg.model)
    lake = project_lake(md)
    records, scope = RunRecords(lake, STAGE), f"{window.start_date}..{window.end_date}"
    inputs = _inputs_key(md, window)  # before anything is read
    if window.write_mode == "skip_if_exists" and records.restore(
            scope, inputs, lambda last: _outputs(md, window, last["artifacts"]), result, KEPT_FIGURES):
        result.kept = True
        progress.begin(1, "windows", f"portfolio {cfg.method} on {cfg.model}")
        progress.advance(1)
        result.record_write(WEIGHTS_TABLE, WriteResult(WEIGHTS_TABLE), lake.url(WEIGHTS_TABLE))
        stored = lake.read(WEIGHTS_TABLE, list(md.symbols), window.start_date, window.end_date)
        if stored.height:
            result.preview[WEIGHTS_TABLE] = stored.filter(pl.col("weight") != 0).head(5)
        progress.detail(result.headline())
        result.seconds = time.perf_counter() - began
        return result
    pred, pred_config, notes = model_predictions(md, cfg.model, window.end_date)
    result.warnings += notes
    close = daily_panel(md, window.end_date)["close"]
    if not pred.height:
        result.warnings.append(f"model {cfg.model} has no out-of-sample predictions up to {window.end_date}: "
                               "no weights (run the model first)")
    frame = pred.select("symbol", "date", "ts", "prediction").sort("ts").to_pandas() if pred.height else \
        pd.DataFrame({"symbol": [], "date": [], "prediction": []})
    frame["date"] = pd.to_datetime(frame["date"])
    signals = engine.latest_signals(frame, close.index, cfg.signal_max_age).reindex(columns=close.columns)
    plan = engine.plan_rebalances(cfg, close.index, signals, pd.Timestamp(window.end_date))
    progress.begin(len(plan or []), "rebalances", f"portfolio {cfg.method} on {cfg.model}")
    path = engine.weight_path(cfg, close, signals, pd.Timestamp(window.end_date), on_rebalance=progress.advance)
    result.warnings += path.notes if pred.height else []
    empty = [r for r in path.rebalances if r.note]
    if empty:
        result.warnings.append(f"portfolio: {len(empty)} of {len(path.rebalances)} rebalances held only cash, "
                               f"e.g. {empty[-1].date.date()}: {empty[-1].note}")
    key = config_hash(cfg, pred_config)
    rows = _rows(path, cfg.model, cfg.method, key) if path.rebalances else pl.DataFrame(schema=WEIGHTS_SCHEMA)
    # the whole replayed path, for every symbol: rows of an earlier configuration or of a symbol run alone
    # cannot survive next to it (a portfolio is all its symbols at once, whatever the window's symbols)
    first_day = close.index[0].date()
    result.record_write(WEIGHTS_TABLE, lake.replace(WEIGHTS_SPEC, rows, md.symbols, first_day, window.end_date),
                        lake.url(WEIGHTS_TABLE))
    mine = rows.filter(pl.col("date").is_between(window.start_date, window.end_date))
    if mine.height:
        result.preview[WEIGHTS_TABLE] = mine.filter(pl.col("weight") != 0).head(5)
    inside = [r for r in path.rebalances if window.start_date <= r.date.date() <= window.end_date]
    if inside:
        result.rebalances = len(inside)
        result.mean_held = float(np.mean([np.count_nonzero(r.weights) for r in inside]))
        result.mean_gross = float(np.mean([np.abs(r.weights).sum() for r in inside]))
        result.mean_turnover = float(np.mean([r.turnover for r in inside]))
        result.last_weights = dict(zip(path.symbols, map(float, inside[-1].weights)))
    report = {"model": cfg.model, "prediction_config": pred_config, "config": key,
              "portfolio": cfg.model_dump(), "symbols": path.symbols, **result.key_figures(),
              "rebalances": [{"date": r.date.date().isoformat(), "weights": dict(zip(path.symbols, map(float, r.weights))),
                              "target": dict(zip(path.symbols, map(float, r.target))), "turnover": r.turnover,
                              "note": r.note} for r in path.rebalances],
              "warnings": result.warnings}
    result.artifacts["optimization_url"] = project_artifacts(md, "portfolio").put(
        "portfolio_optimization_", "json", json.dumps(report, indent=2, default=str).encode())
    records.save(scope, inputs, _outputs(md, window, result.artifacts), {f: getattr(result, f) for f in KEPT_FIGURES})
    progress.detail(result.headline())
    result.seconds = time.perf_counter() - began
    return result


def _inputs_key(md: ProjectMetadata, window: RunWindow) -> str:
    """What the window's weights are computed from: the configuration, the code, the model's predictions and
    its newest configuration, and the daily prices of every project symbol up to the window's end."""
    cfg, lake = md.project.portfolio, project_lake(md)
    tables = [predictions_table(cfg.model), BARS_DAILY_TABLE]
    return digest(cfg.model_dump_json(), code_version(__package__, "quantflow.compute",
                                                      libraries=("riskfolio-lib", "pandas", "numpy", "scipy")),
                  str(window.start_date), str(window.end_date), list(md.symbols), newest_config(md, cfg.model),
                  partition_signatures(lake, tables, md.symbols, None, window.end_date))


def _outputs(md: ProjectMetadata, window: RunWindow, artifacts: dict[str, str]) -> dict[str, str | None]:
    """The weights written (every project symbol up to the window's end) and the optimization report, while it
    is the newest (the backtest reads the newest)."""
    outputs: dict[str, str | None] = partition_signatures(project_lake(md), [WEIGHTS_TABLE], md.symbols, None,
                                                          window.end_date)
    return outputs | artifact_signatures(project_artifacts(md, "portfolio"), artifacts.values())
