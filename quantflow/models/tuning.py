"""Choosing a configuration: a parameter sweep (a grid) or an Optuna study (seeded TPE), each trial scored
by purged cross-validation. Every trial keeps its bets' returns per period: the columns of the PBO matrix,
and the spread of Sharpe ratios the deflated Sharpe ratio discounts. The study lives in a database (SQLite
by default, PostgreSQL in production) under a name that includes the training set's fingerprint, so a rerun
on the same data resumes it: finished trials stay, trials a crash left running are marked failed, and the
study runs until it has ``trials`` finished ones."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quantflow.compute.overfitting import probabilistic_sharpe_ratio
from quantflow.compute.stage import Progress
from quantflow.models.dataset import TrainingSet
from quantflow.models.engine import CVOutcome, Learner, WeightsOf, cross_validate


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    outcome: CVOutcome

    @property
    def sharpe(self) -> float:
        return self.outcome.sharpe


@dataclass
class Search:
    """The trials of a sweep or study (one trial: the configured parameters alone)."""

    method: str  # "single", "sweep" or "optuna"
    trials: list[Trial]
    study: str | None = None

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: (np.nan_to_num(t.outcome.score, nan=-np.inf), -t.number))

    def returns_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, T x N returns): the trials' bets per period, on their common times."""
        times = self.trials[0].outcome.times
        return times, np.column_stack([t.outcome.returns for t in self.trials])

    def leaderboard(self) -> pl.DataFrame:
        rows = []
        for t in self.trials:
            sr, n = t.sharpe, t.outcome.returns.size
            folds = [f for f in t.outcome.fold_scores]
            rows.append({"trial": t.number, "params": json.dumps(t.params, sort_keys=True, default=str),
                         "score": t.outcome.score, "sharpe": sr,
                         "psr": probabilistic_sharpe_ratio(sr, n) if n > 2 else float("nan"),
                         "fold_sharpe_std": float(np.std([f["sharpe"] for f in folds], ddof=1)) if len(folds) > 1
                         else float("nan")})
        board = pl.DataFrame(rows).sort(["score", "trial"], descending=[True, False], nulls_last=True)
        return board.with_row_index("rank", offset=1)


def single(data: TrainingSet, learner: Learner, weights_of: WeightsOf, rows: np.ndarray) -> Search:
    return Search("single", [Trial(0, {}, cross_validate(data, learner, {}, learner.cfg.cv, weights_of, rows))])


def sweep(data: TrainingSet, learner: Learner, weights_of: WeightsOf, progress: Progress, rows: np.ndarray
          ) -> Search:
    grid = learner.cfg.sweep
    names = list(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    progress.begin(len(combos), "trials", f"{learner.cfg.name} sweep")
    trials = []
    for i, params in enumerate(combos):
        trials.append(Trial(i, params, cross_validate(data, learner, params, learner.cfg.cv, weights_of, rows)))
        progress.advance(1)
    return Search("sweep", trials)


def study_name(learner: Learner, data: TrainingSet, rows: np.ndarray, weighting: str, code: str = "") -> str:
    """The model's whole configuration but the number of trials (raising it continues the study), its label
    set's weighting, the code that scores trials, and what the selection rows hold (which stays put as data
    is added, so a daily run resumes the study): any other change starts a new study."""
    cfg = learner.cfg.model_dump(mode="json")
    cfg["tuning"].pop("trials")
    window = int(learner.cfg.dl_params()["window"]) if learner.cfg.kind == "dl" and learner.cfg.network != "mlp" else 1
    settings = json.dumps(cfg, sort_keys=True, default=str) + weighting + code + data.fingerprint_of(rows, window)
    return f"{learner.cfg.name}-{hashlib.sha256(settings.encode()).hexdigest()[:24]}"


def _suggest(trial, name: str, dim) -> Any:
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    if dim.type == "float":
        return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)
    return trial.suggest_categorical(name, dim.choices)


def tune(data: TrainingSet, learner: Learner, weights_of: WeightsOf, storage_url: str, progress: Progress,
         rows: np.ndarray, weighting: str = "", code: str = "") -> Search:
    """Run (or resume) the model's Optuna study up to ``tuning.trials`` finished trials, scoring each by
    purged CV over ``rows``."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = learner.cfg.tuning
    name = study_name(learner, data, rows, weighting, code)
    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)  # left running by a crashed run
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    todo = max(cfg.trials - done, 0)
    progress.begin(cfg.trials, "trials", f"{learner.cfg.name} tuning")
    progress.advance(done)
    if done:
        progress.note(f"{learner.cfg.name}: study {name} resumed with {done} finished trials")

    def objective(trial) -> float:
        params = {k: _suggest(trial, k, dim) for k, dim in cfg.space.items()}
        outcome = cross_validate(data, learner, params, learner.cfg.cv, weights_of, rows)
        trial.set_user_attr("returns", [float(x) for x in outcome.returns])
        trial.set_user_attr("times", [int(x) for x in outcome.times])
        trial.set_user_attr("fold_scores", outcome.fold_scores)
        trial.set_user_attr("sharpe", outcome.sharpe)
        progress.advance(1)
        return outcome.score if np.isfinite(outcome.score) else -1e9

    if todo:
        study.optimize(objective, n_trials=todo, gc_after_trial=False)
    trials = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = t.user_attrs
        outcome = CVOutcome(attrs["fold_scores"], float(t.value), np.asarray(attrs["times"], dtype=np.int64),
                            np.asarray(attrs["returns"], dtype=np.float64), float(attrs["sharpe"]))
        trials.append(Trial(t.number, dict(t.params), outcome))
    return Search("optuna", trials, study=name)
