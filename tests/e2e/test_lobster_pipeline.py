"""The real LOBSTER AMZN day through ingest -> dbt -> state engine: Lee-Ready agrees with LOBSTER's own
execution direction (the figure is a floor), the bars add up to the day's executions, and the book rebuilt
from the order messages gives the same snapshots as the top-of-book quotes."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quantflow.ingest import runner as ingest_runner
from quantflow.metadata import get_metadata_manager
from quantflow.state_engine import runner as state_runner
from quantflow.storage.project import project_lake
from quantflow.transform import runner as transform_runner
from tests.conftest import window, write_project

pytestmark = pytest.mark.slow
DAY = dt.date(2012, 6, 21)


def test_lobster_day_end_to_end(tmp_path, shared_data):
    root = write_project(tmp_path / "lob", f"""\
        project:
          name: lobster_day
          symbols: [AMZN]
          ingest:
            feeds:
              - name: lobster
                kind: lobster
                params: {{path: {shared_data / "lobster_amzn_2012-06-21_level1"}}}
          state_engine:
            executor: local
            tie_break: sequence
            lob: {{interval: 1s, depth: 1}}
            bars:
              - {{type: time, every: 1m}}
              - {{type: volume, threshold: 5000}}
        """)
    md = get_metadata_manager(root).load_all()
    ingest = ingest_runner.run(md, window(md, DAY, DAY), feed="lobster")
    assert ingest.rows_written["raw_lobster_trades"] == 11_419
    transform_runner.run(md, window(md, DAY, DAY))
    result = state_runner.run(md, window(md, DAY, DAY))
    assert result.trades == 11_419 and result.shards == 1

    lake = project_lake(md)
    enriched = lake.read("cdm_trade_enriched")
    agree = (enriched["direction"] == enriched["side"]).mean()
    assert agree >= 0.97, agree  # measured 0.9718 (visible executions: 100%, hidden: 86.8%)
    assert (enriched["quote_ts"] <= enriched["ts"]).all()  # no look-ahead
    minute = lake.read("cdm_time_1m_bars")
    assert minute["volume"].sum() == pytest.approx(enriched["size"].sum())
    assert minute["n_trades"].sum() == 11_419
    assert minute.filter(pl.col("buy_volume") + pl.col("sell_volume") > pl.col("volume") + 1e-9).height == 0
    book = lake.read("cdm_lob_l2")
    assert book.height > 20_000 and (book["spread"] >= 0).all()

    # the same snapshots from the book rebuilt from the order messages (and level sets) through dbt
    messages = lake.read("cdm_order_messages")
    assert messages.height == ingest.rows_written["raw_lobster_messages"]
    assert messages.filter(pl.col("type") != 9).height == 57_515  # every message of the file
    yaml_path = root / "project_metadata" / "project.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("depth: 1}", "depth: 1, source: messages}"))
    md = get_metadata_manager(root).load_all()
    rebuilt = state_runner.run(md, window(md, DAY, DAY, write_mode="overwrite"))
    assert rebuilt.tables["cdm_lob_l2"].rows_written == book.height
    from_messages = lake.read("cdm_lob_l2")
    same = ["ts", "bid_price_1", "bid_size_1", "ask_price_1", "ask_size_1", "mid", "microprice", "spread"]
    assert from_messages.select(same).equals(book.select(same))
