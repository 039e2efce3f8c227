"""Limit-order-book reconstruction from order-level messages (LOBSTER's message format), depth N.

The kernels follow the conventions of ``kernels.py``: typed read-only arrays, int64 UTC-nanosecond
timestamps, work cut into (symbol, date) segments given as offsets ``off[s]:off[s+1]``, ``cache=True``.

Messages (one row each, in the order the exchange applied them): ``type``, ``size``, ``price``,
``direction`` (+1 buy: the bid side, -1 sell: the ask side; for executions and cancels it is the side of
the *resting* order, as in LOBSTER). Types:

- 1 submission: adds ``size`` at ``price``;
- 2 partial cancellation: removes ``size`` (the cancelled quantity);
- 3 deletion: removes ``size`` (the remaining quantity of the order);
- 4 visible execution: removes ``size`` (the executed quantity);
- 5 hidden execution, 6 cross trade, 7 halt and anything else: the visible book is unchanged.

Every LOBSTER message carries price, size and direction, so the book is kept as aggregate visible size per
price level and no order table is needed. What this cannot know:

- Orders resting before the segment starts are unknown unless an initial book is given (``init_*``: the
  first N levels per side, e.g. the first row of LOBSTER's orderbook file), and even then only N levels of
  it are. A cancel or execution against a level the book does not know, or for more than the size it
  knows, is *clamped*: the level's size goes to zero (the level is removed) and the segment's clamp count
  is incremented. The clamp counts are returned per segment as a measure of how incomplete the starting
  book was.
- A level whose remaining size is at most ``SIZE_EPS`` is removed (float sizes; integer sizes are exact).
- LOBSTER writes only the messages inside the requested price range: a level-N message file lacks the
  submissions behind level N, so a level-1 file cannot tell which level a message emptying the top
  reveals. On the AMZN level-1 sample day, a book seeded from every previous orderbook row and stepped
  one message matches the next row on every message that does not empty a top level (43,561 of 57,514);
  seeded only from row 0, the day's book is right on 52 rows (the top empties on message 2).

Snapshots carry the top ``depth`` levels per side (NaN where a side has fewer levels) and the metrics of
``cdm_lob_l2`` (see ``kernels.lob_snapshots``): mid, microprice, spread, spread in bps, and per level the
imbalance ``(bid_sz - ask_sz) / (bid_sz + ask_sz)`` and the cumulative depth of each side.

Two modes: ``book_per_message`` (the book after every message: comparable with LOBSTER's orderbook file
row by row) and ``book_grid`` (the book after the last message with ``ts <= g`` at grid times
``g = offset + k * interval`` from the segment's first to its last message, as ``lob_snapshots`` does).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numba import njit

from quantflow.state_engine.bars import parse_duration
from quantflow.state_engine.kernels import _grid_bounds, fill_book_metrics

SUBMIT = 1
CANCEL = 2
DELETE = 3
EXECUTE = 4
HIDDEN_EXECUTE = 5
HALT = 7

SIZE_EPS = 1e-9

# LOBSTER's sentinel prices for an empty level in its orderbook file
LOBSTER_EMPTY_BID = -9999999999
LOBSTER_EMPTY_ASK = 9999999999


# ----------------------------------------------------------------------------------------- book state
#
# One side of the book is two arrays (key, size) of the side's levels, sorted ascending by key, best level
# last (activity is near the top, so inserts and removals there shift few elements). Bids use key = price,
# asks key = -price.


@njit(cache=True)
def _find(keys, n, key):
    """Position of ``key`` in ``keys[:n]`` (sorted ascending), or where it would be inserted."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _add(keys, sizes, n, key, size):
    """Add ``size`` at ``key``; returns the new number of levels."""
    i = _find(keys, n, key)
    if i < n and keys[i] == key:
        sizes[i] += size
        return n
    for j in range(n, i, -1):
        keys[j] = keys[j - 1]
        sizes[j] = sizes[j - 1]
    keys[i] = key
    sizes[i] = size
    return n + 1


