"""Sharded runs equal unsharded runs: with carried state, and with independent shards."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from quantflow.state_engine import BarSpec, CarryState, StateEngineSpec, flush_state, process_shard
from quantflow.state_engine import bars as bk
from quantflow.state_engine import kernels as kk
from tests.state_engine.helpers import make_market

SPECS = (
    BarSpec("time", every="1m"),
    BarSpec("tick", threshold=9),
    BarSpec("volume", threshold=2500),
    BarSpec("dollar", threshold=180_000),
    BarSpec("dollar", expected_daily=3_000_000, bars_per_day=20, trailing_days=2),
    BarSpec("tick_imbalance", expected_ticks=12),
    BarSpec("volume_imbalance", expected_ticks=12),
    BarSpec("dollar_imbalance", expected_ticks=12, imbalance_span=30),
    BarSpec("tick_run", expected_ticks=12),
    BarSpec("volume_run", expected_ticks=12, span=5),
    BarSpec("dollar_run", expected_ticks=12),
)


def spec(carry: bool) -> StateEngineSpec:
    return StateEngineSpec(bars=SPECS, lob_interval="1s", carry_state=carry)


def concat_tables(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    return {k: pl.concat([p[k] for p in parts]) for k in parts[0]}


def sort_tables(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Shard order is (date, symbol) when running day by day, (symbol, date) in one run."""
    key = {"cdm_trade_enriched": ["symbol", "ts", "trade_id"], "cdm_lob_l2": ["symbol", "ts"]}
    return {k: v.sort(key.get(k, ["symbol", "ts_first"]), maintain_order=True) for k, v in tables.items()}


def assert_tables_equal(
    a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame], nonempty: bool = True
) -> None:
    assert a.keys() == b.keys()
    for k, table in a.items():
        assert table.height > 0 or not nonempty, k
        assert_frame_equal(table, b[k], check_exact=True)


def test_independent_shards_equal_one_run(market):
    """carry_state off: the concatenation, with (symbol, date) shard boundaries, equals shard by shard."""
    trades, quotes = market
    whole, _ = process_shard(trades, quotes, spec(False))
    daily = bk.daily_measures(trades)  # every day's, later ones too: a day's threshold must use earlier days only
    parts = []
    for (sym, day), t in trades.group_by(["symbol", "date"], maintain_order=True):
        q = quotes.filter((pl.col("symbol") == sym) & (pl.col("date") == day))
        parts.append(process_shard(t, q, spec(False), daily=daily)[0])
    assert_tables_equal(whole, concat_tables(parts))


def test_carried_state_day_by_day_equals_concatenation(market):
    """carry_state on: shard by shard with the carried state equals one run over the concatenation."""
    trades, quotes = market
    whole, whole_state = process_shard(trades, quotes, spec(True))
    state: CarryState | None = None
    parts = []
    for day in trades["date"].unique().sort():  # each day holds both symbols; state carries per symbol
        for sym in ("AAA", "BBB"):
            t = trades.filter((pl.col("date") == day) & (pl.col("symbol") == sym))
            q = quotes.filter((pl.col("date") == day) & (pl.col("symbol") == sym))
            out, state = process_shard(t, q, spec(True), state, daily=bk.daily_measures(trades))
            parts.append(out)
    assert_tables_equal(sort_tables(whole), sort_tables(concat_tables(parts)))
    flushed = flush_state(whole_state, spec(True))
    assert_tables_equal(flushed, flush_state(state, spec(True)), nonempty=False)
    assert flushed["cdm_time_1m_bars"].height == 0  # a session's last minute closes with the session
    assert flushed["cdm_tick_9_bars"].height == 2  # one open bar per symbol
    # carried bars really span days: some bar holds trades of two dates
    volume_bars = whole["cdm_volume_2500_bars"]
    assert (volume_bars["ts_first"].dt.date() != volume_bars["date"]).any()


def test_carried_state_is_checked(market):
    trades, quotes = market
    day1 = trades.filter(pl.col("date") == trades["date"].min())
    _, state = process_shard(day1, quotes, spec(True))
    with pytest.raises(ValueError, match="already covers"):
        process_shard(day1, None, spec(True), state)
    other = StateEngineSpec(bars=(BarSpec("tick", threshold=3),), carry_state=True)
    with pytest.raises(ValueError, match="different state-engine spec"):
        process_shard(day1, None, other, state)


# ---------------------------------------------------------------------------------------------- kernels


