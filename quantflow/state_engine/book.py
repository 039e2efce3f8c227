"""Order-book snapshots rebuilt from order-level messages (LOBSTER's message format), depth N.

The book itself (levels, how each message type changes it, level sets) is core's
``quantflow.compute.order_book``, shared with the LOBSTER feed; this module turns it into ``cdm_lob_l2``
snapshots. The kernels follow the conventions of ``kernels.py``: typed read-only arrays, int64
UTC-nanosecond timestamps, work cut into (symbol, date) segments given as offsets ``off[s]:off[s+1]``,
``cache=True``.

What the messages cannot know: orders resting before the segment starts are unknown unless an initial
book is given (``init_*``: the first N levels per side, e.g. the first row of LOBSTER's orderbook file),
and even then only N levels of it are. Cancels and executions against unknown levels are clamped (see
``order_book``); the clamp counts are returned per segment as a measure of how incomplete the starting
book was. A level-N message file lacks the submissions behind level N, so a level-1 file cannot tell
which level a message emptying the top reveals: on the AMZN level-1 sample day, a book seeded from every
previous orderbook row and stepped one message matches the next row on every message that does not empty
a top level (43,561 of 57,514); seeded only from row 0, the day's book is right on 52 rows. The LOBSTER
feed's level sets close that gap.

Snapshots carry the top ``depth`` levels per side (NaN where a side has fewer levels) and the metrics of
``cdm_lob_l2`` (see ``kernels.lob_snapshots``): mid, microprice, spread, spread in bps, and per level the
imbalance ``(bid_sz - ask_sz) / (bid_sz + ask_sz)`` and the cumulative depth of each side.

Two modes: ``book_per_message`` (the book after every message: comparable with LOBSTER's orderbook file
row by row) and ``book_grid`` (the book after the last message with ``ts <= g`` at grid times
``g = offset + k * interval`` from the segment's first to its last message, as ``lob_snapshots`` does).
``book_grid`` can also continue a segment from the previous one's book (``reset``) and return the whole
book at the end of chosen segments (``save``): that is how the state engine carries a book across days.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numba import njit

from quantflow.compute.order_book import (
    ASK_KEY,
    BID_KEY,
    LEVEL_SET,
    SUBMIT,
    apply_message,
    distinct_prices,
    new_book,
    seed_side,
)
from quantflow.state_engine.bars import parse_duration
from quantflow.state_engine.frames import UTC_NS, as_i64, lob_frame, read_only, segment_runs
from quantflow.state_engine.kernels import _grid_bounds, fill_book_metrics


@njit(cache=True)
def _emit(r, book, nb, na, outs):
    """Write the top levels of the current book into output row ``r``, then its cdm_lob_l2 metrics."""
    o_bpx, o_bsz, o_apx, o_asz = outs[0], outs[1], outs[2], outs[3]
    for lv in range(o_bpx.shape[1]):
        if lv < nb:
            o_bpx[r, lv] = book[BID_KEY, nb - 1 - lv]
            o_bsz[r, lv] = book[BID_KEY + 1, nb - 1 - lv]
        else:
            o_bpx[r, lv] = np.nan
            o_bsz[r, lv] = np.nan
        if lv < na:
            o_apx[r, lv] = -book[ASK_KEY, na - 1 - lv]
            o_asz[r, lv] = book[ASK_KEY + 1, na - 1 - lv]
        else:
            o_apx[r, lv] = np.nan
            o_asz[r, lv] = np.nan
    fill_book_metrics(r, outs)


def _outputs(n, depth):
    return (
        *(np.empty((n, depth), np.float64) for _ in range(7)),
        *(np.empty(n, np.float64) for _ in range(4)),
    )


def _level_bounds(mtype, price, off, reset, ibp, iap):
    """Levels a side can reach by the end of each segment: the levels it started its chain of segments
    (a reset, then continuations) with plus one per submission or level set since, and never more than
    the distinct prices there are. Sizes the book and the saved end books."""
    adds = np.concatenate([[0], np.cumsum((mtype == SUBMIT) | (mtype == LEVEL_SET))])
    seeded = np.maximum(np.isfinite(ibp).sum(axis=1), np.isfinite(iap).sum(axis=1)).astype(np.int64)
    bound = np.empty(off.shape[0] - 1, np.int64)
    chain_seed, chain_start = 0, 0
    for s in range(off.shape[0] - 1):
        if reset[s]:
            chain_seed, chain_start = int(seeded[s]), int(off[s])
        bound[s] = chain_seed + int(adds[off[s + 1]] - adds[chain_start])
    return np.minimum(bound, distinct_prices(price, ibp, iap))


@njit(cache=True)
def _per_message_into(mtype, size, price, direction, off, ibp, ibs, iap, ias, book, outs, clamps):
    for s in range(off.shape[0] - 1):
        nb = seed_side(book, BID_KEY, s, ibp, ibs, 1.0)
        na = seed_side(book, ASK_KEY, s, iap, ias, -1.0)
        c = 0
        for i in range(off[s], off[s + 1]):
            nb, na, cl = apply_message(mtype[i], size[i], price[i], direction[i], book, nb, na)
            c += cl
            _emit(i, book, nb, na, outs)
        clamps[s] = c


def _check_init(off, depth, init):
    n_seg = off.shape[0] - 1
    if init is None:
        z = np.empty((n_seg, 0), np.float64)
        return z, z, z, z
    out = tuple(np.ascontiguousarray(a, np.float64) for a in init)
    if len(out) != 4 or any(a.ndim != 2 or a.shape != (n_seg, out[0].shape[1]) for a in out):
        raise ValueError(
            "init must be 4 arrays (bid_px, bid_sz, ask_px, ask_sz) of shape (n_segments, levels)"
        )
    return out


def book_per_message(mtype, size, price, direction, off, depth, init=None):
    """The book after every message, top ``depth`` levels per side, and its metrics.

    ``mtype`` int8, ``size``/``price`` float64, ``direction`` int8, ``off`` int64 segment offsets;
    ``init``: None or (bid_px, bid_sz, ask_px, ask_sz), each (n_segments, levels), NaN for no level.
    Returns ``(bid_px, bid_size, ask_px, ask_size, imbalance, bid_depth, ask_depth, mid, microprice,
    spread, spread_bps, clamps)``: (n_messages, depth) arrays, then (n_messages,) ones, then the clamp
    count per segment.
    """
    ibp, ibs, iap, ias = _check_init(off, depth, init)
    outs = _outputs(mtype.shape[0], depth)
    clamps = np.zeros(off.shape[0] - 1, np.int64)
    bound = _level_bounds(mtype, price, off, np.ones(off.shape[0] - 1, np.bool_), ibp, iap)
    book = new_book(int(bound.max()) if bound.size else 1)
    _per_message_into(mtype, size, price, direction, off, ibp, ibs, iap, ias, book, outs, clamps)
    return (*outs, clamps)


@njit(cache=True)
def _grid_counts(ts, off, interval, offset):
    n_seg = off.shape[0] - 1
    counts = np.zeros(n_seg, np.int64)
    for s in range(n_seg):
        if off[s + 1] > off[s]:
            lo, hi = _grid_bounds(ts[off[s]], ts[off[s + 1] - 1], interval, offset)
            if hi >= lo:
                counts[s] = (hi - lo) // interval + 1
    return counts


@njit(cache=True)
def _save(s, book, nb, na, e_off, ends, e_nb, e_na):
    """Copy the whole book of segment ``s`` (best level first) into its slot of the end-book rows
    (``ends``: bid px, bid size, ask px, ask size)."""
    o = e_off[s]
    for lv in range(nb):
        ends[0, o + lv] = book[BID_KEY, nb - 1 - lv]
        ends[1, o + lv] = book[BID_KEY + 1, nb - 1 - lv]
    for lv in range(na):
        ends[2, o + lv] = -book[ASK_KEY, na - 1 - lv]
        ends[3, o + lv] = book[ASK_KEY + 1, na - 1 - lv]
    e_nb[s] = nb
    e_na[s] = na


@njit(cache=True)
def _grid_into(
    ts,
    mtype,
    size,
    price,
    direction,
    off,
    reset,
    save,
    ibp,
    ibs,
    iap,
    ias,
    book,
    interval,
    offset,
    o_ts,
    o_qts,
    o_seg,
    o_nupd,
    outs,
    clamps,
    e_off,
    ends,
    e_nb,
    e_na,
):
    nb = 0
    na = 0
    r = 0
    for s in range(off.shape[0] - 1):
        if reset[s]:
            nb = seed_side(book, BID_KEY, s, ibp, ibs, 1.0)
            na = seed_side(book, ASK_KEY, s, iap, ias, -1.0)
        c = 0
        i0 = off[s]
        i1 = off[s + 1]
        if i1 > i0:
            g, hi = _grid_bounds(ts[i0], ts[i1 - 1], interval, offset)
            last = i0  # first message not yet counted in n_updates
            for i in range(i0, i1):
                nb, na, cl = apply_message(mtype[i], size[i], price[i], direction[i], book, nb, na)
                c += cl
                # grid times g with ts[i] <= g < ts[i + 1] see the book after message i
                while g <= hi and (i == i1 - 1 or g < ts[i + 1]):
                    if g >= ts[i]:
                        o_ts[r] = g
                        o_qts[r] = ts[i]
                        o_seg[r] = s
                        o_nupd[r] = i + 1 - last
                        last = i + 1
                        _emit(r, book, nb, na, outs)
                        r += 1
                    g += interval
        clamps[s] = c
        if save[s]:
            _save(s, book, nb, na, e_off, ends, e_nb, e_na)
    return r


def book_grid(ts, mtype, size, price, direction, off, depth, interval, offset=0, init=None, reset=None,
              save=None):
    """Snapshots of the book on the grid ``offset + k * interval`` (ns), segment by segment.

    The snapshot at grid time ``g`` is the book after the last message with ``ts <= g``; a segment's grid
    covers its first to its last message (as ``kernels.lob_snapshots``). ``ts`` must be non-decreasing
    inside every segment. ``reset`` (bool per segment, default all): the segment starts from its ``init``
    book (empty without one) rather than from the book the previous segment ended with. ``save`` (bool
    per segment, default none): return the whole book at the end of those segments.

    Returns ``(ts, quote_ts, segment, n_updates, bid_px, bid_size, ask_px, ask_size, imbalance, bid_depth,
    ask_depth, mid, microprice, spread, spread_bps, clamps, end_books)``; ``quote_ts`` is the timestamp of
    the last message applied, ``n_updates`` the messages since the previous snapshot; ``end_books`` maps
    each saved segment to ``(bid_px, bid_size, ask_px, ask_size)``, best level first.
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    n_seg = off.shape[0] - 1
    ibp, ibs, iap, ias = _check_init(off, depth, init)
    reset = np.ones(n_seg, np.bool_) if reset is None else np.ascontiguousarray(reset, np.bool_)
    save = np.zeros(n_seg, np.bool_) if save is None else np.ascontiguousarray(save, np.bool_)
    if reset.shape != (n_seg,) or save.shape != (n_seg,):
        raise ValueError("reset and save need one flag per segment")
    if n_seg and not reset[0]:
        raise ValueError("the first segment has no previous book to continue: reset[0] must be true")
    bound = _level_bounds(mtype, price, off, reset, ibp, iap)
    e_off = np.zeros(n_seg + 1, np.int64)
    e_off[1:] = np.cumsum(np.where(save, bound, 0))
    ends = np.empty((4, int(e_off[-1])), np.float64)
    e_nb = np.zeros(n_seg, np.int64)
    e_na = np.zeros(n_seg, np.int64)
    total = int(_grid_counts(ts, off, interval, offset).sum())
    o_ts = np.empty(total, np.int64)
    o_qts = np.empty(total, np.int64)
    o_seg = np.empty(total, np.int64)
    o_nupd = np.empty(total, np.int64)
    outs = _outputs(total, depth)
    clamps = np.zeros(n_seg, np.int64)
    r = _grid_into(
        ts,
        mtype,
        size,
        price,
        direction,
        off,
        reset,
        save,
        ibp,
        ibs,
        iap,
        ias,
        new_book(int(bound.max()) if n_seg else 1),
        interval,
        offset,
        o_ts,
        o_qts,
        o_seg,
        o_nupd,
        outs,
        clamps,
        e_off,
        ends,
        e_nb,
        e_na,
    )
    assert r == total
    end_books = {}
    for s in np.flatnonzero(save).tolist():
        o = e_off[s]
        end_books[s] = (
            ends[0, o : o + e_nb[s]].copy(),
            ends[1, o : o + e_nb[s]].copy(),
            ends[2, o : o + e_na[s]].copy(),
            ends[3, o : o + e_na[s]].copy(),
        )
    return (o_ts, o_qts, o_seg, o_nupd, *outs, clamps, end_books)


