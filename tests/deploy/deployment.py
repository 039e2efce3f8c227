"""A real QuantFlow deployment on this machine, as ``docker/`` describes it, for the deployment tests.

- ``docker_engine()``: Debian's ``docker.io`` installed when missing and ``dockerd`` started when not running.
- ``project_image()``: the project image built offline (``quantflow.deploy.image``: a debootstrapped base
  image and a local wheelhouse, both reused across runs; the dependency layer is cached by Docker).
- ``Deployment``: PostgreSQL (a real server on this machine, listening for containers, in place of compose's
  ``postgres`` service), a Docker network, and the services of ``docker/docker-compose.yaml`` (user-code gRPC
  server, webserver, daemon) started from their compose definitions (command, user, environment, volumes,
  network alias) with the production ``docker/dagster.yaml`` and ``docker/workspace.yaml``. Only what a test
  on one machine must change is changed: the PostgreSQL address and credentials, a network and lake folder
  per test, the webserver's port on 127.0.0.1, and faster run monitoring.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

IMAGE = "quantflow:test"
CONTAINER_PROJECT = "/opt/quantflow"
COMPOSE = yaml.safe_load((REPO_ROOT / "docker" / "docker-compose.yaml").read_text())
CODE_SERVICE = "quantflow-user-code"
SERVICES = (CODE_SERVICE, "webserver", "daemon")


def _sh(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def docker_engine() -> None:
    """A running Docker engine: installs Debian's docker.io and starts dockerd when needed."""
    if _sh(["docker", "info"]).returncode == 0:
        return
    if shutil.which("dockerd") is None:
        install = _sh(["apt-get", "install", "-y", "-q", "docker.io"], timeout=900)
        if install.returncode != 0:
            raise RuntimeError(f"apt-get install docker.io failed: {install.stderr[-1500:]}")
    log = open("/tmp/quantflow-dockerd.log", "a")  # noqa: SIM115  (the daemon outlives this call)
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while _sh(["docker", "info"]).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("dockerd did not start in 60 s; see /tmp/quantflow-dockerd.log")
        time.sleep(0.5)


def project_image(log=print) -> str:
    from quantflow.deploy.image import build

    if shutil.which("debootstrap") is None:
        install = _sh(["apt-get", "install", "-y", "-q", "debootstrap"], timeout=900)
        if install.returncode != 0:
            raise RuntimeError(f"apt-get install debootstrap failed: {install.stderr[-1500:]}")
    return build(REPO_ROOT, tag=IMAGE, offline=True, log=log)


