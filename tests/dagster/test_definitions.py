"""The Dagster definitions built from metadata: groups, lineage, jobs, config, and small materializations."""

from __future__ import annotations

import dagster as dg
import pytest

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline.config import StateEngineRunConfig, TransformRunConfig, WindowConfig
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata
from tests.conftest import REPO_ROOT, write_project


def _graph(defs: dg.Definitions):
    return defs.resolve_asset_graph()


def test_sample_project_asset_graph_has_ingest_and_transform_with_lineage():
    md = get_metadata_manager(REPO_ROOT).load_all()
    defs = build_defs_from_metadata(md)
    graph = _graph(defs)
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_sample"] == "ingest"
    for table in ("cdm_trades", "cdm_quotes", "cdm_bars_daily"):
        assert groups[table] == "transform"
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(table)).parent_keys}
        assert parents == {"raw_sample"}, (table, parents)
    assert {"raw_sample", "cdm_trades", "cdm_quotes", "cdm_bars_daily"} <= set(groups)
    state_tables = {k for k, g in groups.items() if g == "state_engine"}
    assert {"cdm_trade_enriched", "cdm_lob_l2", "cdm_time_1m_bars", "cdm_time_1w_bars"} <= state_tables
    for table in state_tables:
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(table)).parent_keys}
        expected = {"cdm_time_1w_bars": {"cdm_bars_daily"}, "cdm_lob_l2": {"cdm_quotes"}}
        assert parents == expected.get(table, {"cdm_trades", "cdm_quotes"}), table
    # the models: one asset per model in the group of its kind, judged by its validation asset
    assert (groups["pred_rf_fwd5"], groups["pred_lstm_fwd5"]) == ("ml", "dl")
    for model in ("rf_fwd5", "lstm_fwd5"):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(f"pred_{model}")).parent_keys}
        assert parents == {"ft_features", "cdm_labels"}
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(f"validation_{model}")).parent_keys} == {
            f"pred_{model}"}
        assert groups[f"validation_{model}"] == "validation"
    # the research half: weights wait for the model's validation (its blocking gates), reports for the backtest
    parents = lambda key: {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}  # noqa: E731
    assert parents("pf_weights") == {"pred_rf_fwd5", "validation_rf_fwd5", "cdm_bars_daily"}
    assert parents("trading_report") == {"pf_weights", "cdm_bars_daily"}
    assert parents("report_plot") == {"trading_report", "ft_features", "pred_rf_fwd5"}
    assert parents("report_stress_test") == parents("report_risk") == {"trading_report"}
    assert (groups["pf_weights"], groups["trading_report"], groups["report_risk"]) == ("portfolio", "backtest",
                                                                                       "reports")
    jobs = {job.name for job in defs.jobs}
    assert jobs == {"quantflow_pipeline", "quantflow_ingest", "quantflow_transform", "quantflow_state_engine",
                    "quantflow_label_engine", "quantflow_feature_engine", "quantflow_ml", "quantflow_dl",
                    "quantflow_validation", "quantflow_portfolio", "quantflow_backtest", "quantflow_reports"}
    assert defs.resolve_job_def("quantflow_ingest")  # resolvable, with the dbt resource bound
    assert defs.resolve_job_def("quantflow_pipeline")


