"""Weekly and monthly bars from daily bars (no ticks)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quantflow.state_engine import resample_daily_bars
from tests.state_engine import reference as ref
from tests.state_engine.helpers import DAILY_DIR, assert_close

COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume", "n_days"]


def load_daily(symbols: tuple[str, ...]) -> pl.DataFrame:
    frames = []
    for sym in symbols:
        path = DAILY_DIR / f"{sym}.csv"
        if not path.exists():
            pytest.skip("the daily sample is not in ../shared/data")
        raw = pl.read_csv(path, try_parse_dates=True)
        factor = pl.col("adjusted_close") / pl.col("close")
        frames.append(
            raw.select(
                pl.lit(sym).alias("symbol"),
                pl.col("timestamp").cast(pl.Date).alias("date"),
                *(pl.col(c) * factor for c in ("open", "high", "low", "close")),
                pl.col("volume").cast(pl.Float64),
                factor.alias("adj_factor"),
            )
        )
    return pl.concat(frames)


@pytest.mark.parametrize("every", ["1w", "1mo"])
def test_real_daily_history_matches_pandas(every):
    daily = load_daily(("AAPL", "MSFT"))
    got = resample_daily_bars(daily, every)
    assert_close(got, ref.resample_daily(daily, every), COLUMNS)
    assert got["volume"].sum() == pytest.approx(daily["volume"].sum())
    assert (got["period_start"] <= got["date"]).all()


def test_week_labels():
    days = [dt.date(2024, 1, d) for d in (2, 3, 5, 8, 12)]  # Tue, Wed, Fri | Mon, Fri
    daily = pl.DataFrame(
        {
            "symbol": "X",
            "date": days,
            "open": [1.0, 2, 3, 4, 5],
            "high": [2.0, 3, 4, 5, 6],
            "low": [0.5, 1, 2, 3, 4],
            "close": [1.5, 2.5, 3.5, 4.5, 5.5],
            "volume": [10.0, 20, 30, 40, 50],
        }
    )
    weekly = resample_daily_bars(daily, "1w")
    assert weekly["date"].to_list() == [dt.date(2024, 1, 5), dt.date(2024, 1, 12)]
    assert weekly["period_start"].to_list() == [dt.date(2024, 1, 1), dt.date(2024, 1, 8)]
    assert weekly["open"].to_list() == [1.0, 4.0]
    assert weekly["close"].to_list() == [3.5, 5.5]
    assert weekly["volume"].to_list() == [60.0, 90.0]
    assert weekly["adj_factor"].to_list() == [1.0, 1.0]
    with pytest.raises(ValueError, match="resample"):
        resample_daily_bars(daily, "2d")
