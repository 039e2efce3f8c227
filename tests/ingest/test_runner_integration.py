"""The ingest runner (``quantflow.ingest.runner``) over real feeds: what feeds yield is what gets written."""

from __future__ import annotations

import datetime as dt
import textwrap

from quantflow.ingest import runner as ingest_runner
from quantflow.metadata import get_metadata_manager
from tests.conftest import window, write_project


def test_runner_writes_what_the_feeds_yield(tmp_path):
    """The ingest runner end to end over a synthetic feed and a CSV feed with a dirty row."""
    data = tmp_path / "proj" / "csv"
    data.mkdir(parents=True)
    (data / "AAA.csv").write_text(
        "date,open,high,low,close,volume\n2024-01-02,10,11,9,10,100\n"
        "2024-01-03,10,9,9,10,100\n2024-01-04,10,11,9,10.5,100\n"
    )
    root = write_project(
        tmp_path / "proj",
        textwrap.dedent("""\
        project:
          name: t
          symbols: [AAA]
          ingest:
            feeds:
              - {name: sim, kind: synthetic, params: {trades_per_day: 50, quotes_per_trade: 1}}
              - {name: daily, kind: csv, params: {path: csv}}
        """),
    )
    md = get_metadata_manager(root).load_all()
    days = window(md, dt.date(2024, 1, 2), dt.date(2024, 1, 4))
    sim = ingest_runner.run(md, days, feed="sim")
    assert set(sim.rows_written) == {"raw_sim_trades", "raw_sim_quotes", "raw_sim_bars_daily"}
    assert sim.rows_written["raw_sim_bars_daily"] == 3 and sim.bad_rows == 0
    daily = ingest_runner.run(md, days, feed="daily")
    assert daily.rows_written == {"raw_daily_bars_daily": 2}
    assert daily.bad_rows == 1 and daily.bad_rows_by_symbol == {"AAA": 1}


def test_a_window_without_data_is_a_warning_not_silence(tmp_path):
    root = write_project(tmp_path / "proj", "project:\n  name: t\n  symbols: [AAA]\n  ingest:\n    feeds:\n"
                                            "      - {name: sim, kind: synthetic, params: {trades_per_day: 50}}\n")
    md = get_metadata_manager(root).load_all()
    weekend = ingest_runner.run(md, window(md, dt.date(2024, 1, 6), dt.date(2024, 1, 7)), feed="sim")
    assert weekend.rows_written == {"raw_sim_trades": 0, "raw_sim_quotes": 0, "raw_sim_bars_daily": 0}
    assert weekend.warnings == ["feed sim gave no rows for raw_sim_trades, raw_sim_quotes, raw_sim_bars_daily "
                                "in 2024-01-06 .. 2024-01-07, 1 symbol, skip_if_exists"]