def test_disabled_feeds_make_cdm_tables_external_assets(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - {name: sample, kind: synthetic, enabled: false}
        """)
    defs = build_defs_from_metadata(get_metadata_manager(root).load_all())
    graph = _graph(defs)
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"cdm_trades", "cdm_quotes", "cdm_bars_daily"} <= keys
    assert "raw_sample" not in keys
    assert not any(graph.get(k).is_executable for k in graph.get_all_asset_keys())
    assert not defs.jobs


def test_pipeline_config_defaults_and_validation():
    import datetime as dt

    today = dt.date(2024, 3, 5)
    window = WindowConfig().window(["AAA", "BBB"], today=today)
    assert (window.start_date, window.end_date) == (dt.date(2024, 3, 4), today)
    assert window.symbols == ("AAA", "BBB") and window.write_mode == "skip_if_exists"
    state, dbt = StateEngineRunConfig(), TransformRunConfig()
    assert (state.max_concurrency, state.shard_granularity, dbt.batch_days, dbt.skip_test) == (4, "daily", None, True)
    with pytest.raises(ValueError, match="start_date 2024-03-05 is after end_date 2024-03-01"):
        WindowConfig(start_date="2024-03-05", end_date="2024-03-01").window(["AAA"])
    with pytest.raises(ValueError, match="expected a date as YYYY-MM-DD"):
        WindowConfig(start_date="03/05/2024").window(["AAA"])
    with pytest.raises(ValueError, match=r"\['ZZZ'\] are not in the project's symbols"):
        WindowConfig(symbols=["ZZZ"]).window(["AAA"])


def test_ingest_asset_materializes_with_metadata(small_project):
    md = get_metadata_manager(small_project).load_all()
    defs = build_defs_from_metadata(md)
    job = defs.resolve_job_def("quantflow_ingest")
    cfg = {"start_date": "2024-01-02", "end_date": "2024-01-03", "symbols": ["AAA"]}
    result = job.execute_in_process(run_config={"ops": {"raw_sample": {"config": cfg}}})
    assert result.success
    [mat] = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    meta = mat.metadata
    assert meta["rows_written/raw_sample_trades"].value > 0
    assert meta["days_written/raw_sample_trades"].value == 2
    assert meta["location/raw_sample_trades"].value.endswith("raw_sample_trades")
    assert "| symbol |" in meta["preview/raw_sample_trades"].value
    assert meta["summary_url"].value.rsplit("/", 1)[1].startswith("data_extractor_")
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "no_bad_rows"
    # a second run in the default mode skips every stored day
    again = job.execute_in_process(run_config={"ops": {"raw_sample": {"config": cfg}}})
    meta2 = again.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    assert meta2["rows_written/raw_sample_trades"].value == 0
    assert meta2["days_skipped/raw_sample_trades"].value == 2


def test_state_engine_job_materializes_every_output(tmp_path):
    from tests.state_engine.test_runner import END, START, make_project

    root = make_project(tmp_path / "p")
    md = get_metadata_manager(root).load_all()
    defs = build_defs_from_metadata(md)
    job = defs.resolve_job_def("quantflow_state_engine")
    cfg = {"start_date": START.isoformat(), "end_date": END.isoformat()}
    result = job.execute_in_process(run_config={"ops": {"state_engine_full": {"config": cfg}}})
    assert result.success
    mats = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()}
    assert set(mats) == {"cdm_trade_enriched", "cdm_lob_l2", "cdm_time_5m_bars", "cdm_volume_20000_bars",
                         "cdm_dollar_20perday_bars", "cdm_tick_imbalance_30_bars", "cdm_dollar_20perday_3d_bars",
                         "cdm_volume_run_30_bars", "cdm_time_1w_bars"}
    meta = mats["cdm_time_5m_bars"].metadata
    assert meta["shards"].value == 20 and meta["trades"].value > 0 and meta["trades_per_second"].value > 0
    assert meta["rows_written/cdm_time_5m_bars"].value > 0
    assert "| symbol |" in meta["preview/cdm_time_5m_bars"].value


def test_a_book_from_messages_has_the_order_messages_as_its_parent(tmp_path):
    write_project(tmp_path, """\
        project:
          name: p
          symbols: [AMZN]
          ingest:
            feeds:
              - {name: lob, kind: lobster, params: {path: files}}
          state_engine:
            lob: {interval: 1s, source: messages}
        """)
    graph = _graph(build_defs_from_metadata(get_metadata_manager(tmp_path).load_all()))
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("cdm_lob_l2")).parent_keys}
    assert parents == {"cdm_order_messages"}
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("cdm_order_messages")).parent_keys} == {"raw_lob"}
