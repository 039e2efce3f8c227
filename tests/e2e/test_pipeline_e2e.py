"""End to end on the bundled sample project: `dagster job execute` (as CI runs it), the batch runner, `qf run`."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline import create_runner
from quantflow.storage.project import project_lake

pytestmark = pytest.mark.slow

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "QF_PROJECT_DIR")}
    env["DAGSTER_HOME"] = str(project / ".temp")
    (project / ".temp").mkdir(exist_ok=True)
    return env


def _run_config(project: Path, cfg: dict, only: tuple[str, ...] = ()) -> Path:
    """A run config giving ``cfg`` to every configurable op of the pipeline (those in ``only``, if given)."""
    from quantflow.pipeline.dagster.definitions import build_defs_from_metadata

    defs = build_defs_from_metadata(get_metadata_manager(project).load_all())
    job = defs.resolve_job_def("quantflow_pipeline")
    ops = {n.name: {"config": cfg} for n in job.graph.nodes
           if n.definition.config_schema and (not only or n.name in only)}
    path = project / "run_config.yaml"
    path.write_text(yaml.safe_dump({"ops": ops}))
    return path


def _materialized_keys(project: Path) -> set[str]:
    os.environ["DAGSTER_HOME"] = str(project / ".temp")
    try:
        with dg.DagsterInstance.get() as instance:
            return {k.to_user_string() for k in instance.get_asset_keys()
                    if instance.get_latest_materialization_event(k) is not None}
    finally:
        del os.environ["DAGSTER_HOME"]


def test_dagster_job_execute_runs_ingest_and_dbt(sample_project_copy):
    project = sample_project_copy
    # exactly the CI form, with its defaults (yesterday .. today)
    proc = subprocess.run([DAGSTER, "job", "execute", "-m", "quantflow.pipeline.dagster.auto", "-j",
                           "quantflow_pipeline"], cwd=project, env=_env(project), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    materialized = _materialized_keys(project)
    assert {"raw_sample", "cdm_trades", "cdm_quotes", "cdm_bars_daily"} <= materialized
    today = dt.date.today()
    if any(d.weekday() < 5 for d in (today - dt.timedelta(days=1), today)):
        assert {"cdm_trade_enriched", "cdm_time_1m_bars"} <= materialized
    else:  # on a Sunday the window is a weekend: the simulator gives no ticks, and the state engine says why
        assert "cdm_trade_enriched" not in materialized
        assert "no cdm_trades in the window (no trading day in it, or none ingested)" in output
    assert "emitted no result" not in output and "Token authentication" not in output  # no default warnings

    # and with a run config for a fixed window, so the output can be checked: ingest and dbt, selected by op
    cfg = {"start_date": "2024-03-04", "end_date": "2024-03-06", "symbols": ["AAA", "BBB"]}
    ops = ("raw_sample", "dbt_cdm")
    proc = subprocess.run([DAGSTER, "job", "execute", "-m", "quantflow.pipeline.dagster.auto", "-j",
                           "quantflow_pipeline", "-o", ",".join(ops), "-c", str(_run_config(project, cfg, ops))],
                          cwd=project, env=_env(project), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lake = project_lake(get_metadata_manager(project).load_all())
    start, end = dt.date(2024, 3, 4), dt.date(2024, 3, 6)
    raw = lake.read("raw_sample_trades", ["AAA", "BBB"], start, end)
    cdm = lake.read("cdm_trades", ["AAA", "BBB"], start, end)
    assert raw.height > 0 and cdm.height > 0
    assert sorted(cdm["date"].unique().to_list()) == [start, dt.date(2024, 3, 5), end]
    assert cdm.height <= raw.height  # quality filters only remove rows
    bars = lake.read("cdm_bars_daily", ["AAA", "BBB"], start, end)
    assert bars.height == 6 and bars["volume"].min() > 0


def test_batch_pipeline_runner_stage_by_stage(sample_project_copy, monkeypatch):
    project = sample_project_copy
    monkeypatch.setenv("DAGSTER_HOME", str(project / ".temp"))
    (project / ".temp").mkdir()
    runner = create_runner(get_metadata_manager(project))
    window = {"start_date": "2024-02-05", "end_date": "2024-02-06", "symbols": ["CCC"]}
    ingest = runner.run(stage="ingest", **window)
    assert ingest.success, ingest.error
    assert set(ingest.materializations) == {"raw_sample"}
    trades_written = ingest.materializations["raw_sample"].metadata["rows_written/raw_sample_trades"]
    assert 2 * 3000 < trades_written < 2 * 8000  # ~5000 simulated trades a day
    dbt = runner.run(stage="transform", **window)
    assert dbt.success, dbt.error
    assert {"cdm_trades", "cdm_quotes", "cdm_bars_daily"} <= set(dbt.materializations)
    everything = runner.run(stage="all", write_mode="overwrite", **window)
    assert everything.success, everything.error
    assert [job for job, _ in everything.runs] == ["quantflow_ingest", "quantflow_transform", "quantflow_state_engine",
                                                   "quantflow_label_engine", "quantflow_feature_engine", "quantflow_ml",
                                                   "quantflow_dl", "quantflow_validation", "quantflow_portfolio",
                                                   "quantflow_backtest", "quantflow_reports"]
    # two days are too little history for the models: they say so, and their gates (not blocking here) fail
    assert "models pred_rf_fwd5" in everything.summary() and "nothing to learn from yet" in everything.summary()
    assert everything.checks["validation_rf_fwd5:dsr_gate"] is False
    assert {"raw_sample", "cdm_trades", "cdm_trade_enriched", "cdm_time_1m_bars", "cdm_labels", "ft_features"} <= set(
        everything.materializations)
    assert "OK: stage all" in everything.summary() and "state_engine_full: 2 shards" in everything.summary()
    # the state engine ran as its Dagster job: its materializations are on the instance (UI lineage, staleness)
    event = runner.instance().get_latest_materialization_event(dg.AssetKey("cdm_time_1m_bars"))
    assert event is not None and event.run_id == dict(everything.runs)["quantflow_state_engine"]
    se = runner.run(stage="state_engine", **window)
    assert se.success and se.materializations["cdm_trade_enriched"].metadata["shards_skipped"] == 2
    assert se.results["state_engine_full"].shards_skipped == 2  # the result object the summary reads
    lake = project_lake(get_metadata_manager(project).load_all())
    cdm = lake.read("cdm_trades", ["CCC"])
    assert cdm.height > 0 and cdm["ts"].dtype == pl.Datetime("ns", "UTC")
    with pytest.raises(ValueError, match="stage must be one of"):
        runner.run(stage="bogus")
    with pytest.raises(ValueError, match="after end_date"):
        runner.run(stage="ingest", start_date="2024-02-06", end_date="2024-02-05")


def test_qf_run_cli_prints_summary(sample_project_copy):
    project = sample_project_copy
    proc = subprocess.run([sys.executable, "-m", "quantflow.cli", "run", "--start", "2024-01-08", "--end",
                           "2024-01-08", "--symbols", "AAA"], cwd=project, env=_env(project), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: stage all" in proc.stdout
    # one screen: a header, one line per stage, the summary; no banners, warnings or repeated lines
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) < 60, "\n".join(lines)
    assert len(set(lines)) == len(lines), "\n".join(lines)
    for noise in ("Telemetry", "WARNING", "Token authentication", "Running with dbt", "INFO"):
        assert noise not in proc.stdout + proc.stderr, noise
    assert re.search(r"raw_sample_trades: \d{4} rows written -> .*raw_sample_trades", proc.stdout), proc.stdout
    assert "cdm_trades" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "quantflow.cli", "run", "--start", "2024-01-09", "--end",
                          "2024-01-08"], cwd=project, env=_env(project), capture_output=True, text=True)
    assert bad.returncode == 1 and "after end_date" in bad.stderr


RUN_CONFIG = 'ops:\n  raw_sample:\n    config: {start_date: "2024-01-01", end_date: "2024-12-31"}\n'


@pytest.mark.parametrize("how", ["qf run", "dagster job execute"])
def test_a_killed_run_is_marked_failed_on_the_next_start(sample_project_copy, how):
    project = sample_project_copy
    if how == "qf run":
        command = [sys.executable, "-m", "quantflow.cli", "run", "--stage", "ingest", "--start", "2024-01-01",
                   "--end", "2024-12-31"]
    else:  # the CI form: steps run in child processes of the `dagster` process, which is killed with them
        (project / "run_config.yaml").write_text(RUN_CONFIG)
        command = [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
                   "quantflow.pipeline.dagster.auto", "-j", "quantflow_ingest", "-c", "run_config.yaml"]
    proc = subprocess.Popen(command, cwd=project, env=_env(project), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    os.environ["DAGSTER_HOME"] = str(project / ".temp")
    try:
        started = None
        for _ in range(600):
            with dg.DagsterInstance.get() as instance:
                runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            if runs and instance_has_rows(project):
                started = runs[0]
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        assert started is not None
        os.killpg(proc.pid, signal.SIGKILL)  # the run's process and any step process it started
        proc.wait()
        with dg.DagsterInstance.get() as instance:
            assert instance.get_run_by_id(started.run_id).status == dg.DagsterRunStatus.STARTED
        runner = create_runner(get_metadata_manager(project))
        run = runner.instance().get_run_by_id(started.run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        [failure] = runner.instance().all_logs(started.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"(pid {proc.pid})" in failure.message and "killed?" in failure.message
    finally:
        del os.environ["DAGSTER_HOME"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def instance_has_rows(project: Path) -> bool:
    return any((project / ".quantflow" / "lake" / "raw_sample_trades").glob("symbol=*/day=*/data.parquet"))
