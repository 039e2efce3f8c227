"""The training set of a model: labels joined point in time to the features known when each event starts.

A label event starts at ``ts`` (its bar's close) and ends at ``t1``. The features it may use are the last
feature row *known* by then. When is a row known? A row of an intraday bar table at its ``ts`` (the bar's
last trade); a row of a daily table at the end of its date, stamped ``date 00:00 UTC``, so it is known at
``date + 1 day 00:00 UTC``. Joining on those "known at" times (as of, backward, per symbol) gives daily
events the features of the same day, intraday events the daily features of the day before, and daily events
the last intraday features of their day: no event sees a feature from after its start.

Missing features (warm-up of long windows): ``drop`` removes the row; ``median`` and ``keep`` leave NaN for
the model (imputed with the training fold's medians, or passed to an estimator that takes NaN). Rows with
no feature row yet, or no target, are always dropped. The counts are in ``dropped``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np
import polars as pl

ONE_DAY_NS = 86_400 * 10**9
KEYS = ("symbol", "date", "ts")


def feature_columns(available: list[str], wanted: list[str] | None) -> list[str]:
    """The feature columns a model uses: ``wanted`` names and fnmatch patterns, in table order."""
    candidates = [c for c in available if c not in KEYS]
    if not wanted:
        return candidates
    return [c for c in candidates if any(fnmatchcase(c, p) for p in wanted)]


def known_at(daily: bool) -> pl.Expr:
    ts = pl.col("ts").cast(pl.Datetime("ns", "UTC"))
    return (ts + pl.duration(days=1, time_unit="ns")) if daily else ts


@dataclass
class TrainingSet:
    """Rows ordered by (event start, symbol): what the splits need. ``bars`` holds every feature row of the
    symbols (ordered by symbol, then time), so a sequence model can look at the bars before an event."""

    rows: pl.DataFrame  # symbol, date, ts, t1, target, ret, label, uniqueness, return_attribution, bar
    features: list[str]
    bars: np.ndarray  # (n_bars, n_features) float64
    bar_row: np.ndarray  # each row's feature row in ``bars``
    symbol_start: np.ndarray  # each row's symbol's first row in ``bars``
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.rows.height

    @property
    def X(self) -> np.ndarray:  # noqa: N802 (the usual name of a design matrix)
        return self.bars[self.bar_row]

    @property
    def y(self) -> np.ndarray:
        return self.rows["target"].to_numpy()

    @property
    def ret(self) -> np.ndarray:
        return self.rows["ret"].to_numpy().astype(np.float64)

    @property
    def t0(self) -> np.ndarray:
        return self.rows["ts"].cast(pl.Int64).to_numpy()

    @property
    def t1(self) -> np.ndarray:
        return self.rows["t1"].cast(pl.Int64).to_numpy()

    def fingerprint(self) -> str:
        """sha256 of what training sees (features, target, returns, weights' inputs, times, symbols)."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.features).encode())
        weights = self.rows.select("uniqueness", "return_attribution").to_numpy().astype(np.float64)
        for arr in (np.ascontiguousarray(self.X), self.y.astype(np.float64), self.ret, weights, self.t0, self.t1):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\x1f".join(self.rows["symbol"].to_list()).encode())
        return h.hexdigest()

    def sequences(self, rows: np.ndarray, window: int) -> np.ndarray:
        """(len(rows), window, n_features): the ``window`` feature rows up to each row's own, oldest first;
        before the symbol's first bar, NaN."""
        offsets = np.arange(-window + 1, 1)
        idx = self.bar_row[rows, None] + offsets[None, :]
        valid = idx >= self.symbol_start[rows, None]
        out = self.bars[np.where(valid, idx, 0)]
        out[~valid] = np.nan
        return out


def build_training_set(features: pl.DataFrame, labels: pl.DataFrame, columns: list[str], *, target: str,
                       missing: str, features_daily: bool, labels_daily: bool) -> TrainingSet:
    """``features``: ``ft_features`` rows (symbol, date, ts, ``columns``); ``labels``: one label set's rows
    of ``cdm_labels``. See the module docstring for the point-in-time rule and the missing-value policy."""
    dropped: dict[str, int] = {}
    bars = (features.select([*KEYS, *columns]).sort("symbol", "ts")
            .with_row_index("bar").with_columns(known_at(features_daily).alias("known")))
    first = bars.group_by("symbol").agg(pl.col("bar").min().alias("symbol_start"))
    events = (labels.select("symbol", "date", "ts", "t1", "ret", "label", "uniqueness", "return_attribution",
                            pl.col(target).cast(pl.Float64).alias("target"))
              .with_columns(known_at(labels_daily).alias("known")).sort("known"))
    joined = events.join_asof(bars.select("symbol", "known", "bar").sort("known"), on="known", by="symbol",
                              strategy="backward", check_sortedness=False)  # sorted by known: so per symbol
    joined = joined.join(first, on="symbol", how="left")
    no_bar = joined["bar"].null_count()
    if no_bar:
        dropped["no features yet"] = no_bar
    joined = joined.filter(pl.col("bar").is_not_null())
    no_target = joined.filter(pl.col("target").is_null() | pl.col("target").is_nan()).height
    if no_target:
        dropped["no target"] = no_target
    joined = joined.filter(pl.col("target").is_not_null() & pl.col("target").is_not_nan())
    matrix = bars.select(columns).cast(pl.Float64).fill_null(np.nan).to_numpy() if columns else np.empty(
        (bars.height, 0))
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    if missing == "drop" and joined.height:
        complete = ~np.isnan(matrix[joined["bar"].to_numpy()]).any(axis=1)
        if (~complete).any():
            dropped["missing features"] = int((~complete).sum())
        joined = joined.filter(pl.Series(complete))
    rows = joined.sort("ts", "symbol").drop("known")
    return TrainingSet(rows, list(columns), matrix, rows["bar"].to_numpy().astype(np.int64),
                       rows["symbol_start"].to_numpy().astype(np.int64), dropped)
