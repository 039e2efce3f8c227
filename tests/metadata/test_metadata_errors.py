"""Bad metadata gives errors naming the file, the line and the field path; good metadata loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quantflow.metadata import MetadataError, get_metadata_manager
from tests.conftest import REPO_ROOT, write_project


def _issues(root, strict=False):
    with pytest.raises(MetadataError) as excinfo:
        get_metadata_manager(root, strict=strict).load_all()
    return excinfo.value.issues


def test_bundled_sample_project_is_valid_in_strict_mode():
    md = get_metadata_manager(REPO_ROOT, strict=True).load_all()
    assert md.name == "sample_research"
    assert [f.name for f in md.project.ingest.enabled_feeds] == ["sample"]
    assert md.engine == "duckdb"


def test_unknown_feed_kind_names_file_line_and_field(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - name: ok
                kind: synthetic
              - name: broken
                kind: bloomberg
        """)
    [issue] = _issues(root)
    assert issue.file.endswith("project_metadata/project.yaml")
    assert issue.field == "project.ingest.feeds.1.kind"
    assert issue.line == 9
    assert "bloomberg" in issue.message and "synthetic" in issue.message


def test_wrong_type_names_line_and_field(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - name: sim
                kind: synthetic
                params:
                  trades_per_day: lots
        """)
    [issue] = _issues(root)
    assert issue.field == "project.ingest.feeds.0.params.trades_per_day"
    assert issue.line == 9
    assert "integer" in issue.message and "'lots'" in issue.message


def test_missing_field_points_at_the_parent(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - name: files
                kind: csv
                params:
                  bad_rows: drop
        """)
    [issue] = _issues(root)
    assert issue.field == "project.ingest.feeds.0.params.path"
    assert issue.line == 8  # the `params:` mapping that lacks it
    assert "missing" in issue.message


def test_bad_yaml_reports_the_line(tmp_path):
    root = write_project(tmp_path, "project:\n  name: p\n  symbols: [AAA\n  ingest: {}\n")
    [issue] = _issues(root)
    assert "invalid YAML" in issue.message
    assert issue.line in (3, 4)


def test_several_errors_are_reported_together(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: Bad-Name
          symbols: [aapl]
          data_processing:
            historical_data_engine: oracle
        """)
    issues = _issues(root)
    fields = {i.field for i in issues}
    assert fields == {"project.name", "project.symbols", "project.data_processing.historical_data_engine"}
    assert {i.line for i in issues} == {2, 3, 5}
    assert all(i.file.endswith("project.yaml") for i in issues)


def test_strict_mode_rejects_unknown_keys_lenient_mode_accepts(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - name: sim
                kind: synthetic
                params:
                  sed: 3
        """)
    assert get_metadata_manager(root).load_all().symbols == ["AAA"]
    [issue] = _issues(root, strict=True)
    assert issue.field == "project.ingest.feeds.0.params.sed"
    assert issue.line == 9
    assert "unknown key" in issue.message


def test_local_yaml_reads_secrets_from_environment(tmp_path, monkeypatch):
    root = write_project(tmp_path, local_yaml="""\
        local:
          postgres:
            host: db.internal
            password: ${QF_TEST_PG_PASSWORD}
            user: ${QF_TEST_PG_USER:-analyst}
        """, project_yaml="project:\n  name: p\n  symbols: [AAA]\n")
    monkeypatch.setenv("QF_TEST_PG_PASSWORD", "s3cret")
    md = get_metadata_manager(root).load_all()
    assert md.local.postgres.password.get_secret_value() == "s3cret"
    assert md.local.postgres.user == "analyst"
    monkeypatch.delenv("QF_TEST_PG_PASSWORD")
    [issue] = _issues(root)
    assert issue.file.endswith("local.yaml") and issue.line == 4
    assert issue.field == "local.postgres.password"
    assert "QF_TEST_PG_PASSWORD" in issue.message


def test_missing_project_file(tmp_path):
    [issue] = _issues(tmp_path)
    assert "project.yaml" in issue.file and "not found" in issue.message


def test_duplicate_feed_names(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - {name: a, kind: synthetic}
              - {name: a, kind: yfinance}
        """)
    [issue] = _issues(root)
    assert issue.field == "project.ingest.feeds" and "repeated: a" in issue.message and issue.line == 5


def test_qf_validate_prints_errors_and_exits_1(tmp_path):
    root = write_project(tmp_path, "project:\n  name: p\n  symbols: AAA\n")
    proc = subprocess.run([sys.executable, "-m", "quantflow.cli", "--project-dir", str(root), "validate"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "project.yaml:3: project.symbols:" in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "quantflow.cli", "--project-dir", str(REPO_ROOT), "validate",
                         "--strict"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "OK: project sample_research" in ok.stdout


def test_a_book_from_messages_needs_a_feed_that_has_them(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - {name: sim, kind: synthetic}
              - {name: lob, kind: lobster, enabled: false, params: {path: x}}
          state_engine:
            lob:
              interval: 1s
              source: messages
        """)
    [issue] = _issues(root)
    assert issue.field == "project.state_engine.lob.source" and issue.line == 11
    assert "no enabled feed produces them" in issue.message


