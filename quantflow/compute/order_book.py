"""The order book as aggregate visible size per price level, rebuilt from order messages (LOBSTER's format).

Shared by two stages, so it lives in core: the LOBSTER feed (ingest) replays its messages against the
book it publishes to write *level sets* (``level_sets``), and the state engine rebuilds books from the
CDM messages (``quantflow.state_engine.book``: snapshots per message or on a time grid). Both apply a
message the same way, ``apply_message``.

Messages (one row each, in the order the exchange applied them): ``type``, ``size``, ``price``,
``direction`` (+1 buy: the bid side, -1 sell: the ask side; for executions and cancels it is the side of
the *resting* order, as in LOBSTER). Types:

- 1 submission: adds ``size`` at ``price``;
- 2 partial cancellation: removes ``size`` (the cancelled quantity);
- 3 deletion: removes ``size`` (the remaining quantity of the order);
- 4 visible execution: removes ``size`` (the executed quantity);
- 5 hidden execution, 6 cross trade, 7 halt and anything else: the visible book is unchanged;
- 9 level set (QuantFlow's, not LOBSTER's): the level at ``price`` on the ``direction`` side now holds
  ``size`` (0: the level is gone).

A cancel or execution against a level the book does not know, or for more than the size it knows, is
*clamped*: the level goes (``remove_level`` reports it). A level whose remaining size is at most
``SIZE_EPS`` is removed (float sizes; integer sizes are exact).

Published books. A level-N message file holds only the messages inside the top N levels, so when a level
inside them empties, the level that slides into view is unknown to the messages (on the AMZN level-1 day
the top empties on message 2), and so is the book before the first message. ``level_sets`` replays the
messages against the book the feed publishes after each message (the top N levels) and returns the level
sets that make the replay equal to it: a level missing from the replay, a size that differs, a level the
feed no longer shows inside its window. Messages plus these sets rebuild the published book exactly;
deeper levels are what the messages imply and may be stale.

Kernels follow the state engine's conventions: typed arrays, work cut into segments given as offsets
``off[s]:off[s+1]``, ``@njit(cache=True)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SUBMIT = 1
CANCEL = 2
DELETE = 3
EXECUTE = 4
HIDDEN_EXECUTE = 5
HALT = 7
LEVEL_SET = 9

SIZE_EPS = 1e-9


# ----------------------------------------------------------------------------------------- book state
#
# The book is one (4, capacity) array: rows BID_KEY, BID_SIZE hold the bid levels, ASK_KEY, ASK_SIZE the
# ask levels, each side sorted ascending by key with its best level last (activity is near the top, so
# inserts and removals there shift few elements); bids use key = price, asks key = -price. One array
# rather than four: Numba passes every array argument as a struct of seven fields, and with four arrays
# the calls per message cost three times the work they do.

BID_KEY = 0
ASK_KEY = 2


@njit(cache=True)
def find_level(book, r, n, key):
    """Position of ``key`` in row ``r``'s first ``n`` keys (sorted ascending), or where it would go."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if book[r, mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def add_level(book, r, n, key, size):
    """Add ``size`` at ``key`` on the side whose keys are row ``r`` (sizes: row ``r + 1``); returns the new
    number of levels."""
    i = find_level(book, r, n, key)
    if i < n and book[r, i] == key:
        book[r + 1, i] += size
        return n
    for j in range(n, i, -1):
        book[r, j] = book[r, j - 1]
        book[r + 1, j] = book[r + 1, j - 1]
    book[r, i] = key
    book[r + 1, i] = size
    return n + 1


@njit(cache=True)
def drop_level(book, r, n, i):
    """Remove level ``i``; returns the new number of levels."""
    for j in range(i, n - 1):
        book[r, j] = book[r, j + 1]
        book[r + 1, j] = book[r + 1, j + 1]
    return n - 1


@njit(cache=True)
def remove_level(book, r, n, key, size):
    """Remove ``size`` at ``key``; returns (new number of levels, 1 if clamped else 0)."""
    i = find_level(book, r, n, key)
    if i >= n or book[r, i] != key:
        return n, 1  # level unknown: nothing to remove from
    rem = book[r + 1, i] - size
    clamped = 1 if rem < -SIZE_EPS else 0
    if rem > SIZE_EPS:
        book[r + 1, i] = rem
        return n, clamped
    return drop_level(book, r, n, i), clamped


@njit(cache=True)
def set_level(book, r, n, key, size):
    """The level at ``key`` now holds ``size`` (at most ``SIZE_EPS``: no level); returns the new count."""
    i = find_level(book, r, n, key)
    if i < n and book[r, i] == key:
        if size > SIZE_EPS:
            book[r + 1, i] = size
            return n
        return drop_level(book, r, n, i)
    if size > SIZE_EPS:
        return add_level(book, r, n, key, size)
    return n


@njit(cache=True)
def seed_side(book, r, s, init_px, init_sz, sign):
    """Levels of segment ``s``'s initial book (NaN price or non-positive size: no level)."""
    n = 0
    for lv in range(init_px.shape[1]):
        p = init_px[s, lv]
        z = init_sz[s, lv]
        if p == p and z == z and z > SIZE_EPS:
            n = add_level(book, r, n, sign * p, z)
    return n


