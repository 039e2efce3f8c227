"""Sweeps and Optuna studies: a ranked leaderboard, trials that feed PBO and the DSR, a study that resumes
after its process is killed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import polars as pl
import pytest

from quantflow.models import runner
from quantflow.storage.project import project_artifacts
from tests.conftest import window
from tests.models.conftest import DAYS, build_project
from tests.postgres_server import postgres_server  # noqa: F401  (session fixture)

SWEEP = """\
    - name: rf
      kind: ml
      label_set: fwd5
      estimator: RandomForest
      params: {n_estimators: 20}
      walk_forward: {train: 120, test: 60}
      cv: {n_splits: 4, embargo: 5}
      sweep: {max_depth: [2, 3], min_samples_leaf: [1, 20]}
"""
TUNED = """\
    - name: hgb
      kind: ml
      label_set: fwd5
      estimator: HistGradientBoosting
      params: {{max_iter: 40}}
      missing: keep
      walk_forward: {{train: 120, test: 60}}
      cv: {{method: cpcv, n_splits: 5, n_test_groups: 2, embargo: 3}}
      tuning:
        trials: {trials}
        seed: 5
        space:
          learning_rate: {{type: float, low: 0.01, high: 0.3, log: true}}
          max_depth: {{type: int, low: 2, high: 4}}
"""


def test_a_sweep_ranks_every_combination_and_trains_the_best(tmp_path):
    md = build_project(tmp_path, SWEEP)
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="rf")
    board = result.leaderboard
    assert board.height == 4 and board["rank"].to_list() == [1, 2, 3, 4]
    assert board["score"].to_list() == sorted(board["score"].to_list(), reverse=True)
    assert result.search == "sweep" and result.trials == 4
    assert json.loads(board["params"][0]) == result.best_params
    csv = pl.read_csv(project_artifacts(md, "models/rf").get(result.artifacts["leaderboard_url"]))
    assert csv["trial"].to_list() == board["trial"].to_list()
    trials = pl.read_parquet(project_artifacts(md, "models/rf").get(result.artifacts["trials_url"]))
    assert trials["trial"].n_unique() == 4 and trials.group_by("trial").len()["len"].n_unique() == 1


def finished(db) -> dict[int, float]:
    """trial number -> value of the study's finished trials."""
    with sqlite3.connect(db, timeout=30) as con:  # the study process may hold a write lock
        return dict(con.execute("select t.number, v.value from trials t join trial_values v using (trial_id) "
                                "where t.state = 'COMPLETE'").fetchall())


def completed(db) -> int:
    """Finished trials so far: none while the study has not created its database, or not yet its tables."""
    try:
        return len(finished(db)) if db.exists() else 0
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise


@pytest.mark.slow
def test_a_killed_study_resumes_where_it_stopped(tmp_path):
    md = build_project(tmp_path, TUNED.format(trials=8))
    db = md.project_dir / ".quantflow" / "artifacts" / "models" / "hgb" / "optuna.db"
    code = ("import sys; from quantflow.metadata import get_metadata_manager; from quantflow.models import runner; "
            "from tests.conftest import window; from tests.models.conftest import DAYS; "
            "md = get_metadata_manager(sys.argv[1]).load_all(); "
            "runner.run(md, window(md, DAYS[0], DAYS[-1]), model='hgb')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(md.project_dir)], cwd=os.getcwd(),
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and completed(db) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-study, likely mid-trial
    proc.wait()
    before = finished(db)
    with sqlite3.connect(db, timeout=30) as con:  # the study process may hold a write lock
        interrupted = con.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0]
    assert 3 <= len(before) < 8, (before, interrupted, proc.returncode)
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="hgb")
    assert result.search == "optuna" and result.trials == 8 == completed(db), (result.trials, completed(db), before)
    with sqlite3.connect(db, timeout=30) as con:  # the study process may hold a write lock
        states = dict(con.execute("select state, count(*) from trials group by state").fetchall())
    assert states.get("RUNNING", 0) == 0 and states.get("FAIL", 0) == interrupted, (states, interrupted)
    after = finished(db)
    assert {n: after[n] for n in before} == before  # the finished trials were kept, not rerun
    # rerunning a finished study runs no new trial, and the same data keeps the same study
    again = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="hgb")
    assert again.trials == 8 == completed(db) and again.best_params == result.best_params


def test_the_study_follows_everything_but_the_number_of_trials(tmp_path):
    import numpy as np

    from quantflow.models.ml import SklearnLearner
    from quantflow.models.tuning import study_name

    md = build_project(tmp_path, TUNED.format(trials=8))
    cfg = runner.model_config(md, "hgb")
    data, _, _ = runner.load_training_set(md, cfg, DAYS[-1])
    rows = runner.selection_rows(cfg, data)

    def name(**changes) -> str:
        changed = cfg.model_copy(update=changes)
        return study_name(SklearnLearner(changed, None), data, rows, "uniqueness:1.0")

    base = name()
    assert name(tuning=cfg.tuning.model_copy(update={"trials": 50})) == base  # more trials: the same study
    assert name(estimator="RandomForest") != base and name(missing="median") != base and name(seed=1) != base
    assert study_name(SklearnLearner(cfg, None), data, rows, "return_attribution:1.0") != base
    assert study_name(SklearnLearner(cfg, None), data, rows[:-1], "uniqueness:1.0") != base
    assert isinstance(rows, np.ndarray) and data.t1[rows].max() < np.unique(data.t0)[120]


@pytest.mark.slow
def test_a_study_on_the_production_postgresql(postgres_server, tmp_path):  # noqa: F811
    md = build_project(tmp_path, TUNED.format(trials=3).replace("seed: 5", "seed: 5\n        storage: postgres"))
    (md.project_dir / "project_metadata" / "local.yaml").write_text(postgres_server.local_yaml())
    from quantflow.metadata import get_metadata_manager

    md = get_metadata_manager(md.project_dir).load_all()
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]), model="hgb")
    assert result.search == "optuna" and result.trials == 3
    assert not (md.project_dir / ".quantflow" / "artifacts" / "models" / "hgb" / "optuna.db").exists()
    with postgres_server.connect() as con, con.cursor() as cur:
        cur.execute("select s.study_name, count(*) from studies s join trials t using (study_id) "
                    "where t.state = 'COMPLETE' group by s.study_name")
        [(name, finished_trials)] = cur.fetchall()
    assert name.startswith("hgb-") and finished_trials == 3


def test_the_study_resumes_as_data_is_added(tmp_path):
    from quantflow.models.ml import SklearnLearner
    from quantflow.models.tuning import study_name

    md = build_project(tmp_path, TUNED.format(trials=8))
    cfg = runner.model_config(md, "hgb")
    names = []
    for end in (DAYS[299], DAYS[-1]):  # a year later: more bars, the same selection period
        data, _, _ = runner.load_training_set(md, cfg, end)
        names.append(study_name(SklearnLearner(cfg, None), data, runner.selection_rows(cfg, data), "w"))
    assert names[0] == names[1]
