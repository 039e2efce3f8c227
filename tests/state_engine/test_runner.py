"""The state-engine stage runner: shards read and write their own lake partitions, results do not depend on
the sharding or the executor, write modes hold per shard, a failed shard fails alone."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quantflow.ingest.feeds.synthetic import SyntheticFeed
from quantflow.metadata import get_metadata_manager
from quantflow.state_engine import runner
from quantflow.state_engine import tables as se_tables
from quantflow.state_engine.engine import flush_state, process_shard
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import parquet_codecs, window, write_project

START, END = dt.date(2024, 3, 4), dt.date(2024, 3, 15)  # two trading weeks

PROJECT = """\
project:
  name: se_test
  symbols: [AAA, BBB]
  state_engine:
    executor: local
    carry_state: {carry}
    lob: {{interval: 30s, depth: 1}}
    bars:
      - {{type: time, every: 5m}}
      - {{type: volume, threshold: 20000}}
      - {{type: dollar, expected_daily: 5000000, bars_per_day: 20}}
      - {{type: tick_imbalance, expected_ticks: 30}}
      - {{type: dollar, expected_daily: 5000000, bars_per_day: 20, trailing_days: 3}}
      - {{type: volume_run, expected_ticks: 30}}
      - {{type: time, every: 1w}}