LOCATIONS_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { loadStatus locationOrLoadError { __typename } } } } }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """See the module docstring. ``project_dir``: the project metadata the code location serves (mounted
    over the image's); ``lake_dir``: the shared lake volume."""

    def __init__(self, root: Path, postgres, project_metadata: Path):
        self.id = uuid.uuid4().hex[:8]
        self.root = root
        self.network = f"qf-test-{self.id}"
        self.home = root / "dagster_home"
        self.lake_dir = root / "lake"
        self.project_metadata = project_metadata
        self.postgres = postgres
        self.web_port = free_port()

    # ------------------------------------------------------------------ set up
    def start(self) -> Deployment:
        from quantflow.deploy.image import network_gateway

        self.home.mkdir(parents=True)
        self.lake_dir.mkdir(parents=True)
        os.chmod(self.lake_dir, 0o777)  # the image's non-root user writes the lake
        self.check(["docker", "network", "create", self.network])
        self.gateway = network_gateway(self.network)
        production = yaml.safe_load((REPO_ROOT / "docker" / "dagster.yaml").read_text())
        kwargs = production["run_launcher"]["config"]["container_kwargs"]
        kwargs["volumes"] = self.volumes()
        production["run_monitoring"].update(poll_interval_seconds=3, start_timeout_seconds=60)  # a run container starts in ~10 s here
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(production))
        shutil.copy(REPO_ROOT / "docker" / "workspace.yaml", self.home / "workspace.yaml")
        self.start_code_server()
        self.start_services()
        return self

    def volumes(self) -> list[str]:
        return [f"{self.lake_dir}:{CONTAINER_PROJECT}/.quantflow",
                f"{self.project_metadata}:{CONTAINER_PROJECT}/project_metadata:ro"]

    def env(self) -> dict[str, str]:
        """What the test changes of compose's environment: its PostgreSQL and its network."""
        pg = self.postgres
        return {"DAGSTER_PG_HOST": self.gateway, "DAGSTER_PG_PORT": str(pg.port), "DAGSTER_PG_USER": pg.user,
                "DAGSTER_PG_PASSWORD": pg.password, "DAGSTER_PG_DB": "dagster", "QF_DOCKER_NETWORK": self.network}

    def container(self, service: str) -> str:
        return f"qf-{service}-{self.id}"

    def run_service(self, service: str, publish: list[str] = ()) -> None:
        """``docker run`` of a compose service as compose would start it, with :meth:`env` over its values."""
        spec = COMPOSE["services"][service]
        env = {**{k: str(v) for k, v in spec.get("environment", {}).items()}, **self.env()}
        unresolved = [k for k, v in env.items() if "${" in v and k != "DAGSTER_CURRENT_IMAGE"]
        assert not unresolved, f"compose service {service}: {unresolved} left to the test to fill in"
        if "DAGSTER_CURRENT_IMAGE" in env:
            env["DAGSTER_CURRENT_IMAGE"] = IMAGE
        volumes = [v for v in spec.get("volumes", []) if not v.startswith("quantflow_lake:")]
        volumes += self.volumes() + [f"{self.home}:/opt/dagster/home"]
        cmd = ["docker", "run", "-d", "--name", self.container(service), "--network", self.network,
               "--network-alias", service, *(["--user", spec["user"]] if "user" in spec else []),
               *(arg for k, v in env.items() for arg in ("-e", f"{k}={v}")),
               *(arg for v in volumes for arg in ("-v", v)), *(arg for p in publish for arg in ("-p", p)),
               IMAGE, *spec.get("command", [])]
        self.check(cmd)

    def start_code_server(self) -> None:
        self.run_service(CODE_SERVICE)
        self.wait_for(lambda: "Started Dagster code server" in self.logs(self.container(CODE_SERVICE)), 180,
                      "the user-code server to start")

    def start_services(self) -> None:
        self.run_service("webserver", publish=[f"127.0.0.1:{self.web_port}:3000"])
        self.run_service("daemon")
        self.wait_for(self._webserver_up, 120, "the webserver to answer with the code location loaded")

    def services_running(self) -> bool:
        state = self.check(["docker", "inspect", "-f", "{{.State.Running}}",
                            *(self.container(s) for s in SERVICES)])
        return state.split() == ["true"] * len(SERVICES)

    def stop_services(self) -> None:
        for service in ("webserver", "daemon"):
            _sh(["docker", "stop", "-t", "30", self.container(service)], timeout=60)
            _sh(["docker", "rm", "-f", self.container(service)])

    def stop(self) -> None:
        self.stop_services()
        for container in _sh(["docker", "ps", "-aq", "--filter", f"network={self.network}"]).stdout.split():
            _sh(["docker", "rm", "-f", container])
        _sh(["docker", "rm", "-f", self.container(CODE_SERVICE)])
        _sh(["docker", "network", "rm", self.network])

    # ------------------------------------------------------------------ use
    def client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.web_port, timeout=60)

    def _webserver_up(self) -> bool:
        """The webserver answers and has loaded the code location (a run submitted before that fails)."""
        try:
            with socket.create_connection(("127.0.0.1", self.web_port), timeout=1):
                pass
            entries = self.client()._execute(LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
        except Exception:
            return False
        return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"]
                                     == "RepositoryLocation" for e in entries)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return self.client()._execute(query, variables)

    def wait_for(self, condition, timeout: float, what: str, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}\n{self.diagnostics()}")
            time.sleep(every)

    def wait_for_run(self, run_id: str, timeout: float = 300) -> str:
        from dagster import DagsterRunStatus

        finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
        return self.wait_for(lambda: (s := self.client().get_run_status(run_id)) in finished and s, timeout,
                             f"run {run_id} to finish", every=2).value

    def logs(self, container: str) -> str:
        out = _sh(["docker", "logs", container])
        return out.stdout + out.stderr

    def diagnostics(self) -> str:
        parts = []
        for service, lines in (("webserver", 25), ("daemon", 25), (CODE_SERVICE, 15)):
            parts.append(f"--- {service} (tail) ---\n"
                         + "\n".join(self.logs(self.container(service)).splitlines()[-lines:]))
        return "\n".join(parts)

    def sql(self, query: str, *args) -> list[tuple]:
        con = self.postgres.connect("dagster")
        try:
            with con.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall()
        finally:
            con.close()

    def events(self, run_id: str, event_type: str | None = None) -> list:
        """The run's stored event log entries (of ``event_type``, a ``DagsterEventType`` value)."""
        from dagster._serdes import deserialize_value

        query = "select event from event_logs where run_id = %s" + (" and dagster_event_type = %s" if event_type
                                                                      else "") + " order by id"
        return [deserialize_value(body) for (body,) in self.sql(query, run_id, *([event_type] if event_type else []))]

    @staticmethod
    def check(cmd: list[str]) -> str:
        out = _sh(cmd, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {out.stderr[-1500:]}")
        return out.stdout.strip()
