"""The state engine's pure entry point: trades and quotes of one shard in, enriched tables out.

``process_shard`` takes CDM trades and quotes (one or many (symbol, date) shards, see
``quantflow.storage.tables``), runs the Numba kernels and returns polars tables:

- ``cdm_trade_enriched``: every trade with its prevailing quote, mid, spreads, Lee-Ready direction;
- ``cdm_lob_l2``: order-book snapshots on a time grid (when ``lob_interval`` is set), from the quotes
  (``lob_source="quotes"``) or from a book rebuilt from order messages (``"messages"``, see ``book``);
- one ``cdm_<type>_bars`` table per configured ``BarSpec`` (e.g. ``cdm_time_1m_bars``).

No I/O, no Dagster, no Ray: the runner reads a shard, calls this, writes the tables.

Shards and carried state. Rows are grouped into (symbol, date) segments. With ``carry_state=False`` every
segment starts fresh and ends by emitting its open bars, so no bar and no quote crosses a shard boundary
and running many shards in one call equals running them one by one. With ``carry_state=True`` the state
of each symbol (last quote, tick-rule history, open bars, imbalance-bar expectations) continues from one
date to the next, and the returned ``CarryState`` lets the next call continue exactly where this one
stopped: running day by day with the carried state equals running on the concatenated days. A book
rebuilt from messages carries over too: a day starts from the book the previous day ended with (a feed
that publishes its book, like LOBSTER, corrects the levels it publishes with level sets after the day's
first message; levels behind those stay as carried).

Prevailing quote rule (no look-ahead): a quote prevails for a trade when ``quote.ts < trade.ts``, or when
the timestamps are equal and either ``tie_break="quotes_first"`` (default: on equal timestamps the quote is
assumed to come first) or ``tie_break="sequence"`` and ``quote_id < trade_id``. The second rule is for
feeds whose trades and quotes share one message sequence (LOBSTER: id = message number, the order-book row
of message i is the book *after* message i, so the book before an execution is the row of the previous
message). Among quotes with the same timestamp the one with the highest ``quote_id`` (the last) prevails.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from quantflow.state_engine import bars as _bars
from quantflow.state_engine import book as _book
from quantflow.state_engine import kernels as _k
from quantflow.state_engine.bars import BarSpec, parse_duration
from quantflow.state_engine.frames import (
    UTC_NS,
    as_f64,
    as_i64,
    date_series,
    lob_frame,
    read_only,
    segment_runs,
    ts_series,
)
from quantflow.storage.schemas import MESSAGES_SCHEMA, TRADES_SCHEMA
from quantflow.storage.tables import ENRICHED_TABLE, LOB_TABLE

_EPOCH = dt.date(1970, 1, 1)
TIE_BREAKS = {"quotes_first": _k.TIE_QUOTES_FIRST, "sequence": _k.TIE_SEQUENCE}

TRADE_COLUMNS = ("symbol", "date", "ts", "trade_id", "price", "size")
QUOTE_COLUMNS = ("symbol", "date", "ts", "quote_id", "bid", "ask", "bid_size", "ask_size")
MESSAGE_COLUMNS = ("symbol", "date", "ts", "seq", "type", "size", "price", "direction")
LOB_SOURCES = ("quotes", "messages")


@dataclass(frozen=True)
class StateEngineSpec:
    """What one state-engine pass produces.

    ``lob_interval``: grid step of ``cdm_lob_l2`` snapshots (``"1s"``, ``"100ms"``; None: no table);
    ``lob_depth``: book levels per snapshot (level 1 from ``bid``/``ask``/``bid_size``/``ask_size``,
    level k >= 2 from ``bid_k``/``ask_k``/``bid_size_k``/``ask_size_k`` when the quotes carry them, null
    otherwise) or, with ``lob_source="messages"``, from the book rebuilt from order messages (any depth);
    ``tie_break`` and ``carry_state``: see the module docstring; ``timezone``: the exchange time zone that
    defines a ``date`` (its end closes time bars when state is carried).
    """

    bars: tuple[BarSpec, ...] = (BarSpec("time", every="1m"),)
    lob_interval: str | None = "1s"
    lob_offset: str = "0s"
    lob_depth: int = 1
    lob_source: str = "quotes"
    carry_state: bool = False
    tie_break: str = "quotes_first"
    timezone: str = "America/New_York"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bars", tuple(self.bars))
        keys = [b.key for b in self.bars]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"bar specs produce the same table twice: {dupes}; give them distinct 'name's")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {sorted(TIE_BREAKS)}, not {self.tie_break!r}")
        if self.lob_interval is not None and parse_duration(self.lob_interval) <= 0:
            raise ValueError("lob_interval must be positive")
        parse_duration(self.lob_offset)
        if self.lob_depth < 1:
            raise ValueError("lob_depth must be >= 1")
        if self.lob_source not in LOB_SOURCES:
            raise ValueError(f"lob_source must be one of {LOB_SOURCES}, not {self.lob_source!r}")
        ZoneInfo(self.timezone)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateEngineSpec:
        """Build from plain data (YAML): ``bars`` is a list of dicts of ``BarSpec`` fields."""
        d = dict(d)
        d["bars"] = tuple(b if isinstance(b, BarSpec) else BarSpec(**b) for b in d.get("bars", ()))
        return cls(**d)

    @property
    def fingerprint(self) -> str:
        """Identifies what carried state means: state from one spec must not feed another."""
        parts = (self.bars, self.tie_break, self.timezone, self.lob_source)
        return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


@dataclass
class SymbolState:
    """Everything one symbol carries into its next shard (small numpy arrays, picklable for Ray)."""

    last_date: dt.date
    enrich: tuple[np.ndarray, np.ndarray]
    bars: dict[str, tuple[np.ndarray, np.ndarray]]
    book: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # bid px, sz, ask px, sz


@dataclass
class CarryState:
    """What ``process_shard`` returns for the next shard: per symbol, the state after its last date.

    ``spec_fingerprint`` ties it to the spec that made it (a state from other bar settings is refused).
    Each array pair is (int64 state, float64 state) in the layouts documented in ``kernels`` (enrichment)
    and ``bars`` (one pair per bar table key); ``book`` is the whole rebuilt book (message source only),
    best level first.
    """

    spec_fingerprint: str
    symbols: dict[str, SymbolState] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- segments


@dataclass
class _Segments:
    keys: list[tuple[str, int]]  # (symbol, date as days since epoch), sorted
    t_off: np.ndarray
    q_off: np.ndarray
    m_off: np.ndarray
    symbols: pl.Series  # symbol per segment
    dates: np.ndarray  # int64 days per segment


def _align(keys: list[tuple[str, int]], run_keys: list[tuple[str, int]], run_off: np.ndarray) -> np.ndarray:
    """Offsets over the union ``keys``: segments a frame has no rows for get an empty range."""
    out = np.empty(len(keys) + 1, np.int64)
    r = 0
    for s, key in enumerate(keys):
        out[s] = run_off[r]
        if r < len(run_keys) and run_keys[r] == key:
            r += 1
    out[len(keys)] = run_off[-1]
    return out


def _next_midnight_ns(day: int, tz: ZoneInfo) -> int:
    d = dt.date(1970, 1, 1) + dt.timedelta(days=day + 1)
    local = dt.datetime(d.year, d.month, d.day, tzinfo=tz)
    return int(local.timestamp()) * 1_000_000_000


# ---------------------------------------------------------------------------------------------- inputs


def _prepare_trades(trades: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
    if missing:
        raise ValueError(f"trades are missing columns {missing}; has {trades.columns}")
    casts = {
        "symbol": pl.Utf8,
        "date": pl.Date,
        "ts": UTC_NS,
        "trade_id": pl.Int64,
        "price": pl.Float64,
        "size": pl.Float64,
        "side": pl.Int8,
    }
    exprs = [pl.col(c).cast(t) for c, t in casts.items() if c in trades.columns and trades.schema[c] != t]
    if "side" not in trades.columns:
        exprs.append(pl.lit(None, pl.Int8).alias("side"))
    out = trades.with_columns(exprs) if exprs else trades
    if out["ts"].null_count():
        raise ValueError("trades have null timestamps")
    return out


def _prepare_quotes(quotes: pl.DataFrame | None) -> pl.DataFrame:
    if quotes is None:
        quotes = pl.DataFrame(
            schema={"symbol": pl.Utf8, "date": pl.Date, "ts": UTC_NS, "quote_id": pl.Int64}
            | {c: pl.Float64 for c in QUOTE_COLUMNS[4:]}
        )
    missing = [c for c in QUOTE_COLUMNS if c not in quotes.columns]
    if missing:
        raise ValueError(f"quotes are missing columns {missing}; has {quotes.columns}")
    casts = {"symbol": pl.Utf8, "date": pl.Date, "ts": UTC_NS, "quote_id": pl.Int64}
    exprs = [pl.col(c).cast(t) for c, t in casts.items() if quotes.schema[c] != t]
    exprs += [
        pl.col(c).cast(pl.Float64)
        for c in quotes.columns
        if c.startswith(("bid", "ask")) and quotes.schema[c] != pl.Float64
    ]
    out = quotes.with_columns(exprs) if exprs else quotes
    if out["ts"].null_count():
        raise ValueError("quotes have null timestamps")
    return out


def _prepare_messages(messages: pl.DataFrame | None) -> pl.DataFrame:
    casts = {c: MESSAGES_SCHEMA[c] for c in MESSAGE_COLUMNS}
    if messages is None:
        return pl.DataFrame(schema=casts)
    missing = [c for c in MESSAGE_COLUMNS if c not in messages.columns]
    if missing:
        raise ValueError(f"order messages are missing columns {missing}; has {messages.columns}")
    out = messages.select(pl.col(c).cast(t) for c, t in casts.items())
    if out["ts"].null_count():
        raise ValueError("order messages have null timestamps")
    return out


# ---------------------------------------------------------------------------------------------- tables


def _enriched_table(trades: pl.DataFrame, cols_out: tuple, n_no_mid: int, n_no_quote: int) -> pl.DataFrame:
    qts, bid, ask, bsz, asz, mid, spr, spr_bps, direction, method, svol, eff, eff_bps = cols_out
    # Trades with no usable quote (none yet, or a NaN side) get nulls rather than NaN.
    any_nan = n_no_mid > 0
    floats = {
        "bid": bid,
        "ask": ask,
        "bid_size": bsz,
        "ask_size": asz,
        "mid": mid,
        "spread": spr,
        "spread_bps": spr_bps,
    }
    cols = [ts_series("quote_ts", qts, n_no_quote > 0)]
    cols += [pl.Series(k, v, nan_to_null=any_nan) for k, v in floats.items()]
    cols += [
        pl.Series("direction", direction),
        pl.Series("direction_method", method),
        pl.Series("signed_volume", svol),
        pl.Series("effective_spread", eff, nan_to_null=any_nan),
        pl.Series("effective_spread_bps", eff_bps, nan_to_null=any_nan),
    ]
    base = trades.select("symbol", "date", "ts", "trade_id", "price", "size", "side")
    return base.with_columns(cols)


def _bars_table(spec: BarSpec, out_i: np.ndarray, out_f: np.ndarray, seg_symbols: pl.Series) -> pl.DataFrame:
    cols: dict[str, pl.Series] = {
        "symbol": seg_symbols.gather(out_i[:, 4]).alias("symbol"),
        "date": date_series(out_i[:, 5]),
    }
    if spec.type == "time":
        every = parse_duration(spec.every)
        cols["bar_start"] = pl.Series("bar_start", out_i[:, 0]).cast(UTC_NS)
        cols["bar_end"] = pl.Series("bar_end", out_i[:, 0] + every).cast(UTC_NS)
    cols["ts_first"] = pl.Series("ts_first", out_i[:, 1]).cast(UTC_NS)
    cols["ts_last"] = pl.Series("ts_last", out_i[:, 2]).cast(UTC_NS)
    for j, name in enumerate(_bars.OUT_F_NAMES[:9]):
        cols[name] = pl.Series(name, np.ascontiguousarray(out_f[:, j]))
    cols["n_trades"] = pl.Series("n_trades", np.ascontiguousarray(out_i[:, 3]))
    if spec.is_information:
        theta = "run" if spec.type.endswith("_run") else "imbalance"
        cols[theta] = pl.Series(theta, np.ascontiguousarray(out_f[:, 9]))
    if spec.is_information or spec.trailing_days is not None:
        cols["threshold"] = pl.Series("threshold", np.ascontiguousarray(out_f[:, 10]), nan_to_null=True)
    cols["complete"] = pl.Series("complete", out_i[:, 6] == 1)
    order = ["symbol", "date", "bar_start", "bar_end", "ts_first", "ts_last", "open", "high", "low", "close"]
    order += [
        "volume",
        "dollar_volume",
        "vwap",
        "n_trades",
        "buy_volume",
        "sell_volume",
        "imbalance",
        "run",
        "threshold",
        "complete",
    ]
    df = pl.DataFrame([cols[c] for c in order if c in cols])
    return df.filter(pl.col("complete")) if spec.incomplete == "drop" else df


def _segment_thresholds(spec: BarSpec, seg_keys: list[tuple[str, int]], daily: pl.DataFrame | None) -> np.ndarray:
    """One threshold per segment: the spec's constant, or the day's from trailing daily measures."""
    if spec.type not in _bars.DAILY_MEASURES:
        return np.zeros(len(seg_keys))  # no threshold to give
    if spec.trailing_days is None or daily is None or daily.height == 0:
        return np.full(len(seg_keys), spec.bar_threshold)
    days = _bars.daily_thresholds(daily, spec)
    found = {(sym, (d - _EPOCH).days): thr for sym, d, thr in days.iter_rows()}
    return np.array([found.get(key, spec.bar_threshold) for key in seg_keys], dtype=np.float64)


def _with_own_days(trades: pl.DataFrame, daily: pl.DataFrame | None) -> pl.DataFrame:
    """Daily measures of ``trades`` over those given for other days (the input's own days win)."""
    own = _bars.daily_measures(trades.select("symbol", "date", "price", "size"))
    if daily is None or daily.height == 0:
        return own
    earlier = daily.select(own.columns).cast(own.schema).join(own.select("symbol", "date"), on=["symbol", "date"],
                                                              how="anti")
    return pl.concat([earlier, own]).sort("symbol", "date")


def _run_bar_kernel(spec, ts, price, size, direction, off, seg_dates, seg_end, keep_open, load, si, sf, thresholds):
    capacity = 1024 + 4 * (off.shape[0] - 1)
    if spec.type == "time":
        return _bars.time_bars(
            ts,
            price,
            size,
            direction,
            off,
            seg_dates,
            seg_end,
            keep_open,
            parse_duration(spec.every),
            parse_duration(spec.offset),
            load,
            si,
            sf,
            capacity,
        )
    if spec.type in ("tick", "volume", "dollar"):
        kind = {"tick": _bars.KIND_TICK, "volume": _bars.KIND_VOLUME, "dollar": _bars.KIND_DOLLAR}[spec.type]
        return _bars.threshold_bars(
            ts, price, size, direction, off, seg_dates, keep_open, kind, thresholds, load, si, sf, capacity
        )
    lo, hi = spec.ticks_bounds
    return _bars.information_bars(
        ts,
        price,
        size,
        direction,
        off,
        seg_dates,
        keep_open,
        _bars.INFORMATION_KINDS[spec.type],
        2.0 / (spec.span + 1.0),
        1.0 - 2.0 / (spec.trade_span + 1.0),
        lo,
        hi,
        load,
        si,
        sf,
        capacity,
    )


def _lob_table(quotes: pl.DataFrame, seg: _Segments, spec: StateEngineSpec) -> pl.DataFrame:
    depth = spec.lob_depth
    names = [("bid", "bid_size", "ask", "ask_size")]
    names += [(f"bid_{k}", f"bid_size_{k}", f"ask_{k}", f"ask_size_{k}") for k in range(2, depth + 1)]
    avail = 1
    while avail < depth and all(c in quotes.columns for c in names[avail]):
        avail += 1

    def levels(j: int) -> np.ndarray:
        arr = np.empty((quotes.height, avail), np.float64)
        for lv in range(avail):
            arr[:, lv] = quotes[names[lv][j]].to_numpy()
        return read_only(arr, np.float64)

    res = _k.lob_snapshots(
        as_i64(quotes["ts"]),
        levels(0),
        levels(1),
        levels(2),
        levels(3),
        seg.q_off,
        parse_duration(spec.lob_interval),
        parse_duration(spec.lob_offset),
    )
    return lob_frame(seg.symbols, seg.dates, res[:4], res[4:], depth)


def _message_lob_table(
    msgs: pl.DataFrame,
    seg: _Segments,
    spec: StateEngineSpec,
    reset: np.ndarray,
    carried: dict[str, SymbolState],
    save: np.ndarray,
) -> tuple[pl.DataFrame, dict[int, tuple]]:
    """``cdm_lob_l2`` from the book rebuilt from order messages; also the books of the ``save`` segments.

    Segments flagged in ``reset`` start from the symbol's carried book (carry-state) or an empty one; the
    others continue the book of the segment before (the same symbol's previous day).
    """
    n_seg = len(seg.keys)
    books = {}
    if spec.carry_state:
        for s in np.flatnonzero(reset).tolist():
            st = carried.get(seg.keys[s][0])
            if st is not None and st.book is not None:
                books[s] = st.book
    init = None
    if books:
        width = max(max(b[0].shape[0], b[2].shape[0]) for b in books.values())
        init = tuple(np.full((n_seg, width), np.nan) for _ in range(4))
        for s, book in books.items():
            for arr, levels in zip(init, book):
                arr[s, : levels.shape[0]] = levels
    res = _book.book_grid(
        as_i64(msgs["ts"]),
        read_only(msgs["type"].to_numpy(), np.int8),
        as_f64(msgs["size"]),
        as_f64(msgs["price"]),
        read_only(msgs["direction"].to_numpy(), np.int8),
        seg.m_off,
        spec.lob_depth,
        parse_duration(spec.lob_interval),
        parse_duration(spec.lob_offset),
        init,
        reset,
        save,
    )
    return lob_frame(seg.symbols, seg.dates, res[:4], res[4:15], spec.lob_depth), res[16]


# ---------------------------------------------------------------------------------------------- API


def process_shard(
    trades: pl.DataFrame | None,
    quotes: pl.DataFrame | None,
    spec: StateEngineSpec,
    state: CarryState | None = None,
    messages: pl.DataFrame | None = None,
    daily: pl.DataFrame | None = None,
) -> tuple[dict[str, pl.DataFrame], CarryState]:
    """Run the state engine over the trades and quotes of one or more (symbol, date) shards.

    Frames follow the CDM trade, quote and order-message schemas; they are sorted by (symbol, date, ts,
    id) here if they are not already. ``messages`` (``cdm_order_messages``) feed ``cdm_lob_l2`` when
    ``spec.lob_source == "messages"`` and are ignored otherwise. ``state`` (carry-state on only; ignored
    otherwise) is what the previous call returned for earlier dates. ``daily`` (``bars.daily_measures`` of
    earlier days) feeds the thresholds of bars with ``trailing_days``; the input's own days are measured
    here, so a call over a whole history needs none. Returns the tables keyed by name and the state at the
    end of this input (symbols not in this input keep their carried state).
    """
    # the kernels take numpy views of the columns: one chunk per column, gathered by polars on all cores (a read
    # of many files has a chunk per file, and each to_numpy would copy the column on one thread)
    trades = _prepare_trades(trades if trades is not None else pl.DataFrame(schema=TRADES_SCHEMA)).rechunk()
    quotes = _prepare_quotes(quotes).rechunk()
    from_messages = spec.lob_interval is not None and spec.lob_source == "messages"
    msgs = _prepare_messages(messages if from_messages else None).rechunk()
    if spec.carry_state and state is not None and state.spec_fingerprint != spec.fingerprint:
        raise ValueError("carried state was produced by a different state-engine spec")
    trades, t_runs, t_keys = segment_runs(trades, "ts", "trade_id")
    quotes, q_runs, q_keys = segment_runs(quotes, "ts", "quote_id")
    msgs, m_runs, m_keys = segment_runs(msgs, "ts", "seq")
    keys = sorted(set(t_keys) | set(q_keys) | set(m_keys))
    n_seg = len(keys)
    seg = _Segments(
        keys=keys,
        t_off=_align(keys, t_keys, t_runs),
        q_off=_align(keys, q_keys, q_runs),
        m_off=_align(keys, m_keys, m_runs),
        symbols=pl.Series("symbol", [k[0] for k in keys], dtype=pl.Utf8),
        dates=np.array([k[1] for k in keys], dtype=np.int64),
    )
    tz = ZoneInfo(spec.timezone)
    seg_end = np.array([_next_midnight_ns(d, tz) for d in seg.dates.tolist()], dtype=np.int64)
    keep_open = np.full(n_seg, spec.carry_state, dtype=np.bool_)

    # Which segments start from a given state: all of them without carry-state, otherwise the first
    # segment of each symbol, from the carried state when there is one.
    first_of_symbol = np.array([s == 0 or keys[s][0] != keys[s - 1][0] for s in range(n_seg)], dtype=np.bool_)
    load = np.ones(n_seg, np.bool_) if not spec.carry_state else first_of_symbol
    carried: dict[str, SymbolState] = dict(state.symbols) if (spec.carry_state and state is not None) else {}
    for s in np.flatnonzero(first_of_symbol).tolist():
        sym, day = keys[s]
        if sym in carried and spec.carry_state:
            last = (carried[sym].last_date - dt.date(1970, 1, 1)).days
            if day <= last:
                raise ValueError(
                    f"{sym}: carried state already covers {carried[sym].last_date}; shard starts at "
                    f"{dt.date(1970, 1, 1) + dt.timedelta(days=day)} (pass the state from before this shard)"
                )

    def state_rows(fresh: tuple[np.ndarray, np.ndarray], pick) -> tuple[np.ndarray, np.ndarray]:
        si = np.tile(fresh[0], (n_seg, 1))
        sf = np.tile(fresh[1], (n_seg, 1))
        if spec.carry_state:
            for s in np.flatnonzero(first_of_symbol).tolist():
                st = carried.get(keys[s][0])
                if st is not None:
                    si[s], sf[s] = pick(st)
        return si, sf

    t_ts = as_i64(trades["ts"])
    t_price = as_f64(trades["price"])
    t_size = as_f64(trades["size"])
    esi, esf = state_rows(_k.enrich_fresh_state(), lambda st: st.enrich)
    cols_out, enrich_si, enrich_sf, n_no_mid, n_no_quote = _k.enrich_trades(
        t_ts,
        as_i64(trades["trade_id"]),
        t_price,
        t_size,
        seg.t_off,
        as_i64(quotes["ts"]),
        as_i64(quotes["quote_id"]),
        as_f64(quotes["bid"]),
        as_f64(quotes["ask"]),
        as_f64(quotes["bid_size"]),
        as_f64(quotes["ask_size"]),
        seg.q_off,
        TIE_BREAKS[spec.tie_break],
        load,
        esi,
        esf,
        threads=pl.thread_pool_size(),  # 1 in a Ray task (one core)
    )
    direction = read_only(cols_out[8], np.int8)
    tables: dict[str, pl.DataFrame] = {
        ENRICHED_TABLE: _enriched_table(trades, cols_out, n_no_mid, n_no_quote)
    }
    end_states: dict[str, tuple[np.ndarray, np.ndarray]] = {"enrich": (enrich_si, enrich_sf)}

    last_of_symbol = np.array([s == n_seg - 1 or keys[s + 1][0] != keys[s][0] for s in range(n_seg)], np.bool_)
    end_books: dict[int, tuple] = {}
    if from_messages:
        save = last_of_symbol if spec.carry_state else np.zeros(n_seg, np.bool_)
        tables[LOB_TABLE], end_books = _message_lob_table(msgs, seg, spec, load, carried, save)
    elif spec.lob_interval is not None:
        tables[LOB_TABLE] = _lob_table(quotes, seg, spec)

    measured = _with_own_days(trades, daily) if any(b.trailing_days for b in spec.bars) else None
    for b in spec.bars:
        si, sf = state_rows(_bars.bar_fresh_state(b), lambda st, key=b.key: st.bars[key])
        out_i, out_f, so_i, so_f = _run_bar_kernel(
            b, t_ts, t_price, t_size, direction, seg.t_off, seg.dates, seg_end, keep_open, load, si, sf,
            _segment_thresholds(b, keys, measured),
        )  # fmt: skip
        tables[b.key] = _bars_table(b, out_i, out_f, seg.symbols)
        end_states[b.key] = (so_i, so_f)

    new_symbols = dict(carried)
    for s in np.flatnonzero(last_of_symbol).tolist():
        sym, day = keys[s]
        new_symbols[sym] = SymbolState(
            last_date=dt.date(1970, 1, 1) + dt.timedelta(days=day),
            enrich=(end_states["enrich"][0][s].copy(), end_states["enrich"][1][s].copy()),
            bars={b.key: (end_states[b.key][0][s].copy(), end_states[b.key][1][s].copy()) for b in spec.bars},
            book=end_books.get(s),
        )
    return tables, CarryState(spec.fingerprint, new_symbols)


def flush_state(state: CarryState, spec: StateEngineSpec) -> dict[str, pl.DataFrame]:
    """The bars still open in a carried state (e.g. at the end of a history), one table per bar spec."""
    if state.spec_fingerprint != spec.fingerprint:
        raise ValueError("carried state was produced by a different state-engine spec")
    out = {}
    syms = sorted(state.symbols)
    seg_symbols = pl.Series("symbol", syms, dtype=pl.Utf8)
    for b in spec.bars:
        rows_i, rows_f = [], []
        for s, sym in enumerate(syms):
            si, sf = state.symbols[sym].bars[b.key]
            n = int(si[0])
            if n == 0:
                continue
            v, dv = sf[4], sf[5]
            theta = max(sf[8], sf[13]) if b.type.endswith("_run") else sf[8]
            thr = sf[10] if b.is_information or b.trailing_days else np.nan
            start = si[4] if b.type == "time" else si[1]
            rows_i.append([start, si[1], si[2], n, s, si[3], 0])  # cut by the end of the history
            rows_f.append(
                [sf[0], sf[1], sf[2], sf[3], v, dv, dv / v if v > 0 else np.nan, sf[6], sf[7], theta, thr]
            )
        out_i = np.array(rows_i, dtype=np.int64).reshape(-1, _bars.OUT_I)
        out_f = np.array(rows_f, dtype=np.float64).reshape(-1, _bars.OUT_F)
        out[b.key] = _bars_table(b, out_i, out_f, seg_symbols)
    return out


def bars_from_trades(trades: pl.DataFrame, bar: BarSpec) -> pl.DataFrame:
    """One bar table from trades that already carry a ``direction`` (e.g. ``cdm_trade_enriched``).

    Each (symbol, date) shard is independent (no carried state). A light entry point for research code
    and benchmarks that do not need the whole pass.
    """
    trades = _prepare_trades(trades)
    trades, off, keys = segment_runs(trades, "ts", "trade_id")
    n_seg = len(keys)
    direction = read_only(
        trades["direction"].fill_null(0).to_numpy()
        if "direction" in trades.columns
        else np.zeros(trades.height),
        np.int8,
    )
    si, sf = _bars.bar_fresh_state(bar)
    seg_keys = [(k[0], k[1]) for k in keys]
    daily = _bars.daily_measures(trades) if bar.trailing_days else None
    out_i, out_f, _, _ = _run_bar_kernel(
        bar,
        as_i64(trades["ts"]),
        as_f64(trades["price"]),
        as_f64(trades["size"]),
        direction,
        off,
        np.array([k[1] for k in keys], np.int64),
        np.zeros(n_seg, np.int64),
        np.zeros(n_seg, np.bool_),
        np.ones(n_seg, np.bool_),
        np.tile(si, (n_seg, 1)),
        np.tile(sf, (n_seg, 1)),
        _segment_thresholds(bar, seg_keys, daily),
    )
    return _bars_table(bar, out_i, out_f, pl.Series("symbol", [k[0] for k in keys], dtype=pl.Utf8))
