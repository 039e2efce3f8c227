"""The feature DAG: metadata errors at the feature's line, warm-up along paths, the TA-Lib catalogue."""

from __future__ import annotations

import numpy as np
import pytest

from quantflow.feature_engine.engine import talib_memory, warmup_bars
from quantflow.metadata import MetadataError, get_metadata_manager
from quantflow.metadata.schema.feature_engine import ALPHA158_NAMES, FeatureDAG, FeatureEngineConfig
from quantflow.metadata.talib_catalog import catalog, live_catalog
from tests.conftest import write_project

PROJECT = """\
project:
  name: features_test
  symbols: [AAA, BBB]
  feature_engine:
    features:
      - {name: rsi, kind: talib, params: {function: RSI, timeperiod: 14}}
      - {name: rsi_z, kind: zscore, params: {column: rsi, window: 20}}
      - {name: rank, kind: cs_rank, params: {column: rsi_z}}
"""


def issues_of(text: str) -> list:
    with pytest.raises(MetadataError) as excinfo:
        get_metadata_manager(write_project(PROJECT_ROOT[0], text)).load_all()
    return excinfo.value.issues


PROJECT_ROOT: list = []


@pytest.fixture(autouse=True)
def _root(tmp_path):
    PROJECT_ROOT[:] = [tmp_path]


def test_the_sample_set_compiles_in_dependency_order():
    md = get_metadata_manager(write_project(PROJECT_ROOT[0], PROJECT)).load_all()
    dag = FeatureDAG.compile(md.project.feature_engine, md.symbols)
    assert [n.name for n in dag.nodes] == ["rsi", "rsi_z", "rank"]
    assert dag.node("rsi_z").depends_on == ("rsi",) and dag.outputs == ["rsi", "rsi_z", "rank"]


@pytest.mark.parametrize("edit, line, field, message", [
    ("kind: zscore", 7, "project.feature_engine.features.1.kind", "Input should be"),  # unknown kind
    ("column: rsi, window", 7, "project.feature_engine.features.1.params",
     "feature 'rsi_z' reads nope: not a column of cdm_bars_daily"),
    ("function: RSI,", 6, "project.feature_engine.features.0.params", "TA-Lib has no function 'RSX'"),
    ("timeperiod: 14", 6, "project.feature_engine.features.0.params", "TA-Lib RSI has no parameter period"),
])
def test_a_bad_feature_is_reported_at_its_line(edit, line, field, message):
    replaced = {"kind: zscore": "kind: zscoer", "column: rsi, window": "column: nope, window",
                "function: RSI,": "function: RSX,", "timeperiod: 14": "period: 14"}[edit]
    [issue] = issues_of(PROJECT.replace(edit, replaced))
    assert issue.line == line and issue.field == field and message in issue.message, issue
    assert issue.file.endswith("project.yaml")


def test_duplicate_outputs_cycles_and_time_series_of_cross_sections_are_errors():
    text = PROJECT + """\
      - {name: a, kind: zscore, params: {column: b}}
      - {name: b, kind: rolling, params: {column: a}}
      - {name: late, kind: zscore, params: {column: rank}}
      - {name: rsi2, kind: returns, params: {horizons: [1]}, outputs: [rsi]}
      - {name: close, kind: zscore, params: {column: open}}
"""
    found = {(i.line, i.message.split(":")[0]) for i in issues_of(text)}
    messages = " | ".join(i.message for i in issues_of(text))
    assert "features a -> b -> a read each other in a cycle" in messages
    assert "feature 'late' is a time series of cross-sectional feature 'rank'" in messages
    assert "feature 'rsi2' writes 'rsi', already written by feature 'rsi'" in messages
    assert "feature 'close' writes 'close', already written by a column of cdm_bars_daily" in messages
    assert {line for line, _ in found} == {9, 11, 12, 13}


def test_a_benchmark_must_be_a_project_symbol():
    [issue] = issues_of(PROJECT + "      - {name: beta, kind: beta, params: {benchmark: SPY}}\n")
    assert issue.line == 9 and "benchmark 'SPY' is not one of the project's symbols" in issue.message


def test_warm_up_is_the_longest_chain_of_windows():
    cfg = FeatureEngineConfig.model_validate({"features": [
        {"name": "r", "kind": "returns", "params": {"horizons": [1, 5]}},
        {"name": "z", "kind": "zscore", "params": {"column": "r_5", "window": 20}},
        {"name": "v", "kind": "volatility", "params": {"window": 10}},
        {"name": "c", "kind": "cs_rank", "params": {"column": "z"}},
    ]})
    assert warmup_bars(FeatureDAG.compile(cfg), 20) == 5 + 19  # r_5 needs 5 bars back, its z-score 19 more
    cfg.preset = "alpha158"
    assert warmup_bars(FeatureDAG.compile(cfg), 20) == 60
    cfg.features.append(cfg.features[0].model_copy(update={"name": "obv", "kind": "talib",
                                                           "params": {"function": "OBV"}}))
    assert warmup_bars(FeatureDAG.compile(cfg), 20) is None  # a running total: the whole history
    rsi = FeatureEngineConfig.model_validate({"features": [
        {"name": "rsi", "kind": "talib", "params": {"function": "RSI", "timeperiod": 10}}]})
    assert warmup_bars(FeatureDAG.compile(rsi), 20) == 10 + 20 * 10  # lookback + settle x period


def test_alpha158_names_are_qlibs_158_and_vwap0_needs_a_vwap_column():
    assert len(ALPHA158_NAMES) == 158 and len(set(ALPHA158_NAMES)) == 158
    assert ALPHA158_NAMES[:13] == ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2",
                                   "OPEN0", "HIGH0", "LOW0", "VWAP0")
    assert ALPHA158_NAMES[13:18] == ("ROC5", "ROC10", "ROC20", "ROC30", "ROC60") and ALPHA158_NAMES[-1] == "VSUMD60"
    daily = FeatureDAG.compile(FeatureEngineConfig(preset="alpha158"))
    bars = FeatureDAG.compile(FeatureEngineConfig(preset="alpha158", input="cdm_volume_run_100_bars"))
    assert len(daily.outputs) == 157 and "VWAP0" not in daily.outputs and len(bars.outputs) == 158


def test_the_shipped_talib_catalog_is_the_installed_talib():
    assert catalog() == live_catalog()["functions"]


def test_every_talib_function_whose_values_depend_on_the_start_has_a_warm_up_beyond_its_lookback():
    """Each function over a series and over its tail: where the tail's values differ after TA-Lib's own
    lookback, the function must be classified decaying (warm-up settle x period) or path (all history)."""
    from talib import abstract

    rng = np.random.default_rng(0)
    n, cut = 3000, 500
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    high, low = close * (1 + abs(rng.normal(0, 0.01, n))), close * (1 - abs(rng.normal(0, 0.01, n)))
    full = {"open": (high + low) / 2, "high": high, "low": low, "close": close,
            "volume": rng.uniform(1e5, 1e6, n), "periods": np.full(n, 10.0)}
    tail = {k: v[cut:] for k, v in full.items()}
    wrong = []
    for name in catalog():
        f = abstract.Function(name)
        a, b = f(full), f(tail)
        a, b = ([a], [b]) if isinstance(a, np.ndarray) else (a, b)
        lb = f.lookback
        depends = any(not np.allclose(np.asarray(x, float)[cut + lb + 1:], np.asarray(y, float)[lb + 1:],
                                      rtol=1e-9, atol=1e-12, equal_nan=True) for x, y in zip(a, b))
        if depends and talib_memory(name, dict(f.parameters)) == "window":
            wrong.append(name)
    assert wrong == []
