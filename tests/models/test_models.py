"""The models stage on a lake: only out-of-sample predictions, the same bits window by window and for a
subset of symbols, an independent refit of a fold, ML and DL sharing one schema, artifacts and cards."""

from __future__ import annotations

import io
import json
import re

import joblib
import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from quantflow.compute.purged_cv import WalkForward
from quantflow.compute.sample_weights import training_weights
from quantflow.compute.stage import Progress, StageError
from quantflow.models import runner
from quantflow.models.dl import TorchLearner
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.schemas import PREDICTIONS_SCHEMA
from tests.conftest import window
from tests.models.conftest import DAYS, RF, build_project

LSTM = """\
    - name: lstm
      kind: dl
      label_set: fwd5
      network: lstm
      params: {hidden: 8, window: 5, epochs: 6, patience: 3}
      walk_forward: {train: 120, test: 60}
      missing: median
"""
LOGIT = """\
    - name: logit
      kind: ml
      label_set: fwd5
      estimator: LogisticRegression
      params: {C: 0.5, max_iter: 500}
      features: [ret_1, ret_5, vol]
      walk_forward: {train: 100, test: 50, expanding: true}
"""
OTHERS = """\
    - name: ridge
      kind: ml
      label_set: fwd5
      target: ret
      estimator: Ridge
      params: {alpha: 2.0}
      features: [ret_1, ret_5, vol]
      walk_forward: {train: 100, test: 50}
    - name: tree
      kind: ml
      label_set: fwd5
      estimator: sklearn.tree.DecisionTreeClassifier
      params: {max_depth: 2}
      walk_forward: {train: 100, test: 50}
    - name: mlp
      kind: dl
      label_set: fwd5
      params: {hidden: 8, epochs: 4, patience: 2}
      walk_forward: {train: 120, test: 60}
      missing: median
    - name: tcn
      kind: dl
      label_set: fwd5
      target: ret
      network: tcn
      params: {hidden: 4, window: 6, epochs: 3, patience: 3}
      walk_forward: {train: 120, test: 60}
      missing: median
"""


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    return build_project(tmp_path_factory.mktemp("models"), RF + LSTM + LOGIT + OTHERS)


def stored(md, model: str) -> pl.DataFrame:
    return project_lake(md).read(f"pred_{model}").sort("ts", "symbol")


def test_predictions_are_out_of_sample_and_tagged_with_their_fold(md):
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
    pred = stored(md, "rf")
    assert pred.height == result.predictions > 500
    assert pred.schema == pl.Schema(PREDICTIONS_SCHEMA)
    assert (pred["train_end"] < pred["ts"]).all()  # no prediction inside its model's training window
    assert (pred["train_start"] <= pred["train_end"]).all()
    # each fold's training rows by the definition (the 120 bars before its block, labels ending before it):
    # their last label end is the stored train_end, and it precedes every prediction of the fold
    data, _, _ = runner.load_training_set(md, runner.model_config(md, "rf"), DAYS[-1])
    times = np.unique(data.t0)
    for k, fold in pred.group_by("fold"):
        first = times[120 + 40 * k[0]]
        train = (data.t0 >= times[40 * k[0]]) & (data.t0 < first) & (data.t1 < first)
        assert fold["ts"].cast(pl.Int64).min() == first
        assert fold["train_end"].cast(pl.Int64).unique().to_list() == [data.t1[train].max()]
        assert fold["train_start"].cast(pl.Int64).unique().to_list() == [data.t0[train].min()]
    first_bars = np.unique(data.t0)[:120]
    assert not pred["ts"].cast(pl.Int64).is_in(first_bars.tolist()).any()  # the first bars only train
    assert pred["fold"].n_unique() == len(result.folds) and set(pred["predicted_label"].unique()) <= {-1, 0, 1}


def test_a_fold_equals_an_independent_weighted_refit(md):
    runner.run(md, window(md, DAYS[0], DAYS[-1]), model="logit")
    pred = stored(md, "logit")
    cfg = runner.model_config(md, "logit")
    data, label_set, _ = runner.load_training_set(md, cfg, DAYS[-1])
    split = list(WalkForward(100, 50, expanding=True).split(data.t0, data.t1))[-1]
    keys = data.rows.select("symbol", "ts", "uniqueness", "return_attribution")
    weights = training_weights(keys[split.train], label_set.sample_weight, label_set.time_decay).to_numpy()
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=0.5, max_iter=500, random_state=0)
    model.fit(data.X[split.train], data.y[split.train].astype(int), sample_weight=weights)
    expected = model.predict_proba(data.X[split.test]) @ model.classes_
    last = pred.filter(pl.col("fold") == split.test_blocks[0]).sort("ts", "symbol")
    np.testing.assert_allclose(last["prediction"].to_numpy(), expected, rtol=1e-9)
    # the weights matter: unweighted, the predictions differ
    plain = LogisticRegression(C=0.5, max_iter=500, random_state=0).fit(data.X[split.train],
                                                                          data.y[split.train].astype(int))
    assert not np.allclose(plain.predict_proba(data.X[split.test]) @ plain.classes_, expected)


