"""Two runs of one project at once, as two terminals (or a schedule and a person) start them: every row is
kept, and a run that must wait for the other says which one it waits for."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.storage.project import project_lake
from tests.conftest import write_project

pytestmark = pytest.mark.slow

PROJECT = """\
project:
  name: racing
  symbols: [AAA, BBB, CCC, DDD, EEE]
  ingest:
    feeds:
      - {name: sample, kind: synthetic, params: {seed: 5, trades_per_day: 150, quotes_per_trade: 1}}
"""


def _qf(project: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return subprocess.Popen([sys.executable, "-m", "quantflow.cli", "--project-dir", str(project), "run", "-q",
                             *args], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _both(project: Path, first: list[str], second: list[str]) -> tuple[str, str]:
    procs = [_qf(project, *first), _qf(project, *second)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
    return outs[0], outs[1]


def _weekdays(start: dt.date, end: dt.date) -> int:
    return sum((start + dt.timedelta(days=i)).weekday() < 5 for i in range((end - start).days + 1))


@pytest.mark.parametrize("windows", [
    (("2024-01-02", "2024-01-05"), ("2024-01-08", "2024-01-12")),  # disjoint: the lost rows
    (("2024-01-02", "2024-01-10"), ("2024-01-05", "2024-01-12")),  # overlapping
], ids=["disjoint", "overlapping"])
def test_concurrent_ingest_runs_keep_every_row(tmp_path, windows):
    (a_start, a_end), (b_start, b_end) = windows
    days = {dt.date.fromisoformat(a_start) + dt.timedelta(days=i)
            for i in range((dt.date.fromisoformat(b_end) - dt.date.fromisoformat(a_start)).days + 1)}
    expected_days = sorted(d for d in days if d.weekday() < 5)
    for trial in range(3):
        project = write_project(tmp_path / f"trial{trial}", PROJECT)
        _both(project, ["--stage", "ingest", "--start", a_start, "--end", a_end],
              ["--stage", "ingest", "--start", b_start, "--end", b_end])
        lake = project_lake(get_metadata_manager(project).load_all())
        daily = lake.read("raw_sample_bars_daily")
        assert daily.height == 5 * len(expected_days), f"trial {trial}: {daily.height} daily rows"
        assert not daily.select("symbol", "date").is_duplicated().any()
        for symbol in ("AAA", "CCC", "EEE"):
            assert sorted(daily.filter(pl.col("symbol") == symbol)["date"].to_list()) == expected_days
        trades = lake.read("raw_sample_trades")
        assert trades.select("symbol", "date").unique().height == 5 * len(expected_days)
        assert not trades.select("symbol", "date", "trade_id").is_duplicated().any()


def test_identical_runs_at_once_both_succeed_one_waiting_for_the_warehouse(tmp_path):
    project = write_project(tmp_path / "proj", PROJECT)
    window = ["--start", "2024-01-02", "--end", "2024-01-05"]
    first = _qf(project, "--stage", "ingest", *window)
    assert first.communicate(timeout=300)[0] is not None and first.returncode == 0
    out_a, out_b = _both(project, ["--stage", "transform", *window], ["--stage", "transform", *window])
    waited = [out for out in (out_a, out_b) if "waiting for the duckdb warehouse" in out]
    assert waited, out_a + out_b  # dbt never meets DuckDB's file lock: one run waits, naming the other
    assert "in use by run pid" in waited[0]
    lake = project_lake(get_metadata_manager(project).load_all())
    cdm = lake.read("cdm_trades")
    assert cdm.select("symbol", "date").unique().height == 5 * _weekdays(dt.date(2024, 1, 2), dt.date(2024, 1, 5))
    assert not cdm.select("symbol", "date", "trade_id").is_duplicated().any()
