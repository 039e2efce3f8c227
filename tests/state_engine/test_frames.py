"""(symbol, day) runs of a frame, as the kernels get them: found without sorting an ordered frame, sorted
otherwise, the same from a frame read as many chunks (one per file) as from one."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from quantflow.state_engine.frames import segment_runs, symbol_starts


def _trades(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"symbol": [r[0] for r in rows], "date": [dt.date(2024, 1, 1) + dt.timedelta(days=r[1]) for r in rows],
         "ts": [r[2] for r in rows], "trade_id": list(range(len(rows)))})


def _expected(df: pl.DataFrame) -> tuple[list[int], list[tuple[str, int]]]:
    """Offsets and keys by a group-by of the sorted frame: an independent computation."""
    runs = (df.sort("symbol", "date", "ts", "trade_id").with_row_index()
            .group_by("symbol", "date", maintain_order=True).agg(pl.col("index").first(), pl.len()))
    starts = runs["index"].to_list()
    keys = [(s, (d - dt.date(1970, 1, 1)).days) for s, d in runs.select("symbol", "date").iter_rows()]
    return [*starts, df.height], keys


def test_runs_of_an_ordered_frame_in_several_chunks_are_found_without_sorting():
    rows = [("AAA", 0, 1), ("AAA", 0, 2), ("AAA", 1, 1), ("BBB", 0, 5), ("BBB", 0, 6), ("BBB", 2, 1), ("CCC", 2, 9)]
    parts = [_trades(rows[:2]), _trades(rows[2:5]), _trades(rows[5:])]
    df = pl.concat(parts, rechunk=False)
    assert df["symbol"].n_chunks() == 3
    out, off, keys = segment_runs(df, "ts", "trade_id")
    assert out is df  # in order already: not sorted again
    assert (off.tolist(), keys) == _expected(df)
    assert symbol_starts(df).tolist() == [0, 3, 6]


def test_a_symbol_that_comes_back_later_is_sorted_into_one_run_per_day():
    rows = [("BBB", 0, 2), ("AAA", 0, 3), ("BBB", 0, 1), ("AAA", 1, 1), ("BBB", 1, 4)]
    df = _trades(rows)
    assert symbol_starts(df).tolist() == [0, 1, 2, 3, 4]
    out, off, keys = segment_runs(df, "ts", "trade_id")
    assert (off.tolist(), keys) == _expected(df)
    assert out["ts"].to_list() == [3, 1, 1, 2, 4]  # AAA day 0, AAA day 1, BBB day 0 (by ts), BBB day 1


def test_one_symbol_is_one_run_per_day():
    df = _trades([("AAA", 0, 1), ("AAA", 0, 1), ("AAA", 3, 0)])
    assert symbol_starts(df).tolist() == [0]
    _, off, keys = segment_runs(df, "ts", "trade_id")
    assert np.array_equal(off, [0, 2, 3]) and keys == [("AAA", 19723), ("AAA", 19726)]
