"""The ``project.models`` and ``project.validation`` sections: models trained on ``ft_features`` and
``cdm_labels`` with purged, walk-forward validation, and the overfitting gates their results must pass."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from quantflow.metadata.schema.base import NAME_RE, MetadataModel

MODEL_KINDS = ("ml", "dl")
NETWORKS = ("mlp", "lstm", "tcn")
# scikit-learn estimators by their short name; anything else is a dotted import path
ESTIMATORS = {
    "RandomForestClassifier": "sklearn.ensemble.RandomForestClassifier",
    "RandomForestRegressor": "sklearn.ensemble.RandomForestRegressor",
    "HistGradientBoostingClassifier": "sklearn.ensemble.HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor": "sklearn.ensemble.HistGradientBoostingRegressor",
    "LogisticRegression": "sklearn.linear_model.LogisticRegression",
    "Ridge": "sklearn.linear_model.Ridge",
    "RidgeClassifier": "sklearn.linear_model.RidgeClassifier",
}
# the family names of the issue: "RandomForest" picks the classifier or the regressor by the target
ESTIMATOR_FAMILIES = {"RandomForest": ("RandomForestClassifier", "RandomForestRegressor"),
                      "HistGradientBoosting": ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")}
DL_DEFAULTS: dict[str, Any] = {"hidden": 32, "layers": 1, "dropout": 0.0, "lr": 1e-3, "weight_decay": 0.0,
                               "epochs": 30, "batch_size": 256, "patience": 5, "window": 10,
                               "validation_share": 0.2, "kernel_size": 3}


class WalkForwardConfig(MetadataModel):
    """Out-of-sample predictions: refit every ``step`` bars on the ``train`` bars before (all of them with
    ``expanding``) and predict the next ``test`` bars. Bars are distinct event times of the label set."""

    train: int = Field(250, ge=2, description="bars of training before each test block")
    test: int = Field(21, ge=1, description="bars predicted by each refit")
    step: int | None = Field(None, ge=1, description="bars between refits (default: test)")
    expanding: bool = Field(False, description="train on everything before each block, not a rolling window")

    @model_validator(mode="after")
    def _once(self) -> WalkForwardConfig:
        if self.step is not None and self.step < self.test:
            raise ValueError(f"step {self.step} < test {self.test}: test blocks would overlap and predict an "
                             "event twice; use step >= test")
        return self


class CVConfig(MetadataModel):
    """The purged cross-validation that scores tuning trials and sweeps (and reports CV scores per fold)."""

    method: Literal["purged_kfold", "cpcv"] = "purged_kfold"
    n_splits: int = Field(5, ge=2, description="folds (purged_kfold) or groups (cpcv)")
    n_test_groups: int = Field(2, ge=1, description="cpcv: groups in each test set")
    embargo: int = Field(0, ge=0, description="bars after each test block that do not train")
    scoring: Literal["sharpe", "accuracy", "neg_log_loss", "r2"] = Field(
        "sharpe", description="the score trials are ranked by: sharpe (per period, of the out-of-sample "
        "signed predictions' label returns), or a scikit-learn metric")

    @model_validator(mode="after")
    def _groups(self) -> CVConfig:
        if self.method == "cpcv" and self.n_test_groups >= self.n_splits:
            raise ValueError("cpcv: n_test_groups must be smaller than n_splits")
        return self


class SearchDimension(MetadataModel):
    """One tuned parameter: an int or float range (``log`` scale optional) or a list of choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical: give choices")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type}: give low <= high")
        return self


class TuningConfig(MetadataModel):
    """An Optuna study (seeded TPE) maximizing the purged-CV score; stored so it resumes after a crash."""

    trials: int = Field(20, ge=1, description="trials in the study (a rerun continues up to this many)")
    seed: int = 0
    space: dict[str, SearchDimension] = Field(min_length=1)
    storage: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite: beside the artifacts (or under .quantflow when they are on S3); "
        "postgres: the production connection of local.yaml")