def test_window_by_window_and_a_symbol_subset_give_the_same_bits(md, tmp_path):
    runner.run(md, window(md, DAYS[0], DAYS[-1], write_mode="overwrite"), model="rf")
    whole = stored(md, "rf")
    other = build_project(tmp_path / "pieces", RF)
    cut = DAYS[250]
    runner.run(other, window(other, DAYS[0], cut), model="rf")
    runner.run(other, window(other, DAYS[251], DAYS[-1], symbols=["BBB"]), model="rf")
    runner.run(other, window(other, DAYS[251], DAYS[-1], symbols=["AAA", "CCC"]), model="rf")
    assert_frame_equal(stored(other, "rf"), whole)
    # a rerun on unchanged inputs keeps what is stored; overwrite refits, to the same bits
    again = runner.run(other, window(other, DAYS[251], DAYS[-1], symbols=["AAA", "CCC"]), model="rf")
    assert again.unchanged and "kept" in again.headline() and not again.tables
    assert not runner.run(other, window(other, DAYS[251], DAYS[-1], symbols=["BBB"]), model="rf").unchanged
    again = runner.run(other, window(other, DAYS[251], DAYS[-1], write_mode="overwrite"), model="rf")
    assert not again.unchanged and again.tables["pred_rf"].rows_written == whole.filter(
        pl.col("date") >= DAYS[251]).height
    assert_frame_equal(stored(other, "rf"), whole)


def test_changed_inputs_refit_in_every_write_mode(tmp_path):
    md = build_project(tmp_path, RF)
    full = window(md, DAYS[0], DAYS[-1], write_mode="append")
    runner.run(md, full, model="rf")
    assert runner.run(md, full, model="rf").unchanged
    # new labels (another horizon's returns): the training set changed, so the window is refitted
    lake = project_lake(md)
    labels = lake.read("cdm_labels")
    from quantflow.storage.schemas import TableSpec

    spec = TableSpec("cdm_labels", dict(labels.schema), "month", ("symbol", "date", "label_set", "ts"))
    lake.replace(spec, labels.with_columns(pl.col("label") * -1), md.symbols, DAYS[0], DAYS[-1])
    flipped = runner.run(md, full, model="rf")
    assert not flipped.unchanged and flipped.tables["pred_rf"].rows_written == flipped.predictions > 0
    # a deleted predictions table is noticed too
    import shutil

    shutil.rmtree(md.project_dir / ".quantflow" / "lake" / "pred_rf")
    assert not runner.run(md, full, model="rf").unchanged and stored(md, "rf").height == flipped.predictions


def test_artifacts_card_and_model_reload(md):
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
    store = project_artifacts(md, "models/rf")
    card = json.loads(store.get(result.artifacts["card_url"]))
    assert card["features"] == ["ret_1", "ret_5", "ret_20", "vol", "rsi"]
    assert card["task"] == "classification" and card["estimator"] == "sklearn.ensemble.RandomForestClassifier"
    assert len(card["walk_forward"]["folds"]) == len(result.folds) and card["training_set"]["fingerprint"]
    assert {"python", "numpy", "scikit-learn"} <= set(card["versions"])
    assert len(card["cv"]["fold_scores"]) == 4 and card["search"]["trials"] == 1
    saved = joblib.load(io.BytesIO(store.get(result.artifacts["model_url"])))
    data, _, _ = runner.load_training_set(md, runner.model_config(md, "rf"), DAYS[-1])
    last = stored(md, "rf").filter(pl.col("fold") == pl.col("fold").max())
    rows = np.flatnonzero(data.rows["ts"].is_in(last["ts"].implode()).to_numpy())
    np.testing.assert_allclose(saved["model"].predict_proba(data.X[rows]) @ saved["model"].classes_,
                               last.sort("ts", "symbol")["prediction"].to_numpy())
    assert store.latest("ml_engine_", "json") == result.artifacts["card_url"]


