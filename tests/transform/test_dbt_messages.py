"""The cdm_order_messages dbt model, on DuckDB and on a real PostgreSQL server: quality filters,
de-duplication, level sets without an order id, the dbt tests."""

from __future__ import annotations

import math

import polars as pl
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from quantflow.transform import runner
from tests.conftest import window, write_project
from tests.transform.raw_data import D1, D2, at

PROJECT = """\
project:
  name: dbt_messages
  symbols: [AAA]
  ingest:
    feeds:
      - {{name: book, kind: lobster, params: {{path: files}}}}
  data_processing:
    historical_data_engine: {engine}
"""


def raw_messages() -> pl.DataFrame:
    rows = [
        # symbol, date, ts, seq, message_id, type, order_id, size, price, direction
        ("AAA", D1, at(D1, 0), 1, 1, 1, 11, 100.0, 10.0, 1),
        ("AAA", D1, at(D1, 0), 2, 1, 9, None, 40.0, 9.99, 1),  # level set: no order id
        ("AAA", D1, at(D1, 1), 3, 2, 1, 12, 50.0, 10.02, -1),
        ("AAA", D1, at(D1, 1), 3, 2, 1, 12, 50.0, 10.02, -1),  # duplicate
        ("AAA", D1, at(D1, 2), 4, 3, 3, 12, -5.0, 10.02, -1),  # negative size
        ("AAA", D1, at(D1, 3), 5, 4, 2, 11, 5.0, math.nan, 1),  # NaN price
        ("AAA", D1, at(D1, 4), 6, 5, 4, 11, 5.0, 10.0, 0),  # no side
        ("AAA", D1, at(D1, 5), 7, 6, 7, 0, 0.0, -1.0, -1),  # halt: kept, with its code as price
        ("aaa", D2, at(D2, 0), 1, 1, 5, 0, 10.0, 10.5, 1),
    ]
    cols = ["symbol", "date", "ts", "seq", "message_id", "type", "order_id", "size", "price", "direction"]
    return pl.DataFrame(rows, schema=cols, orient="row").with_columns(
        pl.col("type", "direction").cast(pl.Int8))


def run_model(root, engine: str, local_yaml: str | None = None) -> pl.DataFrame:
    write_project(root, PROJECT.format(engine=engine), local_yaml)
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    lake.write(spec_for_kind("raw_book_messages", "messages"), raw_messages())
    result = runner.run(md, window(md, D1, D2), skip_test=False)
    assert result.tests and set(result.tests.values()) == {"pass"}, result.tests
    assert any("cdm_order_messages" in t for t in result.tests)
    assert result.rows["cdm_order_messages"] == 5
    return lake.read("cdm_order_messages").sort("date", "seq")


def check(cdm: pl.DataFrame) -> None:
    assert cdm.select("date", "seq", "type", "order_id").rows() == [
        (D1, 1, 1, 11), (D1, 2, 9, None), (D1, 3, 1, 12), (D1, 7, 7, 0), (D2, 1, 5, 0)]
    assert cdm["symbol"].unique().to_list() == ["AAA"]
    assert cdm.schema["ts"] == pl.Datetime("ns", "UTC") and cdm["ts"][1] == cdm["ts"][0]


def test_order_messages_on_duckdb(tmp_path):
    check(run_model(tmp_path / "duck", "duckdb"))


@pytest.mark.slow
def test_order_messages_on_postgres(tmp_path, postgres_server):
    postgres_server.create_database("qf_messages")
    local = postgres_server.local_yaml(schema="cdm_msg", raw_schema="raw_msg", dbname="qf_messages")
    check(run_model(tmp_path / "pg", "postgres", local))
