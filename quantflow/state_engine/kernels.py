"""Numba kernels of the state engine: prevailing quote + Lee-Ready direction, order-book snapshots.

Conventions shared with the bar kernels in ``bars.py``:

- Inputs are C-contiguous, read-only typed arrays: int64 UTC-nanosecond timestamps, float64 prices and
  sizes, int8 directions, int64 sequence numbers. Callers (``engine.py``) convert once; a kernel never
  sees Python objects, so one compiled signature serves every call and the on-disk cache
  (``cache=True``) is reused.
- Work is cut into *segments*: one per (symbol, date) shard, given as offsets, rows ``off[s]:off[s+1]``.
  Every kernel loops over segments itself, so 100 symbols cost one call, not 100.
- State is explicit and small. Each kernel takes ``load[s]`` (bool), ``state_i_in[s]`` (int64) and
  ``state_f_in[s]`` (float64): when ``load[s]`` is true the segment starts from that row (a fresh state or
  the state carried from the previous shard), otherwise it continues from the previous segment. The state
  at the end of every segment is returned as well. Running shard N+1 from the state returned by shard N
  is therefore exactly the same computation as running both in one call.
- Timestamps are int64; a missing timestamp is ``NO_TS`` (int64 min), turned into null by the caller.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numba import int64, njit, uint64

NO_TS = np.iinfo(np.int64).min

# Lee-Ready method codes (cdm_trade_enriched.direction_method)
METHOD_UNCLASSIFIED = 0  # at the mid (or no quote) and no earlier price change to use
METHOD_QUOTE = 1  # price above the mid (buy) or below it (sell)
METHOD_TICK = 2  # at the mid (or no quote): sign of the last non-zero price change

# How a quote and a trade with the same timestamp are ordered
TIE_QUOTES_FIRST = 0  # the quote precedes the trade (default: a quote stamped at the trade's time is known)
TIE_SEQUENCE = 1  # the quote precedes the trade only if quote_id < trade_id (one shared sequence space)

# Enrichment state: int64 [quote_ts], float64 [bid, ask, bid_size, ask_size, last_price, last_tick]
ENRICH_STATE_I = 1
ENRICH_STATE_F = 6


def enrich_fresh_state() -> tuple[np.ndarray, np.ndarray]:
    """State of a shard that starts with no quote and no earlier trade."""
    si = np.array([NO_TS], dtype=np.int64)
    sf = np.array([np.nan, np.nan, np.nan, np.nan, np.nan, 0.0], dtype=np.float64)
    return si, sf


def enrich_trades(
    t_ts,
    t_seq,
    t_price,
    t_size,
    t_off,
    q_ts,
    q_seq,
    q_bid,
    q_ask,
    q_bid_size,
    q_ask_size,
    q_off,
    tie_rule,
    load,
    state_i_in,
    state_f_in,
    threads: int = 1,
    min_chunk: int = 250_000,
):
    """Attach the prevailing quote to every trade and classify it (see ``enrich_trades_into``).

    The 13 output columns are allocated here with numpy rather than inside the kernel: numpy asks the
    kernel for huge pages on large arrays, Numba's allocator does not, and the page faults of 13 freshly
    allocated columns cost as much as the whole merge (measured 544 vs 266 ms for 10M trades).

    ``threads`` > 1 runs the kernel on that many contiguous ranges of trades at once (it holds no GIL), each
    at least ``min_chunk`` trades: the merge is bound by memory traffic, which one core does not saturate.
    A range may start inside a (symbol, date) segment; it starts from the state the serial pass has there
    (``enrich_cuts``), so the result is the serial pass's, bit for bit.
    Returns the columns (quote_ts, bid, ask, bid_size, ask_size, mid, spread, spread_bps, direction,
    method, signed_volume, effective_spread, effective_spread_bps), the end states, and the numbers of
    trades without a usable mid and without any quote.
    """
    n = t_ts.shape[0]
    outs = (
        np.empty(n, np.int64),
        *(np.empty(n, np.float64) for _ in range(7)),
        np.empty(n, np.int8),
        np.empty(n, np.int8),
        *(np.empty(n, np.float64) for _ in range(3)),
    )
    trades = (t_ts, t_seq, t_price, t_size)
    quotes = (q_ts, q_seq, q_bid, q_ask, q_bid_size, q_ask_size)
    ranges = enrich_cuts(trades, quotes, t_off, q_off, tie_rule, load, state_i_in, state_f_in,
                         min(threads, n // max(1, min_chunk)))
    if len(ranges) == 1:
        s_i, s_f, n_no_mid, n_no_quote = enrich_trades_into(*trades, t_off, *quotes, q_off, tie_rule, load,
                                                            state_i_in, state_f_in, *outs)
        return outs, s_i, s_f, n_no_mid, n_no_quote
    from concurrent.futures import ThreadPoolExecutor

    def run(r: EnrichRange):
        return enrich_trades_into(*trades, r.t_off, *quotes, r.q_off, tie_rule, r.load, r.state_i, r.state_f,
                                  *outs)

    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        results = list(pool.map(run, ranges))
    s_i, s_f = np.empty_like(state_i_in), np.empty_like(state_f_in)
    for r, (ri, rf, _, _) in zip(ranges, results, strict=True):  # a segment cut in two: the later part's end
        s_i[r.segments] = ri
        s_f[r.segments] = rf
    return outs, s_i, s_f, sum(int(x[2]) for x in results), sum(int(x[3]) for x in results)


@dataclass(frozen=True)
class EnrichRange:
    """Contiguous trades for one run of ``enrich_trades_into``: its own segment offsets (global row
    numbers), the original segment of each (``segments``), and the state each starts from."""

    t_off: np.ndarray
    q_off: np.ndarray
    segments: np.ndarray
    load: np.ndarray
    state_i: np.ndarray
    state_f: np.ndarray


def enrich_cuts(trades, quotes, t_off, q_off, tie_rule, load, state_i_in, state_f_in,
                parts: int) -> list[EnrichRange]:
    """Up to ``parts`` ranges of about equal trades for ``enrich_trades`` to run side by side.

    A range may start where a segment that loads its state starts, or inside one, at a trade stamped later
    than the trade before it: there the serial pass's state is known without running it
    (``enrich_state_at``).
    A segment continued from the previous one (``load`` false: carried state) is never entered, so with
    carried state fewer ranges may come back."""
    t_ts = trades[0]
    n, n_seg = t_ts.shape[0], t_off.shape[0] - 1
    cuts: list[tuple[int, int]] = []  # (segment, first trade of the next range)
    for c in range(1, max(1, parts)):
        target = n * c // parts
        s = int(np.searchsorted(t_off, target, side="right")) - 1
        if s >= n_seg or not load[s] or target <= (cuts[-1][1] if cuts else t_off[0]):
            continue
        lo, hi = int(t_off[s]), int(t_off[s + 1])
        if target == lo:
            cuts.append((s, lo))
            continue
        step = _next_step(t_ts, target, hi)
        if step < hi:
            cuts.append((s, step))
    if not cuts:
        return [EnrichRange(t_off, q_off, np.arange(n_seg), load, state_i_in, state_f_in)]

    def like(new: np.ndarray, old: np.ndarray) -> np.ndarray:  # one compiled signature: same flags
        new.flags.writeable = old.flags.writeable
        return new

    ranges = []
    for (s0, m0), (s1, m1) in itertools.pairwise([(0, int(t_off[0])), *cuts, (n_seg, int(t_off[-1]))]):
        last = s1 if s1 < n_seg and m1 > t_off[s1] else s1 - 1  # ends inside segment s1, or before it
        t_r = t_off[s0:last + 2].copy()
        q_r = q_off[s0:last + 2].copy()
        t_r[0], t_r[-1] = m0, min(int(t_r[-1]), m1)
        ld, si, sf = (a[s0:last + 1].copy() for a in (load, state_i_in, state_f_in))
        if m0 > t_off[s0]:  # starts inside segment s0
            q_r[0], si[0], sf[0] = enrich_state_at(*trades[:3], *quotes, int(t_off[s0]), m0, int(q_off[s0]),
                                                   int(q_off[s0 + 1]), tie_rule, state_i_in[s0], state_f_in[s0])
            ld[0] = True
        # a range that ends inside a segment keeps the segment's quotes: its cursor stops before any quote
        # stamped after its last trade, and the range after it writes the segment's end state
        ranges.append(EnrichRange(like(t_r, t_off), like(q_r, q_off), np.arange(s0, last + 1), like(ld, load),
                                  like(si, state_i_in), like(sf, state_f_in)))
    return ranges


@njit(cache=True)
def _next_step(ts, i, hi):
    """The first ``j`` in ``i:hi`` with ``ts[j] > ts[j - 1]`` (``hi`` if none): a scan that stops there."""
    while i < hi and ts[i] <= ts[i - 1]:
        i += 1
    return i


@njit(cache=True, nogil=True)
def enrich_state_at(t_ts, t_seq, t_price, q_ts, q_seq, q_bid, q_ask, q_bid_size, q_ask_size, t0, m, q0, q1,
                    tie_rule, si_in, sf_in):
    """The serial pass's state just before trade ``m`` of a segment whose trades start at ``t0`` and quotes
    span ``q0:q1``, loaded with ``si_in`` / ``sf_in``; ``t_ts[m] > t_ts[m - 1]``, so no quote stamped at or
    after trade ``m - 1``'s time is behind the serial cursor there. Returns the first quote index for the
    rest of the segment, and the state rows."""
    t = t_ts[m]
    if tie_rule == TIE_QUOTES_FIRST:
        j = q0 + np.searchsorted(q_ts[q0:q1], t, side="right")
    else:
        j = q0 + np.searchsorted(q_ts[q0:q1], t, side="left")
        while j < q1 and q_ts[j] == t and q_seq[j] < t_seq[m]:
            j += 1
    si = si_in.copy()
    sf = sf_in.copy()
    if j > q0:
        k = j - 1
        si[0] = q_ts[k]
        sf[0] = q_bid[k]
        sf[1] = q_ask[k]
        sf[2] = q_bid_size[k]
        sf[3] = q_ask_size[k]
    tick = 0
    i = m - 1
    while i > t0 and tick == 0:  # the last non-zero tick before trade m
        tick = int64(t_price[i] > t_price[i - 1]) - int64(t_price[i] < t_price[i - 1])
        i -= 1
    if tick == 0:
        tick = int64(t_price[t0] > sf_in[4]) - int64(t_price[t0] < sf_in[4])
    if tick == 0:
        tick = int64(sf_in[5])
    sf[4] = t_price[m - 1]
    sf[5] = tick
    return j, si, sf


@njit(cache=True, nogil=True)
def enrich_trades_into(
    t_ts,
    t_seq,
    t_price,
    t_size,
    t_off,
    q_ts,
    q_seq,
    q_bid,
    q_ask,
    q_bid_size,
    q_ask_size,
    q_off,
    tie_rule,
    load,
    state_i_in,
    state_f_in,
    o_qts,
    o_bid,
    o_ask,
    o_bsz,
    o_asz,
    o_mid,
    o_spr,
    o_spr_bps,
    o_dir,
    o_method,
    o_svol,
    o_eff,
    o_eff_bps,
):
    """Attach the prevailing quote to every trade and classify it with the Lee-Ready rule.

    The prevailing quote of a trade is the last quote that precedes it: ``q_ts < t_ts``, or equal
    timestamps ordered by ``tie_rule``. The quote cursor only moves forward, so a trade never sees a quote
    stamped after it (no look-ahead) and the merge is one linear pass over both inputs.

    Lee-Ready: above the mid is a buy (+1), below a sell (-1) (quote rule). At the mid, or with no usable
    quote (none yet, or a NaN side), the tick rule applies: the sign of the price change from the previous
    trade, and on a zero tick the last non-zero one. The tick history runs over all trades of the symbol,
    whatever rule classified them. The updates are written branch-free (comparisons as 0/1 integers):
    the outcome of a price comparison is unpredictable, and a mispredicted branch per trade costs more
    than the arithmetic.

    Writes the ``o_*`` columns; returns the end states and the numbers of trades without a usable mid
    and without any quote.
    """
    n_seg = t_off.shape[0] - 1
    s_i = np.empty((n_seg, ENRICH_STATE_I), np.int64)
    s_f = np.empty((n_seg, ENRICH_STATE_F), np.float64)

    qts = NO_TS
    bid = np.nan
    ask = np.nan
    bsz = np.nan
    asz = np.nan
    last_p = np.nan
    last_tick = int64(0)
    n_no_mid = 0
    n_no_quote = 0
    for s in range(n_seg):
        if load[s]:
            qts = state_i_in[s, 0]
            bid = state_f_in[s, 0]
            ask = state_f_in[s, 1]
            bsz = state_f_in[s, 2]
            asz = state_f_in[s, 3]
            last_p = state_f_in[s, 4]
            last_tick = int64(state_f_in[s, 5])
        # Unsigned indices: a signed index costs a wraparound check on every array access.
        q0 = uint64(q_off[s])
        q1 = uint64(q_off[s + 1])
        j = q0
        for i in range(uint64(t_off[s]), uint64(t_off[s + 1])):
            t = t_ts[i]
            if j < q1:
                if tie_rule == TIE_QUOTES_FIRST:  # no sequence numbers to read: a lighter loop
                    while j < q1 and q_ts[j] <= t:
                        j += uint64(1)
                else:
                    seq = t_seq[i]
                    while j < q1 and (q_ts[j] < t or (q_ts[j] == t and q_seq[j] < seq)):
                        j += uint64(1)
                if j > q0:
                    k = j - uint64(1)
                    qts = q_ts[k]
                    bid = q_bid[k]
                    ask = q_ask[k]
                    bsz = q_bid_size[k]
                    asz = q_ask_size[k]
            p = t_price[i]
            mid = 0.5 * (bid + ask)
            quote_dir = int64(p > mid) - int64(p < mid)  # NaN mid compares false: 0
            tick = int64(p > last_p) - int64(p < last_p)  # no previous trade: 0
            last_tick = tick + last_tick * int64(tick == 0)
            at_mid = int64(quote_dir == 0)
            d = quote_dir + last_tick * at_mid
            o_method[i] = (1 - at_mid) * METHOD_QUOTE + at_mid * int64(last_tick != 0) * METHOD_TICK
            o_dir[i] = d
            last_p = p
            spread = ask - bid
            eff = 2.0 * abs(p - mid)
            o_qts[i] = qts
            o_bid[i] = bid
            o_ask[i] = ask
            o_bsz[i] = bsz
            o_asz[i] = asz
            o_mid[i] = mid
            n_no_mid += np.isnan(mid)
            n_no_quote += qts == NO_TS
            o_spr[i] = spread
            o_spr_bps[i] = spread / mid * 1e4
            o_svol[i] = d * t_size[i]
            o_eff[i] = eff
            o_eff_bps[i] = eff / mid * 1e4
        if q1 > q0:  # quotes after the last trade still prevail for the next shard
            k = q1 - uint64(1)
            qts = q_ts[k]
            bid = q_bid[k]
            ask = q_ask[k]
            bsz = q_bid_size[k]
            asz = q_ask_size[k]
        s_i[s, 0] = qts
        s_f[s, 0] = bid
        s_f[s, 1] = ask
        s_f[s, 2] = bsz
        s_f[s, 3] = asz
        s_f[s, 4] = last_p
        s_f[s, 5] = last_tick
    return s_i, s_f, n_no_mid, n_no_quote


@njit(cache=True)
def _grid_bounds(first_ts, last_ts, interval, offset):
    """First and last grid time inside [first_ts, last_ts] on the grid ``offset + k * interval``."""
    lo = -((-(first_ts - offset)) // interval) * interval + offset  # ceil
    hi = ((last_ts - offset) // interval) * interval + offset  # floor
    return lo, hi


@njit(cache=True)
def fill_book_metrics(r, outs):
    """The cdm_lob_l2 metrics of output row ``r``, whose level prices and sizes are already written.

    One definition for every book source (quote rows here, reconstructed books in ``book.py``). ``outs``:
    (bid_px, bid_sz, ask_px, ask_sz, imbalance, bid_depth, ask_depth) as (rows, depth) arrays, then
    (mid, microprice, spread, spread_bps) as (rows,) arrays.
    """
    o_bpx, o_bsz, o_apx, o_asz, o_imb, o_bdep, o_adep, o_mid, o_micro, o_spr, o_bps = outs
    bdep = 0.0
    adep = 0.0
    for lv in range(o_bpx.shape[1]):
        b = o_bsz[r, lv]
        a = o_asz[r, lv]
        o_imb[r, lv] = (b - a) / (b + a)
        bdep += b
        adep += a
        o_bdep[r, lv] = bdep
        o_adep[r, lv] = adep
    b1 = o_bpx[r, 0]
    a1 = o_apx[r, 0]
    bs1 = o_bsz[r, 0]
    as1 = o_asz[r, 0]
    mid = 0.5 * (b1 + a1)
    o_mid[r] = mid
    o_micro[r] = (b1 * as1 + a1 * bs1) / (bs1 + as1)
    o_spr[r] = a1 - b1
    o_bps[r] = (a1 - b1) / mid * 1e4


@njit(cache=True)
def lob_snapshots(q_ts, bid_px, bid_sz, ask_px, ask_sz, q_off, interval, offset):
    """Order-book snapshots on a time grid, with mid, microprice, spread, depth and imbalance.

    ``bid_px`` etc. are (n_quotes, depth) arrays: level 1 in column 0. The snapshot at grid time ``g`` is
    the book after the last quote with ``q_ts <= g``: what a strategy polling the book at ``g`` would see.
    The grid of a segment covers the grid times from its first to its last quote, so a snapshot never
    depends on an earlier shard and sharded runs equal unsharded ones without carried state.

    Per level k: imbalance ``(bid_sz - ask_sz) / (bid_sz + ask_sz)`` and cumulative depth on each side
    (sum of sizes of levels 1..k). Top of book: mid, microprice ``(bid * ask_sz + ask * bid_sz) /
    (bid_sz + ask_sz)`` (the mid leaned towards the side more likely to be hit), spread, spread in bps.
    ``n_updates`` counts quote rows since the previous snapshot (since the segment start for the first).
    """
    n_seg = q_off.shape[0] - 1
    depth = bid_px.shape[1]
    counts = np.zeros(n_seg, np.int64)
    total = 0
    for s in range(n_seg):
        if q_off[s + 1] > q_off[s]:
            lo, hi = _grid_bounds(q_ts[q_off[s]], q_ts[q_off[s + 1] - 1], interval, offset)
            if hi >= lo:
                counts[s] = (hi - lo) // interval + 1
        total += counts[s]
    o_ts = np.empty(total, np.int64)
    o_qts = np.empty(total, np.int64)
    o_seg = np.empty(total, np.int64)
    o_nupd = np.empty(total, np.int64)
    o_bpx = np.empty((total, depth), np.float64)
    o_bsz = np.empty((total, depth), np.float64)
    o_apx = np.empty((total, depth), np.float64)
    o_asz = np.empty((total, depth), np.float64)
    o_imb = np.empty((total, depth), np.float64)
    o_bdep = np.empty((total, depth), np.float64)
    o_adep = np.empty((total, depth), np.float64)
    o_mid = np.empty(total, np.float64)
    o_micro = np.empty(total, np.float64)
    o_spr = np.empty(total, np.float64)
    o_spr_bps = np.empty(total, np.float64)
    outs = (o_bpx, o_bsz, o_apx, o_asz, o_imb, o_bdep, o_adep, o_mid, o_micro, o_spr, o_spr_bps)
    r = 0
    for s in range(n_seg):
        if counts[s] == 0:
            continue
        q0 = q_off[s]
        q1 = q_off[s + 1]
        g, _ = _grid_bounds(q_ts[q0], q_ts[q1 - 1], interval, offset)
        j = q0
        for _k in range(counts[s]):
            j_prev = j
            while j < q1 and q_ts[j] <= g:
                j += 1
            k = j - 1  # >= q0: the grid starts at or after the first quote
            o_ts[r] = g
            o_qts[r] = q_ts[k]
            o_seg[r] = s
            o_nupd[r] = j - j_prev
            for lv in range(depth):
                o_bpx[r, lv] = bid_px[k, lv]
                o_apx[r, lv] = ask_px[k, lv]
                o_bsz[r, lv] = bid_sz[k, lv]
                o_asz[r, lv] = ask_sz[k, lv]
            fill_book_metrics(r, outs)
            r += 1
            g += interval
    return (
        o_ts,
        o_qts,
        o_seg,
        o_nupd,
        o_bpx,
        o_bsz,
        o_apx,
        o_asz,
        o_imb,
        o_bdep,
        o_adep,
        o_mid,
        o_micro,
        o_spr,
        o_spr_bps,
    )


@njit(cache=True)
def _run_starts(sym_starts, day, out):
    """Count (and, when ``out`` is big enough, write) the rows that start a (symbol, date) run."""
    n = day.shape[0]
    m = 0
    ok = True
    n_sym = sym_starts.shape[0]
    k = 1
    next_sym = uint64(sym_starts[1]) if n_sym > 1 else uint64(n)
    prev = day[0] if n else 0
    for i in range(uint64(0), uint64(n)):
        d = day[i]
        new_sym = i == next_sym
        if i == 0 or new_sym or d != prev:
            if not new_sym and d < prev:
                ok = False
            if m < out.shape[0]:
                out[m] = i
            m += 1
            if new_sym:
                k += 1
                next_sym = uint64(sym_starts[k]) if k < n_sym else uint64(n)
        prev = d
    return m, ok


@njit(cache=True)
def segment_offsets(sym_starts, day):
    """Offsets of the (symbol, date) runs of a frame, and whether it is sorted by (symbol, date).

    ``sym_starts``: the rows where the symbol changes (row 0 first). Returns the run offsets
    (n_runs + 1) and False when a date goes backwards inside a symbol run (the frame is not sorted).
    The runs are counted before they are written: growing the output inside the loop would rebind an
    array on every row, and reference counting made that several times slower than the loop itself.
    """
    starts = np.empty(64, np.int64)
    m, ok = _run_starts(sym_starts, day, starts)
    if m > starts.shape[0]:
        starts = np.empty(m, np.int64)
        m, ok = _run_starts(sym_starts, day, starts)
    out = np.empty(m + 1, np.int64)
    for i in range(m):  # a loop, not a slice copy: see ``bars._grow``
        out[i] = starts[i]
    out[m] = day.shape[0]
    return out, ok


@njit(cache=True)
def sorted_within(ts, off):
    """True when ``ts`` is non-decreasing inside every segment."""
    for s in range(off.shape[0] - 1):
        if off[s + 1] > off[s]:
            prev = ts[off[s]]
            for i in range(uint64(off[s]), uint64(off[s + 1])):
                t = ts[i]
                if t < prev:
                    return False
                prev = t
    return True
