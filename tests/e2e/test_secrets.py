"""A secret planted in the environment never leaves it: not in any output (quiet or verbose, success or
failure), log, artifact, lake file, dbt file or the Dagster storage of the project."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_project
from tests.postgres_server import postgres_server  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow

PROJECT = """\
project:
  name: secret_test
  symbols: [AAA]
  ingest:
    feeds:
      - {name: sample, kind: synthetic, params: {trades_per_day: 300, quotes_per_trade: 2}}
  state_engine:
    executor: local
    bars: [{type: time, every: 5m}]
  data_processing:
    historical_data_engine: postgres
"""


def _qf(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantflow.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_planted_secret_never_leaves_the_environment(tmp_path, postgres_server):  # noqa: F811
    server = postgres_server
    server.create_database("qf_secret")
    root = write_project(tmp_path / "proj", PROJECT, local_yaml="local:\n  postgres: ${QF_TEST_PG_DSN}\n")
    base = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "QF_PROJECT_DIR")}
    base["DAGSTER_HOME"] = str(root / ".temp")
    dsn = f"postgresql://{server.user}:{{}}@{server.host}:{server.port}/qf_secret"
    outputs = []

    env = {**base, "QF_TEST_PG_DSN": dsn.format(server.password)}
    ok = _qf(root, env, "run", "--start", "2024-01-02", "--end", "2024-01-03", "--with-tests")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    verbose = _qf(root, env, "run", "-v", "--start", "2024-01-02", "--end", "2024-01-03",
                  "--write-mode", "overwrite")
    assert verbose.returncode == 0, verbose.stdout[-3000:] + verbose.stderr[-3000:]
    assert "dbt" in verbose.stdout  # the verbose run does show the details
    outputs += [ok, verbose]
    planted = [server.password]

    wrong = "wrong-" + secrets.token_hex(10)
    bad_env = {**base, "QF_TEST_PG_DSN": dsn.format(wrong)}
    failed = _qf(root, bad_env, "run", "--stage", "transform", "--start", "2024-01-02", "--end", "2024-01-03")
    assert failed.returncode == 1 and "password authentication failed" in failed.stdout, failed.stdout[-2000:]
    outputs.append(failed)
    planted.append(wrong)

    typo = _qf(root, {**bad_env, "QF_TEST_PG_DSN": f"postgresql://u:{wrong}@h:notaport/db"}, "validate")
    assert typo.returncode == 1 and "local.postgres" in typo.stderr
    outputs.append(typo)

    for secret in planted:
        for proc in outputs:
            assert secret not in proc.stdout + proc.stderr, proc.args
        assert _files_holding(root, secret) == []
