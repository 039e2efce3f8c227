"""Models stage entry point: train one configured model walk-forward and store its out-of-sample predictions.

``run(md, window, model=name)``:

1. the training set: ``ft_features`` joined point in time to the model's label set in ``cdm_labels``, over
   every project symbol (a model learns across symbols, so a run for a few symbols predicts them as a
   run for all would), up to the window's end;
2. the configuration: the parameters as configured, or the best trial of a sweep or an Optuna study, each
   trial scored by purged cross-validation;
3. walk-forward refits whose test blocks reach the window: predictions for the window's events, each made
   by a fold whose training labels all ended before the event started, written to ``pred_<model>`` (the
   window's rows are replaced in every write mode: they are what the data implies now);
4. artifacts in ``models/<name>/`` of the blob store: the last fold's fitted model
   (``ml_engine_<ts>.joblib`` / ``nn_engine_<ts>.pt``), its JSON card (features, params, folds and
   training ranges, metrics, library versions, data fingerprint), the trials' returns per period
   (``*_trials_<ts>.parquet``, for PBO and the deflated Sharpe ratio) and the leaderboard
   (``*_leaderboard_<ts>.csv``) when there was a search.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult
from quantflow.metadata.manager import ProjectMetadata
from quantflow.metadata.schema.feature_engine import FeatureDAG
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.schemas import PREDICTIONS_SCHEMA, UTC_NS, TableSpec
from quantflow.storage.tables import (
    FEATURES_TABLE,
    LABELS_TABLE,
    partition_width,
    predictions_partition_width,
    predictions_table,
)

STAGE = "models"


@dataclass
class ModelResult(StageResult):
    model: str = ""
    kind: str = ""
    training_rows: int = 0
    n_features: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    predictions: int = 0
    folds: list[dict[str, Any]] = field(default_factory=list)
    search: str = "single"
    trials: int = 1
    cv_score: float = float("nan")
    scoring: str = ""
    oos_sharpe: float = float("nan")
    best_params: dict[str, Any] = field(default_factory=dict)
    leaderboard: pl.DataFrame | None = field(default=None, repr=False)
    unchanged: bool = False  # inputs as at the newest card: its predictions were kept, nothing refitted
    summary_artifacts: ClassVar[tuple[str, ...]] = ("card_url",)  # the card links the model and the trials

    def headline(self) -> str:
        if self.unchanged:
            return (f"{self.predictions:,} out-of-sample predictions kept: training set, configuration and "
                    f"window as at the last run ({len(self.folds)} refits, CV {self.scoring} {self.cv_score:.3f}, "
                    f"walk-forward Sharpe {self.oos_sharpe:.3f} per period) in {self.seconds:.1f}s")
        search = f"best of {self.trials} {self.search} trials" if self.search != "single" else "as configured"
        return (f"{self.predictions:,} out-of-sample predictions from {len(self.folds)} refits "
                f"({self.training_rows:,} training rows, {self.n_features} features); CV {self.scoring} "
                f"{self.cv_score:.3f} ({search}); walk-forward Sharpe {self.oos_sharpe:.3f} per period "
                f"in {self.seconds:.1f}s")

    def key_figures(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "training_rows": self.training_rows,
                "features": self.n_features, "predictions": self.predictions, "refits": len(self.folds),
                "search": self.search, "trials": self.trials, f"cv_{self.scoring}": round(self.cv_score, 6),
                "walk_forward_sharpe": round(self.oos_sharpe, 6), "best_params": dict(self.best_params),
                "dropped_rows": dict(self.dropped)}


def model_config(md: ProjectMetadata, name: str):
    for m in md.project.models or []:
        if m.name == name:
            return m
    known = ", ".join(m.name for m in md.project.models or []) or "none"
    raise ValueError(f"no model {name!r} in project.models (models: {known})")


def learner_for(cfg, classes, progress: Progress, meta: bool = False):
    if cfg.kind == "ml":
        from quantflow.models.ml import SklearnLearner

        return SklearnLearner(cfg, classes, progress, meta)
    from quantflow.models.dl import TorchLearner

    return TorchLearner(cfg, classes, progress, meta)


class NotEnoughData(Exception):
    """The lake does not hold enough labelled history for the model yet: a warning, not a failure (a daily
    run of the first days of a project has nothing to learn from)."""


def load_training_set(md: ProjectMetadata, cfg, end: dt.date):
    """The model's training set from the lake: all project symbols, events up to ``end``."""
    from quantflow.models.dataset import build_training_set, feature_columns

    fe = md.project.feature_engine
    label_set = next(s for s in md.project.label_engine.labels if s.name == cfg.label_set)
    columns = feature_columns(FeatureDAG.compile(fe, md.symbols).outputs, cfg.features)
    lake = project_lake(md)
    symbols = list(md.symbols)
    features = lake.read(FEATURES_TABLE, symbols, None, end, columns=["symbol", "date", "ts", *columns])
    labels = lake.read(LABELS_TABLE, symbols, None, end)
    if labels.height:
        labels = labels.filter(pl.col("label_set") == cfg.label_set)
    if not features.height or not labels.height:
        missing = FEATURES_TABLE if not features.height else f"{LABELS_TABLE} (label set {cfg.label_set})"
        raise NotEnoughData(f"model {cfg.name}: {missing} has no rows up to {end}: nothing to learn from yet")
    data = build_training_set(features, labels, columns, target=cfg.target, missing=cfg.missing,
                              features_daily=partition_width(fe.input) == "year",
                              labels_daily=partition_width(label_set.input) == "year")
    return data, label_set, labels.height