@njit(cache=True)
def _remove(keys, sizes, n, key, size):
    """Remove ``size`` at ``key``; returns (new number of levels, 1 if clamped else 0)."""
    i = _find(keys, n, key)
    if i >= n or keys[i] != key:
        return n, 1  # level unknown: nothing to remove from
    rem = sizes[i] - size
    clamped = 1 if rem < -SIZE_EPS else 0
    if rem > SIZE_EPS:
        sizes[i] = rem
        return n, clamped
    for j in range(i, n - 1):
        keys[j] = keys[j + 1]
        sizes[j] = sizes[j + 1]
    return n - 1, clamped


@njit(cache=True)
def _seed(keys, sizes, s, init_px, init_sz, sign):
    """Levels of segment ``s``'s initial book (NaN price or non-positive size: no level)."""
    n = 0
    for lv in range(init_px.shape[1]):
        p = init_px[s, lv]
        z = init_sz[s, lv]
        if p == p and z == z and z > SIZE_EPS:
            n = _add(keys, sizes, n, sign * p, z)
    return n


@njit(cache=True)
def _apply(mtype, size, price, direction, bk, bs, nb, ak, asz, na):
    """Apply one message; returns (nb, na, clamped)."""
    if size != size or price != price:
        return nb, na, 0
    if mtype == SUBMIT:
        if size > 0.0:
            if direction > 0:
                nb = _add(bk, bs, nb, price, size)
            elif direction < 0:
                na = _add(ak, asz, na, -price, size)
        return nb, na, 0
    if mtype == CANCEL or mtype == DELETE or mtype == EXECUTE:
        c = 0
        if direction > 0:
            nb, c = _remove(bk, bs, nb, price, size)
        elif direction < 0:
            na, c = _remove(ak, asz, na, -price, size)
        return nb, na, c
    return nb, na, 0  # hidden execution, cross trade, halt: the visible book is unchanged


@njit(cache=True)
def _emit(r, bk, bs, nb, ak, asz, na, outs):
    """Write the top levels of the current book into output row ``r``, then its cdm_lob_l2 metrics."""
    o_bpx, o_bsz, o_apx, o_asz = outs[0], outs[1], outs[2], outs[3]
    for lv in range(o_bpx.shape[1]):
        if lv < nb:
            o_bpx[r, lv] = bk[nb - 1 - lv]
            o_bsz[r, lv] = bs[nb - 1 - lv]
        else:
            o_bpx[r, lv] = np.nan
            o_bsz[r, lv] = np.nan
        if lv < na:
            o_apx[r, lv] = -ak[na - 1 - lv]
            o_asz[r, lv] = asz[na - 1 - lv]
        else:
            o_apx[r, lv] = np.nan
            o_asz[r, lv] = np.nan
    fill_book_metrics(r, outs)


def _outputs(n, depth):
    return (
        *(np.empty((n, depth), np.float64) for _ in range(7)),
        *(np.empty(n, np.float64) for _ in range(4)),
    )


def _capacity(off, init_px):
    """Levels one side can hold: the initial levels plus one per message of the longest segment."""
    longest = int(np.max(np.diff(off))) if off.shape[0] > 1 else 0
    return max(1, longest + init_px.shape[1])


