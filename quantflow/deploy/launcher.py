"""The deployment's run launcher: dagster-docker's ``DockerRunLauncher`` (one container per run, from the
code location's image) plus what operating it needs:

- a run whose container dies says why in one line: killed for exceeding its memory limit (OOM, with the
  limit), or the exit code. Run monitoring asks ``check_run_worker_health`` about started runs, and adds
  ``get_run_worker_debug_info`` to the failure of a run that never started (``start_timeout_seconds``);
- the variables of ``env_vars`` that are not set where the daemon runs are left out (dagster-docker
  refuses to launch any run then), so one configuration serves deployments with and without S3, Ray or
  a Polygon key;
- a run may ask for its own memory limit with the tag ``quantflow/memory_limit`` (``"4g"``, ``"512m"``);
- containers of finished runs are removed when the next run launches (not ``auto_remove``, which would
  delete a dead container before monitoring could read why it died).
"""

from __future__ import annotations

import os

import docker
import docker.errors
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext

MEMORY_TAG = "quantflow/memory_limit"
RUN_LABEL = "dagster/run_id"


def _mib(limit_bytes: int | None) -> str:
    return f"{limit_bytes / 2**20:,.0f} MiB" if limit_bytes else "no limit"


def container_failure(container) -> str:
    """Why a stopped run container stopped, in one line."""
    state = container.attrs.get("State", {})
    limit = container.attrs.get("HostConfig", {}).get("Memory")
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return (f"the run's container {container.short_id} was killed for exceeding its memory limit "
                f"({_mib(limit)}; OOM kill, exit code {code}); give the run more with the tag "
                f"{MEMORY_TAG} or lower its load")
    error = f": {state['Error']}" if state.get("Error") else ""
    return f"the run's container {container.short_id} stopped ({container.status}) with exit code {code}{error}"


class QuantFlowDockerRunLauncher(DockerRunLauncher):
    def get_container_context(self, dagster_run) -> DockerContainerContext:
        context = super().get_container_context(dagster_run)
        context = context._replace(env_vars=[v for v in context.env_vars if "=" in v or v in os.environ])
        limit = dagster_run.tags.get(MEMORY_TAG)
        if limit:  # the run's own limit, without swap: the limit is the limit
            context = context.merge(DockerContainerContext(container_kwargs={"mem_limit": limit,
                                                                             "memswap_limit": limit}))
        return context

    def launch_run(self, context: LaunchRunContext) -> None:
        self._remove_finished_containers()
        super().launch_run(context)

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        if result.status != WorkerStatus.FAILED:
            return result
        container = self._get_container(run)
        return CheckRunHealthResult(WorkerStatus.FAILED, msg=container_failure(container) if container
                                    else result.msg)

    def get_run_worker_debug_info(self, run, include_container_logs: bool | None = True) -> str | None:
        container = self._get_container(run)
        if container is None or container.status == "running":
            return None
        return container_failure(container)

    def _remove_finished_containers(self) -> None:
        """Remove the stopped containers of runs the instance knows to be finished."""
        try:
            client = docker.client.from_env()
            stopped = client.containers.list(all=True, filters={"label": RUN_LABEL, "status": "exited"})
        except docker.errors.DockerException:
            return
        for container in stopped:
            run = self._instance.get_run_by_id(container.labels.get(RUN_LABEL, ""))
            if run is None or run.is_finished:
                try:
                    container.remove()
                except docker.errors.DockerException:
                    pass  # removed meanwhile by another launch
