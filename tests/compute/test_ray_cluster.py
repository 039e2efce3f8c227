"""The state engine on a real two-node Ray cluster, run as a user runs it: `ray start --head` and a second node
joined with `ray start --address` on this machine, then `qf run --stage state_engine` with `RAY_ADDRESS`, on a
local lake and on an S3 lake (the S3-compatible test server). Its tables equal the in-process executor's, and
its tasks ran on both nodes."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from quantflow.metadata import get_metadata_manager
from quantflow.state_engine import runner
from quantflow.state_engine.tables import tick_tables
from quantflow.storage.project import project_lake
from quantflow.storage.schemas import spec_for_kind
from tests.conftest import window
from tests.state_engine.test_runner import END, START, make_project
from tests.storage.test_s3 import _free_port, s3_endpoint  # noqa: F401  (the S3 server fixture)

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _stop(process: subprocess.Popen) -> None:
    """`ray start --block` and everything it started share its process group: stop them all."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(check, what: str, logs: list[Path], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"the Ray cluster did not come up: no {what} after {timeout:.0f}s\n{tails}")


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one more node, one CPU each, with Ray's token authentication as a cluster has it: every
    process (nodes and the driver) gets ``RAY_AUTH_MODE=token`` and the same ``RAY_AUTH_TOKEN``."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    temp = Path(tempfile.mkdtemp(prefix="qfray", dir="/tmp"))  # Ray's socket paths must stay short
    head_log, node_log = temp / "head.log", temp / "node.log"
    started = []
    try:
        with head_log.open("w") as out:
            started.append(subprocess.Popen(
                [RAY, "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=1",
                 "--include-dashboard=false", f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

        def head_address() -> str | None:
            found = re.search(r"ray start --address='([^']+)'", re.sub(r"\x1b\[[0-9;]*m", "", head_log.read_text()))
            return found.group(1) if found else None

        address = _wait_for(head_address, "head address", [head_log])
        with node_log.open("w") as out:
            started.append(subprocess.Popen([RAY, "start", "--block", f"--address={address}", "--num-cpus=1"],
                                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

        def two_nodes() -> str | None:
            status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True,
                                    text=True).stdout
            active = status.split("Active:")[-1].split("Pending:")[0] if "Active:" in status else ""
            return "yes" if active.count("node_") == 2 else None

        _wait_for(two_nodes, "second node", [head_log, node_log])
        yield {**env, "RAY_ADDRESS": address}
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


def _cluster_project(root: Path, lake_root: str | None = None, s3: str | None = None) -> Path:
    """The state-engine test project (its CDM already in its lake) set to run on Ray."""
    make_project(root)
    meta = root / "project_metadata"
    text = (meta / "project.yaml").read_text().replace("executor: local", "executor: ray")
    if lake_root:
        text += f"  storage: {{lake_root: '{lake_root}'}}\n"
        (meta / "local.yaml").write_text(
            f"local:\n  s3: {{endpoint_url: '{s3}', key: test, secret: test, region: us-east-1}}\n")
    (meta / "project.yaml").write_text(text)
    return root


def _qf_run(project: Path, env: dict[str, str], ok: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "quantflow.cli", "--project-dir", str(project), "run", "--stage",
                           "state_engine", "--start", str(START), "--end", str(END), "--max-concurrency", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _in_process_tables(root: Path) -> dict:
    make_project(root)
    md = get_metadata_manager(root).load_all()
    runner.run(md, window(md, START, END), executor="local")
    return _tables(root)


def _tables(root: Path) -> dict:
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    tables = tick_tables(md.project.state_engine)
    return {t: lake.read(t).sort(list(runner.SORT_KEYS.get(t, ("symbol", "date", "ts_first")))) for t in tables}


def _assert_ran_on_the_cluster(output: str) -> None:
    assert "20 shards on ray (2 nodes), 6,000 trades" in output, output[-3000:]


def test_state_engine_on_a_two_node_cluster_with_a_local_lake(ray_cluster, tmp_path):
    expected = _in_process_tables(tmp_path / "in_process")
    project = _cluster_project(tmp_path / "cluster")
    _assert_ran_on_the_cluster(_qf_run(project, ray_cluster))
    got = _tables(project)
    for table, frame in expected.items():
        assert frame.height > 0, table
        assert_frame_equal(got[table], frame)


def test_state_engine_on_a_two_node_cluster_with_an_s3_lake(ray_cluster, s3_endpoint, tmp_path):  # noqa: F811
    expected = _in_process_tables(tmp_path / "in_process")
    project = _cluster_project(tmp_path / "cluster", "s3://research/cluster/lake", s3_endpoint)
    md = get_metadata_manager(project).load_all()
    s3_lake, local_lake = project_lake(md), project_lake(get_metadata_manager(tmp_path / "in_process").load_all())
    for table in ("cdm_trades", "cdm_quotes", "cdm_bars_daily"):  # the CDM, copied to S3
        s3_lake.write(spec_for_kind(table, table.removeprefix("cdm_")), local_lake.read(table))
    _assert_ran_on_the_cluster(_qf_run(project, ray_cluster))
    got = _tables(project)
    for table, frame in expected.items():
        assert_frame_equal(got[table], frame)


def test_a_run_without_the_clusters_token_fails_in_one_line_that_says_why(ray_cluster, tmp_path):
    project = _cluster_project(tmp_path / "cluster")
    output = _qf_run(project, {**ray_cluster, "RAY_AUTH_TOKEN": secrets.token_hex(32)}, ok=False)
    assert f"cannot connect to the Ray cluster at RAY_ADDRESS={ray_cluster['RAY_ADDRESS']}" in output, output
    assert "Authentication token is missing or incorrect" in output, output
    assert ray_cluster["RAY_AUTH_TOKEN"] not in output
