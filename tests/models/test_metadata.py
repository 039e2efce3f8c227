"""Model metadata errors at the model's file and line: unknown label set, features, estimator, params."""

from __future__ import annotations

import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.metadata.schema.models import ModelConfig
from tests.conftest import metadata_issues, write_project

PROJECT = """\
project:
  name: p
  symbols: [AAA]
  label_engine:
    labels:
      - {name: fwd5, method: fixed_horizon, horizon: 5}
  feature_engine:
    features:
      - {name: ret, kind: returns, params: {horizons: [1, 5]}}
  models:
    - {name: rf, kind: ml, label_set: fwd5, estimator: RandomForest, features: [ret_*]}
    - {name: net, kind: dl, label_set: fwd5, network: lstm, params: {window: 5}}
"""


def issues(tmp_path, text: str):
    return metadata_issues(tmp_path, text)



@pytest.mark.parametrize("old, new, line, field, message", [
    ("label_set: fwd5, estimator", "label_set: fwd10, estimator", 11, "project.models.0.label_set",
     "model 'rf' learns label set 'fwd10', which project.label_engine does not define (known: fwd5)"),
    ("features: [ret_*]", "features: [rsi*]", 11, "project.models.0.features.0",
     "model 'rf': 'rsi*' matches no feature of ft_features"),
    ("estimator: RandomForest", "estimator: RandomTree", 11, "project.models.0",
     "unknown estimator 'RandomTree'"),
    ("params: {window: 5}", "params: {windw: 5}", 12, "project.models.1", "unknown dl params windw"),
    ("name: net", "name: rf", 10, "project.models", "model names must be distinct; repeated: rf"),
    ("label_set: fwd5, network", "label_set: fwd5, target: t_value, network", 12, "project.models.1.target",
     "only trend_scanning labels have a t_value"),
    ("network: lstm,", "network: lstm, walk_forward: {test: 10, step: 5},", 12, "project.models.1.walk_forward",
     "step 5 < test 10: test blocks would overlap"),
    ("estimator: RandomForest,", "estimator: RandomForest, cv: {scoring: r2},", 11, "project.models.0",
     "cv.scoring r2 does not score classification"),
])
def test_a_bad_model_is_reported_at_its_line(tmp_path, old, new, line, field, message):
    [issue] = issues(tmp_path, PROJECT.replace(old, new))
    assert (issue.line, issue.field) == (line, field) and message in issue.message, issue


def test_models_load_with_their_task_and_estimator(tmp_path):
    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    rf, net = md.project.models
    assert rf.task == "classification" and rf.estimator_path == "sklearn.ensemble.RandomForestClassifier"
    assert ModelConfig(name="r", kind="ml", label_set="x", target="ret", estimator="HistGradientBoosting"
                       ).estimator_path == "sklearn.ensemble.HistGradientBoostingRegressor"
    assert net.dl_params()["window"] == 5 and net.dl_params()["epochs"] == 30
    assert md.project.validation.pbo_max == 0.5 and md.project.validation.dsr_min == 0.95
