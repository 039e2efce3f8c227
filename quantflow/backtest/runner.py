"""Backtest stage entry point: the portfolio's weights traded by vectorbt, against two benchmarks.

``run(md, window)`` reads ``pf_weights`` (the rebalances decided inside the window, of the newest portfolio
configuration) and the daily opens and closes of the project's symbols, simulates the strategy from cash
at the window's first execution bar up to its end, and writes to ``backtest/`` in the blob store:
``trading_report_<ts>.json`` (the metrics, the benchmarks', the deflated Sharpe ratio of the model from the
validation stage, the sweep's leaderboard), ``equity_curve_<ts>.parquet`` (per date: the three equity
curves, returns, drawdown, exposure, cash) and ``orders_<ts>.parquet`` (every order); with
``backtest.sweep``, ``backtest_leaderboard_<ts>.csv``.

In ``skip_if_exists`` a window whose weights, prices, portfolio report, model DSR, configuration and code are as
at its last run, and whose artifacts are still the newest, is kept as it is (``storage.run_records``): nothing
is simulated again and no new artifact is stored.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import polars as pl

from quantflow.compute.overfitting import deflated_sharpe_ratio
from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.panels import daily_panel
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.run_records import (
    RunRecords,
    artifact_signatures,
    code_version,
    digest,
    partition_signatures,
)
from quantflow.storage.tables import BARS_DAILY_TABLE, WEIGHTS_TABLE

STAGE = "backtest"
HEADLINE = ("total_return", "annual_return", "sharpe", "sortino", "calmar", "max_drawdown")
# what a kept window reports again
KEPT_FIGURES = ("metrics", "benchmarks", "dsr", "sweep_size", "sweep_seconds", "vectorbt_seconds", "warnings",
                "artifacts")


@dataclass
class BacktestResult(StageResult):
    metrics: dict[str, Any] = field(default_factory=dict)
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)
    dsr: float | None = None
    sweep_size: int = 0
    sweep_seconds: float = 0.0
    vectorbt_seconds: float = 0.0
    leaderboard: pd.DataFrame | None = field(default=None, repr=False)
    kept: bool = False  # skip_if_exists, inputs as at the window's last run: nothing simulated again
    summary_artifacts: ClassVar[tuple[str, ...]] = ("trading_report_url",)

    def headline(self) -> str:
        m = self.metrics
        if not m:
            return "no rebalance to trade"
        ew = self.benchmarks.get("equal_weight", {})
        dsr = f", DSR {self.dsr:.2f}" if self.dsr is not None else ""
        return (f"return {_pct(m['total_return'], '+.2%')} ({_pct(m['annual_return'], '+.1%')}/yr), Sharpe "
                f"{_pct(m['sharpe'], '.2f')}, max drawdown {_pct(m['max_drawdown'], '.1%')}, {m['orders']} orders; "
                f"equal weight {_pct(ew.get('total_return'), '+.2%')}, Sharpe {_pct(ew.get('sharpe'), '.2f')}{dsr}"
                + ("; kept: weights, prices, configuration and code as at the window's last run" if self.kept else ""))

    def key_figures(self) -> dict[str, Any]:
        figures = {k: v for k, v in self.metrics.items() if v is not None}
        for name, bench in self.benchmarks.items():
            figures.update({f"{name}/{k}": v for k, v in bench.items() if k in HEADLINE and v is not None})
        if self.dsr is not None:
            figures["deflated_sharpe_ratio"] = self.dsr
        figures["vectorbt_seconds"] = round(self.vectorbt_seconds, 3)
        figures["kept"] = self.kept
        if self.sweep_size:
            figures["sweep_combinations"] = self.sweep_size
            figures["sweep_combinations_per_second"] = round(self.sweep_size / max(self.sweep_seconds, 1e-9), 1)
        return figures


def _pct(value, spec: str) -> str:
    """A figure for the headline; n/a when it does not exist (no variation: no Sharpe ratio)."""
    return "n/a" if value is None else format(value, spec)


def _weights(md: ProjectMetadata, window: RunWindow) -> tuple[pd.DataFrame, str | None, list[str]]:
    """Rebalance dates x symbols of the newest portfolio configuration, decided inside the window."""
    rows = project_lake(md).read(WEIGHTS_TABLE, list(md.symbols), window.start_date, window.end_date)
    if not rows.height:
        return pd.DataFrame(), None, []
    url = project_artifacts(md, "portfolio").latest("portfolio_optimization_", "json")
    key = json.loads(project_artifacts(md, "portfolio").get(url))["config"] if url else rows["config"][-1]
    mine = rows.filter(pl.col("config") == key)
    notes = [f"{WEIGHTS_TABLE}: {rows.height - mine.height:,} rows of earlier portfolio configurations are not "
             "traded"] if mine.height < rows.height else []
    frame = mine.to_pandas()
    frame["date"] = pd.to_datetime(frame["date"])
    wide = frame.pivot_table(index="date", columns="symbol", values="weight", aggfunc="last")
    return wide.reindex(columns=list(md.symbols)).fillna(0.0).sort_index(), key, notes


def model_dsr(md: ProjectMetadata, model: str) -> float | None:
    """The deflated Sharpe ratio of the model's newest validation report, when there is one."""
    store = project_artifacts(md, f"models/{model}")
    url = store.latest("validation_", "json")
    value = json.loads(store.get(url)).get("dsr") if url else None
    return float(value) if isinstance(value, (int, float)) else None


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pl.from_pandas(frame).write_parquet(buffer)
    return buffer.getvalue()