@pytest.fixture(scope="module")
def one_day():
    trades, quotes = make_market(seed=3, symbols=("AAA",), dates=(dt.date(2024, 1, 2),), events_per_day=1500)
    out, _ = process_shard(trades, quotes, StateEngineSpec(bars=(), lob_interval=None))
    e = out["cdm_trade_enriched"]
    return {
        "ts": e["ts"].cast(pl.Int64).to_numpy(),
        "seq": e["trade_id"].to_numpy(),
        "price": e["price"].to_numpy(),
        "size": e["size"].to_numpy(),
        "direction": e["direction"].to_numpy(),
        "q_ts": quotes["ts"].cast(pl.Int64).to_numpy(),
        "q_seq": quotes["quote_id"].to_numpy(),
        "quote": [quotes[c].to_numpy() for c in ("bid", "ask", "bid_size", "ask_size")],
    }


def run_bar_kernel(b: BarSpec, d: dict, off: np.ndarray, carry: bool):
    n_seg = off.shape[0] - 1
    load = np.ones(n_seg, np.bool_) if not carry else np.arange(n_seg) == 0
    keep_open = np.full(n_seg, carry)
    si, sf = bk.bar_fresh_state(b)
    si, sf = np.tile(si, (n_seg, 1)), np.tile(sf, (n_seg, 1))
    args = (d["ts"], d["price"], d["size"], d["direction"], off, np.zeros(n_seg, np.int64))
    if b.type == "time":
        # shard ends before any bucket does: every open bar is carried, as across a session boundary
        seg_end = np.full(n_seg, np.iinfo(np.int64).min)
        every, offset = bk.parse_duration(b.every), bk.parse_duration(b.offset)
        res = bk.time_bars(*args, seg_end, keep_open, every, offset, load, si, sf, 4)
    elif b.type in ("tick", "volume", "dollar"):
        kind = {"tick": 0, "volume": 1, "dollar": 2}[b.type]
        res = bk.threshold_bars(*args, keep_open, kind, np.full(n_seg, b.bar_threshold), load, si, sf, 4)
    else:
        lo, hi = b.ticks_bounds
        res = bk.information_bars(*args, keep_open, bk.INFORMATION_KINDS[b.type], 2 / (b.span + 1),
                                  1 - 2 / (b.trade_span + 1), lo, hi, load, si, sf, 4)
    out_i, out_f, st_i, st_f = res
    out_i = out_i.copy()
    out_i[:, 4] = 0  # segment number differs by construction
    return out_i, out_f, st_i[-1], st_f[-1]


def run_enrich_kernel(d: dict, off: np.ndarray, carry: bool):
    n_seg = off.shape[0] - 1
    # quotes of a shard: those that precede its first trade's successors (quotes-first ties)
    q_off = np.searchsorted(d["q_ts"], d["ts"][off[:-1]], side="right")
    q_off[0] = 0
    q_off = np.append(q_off, d["q_ts"].shape[0]).astype(np.int64)
    load = np.ones(n_seg, np.bool_) if not carry else np.arange(n_seg) == 0
    si, sf = kk.enrich_fresh_state()
    cols, *_ = kk.enrich_trades(
        d["ts"], d["seq"], d["price"], d["size"], off, d["q_ts"], d["q_seq"], *d["quote"], q_off,
        kk.TIE_QUOTES_FIRST, load, np.tile(si, (n_seg, 1)), np.tile(sf, (n_seg, 1)),
    )  # fmt: skip
    return cols


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6), b=st.sampled_from(SPECS))
def test_kernels_split_anywhere(one_day, cuts, b):
    """Cut one day's trades at arbitrary points (mid-bar, between equal timestamps): carried state equals
    the uncut run; without carried state each piece equals a fresh run of that piece."""
    n = one_day["ts"].shape[0]
    whole = np.array([0, n], np.int64)
    off = np.unique(np.concatenate([[0, n], (np.array(cuts) * n).astype(np.int64)]))
    uncut = run_bar_kernel(b, one_day, whole, carry=True)
    for got, want in zip(run_bar_kernel(b, one_day, off, carry=True), uncut):
        np.testing.assert_array_equal(got, want)

    pieces = [run_bar_kernel(b, one_day, np.array([a, e]), carry=False) for a, e in itertools.pairwise(off)]
    split = run_bar_kernel(b, one_day, off, carry=False)
    np.testing.assert_array_equal(split[1], np.concatenate([p[1] for p in pieces]))
    np.testing.assert_array_equal(split[0][:, :4], np.concatenate([p[0][:, :4] for p in pieces]))

    for got, want in zip(
        run_enrich_kernel(one_day, off, carry=True), run_enrich_kernel(one_day, whole, True)
    ):
        np.testing.assert_array_equal(got, want)