def test_dl_predictions_share_the_schema_are_deterministic_and_reload(md):
    first = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="lstm")
    a = stored(md, "lstm")
    assert a.schema == stored(md, "rf").schema and (a["train_end"] < a["ts"]).all()
    assert a["probability"].is_between(0, 1).all() and a.height == first.predictions
    again = runner.run(md, window(md, DAYS[0], DAYS[-1], write_mode="overwrite"), model="lstm")
    assert not again.unchanged and again.predictions == first.predictions  # refitted, not kept
    assert_frame_equal(stored(md, "lstm"), a)  # seeded: the same predictions again
    saved = torch.load(io.BytesIO(project_artifacts(md, "models/lstm").get(first.artifacts["model_url"])),
                       weights_only=False)
    assert saved["network"] == "lstm" and saved["features"] == ["ret_1", "ret_5", "ret_20", "vol", "rsi"]
    card = json.loads(project_artifacts(md, "models/lstm").get(first.artifacts["card_url"]))
    assert card["versions"]["device"] == "cpu" and card["network"] == "lstm"


def test_dl_standardizes_on_the_training_rows_and_validates_on_their_end(md):
    cfg = runner.model_config(md, "lstm")
    data, _, _ = runner.load_training_set(md, cfg, DAYS[-1])
    learner = TorchLearner(cfg, np.unique(data.y.astype(int)))
    rows = np.arange(300)
    fitted = learner.fit(data, rows, np.ones(rows.size), {})
    np.testing.assert_allclose(fitted["mean"], np.nanmean(data.X[rows], axis=0))
    fit, val = learner._validation_split(data, rows, 0.2)
    assert data.t1[fit].max() < data.t0[val].min()  # early stopping never saw a label it validates on
    assert np.unique(data.t0[val]).size == pytest.approx(0.2 * np.unique(data.t0[rows]).size, abs=1)


def test_a_bad_configuration_fails_with_the_model_and_cause(md, tmp_path):
    bad = build_project(tmp_path / "bad", RF.replace("max_depth: 3", "max_depht: 3"))
    with pytest.raises(StageError, match="model 'rf': sklearn.ensemble.RandomForestClassifier rejects its params"):
        runner.run(bad, window(bad, DAYS[0], DAYS[-1]), model="rf")
    # a selection period too short for the CV is the configuration's fault: more data would not help
    tight = build_project(tmp_path / "tight", RF.replace("train: 120, test: 40", "train: 6, test: 40"))
    with pytest.raises(StageError, match="model rf: 1 bars of labels end before the first walk-forward prediction; "
                                         "the purged_kfold CV needs 4: raise walk_forward.train or lower cv.n_splits"):
        runner.run(tight, window(tight, DAYS[0], DAYS[-1]), model="rf")
    # too little history is not a failure: a warning, no predictions, and a validation with nothing to judge
    short = build_project(tmp_path / "short", RF, days=DAYS[:60])
    result = runner.run(short, window(short, DAYS[0], DAYS[59]), model="rf")
    assert result.predictions == 0 and not result.artifacts
    assert result.warnings == ["model rf: 35 bars of labelled events; it needs 121 (walk_forward.train 120 before "
                               "its first prediction)"]
    from quantflow.validation import runner as validation_runner

    judged = validation_runner.run(short, window(short, DAYS[0], DAYS[59]), model="rf")
    assert not any(c.passed for c in judged.checks.values()) and "nothing to validate" in judged.warnings[0]


def test_meta_labels_bet_on_the_primary_side_when_the_model_says_so(tmp_path):
    from tests.models.conftest import PROJECT

    text = PROJECT.replace("      - {{name: fwd5, method: fixed_horizon, horizon: 5}}", (
        "      - {{name: fwd5, method: fixed_horizon, horizon: 5}}\n"
        "      - {{name: meta, method: triple_barrier, side: sma_crossover, sma_fast: 5, sma_slow: 20, "
        "meta_labeling: true, vertical_bars: 10, volatility_min_bars: 10}}"))
    from quantflow.feature_engine import runner as feature_runner
    from quantflow.label_engine import runner as label_runner
    from quantflow.metadata import get_metadata_manager
    from quantflow.validation import runner as validation_runner
    from tests.conftest import write_project
    from tests.models.conftest import build_project as _bars

    bars_md = _bars(tmp_path / "bars", RF)
    md = get_metadata_manager(write_project(tmp_path / "meta", text.format(models=RF.replace(
        "label_set: fwd5", "label_set: meta")))).load_all()
    import shutil

    shutil.copytree(bars_md.project_dir / ".quantflow" / "lake" / "cdm_bars_daily",
                    md.project_dir / ".quantflow" / "lake" / "cdm_bars_daily")
    whole = window(md, DAYS[0], DAYS[-1])
    label_runner.run(md, whole)
    feature_runner.run(md, whole)
    result = runner.run(md, whole, model="rf")
    pred = stored(md, "rf")
    assert set(pred["predicted_label"].unique()) <= {0, 1} and (pred["train_end"] < pred["ts"]).all()
    card = json.loads(project_artifacts(md, "models/rf").get(result.artifacts["card_url"]))
    assert card["meta_labels"] is True
    # the bet: take the primary side's (side-adjusted) return when P(1) > 0.5, else nothing
    bets = np.where(pred["prediction"].to_numpy() > 0.5, pred["ret"].to_numpy(), 0.0)
    expected = pl.DataFrame({"ts": pred["ts"], "b": bets}).group_by("ts").agg(pl.col("b").mean()).sort("ts")["b"]
    np.testing.assert_allclose(validation_runner.bet_returns(pred, True), expected.to_numpy())