def selection_rows(cfg, data) -> np.ndarray:
    """The rows the configuration is chosen on (the CV of a sweep or study, and the CV scores reported): the
    events whose labels end before the walk-forward's first test block. Every prediction is then out of
    sample for the fit and for the choice of its parameters, and the choice does not move as data is added."""
    first_test = np.unique(data.t0)[cfg.walk_forward.train]
    return np.flatnonzero(data.t1 < first_test)


def _enough(cfg, data, n_labels: int) -> np.ndarray:
    """The selection rows, when there are enough bars for one walk-forward prediction and for the
    cross-validation's blocks before it; else NotEnoughData."""
    if data.n == 0:
        raise NotEnoughData(f"model {cfg.name}: none of the {n_labels:,} events of label set {cfg.label_set} has "
                            f"a complete feature row (dropped: {data.dropped}); more history, missing: median "
                            "or fewer features")
    bars = np.unique(data.t0).size
    if bars <= cfg.walk_forward.train:
        raise NotEnoughData(f"model {cfg.name}: {bars} bars of labelled events; it needs "
                            f"{cfg.walk_forward.train + 1} (walk_forward.train {cfg.walk_forward.train} before "
                            "its first prediction)")
    rows = selection_rows(cfg, data)
    if np.unique(data.t0[rows]).size < cfg.cv.n_splits:  # fixed by the configuration: more data does not help
        raise StageError(f"model {cfg.name}: {np.unique(data.t0[rows]).size} bars of labels end before the "
                         f"first walk-forward prediction; the {cfg.cv.method} CV needs {cfg.cv.n_splits}: "
                         "raise walk_forward.train or lower cv.n_splits")
    return rows


def _storage_url(md: ProjectMetadata, cfg, artifacts) -> str:
    if cfg.tuning.storage == "postgres":
        from sqlalchemy.engine import URL

        pg = md.local.postgres  # the password comes from the environment; the URL is never logged
        url = URL.create("postgresql+psycopg2", pg.user, pg.password.get_secret_value() or None, pg.host,
                         pg.port, pg.dbname)
        return url.render_as_string(hide_password=False)
    store = artifacts.store
    if store.remote:
        folder = md.project_dir / ".quantflow" / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / f'{cfg.name}.db'}"
    from pathlib import Path

    Path(store.path()).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store.path('optuna.db')}"


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat()


