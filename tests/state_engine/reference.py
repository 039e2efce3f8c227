"""Straightforward reference implementations of the state engine, written for clarity, not speed.

Each function computes one output of ``quantflow.state_engine`` a different way from the kernels: the
prevailing quote by sorting trades and quotes into one event stream and forward-filling, Lee-Ready with
polars expressions, time bars with a pandas group-by, threshold and imbalance bars with a plain Python
loop over trades, order-book snapshots with an as-of lookup per grid time, weekly/monthly bars with
pandas ``resample``, order books from messages with dicts of price -> size. The tests compare the engine
with these on synthetic and real data.

``group_by`` names the columns whose change resets all state: ``["symbol", "date"]`` for independent
shards (carry-state off) and ``["symbol"]`` for one continuous history per symbol (carry-state on).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl

QUOTE_FIELDS = ["quote_ts", "bid", "ask", "bid_size", "ask_size"]


def prevailing_quotes(
    trades: pl.DataFrame, quotes: pl.DataFrame, tie_break: str, group_by: list[str]
) -> pl.DataFrame:
    """Each trade with the last quote before it, per the tie rule, found by sorting one event stream.

    Events are ordered by (ts, rank): with ``quotes_first`` a quote ranks before a trade at the same ts;
    with ``sequence`` events at the same ts are ordered by their id (quote i is the book after message
    i, so a trade with id i comes before the quote with id i).
    """
    keys = ["symbol", "date"]  # always kept: trade_id is unique within (symbol, date) only
    q = quotes.select(
        *keys,
        "ts",
        pl.col("quote_id").alias("seq"),
        pl.lit(0).alias("kind"),
        pl.col("ts").alias("quote_ts"),
        "bid",
        "ask",
        "bid_size",
        "ask_size",
    )
    t = trades.select(*keys, "ts", pl.col("trade_id").alias("seq"), pl.lit(1).alias("kind"), "trade_id")
    events = pl.concat([q, t], how="diagonal")
    if tie_break == "quotes_first":
        events = events.sort([*group_by, "ts", "kind", "seq"])
    else:
        events = events.sort([*group_by, "ts", "seq", pl.col("kind").cast(pl.Int8).neg()])
    # A quote row carries the whole book: forward-fill the row (by its position), not column by column.
    events = events.with_columns(
        pl.when(pl.col("kind") == 0).then(pl.int_range(pl.len())).alias("quote_row")
    ).with_columns(pl.col("quote_row").forward_fill().over(group_by))
    book = events.filter(pl.col("kind") == 0).select("quote_row", *QUOTE_FIELDS)
    matched = events.filter(pl.col("kind") == 1).select(*keys, "trade_id", "quote_row")
    matched = matched.join(book, on="quote_row", how="left").drop("quote_row")
    return trades.join(matched, on=[*keys, "trade_id"], how="left", maintain_order="left")


def lee_ready(enriched: pl.DataFrame, group_by: list[str]) -> pl.DataFrame:
    """Direction (+1 buy, -1 sell, 0 unknown) and method (1 quote, 2 tick, 0 none) by the Lee-Ready rule."""
    mid = (pl.col("bid") + pl.col("ask")) / 2
    quote_dir = (
        pl.when(pl.col("price") > pl.col("mid")).then(1).when(pl.col("price") < pl.col("mid")).then(-1)
    )
    tick = pl.col("price").diff().sign().over(group_by)
    last_nonzero_tick = (
        pl.when(pl.col("tick") != 0).then(pl.col("tick")).forward_fill().over(group_by).fill_null(0)
    )
    return (
        enriched.with_columns(mid.fill_nan(None).alias("mid"))
        .with_columns(quote_dir.fill_null(0).alias("quote_dir"), tick.fill_null(0).alias("tick"))
        .with_columns(last_nonzero_tick.alias("last_tick"))
        .with_columns(
            pl.when(pl.col("quote_dir") != 0)
            .then(pl.col("quote_dir"))
            .otherwise(pl.col("last_tick"))
            .cast(pl.Int8)
            .alias("direction"),
            pl.when(pl.col("quote_dir") != 0)
            .then(1)
            .when(pl.col("last_tick") != 0)
            .then(2)
            .otherwise(0)
            .cast(pl.Int8)
            .alias("direction_method"),
        )
        .drop("quote_dir", "tick", "last_tick")
    )


def enrich(trades: pl.DataFrame, quotes: pl.DataFrame, tie_break: str, group_by: list[str]) -> pl.DataFrame:
    """Reference ``cdm_trade_enriched``."""
    out = lee_ready(prevailing_quotes(trades, quotes, tie_break, group_by), group_by)
    return out.with_columns(
        (pl.col("ask") - pl.col("bid")).alias("spread"),
        ((pl.col("ask") - pl.col("bid")) / pl.col("mid") * 1e4).alias("spread_bps"),
        (pl.col("direction") * pl.col("size")).cast(pl.Float64).alias("signed_volume"),
        (2 * (pl.col("price") - pl.col("mid")).abs()).alias("effective_spread"),
        (2 * (pl.col("price") - pl.col("mid")).abs() / pl.col("mid") * 1e4).alias("effective_spread_bps"),
    )


# ---------------------------------------------------------------------------------------------- bars


def time_bars(trades: pl.DataFrame, every_ns: int, offset_ns: int, group_by: list[str],
              tz: str = "America/New_York") -> pl.DataFrame:
    """Time bars with a pandas group-by on the bucket number; every bucket that has trades is a bar.

    ``trades`` needs ``direction``. A bar's date is the date of its last trade.
    """
    df = trades.select("symbol", "date", "ts", "price", "size", "direction").to_pandas()
    ts = df["ts"].astype("int64")
    df["bucket"] = (ts - offset_ns) // every_ns
    df["ts_ns"] = ts
    df["dollar"] = df["price"] * df["size"]
    df["buy"] = df["size"].where(df["direction"] > 0, 0.0)
    df["sell"] = df["size"].where(df["direction"] < 0, 0.0)
    keys = list(dict.fromkeys([*group_by, "symbol", "bucket"]))
    g = df.groupby(keys, sort=True)
    bars = g.agg(
        last_date=("date", "last"),
        ts_first=("ts_ns", "first"),
        ts_last=("ts_ns", "last"),
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        volume=("size", "sum"),
        dollar_volume=("dollar", "sum"),
        n_trades=("price", "size"),
        buy_volume=("buy", "sum"),
        sell_volume=("sell", "sum"),
    ).reset_index()
    bars = bars.drop(columns=[c for c in ("date",) if c in bars.columns]).rename(
        columns={"last_date": "date"}
    )
    bars["bar_start"] = bars["bucket"] * every_ns + offset_ns
    bars["bar_end"] = bars["bar_start"] + every_ns
    bars["vwap"] = bars["dollar_volume"] / bars["volume"]
    out = pl.from_pandas(bars.drop(columns=["bucket"]))
    out = out.with_columns(
        pl.col("date").cast(pl.Date),
        *(pl.col(c).cast(pl.Datetime("ns", "UTC")) for c in ("bar_start", "bar_end", "ts_first", "ts_last")),
        pl.col("n_trades").cast(pl.Int64),
    )
    # complete: the bucket is over by the end of its trading date (the next local midnight)
    midnight = (pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone(tz) + pl.duration(days=1))
    return out.with_columns((pl.col("bar_end") <= midnight.dt.convert_time_zone("UTC")).alias("complete")
                            ).sort("symbol", "ts_first")


def _new_bar(row) -> dict:
    return {
        "symbol": row.symbol,
        "ts_first": row.ts,
        "open": row.price,
        "high": row.price,
        "low": row.price,
        "volume": 0.0,
        "dollar_volume": 0.0,
        "buy_volume": 0.0,
        "sell_volume": 0.0,
        "n_trades": 0,
        "imbalance": 0.0,
    }


def _add_trade(bar: dict, row) -> None:
    bar["high"] = max(bar["high"], row.price)
    bar["low"] = min(bar["low"], row.price)
    bar["close"] = row.price
    bar["ts_last"] = row.ts
    bar["date"] = row.date
    bar["volume"] += row.size
    bar["dollar_volume"] += row.price * row.size
    if row.direction > 0:
        bar["buy_volume"] += row.size
    elif row.direction < 0:
        bar["sell_volume"] += row.size
    bar["n_trades"] += 1


def _finish(bars: list[dict]) -> pl.DataFrame:
    for b in bars:
        b["vwap"] = b["dollar_volume"] / b["volume"] if b["volume"] > 0 else float("nan")
    df = pl.DataFrame(bars, infer_schema_length=None)
    if df.height == 0:
        return df
    return df.with_columns(pl.col("ts_first", "ts_last").cast(pl.Datetime("ns", "UTC")))


def _groups(trades: pl.DataFrame, group_by: list[str]):
    df = trades.with_columns(pl.col("ts").cast(pl.Int64)).sort("symbol", "date", "ts", "trade_id")
    for _, part in df.group_by(group_by, maintain_order=True):
        yield part.iter_rows(named=True)


class _Row:
    __slots__ = ("date", "direction", "price", "size", "symbol", "ts")

    def __init__(self, d: dict):
        for k in self.__slots__:
            setattr(self, k, d[k])


def threshold_bars(
    trades: pl.DataFrame, kind: str, threshold: float, group_by: list[str], thresholds: dict | None = None
) -> pl.DataFrame:
    """Tick / volume / dollar bars: a bar closes on the trade that takes its measure to the threshold.

    The measure restarts at zero for the next bar. The last, incomplete bar of each group is kept.
    ``thresholds``: (symbol, date) -> the threshold of that day's trades (else ``threshold``).
    """
    bars = []
    for rows in _groups(trades, group_by):
        bar = None
        for d in rows:
            row = _Row(d)
            if bar is None:
                bar = _new_bar(row)
            _add_trade(bar, row)
            bar["threshold"] = (thresholds or {}).get((row.symbol, row.date), threshold)
            measure = {"tick": bar["n_trades"], "volume": bar["volume"], "dollar": bar["dollar_volume"]}[kind]
            if measure >= bar["threshold"]:
                bar["complete"] = True
                bars.append(bar)
                bar = None
        if bar is not None:
            bar["complete"] = False  # cut by the end of the group, short of the threshold
            bars.append(bar)
    return _finish(bars)


def trailing_thresholds(trades: pl.DataFrame, kind: str, days: int, bars_per_day: float, seed: float) -> dict:
    """(symbol, date) -> mean daily measure of the ``days`` previous trading days / ``bars_per_day``, summed
    here trade by trade (the seed where a symbol has no earlier day)."""
    totals: dict = {}
    for row in trades.sort("symbol", "date", "ts").iter_rows(named=True):
        key = (row["symbol"], row["date"])
        add = {"tick": 1.0, "volume": row["size"], "dollar": row["price"] * row["size"]}[kind]
        totals[key] = totals.get(key, 0.0) + add
    out = {}
    for symbol in {k[0] for k in totals}:
        history = sorted((d, v) for (s, d), v in totals.items() if s == symbol)
        for i, (day, _) in enumerate(history):
            before = [v for _, v in history[max(0, i - days) : i]]
            mean = sum(before) / len(before) if before else 0.0
            out[symbol, day] = mean / bars_per_day if mean > 0 else seed
    return out


def information_bars(
    trades: pl.DataFrame,
    kind: str,
    expected_ticks: float,
    span: float,
    trade_span: float,
    min_ticks: float,
    max_ticks: float,
    group_by: list[str],
) -> pl.DataFrame:
    """AFML 2.3.2 imbalance and run bars, one trade at a time, straight from the book's formulas.

    m_t = 1, v_t or p_t v_t; b_t the trade's direction. Imbalance bars: theta = sum b_t m_t, the bar closes
    when |theta| >= E[T] |E[b m]|. Run bars: theta = max(sum of m_t over buys, sum over sells), closing when
    theta >= E[T] max(E[b+ m], E[b- m]). Expectations as of the bar's first trade: E[T] an EWMA of prior
    bars' lengths (from ``expected_ticks``, then clamped), the others exponentially weighted means of all
    prior trades with weights (1 - 2 / (trade_span + 1)) ** age, computed here as explicit weighted sums.
    The first bar of a group, with no prior trade, is ``ceil(expected_ticks)`` trades long.
    """
    runs = kind.endswith("_run")
    measure = kind.split("_")[0]
    bar_alpha = 2.0 / (span + 1.0)
    decay = 1.0 - 2.0 / (trade_span + 1.0)
    bars = []
    for rows in _groups(trades, group_by):
        e_t = float(expected_ticks)
        prior: list[tuple[float, float]] = []  # per prior trade: (b m, 0) or (b+ m, b- m)
        bar = None
        for d in rows:
            row = _Row(d)
            if bar is None:
                bar = _new_bar(row)
                bar["buy_run"] = bar["sell_run"] = 0.0
                if prior:
                    x = np.array(prior)
                    w = decay ** np.arange(len(prior) - 1, -1, -1, dtype=np.float64)
                    e_a, e_b = (w @ x[:, 0]) / w.sum(), (w @ x[:, 1]) / w.sum()
                    threshold = e_t * (max(e_a, e_b) if runs else abs(e_a))
                else:
                    threshold = None  # warm-up
            _add_trade(bar, row)
            m = {"tick": 1.0, "volume": row.size, "dollar": row.price * row.size}[measure]
            if runs:
                buy_m, sell_m = (m if row.direction > 0 else 0.0), (m if row.direction < 0 else 0.0)
                bar["buy_run"] += buy_m
                bar["sell_run"] += sell_m
                prior.append((buy_m, sell_m))
                theta = max(bar["buy_run"], bar["sell_run"])
            else:
                bar["imbalance"] += row.direction * m
                prior.append((row.direction * m, 0.0))
                theta = abs(bar["imbalance"])
            n = bar["n_trades"]
            done = n >= math.ceil(e_t) if threshold is None else (theta >= threshold and theta > 0)
            if done:
                bars.append(_close_information_bar(bar, runs, threshold, True))
                e_t = min(max(e_t + bar_alpha * (n - e_t), min_ticks), max_ticks)
                bar = None
        if bar is not None:
            bars.append(_close_information_bar(bar, runs, threshold, False))
    return _finish(bars)


def _close_information_bar(bar: dict, runs: bool, threshold: float | None, complete: bool) -> dict:
    if runs:
        bar["run"] = max(bar.pop("buy_run"), bar.pop("sell_run"))
        del bar["imbalance"]
    else:
        del bar["buy_run"], bar["sell_run"]
    bar["threshold"] = threshold
    bar["complete"] = complete
    return bar


# ---------------------------------------------------------------------------------------------- book


def lob_snapshots(quotes: pl.DataFrame, interval_ns: int, offset_ns: int = 0) -> pl.DataFrame:
    """Top-of-book snapshots: for each grid time g between a shard's first and last quote, the last quote
    with ts <= g, found with numpy ``searchsorted`` on the shard's quote times."""
    out = []
    for (sym, day), part in quotes.sort("symbol", "date", "ts", "quote_id").group_by(
        ["symbol", "date"], maintain_order=True
    ):
        qts = part["ts"].cast(pl.Int64).to_numpy()
        first = -((-(qts[0] - offset_ns)) // interval_ns) * interval_ns + offset_ns
        grid = np.arange(first, qts[-1] + 1, interval_ns, dtype=np.int64)
        if grid.size == 0:
            continue
        row = np.searchsorted(qts, grid, side="right") - 1
        prev = np.concatenate([[-1], row[:-1]])
        snap = part[row].select(
            pl.col("ts").alias("quote_ts"),
            pl.col("bid").alias("bid_price_1"),
            pl.col("bid_size").alias("bid_size_1"),
            pl.col("ask").alias("ask_price_1"),
            pl.col("ask_size").alias("ask_size_1"),
        )
        out.append(
            snap.with_columns(
                pl.lit(sym).alias("symbol"),
                pl.lit(day).alias("date"),
                pl.Series("ts", grid).cast(pl.Datetime("ns", "UTC")),
                pl.Series("n_updates", row - prev),
            )
        )
    df = pl.concat(out)
    b, a = pl.col("bid_price_1"), pl.col("ask_price_1")
    bs, as_ = pl.col("bid_size_1"), pl.col("ask_size_1")
    return df.with_columns(
        ((b + a) / 2).alias("mid"),
        ((b * as_ + a * bs) / (bs + as_)).alias("microprice"),
        (a - b).alias("spread"),
        ((a - b) / ((b + a) / 2) * 1e4).alias("spread_bps"),
        ((bs - as_) / (bs + as_)).alias("imbalance_1"),
        bs.alias("bid_depth_1"),
        as_.alias("ask_depth_1"),
    )


def _book_step(bids: dict, asks: dict, t: int, z: float, p: float, d: int) -> int:
    """Apply one order message to dict books (price -> size); returns 1 when the message was clamped."""
    side = bids if d > 0 else asks
    if t == 1:
        side[p] = side.get(p, 0.0) + z
    elif t in (2, 3, 4):
        have = side.get(p)
        if have is None:
            return 1
        if have - z > 0:
            side[p] = have - z
        else:
            del side[p]
        return int(z > have)
    elif t == 9:  # level set
        if z > 0:
            side[p] = z
        else:
            side.pop(p, None)
    return 0


def reference_book(mtype, size, price, direction, off, depth, init=None):
    """Pure-Python book: dict price -> size per side, sorted at read time. Same outputs as
    ``book.book_per_message``'s level arrays (bid_px, bid_sz, ask_px, ask_sz) and clamp counts."""
    n = len(mtype)
    out = [np.full((n, depth), np.nan) for _ in range(4)]
    clamps = []
    for s in range(len(off) - 1):
        bids: dict[float, float] = {}
        asks: dict[float, float] = {}
        if init is not None:
            for side, (px, sz) in ((bids, (init[0], init[1])), (asks, (init[2], init[3]))):
                for p, z in zip(px[s], sz[s]):
                    if not np.isnan(p) and not np.isnan(z) and z > 0:
                        side[float(p)] = side.get(float(p), 0.0) + float(z)
        c = 0
        for i in range(off[s], off[s + 1]):
            c += _book_step(bids, asks, int(mtype[i]), float(size[i]), float(price[i]), int(direction[i]))
            for k, p in enumerate(sorted(bids, reverse=True)[:depth]):
                out[0][i, k], out[1][i, k] = p, bids[p]
            for k, p in enumerate(sorted(asks)[:depth]):
                out[2][i, k], out[3][i, k] = p, asks[p]
        clamps.append(c)
    return (*out, np.array(clamps))


def message_book_snapshots(messages: pl.DataFrame, interval_ns: int, depth: int, group_by: list[str]) -> pl.DataFrame:
    """``cdm_lob_l2`` from order messages: dict books replayed message by message (a fresh book at each
    change of ``group_by``: ``["symbol", "date"]`` independent days, ``["symbol"]`` one continuous book),
    then, per (symbol, date), the book after the last message with ts <= g at each grid time g."""
    msgs = messages.with_columns(pl.col("ts").cast(pl.Int64)).sort("symbol", "date", "ts", "seq")
    per_message = []
    for _, part in msgs.group_by(group_by, maintain_order=True):
        bids: dict[float, float] = {}
        asks: dict[float, float] = {}
        for r in part.iter_rows(named=True):
            _book_step(bids, asks, r["type"], r["size"], r["price"], r["direction"])
            row = {"symbol": r["symbol"], "date": r["date"], "ts": r["ts"]}
            top_b = sorted(bids, reverse=True)[:depth]
            top_a = sorted(asks)[:depth]
            for k in range(depth):
                row[f"bid_price_{k + 1}"] = top_b[k] if k < len(top_b) else None
                row[f"bid_size_{k + 1}"] = bids[top_b[k]] if k < len(top_b) else None
                row[f"ask_price_{k + 1}"] = top_a[k] if k < len(top_a) else None
                row[f"ask_size_{k + 1}"] = asks[top_a[k]] if k < len(top_a) else None
            per_message.append(row)
    book = pl.DataFrame(per_message, infer_schema_length=None)
    out = []
    for _, part in book.group_by(["symbol", "date"], maintain_order=True):
        ts = part["ts"].to_numpy()
        first = -((-ts[0]) // interval_ns) * interval_ns
        grid = np.arange(first, ts[-1] + 1, interval_ns, dtype=np.int64)
        if grid.size == 0:
            continue
        row = np.searchsorted(ts, grid, side="right") - 1
        prev = np.concatenate([[-1], row[:-1]])
        out.append(part[row].with_columns(
            pl.col("ts").alias("quote_ts"), pl.Series("ts", grid), pl.Series("n_updates", row - prev)))
    df = pl.concat(out).with_columns(pl.col("ts", "quote_ts").cast(pl.Datetime("ns", "UTC")))
    b, a = pl.col("bid_price_1"), pl.col("ask_price_1")
    bs, as_ = pl.col("bid_size_1"), pl.col("ask_size_1")
    levels = []
    for k in range(1, depth + 1):
        levels += [
            ((pl.col(f"bid_size_{k}") - pl.col(f"ask_size_{k}")) / (pl.col(f"bid_size_{k}") + pl.col(f"ask_size_{k}")))
            .alias(f"imbalance_{k}"),
            pl.sum_horizontal([pl.col(f"bid_size_{j}") for j in range(1, k + 1)], ignore_nulls=False).alias(f"bid_depth_{k}"),
            pl.sum_horizontal([pl.col(f"ask_size_{j}") for j in range(1, k + 1)], ignore_nulls=False).alias(f"ask_depth_{k}"),
        ]
    return df.with_columns(
        ((b + a) / 2).alias("mid"),
        ((b * as_ + a * bs) / (bs + as_)).alias("microprice"),
        (a - b).alias("spread"),
        ((a - b) / ((b + a) / 2) * 1e4).alias("spread_bps"),
        *levels,
    )


# ---------------------------------------------------------------------------------------------- daily


def resample_daily(daily: pl.DataFrame, every: str) -> pl.DataFrame:
    """Weekly (Monday-start weeks) or monthly bars from daily bars with pandas ``resample``."""
    rule = {"1w": "W-SUN", "1mo": "ME"}[every]
    frames = []
    for sym, part in daily.sort("symbol", "date").to_pandas().groupby("symbol"):
        part = part.assign(day=pd.to_datetime(part["date"])).set_index("day")
        r = part.resample(rule, label="right", closed="right")
        agg = pd.DataFrame(
            {
                "date": r["date"].last(),
                "open": r["open"].first(),
                "high": r["high"].max(),
                "low": r["low"].min(),
                "close": r["close"].last(),
                "volume": r["volume"].sum(),
                "n_days": r["close"].count(),
            }
        ).dropna(subset=["date"])
        agg["symbol"] = sym
        frames.append(agg.reset_index(drop=True))
    out = pl.from_pandas(pd.concat(frames, ignore_index=True))
    return out.with_columns(pl.col("date").cast(pl.Date), pl.col("n_days").cast(pl.Int64)).sort(
        "symbol", "date"
    )