def run(md: ProjectMetadata, window: RunWindow, *, progress: Progress | None = None) -> BacktestResult:
    from quantflow.backtest import engine

    progress = progress or Progress()
    began = time.perf_counter()
    cfg, pf_cfg = md.project.backtest, md.project.portfolio
    if cfg is None or pf_cfg is None:
        raise StageError(f"{STAGE}: configure project.portfolio and project.backtest")
    result = BacktestResult(STAGE, window)
    store = project_artifacts(md, "backtest")
    records, scope = RunRecords(project_lake(md), STAGE), f"{window.start_date}..{window.end_date}"
    inputs = _inputs_key(md, window)  # before anything is read
    if window.write_mode == "skip_if_exists" and records.restore(
            scope, inputs, lambda last: artifact_signatures(store, last["artifacts"].values()), result, KEPT_FIGURES):
        result.kept = True
        progress.begin(1, "windows", "backtest")
        progress.advance(1)
        if "leaderboard_url" in result.artifacts:
            result.leaderboard = pd.read_csv(io.BytesIO(store.get(result.artifacts["leaderboard_url"])), index_col=0)
        progress.detail(result.headline())
        result.seconds = time.perf_counter() - began
        return result
    weights, key, notes = _weights(md, window)
    result.warnings += notes
    if weights.empty:
        return _nothing_traded(md, result, f"no rebalance in {WEIGHTS_TABLE} between {window.start_date} and "
                               f"{window.end_date}: nothing to backtest (run the portfolio first)", began)
    panel = daily_panel(md, window.end_date, ("open", "close"))
    listed = panel["close"].loc[weights.index[0]:]  # NaN where a symbol has no bar (not listed yet, delisted)
    full_close = listed.ffill()
    full_price = (panel["open"] if cfg.execution_price == "open" else panel["close"]).loc[full_close.index[0]:]
    full_price = full_price.where(full_price.notna(), full_close)  # no bar that day: the last close
    close, price = full_close, full_price
    progress.begin(3 if cfg.sweep else 2, "simulations", "backtest")
    vbt_began = time.perf_counter()
    sizes = engine.execution_sizes(weights, close.index, cfg.execution_lag)
    if not sizes.notna().any().any():
        return _nothing_traded(md, result, f"every rebalance's execution bar (+{cfg.execution_lag}) lies after "
                               f"{window.end_date}: nothing traded", began)
    start = sizes.index[sizes.notna().any(axis=1)][0]  # from cash at the first execution bar
    close, price, sizes, listed = close.loc[start:], price.loc[start:], sizes.loc[start:], listed.loc[start:]
    costs = {"fees": cfg.fees, "slippage": cfg.slippage, "init_cash": cfg.init_cash}
    strategy = engine.simulate(close, price, sizes, **costs)
    result.vectorbt_seconds = time.perf_counter() - vbt_began
    progress.advance(1)
    curves, orders_of = {"strategy": strategy}, {"strategy": sizes}
    for name, hold in (("equal_weight", False), ("buy_and_hold", True)):
        orders_of[name] = engine.equal_weight_sizes(sizes, listed, hold)
        curves[name] = engine.simulate(close, price, orders_of[name], **costs)
    progress.advance(1)
    returns = {name: pf.returns() for name, pf in curves.items()}
    result.metrics = {**engine.metrics(returns["strategy"], cfg.year_days, returns["equal_weight"]),
                      **engine.trading_figures(strategy, sizes)}
    result.benchmarks = {name: {**engine.metrics(returns[name], cfg.year_days),
                                **engine.trading_figures(curves[name], orders_of[name])}
                         for name in ("equal_weight", "buy_and_hold")}
    result.dsr = model_dsr(md, pf_cfg.model)
    report: dict[str, Any] = {"window": [str(window.start_date), str(window.end_date)], "portfolio_config": key,
                              "model": pf_cfg.model, "backtest": cfg.model_dump(), "first_execution": str(start.date()),
                              "metrics": result.metrics, "benchmarks": result.benchmarks,
                              "model_deflated_sharpe_ratio": result.dsr}
    if cfg.sweep:
        grid = cfg.sweep.grid(cfg)
        sweep_began = time.perf_counter()
        board, sweep_returns = engine.sweep(full_close, full_price, weights, grid, cfg.init_cash, cfg.year_days,
                                            start)
        result.sweep_seconds, result.sweep_size = time.perf_counter() - sweep_began, len(grid)
        board["deflated_sharpe_ratio"] = _sweep_dsr(board, sweep_returns)
        result.leaderboard = board
        result.artifacts["leaderboard_url"] = store.put("backtest_leaderboard_", "csv", board.to_csv().encode())
        report["sweep"] = {"combinations": len(grid), "seconds": result.sweep_seconds,
                           "best": board.iloc[0].to_dict(), "leaderboard_url": result.artifacts["leaderboard_url"]}
        progress.advance(1)
    report["equity_curve_url"] = store.put("equity_curve_", "parquet", _parquet(_equity_table(curves, returns)))
    report["orders_url"] = store.put("orders_", "parquet", _parquet(_orders_table(strategy)))
    result.artifacts["trading_report_url"] = store.put("trading_report_", "json",
                                                       json.dumps(report, indent=2, default=str).encode())
    result.artifacts["equity_curve_url"] = report["equity_curve_url"]
    result.artifacts["orders_url"] = report["orders_url"]
    records.save(scope, inputs, artifact_signatures(store, result.artifacts.values()),
                 {f: getattr(result, f) for f in KEPT_FIGURES})
    progress.detail(result.headline())
    result.seconds = time.perf_counter() - began
    return result


