"""dagster-dbt assets of the transform (dbt) stage: one asset per model, lineage from the ingest assets, materialization."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline.dagster.assets.transform import (
    QuantflowDbtTranslator,
    build_dbt_resource,
    build_transform_assets,
)
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, reporter_resource
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import write_project
from tests.transform.raw_data import D1, D2, D3, at, fill_lake, make_project

CDM = {"cdm_trades", "cdm_quotes", "cdm_bars_daily"}


def _materialization_meta(result) -> dict[str, dict]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return out


def test_sample_metadata_from_a_fresh_copy_gives_one_asset_per_model(sample_project_copy, monkeypatch):
    monkeypatch.delenv("DAGSTER_IS_DEV_CLI", raising=False)
    md = get_metadata_manager(sample_project_copy).load_all()
    manifest = sample_project_copy / "dbt_project" / "target" / "manifest.json"
    assert not manifest.exists()  # a fresh copy: no dbt artifacts
    [assets] = build_transform_assets(md)
    assert manifest.exists()  # parsed once at load, outside `dagster dev`
    keys = {k.to_user_string() for k in assets.keys}
    assert keys == CDM
    for key in assets.keys:
        assert assets.group_names_by_key[key] == "transform"
        assert {d.to_user_string() for d in assets.asset_deps[key]} == {"raw_sample"}
    checks = {(c.asset_key.to_user_string(), c.name) for c in assets.check_keys}
    assert ("cdm_trades", "cdm_trades_unique_symbol_date_trade_id") in checks
    assert ("cdm_quotes", "cdm_quotes_bid_not_above_ask") in checks
    assert ("cdm_bars_daily", "cdm_bars_daily_ohlc_consistent") in checks
    assert isinstance(build_dbt_resource(md), dg.ConfigurableResource)
    # a second build reuses the cached DbtProject and the manifest
    stamp = manifest.stat().st_mtime_ns
    build_transform_assets(md)
    assert manifest.stat().st_mtime_ns == stamp


def test_translator_maps_raw_tables_to_their_feed_asset():
    translator = QuantflowDbtTranslator()
    source = {"resource_type": "source", "name": "raw_eod_bars_daily", "source_name": "raw", "meta": {}}
    assert translator.get_asset_key(source) == dg.AssetKey("raw_eod")
    tagged = {"resource_type": "source", "name": "anything", "source_name": "raw",
              "config": {"meta": {"quantflow_feed": "ticks"}}}
    assert translator.get_asset_key(tagged) == dg.AssetKey("raw_ticks")
    model = {"resource_type": "model", "name": "cdm_trades"}
    assert translator.get_asset_key(model) == dg.AssetKey("cdm_trades")
    assert translator.get_group_name(model) == "transform"


def test_no_enabled_feed_gives_external_cdm_specs(tmp_path):
    write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - {name: sample, kind: synthetic, enabled: false}
        """)
    md = get_metadata_manager(tmp_path).load_all()
    specs = build_transform_assets(md)
    assert all(isinstance(s, dg.AssetSpec) for s in specs)
    assert {s.key.to_user_string() for s in specs} == CDM | {"cdm_order_messages"}
    assert {s.group_name for s in specs} == {"transform"}
    assert not (tmp_path / "dbt_project").exists()
    assert isinstance(build_dbt_resource(md), dg.ResourceDefinition)


def test_materialize_dbt_assets_over_a_filled_lake(tmp_path):
    md = make_project(tmp_path / "proj")
    fill_lake(md)
    [assets] = build_transform_assets(md)
    resources = {"dbt": build_dbt_resource(md), REPORTER_KEY: reporter_resource()}
    cfg = {"start_date": D1.isoformat(), "end_date": D3.isoformat(), "skip_test": False}
    result = dg.materialize([assets], resources=resources, run_config={"ops": {"dbt_cdm": {"config": cfg}}})
    assert result.success
    meta = _materialization_meta(result)
    assert set(meta) == CDM
    trades = meta["cdm_trades"]
    assert trades["rows/cdm_trades"] == 9 and trades["rows_written/cdm_trades"] == 9
    assert trades["location/cdm_trades"] == project_lake(md).url("cdm_trades")
    assert trades["preview/cdm_trades"].startswith("| symbol | date | ts |")
    assert trades["engine"] == "duckdb" and trades["dbt_command"] == "build" and trades["batches"] == 1
    assert trades["unique_id"] == "model.quantflow.cdm_trades"  # dbt's own metadata is kept
    assert meta["cdm_bars_daily"]["rows/cdm_bars_daily"] == 3
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 48 and all(c.passed for c in checks)
    assert project_lake(md).read("cdm_quotes").height == 3
    assert not list((md.project_dir / "dbt_project" / "target").glob("dbt_cdm-*"))  # no per-run leftovers

    # bad data: the failing dbt test surfaces as a failed asset check, the step fails, nothing is exported
    shifted = pl.DataFrame({"symbol": ["BBB"], "date": [D2], "ts": [at(D2, 0) + dt.timedelta(days=3)],
                            "trade_id": [0], "price": [20.0], "size": [1.0]})
    project_lake(md).write(spec_for_kind("raw_sample_trades", "trades"), shifted, "overwrite")
    cfg = {**cfg, "write_mode": "overwrite", "symbols": ["BBB"]}
    failed = dg.materialize([assets], resources=resources, run_config={"ops": {"dbt_cdm": {"config": cfg}}},
                            raise_on_error=False)
    assert not failed.success
    bad = [c for c in failed.get_asset_check_evaluations() if not c.passed]
    assert [(c.asset_key.to_user_string(), c.check_name) for c in bad] == [("cdm_trades", "cdm_trades_ts_near_date")]
    assert "lake_export" in _materialization_meta(failed)["cdm_trades"]
    [step_failure] = [e for e in failed.all_events if e.is_step_failure]
    assert step_failure.event_specific_data.user_failure_data.description == (
        f"dbt build failed for {D1} .. {D3}: test cdm_trades_ts_near_date: fail "
        "(Got 1 result, configured to fail if != 0)")
    assert project_lake(md).read("cdm_trades", ["BBB"], D2, D2).height == 0


@pytest.fixture(autouse=True)
def _no_dagster_home(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
