"""Out-of-sample predictions by walk-forward refits and purged cross-validation, for any ``Learner``.

Pure: a ``TrainingSet`` and a learner in, predictions and per-fold figures out; no I/O, no Dagster. Every
prediction is made by a model whose training rows all ended (``t1``) before the prediction's event started:
walk-forward trains on the bars before each test block, purged of labels that reach into it, and each
prediction carries its fold and that fold's training span.

A model's bet on an event (used for its Sharpe ratio, the tuning score, PBO and the DSR): the sign of its
prediction (the expected label, or the regression value) times the label's return; for meta-labels
(classes 0/1) a bet of size 1 when P(1) > 0.5, else none, times the side-adjusted return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantflow.compute.overfitting import sharpe_ratio
from quantflow.compute.purged_cv import CombinatorialPurgedCV, PurgedKFold, WalkForward
from quantflow.compute.stage import Progress
from quantflow.models.dataset import TrainingSet


@dataclass
class Predicted:
    """Predictions for some rows of a training set (``rows``: positions in it)."""

    rows: np.ndarray
    score: np.ndarray  # expected label (classification) or predicted value (regression)
    label: np.ndarray | None = None  # predicted class
    probability: np.ndarray | None = None  # probability of the predicted class
    fold: np.ndarray | None = None


class Learner(ABC):
    """A model kind: fits on some rows of a training set, predicts others, serializes what it fitted."""

    kind: str
    artifact_prefix: str  # the blob artifacts' prefix: ml_engine_ / nn_engine_
    extension: str

    def __init__(self, cfg, classes: np.ndarray | None, progress: Progress | None = None, meta: bool = False):
        self.cfg, self.classes = cfg, classes
        self.progress = progress or Progress()
        self.meta = meta  # meta-labels (0/1: take the primary side's bet or not)

    @abstractmethod
    def fit(self, data: TrainingSet, rows: np.ndarray, weights: np.ndarray, params: dict[str, Any],
            label: str = "") -> Any: ...

    @abstractmethod
    def predict(self, fitted: Any, data: TrainingSet, rows: np.ndarray) -> Predicted: ...

    @abstractmethod
    def dumps(self, fitted: Any, info: dict[str, Any]) -> bytes:
        """The fitted model and ``info`` (features, classes, ...) as the bytes of its artifact."""

    def versions(self) -> dict[str, str]:
        return {}


def bets(score: np.ndarray, meta: bool) -> np.ndarray:
    return (score > 0.5).astype(np.float64) if meta else np.sign(score)


def period_returns(t0: np.ndarray, pnl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean bet return per event start time (the symbols of one date form one period)."""
    times, inverse = np.unique(t0, return_inverse=True)
    sums = np.bincount(inverse, weights=pnl, minlength=times.size)
    counts = np.bincount(inverse, minlength=times.size)
    return times, sums / np.maximum(counts, 1)


def safe_sharpe(returns: np.ndarray) -> float:
    if returns.size < 2 or not np.isfinite(returns).all() or np.std(returns, ddof=1) == 0:
        return 0.0
    return float(sharpe_ratio(returns))


def fold_scores(data: TrainingSet, pred: Predicted, meta: bool, task: str) -> dict[str, float]:
    """Out-of-sample figures of one fold: accuracy (classification) or r2 (regression), and the Sharpe
    ratio (per period) of the fold's bets."""
    y, ret, t0 = data.y[pred.rows], data.ret[pred.rows], data.t0[pred.rows]
    _, per_period = period_returns(t0, bets(pred.score, meta) * np.nan_to_num(ret))
    out = {"sharpe": safe_sharpe(per_period), "n": float(pred.rows.size)}
    if task == "classification" and pred.label is not None:
        out["accuracy"] = float(np.mean(pred.label == y))
    elif task == "regression":
        total = np.sum((y - y.mean()) ** 2)
        out["r2"] = float(1 - np.sum((y - pred.score) ** 2) / total) if total > 0 else 0.0
    return out


@dataclass
class Fold:
    index: int
    train_start: int  # first training event start (ns)
    train_end: int  # last training label end (ns): every prediction of the fold starts after it
    test_start: int
    test_end: int
    n_train: int
    n_test: int
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        import datetime as dt

        def iso(ns: int) -> str:
            return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat()

        return {"fold": self.index, "train_start": iso(self.train_start), "train_end": iso(self.train_end),
                "test_start": iso(self.test_start), "test_end": iso(self.test_end), "n_train": self.n_train,
                "n_test": self.n_test, **{k: round(v, 6) for k, v in self.scores.items()}}


WeightsOf = Callable[[np.ndarray], np.ndarray]  # training rows -> their sample weights