@njit(cache=True)
def apply_message(mtype, size, price, direction, book, nb, na):
    """Apply one message; returns (nb, na, clamped)."""
    c = 0
    if size == size and price == price:
        if mtype == SUBMIT:
            if size > 0.0:
                if direction > 0:
                    nb = add_level(book, BID_KEY, nb, price, size)
                elif direction < 0:
                    na = add_level(book, ASK_KEY, na, -price, size)
        elif mtype == CANCEL or mtype == DELETE or mtype == EXECUTE:
            if direction > 0:
                nb, c = remove_level(book, BID_KEY, nb, price, size)
            elif direction < 0:
                na, c = remove_level(book, ASK_KEY, na, -price, size)
        elif mtype == LEVEL_SET:
            if direction > 0:
                nb = set_level(book, BID_KEY, nb, price, size)
            elif direction < 0:
                na = set_level(book, ASK_KEY, na, -price, size)
        # hidden execution, cross trade, halt: the visible book is unchanged
    return nb, na, c


def new_book(cap):
    return np.empty((4, max(1, cap)), np.float64)


def distinct_prices(*prices) -> int:
    """How many distinct finite prices the arrays hold: no side of a book can have more levels."""
    flat = np.concatenate([np.ravel(p) for p in prices])
    return max(1, int(np.unique(flat[np.isfinite(flat)]).shape[0]))


# ------------------------------------------------------------------------------------- published books


@njit(cache=True)
def _sync_side(book, r, n, pub_px, pub_sz, i, sign, out, m):
    """Level sets that make one side's known levels (keys: row ``r``) equal the published top levels of
    message ``i``.

    ``sign`` +1 bids (key = price), -1 asks (key = -price). The published window is the published levels
    plus, when fewer than the published depth are shown, everything behind them (the side has no more).
    Returns the new level count and the new number of sets in ``out`` (rows: message, side, price, size).
    """
    depth = pub_px.shape[1]
    shown = 0
    while shown < depth and pub_px[i, shown] == pub_px[i, shown]:
        shown += 1
    # keys strictly better than the deepest shown level, or every key when the side shows fewer than depth
    floor = sign * pub_px[i, shown - 1] if shown == depth else -np.inf
    j = n - 1
    while j >= 0:  # best level first; removing level j shifts only levels above j
        k = book[r, j]
        if k < floor:
            break
        found = False
        for lv in range(shown):
            if sign * pub_px[i, lv] == k:
                found = True
                break
        if not found:
            m = _record(out, m, i, sign, sign * k, 0.0)
            n = drop_level(book, r, n, j)
        j -= 1
    for lv in range(shown):
        k = sign * pub_px[i, lv]
        want = pub_sz[i, lv]
        p = find_level(book, r, n, k)
        have = book[r + 1, p] if p < n and book[r, p] == k else 0.0
        if abs(have - want) > SIZE_EPS:
            m = _record(out, m, i, sign, pub_px[i, lv], want)
            n = set_level(book, r, n, k, want)
    return n, m


@njit(cache=True)
def _record(out, m, i, side, px, sz):
    """Append one set; past the end of ``out`` only count, so the caller learns the size it needs."""
    if m < out.shape[0]:
        out[m, 0] = i
        out[m, 1] = side
        out[m, 2] = px
        out[m, 3] = sz
    return m + 1


@njit(cache=True)
def _level_sets_into(mtype, size, price, direction, off, pub_bpx, pub_bsz, pub_apx, pub_asz, book, out):
    m = 0
    for s in range(off.shape[0] - 1):
        nb = 0
        na = 0
        for i in range(off[s], off[s + 1]):
            nb, na, _ = apply_message(mtype[i], size[i], price[i], direction[i], book, nb, na)
            nb, m = _sync_side(book, BID_KEY, nb, pub_bpx, pub_bsz, i, 1.0, out, m)
            na, m = _sync_side(book, ASK_KEY, na, pub_apx, pub_asz, i, -1.0, out, m)
    return m


def level_sets(mtype, size, price, direction, off, pub_bid_px, pub_bid_sz, pub_ask_px, pub_ask_sz):
    """The level sets that make the messages rebuild a published book exactly (see the module docstring).

    ``pub_*``: (n_messages, N) arrays, the published top N levels after each message (level 1 first, NaN
    for no level; N is the feed's depth). Each segment starts from an empty book. Returns ``(message,
    direction, price, size)`` arrays: after message ``message`` (a row index), the level at ``price`` on
    side ``direction`` holds ``size`` (0: no level), in the order they must be applied.
    """
    pub = tuple(np.ascontiguousarray(a, np.float64) for a in (pub_bid_px, pub_bid_sz, pub_ask_px, pub_ask_sz))
    n = mtype.shape[0]
    if any(a.ndim != 2 or a.shape[0] != n or a.shape[1] != pub[0].shape[1] or a.shape[1] < 1 for a in pub):
        raise ValueError("published books must be (n_messages, depth) arrays with depth >= 1")
    book = new_book(distinct_prices(price, pub[0], pub[2]))  # a level is a price: never more levels
    out = np.empty((max(1024, n // 4), 4), np.float64)
    m = _level_sets_into(mtype, size, price, direction, off, *pub, book, out)
    if m > out.shape[0]:  # counted, not all written: once more with room for every set
        out = np.empty((m, 4), np.float64)
        m = _level_sets_into(mtype, size, price, direction, off, *pub, book, out)
    out = out[:m]
    return out[:, 0].astype(np.int64), out[:, 1].astype(np.int8), out[:, 2].copy(), out[:, 3].copy()
