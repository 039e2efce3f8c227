"""The dbt stage on a real PostgreSQL 15 server (dbt-postgres): the same CDM as on DuckDB."""

from __future__ import annotations

import polars as pl
import pytest

from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from quantflow.transform import runner
from tests.conftest import window
from tests.transform.raw_data import D1, D2, D3, at, fill_lake, make_project
from tests.transform.test_dbt_duckdb import check_cdm

pytestmark = pytest.mark.slow


def test_dbt_on_postgres_builds_the_cdm_and_replaces_windows(tmp_path, postgres_server):
    server = postgres_server
    server.create_database("qf_cdm")
    md = make_project(tmp_path / "pg", engine="postgres",
                      local_yaml=server.local_yaml(schema="cdm_test", raw_schema="raw_test", dbname="qf_cdm"))
    fill_lake(md)
    result = runner.run(md, window(md, D1, D3), batch_days=2, skip_test=False)
    assert result.rows == {"cdm_bars_daily": 3, "cdm_trades": 9, "cdm_quotes": 3}
    assert result.warehouse == f"postgresql://127.0.0.1:{server.port}/qf_cdm/cdm_test"
    assert result.tests and set(result.tests.values()) == {"pass"}
    check_cdm(project_lake(md))

    con = server.connect("qf_cdm")
    try:
        with con.cursor() as cur:
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'cdm_test' AND table_name = 'cdm_trades'")
            types = dict(cur.fetchall())
            assert types["ts"] == "timestamp with time zone" and types["price"] == "double precision"
            cur.execute("SELECT count(*) FROM raw_test.raw_sample_trades")
            assert cur.fetchone() == (13,)  # raw rows copied, defects included

        # corrected raw data for (AAA, D1); rerun that day for AAA only
        fixed = pl.DataFrame({"symbol": ["AAA"], "date": [D1], "ts": [at(D1, 0)], "trade_id": [0],
                              "price": [9.5], "size": [1.0]})
        project_lake(md).write(spec_for_kind("raw_sample_trades", "trades"), fixed, "overwrite")
        again = runner.run(md, window(md, D1, D1, ["AAA"], "overwrite"))
        assert again.rows["cdm_trades"] == 1
        with con.cursor() as cur:
            cur.execute("SELECT symbol, date, count(*) FROM cdm_test.cdm_trades GROUP BY 1, 2 ORDER BY 1, 2")
            assert cur.fetchall() == [("AAA", D1, 1), ("AAA", D2, 2), ("BBB", D1, 3), ("BBB", D3, 1)]
            cur.execute("SELECT count(*) FROM raw_test.raw_sample_trades")
            assert cur.fetchone() == (7,)  # AAA's 7 raw rows of D1 replaced by the corrected one
    finally:
        con.close()
    assert project_lake(md).read("cdm_trades", ["AAA"], D1, D1)["price"].to_list() == [9.5]
