"""The training set of a model: labels joined point in time to the features known when each event starts.

A label event starts at ``ts`` (its bar's close) and ends at ``t1``. The features it may use are the last
feature row known by then, per symbol. Rows of daily tables (daily and calendar bars) stand for a whole
trading ``date`` (the exchange-local date of the CDM) and are known at its close; rows of intraday tables
are known at their ``ts`` (the bar's last trade). So:

- daily events, daily features: the row of the same date;
- intraday events, daily features: the row of the last date *before* the event's trading date;
- daily events, intraday features: the last row of the event's trading date (by the exchange-local
  ``date``, not the UTC clock: a session that starts before midnight UTC belongs to the next date);
- intraday events, intraday features: the last row with ``ts`` at or before the event's ``ts``.

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


def _join_keys(features_daily: bool, labels_daily: bool) -> tuple[pl.Expr, pl.Expr]:
    """The as-of keys (features, labels) of the rule in the module docstring: dates when either side is
    daily (an intraday event looks up the day before its own), event times otherwise."""
    if not (features_daily or labels_daily):
        ts = pl.col("ts").cast(pl.Datetime("ns", "UTC"))
        return ts, ts
    day = pl.col("date").cast(pl.Date)
    return day, (day - pl.duration(days=1)) if features_daily and not labels_daily else day


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
    _fingerprint: str | None = field(default=None, repr=False)  # computed once: the run key and the card use it

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
        """sha256 of what training sees: every feature row (a sequence model reads the bars before an event
        too), which row each event uses, target, returns, weights' inputs, times, symbols."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        h.update("\x1f".join(self.features).encode())
        weights = self.rows.select("uniqueness", "return_attribution").to_numpy().astype(np.float64)
        for arr in (self.bars, self.bar_row, self.symbol_start, self.y.astype(np.float64), self.ret, weights,
                    self.t0, self.t1):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\x1f".join(self.rows["symbol"].to_list()).encode())
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    def fingerprint_of(self, rows: np.ndarray, window: int = 1) -> str:
        """sha256 of what a model sees of some rows: their last ``window`` feature rows, target, returns,
        weights' inputs, times and symbols (the selection period's, which stays put as data is added)."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.features).encode())
        weights = self.rows[rows].select("uniqueness", "return_attribution").to_numpy().astype(np.float64)
        for arr in (self.sequences(rows, max(window, 1)), self.y[rows].astype(np.float64), self.ret[rows],
                    weights, self.t0[rows], self.t1[rows]):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\x1f".join(self.rows["symbol"].gather(rows).to_list()).encode())
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
    feature_key, label_key = _join_keys(features_daily, labels_daily)
    bars = (features.select([*KEYS, *columns]).sort("symbol", "ts")
            .with_row_index("bar").with_columns(feature_key.alias("known")))
    first = bars.group_by("symbol").agg(pl.col("bar").min().alias("symbol_start"))
    events = (labels.select("symbol", "date", "ts", "t1", "ret", "label", "uniqueness", "return_attribution",
                            pl.col(target).cast(pl.Float64).alias("target"))
              .with_columns(label_key.alias("known")).sort("known"))
    lookup = bars.select("symbol", "known", "bar")
    if labels_daily and not features_daily:  # several intraday rows per date: the date's last one
        lookup = lookup.group_by("symbol", "known").agg(pl.col("bar").max())
    joined = events.join_asof(lookup.sort("known"), on="known", by="symbol", strategy="backward",
                              check_sortedness=False)  # sorted by the key, so also within each symbol
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
