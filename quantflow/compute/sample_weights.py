"""Sample weights of a training set of overlapping labels (AFML ch. 4), from the per-event columns of
``cdm_labels``: what the label engine stores and the models stage weighs each training fold with."""

from __future__ import annotations

import numpy as np
import polars as pl


def training_weights(labels: pl.DataFrame, sample_weight: str = "uniqueness", decay: float = 1.0) -> pl.Series:
    """The sample weight of each event of a training set (one label set, rows in event order per symbol):
    average uniqueness, or the return attribution scaled to sum to the number of events (AFML 4.10), times
    the time decay ``decay`` over cumulative uniqueness (4.11). Both are relative to the
    training set (its size, its newest event), so the models stage computes them on each training fold;
    ``cdm_labels`` stores the parts that depend on one event and its neighbours only. Per symbol (each
    symbol's series is its own sequence of overlapping labels, in event order); returned in the rows' order."""
    weights = np.empty(labels.height)
    rows = labels.with_row_index("__row")
    for _, one in rows.sort("symbol", "ts", maintain_order=True).group_by("symbol", maintain_order=True):
        uniq = one["uniqueness"].to_numpy()
        if sample_weight == "uniqueness":
            base = uniq
        else:
            attribution = one["return_attribution"].to_numpy()
            total = attribution.sum()
            base = attribution * (attribution.shape[0] / total) if total > 0 else attribution
        weights[one["__row"].to_numpy()] = base * time_decay(uniq, decay)
    return pl.Series("weight", weights)


def time_decay(uniqueness: np.ndarray, c: float) -> np.ndarray:
    """AFML snippet 4.11: a piecewise-linear decay over cumulative uniqueness, 1 for the newest event and
    ``c`` for the oldest (``c < 0``: the oldest ``|c|`` share gets 0; ``c = 1``: no decay)."""
    if uniqueness.shape[0] == 0:
        return uniqueness.copy()
    x = np.cumsum(uniqueness)
    last = x[-1]
    slope = (1.0 - c) / last if c >= 0 else 1.0 / ((c + 1.0) * last)
    const = 1.0 - slope * last
    return np.maximum(const + slope * x, 0.0)
