"""A small daily project for the models stage: bars written to the lake, then labels and features."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from quantflow.feature_engine import runner as feature_runner
from quantflow.label_engine import runner as label_runner
from quantflow.metadata import get_metadata_manager
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import window, write_project

DAYS = [d for d in (dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(560)) if d.weekday() < 5]

PROJECT = """\
project:
  name: models_test
  symbols: [AAA, BBB, CCC]
  label_engine:
    labels:
      - {{name: fwd5, method: fixed_horizon, horizon: 5}}
  feature_engine:
    features:
      - {{name: ret, kind: returns, params: {{horizons: [1, 5, 20]}}}}
      - {{name: vol, kind: volatility, params: {{window: 20}}}}
      - {{name: rsi, kind: talib, params: {{function: RSI, timeperiod: 14}}}}
  models:
{models}
  validation: {{pbo_max: 0.5, dsr_min: 0.95, pbo_blocks: 8}}
"""

RF = """\
    - name: rf
      kind: ml
      label_set: fwd5
      estimator: RandomForest
      params: {n_estimators: 30, max_depth: 3}
      walk_forward: {train: 120, test: 40}
      cv: {n_splits: 4, embargo: 5}
"""


def build_project(root, models: str = RF, momentum: float = 0.0, seed: int = 3, days=DAYS):
    """Random-walk prices; ``momentum`` > 0 makes daily returns persistent (AR(1)), so the 5-day past
    return predicts the next 5 days' sign: a real edge for the gates to find."""
    md = get_metadata_manager(write_project(root, PROJECT.format(models=models))).load_all()
    rng = np.random.default_rng(seed)
    frames = []
    for symbol in md.symbols:
        shocks = rng.normal(0, 0.01, len(days))
        r = np.empty(len(days))
        r[0] = shocks[0]
        for i in range(1, len(days)):
            r[i] = momentum * r[i - 1] + shocks[i]
        close = 40.0 * np.exp(np.cumsum(r))
        frames.append(pl.DataFrame({"symbol": symbol, "date": days, "open": close, "high": close * 1.005,
                                    "low": close * 0.995, "close": close, "volume": rng.lognormal(12, 0.2, len(days))}))
    project_lake(md).write(spec_for_kind("cdm_bars_daily", "bars_daily"), pl.concat(frames), "overwrite")
    whole = window(md, days[0], days[-1])
    label_runner.run(md, whole)
    feature_runner.run(md, whole)
    return md
