"""Honest validation for models on overlapping labels: purged splits and overfitting statistics.

Plain numpy and scipy, usable without Dagster or the rest of QuantFlow. Part of the core layer: the models
stage splits with it, and the validation and backtest stages report its statistics.
"""

from quantflow.validation.splits import (
    CombinatorialPurgedCV,
    PurgedKFold,
    Split,
    WalkForward,
    event_times,
    purged_train,
)
from quantflow.validation.statistics import (
    PBOResult,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    min_track_record_length,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    psr_from_returns,
    sharpe_ratio,
)

__all__ = [
    "CombinatorialPurgedCV", "PBOResult", "PurgedKFold", "Split", "WalkForward", "deflated_sharpe_ratio",
    "event_times", "expected_max_sharpe", "min_track_record_length", "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting", "psr_from_returns", "purged_train", "sharpe_ratio",
]