def walk_forward(data: TrainingSet, learner: Learner, params: dict[str, Any], cfg, weights_of: WeightsOf,
                 since_ns: int | None = None, progress: Progress | None = None
                 ) -> tuple[Predicted, list[Fold], Any]:
    """Refit on each walk-forward split (``cfg``: ``WalkForwardConfig``) and predict its test block. Folds
    are numbered from the data's first bar, so a fold keeps its number as data is added; ``since_ns``: only
    the folds whose test block reaches that time or later are fitted. Returns the predictions, the folds and
    the last fold's fitted model (the one to use from here on)."""
    progress = progress or Progress()
    splitter = WalkForward(cfg.train, cfg.test, cfg.step, cfg.expanding)
    t0, t1 = data.t0, data.t1
    splits = [s for s in splitter.split(t0, t1) if since_ns is None or t0[s.test[-1]] >= since_ns]
    progress.begin(len(splits), "refits", f"{learner.cfg.name} walk-forward")
    parts, folds, fitted = [], [], None
    for split in splits:
        k = split.test_blocks[0]
        if split.train.size == 0:
            raise ValueError(f"walk-forward fold {k}: no training rows left after purging")
        fitted = learner.fit(data, split.train, weights_of(split.train), params, label=f"fold {k}")
        pred = learner.predict(fitted, data, split.test)
        pred.fold = np.full(split.test.size, k, dtype=np.int64)
        parts.append(pred)
        folds.append(Fold(k, int(t0[split.train].min()), int(t1[split.train].max()), int(t0[split.test].min()),
                          int(t0[split.test].max()), int(split.train.size), int(split.test.size),
                          fold_scores(data, pred, learner.meta, learner.cfg.task)))
        progress.advance(1, int(split.test.size))
    return concat(parts), folds, fitted


def concat(parts: list[Predicted]) -> Predicted:
    if not parts:
        return Predicted(np.empty(0, np.int64), np.empty(0), None, None, np.empty(0, np.int64))

    def joined(name):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return Predicted(joined("rows"), joined("score"), joined("label"), joined("probability"), joined("fold"))


@dataclass
class CVOutcome:
    """A configuration scored by purged CV: its folds' scores, the score it is ranked by, the Sharpe ratio
    of its out-of-sample bets per period (CPCV: the mean over its backtest paths), and those bets' returns per
    period (CPCV: averaged over the paths), the column it adds to the PBO matrix."""

    fold_scores: list[dict[str, float]]
    score: float
    times: np.ndarray
    returns: np.ndarray
    sharpe: float = 0.0


def cross_validate(data: TrainingSet, learner: Learner, params: dict[str, Any], cfg, weights_of: WeightsOf,
                   rows: np.ndarray | None = None) -> CVOutcome:
    """Purged k-fold or CPCV (``cfg``: ``CVConfig``) of one configuration over ``rows`` of the training
    set (default: all; ordered by event start)."""
    rows = np.arange(data.n) if rows is None else np.asarray(rows)
    t0, t1 = data.t0[rows], data.t1[rows]
    if cfg.method == "cpcv":
        splitter = CombinatorialPurgedCV(cfg.n_splits, cfg.n_test_groups, cfg.embargo)
    else:
        splitter = PurgedKFold(cfg.n_splits, cfg.embargo)
    scores, preds = [], []
    for split in splitter.split(t0, t1):
        train, test = rows[split.train], rows[split.test]
        if train.size == 0:
            raise ValueError(f"cross-validation split {split.test_blocks}: no training rows left after purging")
        fitted = learner.fit(data, train, weights_of(train), params, label=f"cv {split.test_blocks}")
        pred = learner.predict(fitted, data, test)
        preds.append(pred)
        fs = fold_scores(data, pred, learner.meta, learner.cfg.task)
        if cfg.scoring == "neg_log_loss":
            fs["neg_log_loss"] = _neg_log_loss(data, pred, learner, fitted)
        scores.append(fs)
    ret = np.nan_to_num(data.ret[rows])
    if cfg.method == "cpcv":
        paths = [bets(p, learner.meta) * ret for p in splitter.assemble_paths(t0, [p.score for p in preds])]
        per_path = [period_returns(t0, pnl) for pnl in paths]
        times = per_path[0][0]
        returns = np.mean([r for _, r in per_path], axis=0)
        sharpe = float(np.mean([safe_sharpe(r) for _, r in per_path]))
    else:
        score = np.empty(data.n)
        for p in preds:
            score[p.rows] = p.score
        times, returns = period_returns(t0, bets(score[rows], learner.meta) * ret)
        sharpe = safe_sharpe(returns)
    value = sharpe if cfg.scoring == "sharpe" else float(np.mean([s.get(cfg.scoring, np.nan) for s in scores]))
    return CVOutcome(scores, value, times, returns, sharpe)


def _neg_log_loss(data: TrainingSet, pred: Predicted, learner: Learner, fitted: Any) -> float:
    proba = getattr(learner, "probabilities", None)
    if proba is None:
        return float("nan")
    p, classes = proba(fitted, data, pred.rows)
    y = data.y[pred.rows]
    pos = np.searchsorted(classes, y)
    found = (pos < classes.size) & (classes[np.minimum(pos, classes.size - 1)] == y)
    chosen = np.where(found, p[np.arange(y.size), np.minimum(pos, classes.size - 1)], 0.0)
    return float(np.mean(np.log(np.clip(chosen, 1e-15, 1.0))))
