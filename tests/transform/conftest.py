"""Fixtures of the dbt stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantflow.metadata.manager import ProjectMetadata
from tests.postgres_server import postgres_server  # noqa: F401  (session fixture)
from tests.transform.raw_data import fill_lake, make_project


@pytest.fixture
def raw_project(tmp_path: Path) -> ProjectMetadata:
    """A DuckDB project (feed ``sample``, symbols AAA and BBB) whose lake holds the hand-made raw rows."""
    md = make_project(tmp_path / "proj")
    fill_lake(md)
    return md