def run(md: ProjectMetadata, window: RunWindow, *, progress: Progress | None = None,
        model: str) -> ModelResult:
    """Train ``model`` walk-forward and store its out-of-sample predictions for the window."""
    from quantflow.compute.sample_weights import training_weights
    from quantflow.models import engine, tuning

    progress = progress or Progress()
    cfg = model_config(md, model)
    began = time.perf_counter()
    result = ModelResult(STAGE, window, model=cfg.name, kind=cfg.kind, scoring=cfg.cv.scoring)
    try:
        data, label_set, n_labels = load_training_set(md, cfg, window.end_date)
        result.training_rows, result.n_features, result.dropped = data.n, len(data.features), data.dropped
        selection = _enough(cfg, data, n_labels)
    except NotEnoughData as exc:
        result.warnings.append(str(exc))
        result.seconds = time.perf_counter() - began
        return result
    progress.detail(f"model {cfg.name}: {data.n:,} training rows x {len(data.features)} features "
                    f"(dropped: {data.dropped or 'none'})")
    classes = np.unique(data.y.astype(np.int64)) if cfg.task == "classification" else None
    meta = label_set.method == "triple_barrier" and label_set.meta_labeling and cfg.target == "label"
    learner = learner_for(cfg, classes, progress, meta)
    keys = data.rows.select("symbol", "ts", "uniqueness", "return_attribution")

    def weights_of(rows: np.ndarray) -> np.ndarray:
        return training_weights(keys[rows], label_set.sample_weight, label_set.time_decay).to_numpy()

    artifacts = project_artifacts(md, f"models/{cfg.name}")
    key = run_key(data, cfg, label_set, window)
    if window.write_mode != "overwrite" and _unchanged(md, artifacts, learner, key, window, result):
        progress.begin(1, "windows", f"{cfg.name} walk-forward")
        progress.advance(1)
        progress.detail(f"model {cfg.name}: training set, configuration and window as at the newest card: "
                        "its predictions kept")
        result.seconds = time.perf_counter() - began
        return result
    try:
        if cfg.tuning is not None:
            with artifacts.store.lock(artifacts.store.path("optuna.db")):  # one study writer per model
                search = tuning.tune(data, learner, weights_of, _storage_url(md, cfg, artifacts), progress,
                                     selection, f"{label_set.sample_weight}:{label_set.time_decay}", _code_version())
        elif cfg.sweep is not None:
            search = tuning.sweep(data, learner, weights_of, progress, selection)
        else:
            search = tuning.single(data, learner, weights_of, selection)
        best = search.best
        # folds reaching the window's first date (a day early: a session may open before midnight UTC); the
        # rows are then kept by their exchange date
        since = int(dt.datetime.combine(window.start_date - dt.timedelta(days=1), dt.time(), dt.UTC).timestamp() * 1e9)
        pred, folds, fitted = engine.walk_forward(data, learner, best.params, cfg.walk_forward, weights_of,
                                                  since, progress)
    except ValueError as exc:
        raise StageError(f"model {cfg.name}: {exc}") from exc
    result.search, result.trials, result.best_params = search.method, len(search.trials), dict(best.params)
    result.cv_score = float(best.outcome.score)
    result.folds = [f.as_dict() for f in folds]

    frame = predictions_frame(data, pred, folds, cfg, config_key(cfg, label_set))
    in_window = frame.filter(pl.col("date").is_between(window.start_date, window.end_date))
    result.predictions = in_window.height
    if in_window.height:
        _, per_period = engine.period_returns(in_window["ts"].cast(pl.Int64).to_numpy(),
                                              engine.bets(in_window["prediction"].to_numpy(), learner.meta)
                                              * np.nan_to_num(in_window["ret"].to_numpy()))
        result.oos_sharpe = engine.safe_sharpe(per_period)
    else:
        result.warnings.append(f"model {cfg.name}: no walk-forward test block falls in the window (the first "
                               f"{cfg.walk_forward.train} bars of the label set only train)")
    lake = project_lake(md)
    table = predictions_table(cfg.name)
    spec = TableSpec(table, PREDICTIONS_SCHEMA, predictions_partition_width(label_set.input), ("symbol", "date", "ts"))
    mine = in_window.filter(pl.col("symbol").is_in(list(window.symbols)))
    result.record_write(table, lake.replace(spec, mine, window.symbols, window.start_date, window.end_date),
                        lake.url(table))
    if mine.height:
        result.preview[table] = mine.head(5)
    if fitted is not None:
        _store_artifacts(result, artifacts, learner, fitted, data, search, cfg, label_set, window, key,
                         _predictions_digest(in_window), selection)
    result.seconds = time.perf_counter() - began
    return result