def _segmented_market(rng: np.random.Generator, n_seg: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Trades and quotes in ``n_seg`` segments, made to trip a cut: runs of equal timestamps and prices,
    quotes stamped with trades, NaN sides, segments without quotes and segments without trades."""
    t_parts, q_parts = [], []
    for s in range(n_seg):
        nt = 0 if s % 5 == 3 else int(rng.integers(1, 400))
        nq = 0 if s % 4 == 1 else int(rng.integers(1, 300))
        t_ts = np.sort(rng.integers(0, 60, nt)) * 1000
        stamped_with_trades = rng.choice(t_ts, nq // 2) if nt else []
        q_ts = np.sort(np.concatenate([stamped_with_trades, rng.integers(0, 60, nq - nq // 2) * 1000]))
        bid = 100 + rng.integers(-3, 3, nq) * 0.5
        bid[rng.random(nq) < 0.05] = np.nan
        t_parts.append((t_ts.astype(np.int64), rng.permutation(nt).astype(np.int64) * 2,
                        100 + rng.integers(-4, 4, nt) * 0.25, rng.integers(1, 9, nt) * 100.0))
        q_parts.append((q_ts.astype(np.int64), rng.permutation(nq).astype(np.int64) * 2 + 1, bid, bid + 0.5,
                        rng.integers(1, 9, nq) * 100.0, rng.integers(1, 9, nq) * 100.0))
    t_off = np.concatenate([[0], np.cumsum([p[0].shape[0] for p in t_parts])]).astype(np.int64)
    q_off = np.concatenate([[0], np.cumsum([p[0].shape[0] for p in q_parts])]).astype(np.int64)
    trades = tuple(np.concatenate([p[k] for p in t_parts]) for k in range(4))
    quotes = tuple(np.concatenate([p[k] for p in q_parts]) for k in range(6))
    return {"trades": trades, "quotes": quotes}, t_off, q_off


@pytest.mark.parametrize("tie_rule", [kk.TIE_QUOTES_FIRST, kk.TIE_SEQUENCE])
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_enrichment_in_parallel_ranges_is_the_serial_pass(seed, carry, tie_rule):
    """``enrich_trades`` on several threads, its ranges starting inside segments (between equal timestamps
    nowhere), gives the serial pass's columns, end states and counts exactly, from loaded states with a
    quote, a last price and a last tick."""
    rng = np.random.default_rng(seed)
    n_seg = int(rng.integers(1, 12))
    d, t_off, q_off = _segmented_market(rng, n_seg)
    load = np.ones(n_seg, np.bool_) if not carry else rng.random(n_seg) < 0.4
    load[0] = True
    si = np.tile(kk.enrich_fresh_state()[0], (n_seg, 1))
    sf = np.tile(kk.enrich_fresh_state()[1], (n_seg, 1))
    warm = rng.random(n_seg) < 0.5  # a carried quote and tick history
    si[warm, 0] = -5
    sf[warm] = [99.5, 100.0, 300.0, 400.0, 100.25, -1.0]
    args = (*d["trades"], t_off, *d["quotes"], q_off, tie_rule, load, si, sf)
    serial = kk.enrich_trades(*args)
    n = t_off[-1]
    for parts in (2, 3, 7):
        ranges = kk.enrich_cuts(d["trades"], d["quotes"], t_off, q_off, tie_rule, load, si, sf, parts)
        if not carry:
            assert len(ranges) > 1
        assert [int(r.t_off[0]) for r in ranges] == sorted({int(r.t_off[0]) for r in ranges})
        cols, s_i, s_f, no_mid, no_quote = kk.enrich_trades(*args, threads=parts, min_chunk=n // parts)
        for got, want in zip(cols, serial[0], strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(s_i, serial[1])
        np.testing.assert_array_equal(s_f, serial[2])
        assert (no_mid, no_quote) == (serial[3], serial[4])


def test_enrichment_never_cuts_inside_equal_timestamps_or_a_carried_segment():
    """A range starts only where the serial state is known: not between two trades of one timestamp, not
    in a segment that continues the previous one."""
    ts = np.array([0, 0, 0, 0, 5, 5, 5, 5], np.int64)
    trades = (ts, np.arange(8, dtype=np.int64), np.full(8, 10.0), np.ones(8))
    quotes = (np.array([0], np.int64), np.array([1], np.int64), *(np.ones(1) for _ in range(4)))
    si, sf = kk.enrich_fresh_state()
    off, q_off = np.array([0, 8], np.int64), np.array([0, 1], np.int64)
    ranges = kk.enrich_cuts(trades, quotes, off, q_off, kk.TIE_QUOTES_FIRST, np.ones(1, np.bool_), si[None],
                            sf[None], 4)
    assert [int(r.t_off[0]) for r in ranges] == [0, 4]  # the targets 2 and 6 move to the next new timestamp
    two = np.array([0, 4, 8], np.int64), np.array([0, 1, 1], np.int64)
    carried = kk.enrich_cuts(trades, quotes, *two, kk.TIE_QUOTES_FIRST, np.array([True, False]),
                             np.tile(si, (2, 1)), np.tile(sf, (2, 1)), 2)
    assert len(carried) == 1
