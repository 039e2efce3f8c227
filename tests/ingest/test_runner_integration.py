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


def test_skip_if_exists_never_fetches_or_simulates_stored_days(tmp_path, local_server, monkeypatch):
    """A re-run of a stored window asks the feed for nothing; a longer window only for the days missing."""
    from quantflow.ingest.feeds.synthetic import SyntheticFeed
    from tests.ingest.test_polygon import KEY_ENV, serve_aggs

    monkeypatch.setenv(KEY_ENV, "test-key")
    serve_aggs(local_server)
    root = write_project(tmp_path / "proj", textwrap.dedent(f"""\
        project:
          name: t
          symbols: [AAPL]
          ingest:
            feeds:
              - {{name: sim, kind: synthetic, params: {{trades_per_day: 20, quotes_per_trade: 1}}}}
              - name: poly
                kind: polygon
                params: {{base_url: "{local_server.url}", api_key_env: {KEY_ENV}, data: bars_daily,
                          requests_per_minute: 1000}}
        """))
    md = get_metadata_manager(root).load_all()
    simulated: list[dt.date] = []
    real = SyntheticFeed.simulate_day
    monkeypatch.setattr(SyntheticFeed, "simulate_day",
                        lambda self, symbol, day: simulated.append(day) or real(self, symbol, day))
    week = window(md, dt.date(2023, 1, 9), dt.date(2023, 1, 13))
    first = ingest_runner.run(md, week, feed="poly")
    assert first.rows_written == {"raw_poly_bars_daily": 5} and len(local_server.hits("/v2/aggs")) == 2
    again = ingest_runner.run(md, week, feed="poly")
    assert len(local_server.hits("/v2/aggs")) == 2  # nothing asked: every day is stored
    assert again.tables["raw_poly_bars_daily"].days_skipped == 5
    longer = window(md, dt.date(2023, 1, 9), dt.date(2023, 1, 20))
    ingest_runner.run(md, longer, feed="poly")
    assert local_server.hits("/v2/aggs")[2].path == "/v2/aggs/ticker/AAPL/range/1/day/2023-01-16/2023-01-20"

    ingest_runner.run(md, window(md, dt.date(2023, 1, 10), dt.date(2023, 1, 11)), feed="sim")
    assert simulated == [dt.date(2023, 1, 10), dt.date(2023, 1, 11)]
    simulated.clear()
    ingest_runner.run(md, week, feed="sim")  # the stored days in the middle are not simulated again
    assert simulated == [dt.date(2023, 1, 9), dt.date(2023, 1, 12), dt.date(2023, 1, 13)]
    simulated.clear()
    overwrite = window(md, dt.date(2023, 1, 10), dt.date(2023, 1, 10), write_mode="overwrite")
    ingest_runner.run(md, overwrite, feed="sim")
    assert simulated == [dt.date(2023, 1, 10)]  # other modes fetch the whole window