@njit(cache=True)
def _per_message_into(mtype, size, price, direction, off, ibp, ibs, iap, ias, cap, outs, clamps):
    bk = np.empty(cap, np.float64)
    bs = np.empty(cap, np.float64)
    ak = np.empty(cap, np.float64)
    asz = np.empty(cap, np.float64)
    for s in range(off.shape[0] - 1):
        nb = _seed(bk, bs, s, ibp, ibs, 1.0)
        na = _seed(ak, asz, s, iap, ias, -1.0)
        c = 0
        for i in range(off[s], off[s + 1]):
            nb, na, cl = _apply(mtype[i], size[i], price[i], direction[i], bk, bs, nb, ak, asz, na)
            c += cl
            _emit(i, bk, bs, nb, ak, asz, na, outs)
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
    _per_message_into(
        mtype, size, price, direction, off, ibp, ibs, iap, ias, _capacity(off, ibp), outs, clamps
    )
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
def _grid_into(
    ts,
    mtype,
    size,
    price,
    direction,
    off,
    ibp,
    ibs,
    iap,
    ias,
    cap,
    interval,
    offset,
    counts,
    o_ts,
    o_qts,
    o_seg,
    o_nupd,
    outs,
    clamps,
):
    bk = np.empty(cap, np.float64)
    bs = np.empty(cap, np.float64)
    ak = np.empty(cap, np.float64)
    asz = np.empty(cap, np.float64)
    r = 0
    for s in range(off.shape[0] - 1):
        nb = _seed(bk, bs, s, ibp, ibs, 1.0)
        na = _seed(ak, asz, s, iap, ias, -1.0)
        c = 0
        i0 = off[s]
        i1 = off[s + 1]
        if i1 == i0:
            clamps[s] = 0
            continue
        g, hi = _grid_bounds(ts[i0], ts[i1 - 1], interval, offset)
        last = i0  # first message not yet counted in n_updates
        for i in range(i0, i1):
            nb, na, cl = _apply(mtype[i], size[i], price[i], direction[i], bk, bs, nb, ak, asz, na)
            c += cl
            # grid times g with ts[i] <= g < ts[i + 1] see the book after message i
            while g <= hi and (i == i1 - 1 or g < ts[i + 1]):
                if g >= ts[i]:
                    o_ts[r] = g
                    o_qts[r] = ts[i]
                    o_seg[r] = s
                    o_nupd[r] = i + 1 - last
                    last = i + 1
                    _emit(r, bk, bs, nb, ak, asz, na, outs)
                    r += 1
                g += interval
        clamps[s] = c
    return r


def book_grid(ts, mtype, size, price, direction, off, depth, interval, offset=0, init=None):
    """Snapshots of the book on the grid ``offset + k * interval`` (ns), segment by segment.

    The snapshot at grid time ``g`` is the book after the last message with ``ts <= g``; a segment's grid
    covers its first to its last message (as ``kernels.lob_snapshots``). ``ts`` must be non-decreasing
    inside every segment. Returns ``(ts, quote_ts, segment, n_updates, bid_px, bid_size, ask_px, ask_size,
    imbalance, bid_depth, ask_depth, mid, microprice, spread, spread_bps, clamps)``; ``quote_ts`` is the
    timestamp of the last message applied, ``n_updates`` the messages since the previous snapshot.
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    ibp, ibs, iap, ias = _check_init(off, depth, init)
    counts = _grid_counts(ts, off, interval, offset)
    total = int(counts.sum())
    o_ts = np.empty(total, np.int64)
    o_qts = np.empty(total, np.int64)
    o_seg = np.empty(total, np.int64)
    o_nupd = np.empty(total, np.int64)
    outs = _outputs(total, depth)
    clamps = np.zeros(off.shape[0] - 1, np.int64)
    r = _grid_into(
        ts,
        mtype,
        size,
        price,
        direction,
        off,
        ibp,
        ibs,
        iap,
        ias,
        _capacity(off, ibp),
        interval,
        offset,
        counts,
        o_ts,
        o_qts,
        o_seg,
        o_nupd,
        outs,
        clamps,
    )
    assert r == total
    return (o_ts, o_qts, o_seg, o_nupd, *outs, clamps)


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
    from quantflow.state_engine.engine import UTC_NS, _i64, _ro, _runs, lob_frame

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
    msgs, off, keys = _runs(msgs, "ts", "_row")
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
    ts = _i64(msgs["ts"])
    args = (
        _ro(msgs["type"].to_numpy(), np.int8),
        _ro(msgs["size"].to_numpy(), np.float64),
        _ro(msgs["price"].to_numpy(), np.float64),
        _ro(msgs["direction"].to_numpy(), np.int8),
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
        levels = res[4:-1]
    symbols = pl.Series("symbol", [k[0] for k in keys], dtype=pl.Utf8)
    days = np.array([k[1] for k in keys], np.int64)
    return lob_frame(symbols, days, (g_ts, g_qts, g_seg, g_nupd), levels, depth)
