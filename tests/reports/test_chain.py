"""Portfolio -> backtest -> reports on a small synthetic project (its models trained for real): the
stage-level cross-checks, derived tables that equal their inputs, and every report opened in Chromium."""

from __future__ import annotations

import io
import json
import math

import empyrical
import numpy as np
import pandas as pd
import polars as pl
import pytest

from quantflow.backtest import runner as backtest_runner
from quantflow.models import runner as model_runner
from quantflow.portfolio import runner as portfolio_runner
from quantflow.reports import runner as reports_runner
from quantflow.storage.panels import daily_panel
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.validation import runner as validation_runner
from tests.backtest.reference import rebalanced_equity
from tests.conftest import window
from tests.models.conftest import DAYS, RF, build_project
from tests.reports.browser import render

pytestmark = pytest.mark.slow

RESEARCH = RF + """\
    - name: net
      kind: dl
      label_set: fwd5
      network: mlp
      params: {hidden: 8, epochs: 3}
      walk_forward: {train: 120, test: 40}
      cv: {n_splits: 3, embargo: 5}
  portfolio:
    model: rf
    method: hrp
    long_only: false
    covariance: {estimator: ledoit, window: 30}
    rebalance: {every: weekly}
    max_weight: 0.5
    max_turnover: 0.4
  backtest:
    fees: 0.001
    slippage: 0.0005
    sweep: {fees: [0.0, 0.001], execution_lag: [1, 2]}
  reports:
    rolling_window: 20
    stress: {window: 10, worst: 2, simulations: 5000}
"""


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    md = build_project(tmp_path_factory.mktemp("research"), models=RESEARCH, momentum=0.2)
    whole = window(md, DAYS[0], DAYS[-1])
    for model in ("rf", "net"):
        model_runner.run(md, whole, model=model)
        validation_runner.run(md, whole, model=model)
    results = {"portfolio": portfolio_runner.run(md, whole), "backtest": backtest_runner.run(md, whole)}
    for report in reports_runner.REPORTS:
        results[report] = reports_runner.run(md, whole, report=report)
    return md, whole, results


def _trading_report(md, result):
    store = project_artifacts(md, "backtest")
    report = json.loads(store.get(result.artifacts["trading_report_url"]))
    equity = pl.read_parquet(io.BytesIO(store.get(report["equity_curve_url"]))).to_pandas().set_index("date")
    return report, equity