def _inputs_key(md: ProjectMetadata, window: RunWindow) -> str:
    """What the window's backtest is computed from: the configuration, the code, the weights and the newest
    portfolio report (its configuration is the one traded), the daily prices up to the window's end and the
    model's deflated Sharpe ratio (reported beside)."""
    lake, pf_cfg = project_lake(md), md.project.portfolio
    tables = [WEIGHTS_TABLE, BARS_DAILY_TABLE]
    return digest(md.project.backtest.model_dump_json(), pf_cfg.model_dump_json(),
                  code_version(__package__, "quantflow.compute",
                               libraries=("vectorbt", "pandas", "numpy", "numba", "scipy")),
                  str(window.start_date), str(window.end_date), list(md.symbols),
                  project_artifacts(md, "portfolio").latest("portfolio_optimization_", "json"),
                  model_dsr(md, pf_cfg.model), partition_signatures(lake, tables, md.symbols, None, window.end_date))


def _equity_table(curves: dict[str, Any], returns: dict[str, pd.Series]) -> pd.DataFrame:
    """Per date: the three equity curves and their returns, the strategy's drawdown, gross exposure, cash."""
    equity = pd.DataFrame({name: pf.value() for name, pf in curves.items()})
    for name in curves:
        equity[f"{name}_return"] = returns[name]
    strategy, value = curves["strategy"], equity["strategy"]
    equity["drawdown"] = value / value.cummax() - 1
    equity["gross_exposure"] = strategy.asset_value(group_by=False).abs().sum(axis=1) / value
    equity["cash"] = strategy.cash()
    return equity.rename_axis("date").reset_index()


def _orders_table(strategy) -> pd.DataFrame:
    """Every order of the strategy: symbol, date, size, price, fees, side (vectorbt's records)."""
    orders = strategy.orders.records_readable.rename(columns={"Column": "symbol", "Timestamp": "date"})
    orders.columns = [c.lower().replace(" ", "_") for c in orders.columns]
    return orders


def _nothing_traded(md: ProjectMetadata, result: BacktestResult, why: str, began: float) -> BacktestResult:
    """A trading report that says so: the reports then show nothing rather than an older backtest."""
    result.warnings.append(why)
    report = {"window": [str(result.window.start_date), str(result.window.end_date)], "metrics": {}, "note": why}
    result.artifacts["trading_report_url"] = project_artifacts(md, "backtest").put(
        "trading_report_", "json", json.dumps(report, indent=2).encode())
    result.seconds = time.perf_counter() - began
    return result


def _sweep_dsr(board: pd.DataFrame, returns: pd.DataFrame) -> list[float | None]:
    """Each combination's deflated Sharpe ratio against the best of all of them (per-day Sharpe, trials'
    variance ddof=1): how much of the best result the number of combinations tried explains."""
    from scipy.stats import kurtosis, skew

    daily = returns.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):  # a combination that never trades: no Sharpe ratio
        sharpes = daily.mean(axis=0) / daily.std(axis=0, ddof=1)
    finite = sharpes[np.isfinite(sharpes)]
    if finite.size < 2 or daily.shape[0] < 3:
        return [None] * len(board)
    variance = float(np.var(finite, ddof=1))
    out = []
    for combo in board.index:
        r, sr = daily[:, combo], sharpes[combo]
        ok = np.isfinite(sr) and np.std(r) > 0
        out.append(float(deflated_sharpe_ratio(sr, r.size, float(skew(r)), float(kurtosis(r, fisher=False)),
                                               finite.size, variance)) if ok else None)
    return out