# ---------------------------------------------------------------------------------------------- polars

MESSAGE_COLUMNS = ("symbol", "date", "ts", "type", "size", "price", "direction")


def book_snapshots(
    messages: pl.DataFrame,
    depth: int,
    interval: str | None,
    offset: str = "0s",
    initial_book: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Order-book snapshots (columns of ``cdm_lob_l2``) reconstructed from order messages.

    ``messages``: columns ``symbol, date, ts, type, size, price, direction`` in the order the messages were
    applied inside each (symbol, date) (sorted here by (symbol, date, ts), stably, if they are not).
    ``interval``: a duration such as ``"1s"`` for snapshots on the grid ``offset + k * interval``, or None
    for one row per message (the book after it; ``quote_ts`` = ``ts``, ``n_updates`` = 1).
    ``initial_book``: optional, one row per (symbol, date) with ``bid_price_k, bid_size_k, ask_price_k,
    ask_size_k`` for k = 1..M (null: no level): the book before the first message.
    Returns symbol, date, ts, quote_ts, n_updates, mid, microprice, spread, spread_bps and per level
    bid_price_k, bid_size_k, ask_price_k, ask_size_k, imbalance_k, bid_depth_k, ask_depth_k.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    missing = [c for c in MESSAGE_COLUMNS if c not in messages.columns]
    if missing:
        raise ValueError(f"messages are missing columns {missing}; has {messages.columns}")
    msgs = messages.select(
        pl.col("symbol").cast(pl.Utf8),
        pl.col("date").cast(pl.Date),
        pl.col("ts").cast(UTC_NS),
        pl.col("type").cast(pl.Int8),
        pl.col("size").cast(pl.Float64),
        pl.col("price").cast(pl.Float64),
        pl.col("direction").cast(pl.Int8),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
    )
    if msgs["ts"].null_count():
        raise ValueError("messages have null timestamps")
    msgs, off, keys = segment_runs(msgs, "ts", "_row")
    n_seg = len(keys)
    init = None
    if initial_book is not None:
        m = 0
        while f"bid_price_{m + 1}" in initial_book.columns:
            m += 1
        ib = initial_book.with_columns(pl.col("symbol").cast(pl.Utf8), pl.col("date").cast(pl.Date))
        seg_keys = pl.DataFrame(
            {"symbol": [k[0] for k in keys], "date": np.array([k[1] for k in keys], np.int32)}
        ).with_columns(pl.col("date").cast(pl.Date))
        ib = seg_keys.join(ib, on=["symbol", "date"], how="left", maintain_order="left")
        init = tuple(
            np.ascontiguousarray(
                np.stack(
                    [
                        ib[f"{name}_{k}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                        for k in range(1, m + 1)
                    ],
                    axis=1,
                ).reshape(n_seg, m)
            )
            for name in ("bid_price", "bid_size", "ask_price", "ask_size")
        )
    ts = as_i64(msgs["ts"])
    args = (
        read_only(msgs["type"].to_numpy(), np.int8),
        read_only(msgs["size"].to_numpy(), np.float64),
        read_only(msgs["price"].to_numpy(), np.float64),
        read_only(msgs["direction"].to_numpy(), np.int8),
        off,
    )
    if interval is None:
        res = book_per_message(*args, depth, init)
        g_ts, g_qts = ts, ts
        g_seg = np.repeat(np.arange(n_seg, dtype=np.int64), np.diff(off))
        g_nupd = np.ones(ts.shape[0], np.int64)
        levels = res[:-1]
    else:
        res = book_grid(ts, *args, depth, parse_duration(interval), parse_duration(offset), init)
        g_ts, g_qts, g_seg, g_nupd = res[:4]
        levels = res[4:-2]
    symbols = pl.Series("symbol", [k[0] for k in keys], dtype=pl.Utf8)
    days = np.array([k[1] for k in keys], np.int64)
    return lob_frame(symbols, days, (g_ts, g_qts, g_seg, g_nupd), levels, depth)
