"""``kind: ml``: scikit-learn estimators by name or dotted path, with the label set's sample weights."""

from __future__ import annotations

import importlib
import inspect
import io
from typing import Any

import numpy as np

from quantflow.models.dataset import TrainingSet
from quantflow.models.engine import Learner, Predicted


def import_estimator(path: str, model: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {model!r}: estimator {path!r} cannot be imported ({exc})") from None


class SklearnLearner(Learner):
    kind = "ml"
    artifact_prefix = "ml_engine_"
    extension = "joblib"

    def build(self, params: dict[str, Any]):
        from sklearn.base import is_classifier, is_regressor

        cls = import_estimator(self.cfg.estimator_path, self.cfg.name)
        merged = {**self.cfg.params, **params}
        try:
            estimator = cls(**merged)
        except TypeError as exc:
            raise ValueError(f"model {self.cfg.name!r}: {self.cfg.estimator_path} rejects its params: {exc}") from None
        if "random_state" in estimator.get_params() and "random_state" not in merged:
            estimator.set_params(random_state=self.cfg.seed)
        wanted = is_classifier if self.cfg.task == "classification" else is_regressor
        if not wanted(estimator):
            raise ValueError(f"model {self.cfg.name!r}: target {self.cfg.target!r} needs a "
                             f"{'classifier' if self.cfg.task == 'classification' else 'regressor'}; "
                             f"{self.cfg.estimator_path} is not one")
        return estimator

    def fit(self, data: TrainingSet, rows: np.ndarray, weights: np.ndarray, params: dict[str, Any],
            label: str = "") -> Any:
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline

        estimator = self.build(params)
        takes_weight = "sample_weight" in inspect.signature(estimator.fit).parameters
        model = estimator
        if self.cfg.missing == "median":  # fitted inside the fold: the medians come from training rows only
            model = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                              ("model", estimator)])
        y = data.y[rows]
        if self.cfg.task == "classification":
            y = y.astype(np.int64)
        fit_kw = {}
        if takes_weight:
            fit_kw = {"model__sample_weight" if model is not estimator else "sample_weight": weights}
        model.fit(data.X[rows], y, **fit_kw)
        return model

    def probabilities(self, fitted: Any, data: TrainingSet, rows: np.ndarray):
        if not hasattr(fitted, "predict_proba"):
            return None
        return fitted.predict_proba(data.X[rows]), np.asarray(fitted.classes_)

    def predict(self, fitted: Any, data: TrainingSet, rows: np.ndarray) -> Predicted:
        X = data.X[rows]  # noqa: N806
        if self.cfg.task == "regression":
            return Predicted(rows, np.asarray(fitted.predict(X), dtype=np.float64))
        if hasattr(fitted, "predict_proba"):
            proba, classes = fitted.predict_proba(X), np.asarray(fitted.classes_)
            best = proba.argmax(axis=1)
            return Predicted(rows, proba @ classes.astype(np.float64), classes[best].astype(np.int64),
                             proba[np.arange(rows.size), best])
        label = np.asarray(fitted.predict(X)).astype(np.int64)
        return Predicted(rows, label.astype(np.float64), label, None)

    def dumps(self, fitted: Any, info: dict[str, Any]) -> bytes:
        import joblib

        buffer = io.BytesIO()
        joblib.dump({"model": fitted, **info}, buffer)
        return buffer.getvalue()

    def versions(self) -> dict[str, str]:
        import sklearn

        return {"scikit-learn": sklearn.__version__}