def test_a_book_deeper_than_the_lobster_files_is_refused(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          ingest:
            feeds:
              - {name: lob, kind: lobster, params: {path: x, level: 5}}
          state_engine:
            lob: {interval: 1s, depth: 10, source: messages}
        """)
    [issue] = _issues(root)
    assert issue.field == "project.state_engine.lob.depth" and issue.line == 8
    assert "deeper than the level-5 files of feed 'lob'" in issue.message
    (root / "project_metadata" / "project.yaml").write_text(
        (root / "project_metadata" / "project.yaml").read_text().replace("depth: 10", "depth: 5"))
    assert get_metadata_manager(root).load_all().project.state_engine.lob.source == "messages"


SECRET = "pw-Zq81c-secret-value"


def test_a_value_from_the_environment_is_never_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("QF_TEST_DSN", f"postgresql://analyst:{SECRET}@db.internal:55432/quantflow")
    monkeypatch.setenv("QF_TEST_PORT", f"port-{SECRET}")
    root = write_project(tmp_path, "project:\n  name: p\n  symbols: ${QF_TEST_PORT}\n", local_yaml="""\
        local:
          postgres:
            port: ${QF_TEST_PORT}
        """)
    issues = _issues(root)
    assert {i.field for i in issues} == {"project.symbols", "local.postgres.port"}
    for issue in issues:
        assert SECRET not in str(issue) and "not shown" in issue.message, str(issue)
    proc = subprocess.run([sys.executable, "-m", "quantflow.cli", "--project-dir", str(root), "validate"],
                          capture_output=True, text=True, env={**__import__("os").environ})
    assert proc.returncode == 1 and SECRET not in proc.stdout + proc.stderr


def test_project_yaml_values_from_the_environment_stay_hidden_in_every_message(tmp_path, monkeypatch):
    """Validators that quote the value (a feed kind, a time zone, a symbol, a repeated feed name in lower
    case) must not show a value that came from the environment, in any letter case."""
    secret = "Zq81cTOPSECRETxx"
    monkeypatch.setenv("QF_S", secret)
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: ['${QF_S}']
          ingest:
            feeds:
              - {name: '${QF_S}', kind: synthetic}
              - {name: '${QF_S}', kind: synthetic}
              - {name: other, kind: '${QF_S}'}
          state_engine:
            timezone: '${QF_S}'
        """)
    issues = _issues(root)
    assert len(issues) >= 3
    for issue in issues:
        assert secret.lower() not in str(issue).lower(), str(issue)


def test_postgres_may_be_a_url_and_its_password_is_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("QF_TEST_DSN", f"postgresql://analyst:{SECRET}@db.internal:55432/research")
    root = write_project(tmp_path, "project:\n  name: p\n  symbols: [AAA]\n",
                         local_yaml="local:\n  postgres: ${QF_TEST_DSN}\n")
    md = get_metadata_manager(root).load_all()
    pg = md.local.postgres
    assert (pg.host, pg.port, pg.user, pg.dbname) == ("db.internal", 55432, "analyst", "research")
    assert pg.password.get_secret_value() == SECRET
    assert SECRET not in repr(md) and SECRET not in repr(pg)
    assert md.redact(f"could not connect with {SECRET}") == "could not connect with ***"
    assert md.redact(f"url postgresql://analyst:{SECRET}@db.internal:55432/research") == "url ${QF_TEST_DSN}"
    (root / "project_metadata" / "local.yaml").write_text("local:\n  postgres: mysql://u:p@h/db\n")
    [issue] = _issues(root)
    assert issue.field == "local.postgres" and "postgresql://" in issue.message and "u:p" not in str(issue)


def test_local_yaml_typos_are_errors_even_without_strict(tmp_path):
    root = write_project(tmp_path, "project:\n  name: p\n  symbols: [AAA]\n", local_yaml="""\
        local:
          postgres:
            host: db
            pasword: hunter2
        """)
    [issue] = _issues(root)
    assert issue.file.endswith("local.yaml") and issue.line == 4 and issue.field == "local.postgres.pasword"
    assert "did you mean 'password'?" in issue.message and "hunter2" not in str(issue)


def test_unknown_project_keys_warn_with_line_and_suggestion(tmp_path, caplog):
    root = write_project(tmp_path, "project:\n  name: p\n  symbols: [AAA]\n  symbol: [BBB]\n")
    with caplog.at_level("WARNING"):
        get_metadata_manager(root).load_all()
    [record] = caplog.records
    assert "project.yaml:4: unknown key project.symbol ignored; did you mean 'symbols'?" in record.getMessage()


