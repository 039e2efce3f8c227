"""Local and Ray executors: same results, failed shards retried alone and reported, not fatal to others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantflow.compute.dates import date_batches
from quantflow.compute.executors import LocalExecutor, RayExecutor


def square_or_fail(shard):
    value, marker_dir = shard
    if value == 3:  # fails on its first attempt only: a transient error
        marker = Path(marker_dir) / "seen"
        if not marker.exists():
            marker.write_text("x")
            raise RuntimeError("transient")
    if value == 5:
        raise ValueError("bad shard 5")
    return value * value


def test_local_executor_retries_and_reports(tmp_path):
    shards = [(i, str(tmp_path)) for i in range(7)]
    seen = []
    report = LocalExecutor(retries=1).map(square_or_fail, shards, progress=lambda d, t, o: seen.append((d, t)))
    assert [o.result for o in report.outcomes if o.ok] == [0, 1, 4, 9, 16, 36]
    assert report.outcomes[3].attempts == 2
    [failed] = report.failed
    assert failed.shard[0] == 5 and "bad shard 5" in failed.error and failed.attempts == 2
    assert seen[-1] == (7, 7)
    with pytest.raises(RuntimeError, match="1 of 7 shards failed"):
        report.raise_on_failure()


@pytest.mark.slow
def test_ray_executor_matches_local(tmp_path):
    import ray

    shards = [(i, str(tmp_path / "ray")) for i in range(7)]
    (tmp_path / "ray").mkdir()
    try:
        report = RayExecutor(max_concurrency=2, retries=1, env={"QF_TEST": "1"}).map(square_or_fail, shards)
    finally:
        ray.shutdown()
    assert [o.result for o in report.outcomes] == [0, 1, 4, 9, 16, None, 36]
    assert report.outcomes[3].attempts == 2 and not report.outcomes[5].ok
    assert report.executor == "ray"
    assert os.environ.get("RAY_ADDRESS") is None


def test_date_batches():
    import datetime as dt

    d = dt.date
    assert date_batches(d(2024, 1, 1), d(2024, 1, 10), None) == [(d(2024, 1, 1), d(2024, 1, 10))]
    assert date_batches(d(2024, 1, 1), d(2024, 1, 10), 4) == [
        (d(2024, 1, 1), d(2024, 1, 4)), (d(2024, 1, 5), d(2024, 1, 8)), (d(2024, 1, 9), d(2024, 1, 10))]
    assert date_batches(d(2024, 1, 1), d(2024, 1, 1), 7) == [(d(2024, 1, 1), d(2024, 1, 1))]


def test_ray_with_fewer_cpus_than_max_concurrency_says_how_many_tasks_run(monkeypatch, caplog):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a Ray already started, with one CPU
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    with caplog.at_level("WARNING", logger="quantflow.compute.executors"):
        RayExecutor(max_concurrency=2)._init()
    assert "Ray has 1 CPU but max_concurrency is 2: at most 1 task will run at once" in caplog.text
