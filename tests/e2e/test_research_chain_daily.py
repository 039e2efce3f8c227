"""The whole chain on real data: 40 US stocks, daily, 1999-2021 (the csv feed over ``../shared/data``),
through the batch runner (Dagster jobs), from ingest to reports: the reports exist, the metrics are finite,
the equity curve equals an independent simulation, the metrics equal empyrical's, and the stress test
replays 2008 and March 2020."""

from __future__ import annotations

import io
import json
import math

import empyrical
import numpy as np
import pandas as pd
import polars as pl
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline import create_runner
from quantflow.storage.panels import daily_panel
from quantflow.storage.project import project_artifacts, project_lake
from tests.backtest.reference import rebalanced_equity
from tests.conftest import write_project

pytestmark = pytest.mark.slow

PROJECT = """\
project:
  name: us_daily
  symbols: [{symbols}]
  ingest:
    feeds:
      - name: equities
        kind: csv
        params:
          path: {path}
          filename_pattern: "{{symbol}}.csv"
          columns: {{date: timestamp, adjusted_close: adjusted_close, dividend: dividend_amount,
                    split_coefficient: split_coefficient}}
          adjust: adjusted_close
          bad_rows: drop
  label_engine:
    labels:
      - {{name: fwd20, method: fixed_horizon, input: cdm_bars_daily, horizon: 20}}
  feature_engine:
    input: cdm_bars_daily
    features:
      - {{name: ret, kind: returns, params: {{horizons: [5, 20, 60]}}}}
      - {{name: vol20, kind: volatility, params: {{window: 20}}}}
      - {{name: rsi14, kind: talib, params: {{function: RSI, timeperiod: 14}}}}
  models:
    - name: gb
      kind: ml
      label_set: fwd20
      estimator: HistGradientBoosting
      params: {{max_iter: 50, max_depth: 3}}
      walk_forward: {{train: 750, test: 250}}
      cv: {{n_splits: 3, embargo: 20}}
  validation: {{blocking: false}}
  portfolio:
    model: gb
    method: hrp
    covariance: {{estimator: ledoit, window: 120}}
    rebalance: {{every: monthly}}
    max_weight: 0.1
    max_turnover: 0.5
  backtest:
    fees: 0.0005
    slippage: 0.0005
    sweep: {{fees: [0.0, 0.0005, 0.001], execution_lag: [1, 2]}}
  reports:
    factors: [ret_20, rsi14]
"""


def test_the_whole_chain_on_40_us_stocks(shared_data, tmp_path, monkeypatch):
    folder = shared_data / "daily_us_equities"
    symbols = sorted(p.stem for p in folder.glob("*.csv") if p.stem != "constituents")
    assert len(symbols) == 40
    root = write_project(tmp_path / "us", PROJECT.format(symbols=", ".join(symbols), path=folder))
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".temp"))
    (root / ".temp").mkdir()
    runner = create_runner(get_metadata_manager(root))
    run = runner.run(stage="all", start_date="1999-11-01", end_date="2021-04-21")
    assert run.success, run.error
    assert {"pf_weights", "trading_report", "report_plot", "report_stress_test", "report_risk"} <= set(
        run.materializations)
    md = get_metadata_manager(root).load_all()

    store = project_artifacts(md, "backtest")
    report = json.loads(store.get(store.latest("trading_report_", "json")))
    m = report["metrics"]
    assert m["days"] > 3000 and m["orders"] > 1000
    for figure in ("total_return", "annual_return", "sharpe", "sortino", "calmar", "max_drawdown", "exposure",
                   "turnover_per_rebalance", "beta"):
        assert math.isfinite(m[figure]), figure
    assert math.isfinite(report["benchmarks"]["buy_and_hold"]["sharpe"])

    # the cross-checks: the equity curve by an independent simulation, the metrics by empyrical
    equity = pl.read_parquet(io.BytesIO(store.get(report["equity_curve_url"]))).to_pandas().set_index("date")
    rows = project_lake(md).read("pf_weights", list(md.symbols)).to_pandas()
    wide = rows.pivot_table(index=pd.to_datetime(rows["date"]), columns="symbol", values="weight")[list(md.symbols)]
    panel = daily_panel(md, pd.Timestamp("2021-04-21").date(), ("open", "close"))
    close = panel["close"].loc[wide.index[0]:].ffill()
    price = panel["open"].loc[wide.index[0]:]
    price = price.where(price.notna(), close)
    targets = pd.DataFrame(np.nan, index=close.index, columns=close.columns)
    at = close.index.get_indexer(wide.index) + 1
    keep = at < len(close)
    targets.iloc[at[keep]] = wide.to_numpy()[keep]
    expected = rebalanced_equity(close.to_numpy(), price.to_numpy(), targets.to_numpy(), 0.0005, 0.0005, 1e6)
    np.testing.assert_allclose(equity["strategy"].to_numpy(), expected[int(at[0]):], rtol=1e-8)
    r = pd.Series(equity["strategy_return"].to_numpy(), index=pd.to_datetime(equity.index))
    assert m["sharpe"] == pytest.approx(empyrical.sharpe_ratio(r, annualization=252), rel=1e-9)
    assert m["max_drawdown"] == pytest.approx(empyrical.max_drawdown(r), rel=1e-9)
    assert m["calmar"] == pytest.approx(empyrical.calmar_ratio(r, annualization=252), rel=1e-9)

    # the reports, with the named crises the data covers
    reports = project_artifacts(md, "reports")
    historical = reports.get(reports.latest("stress_test_historical_", "html")).decode()
    for crisis in ("2008 financial crisis", "COVID-19 crash (March 2020)", "2011 US downgrade"):
        assert crisis in historical
    assert reports.latest("plot_", "html") and len(reports.list("risk_var_")) == 3
    risk = {k: getattr(v, "value", v) for k, v in run.materializations["report_risk"].metadata.items()}
    assert risk["var_99"] >= risk["var_95"] > 0
