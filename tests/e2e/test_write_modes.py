"""Every table stays true in every write mode: overlapping windows, run again and again in one mode, leave no
duplicate key anywhere in the lake or the warehouse, and every derived table equals a clean derivation from
the raw tables the project ends with (the calendar bars a window cut included)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quantflow.ingest import runner as ingest_runner
from quantflow.metadata import get_metadata_manager
from quantflow.state_engine import runner as se_runner
from quantflow.storage.project import project_lake, warehouse_path
from quantflow.storage.schemas import spec_for_kind
from quantflow.transform import runner as transform_runner
from tests.conftest import window, write_project

pytestmark = pytest.mark.slow

PROJECT = """\
project:
  name: modes
  symbols: [AAA, BBB]
  ingest:
    feeds:
      - {name: sample, kind: synthetic, params: {seed: 3, trades_per_day: 300, quotes_per_trade: 2}}
  state_engine:
    executor: local
    lob: {interval: 1m, depth: 1}
    bars:
      - {type: time, every: 5m}
      - {type: tick, threshold: 40}
      - {type: dollar, threshold: 500000}
      - {type: tick_imbalance, expected_ticks: 40}
      - {type: time, every: 1w}
      - {type: time, every: 1mo}
"""
# Wed 3 .. Wed 10 Jan cuts the week of the 8th; the second window overlaps it and ends on a Friday; the
# third lies inside the first.
WINDOWS = [(dt.date(2024, 1, 3), dt.date(2024, 1, 10)), (dt.date(2024, 1, 8), dt.date(2024, 1, 19)),
           (dt.date(2024, 1, 4), dt.date(2024, 1, 5))]
UNION = (dt.date(2024, 1, 3), dt.date(2024, 1, 19))
KEYS = {
    "raw_sample_trades": ("symbol", "date", "trade_id"), "cdm_trades": ("symbol", "date", "trade_id"),
    "raw_sample_quotes": ("symbol", "date", "quote_id"), "cdm_quotes": ("symbol", "date", "quote_id"),
    "raw_sample_bars_daily": ("symbol", "date"), "cdm_bars_daily": ("symbol", "date"),
    "cdm_trade_enriched": ("symbol", "date", "trade_id"), "cdm_lob_l2": ("symbol", "date", "ts"),
    "cdm_time_5m_bars": ("symbol", "date", "ts_first"), "cdm_time_1w_bars": ("symbol", "period_start"),
}


def _derive(md, start: dt.date, end: dt.date, mode: str) -> None:
    w = window(md, start, end, write_mode=mode)
    transform_runner.run(md, w)
    se_runner.run(md, w)


def _run_all(md, start: dt.date, end: dt.date, mode: str) -> None:
    ingest_runner.run(md, window(md, start, end, write_mode=mode), feed="sample")
    _derive(md, start, end, mode)


def _tables(md) -> dict[str, pl.DataFrame]:
    lake = project_lake(md)
    return {t: lake.read(t) for t in lake.tables()}


def _assert_no_duplicate_keys(md) -> None:
    for table, df in _tables(md).items():
        assert df.height > 0, table
        assert not df.is_duplicated().any(), f"{table}: duplicated rows"
        key = KEYS.get(table)
        if key:
            assert not df.select(key).is_duplicated().any(), f"{table}: duplicate keys {key}"
    con = duckdb.connect(str(warehouse_path(md)), read_only=True)
    try:
        for table, key in (("cdm_trades", KEYS["cdm_trades"]), ("cdm_quotes", KEYS["cdm_quotes"]),
                           ("cdm_bars_daily", KEYS["cdm_bars_daily"])):
            cols = ", ".join(key)
            dup = con.execute(f"select count(*) from (select {cols} from cdm.{table} group by {cols} "
                              "having count(*) > 1)").fetchone()[0]
            assert dup == 0, f"warehouse {table}: {dup} duplicate keys"
    finally:
        con.close()


def _assert_derived_equal_a_clean_derivation(md, tmp_path: Path) -> None:
    """A fresh project given only this project's raw tables derives every other table the same."""
    clean_root = write_project(tmp_path / "clean", PROJECT)
    lake_dir = md.project_dir / ".quantflow" / "lake"
    for raw in lake_dir.glob("raw_*"):
        shutil.copytree(raw, clean_root / ".quantflow" / "lake" / raw.name)
    clean = get_metadata_manager(clean_root).load_all()
    _derive(clean, *UNION, "overwrite")
    got, want = _tables(md), _tables(clean)
    assert set(got) == set(want)
    for table in want:
        order = [c for c in want[table].columns if want[table][c].dtype != pl.Float64]
        try:
            assert_frame_equal(got[table].sort(order), want[table].sort(order), check_column_order=False)
        except AssertionError as err:
            raise AssertionError(f"{table}: {err}") from None


@pytest.mark.parametrize("mode", ["skip_if_exists", "overwrite", "append"])
def test_overlapping_windows_keep_every_table_true(tmp_path, mode):
    root = write_project(tmp_path / "proj", PROJECT)
    md = get_metadata_manager(root).load_all()
    for start, end in WINDOWS:
        _run_all(md, start, end, mode)
    if mode == "append":
        # late rows arrive for AAA on the 9th: appending them re-derives that day everywhere downstream
        lake = project_lake(md)
        day = dt.date(2024, 1, 9)
        stored = lake.read("raw_sample_trades", ["AAA"], day, day)
        last = stored.sort("trade_id").tail(1)
        late = pl.concat([last.with_columns(pl.col("trade_id") + i, pl.col("ts") + pl.duration(milliseconds=i))
                          for i in (1, 2)])
        assert lake.write(spec_for_kind("raw_sample_trades", "trades"), late, "append").rows_written == 2
        _derive(md, day, day, "append")
        assert lake.read("cdm_trades", ["AAA"], day, day).height == stored.height + 2
    _assert_no_duplicate_keys(md)
    _assert_derived_equal_a_clean_derivation(md, tmp_path)
    weekly = project_lake(md).read("cdm_time_1w_bars", ["AAA"])
    # the week of the 8th, cut by the first window, is stored once and whole (Mon 8 .. Fri 12)
    week = weekly.filter(pl.col("period_start") == dt.date(2024, 1, 8))
    assert week.height == 1 and week["date"].item() == dt.date(2024, 1, 12) and week["n_days"].item() == 5
    assert week["complete"].item()  # later days are known: the week is over
    last = weekly.filter(pl.col("period_start") == dt.date(2024, 1, 15))
    assert not last["complete"].item()  # the runs end on Friday the 19th: the week has not ended yet