def test_yaml_errors_stay_one_short_line_whatever_the_document_holds(tmp_path):
    big = "\n".join(f"    - {{name: feed{i}, kind: synthetic, params: {{seed: {i}}}}}" for i in range(200))
    root = write_project(tmp_path, f"project:\n  name: p\n  symbols: [AAA]\n  ingest:\n    feeds:\n{big}\n"
                                   "project:\n  name: q\n")
    [issue] = _issues(root)
    text = str(issue)
    assert "\n" not in text and len(text) < 250, text
    assert issue.line == 206 and "duplicate key 'project'" in issue.message and "line 1" in issue.message
    long_value = "x" * 5000
    root = write_project(tmp_path / "b", f"project:\n  name: p\n  symbols: [AAA]\n  storage: {{lake_root: [{long_value}]}}\n")
    [issue] = _issues(root)
    assert len(str(issue)) < 250, str(issue)
    root = write_project(tmp_path / "c", f"project:\n  name: p\n  symbols: [AAA]\n  {'k' * 1000}: 1\n")
    [issue] = _issues(root, strict=True)  # an unknown key of 1,000 characters
    assert len(str(issue)) < 250, str(issue)


def test_two_bar_types_writing_one_table_are_refused(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          state_engine:
            bars:
              - {type: time, every: 1m}
              - {type: time, every: 1m}
        """)
    [issue] = _issues(root)
    assert issue.field == "project.state_engine.bars" and issue.line == 5
    assert "cdm_time_1m_bars" in issue.message and "distinct 'name's" in issue.message


def test_bars_may_drop_incomplete_bars(tmp_path):
    from quantflow.state_engine.runner import engine_spec

    yaml = "project:\n  name: p\n  symbols: [AAA]\n  state_engine:\n    bars:\n      - {type: tick, threshold: 5, incomplete: %s}\n"
    md = get_metadata_manager(write_project(tmp_path / "ok", yaml % "drop")).load_all()
    assert engine_spec(md.project.state_engine).bars[0].incomplete == "drop"
    [issue] = _issues(write_project(tmp_path / "bad", yaml % "sometimes"))
    assert issue.field == "project.state_engine.bars.0.incomplete" and issue.line == 6


def test_calendar_bars_of_every_period_are_accepted(tmp_path):
    yaml = "project:\n  name: p\n  symbols: [AAA]\n  state_engine:\n    bars:\n" + "".join(
        f"      - {{type: time, every: {e}}}\n" for e in ("1w", "1mo", "1q", "1y"))
    md = get_metadata_manager(write_project(tmp_path, yaml)).load_all()
    assert [b.table for b in md.project.state_engine.bars if b.is_calendar] == [
        "cdm_time_1w_bars", "cdm_time_1mo_bars", "cdm_time_1q_bars", "cdm_time_1y_bars"]


def test_every_bar_type_from_metadata_and_its_misuse(tmp_path):
    from quantflow.state_engine.runner import engine_spec

    yaml = "project:\n  name: p\n  symbols: [AAA]\n  state_engine:\n    bars:\n" + "".join(f"      - {b}\n" for b in (
        "{type: dollar, expected_daily: 1.0e8, bars_per_day: 50, trailing_days: 20}",
        "{type: dollar_imbalance, expected_ticks: 200, imbalance_span: 5000}",
        "{type: tick_run, expected_ticks: 100, span: 10}",
        "{type: volume_run, expected_ticks: 100, min_expected_ticks: 20, max_expected_ticks: 400}",
    ))
    md = get_metadata_manager(write_project(tmp_path / "ok", yaml)).load_all()
    assert [b.table for b in md.project.state_engine.bars] == [
        "cdm_dollar_50perday_20d_bars", "cdm_dollar_imbalance_200_bars", "cdm_tick_run_100_bars",
        "cdm_volume_run_100_bars"]
    specs = engine_spec(md.project.state_engine).bars
    assert [b.key for b in specs] == [b.table for b in md.project.state_engine.bars]
    assert specs[0].trailing_days == 20 and specs[1].trade_span == 5000 and specs[2].trade_span == 1000
    bad = "project:\n  name: p\n  symbols: [AAA]\n  state_engine:\n    bars:\n      - %s\n"
    [issue] = _issues(write_project(tmp_path / "t", bad % "{type: dollar, threshold: 5, trailing_days: 20}"))
    assert issue.line == 6 and "'trailing_days' is for tick, volume and dollar bars" in issue.message
    [issue] = _issues(write_project(tmp_path / "r", bad % "{type: tick_run}"))
    assert issue.line == 6 and "tick_run bars need 'expected_ticks'" in issue.message


def test_the_lakes_codec_is_one_it_can_write(tmp_path):
    root = write_project(tmp_path, """\
        project:
          name: p
          symbols: [AAA]
          storage:
            compression: gzip
        """)
    [issue] = _issues(root)
    assert (issue.line, issue.field) == (5, "project.storage.compression")
    assert "'snappy', 'zstd', 'lz4' or 'uncompressed' (got 'gzip')" in issue.message
    assert get_metadata_manager(write_project(tmp_path / "ok", "project: {name: p, symbols: [AAA]}\n")).load_all() \
        .project.storage.compression == "snappy"
