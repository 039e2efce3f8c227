"""The stage contract as a new maintainer meets it: one registry, one runner signature, stages side by side on
core with no import loops, light Dagster definitions, and runs that report truthfully (one-line failures,
runs on the project's instance, killed runs marked failed, no dbt leftovers)."""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from quantflow.compute.stage import RunWindow, StageResult
from quantflow.metadata import get_metadata_manager
from quantflow.pipeline import create_runner
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata
from quantflow.pipeline.dagster.metadata import stage_metadata
from quantflow.pipeline.instance import PROCESS_TAG, fail_abandoned_runs, process_tag
from quantflow.pipeline.stages import STAGE_GROUPS
from quantflow.storage.writes import WriteResult
from tests.conftest import REPO_ROOT, write_project

PACKAGE = REPO_ROOT / "quantflow"
CORE = {"metadata", "storage", "compute"}
HEAVY = ("numba", "ray", "torch", "vectorbt")
DATA_LIBRARIES = ("polars", "duckdb", "pyarrow")  # loaded when a stage runs, not to declare its assets


def test_every_registered_stage_is_a_package_with_the_one_runner_signature():
    for group in STAGE_GROUPS:
        runner = importlib.import_module(f"quantflow.{group.stage_package}.runner")
        params = inspect.signature(runner.run).parameters
        names = list(params)
        assert names[:2] == ["md", "window"], (group.name, names)
        assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY and params["progress"].default is None
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[2:]), group.name
        assert issubclass(group.config_class, dg.Config)


def test_dagster_groups_and_jobs_are_the_registry():
    defs = build_defs_from_metadata(get_metadata_manager(REPO_ROOT).load_all())
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == {g.name for g in STAGE_GROUPS}
    assert {j.name for j in defs.jobs} == {"quantflow_pipeline", *(g.job_name for g in STAGE_GROUPS)}
    # the dbt tests are checks, but not blocking ones: skipped tests must not warn downstream
    checks = [s for a in defs.assets if isinstance(a, dg.AssetsDefinition) for s in a.check_specs]
    dbt_checks = [c for c in checks if graph.get(c.asset_key).group_name == "transform"]
    assert len(dbt_checks) == 48 and not any(c.blocking for c in dbt_checks)