def predictions_frame(data, pred, folds, cfg, config: str) -> pl.DataFrame:
    by_fold = {f.index: f for f in folds}
    rows = data.rows[pred.rows]
    n = pred.rows.size
    return pl.DataFrame({
        "symbol": rows["symbol"], "date": rows["date"], "ts": rows["ts"], "t1": rows["t1"],
        "model": [cfg.name] * n, "kind": [cfg.kind] * n, "config": [config] * n, "fold": pred.fold,
        "train_start": pl.Series([by_fold[k].train_start for k in pred.fold], dtype=pl.Int64).cast(UTC_NS),
        "train_end": pl.Series([by_fold[k].train_end for k in pred.fold], dtype=pl.Int64).cast(UTC_NS),
        "prediction": pred.score,
        "predicted_label": pl.Series(pred.label if pred.label is not None else [None] * n, dtype=pl.Int64),
        "probability": pl.Series(pred.probability if pred.probability is not None else [None] * n,
                                 dtype=pl.Float64),
        "target": rows["target"], "ret": rows["ret"],
    }, schema=PREDICTIONS_SCHEMA)


def _versions(learner) -> dict[str, str]:
    return {"python": platform.python_version(), "numpy": np.__version__, "polars": pl.__version__,
            **learner.versions()}


def config_key(cfg, label_set) -> str:
    """The model as a method, data aside: its configuration, its label set's weighting, the libraries and
    the code that fit it. Stored on every prediction, so a track record is judged one method at a time."""
    from importlib.metadata import version

    libraries = {name: version(name) for name in ("scikit-learn", "torch", "optuna", "numpy")}
    parts = [cfg.model_dump_json(), label_set.sample_weight, str(label_set.time_decay),
             json.dumps(libraries, sort_keys=True), _code_version()]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def run_key(data, cfg, label_set, window: RunWindow) -> str:
    """What a run's predictions depend on: the training set, the method (``config_key``), the window and
    its symbols. Equal keys, equal predictions (the models are seeded)."""
    parts = [data.fingerprint(), config_key(cfg, label_set), window.start_date.isoformat(),
             window.end_date.isoformat(), ",".join(sorted(window.symbols))]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _predictions_digest(frame: pl.DataFrame) -> dict[str, list]:
    """Per symbol: [rows, hash of (ts, prediction)] of stored predictions, to know they are still those."""
    out = {}
    for (symbol,), part in frame.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        values = part.select(pl.col("ts").cast(pl.Int64), "prediction").to_numpy()
        out[symbol] = [part.height, hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]]
    return out


def _code_version() -> str:
    """A hash of the code that fits and predicts (this package, the splits, the statistics, the weights): a
    fix to it must not leave predictions of the old code in place."""
    from pathlib import Path

    import quantflow.models
    from quantflow.compute import overfitting, purged_cv, sample_weights

    h = hashlib.sha256()
    paths = sorted(Path(quantflow.models.__file__).parent.glob("*.py"))
    for path in [*paths, *(Path(m.__file__) for m in (overfitting, purged_cv, sample_weights))]:
        h.update(path.read_bytes())
    return h.hexdigest()


