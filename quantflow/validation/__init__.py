"""Honest validation for models on overlapping labels: purged splits and overfitting statistics, and the
validation stage (``runner.run``, the overfitting gates).

The splits and statistics live in core (``quantflow.compute.purged_cv``, ``quantflow.compute.overfitting``:
plain numpy and scipy, usable without Dagster), because the models stage splits with them and the
validation and backtest stages report them; this package is where a researcher finds them.
"""

from quantflow.compute.overfitting import (
    PBOResult,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    min_track_record_length,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    psr_from_returns,
    sharpe_ratio,
)
from quantflow.compute.purged_cv import (
    CombinatorialPurgedCV,
    PurgedKFold,
    Split,
    WalkForward,
    event_times,
    purged_train,
)

__all__ = [
    "CombinatorialPurgedCV", "PBOResult", "PurgedKFold", "Split", "WalkForward", "deflated_sharpe_ratio",
    "event_times", "expected_max_sharpe", "min_track_record_length", "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting", "psr_from_returns", "purged_train", "sharpe_ratio",
]