def _imports(path: Path, prefix: str = "quantflow") -> set[str]:
    """Every module under ``prefix`` a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == prefix:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == prefix)
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_stages_import_only_core_and_never_dagster():
    for group in STAGE_GROUPS:
        for path in (PACKAGE / group.stage_package).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[1]
                assert top in CORE or top == group.stage_package, f"{path.relative_to(REPO_ROOT)} imports {name}"
            assert not _imports(path, "dagster") and not _imports(path, "dagster_dbt"), path
    for path in [p for c in CORE for p in (PACKAGE / c).rglob("*.py")]:
        for name in _imports(path):
            assert name.split(".")[1] in CORE, f"core module {path.relative_to(REPO_ROOT)} imports {name}"


def test_the_package_has_no_import_loops():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges = {m: {n for n in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            loop = path[path.index(node):] + [node]
            # a package importing its own submodule, or the reverse, is not a loop of code
            if not all(a.startswith(b) or b.startswith(a) for a, b in zip(loop, loop[1:])):
                raise AssertionError(" -> ".join(loop))
            return
        if node in done:
            return
        for nxt in edges[node]:
            visit(nxt, [*path, node])
        done.add(node)

    for module in modules:
        visit(module, [])


def test_importing_the_definitions_is_light(sample_project_copy):
    code = ("import json, sys, time; t = time.perf_counter(); import quantflow.pipeline.dagster.auto; "
            "print(json.dumps({'seconds': time.perf_counter() - t, 'modules': sorted(sys.modules)}))")
    env = {**os.environ, "DAGSTER_HOME": str(sample_project_copy / ".temp")}
    subprocess.run([sys.executable, "-c", code], cwd=sample_project_copy, env=env, check=True,
                   capture_output=True)  # the first load parses the dbt manifest
    proc = subprocess.run([sys.executable, "-c", code], cwd=sample_project_copy, env=env, check=True,
                          capture_output=True, text=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = {m.split(".")[0] for m in out["modules"]}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert not loaded & set(DATA_LIBRARIES), loaded & set(DATA_LIBRARIES)
    print(f"definitions load: {out['seconds']:.2f}s")


def test_stage_metadata_comes_from_the_result_object():
    window = RunWindow(dt.date(2024, 1, 2), dt.date(2024, 1, 3), ("AAA",))
    result = StageResult("x", window, seconds=1.23456)
    result.record_write("t", WriteResult("t", rows_written=7, days_written=2, days_skipped=1), "/lake/t")
    result.artifacts["summary_url"] = "/blobs/data_extractor_1.json"
    meta = stage_metadata(result, ["t"])
    assert meta["rows_written/t"].value == 7 and meta["days_written/t"].value == 2
    assert meta["days_skipped/t"].value == 1 and meta["location/t"].value == "/lake/t"
    assert meta["summary_url"].value == "/blobs/data_extractor_1.json" and meta["seconds"].value == 1.235
    assert (meta["start_date"], meta["symbols"], meta["write_mode"]) == ("2024-01-02", "AAA", "skip_if_exists")


def test_notebook_runs_land_on_the_project_instance(small_project, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", "placeholder-to-restore")
    monkeypatch.delenv("DAGSTER_HOME")
    runner = create_runner(small_project)
    result = runner.run(stage="ingest", start_date="2024-01-02", end_date="2024-01-02", symbols=["AAA"])
    assert result.success, result.error
    assert Path(runner.instance().root_directory) == small_project.resolve() / ".temp"
    with dg.DagsterInstance.from_config(str(small_project / ".temp")) as instance:  # as `make dev` opens it
        assert instance.get_run_by_id(result.run_id).job_name == "quantflow_ingest"
    # a second project in the same notebook keeps its runs with itself, not with the first project
    other = write_project(small_project.parent / "other")
    second = create_runner(other)
    result = second.run(stage="ingest", start_date="2024-01-02", end_date="2024-01-02", symbols=["AAA"])
    assert result.success, result.error
    assert Path(second.instance().root_directory) == other.resolve() / ".temp"
    assert "DAGSTER_HOME" not in os.environ


def test_a_failed_stage_says_stage_asset_shard_and_cause_in_one_line(tmp_path):
    from tests.state_engine.test_runner import END, START, make_project

    root = make_project(tmp_path / "p")
    bad = root / ".quantflow" / "lake" / "cdm_trades" / "symbol=BBB" / "day=2024-03-06" / "data.parquet"
    bad.write_bytes(b"not parquet")
    runner = create_runner(root, instance=dg.DagsterInstance.ephemeral())
    result = runner.run(stage="state_engine", start_date=START, end_date=END)
    assert not result.success
    error = result.error
    assert "\n" not in error
    # the bad day, and the 3 after it whose trailing-day thresholds need it; the earliest is named
    assert error.startswith("stage state_engine, asset state_engine_full: 4 of 20 state-engine shards failed")
    assert "; shard BBB 2024-03-06: ComputeError: parquet: File out of specification" in error, error
    assert error.endswith("(and 3 more)")
    assert f"error: {error}" in result.summary()


def test_a_feed_error_names_feed_symbol_and_file(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - {name: eod, kind: csv, params: {path: data}}
        """)
    (tmp_path / "data").mkdir()
    result = create_runner(root, instance=dg.DagsterInstance.ephemeral()).run(
        stage="ingest", start_date="2024-01-02", end_date="2024-01-03")
    assert not result.success
    assert result.error == (f"stage ingest, asset raw_eod: feed 'eod', symbol AAA: no file for this symbol: "
                            f"expected {tmp_path / 'data' / 'AAA.csv'}")


def test_a_locked_warehouse_is_named_as_the_cause(tmp_path):
    from tests.transform.raw_data import fill_lake, make_project

    md = make_project(tmp_path / "proj")
    fill_lake(md)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(120)", str(md.project_dir /
                               ".quantflow" / "warehouse.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = create_runner(md, instance=dg.DagsterInstance.ephemeral()).run(
            stage="transform", start_date="2024-01-02", end_date="2024-01-04")
    finally:
        holder.kill()
    assert not result.success
    assert result.error.startswith("stage transform, asset dbt_cdm: IOException: IO Error: Could not set lock on file")
    assert f"(PID {holder.pid})" in result.error and "\n" not in result.error


def test_runs_whose_process_died_are_marked_failed(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = instance.add_run(dg.DagsterRun(job_name="quantflow_ingest", run_id="a" * 36,
                                               status=dg.DagsterRunStatus.STARTED,
                                               tags={PROCESS_TAG: process_tag(dead.pid)}))
        alive = instance.add_run(dg.DagsterRun(job_name="quantflow_ingest", run_id="b" * 36,
                                               status=dg.DagsterRunStatus.STARTED,
                                               tags={PROCESS_TAG: process_tag()}))
        elsewhere = instance.add_run(dg.DagsterRun(job_name="quantflow_ingest", run_id="c" * 36,
                                                   status=dg.DagsterRunStatus.STARTED,
                                                   tags={PROCESS_TAG: f"other-host:{dead.pid}:1"}))
        assert fail_abandoned_runs(instance) == [stale.run_id]
        assert instance.get_run_by_id(stale.run_id).status == dg.DagsterRunStatus.FAILURE
        for run in (alive, elsewhere):
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


@pytest.fixture(autouse=True)
def _quiet_ray():
    yield
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
