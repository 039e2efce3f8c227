"""Shared fixtures: throwaway projects built from the sample metadata, and the shared market data."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from quantflow.compute.stage import RunWindow

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SMALL_PROJECT_YAML = """\
project:
  name: test_project
  symbols: [AAA, BBB]
  ingest:
    feeds:
      - name: sample
        kind: synthetic
        params:
          seed: 11
          trades_per_day: 400
          quotes_per_trade: 2
  data_processing:
    historical_data_engine: duckdb
"""


def window(md, start, end, symbols=None, write_mode: str = "skip_if_exists") -> RunWindow:
    """The run window of a test: ``start`` .. ``end`` for ``symbols`` (default: the project's)."""
    return RunWindow.resolve(md.symbols, start, end, symbols, write_mode)


def write_project(root: Path, project_yaml: str = SMALL_PROJECT_YAML, local_yaml: str | None = None) -> Path:
    meta = root / "project_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "project.yaml").write_text(textwrap.dedent(project_yaml))
    if local_yaml is not None:
        (meta / "local.yaml").write_text(textwrap.dedent(local_yaml))
    return root


def parquet_codecs(folder: Path) -> set[str]:
    """The compression codecs of every column chunk of the Parquet files under ``folder`` (pyarrow's names)."""
    import pyarrow.parquet as pq

    metas = [pq.read_metadata(f) for f in folder.rglob("*.parquet")]
    return {m.row_group(0).column(c).compression for m in metas for c in range(m.num_columns)}


def metadata_issues(root: Path, project_yaml: str) -> list:
    """The issues ``load_all`` raises for a project file (it must raise)."""
    from quantflow.metadata import MetadataError, get_metadata_manager

    with pytest.raises(MetadataError) as excinfo:
        get_metadata_manager(write_project(root, project_yaml)).load_all()
    return excinfo.value.issues


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    """A two-symbol synthetic project in a temp dir (its own lake, warehouse and dbt project)."""
    return write_project(tmp_path / "proj")


@pytest.fixture
def sample_project_copy(tmp_path: Path) -> Path:
    """A copy of the repository's bundled sample project (metadata + dbt project) in a temp dir."""
    dest = tmp_path / "sample"
    shutil.copytree(REPO_ROOT / "project_metadata", dest / "project_metadata")
    shutil.copytree(REPO_ROOT / "dbt_project", dest / "dbt_project",
                    ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml"))
    return dest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data not found at {SHARED_DATA}")
    return SHARED_DATA
