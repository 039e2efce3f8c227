"""``cdm_lob_l2`` from order messages (``lob_source="messages"``): the engine against a dict-book reference,
independent days and a book carried across days, and the stage runner on a lake of messages."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quantflow.ingest.feeds.synthetic import SyntheticFeed
from quantflow.metadata import get_metadata_manager
from quantflow.state_engine import CarryState, StateEngineSpec, process_shard, runner, tables
from quantflow.state_engine.book import book_snapshots
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import window, write_project
from tests.state_engine import reference as ref
from tests.state_engine.helpers import assert_close, make_messages

DEPTH = 3
LEVELS = [f"{c}_{k}" for k in range(1, DEPTH + 1)
          for c in ("bid_price", "bid_size", "ask_price", "ask_size", "imbalance", "bid_depth", "ask_depth")]
COLUMNS = ["symbol", "date", "ts", "quote_ts", "n_updates", "mid", "microprice", "spread", "spread_bps", *LEVELS]


def spec(carry: bool, **kw) -> StateEngineSpec:
    return StateEngineSpec(bars=(), lob_interval="1s", lob_depth=DEPTH, lob_source="messages",
                           carry_state=carry, **kw)


@pytest.fixture(scope="module")
def messages() -> pl.DataFrame:
    return make_messages()


def test_independent_days_match_the_reference(messages):
    got = process_shard(None, None, spec(False), messages=messages)[0]["cdm_lob_l2"]
    want = ref.message_book_snapshots(messages, 1_000_000_000, DEPTH, ["symbol", "date"])
    assert got.height > 1000 and got.columns == COLUMNS
    assert_close(got, want, COLUMNS)
    assert (got["quote_ts"] <= got["ts"]).all()  # no snapshot sees a later message
    assert_frame_equal(got, book_snapshots(messages, DEPTH, "1s"))  # the engine wires the book kernel as is


def test_carried_book_continues_across_days(messages):
    """carry-state on: each day starts from the book the symbol's previous day ended with, day-by-day runs
    with the carried state equal one run, and both equal a continuous dict book per symbol."""
    whole, whole_state = process_shard(None, None, spec(True), messages=messages)
    want = ref.message_book_snapshots(messages, 1_000_000_000, DEPTH, ["symbol"])
    assert_close(whole["cdm_lob_l2"], want, COLUMNS)
    state: CarryState | None = None
    parts = []
    for day in messages["date"].unique().sort():
        for sym in ("BBB", "AAA"):
            day_msgs = messages.filter((pl.col("date") == day) & (pl.col("symbol") == sym))
            out, state = process_shard(None, None, spec(True), state, day_msgs)
            parts.append(out["cdm_lob_l2"])
    assert_frame_equal(pl.concat(parts).sort("symbol", "ts"), whole["cdm_lob_l2"])
    for sym in ("AAA", "BBB"):
        for a, b in zip(state.symbols[sym].book, whole_state.symbols[sym].book):
            np.testing.assert_array_equal(a, b)
    # the carried book differs from a fresh one: day 2 opens with day 1's levels
    fresh = process_shard(None, None, spec(False), messages=messages)[0]["cdm_lob_l2"]
    day2 = pl.col("date") == dt.date(2024, 1, 3)
    assert not whole["cdm_lob_l2"].filter(day2).select(LEVELS).equals(fresh.filter(day2).select(LEVELS))


def test_the_book_from_messages_needs_no_trades_or_quotes_and_ignores_them_otherwise(market, messages):
    trades, quotes = market
    both = process_shard(trades, quotes, spec(False), messages=messages)[0]
    alone = process_shard(None, None, spec(False), messages=messages)[0]
    assert_frame_equal(both["cdm_lob_l2"], alone["cdm_lob_l2"])
    from_quotes = process_shard(trades, quotes, StateEngineSpec(bars=(), lob_interval="1s", lob_depth=DEPTH))[0]
    assert_frame_equal(both["cdm_trade_enriched"], from_quotes["cdm_trade_enriched"])
    with pytest.raises(ValueError, match="lob_source"):
        StateEngineSpec(lob_source="book")
    with pytest.raises(ValueError, match="order messages are missing columns"):
        process_shard(None, None, spec(False), messages=messages.drop("seq"))


# ---------------------------------------------------------------------------------------------- runner

DAYS = (dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4), dt.date(2024, 1, 5))
PROJECT = """\
project:
  name: msg_book
  symbols: [AAA, BBB]
  ingest:
    feeds:
      - {{name: lob, kind: lobster, params: {{path: lobster_files, level: 3}}}}
  state_engine:
    executor: local
    carry_state: {carry}
    lob: {{interval: 1s, depth: 3, source: messages}}
    bars:
      - {{type: time, every: 5m}}
"""


def make_lake(root, carry: bool) -> tuple:
    """A lake with CDM trades and quotes for the first three days and order messages for all four (the
    last day has a book but no trades)."""
    write_project(root, PROJECT.format(carry=str(carry).lower()))
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    feed = SyntheticFeed("sim", {"seed": 3, "trades_per_day": 200, "quotes_per_trade": 2, "daily_bars": False}, root)
    for batch in feed.iter_batches(md.symbols, DAYS[0], DAYS[2]):
        for kind, df in batch.tables.items():
            lake.write(spec_for_kind(f"cdm_{kind}", kind), df)
    messages = make_messages(seed=4, dates=DAYS, per_day=800)
    lake.write(spec_for_kind("cdm_order_messages", "messages"), messages)
    return md, lake, messages


@pytest.mark.parametrize("carry", [False, True])
def test_runner_builds_the_book_from_the_lake_messages(tmp_path, carry):
    md, lake, messages = make_lake(tmp_path / "p", carry)
    cfg = md.project.state_engine
    assert tables.input_tables(cfg, "cdm_lob_l2") == ["cdm_order_messages"]
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]))
    assert result.shards == (2 if carry else 2 * 4) and not result.shards_failed
    got = lake.read("cdm_lob_l2").sort("symbol", "ts")
    want = ref.message_book_snapshots(messages, 1_000_000_000, DEPTH, ["symbol"] if carry else ["symbol", "date"])
    assert_close(got, want, COLUMNS)
    assert got.filter(pl.col("date") == DAYS[-1]).height > 0  # a day of messages alone has its book
    enriched = lake.read("cdm_trade_enriched")
    assert enriched.height == lake.read("cdm_trades").height
    again = runner.run(md, window(md, DAYS[0], DAYS[-1]))
    assert again.shards_skipped == again.shards  # the message-only day is recognised as done too


def test_runner_reports_a_missing_message_table(tmp_path):
    md, lake, _ = make_lake(tmp_path / "p", False)
    lake.delete_days(spec_for_kind("cdm_order_messages", "messages"), "AAA", list(DAYS))
    lake.delete_days(spec_for_kind("cdm_order_messages", "messages"), "BBB", list(DAYS))
    result = runner.run(md, window(md, DAYS[0], DAYS[2]))
    assert result.skipped_tables["cdm_lob_l2"].startswith("lob.source is messages")
    assert result.tables["cdm_lob_l2"].rows_written == 0
