"""The deployment files agree with each other (fast; the real deployment is tested in test_deployment.py)."""

from __future__ import annotations

import yaml

from quantflow.deploy.launcher import container_failure
from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def _env_refs(node) -> set[str]:
    """The ``{env: NAME}`` references of a Dagster config file."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node)) if node else set()
    return set()


def test_compose_gives_every_service_the_variables_the_instance_and_workspace_read():
    compose = yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())
    needed = _env_refs(yaml.safe_load((DOCKER / "dagster.yaml").read_text()))
    needed |= _env_refs(yaml.safe_load((DOCKER / "workspace.yaml").read_text()))
    assert needed >= {"DAGSTER_PG_PASSWORD", "QF_DOCKER_NETWORK", "QF_CODE_HOST"}
    services = compose["services"]
    for name in ("webserver", "daemon", "quantflow-user-code"):
        assert needed <= set(services[name]["environment"]), name
    assert services["quantflow-user-code"]["environment"]["DAGSTER_CURRENT_IMAGE"]
    # the network and volume run containers join are the ones compose creates
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    assert services["daemon"]["environment"]["QF_DOCKER_NETWORK"] == compose["networks"]["quantflow"]["name"]
    volume = instance["run_launcher"]["config"]["container_kwargs"]["volumes"][0].split(":")[0]
    assert volume == compose["volumes"]["quantflow_lake"]["name"]
    assert instance["run_launcher"]["module"] == "quantflow.deploy.launcher"


class _Container:
    short_id = "0123456789ab"
    status = "exited"

    def __init__(self, state, memory):
        self.attrs = {"State": state, "HostConfig": {"Memory": memory}}


def test_a_dead_container_says_why_in_one_line():
    oom = container_failure(_Container({"OOMKilled": True, "ExitCode": 137}, 512 * 2**20))
    assert oom.startswith("the run's container 0123456789ab was killed for exceeding its memory limit (512 MiB;")
    assert "quantflow/memory_limit" in oom and "\n" not in oom
    crashed = container_failure(_Container({"OOMKilled": False, "ExitCode": 3, "Error": ""}, 0))
    assert crashed == "the run's container 0123456789ab stopped (exited) with exit code 3"
