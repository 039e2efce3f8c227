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


def test_postgres_warehouse_is_held_by_one_run_at_a_time_on_any_host(tmp_path, postgres_server):
    """An advisory lock on the CDM schema: a second run waits, naming the holder, and gets it when freed."""
    import os
    import threading

    from quantflow.storage.locks import LockTimeout
    from quantflow.transform.warehouse import warehouse_lock

    server = postgres_server
    server.create_database("qf_lock")
    md = make_project(tmp_path / "pg", engine="postgres", local_yaml=server.local_yaml(schema="cdm_l", dbname="qf_lock"))
    held, release = threading.Event(), threading.Event()

    def holder():
        with warehouse_lock(md):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)
        heard: list[str] = []
        with pytest.raises(LockTimeout, match=f"in use by quantflow pid {os.getpid()} on "), \
                warehouse_lock(md, on_wait=heard.append, timeout_s=1.5):
            pass
        assert heard and heard[0].startswith("waiting for the postgres warehouse (schema cdm_l")
        other = make_project(tmp_path / "pg2", engine="postgres",
                             local_yaml=server.local_yaml(schema="cdm_other", dbname="qf_lock"))
        with warehouse_lock(other, timeout_s=1.5):  # another CDM schema is another lock
            pass
    finally:
        release.set()
        thread.join()
    with warehouse_lock(md, timeout_s=5):
        pass
