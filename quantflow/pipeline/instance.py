"""The project's Dagster instance: where it lives, and runs whose process was killed.

``project_instance`` is what every interface of a project uses (the batch runner, ``qf run``, notebooks):
``DAGSTER_HOME``, by default ``<project>/.temp``, so their runs show in the UI (``make dev``).

A run killed with its process (``kill -9``, a closed notebook) stays ``STARTED`` in the instance forever.
So a run records the process executing it (tag ``quantflow/process``: host, pid and the process's start
time, which tells a reused pid apart), and ``fail_abandoned_runs`` marks failed every started run of this
host whose process is gone. It runs when the project runs again: when a ``BatchPipelineRunner`` opens the
instance, and when any stage asset starts (the UI, the daemon, ``dagster job execute``). A step running in
a child process (the multiprocess executor) records its parent, the process that coordinates the run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

PROCESS_TAG = "quantflow/process"
INSTANCE_YAML = """\
# Dagster instance of this project: SQLite storage under this folder (production: docker/dagster.yaml).
telemetry:
  enabled: false
"""


def dagster_home(root: Path) -> Path:
    """The project's instance folder: ``DAGSTER_HOME``, or ``<root>/.temp`` when it is unset; created with an
    explicit instance config (telemetry off) when it has none."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path(root).resolve() / ".temp")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return home


def ensure_dagster_home(root: Path) -> Path:
    """``dagster_home(root)``, also set as ``DAGSTER_HOME`` when unset: for the processes that load the code
    (``qf run``, the code ``dagster dev`` and ``dagster job execute`` load), whose project is fixed."""
    home = dagster_home(root)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    return home


def project_instance(root: Path):
    """The project's instance, opened from its folder: a notebook with two projects keeps each one's runs
    with that project (nothing process-wide is set). Opening it creates and migrates its SQLite storage on
    first use; two runs starting together on a new project would race on that (a UNIQUE constraint on
    alembic's version table), so they open it one at a time."""
    import dagster as dg

    from quantflow.storage.locks import exclusive

    home = dagster_home(root)
    with exclusive(home / ".instance.lock", f"the Dagster instance {home}", timeout_s=300):
        instance = dg.DagsterInstance.from_config(str(home))
        instance.get_runs(limit=1)  # touches the run storage, so its tables exist before the lock is released
    return instance


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tag(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def _alive(tag: str) -> bool | None:
    """Whether the process a tag names still runs; None when it ran on another host."""
    host, _, rest = tag.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or _start_time(pid) == started


def tag_run_process(instance, run) -> None:
    """Record on ``run`` the process coordinating it: this one for an in-process run (``qf run``, notebooks),
    the parent of this step process under the multiprocess executor (``dagster job execute``, a UI run
    worker), whose death leaves the run abandoned."""
    if PROCESS_TAG in run.tags:
        return
    coordinator = os.getppid() if multiprocessing.parent_process() is not None else os.getpid()
    instance.add_run_tags(run.run_id, {PROCESS_TAG: process_tag(coordinator)})


def fail_abandoned_runs(instance) -> list[str]:
    """Mark failed the started runs of this host whose process is gone; returns their run ids."""
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    failed = []
    for run in runs:
        tag = run.tags.get(PROCESS_TAG)
        if not tag or _alive(tag) is not False:
            continue
        pid = tag.split(":")[1]
        instance.report_run_failed(run, f"The process that ran this run (pid {pid}) ended without finishing it "
                                        "(killed?); QuantFlow marked the run failed.")
        log.warning("marked run %s (%s) failed: its process %s is gone", run.run_id, run.job_name, pid)
        failed.append(run.run_id)
    return failed