def _unchanged(md: ProjectMetadata, artifacts, learner, key: str, window: RunWindow, result: ModelResult) -> bool:
    """True when the newest card was made from the same inputs for this window and its predictions are still
    stored: the run then keeps them (no refit), as dbt keeps a model whose inputs did not change."""
    card_url = artifacts.latest(learner.artifact_prefix, "json")
    if card_url is None:
        return False
    card = json.loads(artifacts.get(card_url))
    if card.get("run_key") != key:
        return False
    stored = project_lake(md).read(predictions_table(card["model"]), list(window.symbols), window.start_date,
                                   window.end_date, columns=["symbol", "ts", "prediction"])
    expected = {s: d for s, d in card["predictions_by_symbol"].items() if s in window.symbols}
    if (_predictions_digest(stored) if stored.height else {}) != expected:
        return False
    result.predictions = sum(n for n, _ in expected.values())
    result.folds = card["walk_forward"]["folds"]
    result.search, result.trials = card["search"]["method"], card["search"]["trials"]
    result.best_params, result.cv_score = card["search"]["best_params"], card["cv"]["score"]
    result.oos_sharpe = card["metrics"]["walk_forward_sharpe"]
    result.unchanged = True
    result.artifacts.update(card["artifacts"])
    result.artifacts["card_url"] = card_url
    return True


def _store_artifacts(result: ModelResult, artifacts, learner, fitted, data, search, cfg, label_set,
                     window: RunWindow, key: str, by_symbol: dict[str, list], selection: np.ndarray) -> None:
    prefix = learner.artifact_prefix
    info = {"name": cfg.name, "features": data.features,
            "classes": learner.classes.tolist() if learner.classes is not None else None}
    result.artifacts["model_url"] = artifacts.put(prefix, learner.extension, learner.dumps(fitted, info))
    times, matrix = search.returns_matrix()
    trials = pl.DataFrame({
        "trial": np.repeat([t.number for t in search.trials], times.size),
        "ts": pl.Series(np.tile(times, len(search.trials))).cast(UTC_NS),
        "ret": matrix.T.reshape(-1),
    })
    import io

    buffer = io.BytesIO()
    trials.write_parquet(buffer)
    result.artifacts["trials_url"] = artifacts.put(f"{prefix}trials_", "parquet", buffer.getvalue())
    if search.method != "single":
        board = search.leaderboard()
        result.leaderboard = board
        result.artifacts["leaderboard_url"] = artifacts.put(f"{prefix}leaderboard_", "csv",
                                                            board.write_csv().encode())
    best = search.best
    sharpes = [t.outcome.sharpe for t in search.trials]
    card = {
        "model": cfg.name, "kind": cfg.kind, "task": cfg.task, "label_set": cfg.label_set,
        "label_method": label_set.method, "target": cfg.target, "meta_labels": learner.meta,
        "estimator": cfg.estimator_path if cfg.kind == "ml" else None,
        "network": cfg.network if cfg.kind == "dl" else None,
        "features": data.features, "missing": cfg.missing, "params": {**cfg.params, **best.params},
        "window": {"start_date": window.start_date.isoformat(), "end_date": window.end_date.isoformat()},
        "training_set": {"rows": data.n, "first_event": _iso(int(data.t0.min())), "last_event":
                         _iso(int(data.t0.max())), "dropped": data.dropped, "fingerprint": data.fingerprint()},
        "walk_forward": {**cfg.walk_forward.model_dump(), "folds": result.folds},
        "cv": {**cfg.cv.model_dump(), "fold_scores": best.outcome.fold_scores, "score": best.outcome.score,
               "selection_rows": int(selection.size),
               "selection_last_label_end": _iso(int(data.t1[selection].max())) if selection.size else None},
        "search": {"method": search.method, "trials": len(search.trials), "study": search.study,
                   "best_trial": best.number, "best_params": best.params, "trial_sharpes": sharpes},
        "metrics": {"walk_forward_sharpe": result.oos_sharpe, "predictions": result.predictions},
        "predictions_table": predictions_table(cfg.name),
        "predictions_by_symbol": by_symbol,
        "run_key": key,
        "config_key": config_key(cfg, label_set),
        "artifacts": dict(result.artifacts),
        "versions": _versions(learner),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    result.artifacts["card_url"] = artifacts.put(prefix, "json", json.dumps(card, indent=2, default=str).encode())
