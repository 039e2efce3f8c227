"""The training-set builder: point in time across daily and intraday clocks, the missing-value policy,
sequences that never cross a symbol or look ahead."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from quantflow.models.dataset import build_training_set, feature_columns

UTC = dt.UTC


def ts(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def features(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"symbol": pl.Utf8, "date": pl.Date, "ts": pl.Datetime("ns", "UTC"),
                                      "f": pl.Float64, "g": pl.Float64}, orient="row")


def labels(rows) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema={"symbol": pl.Utf8, "date": pl.Date, "ts": pl.Datetime("ns", "UTC"),
                                    "t1": pl.Datetime("ns", "UTC"), "label": pl.Int8}, orient="row")
    return df.with_columns(ret=pl.lit(0.01), uniqueness=pl.lit(1.0), return_attribution=pl.lit(1.0),
                           t_value=pl.lit(None, pl.Float64))


D1, D2, D3 = dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)
DAILY = features([("AAA", D1, ts(2024, 1, 2), 1.0, 10.0), ("AAA", D2, ts(2024, 1, 3), 2.0, 20.0),
                  ("AAA", D3, ts(2024, 1, 4), 3.0, 30.0), ("BBB", D1, ts(2024, 1, 2), 7.0, 70.0),
                  ("BBB", D2, ts(2024, 1, 3), 8.0, np.nan)])


def build(f, lab, **kw):
    opts = {"target": "label", "missing": "drop", "features_daily": True, "labels_daily": True, **kw}
    return build_training_set(f, lab, ["f", "g"], **opts)


def test_daily_events_get_the_features_of_their_own_close():
    data = build(DAILY, labels([("AAA", D2, ts(2024, 1, 3), ts(2024, 1, 4), 1),
                                ("BBB", D1, ts(2024, 1, 2), ts(2024, 1, 3), -1)]))
    assert data.rows["symbol"].to_list() == ["BBB", "AAA"]  # ordered by event start
    np.testing.assert_array_equal(data.X, [[7.0, 70.0], [2.0, 20.0]])


def test_intraday_events_get_the_daily_features_of_the_day_before():
    data = build(DAILY, labels([("AAA", D3, ts(2024, 1, 4, 15, 30), ts(2024, 1, 4, 16), 1),
                                ("AAA", D1, ts(2024, 1, 2, 15, 30), ts(2024, 1, 2, 16), 1)]),
                 labels_daily=False)
    # Jan 4 15:30 sees Jan 3's close; Jan 2 15:30 has no earlier daily row: dropped, and counted
    np.testing.assert_array_equal(data.X, [[2.0, 20.0]])
    assert data.dropped == {"no features yet": 1}


def test_daily_events_get_the_last_intraday_features_of_their_day():
    intraday = features([("AAA", D1, ts(2024, 1, 2, 15), 1.0, 1.0), ("AAA", D1, ts(2024, 1, 2, 20), 2.0, 2.0),
                         ("AAA", D2, ts(2024, 1, 3, 1), 9.0, 9.0)])  # stamped after the day: not seen
    data = build(intraday, labels([("AAA", D1, ts(2024, 1, 2), ts(2024, 1, 3), 1)]), features_daily=False)
    np.testing.assert_array_equal(data.X, [[2.0, 2.0]])


def test_missing_features_drop_or_stay_for_the_fold_imputer():
    lab = labels([("BBB", D2, ts(2024, 1, 3), ts(2024, 1, 4), 1), ("AAA", D2, ts(2024, 1, 3), ts(2024, 1, 4), 1)])
    dropped = build(DAILY, lab)
    assert dropped.n == 1 and dropped.dropped == {"missing features": 1}
    kept = build(DAILY, lab, missing="median")
    assert kept.n == 2 and np.isnan(kept.X).sum() == 1 and kept.dropped == {}
    no_target = build(DAILY, lab.with_columns(label=pl.lit(None, pl.Int8)))
    assert no_target.n == 0 and no_target.dropped == {"no target": 2}


def test_sequences_stop_at_the_symbols_first_bar_and_end_at_the_event():
    lab = labels([("AAA", D3, ts(2024, 1, 4), ts(2024, 1, 5), 1), ("BBB", D1, ts(2024, 1, 2), ts(2024, 1, 3), 1)])
    data = build(DAILY, lab, missing="keep")
    seq = data.sequences(np.arange(data.n), 3)
    assert seq.shape == (2, 3, 2)
    assert np.isnan(seq[0, :2]).all() and seq[0, 2].tolist() == [7.0, 70.0]  # BBB Jan 2: nothing before
    assert seq[1].tolist() == [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]  # AAA up to Jan 4, never BBB's rows


def test_feature_selection_by_name_and_pattern():
    cols = ["symbol", "date", "ts", "ret_1", "ret_5", "rsi14", "KMID"]
    assert feature_columns(cols, None) == ["ret_1", "ret_5", "rsi14", "KMID"]
    assert feature_columns(cols, ["ret_*", "KMID"]) == ["ret_1", "ret_5", "KMID"]


def test_fingerprint_changes_with_the_data():
    lab = labels([("AAA", D2, ts(2024, 1, 3), ts(2024, 1, 4), 1)])
    a, b = build(DAILY, lab), build(DAILY.with_columns(pl.col("f") * 2), lab)
    assert a.fingerprint() == build(DAILY, lab).fingerprint() != b.fingerprint()


@pytest.mark.parametrize("daily", [True, False])
def test_no_event_sees_a_feature_row_known_after_it(daily):
    """Intraday events at random times; daily feature rows (one per date) or intraday ones at random times:
    the row each event gets is the latest known before it (an earlier date, or an earlier-or-equal time)."""
    rng = np.random.default_rng(0)
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    if daily:
        times = [base + dt.timedelta(days=i) for i in range(60)]
    else:
        times = sorted(base + dt.timedelta(minutes=int(m)) for m in rng.choice(60 * 24 * 60, 300, replace=False))
    f = features([("AAA", t.date(), t, float(i), 0.0) for i, t in enumerate(times)])
    events = sorted(base + dt.timedelta(minutes=int(m)) for m in rng.choice(60 * 24 * 60, 200, replace=False))
    lab = labels([("AAA", t.date(), t, t + dt.timedelta(hours=5), 1) for t in events])
    data = build(f, lab, features_daily=daily, labels_daily=False)
    assert data.n > 150
    chosen = data.X[:, 0].astype(int)
    starts = data.rows["ts"].to_list()
    for row, event in zip(chosen, starts):
        if daily:
            assert times[row].date() < event.date() and (row + 1 == len(times) or times[row + 1].date() >= event.date())
        else:
            assert times[row] <= event and (row + 1 == len(times) or times[row + 1] > event)


def test_a_session_that_opens_before_midnight_utc_belongs_to_its_own_date():
    """An exchange at UTC+11 (Sydney in summer): the session of Jan 3 starts on Jan 2 at 23:00 UTC. A daily
    event of Jan 2 must not see it, though it comes before Jan 3 00:00 UTC."""
    intraday = features([("AAA", D1, ts(2024, 1, 2, 4), 1.0, 1.0),          # Jan 2 session, 15:00 local
                         ("AAA", D2, ts(2024, 1, 2, 23, 30), 2.0, 2.0)])   # Jan 3 session, 10:30 local
    data = build(intraday, labels([("AAA", D1, ts(2024, 1, 2), ts(2024, 1, 3), 1)]), features_daily=False)
    np.testing.assert_array_equal(data.X, [[1.0, 1.0]])