"""


def make_project(root: Path, carry: bool = False) -> Path:
    """A project whose lake already holds CDM trades, quotes and daily bars (simulated, 300 trades a day)."""
    write_project(root, PROJECT.format(carry=str(carry).lower()))
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    feed = SyntheticFeed("sim", {"seed": 5, "trades_per_day": 300, "quotes_per_trade": 2}, root)
    for batch in feed.iter_batches(md.symbols, START, END):
        for kind, df in batch.tables.items():
            lake.write(spec_for_kind(f"cdm_{kind}", kind), df)
    return root


def read_all(root: Path, tables: list[str]) -> dict[str, pl.DataFrame]:
    lake = project_lake(get_metadata_manager(root).load_all())
    return {t: lake.read(t).sort(list(runner.SORT_KEYS.get(t, ("symbol", "date", "ts_first")))) for t in tables}


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "p")


def test_outputs_match_the_pure_engine_on_the_whole_window(project):
    md = get_metadata_manager(project).load_all()
    result = runner.run(md, window(md, START, END))
    tables = se_tables.output_tables(md.project.state_engine)
    assert tables == ["cdm_trade_enriched", "cdm_lob_l2", "cdm_time_5m_bars", "cdm_volume_20000_bars",
                      "cdm_dollar_20perday_bars", "cdm_tick_imbalance_30_bars", "cdm_dollar_20perday_3d_bars",
                      "cdm_volume_run_30_bars", "cdm_time_1w_bars"]
    assert result.shards == 2 * 10 and result.shards_skipped == 0 and not result.shards_failed
    # the simulator's order flow is balanced: the tick imbalance bars collapse (as AFML's definition does
    # there) and the run says so; the run bars (about 28 trades a bar here) do not
    assert len(result.warnings) == 1 and result.warnings[0].startswith("cdm_tick_imbalance_30_bars: 1.5 trades a bar")
    lake = project_lake(md)
    trades, quotes = lake.read("cdm_trades"), lake.read("cdm_quotes")
    assert result.trades == trades.height
    expected, _ = process_shard(trades, quotes, runner.engine_spec(md.project.state_engine))
    got = read_all(project, tables[:-1])
    for table in tables[:-1]:
        assert got[table].height > 0, table
        assert_frame_equal(got[table], expected[table].sort(got[table].columns[:0] or list(
            runner.SORT_KEYS.get(table, ("symbol", "date", "ts_first")))), check_dtypes=False)
    weekly = lake.read("cdm_time_1w_bars").sort("symbol", "date")
    assert weekly.height == 4  # two symbols x two weeks, from cdm_bars_daily
    daily = lake.read("cdm_bars_daily")
    first = daily.filter((pl.col("symbol") == "AAA") & (pl.col("date") <= dt.date(2024, 3, 8))).sort("date")
    assert weekly["open"][0] == first["open"][0] and weekly["volume"][0] == first["volume"].sum()


def test_shard_granularity_does_not_change_results(project, tmp_path):
    md = get_metadata_manager(project).load_all()
    tables = se_tables.tick_tables(md.project.state_engine)
    runner.run(md, window(md, START, END), shard_granularity="daily")
    daily = read_all(project, tables)
    other = make_project(tmp_path / "weekly")
    other_md = get_metadata_manager(other).load_all()
    res = runner.run(other_md, window(other_md, START, END), shard_granularity="weekly")
    assert res.shards == 2 * 2
    weekly = read_all(other, tables)
    for table in tables:
        assert_frame_equal(daily[table], weekly[table])


def test_thresholds_from_trailing_days_reach_back_before_the_window(project):
    """Day by day windows, and a lone day rerun in overwrite, give the trailing-threshold bars of one pass
    over the whole history: each shard is handed the measures of the days before it, read from the lake."""
    md = get_metadata_manager(project).load_all()
    table = "cdm_dollar_20perday_3d_bars"
    lake = project_lake(md)
    days = sorted(lake.read("cdm_trades", ["AAA"])["date"].unique().to_list())
    for day in days:
        runner.run(md, window(md, day, day))
    runner.run(md, window(md, days[5], days[5], write_mode="overwrite"))
    spec = runner.engine_spec(md.project.state_engine)
    expected, _ = process_shard(lake.read("cdm_trades"), lake.read("cdm_quotes"), spec)
    got = lake.read(table).sort("symbol", "date", "ts_first")
    assert_frame_equal(got, expected[table].sort("symbol", "date", "ts_first"), check_dtypes=False)
    thresholds = got.group_by("symbol", "date").agg(pl.col("threshold").first()).sort("symbol", "date")
    assert thresholds["threshold"].n_unique() > 10  # one per (symbol, day), from the trailing days
    assert thresholds.filter(pl.col("date") == days[0])["threshold"].to_list() == [250_000.0, 250_000.0]  # seed


def test_carry_state_run_equals_one_pass_over_the_concatenation(tmp_path):
    root = make_project(tmp_path / "carry", carry=True)
    md = get_metadata_manager(root).load_all()
    res = runner.run(md, window(md, START, END))
    assert res.shards == 2  # one chain per symbol
    lake = project_lake(md)
    spec = runner.engine_spec(md.project.state_engine)
    out, state = process_shard(lake.read("cdm_trades"), lake.read("cdm_quotes"), spec)
    tail = flush_state(state, spec)
    for b in spec.bars:
        expected = pl.concat([out[b.key], tail[b.key]]).sort("symbol", "date", "ts_first")
        got = lake.read(b.key).sort("symbol", "date", "ts_first")
        assert_frame_equal(got, expected, check_dtypes=False)


def test_write_modes_are_honoured_per_shard(project):
    md = get_metadata_manager(project).load_all()
    first = runner.run(md, window(md, START, END, ["AAA"]))
    assert first.shards == 10 and first.tables["cdm_trade_enriched"].rows_written == first.trades
    again = runner.run(md, window(md, START, END, ["AAA"]))
    assert again.shards_skipped == 10 and again.trades == 0
    assert again.tables["cdm_trade_enriched"].rows_written == 0
    redo = runner.run(md, window(md, START, START, ["AAA"], "overwrite"))
    assert redo.shards == 1 and redo.shards_skipped == 0 and redo.tables["cdm_time_5m_bars"].days_written == 1
    lake = project_lake(md)
    assert lake.read("cdm_trade_enriched", ["AAA"]).height == first.trades  # replaced, not duplicated


def test_a_stored_window_starts_no_worker(project, monkeypatch):
    """skip_if_exists finds the stored shards with one listing per symbol: no executor, no Ray, milliseconds."""
    md = get_metadata_manager(project).load_all()
    runner.run(md, window(md, START, END))

    def no_executor(*args, **kwargs):
        raise AssertionError("a stored window must not start an executor")

    monkeypatch.setattr(runner, "make_executor", no_executor)
    again = runner.run(md, window(md, START, END), executor="ray")
    assert again.shards == again.shards_skipped == 20 and again.trades == 0
    assert again.seconds < 5


def test_a_failed_shard_fails_alone_with_a_clear_error(project, caplog):
    md = get_metadata_manager(project).load_all()
    lake = project_lake(md)
    bad = lake.partition_path("cdm_trades", "BBB", dt.date(2024, 3, 6))
    Path(bad).write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING), pytest.raises(runner.StateEngineError) as excinfo:
        runner.run(md, window(md, START, END))
    # the day itself, and the 3 days after it whose thresholds (trailing_days: 3) need its volume
    assert "4 of 20 state-engine shards failed" in str(excinfo.value)
    result = excinfo.value.result
    failed = sorted(result.shards_failed)
    assert failed[0].startswith("BBB 2024-03-06: ") and "parquet" in failed[0].lower()
    assert [f.split(":")[0] for f in failed[1:]] == ["BBB 2024-03-07", "BBB 2024-03-08", "BBB 2024-03-11"]
    assert all("thresholds from trailing days need cdm_trades of BBB 2024-03-06, which cannot be read" in f
               for f in failed[1:])
    stored = lake.read("cdm_trade_enriched")
    assert stored.select(pl.struct("symbol", "date").n_unique()).item() == 16


def test_daily_only_projects_skip_tick_bars_and_build_calendar_bars(tmp_path):
    root = write_project(tmp_path / "d", PROJECT.format(carry="false"))
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    days = [START + dt.timedelta(days=i) for i in range(12) if (START + dt.timedelta(days=i)).weekday() < 5]
    bars = pl.DataFrame({"symbol": "AAA", "date": days, "open": 10.0, "high": 11.0, "low": 9.0,
                         "close": [10.0 + i for i in range(len(days))], "volume": 100.0})
    lake.write(spec_for_kind("cdm_bars_daily", "bars_daily"), bars)
    result = runner.run(md, window(md, START, END))
    assert result.shards == 0
    assert any("no cdm_trades in the window" in w for w in result.warnings)
    assert set(result.skipped_tables) == set(se_tables.tick_tables(md.project.state_engine))
    weekly = lake.read("cdm_time_1w_bars").sort("date")
    assert weekly["close"].to_list() == [14.0, 19.0] and weekly["volume"].to_list() == [500.0, 500.0]


def test_bad_arguments(project):
    md = get_metadata_manager(project).load_all()
    with pytest.raises(ValueError, match="after end_date"):
        runner.run(md, window(md, END, START))
    with pytest.raises(ValueError, match="write mode must be one of"):
        runner.run(md, window(md, START, END, write_mode="merge"))


@pytest.mark.slow
def test_ray_executor_gives_the_same_tables(project, tmp_path):
    import ray

    md = get_metadata_manager(project).load_all()
    tables = se_tables.tick_tables(md.project.state_engine)
    runner.run(md, window(md, START, END), executor="local")
    local = read_all(project, tables)
    other = make_project(tmp_path / "ray")
    try:
        other_md = get_metadata_manager(other).load_all()
        other_md.project.state_engine.ray_min_trades = 0  # a small job: Ray only because it is asked for
        other_md.project.storage.compression = "zstd"  # the workers write with the project's codec
        res = runner.run(other_md, window(other_md, START, END), executor="ray", max_concurrency=2)
    finally:
        ray.shutdown()
    assert res.executor == "ray" and res.shards == 20
    on_ray = read_all(other, tables)
    for table in tables:
        assert_frame_equal(local[table], on_ray[table])
    lake = other / ".quantflow" / "lake"
    assert {codec for t in tables for codec in parquet_codecs(lake / t)} == {"ZSTD"}
    assert parquet_codecs(lake / "cdm_trades") == {"SNAPPY"}  # written before, by the default


def test_the_stage_writes_with_the_projects_codec(project):
    md = get_metadata_manager(project).load_all()
    md.project.storage.compression = "uncompressed"
    tables = se_tables.tick_tables(md.project.state_engine)
    runner.run(md, window(md, START, END), executor="local")
    lake = project / ".quantflow" / "lake"
    assert {codec for t in tables for codec in parquet_codecs(lake / t)} == {"UNCOMPRESSED"}


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_a_day_whose_trades_left_the_cdm_leaves_every_state_engine_table(project, mode):
    md = get_metadata_manager(project).load_all()
    runner.run(md, window(md, START, END, ["AAA"]))
    lake = project_lake(md)
    gone = dt.date(2024, 3, 6)
    for table in ("cdm_trades", "cdm_quotes"):
        lake.drop_day(table, "AAA", gone)
    result = runner.run(md, window(md, START, END, ["AAA"], mode))
    for table in se_tables.tick_tables(md.project.state_engine):
        assert gone not in lake.read(table, ["AAA"], START, END)["date"].to_list(), table
        assert result.tables[table].days_deleted == 1, table
    assert lake.read("cdm_trade_enriched", ["AAA"], START, END)["date"].n_unique() == 9


def test_a_bar_type_added_later_is_built_for_the_stored_days(project):
    md = get_metadata_manager(project).load_all()
    runner.run(md, window(md, START, END, ["AAA"]))
    yaml = project / "project_metadata" / "project.yaml"
    yaml.write_text(yaml.read_text().replace("      - {type: time, every: 5m}",
                                             "      - {type: time, every: 5m}\n      - {type: tick, threshold: 20}"))
    md = get_metadata_manager(project).load_all()
    again = runner.run(md, window(md, START, END, ["AAA"]))
    assert again.shards_skipped == 0 and again.tables["cdm_tick_20_bars"].days_written == 10
    assert runner.run(md, window(md, START, END, ["AAA"])).shards_skipped == 10


def test_packed_tasks_write_what_one_task_per_shard_writes(project, tmp_path, monkeypatch):
    """(symbol, day)s packed into one engine pass give the tables that one task per (symbol, day) gives,
    in every write mode; the plan says how the work was cut and where it ran."""
    md = get_metadata_manager(project).load_all()
    tables = se_tables.tick_tables(md.project.state_engine)
    packed = runner.run(md, window(md, START, END), executor="ray")
    assert packed.plan.startswith("20 shards in 1 task, ") and packed.plan.endswith(
        " trades on local (a small job: in process)")
    assert packed.executor == "local" and packed.key_figures()["task_plan"] == packed.plan
    together = read_all(project, tables)
    monkeypatch.setattr(runner, "PACK_MAX_TRADES", 1)
    other = make_project(tmp_path / "apart")
    other_md = get_metadata_manager(other).load_all()
    apart = runner.run(other_md, window(other_md, START, END))
    assert apart.plan.startswith("20 shards in 20 tasks")
    for table in tables:
        assert_frame_equal(together[table], read_all(other, tables)[table])
    for mode in ("overwrite", "append"):
        again = runner.run(md, window(md, START, END, write_mode=mode))
        assert again.plan.startswith("20 shards in 20 tasks")  # PACK_MAX_TRADES is still 1 here
        for table in tables:
            assert_frame_equal(together[table], read_all(project, tables)[table])


def test_a_project_with_calendar_bars_only_runs(tmp_path):
    yaml = "project:\n  name: cal\n  symbols: [AAA]\n  state_engine:\n    executor: local\n    bars:\n" \
           "      - {type: time, every: 1w}\n"
    md = get_metadata_manager(write_project(tmp_path, yaml)).load_all()
    days = [START + dt.timedelta(days=i) for i in range(5)]
    project_lake(md).write(spec_for_kind("cdm_bars_daily", "bars_daily"), pl.DataFrame(
        {"symbol": "AAA", "date": days, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}))
    result = runner.run(md, window(md, START, END))
    assert result.tables["cdm_time_1w_bars"].rows_written == 1


@pytest.mark.parametrize("sizes, workers, max_trades, expected", [
    # 13 packs by size -> 14 (7 each on 2 workers), the last round of 2 cut into halves and quarters
    ([125] * 400, 2, 4000, [3571] * 12 + [1786] * 2 + [893] * 4),
    ([125] * 400, 1, 4000, [3846] * 13),  # one worker: no tail to even out
    ([125] * 400, 4, 4000, [3125] * 12 + [1562] * 4 + [781] * 8),
    ([10] * 20, 2, 1000, [50] * 4),  # small: two equal packs per worker, no tail
    ([10] * 7, 2, 10, [10] * 7),  # too few units for the tail: one unit per pack
    ([10] * 3, 4, 1000, [10] * 3),  # fewer units than packs: one unit per pack
    ([5, 1, 1, 1, 5, 1], 2, 4, [5, 2, 1, 5, 1]),  # a unit over max_trades stays whole; no pack exceeds it otherwise
    ([7], 2, 1, [7]),
])
def test_packs_are_balanced_a_multiple_of_the_workers_and_tapered_at_the_end(sizes, workers, max_trades, expected):
    units = [object() for _ in sizes]
    packs = runner.balanced_packs(list(zip(units, sizes)), workers, max_trades)
    assert [u for p in packs for u in p.units] == units  # every unit once, in order
    assert [p.trades for p in packs] == [pytest.approx(e, abs=max(sizes)) for e in expected]
    assert len(packs) == len(expected)
    assert all(p.trades <= max_trades or len(p.units) == 1 for p in packs)


def test_a_symbol_that_looks_like_a_number_keeps_its_name(tmp_path):
    """Hong Kong and Tokyo tickers (0700, 7203) are text: read back from partition paths they must not turn
    into integers (0700 -> 700) and write their results under another symbol."""
    root = tmp_path / "p"
    write_project(root, PROJECT.format(carry="false").replace("[AAA, BBB]", '["0700", "7203"]'))
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    feed = SyntheticFeed("sim", {"seed": 5, "trades_per_day": 300, "quotes_per_trade": 2}, root)
    for batch in feed.iter_batches(md.symbols, START, START + dt.timedelta(days=1)):
        for kind, df in batch.tables.items():
            lake.write(spec_for_kind(f"cdm_{kind}", kind), df)
    result = runner.run(md, window(md, START, START + dt.timedelta(days=1)))
    assert not result.shards_failed and result.trades == lake.read("cdm_trades").height
    for table in ("cdm_trade_enriched", "cdm_time_5m_bars"):
        assert sorted(lake.read(table)["symbol"].unique()) == ["0700", "7203"], table


def test_a_window_without_trading_days_says_so(tmp_path):
    """A feed gives ticks but the window holds none (a weekend, as `dagster job execute`'s default window of
    yesterday and today on a Sunday): the tick tables are skipped saying why, what is stored stays, and the
    calendar bars of the week are rebuilt. A project whose feeds give no ticks says that instead (above)."""
    ticks = PROJECT.replace("  state_engine:", "  ingest:\n    feeds:\n      - {{name: sim, kind: synthetic}}\n"
                                               "  state_engine:")
    root = write_project(tmp_path / "w", ticks.format(carry="false"))
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    feed = SyntheticFeed("sim", {"seed": 5, "trades_per_day": 300, "quotes_per_trade": 2}, root)
    friday, saturday = START - dt.timedelta(days=3), START - dt.timedelta(days=2)
    for batch in feed.iter_batches(md.symbols, friday - dt.timedelta(days=4), friday):
        for kind, df in batch.tables.items():
            lake.write(spec_for_kind(f"cdm_{kind}", kind), df)
    runner.run(md, window(md, friday - dt.timedelta(days=4), friday))
    stored = lake.read("cdm_trade_enriched").height
    tick_tables = se_tables.tick_tables(md.project.state_engine)
    for mode in ("skip_if_exists", "overwrite"):
        result = runner.run(md, window(md, saturday, saturday + dt.timedelta(days=1), write_mode=mode))
        assert result.shards == 0 and set(result.skipped_tables) == set(tick_tables)
        assert result.warnings == [f"skipped {', '.join(tick_tables)}: no cdm_trades in the window (no trading "
                                   "day in it, or none ingested)"]
        assert result.tables["cdm_time_1w_bars"].rows_written == 2  # the week of that weekend, rebuilt
    assert lake.read("cdm_trade_enriched").height == stored > 0
