"""The lake, artifacts and DuckDB catalog on S3, against a real S3-compatible server on 127.0.0.1 (moto)."""

from __future__ import annotations

import datetime as dt
import socket

import boto3
import polars as pl
import pytest
from moto.server import ThreadedMotoServer

from quantflow.storage.artifacts import ArtifactStore
from quantflow.storage.catalog import connect_catalog
from quantflow.storage.filesystem import StorageOptions, Store
from quantflow.storage.lake import Lake
from tests.storage.test_lake import BARS, D1, D2, TRADES, bars, trades

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="research")
    yield endpoint
    server.stop()


@pytest.fixture
def options(s3_endpoint) -> StorageOptions:
    return StorageOptions(endpoint_url=s3_endpoint, key="test", secret="test", region="us-east-1")


def test_lake_round_trip_and_write_modes_on_s3(options, request):
    lake = Lake(Store(f"s3://research/{request.node.name}/lake", options))
    res = lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 2, symbol="BBB")]))
    assert res.partitions == [
        f"s3://research/{request.node.name}/lake/raw_t_trades/symbol=AAA/day=2024-01-02/data.parquet",
        f"s3://research/{request.node.name}/lake/raw_t_trades/symbol=BBB/day=2024-01-03/data.parquet",
    ]
    assert lake.write(TRADES, trades(D1, 9, price=1.0)).days_skipped == 1
    lake.write(TRADES, trades(D1, 4, price=2.0), "overwrite")
    got = lake.read("raw_t_trades", ["AAA"])
    assert got["price"].to_list() == [2.0] * 4
    lake.write(BARS, bars([D1, D2], close=7.0))
    assert lake.tables() == ["raw_t_bars_daily", "raw_t_trades"]
    assert lake.read("raw_t_bars_daily", start=D2)["close"].to_list() == [7.0]


def test_artifacts_on_s3(options, request):
    store = ArtifactStore(Store(f"s3://research/{request.node.name}/artifacts", options))
    url = store.put("risk_", "json", b'{"var": 0.02}', when=dt.datetime(2024, 1, 2, 3, 4, 5))
    assert url == f"s3://research/{request.node.name}/artifacts/risk_20240102_030405.json"
    assert store.get(url) == b'{"var": 0.02}'
    assert store.list("risk_") == [url]


def test_duckdb_catalog_reads_s3_lake_through_fsspec(options, request):
    lake = Lake(Store(f"s3://research/{request.node.name}/lake", options))
    lake.write(TRADES, pl.concat([trades(D1, 3), trades(D2, 5, symbol="BBB")]))
    con = connect_catalog(lake)
    assert con.execute("select symbol, count(*) from lake.raw_t_trades group by 1 order by 1").fetchall() == [
        ("AAA", 3), ("BBB", 5)]


def test_s3_listings_see_what_other_processes_wrote(options, request):
    """No listings cache: a partition another process PUT is seen at once (here: written with boto3)."""
    import io

    prefix = f"{request.node.name}/lake"
    lake = Lake(Store(f"s3://research/{prefix}", options))
    lake.write(TRADES, trades(D1, 3))
    assert len(lake.partitions("raw_t_trades")) == 1
    buf = io.BytesIO()
    trades(D2, 2).drop("symbol").write_parquet(buf)
    boto3.client("s3", endpoint_url=options.endpoint_url, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").put_object(
        Bucket="research", Key=f"{prefix}/raw_t_trades/symbol=AAA/day={D2}/data.parquet", Body=buf.getvalue())
    assert len(lake.partitions("raw_t_trades")) == 2 and lake.read("raw_t_trades").height == 5


def test_s3_month_partition_emptied_by_compare_and_swap_not_deleted(options, request):
    from quantflow.storage.schemas import TableSpec

    lake = Lake(Store(f"s3://research/{request.node.name}/lake", options))
    bars_ = pl.DataFrame({"symbol": ["AAA"], "date": [D1], "ts_first": [1], "volume": [1.0]})
    spec = TableSpec("cdm_x_bars", dict(bars_.schema), "month", ("symbol", "date"))
    lake.write(spec, bars_)
    assert lake.drop_day("cdm_x_bars", "AAA", D1).days_deleted == 1
    assert len(lake.partitions("cdm_x_bars")) == 1 and lake.read("cdm_x_bars").height == 0


def test_state_engine_on_an_s3_lake_writes_what_it_writes_locally(options, request, tmp_path):
    """Packed tasks read their partitions from S3 (footers for sizing, then the files) and write back."""
    from polars.testing import assert_frame_equal

    from quantflow.metadata import get_metadata_manager
    from quantflow.state_engine import runner
    from quantflow.state_engine.tables import tick_tables
    from quantflow.storage.project import project_lake
    from tests.conftest import window
    from tests.state_engine.test_runner import END, START, make_project

    local = make_project(tmp_path / "local")
    local_md = get_metadata_manager(local).load_all()
    remote = make_project(tmp_path / "remote")
    (remote / "project_metadata" / "project.yaml").write_text(
        (remote / "project_metadata" / "project.yaml").read_text()
        + f"  storage: {{lake_root: 's3://research/{request.node.name}/lake'}}\n")
    (remote / "project_metadata" / "local.yaml").write_text(
        f"local:\n  s3: {{endpoint_url: '{options.endpoint_url}', key: test, secret: test, region: us-east-1}}\n")
    remote_md = get_metadata_manager(remote).load_all()
    s3_lake = project_lake(remote_md)
    for table in ("cdm_trades", "cdm_quotes", "cdm_bars_daily"):  # the CDM, copied to S3
        from quantflow.storage.schemas import spec_for_kind

        kind = table.removeprefix("cdm_")
        s3_lake.write(spec_for_kind(table, kind), project_lake(local_md).read(table))
    on_s3 = runner.run(remote_md, window(remote_md, START, END))
    assert on_s3.plan == "20 shards in 1 task, 6,000 trades on local"  # sized by the S3 files' footers
    runner.run(local_md, window(local_md, START, END))
    for table in tick_tables(local_md.project.state_engine):
        order = ["symbol", "date", "ts"] if table in ("cdm_trade_enriched", "cdm_lob_l2") else ["symbol", "ts_first"]
        assert_frame_equal(s3_lake.read(table).sort(order), project_lake(local_md).read(table).sort(order))
