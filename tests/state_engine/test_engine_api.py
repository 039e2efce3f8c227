"""process_shard's contract: spec validation, table names and columns, input handling."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quantflow.state_engine import BarSpec, StateEngineSpec, process_shard


def test_tables_and_partition_columns(market):
    trades, quotes = market
    spec = StateEngineSpec.from_dict(
        {
            "bars": [
                {"type": "time", "every": "1m"},
                {"type": "volume", "threshold": 3000},
                {"type": "tick_imbalance", "expected_ticks": 20},
            ],
            "lob_interval": "100ms",
        }
    )
    out, _ = process_shard(trades, quotes, spec)
    assert list(out) == [
        "cdm_trade_enriched",
        "cdm_lob_l2",
        "cdm_time_1m_bars",
        "cdm_volume_3000_bars",
        "cdm_tick_imbalance_20_bars",
    ]
    for name, table in out.items():
        assert table.columns[:2] == ["symbol", "date"], name
        assert table.schema["symbol"] == pl.Utf8 and table.schema["date"] == pl.Date, name
        assert table.select("symbol", "date").unique().height == 6, name  # 2 symbols x 3 days
    enriched = out["cdm_trade_enriched"]
    assert enriched.height == trades.height
    assert enriched.schema["direction"] == pl.Int8 and enriched.schema["direction_method"] == pl.Int8
    assert enriched.schema["quote_ts"] == pl.Datetime("ns", "UTC")


def test_unsorted_input_is_sorted(market):
    trades, quotes = market
    spec = StateEngineSpec(bars=(BarSpec("tick", threshold=5),))
    want, _ = process_shard(trades, quotes, spec)
    got, _ = process_shard(trades.sample(fraction=1.0, seed=1), quotes.reverse(), spec)
    for k in want:
        assert_frame_equal(got[k], want[k])


def test_missing_inputs(market):
    trades, quotes = market
    spec = StateEngineSpec(bars=(BarSpec("time", every="1m"),))
    out, _ = process_shard(trades, None, spec)
    assert out["cdm_trade_enriched"]["bid"].null_count() == trades.height
    assert out["cdm_lob_l2"].height == 0
    assert out["cdm_time_1m_bars"]["n_trades"].sum() == trades.height
    out, _ = process_shard(trades.clear(), quotes, spec)
    assert out["cdm_trade_enriched"].height == 0 and out["cdm_time_1m_bars"].height == 0
    assert out["cdm_lob_l2"].height > 0
    with pytest.raises(ValueError, match="missing columns"):
        process_shard(trades.drop("size"), quotes, spec)


def test_spec_validation():
    with pytest.raises(ValueError, match="same table"):
        StateEngineSpec(bars=(BarSpec("tick", threshold=5), BarSpec("tick", threshold=5)))
    with pytest.raises(ValueError, match="tie_break"):
        StateEngineSpec(tie_break="trades_first")
    with pytest.raises(ValueError, match="lob_depth"):
        StateEngineSpec(lob_depth=0)
    a = StateEngineSpec(bars=(BarSpec("tick", threshold=5),))
    b = StateEngineSpec(bars=(BarSpec("tick", threshold=6),))
    assert a.fingerprint != b.fingerprint
    assert (
        a.fingerprint == StateEngineSpec(bars=(BarSpec("tick", threshold=5),), lob_interval="5s").fingerprint
    )