def test_predictions_stored_before_the_config_column_are_kept_and_not_judged(tmp_path):
    from quantflow.validation import runner as validation_runner

    md = build_project(tmp_path, RF)
    runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
    for path in (md.project_dir / ".quantflow" / "lake" / "pred_rf").rglob("*.parquet"):  # as an older release
        pl.read_parquet(path).drop("config").write_parquet(path)
    later = runner.run(md, window(md, DAYS[300], DAYS[-1], write_mode="overwrite"), model="rf")
    pred = stored(md, "rf")
    assert pred.filter(pl.col("date") < DAYS[300])["config"].null_count() == pred.filter(
        pl.col("date") < DAYS[300]).height > 0
    judged = validation_runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
    assert judged.n_periods == pred.filter(pl.col("date") >= DAYS[300])["ts"].n_unique() and later.predictions
    assert judged.other_configurations == pred.filter(pl.col("config").is_null()).height
    assert "not judged" in judged.warnings[0]


class Lines(Progress):
    def __init__(self):
        self.lines: list[str] = []

    def detail(self, message: str) -> None:
        self.lines.append(message)


def test_a_regression_and_an_estimator_by_dotted_path_equal_independent_refits(md):
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeClassifier

    for name, make, task in (("ridge", lambda: Ridge(alpha=2.0), "regression"),
                             ("tree", lambda: DecisionTreeClassifier(max_depth=2, random_state=0), "classification")):
        result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model=name)
        pred = stored(md, name)
        cfg = runner.model_config(md, name)
        assert cfg.task == task and (pred["train_end"] < pred["ts"]).all() and pred.height == result.predictions
        data, label_set, _ = runner.load_training_set(md, cfg, DAYS[-1])
        split = list(WalkForward(100, 50).split(data.t0, data.t1))[-1]
        keys = data.rows.select("symbol", "ts", "uniqueness", "return_attribution")
        weights = training_weights(keys[split.train], label_set.sample_weight, label_set.time_decay).to_numpy()
        last = pred.filter(pl.col("fold") == split.test_blocks[0]).sort("ts", "symbol")
        if task == "regression":  # the label's return is learned and predicted; no classes, no probability
            model = make().fit(data.X[split.train], data.y[split.train], sample_weight=weights)
            expected = model.predict(data.X[split.test])
            np.testing.assert_allclose(data.y, data.rows["ret"].to_numpy())
            assert last["predicted_label"].is_null().all() and last["probability"].is_null().all()
        else:
            model = make().fit(data.X[split.train], data.y[split.train].astype(int), sample_weight=weights)
            expected = model.predict_proba(data.X[split.test]) @ model.classes_
        np.testing.assert_allclose(last["prediction"].to_numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("name", ["mlp", "tcn"])
def test_the_other_networks_predict_out_of_sample_and_log_every_epoch(md, name):
    lines = Lines()
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model=name, progress=lines)
    pred = stored(md, name)
    assert pred.height == result.predictions > 0 and (pred["train_end"] < pred["ts"]).all()
    assert pred["prediction"].is_finite().all() and pred["fold"].n_unique() == len(result.folds)
    epochs = [line for line in lines.lines if " epoch " in line]
    total = runner.model_config(md, name).dl_params()["epochs"]
    assert all(re.fullmatch(rf"{name} .+: epoch \d+/{total} train loss [\d.]+ validation loss [\d.]+", e)
               for e in epochs)
    assert sum(f": epoch 1/{total} " in e for e in epochs) >= len(result.folds)  # every refit reports its epochs
