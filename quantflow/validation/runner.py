"""Validation stage entry point: how much to trust one model's out-of-sample record.

``run(md, window, model=name)`` reads the model's newest card (``models/<name>/``), the trials' returns
of its search and its stored out-of-sample predictions (``pred_<name>``, up to the window's end: the whole
track record, not only the window), and reports:

- the CV scores per fold of the chosen configuration (from the card);
- the Sharpe ratio of the model's bets per period (per event date: not annualized), its skew and kurtosis,
  the probabilistic Sharpe ratio against 0, the minimum track record length at 95%, and the deflated Sharpe
  ratio against the best of the search's N trials (variance of the trials' per-period Sharpe ratios, ddof=1);
- the probability of backtest overfitting by CSCV over the trials' returns (with at least two trials);
- leakage: predictions whose fold's training labels did not all end before the prediction's event.

The overfitting gates (``project.validation``) judge these: PBO above ``pbo_max``, DSR below ``dsr_min`` or
any leakage fail the model's checks. A JSON report goes to ``models/<name>/validation_<ts>.json``.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

from quantflow.compute.overfitting import (
    deflated_sharpe_ratio,
    min_track_record_length,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
)
from quantflow.compute.stage import CheckOutcome, Progress, RunWindow, StageResult
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.artifacts import MODEL_CARD_PREFIX
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.tables import predictions_table

STAGE = "validation"


@dataclass
class ValidationResult(StageResult):
    model: str = ""
    n_trials: int = 1
    n_periods: int = 0
    sharpe: float = float("nan")
    skew: float = float("nan")
    kurtosis: float = float("nan")
    psr: float = float("nan")
    dsr: float = float("nan")
    min_track_record: float = float("nan")
    trials_sharpe_variance: float = 0.0
    pbo: float | None = None
    pbo_blocks: int = 0
    pbo_note: str = "n/a (one trial)"  # why there is no PBO
    other_configurations: int = 0  # stored predictions of earlier configurations, not judged
    leakage_rows: int = 0
    cv_folds: list[dict[str, Any]] = field(default_factory=list)
    summary_artifacts: ClassVar[tuple[str, ...]] = ("validation_url",)

    def headline(self) -> str:
        pbo = f"PBO {self.pbo:.2f} ({self.pbo_blocks} blocks)" if self.pbo is not None else f"PBO {self.pbo_note}"
        return (f"{self.model}: Sharpe {self.sharpe:.3f}/period over {self.n_periods} periods, PSR {self.psr:.2f}, "
                f"DSR {self.dsr:.2f} ({self.n_trials} trials), {pbo}, "
                f"{self.leakage_rows} leaking predictions")

    def key_figures(self) -> dict[str, Any]:
        def num(x):
            return None if x is None or not math.isfinite(x) else round(float(x), 6)

        return {"model": self.model, "trials": self.n_trials, "periods": self.n_periods,
                "sharpe_per_period": num(self.sharpe), "skew": num(self.skew), "kurtosis": num(self.kurtosis),
                "psr": num(self.psr), "dsr": num(self.dsr), "min_track_record_periods": num(self.min_track_record),
                "trials_sharpe_variance": num(self.trials_sharpe_variance),
                "pbo": self.pbo_note if self.pbo is None else round(self.pbo, 6),
                "leaking_predictions": self.leakage_rows, "other_configurations": self.other_configurations,
                "cv_fold_scores": {"folds": self.cv_folds}}


def _model(md: ProjectMetadata, name: str):
    for m in md.project.models or []:
        if m.name == name:
            return m
    raise ValueError(f"no model {name!r} in project.models")


def bet_returns(pred: pl.DataFrame, meta: bool) -> np.ndarray:
    """Per-period (event time) mean return of the model's bets, in time order (see quantflow.models.engine)."""
    score = pred["prediction"].to_numpy()
    bet = (score > 0.5).astype(np.float64) if meta else np.sign(score)
    per = (pred.with_columns(pnl=pl.Series(bet * np.nan_to_num(pred["ret"].to_numpy())))
           .group_by("ts").agg(pl.col("pnl").mean()).sort("ts"))
    return per["pnl"].to_numpy()


def _nothing_to_judge(result: ValidationResult, model: str, gates, began: float) -> ValidationResult:
    """No out-of-sample record yet (the model had too little history): every gate fails, since nothing
    vouches for the model; with ``blocking`` what is downstream waits for a record."""
    why = f"model {model} has no out-of-sample predictions yet (see its stage's warning): nothing to validate"
    result.warnings.append(why)
    severity = "error" if gates.blocking else "warn"
    for name in ("pbo_gate", "dsr_gate", "no_leakage"):
        result.checks[name] = CheckOutcome(name, False, why, severity, {"predictions": 0})
    result.seconds = time.perf_counter() - began
    return result


