"""Writers racing on the same partitions (several processes, a local lake and an S3 one) keep every row."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from quantflow.storage.filesystem import StorageOptions, Store
from quantflow.storage.lake import Lake
from quantflow.storage.locks import LockTimeout, exclusive
from tests.storage.test_s3 import s3_endpoint  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
WRITERS, ROUNDS = 4, 6

# Each writer adds its own days to the same year partitions (daily bars) and its own trades to the same
# day partition (append), ROUNDS times: every one of those writes is a read-modify-write of a shared file.
RACER = textwrap.dedent("""
    import datetime as dt, json, sys, time
    import polars as pl
    from quantflow.storage.filesystem import StorageOptions, Store
    from quantflow.storage.lake import Lake
    from quantflow.storage.schemas import spec_for_kind
    root, me, rounds, options, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    lake = Lake(Store(root, StorageOptions(**json.loads(options))))
    bars, trades = spec_for_kind("raw_t_bars_daily", "bars_daily"), spec_for_kind("raw_t_trades", "trades")
    while time.time() < start_at:
        time.sleep(0.005)
    for r in range(rounds):
        day = dt.date(2024, 1, 1) + dt.timedelta(days=me * rounds + r)
        lake.write(bars, pl.DataFrame({"symbol": ["AAA"], "date": [day], "open": [1.0], "high": [1.0],
                                       "low": [1.0], "close": [float(me)], "volume": [1.0]}))
        tid = me * 1000 + r
        lake.write(trades, pl.DataFrame({
            "symbol": ["AAA"], "date": [dt.date(2024, 1, 2)],
            "ts": [dt.datetime(2024, 1, 2, 15, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=tid)],
            "trade_id": [tid], "price": [10.0], "size": [1.0]}), "append")
""")


def _race(tmp_path: Path, root: str, options: dict) -> Lake:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    start_at = time.time() + 3.0  # every writer imports first, then all start together
    procs = [subprocess.Popen([sys.executable, str(script), root, str(me), str(ROUNDS), json.dumps(options),
                               str(start_at)], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for me in range(WRITERS)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    return Lake(Store(root, StorageOptions(**options)))


def _assert_every_row(lake: Lake) -> None:
    bars = lake.read("raw_t_bars_daily")
    assert bars.height == WRITERS * ROUNDS
    assert sorted(bars["date"].to_list()) == [dt.date(2024, 1, 1) + dt.timedelta(days=i)
                                              for i in range(WRITERS * ROUNDS)]
    trades = lake.read("raw_t_trades")
    assert sorted(trades["trade_id"].to_list()) == sorted(m * 1000 + r for m in range(WRITERS) for r in range(ROUNDS))


def test_racing_writers_keep_every_row_on_a_local_lake(tmp_path):
    _assert_every_row(_race(tmp_path, str(tmp_path / "lake"), {}))
    assert not list((tmp_path / "lake").rglob("*.tmp"))


@pytest.mark.slow
def test_racing_writers_keep_every_row_on_s3(tmp_path, s3_endpoint, request):  # noqa: F811
    options = {"endpoint_url": s3_endpoint, "key": "test", "secret": "test", "region": "us-east-1"}
    _assert_every_row(_race(tmp_path, f"s3://research/{request.node.name}/lake", options))


def test_a_held_lock_names_its_holder_to_whoever_waits(tmp_path):
    path = tmp_path / "warehouse.duckdb.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from quantflow.storage.locks import exclusive
        with exclusive(Path({str(path)!r}), "the warehouse"):
            print("held", flush=True)
            time.sleep(60)
    """), "holder-command"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        heard: list[str] = []
        with pytest.raises(LockTimeout) as err, exclusive(path, "the warehouse", timeout_s=1.0, on_wait=heard.append):
            pass
        assert f"run pid {holder.pid}" in str(err.value) and "holder-command" in str(err.value)
        assert len(heard) == 1 and heard[0].startswith("waiting for the warehouse: in use by run pid")
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the next run takes it at once
    began = time.monotonic()
    with exclusive(path, "the warehouse", timeout_s=5.0):
        assert time.monotonic() - began < 1.0


def test_two_artifacts_stored_in_the_same_second_are_both_kept(tmp_path):
    from quantflow.storage.artifacts import ArtifactStore

    store = ArtifactStore(Store(str(tmp_path / "blobs")))
    when = dt.datetime(2024, 1, 2, 3, 4, 5)
    first, second = store.put("risk_", "json", b"1", when=when), store.put("risk_", "json", b"2", when=when)
    assert first != second and store.get(first) == b"1" and store.get(second) == b"2"
    assert store.list() == [first, second]  # staging files are never listed


def test_frames_are_unaffected_by_lock_files(tmp_path):
    """Lock and staging folders live beside the tables: listing tables never shows them."""
    lake = Lake(Store(str(tmp_path / "lake")))
    from quantflow.storage.schemas import spec_for_kind

    lake.write(spec_for_kind("raw_t_bars_daily", "bars_daily"), pl.DataFrame({
        "symbol": ["AAA"], "date": [dt.date(2024, 1, 2)], "open": [1.0], "high": [1.0], "low": [1.0],
        "close": [1.0], "volume": [1.0]}))
    assert (tmp_path / "lake" / "_locks").is_dir()
    assert lake.tables() == ["raw_t_bars_daily"]
