"""Order-book benchmark: the Numba book rebuilt from order messages against the ``order-book`` library.

    python benchmarks/bench_order_book.py [--messages 2_000_000] [--days 10] [--depth 10] [--repeat 3]

The state engine rebuilds ``cdm_lob_l2`` from order messages with ``book.book_grid`` (aggregate size per
price level, snapshots of the top ``--depth`` levels on a 1 s grid). The peer is ``order-book`` (the C
extension behind cryptofeed's books: a sorted dict per side), driven the only way it can be, by a Python
loop over the messages that applies each one and reads the top levels at the grid times. Both get the
same stream and must produce the same snapshots (checked before timing). Streams:

- ``synthetic``: ``--messages`` messages over ``--days`` sessions from a small simulated market
  (submissions around a random-walk mid, partial cancels and deletions of resting levels, executions at
  the best level, hidden executions), made by a Numba simulator so the data costs nothing to build;
- ``lobster``: the real AMZN day of ``../shared/data`` (messages plus the feed's level sets), when present.

Best of ``--repeat`` runs after an untimed warm-up (which loads or compiles the kernels). Prints
messages per second and the ratio engine / peer; a JSON copy goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantflow.state_engine import book as B  # noqa: E402

SECOND = 1_000_000_000
OPEN_NS = 1_704_205_800_000_000_000  # 2024-01-02 09:30 New York
LOBSTER = Path(__file__).resolve().parents[2] / "shared" / "data" / "lobster_amzn_2012-06-21_level1"


@njit(cache=True)
def _simulate(n, days, seed, mtype, size, price, direction, ts):
    """A stream that keeps a real book: it only cancels and executes levels that exist."""
    np.random.seed(seed)
    width = 4000
    per_day = n // days
    for d in range(days):
        bid = np.zeros(width)
        ask = np.zeros(width)
        mid = width // 2
        t = OPEN_NS + d * 86_400 * SECOND
        for j in range(per_day):
            i = d * per_day + j
            t += np.random.randint(0, 400) * 1_000_000 if np.random.random() < 0.5 else 0
            ts[i] = t
            side = 1 if np.random.random() < 0.5 else -1
            book = bid if side > 0 else ask
            u = np.random.random()
            k = mid - side * (1 + int(np.random.exponential(4.0)))
            k = min(max(k, 1), width - 2)
            if u < 0.5 or book[k] == 0.0 and u < 0.85:
                z = float(np.random.randint(1, 20) * 100)
                book[k] += z
                mtype[i], size[i], price[i], direction[i] = 1, z, k * 0.01, side
            elif u < 0.85:  # a cancel of a resting level: partial or the whole of it
                z = book[k] if np.random.random() < 0.6 else float(np.random.randint(1, int(book[k]) + 1))
                book[k] -= z
                mtype[i], size[i], price[i], direction[i] = 3 if book[k] == 0.0 else 2, z, k * 0.01, side
            else:  # an execution at the best level of the side, or a hidden one
                best = -1
                if side > 0:
                    for q in range(width - 1, -1, -1):
                        if bid[q] > 0.0:
                            best = q
                            break
                else:
                    for q in range(width):
                        if ask[q] > 0.0:
                            best = q
                            break
                if best < 0 or u > 0.97:
                    mtype[i], size[i], price[i], direction[i] = 5, 100.0, mid * 0.01, side
                else:
                    z = min(book[best], float(np.random.randint(1, 10) * 100))
                    book[best] -= z
                    mtype[i], size[i], price[i], direction[i] = 4, z, best * 0.01, side
            if np.random.random() < 0.002:  # the mid drifts a tick
                mid = min(max(mid + (1 if np.random.random() < 0.5 else -1), 100), width - 100)


def synthetic_stream(n: int, days: int, seed: int = 1):
    n = n // days * days
    mtype = np.empty(n, np.int8)
    size = np.empty(n)
    price = np.empty(n)
    direction = np.empty(n, np.int8)
    ts = np.empty(n, np.int64)
    _simulate(n, days, seed, mtype, size, price, direction, ts)
    off = np.arange(0, n + 1, n // days, dtype=np.int64)
    return ts, mtype, size, price, direction, off


def lobster_stream():
    from quantflow.ingest.feeds.lobster import LobsterFeed

    feed = LobsterFeed("lobster", {"path": str(LOBSTER)}, ".")
    day = dt.date(2012, 6, 21)
    [batch] = list(feed.iter_batches(["AMZN"], day, day))
    m = batch.tables["messages"]
    return (
        m["ts"].cast(int).to_numpy(),
        np.ascontiguousarray(m["type"].to_numpy()),
        m["size"].to_numpy(),
        m["price"].to_numpy(),
        np.ascontiguousarray(m["direction"].to_numpy()),
        np.array([0, m.height], np.int64),
    )


# ---------------------------------------------------------------------------------------------- peer


def peer_book_grid(ts, mtype, size, price, direction, off, depth, interval):
    """The same snapshots with ``order_book.OrderBook``: bid/ask prices and sizes (rows, depth), NaN-padded."""
    from order_book import OrderBook

    rows_px_b, rows_sz_b, rows_px_a, rows_sz_a = [], [], [], []
    nan_row = [np.nan] * depth
    tsl, tl, zl, pl_, dl = ts.tolist(), mtype.tolist(), size.tolist(), price.tolist(), direction.tolist()
    for s in range(len(off) - 1):
        i0, i1 = int(off[s]), int(off[s + 1])
        if i1 == i0:
            continue
        book = OrderBook()
        bids, asks = book.bids, book.asks
        g = -(-tsl[i0] // interval) * interval
        hi = tsl[i1 - 1] // interval * interval
        for i in range(i0, i1):
            t, z, p, d = tl[i], zl[i], pl_[i], dl[i]
            side = bids if d > 0 else asks
            if t == 1:
                side[p] = side[p] + z if p in side else z
            elif t in (2, 3, 4):
                if p in side:
                    rem = side[p] - z
                    if rem > 1e-9:
                        side[p] = rem
                    else:
                        del side[p]
            elif t == 9:
                if z > 1e-9:
                    side[p] = z
                elif p in side:
                    del side[p]
            nxt = tsl[i + 1] if i + 1 < i1 else None
            while g <= hi and (nxt is None or g < nxt):
                if g >= tsl[i]:
                    for side, px_rows, sz_rows in ((bids, rows_px_b, rows_sz_b), (asks, rows_px_a, rows_sz_a)):
                        levels = [side.index(k) for k in range(min(depth, len(side)))]
                        px_rows.append([lv[0] for lv in levels] + nan_row[len(levels):])
                        sz_rows.append([lv[1] for lv in levels] + nan_row[len(levels):])
                g += interval
    return tuple(np.array(r, np.float64).reshape(-1, depth) for r in (rows_px_b, rows_sz_b, rows_px_a, rows_sz_a))


# ---------------------------------------------------------------------------------------------- run


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def bench(name: str, stream, depth: int, repeat: int) -> dict:
    ts, mtype, size, price, direction, off = stream
    n = len(ts)

    def engine():
        return B.book_grid(ts, mtype, size, price, direction, off, depth, SECOND)

    ours = engine()
    theirs = peer_book_grid(ts, mtype, size, price, direction, off, depth, SECOND)
    for a, b, what in zip(ours[4:8], theirs, ("bid_px", "bid_sz", "ask_px", "ask_sz")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, err_msg=f"{name}: {what} differ")
    engine_s = best_of(engine, repeat)
    peer_s = best_of(lambda: peer_book_grid(ts, mtype, size, price, direction, off, depth, SECOND),
                     max(1, repeat - 2))
    row = {"stream": name, "messages": n, "snapshots": len(ours[0]), "depth": depth,
           "engine_s": engine_s, "peer_s": peer_s, "engine_msgs_per_s": n / engine_s,
           "peer_msgs_per_s": n / peer_s, "ratio": peer_s / engine_s}
    print(f"{name:10s} {n:>11,} msgs {len(ours[0]):>8,} snaps  engine {n / engine_s / 1e6:8.1f}M msg/s  "
          f"order-book {n / peer_s / 1e6:6.2f}M msg/s  ratio {peer_s / engine_s:6.1f}x")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=lambda s: int(s.replace("_", "")), default=2_000_000)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args, _ = p.parse_known_args(argv)
    rows = [bench("synthetic", synthetic_stream(args.messages, args.days), args.depth, args.repeat)]
    if (LOBSTER / "AMZN_2012-06-21_34200000_57600000_message_1.csv").exists():
        rows.append(bench("lobster", lobster_stream(), 1, args.repeat))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"order_book_{dt.datetime.now():%Y%m%d_%H%M%S}.json"
    path.write_text(json.dumps({"machine": platform.platform(), "args": vars(args) | {"out": str(args.out)},
                                "results": rows}, indent=2))
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
