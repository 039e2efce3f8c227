"""``DBTProjectGenerator``: a fresh project, regeneration when the metadata changes, ownership by header."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantflow.metadata import get_metadata_manager
from quantflow.transform.generator import DBTProjectGenerator, is_generated
from quantflow.transform.sources import cdm_tables
from tests.conftest import REPO_ROOT, write_project

TWO_FEEDS = """\
project:
  name: gen
  symbols: [AAA]
  ingest:
    feeds:
      - {name: ticks, kind: synthetic, params: {daily_bars: false}}
      - {name: eod, kind: csv, params: {path: data}}
      - {name: yahoo, kind: yfinance, enabled: false}
"""


def _md(root: Path, text: str):
    write_project(root, text)
    return get_metadata_manager(root).load_all()


def test_feed_kinds_per_feed_type(tmp_path):
    md = _md(tmp_path, """\
        project:
          name: kinds
          symbols: [AAA]
          ingest:
            feeds:
              - {name: syn, kind: synthetic}
              - {name: syn_ticks, kind: synthetic, params: {daily_bars: false}}
              - {name: files, kind: csv, params: {path: x}}
              - {name: book, kind: lobster, params: {path: y}}
              - {name: top, kind: lobster, params: {path: y, order_messages: false}}
              - {name: yahoo, kind: yfinance}
              - {name: poly, kind: polygon, params: {data: quotes}}
        """)
    kinds = {f.name: f.raw_kinds() for f in md.project.ingest.feeds}
    assert kinds == {"syn": ("trades", "quotes", "bars_daily"), "syn_ticks": ("trades", "quotes"),
                     "files": ("bars_daily",), "book": ("trades", "quotes", "messages"),
                     "top": ("trades", "quotes"), "yahoo": ("bars_daily",),
                     "poly": ("quotes",)}
    # the ingest feeds write exactly these tables
    feeds = pytest.importorskip("quantflow.ingest.feeds.base", reason="ingest feeds not importable")
    assert {f.name: tuple(feeds.build_feed(f, tmp_path).kinds) for f in md.project.ingest.feeds} == kinds


def test_fresh_project_has_sources_and_models_for_enabled_feeds(tmp_path):
    md = _md(tmp_path, TWO_FEEDS)
    written = DBTProjectGenerator(md).generate()
    dbt_dir = tmp_path / "dbt_project"
    rel = sorted(p.relative_to(dbt_dir).as_posix() for p in written)
    assert rel == sorted([
        ".gitignore", "dbt_project.yml", "profiles.yml", "macros/quantflow.sql", "macros/tests/generic_tests.sql",
        "models/sources.yml", "models/cdm/cdm_trades.sql", "models/cdm/cdm_trades.yml",
        "models/cdm/cdm_quotes.sql", "models/cdm/cdm_quotes.yml", "models/cdm/cdm_bars_daily.sql",
        "models/cdm/cdm_bars_daily.yml",
    ])
    assert all(is_generated(p) for p in written)
    sources = yaml.safe_load((dbt_dir / "models/sources.yml").read_text())["sources"]
    assert [s["name"] for s in sources] == ["raw"]
    tables = {t["name"]: t["config"]["meta"] for t in sources[0]["tables"]}
    assert tables == {
        "raw_ticks_trades": {"quantflow_feed": "ticks", "quantflow_kind": "trades"},
        "raw_ticks_quotes": {"quantflow_feed": "ticks", "quantflow_kind": "quotes"},
        "raw_eod_bars_daily": {"quantflow_feed": "eod", "quantflow_kind": "bars_daily"},
    }
    trades_sql = (dbt_dir / "models/cdm/cdm_trades.sql").read_text()
    assert "{{ source('raw', 'raw_ticks_trades') }}" in trades_sql
    assert "incremental_strategy='delete+insert'" in trades_sql and "unique_key=['symbol', 'date']" in trades_sql
    assert "source('raw', 'raw_eod" not in trades_sql
    profiles = yaml.safe_load((dbt_dir / "profiles.yml").read_text())["quantflow"]["outputs"]
    assert set(profiles) == {"duckdb", "postgres"}
    for setting in ("host", "port", "user", "password", "dbname", "schema"):
        assert "env_var('" in profiles["postgres"][setting] and "QF_PG_" in profiles["postgres"][setting], setting
    # no secret in a committed file; dbt scrubs the password variable (DBT_ENV_SECRET_*) from its logs
    assert "env_var('DBT_ENV_SECRET_QF_PG_PASSWORD'" in profiles["postgres"]["password"]
    assert "env_var('QF_WAREHOUSE_PATH'" in profiles["duckdb"]["path"]
    # a second run finds nothing to do
    gen = DBTProjectGenerator(md)
    assert gen.generate() == [] and gen.is_up_to_date()


def test_metadata_change_regenerates_and_removes_models_no_feed_produces(tmp_path):
    md = _md(tmp_path, TWO_FEEDS)
    DBTProjectGenerator(md).generate()
    dbt_dir = tmp_path / "dbt_project"
    user_model = dbt_dir / "models" / "my_signal.sql"
    user_model.write_text("select 1 as x\n")
    # enable yahoo as a second daily-bar feed, disable the tick feed
    md2 = _md(tmp_path, TWO_FEEDS.replace("kind: yfinance, enabled: false", "kind: yfinance")
              .replace("params: {daily_bars: false}}", "enabled: false}"))
    gen = DBTProjectGenerator(md2)
    written = {p.relative_to(dbt_dir).as_posix() for p in gen.generate()}
    assert written == {"models/sources.yml", "models/cdm/cdm_bars_daily.sql", "models/cdm/cdm_bars_daily.yml"}
    removed = {p.relative_to(dbt_dir).as_posix() for p in gen.removed}
    assert removed == {"models/cdm/cdm_trades.sql", "models/cdm/cdm_trades.yml", "models/cdm/cdm_quotes.sql",
                       "models/cdm/cdm_quotes.yml"}
    bars = (dbt_dir / "models/cdm/cdm_bars_daily.sql").read_text()
    assert "source('raw', 'raw_eod_bars_daily')" in bars and "source('raw', 'raw_yahoo_bars_daily')" in bars
    assert "preferred_feed" in bars  # two feeds: one feed per (symbol, date), metadata order
    assert user_model.read_text() == "select 1 as x\n"  # never QuantFlow's
    assert set(cdm_tables(md2)) == {"cdm_bars_daily"}


def test_removing_the_header_hands_the_file_to_the_user(tmp_path):
    md = _md(tmp_path, TWO_FEEDS)
    DBTProjectGenerator(md).generate()
    model = tmp_path / "dbt_project/models/cdm/cdm_trades.sql"
    owned = "\n".join(model.read_text().splitlines()[1:]) + "\n-- my change\n"
    model.write_text(owned)
    assert not is_generated(model)
    md2 = _md(tmp_path, TWO_FEEDS.replace("kind: yfinance, enabled: false", "kind: yfinance"))
    written = DBTProjectGenerator(md2).generate()
    assert model not in written and model.read_text() == owned
    # the user's file stays even when no enabled feed produces trades any more
    md3 = _md(tmp_path, TWO_FEEDS.replace("params: {daily_bars: false}}", "enabled: false}"))
    gen = DBTProjectGenerator(md3)
    gen.generate()
    assert model.exists() and model not in gen.removed
    # force takes the file back
    assert model in DBTProjectGenerator(md2).generate(force=True)
    assert is_generated(model)


def test_project_without_enabled_feeds_has_no_models(tmp_path):
    md = _md(tmp_path, """\
        project:
          name: nofeed
          symbols: [AAA]
          ingest:
            feeds:
              - {name: sample, kind: synthetic, enabled: false}
        """)
    gen = DBTProjectGenerator(md)
    assert not any(rel.startswith("models/cdm/") for rel in gen.render())
    assert yaml.safe_load(gen.render()["models/sources.yml"])["sources"][0]["tables"] == []


def test_committed_dbt_project_is_what_the_generator_writes_for_the_sample_metadata():
    md = get_metadata_manager(REPO_ROOT).load_all()
    gen = DBTProjectGenerator(md, REPO_ROOT / "dbt_project")
    for rel, content in gen.render().items():
        path = REPO_ROOT / "dbt_project" / rel
        assert path.exists(), f"{path} is missing: run `qf dbt generate` in the repository root"
        assert path.read_text() == content, f"{path} differs from the generator's output: run `qf dbt generate`"
    assert gen.stale_files() == []


def test_profiles_default_warehouse_follows_the_metadata(tmp_path):
    md = _md(tmp_path, TWO_FEEDS + "  storage: {warehouse_path: data/wh.duckdb}\n")
    profiles = DBTProjectGenerator(md).render()["profiles.yml"]
    assert "env_var('QF_WAREHOUSE_PATH', '../data/wh.duckdb')" in profiles
