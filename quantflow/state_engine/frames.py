"""The polars <-> numpy boundary of the state engine: typed, read-only arrays for the kernels in, polars
columns and tables out, and the (symbol, date) segments a frame is cut into."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

from quantflow.state_engine import kernels as _k
from quantflow.storage.schemas import UTC_NS

__all__ = ["UTC_NS", "as_f64", "as_i64", "date_series", "lob_frame", "read_only", "segment_runs", "symbol_starts",
           "ts_series"]


def symbol_starts(df: pl.DataFrame) -> np.ndarray:
    """Rows where the symbol changes. One symbol (the usual shard) is recognised with one comparison per
    row; several are found from the lengths of the symbol's runs (half the time of comparing each row with a
    shifted copy); different first and last symbols skip the first."""
    sym = df["symbol"]
    if sym.null_count():
        raise ValueError("symbol has nulls")
    if sym[0] == sym[-1] and df.select((pl.col("symbol") == pl.col("symbol").first()).all()).item():
        return np.zeros(1, np.int64)
    lengths = sym.rle().struct.field("len").to_numpy()
    return read_only(np.concatenate(([0], np.cumsum(lengths[:-1]))), np.int64)


def segment_runs(
    df: pl.DataFrame, ts_col: str, id_col: str
) -> tuple[pl.DataFrame, np.ndarray, list[tuple[str, int]]]:
    """(symbol, date) runs of ``df``; sorts it when the runs are not in order or ``ts`` goes backwards."""
    for attempt in range(2):
        if df.height == 0:
            return df, np.zeros(1, np.int64), []
        day = read_only(df["date"].cast(pl.Int32).to_numpy(), np.int32)
        sym_starts = symbol_starts(df)
        if sym_starts.shape[0] == 1 and day.min() == day.max():  # the usual shard: one symbol, one day
            off, ok = np.array([0, df.height], np.int64), True
        else:
            off, ok = _k.segment_offsets(sym_starts, day)
        starts = off[:-1]
        keys = list(zip(df["symbol"].gather(starts).to_list(), day[starts].astype(np.int64).tolist()))
        ok = ok and all(a < b for a, b in itertools.pairwise(keys))
        ok = ok and _k.sorted_within(as_i64(df[ts_col]), off)
        if ok:
            return df, off, keys
        if attempt == 0:
            df = df.sort("symbol", "date", ts_col, id_col)
    raise AssertionError("sorting did not order the frame")  # pragma: no cover


def read_only(a: np.ndarray, dtype) -> np.ndarray:
    """A C-contiguous, read-only array of ``dtype``, copying only when needed.

    Zero-copy views of polars columns are read-only and Numba compiles read-only and writable arrays
    as different types; handing the kernels read-only arrays always keeps one compiled signature.
    """
    a = np.ascontiguousarray(a, dtype=dtype).view()
    a.flags.writeable = False
    return a


def as_f64(s: pl.Series) -> np.ndarray:
    return read_only(s.to_numpy(), np.float64)


def as_i64(s: pl.Series) -> np.ndarray:
    return read_only(s.cast(pl.Int64).to_numpy(), np.int64)


def ts_series(name: str, values: np.ndarray, has_missing: bool = True) -> pl.Series:
    s = pl.Series(name, values, dtype=pl.Int64)
    if has_missing and values.size and (values == _k.NO_TS).any():
        s = pl.select(pl.when(s != _k.NO_TS).then(s)).to_series().alias(name)
    return s.cast(UTC_NS)


def date_series(days: np.ndarray) -> pl.Series:
    return pl.Series("date", days.astype(np.int32)).cast(pl.Date)


def lob_frame(seg_symbols: pl.Series, seg_days: np.ndarray, grid: tuple, levels: tuple, depth: int) -> pl.DataFrame:
    """The ``cdm_lob_l2`` table from snapshot kernel outputs, for every book source (quotes or messages).

    ``grid``: (ts, quote_ts, segment, n_updates) per snapshot; ``levels``: the 7 per-level (rows, available
    depth) arrays then mid, microprice, spread, spread_bps (``kernels.fill_book_metrics`` order). Levels
    beyond the available depth are null columns.
    """
    g_ts, g_qts, g_seg, g_nupd = grid
    bpx, bsz, apx, asz, imb, bdep, adep, mid, micro, spr, spr_bps = levels
    avail = bpx.shape[1]
    cols = [
        seg_symbols.gather(g_seg).alias("symbol"),
        date_series(seg_days[g_seg]),
        pl.Series("ts", g_ts).cast(UTC_NS),
        pl.Series("quote_ts", g_qts).cast(UTC_NS),
        pl.Series("n_updates", g_nupd),
        pl.Series("mid", mid, nan_to_null=True),
        pl.Series("microprice", micro, nan_to_null=True),
        pl.Series("spread", spr, nan_to_null=True),
        pl.Series("spread_bps", spr_bps, nan_to_null=True),
    ]
    for lv in range(depth):
        k = lv + 1
        for name, arr in (
            (f"bid_price_{k}", bpx),
            (f"bid_size_{k}", bsz),
            (f"ask_price_{k}", apx),
            (f"ask_size_{k}", asz),
            (f"imbalance_{k}", imb),
            (f"bid_depth_{k}", bdep),
            (f"ask_depth_{k}", adep),
        ):
            if lv < avail:
                cols.append(pl.Series(name, np.ascontiguousarray(arr[:, lv]), nan_to_null=True))
            else:
                cols.append(pl.Series(name, [None] * len(g_ts), dtype=pl.Float64))
    return pl.DataFrame(cols)