def test_weights_are_written_for_every_rebalance_and_equal_a_rerun_of_part_of_the_window(research):
    md, whole, results = research
    assert results["portfolio"].rebalances >= 30 and not results["portfolio"].warnings
    stored = project_lake(md).read("pf_weights", list(md.symbols)).sort("date", "symbol")
    assert stored.height == results["portfolio"].rebalances * len(md.symbols)
    # a run over the second half replays the path from the first prediction: same weights there
    part = window(md, DAYS[len(DAYS) // 2], DAYS[-1])
    portfolio_runner.run(md, part)
    again = project_lake(md).read("pf_weights", list(md.symbols)).sort("date", "symbol")
    assert again.select("symbol", "date", "weight").equals(stored.select("symbol", "date", "weight"))


def test_backtest_equity_equals_numpy_and_metrics_equal_empyrical(research):
    md, _, results = research
    report, equity = _trading_report(md, results["backtest"])
    weights = project_lake(md).read("pf_weights", list(md.symbols)).to_pandas()
    wide = weights.pivot_table(index=pd.to_datetime(weights["date"]), columns="symbol", values="weight")
    panel = daily_panel(md, DAYS[-1], ("open", "close"))
    close, price = panel["close"].loc[wide.index[0]:], panel["open"].loc[wide.index[0]:]
    targets = pd.DataFrame(np.nan, index=close.index, columns=close.columns)
    at = close.index.get_indexer(wide.index) + 1  # executed at the next bar's open
    keep = at < len(close)
    targets.iloc[at[keep]] = wide.to_numpy()[keep]
    expected = rebalanced_equity(close.to_numpy(), price.to_numpy(), targets.to_numpy(), 0.001, 0.0005, 1e6)
    first = int(at[0])
    np.testing.assert_allclose(equity["strategy"].to_numpy(), expected[first:], rtol=1e-9)
    r = pd.Series(equity["strategy_return"].to_numpy(), index=pd.to_datetime(equity.index))
    m = report["metrics"]
    assert m["sharpe"] == pytest.approx(empyrical.sharpe_ratio(r, annualization=252), rel=1e-9)
    assert m["max_drawdown"] == pytest.approx(empyrical.max_drawdown(r), rel=1e-9)
    assert m["sortino"] == pytest.approx(empyrical.sortino_ratio(r, annualization=252), rel=1e-9)
    assert m["annual_return"] == pytest.approx(empyrical.annual_return(r, annualization=252), rel=1e-9)
    for figure in ("total_return", "sharpe", "max_drawdown", "turnover_per_rebalance", "exposure"):
        assert math.isfinite(m[figure])
    assert report["model_deflated_sharpe_ratio"] is not None  # from the validation stage
    assert report["sweep"]["combinations"] == 4


def test_every_report_is_written_with_finite_key_figures(research):
    md, _, results = research
    assert set(results["plot"].artifacts) == {"plot_url"}
    assert set(results["stress_test"].artifacts) == {"stress_test_historical_url", "stress_test_hypothetical_url"}
    assert len(results["risk"].artifacts) == 15  # 5 kinds x html, png, csv
    for name in ("plot", "stress_test", "risk"):
        figures = results[name].key_figures()
        assert figures and all(math.isfinite(v) for v in figures.values())
    assert results["risk"].figures["var_99"] >= results["risk"].figures["var_95"] > 0
    var_csv = pd.read_csv(results["risk"].artifacts["risk_var_csv_url"])
    assert list(var_csv["level"]) == [0.95, 0.99]


def test_reports_render_in_chromium_without_console_errors(research):
    md, _, results = research
    pages = [url for r in ("plot", "stress_test", "risk") for url in results[r].artifacts.values()
             if url.endswith(".html")]
    assert len(pages) == 8
    for url in pages:
        from pathlib import Path

        page = render(Path(url))
        assert page.console == [], f"{url}: {page.console}"
        charts = page.charts
        assert charts, f"{url}: no chart"
        # plotly marks a chart it drew js-plotly-plot; its SVG layers follow
        assert all("js-plotly-plot" in cls for _, cls in charts), f"{url}: {charts}"
        assert page.dom.count('class="main-svg"') >= len(charts)


def test_pngs_are_pictures_not_blank_files(research):
    import matplotlib.image as mpimg

    md, _, results = research
    pngs = [url for key, url in results["risk"].artifacts.items() if key.endswith("_png_url")]
    assert len(pngs) == 5
    for url in pngs:
        image = mpimg.imread(url)
        assert image.shape[0] >= 300 and image.shape[1] >= 600
        # a drawn chart has many colours, and far from all pixels are background
        assert image[..., :3].std() > 0.05
        assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 50


def test_a_new_portfolio_configuration_replaces_the_whole_path_even_from_part_of_the_window(research):
    """Runs last in this module (it restores the original weights at the end)."""
    import dataclasses

    md, whole, _ = research
    lake = project_lake(md)
    herc = dataclasses.replace(md, project=md.project.model_copy(update={
        "portfolio": md.project.portfolio.model_copy(update={"method": "herc"})}))
    portfolio_runner.run(herc, window(md, DAYS[len(DAYS) // 2], DAYS[-1], symbols=["AAA"]))
    partial = lake.read("pf_weights", list(md.symbols)).sort("date", "symbol")
    assert partial["method"].unique().to_list() == ["herc"]  # no row of the earlier configuration is left
    portfolio_runner.run(herc, whole)
    full = lake.read("pf_weights", list(md.symbols)).sort("date", "symbol")
    assert partial.select("symbol", "date", "weight").equals(full.select("symbol", "date", "weight"))
    portfolio_runner.run(md, whole)
    assert lake.read("pf_weights", list(md.symbols))["method"].unique().to_list() == ["hrp"]


def test_a_rerun_with_nothing_changed_keeps_weights_backtest_and_reports_and_a_change_computes_again(
        research, monkeypatch):
    """skip_if_exists keeps what the last run of the window made while its inputs, configuration and code are
    as they were and its rows and artifacts are still those it wrote, the artifacts still the newest: nothing
    is optimized, simulated or drawn, no artifact is added, and the figures are the last run's."""
    import os

    from quantflow.backtest import engine as backtest_engine
    from quantflow.portfolio import engine as portfolio_engine

    md, whole, _ = research

    def chain(mode="skip_if_exists"):
        w = window(md, whole.start_date, whole.end_date, write_mode=mode)
        return {"portfolio": portfolio_runner.run(md, w), "backtest": backtest_runner.run(md, w),
                **{r: reports_runner.run(md, w, report=r) for r in reports_runner.REPORTS}}

    def artifacts():
        return {f: project_artifacts(md, f).list() for f in ("portfolio", "backtest", "reports")}

    first = chain()  # computes or keeps, whatever the tests before left
    weights, listed = project_lake(md).read("pf_weights", list(md.symbols)), artifacts()
    calls = []
    monkeypatch.setattr(portfolio_engine, "weight_path", lambda *a, real=portfolio_engine.weight_path, **k:
                        calls.append("portfolio") or real(*a, **k))
    monkeypatch.setattr(backtest_engine, "simulate", lambda *a, real=backtest_engine.simulate, **k:
                        calls.append("backtest") or real(*a, **k))
    for name, build in list(reports_runner.BUILDERS.items()):
        monkeypatch.setitem(reports_runner.BUILDERS, name, lambda *a, real=build, name=name:
                            calls.append(name) or real(*a))

    again = chain()
    assert not calls and all(r.kept and "kept: " in r.headline() for r in again.values())
    assert artifacts() == listed
    assert project_lake(md).read("pf_weights", list(md.symbols)).equals(weights)
    for stage, kept in (("portfolio", portfolio_runner), ("backtest", backtest_runner), ("plot", reports_runner)):
        assert {f: getattr(again[stage], f) for f in kept.KEPT_FIGURES} == \
            {f: getattr(first[stage], f) for f in kept.KEPT_FIGURES}
    assert again["backtest"].leaderboard.shape == first["backtest"].leaderboard.shape
    assert again["backtest"].key_figures()["sharpe"] == first["backtest"].key_figures()["sharpe"]

    # the weights computed again (overwrite): a new optimization report, so the backtest and the reports follow
    overwritten = chain("overwrite")
    assert not any(r.kept for r in overwritten.values()) and set(calls) == {"portfolio", "backtest", *reports_runner.REPORTS}
    assert all(r.kept for r in chain().values())
    # a newer trading report (another window's backtest): the window's backtest and reports are made again
    backtest_runner.run(md, window(md, whole.start_date, DAYS[-20]))
    redone = chain()
    assert redone["portfolio"].kept and not redone["backtest"].kept and not any(
        redone[r].kept for r in reports_runner.REPORTS)
    # the model's predictions rewritten since: everything downstream is made again
    for part in project_lake(md).partitions("pred_rf", ["AAA"]):
        os.utime(part.path, ns=(0, 0))
    assert not any(r.kept for r in chain().values())
    assert all(r.kept for r in chain().values())


def test_an_all_cash_portfolio_backtests_and_reports_without_a_sharpe_ratio(research):
    import dataclasses

    md, whole, _ = research
    timid = dataclasses.replace(md, project=md.project.model_copy(update={
        "portfolio": md.project.portfolio.model_copy(update={"min_signal": 5.0})}))  # no signal is that strong
    try:
        weights = portfolio_runner.run(timid, whole)
        assert "held only cash" in " ".join(weights.warnings)
        result = backtest_runner.run(timid, whole)
        assert result.metrics["sharpe"] is None and "Sharpe n/a" in result.headline()
        stress = reports_runner.run(timid, whole, report="stress_test")
        assert "every rebalance held only cash" in " ".join(stress.warnings)
    finally:
        portfolio_runner.run(md, whole)
        backtest_runner.run(md, whole)


def test_qf_artifacts_lists_a_stages_folder(research):
    import subprocess
    import sys

    md, _, results = research
    proc = subprocess.run([sys.executable, "-m", "quantflow.cli", "--project-dir", str(md.project_dir),
                           "artifacts", "--stage", "reports", "plot_"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert results["plot"].artifacts["plot_url"] in proc.stdout.split()


def test_a_dl_models_predictions_drive_the_portfolio_as_well(research):
    import dataclasses

    md, whole, results = research
    on_net = dataclasses.replace(md, project=md.project.model_copy(update={
        "portfolio": md.project.portfolio.model_copy(update={"model": "net"})}))
    try:
        result = portfolio_runner.run(on_net, whole)
        assert result.rebalances == results["portfolio"].rebalances and result.mean_held > 0
        stored = project_lake(md).read("pf_weights", list(md.symbols))
        assert stored["model"].unique().to_list() == ["net"]
        assert backtest_runner.run(on_net, whole).metrics["orders"] > 0
    finally:
        portfolio_runner.run(md, whole)
        backtest_runner.run(md, whole)
