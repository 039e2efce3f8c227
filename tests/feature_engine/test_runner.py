"""The feature-engine stage over a lake: sharded = unsharded bit for bit (across block and task boundaries),
window-by-window = one pass, write modes, cross-sectional runs, the Dagster asset."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quantflow.compute.stage import StageError
from quantflow.feature_engine import runner
from quantflow.metadata import get_metadata_manager
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import parquet_codecs, window, write_project

PROJECT = """\
project:
  name: features_test
  symbols: [AAA, BBB, CCC]
  feature_engine:
    preset: alpha158
    rows_per_task: {rows}
    features:
      - {{name: rsi, kind: talib, params: {{function: RSI, timeperiod: 14}}}}
      - {{name: sma, kind: talib, params: {{function: SMA, timeperiod: 30}}}}
      - {{name: obv, kind: talib, params: {{function: OBV}}}}
      - {{name: ret, kind: returns, params: {{horizons: [1, 20]}}}}
      - {{name: z, kind: zscore, params: {{column: sma, window: 40}}}}
      - {{name: beta, kind: beta, params: {{benchmark: AAA, window: 60}}}}
      - {{name: rank, kind: cs_rank, params: {{column: ret_20}}}}
"""
DAYS = [d for d in (dt.date(2019, 1, 1) + dt.timedelta(days=i) for i in range(1100)) if d.weekday() < 5]


def project(tmp_path, rows: int = 1_000_000, text: str = PROJECT):
    return get_metadata_manager(write_project(tmp_path, text.format(rows=rows))).load_all()


def write_bars(md, days=DAYS, seed: int = 1, history=DAYS) -> None:
    rng = np.random.default_rng(seed)
    frames = []
    for symbol in md.symbols:
        close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.015, len(history))))
        frames.append(pl.DataFrame({"symbol": symbol, "date": history, "open": close * 1.001, "high": close * 1.01,
                                    "low": close * 0.99, "close": close,
                                    "volume": rng.lognormal(13, 0.3, len(history))}))
    bars = pl.concat(frames).filter(pl.col("date").is_in(days))
    project_lake(md).write(spec_for_kind("cdm_bars_daily", "bars_daily"), bars, "overwrite")


def stored(md) -> pl.DataFrame:
    return project_lake(md).read("ft_features").sort("symbol", "date")


def test_any_sharding_and_any_windows_give_the_same_bits(tmp_path):
    one = project(tmp_path / "one")
    write_bars(one)
    whole = runner.run(one, window(one, DAYS[0], DAYS[-1]))
    assert whole.tasks == 1 and whole.rows == 3 * len(DAYS) and whole.warmup_bars is None  # OBV: all history
    # one task per block (a decade of a symbol's daily bars), and windows that cut years, decades and
    # tasks anywhere
    many = project(tmp_path / "many", rows=10)
    write_bars(many)
    many.project.storage.compression = "zstd"  # the tasks write with the project's codec; the bits are the same
    result = runner.run(many, window(many, DAYS[0], DAYS[300]))
    assert result.tasks == 3 * 2  # 2019 and 2020 blocks of three symbols
    for a, b in [(301, 302), (303, 600), (601, len(DAYS) - 1)]:
        runner.run(many, window(many, DAYS[a], DAYS[b]))
    assert_frame_equal(stored(many), stored(one))  # bit for bit
    assert parquet_codecs(tmp_path / "many" / ".quantflow" / "lake" / "ft_features") == {"ZSTD"}
    assert parquet_codecs(tmp_path / "one" / ".quantflow" / "lake" / "ft_features") == {"SNAPPY"}
    assert stored(one).filter(pl.col("date") > DAYS[100])["KMID"].is_nan().sum() == 0


def test_a_finite_warm_up_reads_only_the_bars_it_needs(tmp_path):
    text = PROJECT.replace("      - {{name: obv, kind: talib, params: {{function: OBV}}}}\n", "")
    history = [d for d in (dt.date(2016, 1, 1) + dt.timedelta(days=i) for i in range(2196)) if d.weekday() < 5]
    md = project(tmp_path, text=text)
    write_bars(md, history, history=history)
    june = window(md, dt.date(2021, 6, 1), dt.date(2021, 6, 30))
    result = runner.run(md, june)
    assert result.warmup_bars == 14 + 20 * 14 + 0  # RSI: lookback + 20 x its period (longest chain)
    [unit] = runner.plan_units(np.array(history, dtype="datetime64[D]"), "AAA", june, result.warmup_bars, "decade")
    first_of_decade = history.index(dt.date(2020, 1, 1))
    assert unit.read == first_of_decade - result.warmup_bars and unit.out == history.index(dt.date(2021, 6, 1))
    # the run read back only as far as the warm-up needs: 2019 has 261 bars, so 2018 is read, 2017 is not
    january = window(md, dt.date(2022, 1, 3), dt.date(2022, 1, 4))
    read = runner._stored_bars(project_lake(md), "cdm_bars_daily", ["AAA", "BBB"], january, result.warmup_bars,
                               "year", "decade", True)
    for bars in read.values():
        assert bars["date"].min() == dt.date(2018, 1, 1) and bars["date"].max() == dt.date(2022, 1, 4)
    assert read["AAA"]["symbol"].unique().to_list() == ["AAA"] and read["AAA"]["ts"].is_sorted()
    # and the values equal a run over everything
    md_all = project(tmp_path / "all", text=text)
    write_bars(md_all, history, history=history)
    runner.run(md_all, window(md_all, history[0], history[-1]))
    assert_frame_equal(stored(md), stored(md_all).filter(pl.col("date").dt.strftime("%Y-%m") == "2021-06"))


def test_changed_bars_are_rewritten_in_every_write_mode_and_rows_outside_stay(tmp_path):
    md = project(tmp_path)
    write_bars(md)
    runner.run(md, window(md, DAYS[0], DAYS[-1]))
    before = stored(md)
    write_bars(md, seed=2)
    for mode in ("skip_if_exists", "append", "overwrite"):
        runner.run(md, window(md, DAYS[500], DAYS[-1], write_mode=mode))
        after = stored(md)
        assert after.height == before.height
        assert_frame_equal(after.filter(pl.col("date") < DAYS[500]), before.filter(pl.col("date") < DAYS[500]))
        assert not after.filter(pl.col("date") >= DAYS[500])["close" if False else "KMID"].equals(
            before.filter(pl.col("date") >= DAYS[500])["KMID"])


def test_a_rerun_with_nothing_changed_keeps_the_rows_and_any_change_computes_again(tmp_path, monkeypatch):
    """skip_if_exists keeps a window whose bars, configuration and code are as at its last run and whose rows
    are those it wrote; another write mode, changed bars, rows touched since or another configuration compute
    again, and what is kept equals what a computation gives."""
    import os

    md = project(tmp_path)
    write_bars(md)
    june = window(md, DAYS[600], DAYS[700])
    first = runner.run(md, june)
    rows = stored(md)
    calls = []
    monkeypatch.setattr(runner, "run_task", lambda task, real=runner.run_task: calls.append(task) or real(task))

    again = runner.run(md, june)
    assert again.kept and not calls and "kept: bars, configuration and code as at" in again.headline()
    assert {f: getattr(again, f) for f in runner.KEPT_FIGURES} == {f: getattr(first, f) for f in runner.KEPT_FIGURES}
    assert again.key_figures()["nan_share"] == first.key_figures()["nan_share"]
    assert_frame_equal(stored(md), rows)

    assert not runner.run(md, window(md, DAYS[600], DAYS[700], write_mode="overwrite")).kept and calls
    assert runner.run(md, june).kept  # the overwrite run left its record too
    write_bars(md, seed=2)  # every bar changes
    assert not runner.run(md, june).kept
    assert runner.run(md, june).kept
    lake = project_lake(md)
    part = lake.partitions("ft_features", ["BBB"], DAYS[600], DAYS[600])[0]
    os.utime(part.path, ns=(0, 0))  # the stored rows touched since: not the rows the record vouches for
    assert not runner.run(md, june).kept
    md.project.feature_engine.features[0].params["timeperiod"] = 10  # another configuration
    assert not runner.run(md, june).kept
    assert "_records" not in lake.tables()


def test_cross_sectional_features_compute_every_symbol_whatever_the_window_names(tmp_path):
    md = project(tmp_path)
    write_bars(md)
    result = runner.run(md, window(md, DAYS[-30], DAYS[-1], symbols=["BBB"]))
    assert result.symbols == 3 and set(stored(md)["symbol"]) == {"AAA", "BBB", "CCC"}
    ranks = stored(md).group_by("date").agg(pl.col("rank").sort())
    assert all(r == [1 / 3, 2 / 3, 1.0] for r in ranks["rank"].to_list())


def test_a_failing_block_names_the_task_and_the_cause(tmp_path, monkeypatch):
    md = project(tmp_path, rows=10)
    write_bars(md)

    def broken(data, dag):
        raise FloatingPointError("kernel blew up")

    monkeypatch.setattr("quantflow.feature_engine.engine.time_series_features", broken)
    with pytest.raises(StageError) as excinfo:
        runner.run(md, window(md, DAYS[0], DAYS[-1]))
    message = str(excinfo.value)
    assert "feature engine: 6 of 6 tasks failed; task AAA 2010-01-01: " in message
    assert "FloatingPointError: kernel blew up" in message and "\n" not in message


def test_no_bars_in_the_window_is_a_warning_not_an_error(tmp_path):
    md = project(tmp_path)
    write_bars(md)
    result = runner.run(md, window(md, dt.date(2030, 1, 1), dt.date(2030, 2, 1)))
    assert result.rows == 0 and "no cdm_bars_daily bars" in result.warnings[0]


def test_the_dagster_asset_reports_nan_shares_and_checks_constant_features(tmp_path):
    from quantflow.pipeline.dagster.definitions import build_defs_from_metadata

    text = PROJECT + "      - {{name: flat, kind: rolling, params: {{column: volume, window: 5, stat: min}}}}\n"
    md = project(tmp_path, text=text.replace("volume: rng", "volume: rng"))
    write_bars(md)
    lake = project_lake(md)
    bars = lake.read("cdm_bars_daily").with_columns(pl.lit(1e6).alias("volume"))  # a constant volume
    lake.write(spec_for_kind("cdm_bars_daily", "bars_daily"), bars, "overwrite")
    defs = build_defs_from_metadata(md)
    job = defs.resolve_job_def("quantflow_feature_engine")
    cfg = {"start_date": DAYS[0].isoformat(), "end_date": DAYS[-1].isoformat()}
    result = job.execute_in_process(run_config={"ops": {"ft_features": {"config": cfg}}},
                                    instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.event_specific_data.materialization.metadata
    assert meta["rows_written/ft_features"].value == 3 * len(DAYS) and meta["features"].value == 157 + 9
    nan_share = meta["nan_share"].value
    assert nan_share["ret_20"] == round(20 / len(DAYS), 4) and nan_share["KMID"] == 0
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.check_name == "features_vary"
    assert "flat" in check.metadata["entirely_nan_or_constant"].value  # volume is constant: so is its min
    assert defs.resolve_assets_def("ft_features").asset_deps[dg.AssetKey("ft_features")] == {
        dg.AssetKey("cdm_bars_daily")}


@pytest.mark.slow
def test_ray_workers_read_their_own_blocks_and_give_the_same_bits(tmp_path):
    local = project(tmp_path / "local", rows=10)
    write_bars(local)
    runner.run(local, window(local, DAYS[0], DAYS[-1]))
    on_ray = project(tmp_path / "ray", rows=400)
    write_bars(on_ray)
    on_ray.project.storage.compression = "lz4"
    result = runner.run(on_ray, window(on_ray, DAYS[0], DAYS[-1]), executor="ray")
    assert result.tasks > 1
    assert_frame_equal(stored(on_ray), stored(local))
    assert parquet_codecs(tmp_path / "ray" / ".quantflow" / "lake" / "ft_features") == {"LZ4"}


def test_features_stored_in_other_partitions_are_refused_with_the_remedy(tmp_path):
    from quantflow.storage.schemas import TableSpec

    md = project(tmp_path)
    write_bars(md)
    old = pl.DataFrame({"symbol": "AAA", "date": [DAYS[0]], "x": [1.0]})
    project_lake(md).write(TableSpec("ft_features", dict(old.schema), "month", ("symbol", "date")), old)
    with pytest.raises(StageError, match="stored in month partitions, features of cdm_bars_daily go in decade "
                                         "partitions .* remove it and run the feature engine over the whole history"):
        runner.run(md, window(md, DAYS[0], DAYS[-1]))
    assert project_lake(md).read("ft_features").height == 1  # nothing touched


def test_a_benchmark_without_bars_gives_nan_betas_not_an_error(tmp_path):
    md = project(tmp_path)
    write_bars(md)
    lake = project_lake(md)
    bars = lake.read("cdm_bars_daily").filter(pl.col("symbol") != "AAA")
    lake.write(spec_for_kind("cdm_bars_daily", "bars_daily"), bars, "overwrite")
    for symbol in ("AAA",):
        for part in lake.partitions("cdm_bars_daily", [symbol]):
            lake.store.fs.rm_file(part.path)
    result = runner.run(md, window(md, DAYS[0], DAYS[-1]))
    assert result.symbols == 2 and "beta" in result.constant  # entirely nan: the check says so
    assert stored(md)["beta"].is_nan().all()


def test_a_one_day_run_or_a_calendar_field_is_not_a_constant_feature(tmp_path):
    text = PROJECT + "      - {{name: cal, kind: calendar, params: {{fields: [month]}}}}\n"
    md = project(tmp_path, text=text)
    write_bars(md)
    june = runner.run(md, window(md, dt.date(2021, 6, 1), dt.date(2021, 6, 30)))
    # cal_month is 6 throughout: a calendar field, not a dead feature; these bars' candles all have one shape
    assert "cal_month" not in june.constant and {"KSFT", "OPEN0", "HIGH0"} <= set(june.constant)
    one_day = runner.run(md, window(md, DAYS[-1], DAYS[-1]))
    assert one_day.constant == [] and one_day.rows == 3
