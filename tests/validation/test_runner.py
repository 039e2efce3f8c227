"""The validation stage: a planted edge passes the overfitting gates, noise fails them, a leaking
prediction is caught, and a failed gate blocks what is downstream in Dagster."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from quantflow.models import runner as model_runner
from quantflow.pipeline import create_runner
from quantflow.pipeline.dagster.assets.validation import build_validation_assets
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, reporter_resource
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.schemas import PREDICTIONS_SCHEMA, TableSpec
from quantflow.validation import runner
from tests.conftest import window
from tests.models.conftest import DAYS, build_project
from tests.models.test_tuning import SWEEP

# half the grid cannot learn (a leaf needs more rows than there are): the search has a real choice to make
GRID = SWEEP.replace("sweep: {max_depth: [2, 3], min_samples_leaf: [1, 20]}",
                     "sweep: {max_depth: [2, 4], min_samples_leaf: [1, 5000]}")


def validated(tmp_path, momentum: float, seed: int = 3):
    md = build_project(tmp_path, GRID, momentum=momentum, seed=seed)
    whole = window(md, DAYS[0], DAYS[-1])
    model_runner.run(md, whole, model="rf")
    return md, runner.run(md, whole, model="rf")


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return validated(tmp_path_factory.mktemp("noise"), 0.0)


def test_a_planted_edge_passes_the_gates(tmp_path):
    md, result = validated(tmp_path, 0.7, seed=5)  # persistent returns: the past week predicts the next
    assert {name: c.passed for name, c in result.checks.items()} == {"pbo_gate": True, "dsr_gate": True,
                                                                     "no_leakage": True}
    assert result.dsr >= 0.95 and result.pbo <= 0.5 and result.n_trials == 4 and result.pbo_blocks == 8
    assert result.psr >= result.dsr  # deflating for 4 trials can only lower it
    report = json.loads(project_artifacts(md, "models/rf").get(result.artifacts["validation_url"]))
    assert report["gates"] == {"pbo_gate": True, "dsr_gate": True, "no_leakage": True}
    assert len(report["cv_fold_scores"]["folds"]) == 4 and report["trials"] == 4


def test_noise_fails_the_gates(noise):
    _, result = noise
    assert not result.checks["dsr_gate"].passed and result.dsr < 0.95
    assert not result.checks["pbo_gate"].passed and result.pbo > 0.5
    assert result.checks["dsr_gate"].severity == "error"
    assert result.n_periods == 255 and result.min_track_record > 0


def test_a_leaking_prediction_is_caught(noise, tmp_path):
    md, _ = noise
    lake = project_lake(md)
    pred = lake.read("pred_rf")
    leaked = pred.with_columns(pl.when(pl.col("fold") == 2).then(pl.col("t1")).otherwise(pl.col("train_end"))
                               .alias("train_end"))
    spec = TableSpec("pred_rf", PREDICTIONS_SCHEMA, "year", ("symbol", "date", "ts"))
    lake.replace(spec, leaked, md.symbols, DAYS[0], DAYS[-1])
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
    assert not result.checks["no_leakage"].passed
    assert result.leakage_rows == pred.filter(pl.col("fold") == 2).height > 0
    lake.replace(spec, pred, md.symbols, DAYS[0], DAYS[-1])


def test_a_failed_gate_blocks_downstream_assets_and_says_why(noise):
    md, _ = noise
    assets = build_validation_assets(md)
    assert all(spec.blocking for a in assets for spec in a.check_specs)

    @dg.asset(deps=[dg.AssetKey("validation_rf")])
    def portfolio_weights():
        return 1

    result = dg.materialize([*assets, portfolio_weights], resources={REPORTER_KEY: reporter_resource(None)},
                            run_config={"ops": {"validation_rf": {"config": {"start_date": str(DAYS[0]),
                                                                             "end_date": str(DAYS[-1])}}}},
                            raise_on_error=False)
    assert not result.success
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert done == {"validation_rf"}  # the validation is recorded; what depends on it did not run
    run = create_runner(md, instance=dg.DagsterInstance.ephemeral()).run(
        stage="validation", start_date=str(DAYS[0]), end_date=str(DAYS[-1]))
    assert not run.success and "\n" not in run.error
    assert run.error == ("stage validation, asset validation_rf: DagsterAssetCheckFailedError: 2 blocking asset "
                         "checks failed with ERROR severity: validation_rf: pbo_gate,dsr_gate")
    assert run.checks["validation_rf:dsr_gate"] is False


def test_gates_that_do_not_block_only_warn(noise):
    md, _ = noise
    md.project.validation.blocking = False
    try:
        result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
        assert not result.checks["dsr_gate"].passed and result.checks["dsr_gate"].severity == "warn"
        assert not any(spec.blocking for a in build_validation_assets(md) for spec in a.check_specs)
    finally:
        md.project.validation.blocking = True
