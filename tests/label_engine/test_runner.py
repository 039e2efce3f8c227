"""The label-engine stage: windows, write modes and the Dagster asset over a lake of daily bars."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quantflow.label_engine import engine, label_bars, runner
from quantflow.metadata import MetadataError, get_metadata_manager
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import window, write_project

PROJECT = """\
project:
  name: labels_test
  symbols: [AAA, BBB]
  label_engine:
    labels:
      - {name: tb, method: triple_barrier, events: cusum, cusum_threshold: 1, volatility_span: 20,
         volatility_min_bars: 5, vertical_bars: 10}
      - {name: trend, method: trend_scanning, windows: [5, 15, 2]}
"""
DAYS = [d for d in (dt.date(2023, 1, 2) + dt.timedelta(days=i) for i in range(500)) if d.weekday() < 5][:300]


def write_bars(md, days: list[dt.date], seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for symbol in md.symbols:
        close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.015, len(DAYS))))
        frames.append(pl.DataFrame({"symbol": symbol, "date": DAYS, "open": close, "high": close * 1.01,
                                    "low": close * 0.99, "close": close, "volume": 1e6}))
    bars = pl.concat(frames).filter(pl.col("date").is_in(days))
    project_lake(md).write(spec_for_kind("cdm_bars_daily", "bars_daily"), bars, "overwrite")
    return bars


def expected(md, bars: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    out = pl.concat([label_bars(bars, s) for s in md.project.label_engine.labels])
    return out.filter(pl.col("date").is_between(start, end)).sort("symbol", "date", "label_set", "ts")


def stored(md) -> pl.DataFrame:
    return project_lake(md).read("cdm_labels").sort("symbol", "date", "label_set", "ts")


def test_windows_equal_one_pass_and_grow_with_the_bars(tmp_path):
    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    bars = write_bars(md, DAYS[:200])
    first = runner.run(md, window(md, DAYS[0], DAYS[99]))
    runner.run(md, window(md, DAYS[100], DAYS[199]))
    got = stored(md)
    assert_frame_equal(got, expected(md, bars, DAYS[0], DAYS[199]), check_dtypes=False)
    assert first.events["tb"] > 10 and first.events["trend"] == 2 * 100
    assert set(first.balance["tb"]) == {"-1", "1"} and 0 < first.uniqueness["tb"] <= 1
    # the last events had no barrier within the data: undecided, left out; new bars decide them
    last_days = got.filter(pl.col("label_set") == "trend")["date"].max()
    assert last_days < DAYS[199]
    bars = write_bars(md, DAYS)
    runner.run(md, window(md, DAYS[150], DAYS[299]))  # skip_if_exists too: labels are recomputed
    assert_frame_equal(stored(md), expected(md, bars, DAYS[0], DAYS[299]), check_dtypes=False)
    assert stored(md).filter(pl.col("label_set") == "trend")["date"].max() > last_days


def test_a_rerun_with_nothing_changed_keeps_the_labels_and_any_change_labels_again(tmp_path, monkeypatch):
    """skip_if_exists keeps a window whose bars (all of them: a barrier looks past the window), configuration
    and code are as at its last run and whose rows are those it wrote; anything else labels again."""
    import os

    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    write_bars(md, DAYS[:200])
    spring = window(md, DAYS[0], DAYS[99])
    first = runner.run(md, spring)
    rows = stored(md)
    calls = []
    monkeypatch.setattr(engine, "label_bars", lambda *a, real=engine.label_bars: calls.append(a) or real(*a))

    again = runner.run(md, spring)
    assert again.kept and not calls and "kept: bars, configuration and code as at" in again.headline()
    assert {f: getattr(again, f) for f in runner.KEPT_FIGURES} == {f: getattr(first, f) for f in runner.KEPT_FIGURES}
    assert list(again.events) == list(first.events)  # in the configuration's order, as computed
    assert again.rows_written == {"cdm_labels": 0}
    assert_frame_equal(stored(md), rows)

    assert not runner.run(md, window(md, DAYS[0], DAYS[99], write_mode="overwrite")).kept and calls
    assert runner.run(md, spring).kept
    write_bars(md, DAYS[:201])  # one more bar, after the window: it may decide a barrier of the window's events
    assert not runner.run(md, spring).kept
    assert runner.run(md, spring).kept
    part = project_lake(md).partitions("cdm_labels", ["BBB"])[0]
    os.utime(part.path, ns=(0, 0))  # the stored rows touched since
    assert not runner.run(md, spring).kept
    md.project.label_engine.labels[1].windows = (5, 20, 3)  # another configuration
    assert not runner.run(md, spring).kept
    assert runner.run(md, spring).kept


def test_changed_bars_relabel_the_window_in_every_write_mode(tmp_path):
    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    write_bars(md, DAYS)
    runner.run(md, window(md, DAYS[0], DAYS[-1]))
    changed = write_bars(md, DAYS, seed=2)
    for mode in ("skip_if_exists", "append", "overwrite"):
        runner.run(md, window(md, DAYS[0], DAYS[-1], write_mode=mode))
        assert_frame_equal(stored(md), expected(md, changed, DAYS[0], DAYS[-1]), check_dtypes=False)


def test_a_label_set_reading_an_unknown_table_is_a_metadata_error(tmp_path):
    root = write_project(tmp_path, PROJECT.replace("method: trend_scanning,", "method: trend_scanning, "
                                                   "input: cdm_tick_100_bars,"))
    with pytest.raises(MetadataError) as excinfo:
        get_metadata_manager(root).load_all()
    [issue] = excinfo.value.issues
    assert issue.field == "project.label_engine.labels.1.input" and issue.line == 8
    assert "reads cdm_tick_100_bars, which no stage writes (known: cdm_bars_daily)" in issue.message


def test_the_dagster_asset_materializes_labels_with_metadata_and_a_check(tmp_path):
    from quantflow.pipeline.dagster.definitions import build_defs_from_metadata

    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    write_bars(md, DAYS)
    defs = build_defs_from_metadata(md)
    job = defs.resolve_job_def("quantflow_label_engine")
    cfg = {"start_date": DAYS[0].isoformat(), "end_date": DAYS[-1].isoformat()}
    result = job.execute_in_process(run_config={"ops": {"cdm_labels": {"config": cfg}}},
                                    instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.event_specific_data.materialization.metadata
    assert meta["rows_written/cdm_labels"].value == stored(md).height > 0
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "labels_have_events_and_classes"
    assert defs.resolve_assets_def("cdm_labels").asset_deps[dg.AssetKey("cdm_labels")] == {
        dg.AssetKey("cdm_bars_daily")}


def test_daily_runs_of_one_new_day_label_what_each_day_decides(tmp_path):
    """The daily schedule: each run's window is the new day only; the events that day's bar decided (up to
    a horizon back) are written then, so the table equals one pass over the history."""
    md = get_metadata_manager(write_project(tmp_path, PROJECT)).load_all()
    write_bars(md, DAYS[:250])
    runner.run(md, window(md, DAYS[0], DAYS[249]))
    for i in range(250, 280):
        bars = write_bars(md, DAYS[: i + 1])
        runner.run(md, window(md, DAYS[i], DAYS[i]))
    assert_frame_equal(stored(md), expected(md, bars, DAYS[0], DAYS[279]), check_dtypes=False)