def _pbo_blocks(wanted: int, periods: int) -> int:
    """The most blocks (even, <= wanted) that leave at least two periods in each."""
    blocks = min(wanted, periods // 2)
    return blocks - blocks % 2


def run(md: ProjectMetadata, window: RunWindow, *, progress: Progress | None = None,
        model: str) -> ValidationResult:
    from scipy.stats import kurtosis, skew

    progress = progress or Progress()
    began = time.perf_counter()
    cfg, gates = _model(md, model), md.project.validation
    progress.begin(1, "model", f"validation {model}")
    result = ValidationResult(STAGE, window, model=model)
    artifacts = project_artifacts(md, f"models/{model}")
    card_url = artifacts.latest(MODEL_CARD_PREFIX[cfg.kind], "json")
    pred = project_lake(md).read(predictions_table(model), list(md.symbols), None, window.end_date)
    if card_url is None or not pred.height:
        return _nothing_to_judge(result, model, gates, began)
    card = json.loads(artifacts.get(card_url))
    result.cv_folds = card["cv"]["fold_scores"]
    mine = pred.filter(pl.col("config") == card["config_key"])  # the newest configuration's record only
    result.other_configurations = pred.height - mine.height
    if result.other_configurations:
        result.warnings.append(f"model {model}: {result.other_configurations:,} stored predictions come from earlier "
                               "configurations or code and are not judged; rerun the model over the whole "
                               "history to judge one record")
    pred = mine
    if not pred.height:
        return _nothing_to_judge(result, model, gates, began)
    result.leakage_rows = pred.filter(pl.col("train_end") >= pl.col("ts")).height
    returns = bet_returns(pred, bool(card["meta_labels"]))
    result.n_periods = returns.size
    trials = pl.read_parquet(io.BytesIO(artifacts.get(card["artifacts"]["trials_url"])))
    matrix = trials.pivot(on="trial", index="ts", values="ret").sort("ts").drop("ts").to_numpy()
    sharpes = np.asarray(card["search"]["trial_sharpes"], dtype=np.float64)
    result.n_trials = int(sharpes.size)
    result.trials_sharpe_variance = float(np.var(sharpes, ddof=1)) if sharpes.size > 1 else 0.0
    if returns.size >= 3 and np.std(returns, ddof=1) > 0:
        result.sharpe = float(returns.mean() / returns.std(ddof=1))
        result.skew, result.kurtosis = float(skew(returns)), float(kurtosis(returns, fisher=False))
        result.psr = probabilistic_sharpe_ratio(result.sharpe, returns.size, result.skew, result.kurtosis)
        result.dsr = deflated_sharpe_ratio(result.sharpe, returns.size, result.skew, result.kurtosis,
                                           result.n_trials, result.trials_sharpe_variance)
        result.min_track_record = min_track_record_length(result.sharpe, result.skew, result.kurtosis)
    else:
        result.warnings.append(f"model {model}: {returns.size} periods of bets, or no variation: no Sharpe ratio")
    blocks = _pbo_blocks(gates.pbo_blocks, matrix.shape[0])
    if matrix.shape[1] >= 2 and blocks >= 2:
        pbo = probability_of_backtest_overfitting(matrix, n_blocks=blocks)
        result.pbo, result.pbo_blocks = pbo.pbo, blocks
        if blocks < gates.pbo_blocks:
            result.warnings.append(f"model {model}: PBO over {blocks} blocks, not {gates.pbo_blocks}: "
                                   f"{matrix.shape[0]} periods of trial returns")
    severity = "error" if gates.blocking else "warn"  # gates that do not block are warnings
    if result.pbo is not None:
        pbo_ok, pbo_value = result.pbo <= gates.pbo_max, result.pbo
    elif result.n_trials < 2:
        pbo_ok, pbo_value = True, "n/a: one configuration, nothing was selected"
    else:  # a selection was made, but the record is too short to judge it: not a pass
        pbo_ok, pbo_value = False, f"not computable: {matrix.shape[0]} periods of trial returns for {result.n_trials} trials"
        result.pbo_note = pbo_value
        result.warnings.append(f"model {model}: PBO {pbo_value}")
    result.checks["pbo_gate"] = CheckOutcome(
        "pbo_gate", pbo_ok, f"probability of backtest overfitting <= {gates.pbo_max}", severity,
        {"pbo": pbo_value, "pbo_max": gates.pbo_max, "trials": result.n_trials})
    dsr_ok = math.isfinite(result.dsr) and result.dsr >= gates.dsr_min
    result.checks["dsr_gate"] = CheckOutcome(
        "dsr_gate", dsr_ok, f"deflated Sharpe ratio >= {gates.dsr_min}", severity,
        {"dsr": result.dsr if math.isfinite(result.dsr) else "n/a", "dsr_min": gates.dsr_min,
         "trials": result.n_trials})
    result.checks["no_leakage"] = CheckOutcome(
        "no_leakage", result.leakage_rows == 0, "every prediction's fold trained only on labels that ended "
        "before the prediction's event", severity, {"leaking_predictions": result.leakage_rows})
    report = {"model": model, "card_url": card_url, **result.key_figures(),
              "gates": {name: check.passed for name, check in result.checks.items()},
              "thresholds": gates.model_dump()}
    result.artifacts["validation_url"] = artifacts.put("validation_", "json",
                                                       json.dumps(report, indent=2, default=str).encode())
    result.artifacts["card_url"] = card_url
    progress.advance(1, int(pred.height))
    progress.detail(result.headline())
    result.seconds = time.perf_counter() - began
    return result