class ModelConfig(MetadataModel):
    """One model: an asset trained walk-forward on one label set, with the same predictions schema for
    both kinds."""

    name: str = Field(pattern=NAME_RE)
    kind: Literal[MODEL_KINDS]
    label_set: str = Field(description="a label set of project.label_engine")
    target: Literal["label", "ret", "t_value"] = Field(
        "label", description="label: classification; ret or t_value: regression")
    features: list[str] | None = Field(None, description="feature columns of ft_features, or fnmatch patterns "
                                       "(e.g. 'ROC*'); default all of them")
    missing: Literal["drop", "median", "keep"] = Field(
        "drop", description="rows with a missing feature: drop them; median: impute with the training fold's "
        "medians (fitted on each fold only); keep: pass NaN to an estimator that handles it")
    estimator: str | None = Field(None, description="ml: an estimator name (RandomForest, "
                                  "HistGradientBoosting, LogisticRegression, Ridge, ...) or a dotted path")
    network: Literal[NETWORKS] = Field("mlp", description="dl: mlp, lstm or tcn (temporal convolution)")
    params: dict[str, Any] = Field(default_factory=dict, description="estimator or network parameters")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="dl: auto = CUDA when present")
    seed: int = 0
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    cv: CVConfig = CVConfig()
    tuning: TuningConfig | None = None
    sweep: dict[str, list[Any]] | None = Field(None, description="a grid of parameter values, each combination "
                                               "scored by the purged CV (the leaderboard)")

    @property
    def task(self) -> str:
        return "classification" if self.target == "label" else "regression"

    @property
    def estimator_path(self) -> str:
        name = self.estimator or ""
        if name in ESTIMATOR_FAMILIES:
            name = ESTIMATOR_FAMILIES[name][self.task == "regression"]
        return ESTIMATORS.get(name, name)

    @model_validator(mode="after")
    def _kind_fields(self) -> ModelConfig:
        if self.kind == "ml":
            if not self.estimator:
                raise ValueError("an ml model needs an estimator (e.g. RandomForest or a dotted path)")
            if "." not in self.estimator_path:
                known = ", ".join([*ESTIMATOR_FAMILIES, *ESTIMATORS])
                raise ValueError(f"unknown estimator {self.estimator!r}: use one of {known} or a dotted path "
                                 "like sklearn.svm.SVC")
        else:
            unknown = sorted(set(self.params) - set(DL_DEFAULTS))
            if unknown:
                raise ValueError(f"unknown dl params {', '.join(unknown)} (known: {', '.join(DL_DEFAULTS)})")
            if self.missing == "keep":
                raise ValueError("dl models need missing: drop or median (a network cannot take NaN)")
        if self.tuning is not None and self.sweep is not None:
            raise ValueError("give tuning or sweep, not both")
        wrong = {"classification": ("r2",), "regression": ("accuracy", "neg_log_loss")}[self.task]
        if self.cv.scoring in wrong:
            raise ValueError(f"cv.scoring {self.cv.scoring} does not score {self.task} (target {self.target})")
        return self

    def dl_params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**DL_DEFAULTS, **self.params, **(overrides or {})}


class ValidationConfig(MetadataModel):
    """Overfitting gates (asset checks on each model's validation asset)."""

    pbo_max: float = Field(0.5, ge=0, le=1, description="fail when the probability of backtest overfitting "
                           "is above this")
    dsr_min: float = Field(0.95, ge=0, le=1, description="fail when the deflated Sharpe ratio is below this")
    pbo_blocks: int = Field(16, ge=2, description="CSCV blocks (even); fewer when the track record is short")
    blocking: bool = Field(True, description="a failed gate stops the assets downstream of the model")

    @field_validator("pbo_blocks")
    @classmethod
    def _even(cls, n: int) -> int:
        if n % 2:
            raise ValueError("pbo_blocks must be even (CSCV halves the blocks)")
        return n
