"""Portfolio, backtest and reports metadata errors at their file and line."""

from __future__ import annotations

import pytest

from quantflow.metadata import get_metadata_manager
from tests.conftest import metadata_issues, write_project

PROJECT = """\
project:
  name: p
  symbols: [AAA, BBB]
  label_engine:
    labels:
      - {name: fwd5, method: fixed_horizon, horizon: 5}
      - {name: meta, method: triple_barrier, side: sma_crossover, meta_labeling: true}
  feature_engine:
    features:
      - {name: ret, kind: returns, params: {horizons: [1, 5]}}
  models:
    - {name: rf, kind: ml, label_set: fwd5, estimator: RandomForest}
    - {name: m, kind: ml, label_set: meta, estimator: RandomForest}
  portfolio: {model: rf, method: hrp}
  backtest: {fees: 0.001}
  reports: {var_levels: [0.95, 0.99]}
"""


def issues(tmp_path, text: str):
    return metadata_issues(tmp_path, text)


@pytest.mark.parametrize("old, new, line, field, message", [
    ("{model: rf,", "{model: gb,", 14, "project.portfolio.model",
     "takes the predictions of model 'gb', which project.models does not define (known: rf, m)"),
    ("{model: rf,", "{model: m,", 14, "project.portfolio.model", "model 'm' learns meta-labels"),
    ("method: hrp}", "method: black_litterman}", 14, "project.portfolio.method", "Input should be"),
    ("method: hrp}", "method: hrp, rebalance: {every: 0}}", 14, "project.portfolio.rebalance.every",
     "every: give weekly, monthly or a number of trading days >= 1"),
    ("{fees: 0.001}", "{execution_lag: 0}", 15, "project.backtest", "look-ahead"),
    ("{fees: 0.001}", "{sweep: {execution_lag: [1, 0]}}", 15, "project.backtest", "look-ahead"),
    ("{fees: 0.001}", "{sweep: {execution_lag: [-1]}}", 15, "project.backtest", "trades before the decision"),
    ("{fees: 0.001}", "{sweep: {gross: [1.5]}}", 15, "project.backtest", "sweep.gross: [1.5] outside [1e-09, 1]"),
    ("[0.95, 0.99]", "[95, 99]", 16, "project.reports.var_levels", "confidence levels between 0.5 and 1"),
    ("  portfolio: {model: rf, method: hrp}\n", "", 14, "project.backtest",
     "the backtest trades the portfolio's weights: configure project.portfolio"),
])
def test_a_bad_research_section_is_reported_at_its_line(tmp_path, old, new, line, field, message):
    found = issues(tmp_path, PROJECT.replace(old, new))
    assert any((i.line, i.field) == (line, field) and message in i.message for i in found), found


def test_defaults_load(tmp_path):
    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    pf, bt = md.project.portfolio, md.project.backtest
    assert (pf.covariance.estimator, pf.rebalance.every, pf.long_only, pf.max_weight) == ("ledoit", "weekly", True, 0.4)
    assert (bt.execution_lag, bt.execution_price, bt.fees) == (1, "open", 0.001)
    assert md.project.reports.stress.window == 20
