"""A real QuantFlow deployment on this machine, as ``docker/`` describes it, for the deployment tests.

- ``docker_engine()``: Debian's ``docker.io`` installed when missing and ``dockerd`` started when not running.
- ``project_image()``: the project image built offline (``quantflow.deploy.image``: a debootstrapped base
  image and a local wheelhouse, both reused across runs; the dependency layer is cached by Docker).
- ``Deployment``: PostgreSQL (a real server, listening for containers), a Docker network, the user-code
  gRPC server in a container of the image, and the Dagster webserver and daemon as processes on this
  machine with the production ``docker/dagster.yaml`` and ``docker/workspace.yaml``. Only what a test on one
  machine must change is changed: the lake volume is a folder here, and run monitoring polls faster.
"""

from __future__ import annotations

import contextlib
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
        self.code_container = f"qf-code-{self.id}"
        self.home = root / "dagster_home"
        self.lake_dir = root / "lake"
        self.project_metadata = project_metadata
        self.postgres = postgres
        self.web_port = free_port()
        self.code_port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}

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
        production["run_monitoring"].update(poll_interval_seconds=3, start_timeout_seconds=90)
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(production))
        shutil.copy(REPO_ROOT / "docker" / "workspace.yaml", self.home / "workspace.yaml")
        self.start_code_server()
        self.start_services()
        return self

    def volumes(self) -> list[str]:
        return [f"{self.lake_dir}:{CONTAINER_PROJECT}/.quantflow",
                f"{self.project_metadata}:{CONTAINER_PROJECT}/project_metadata:ro"]

    def env(self) -> dict[str, str]:
        pg = self.postgres
        return {"DAGSTER_PG_HOST": self.gateway, "DAGSTER_PG_PORT": str(pg.port), "DAGSTER_PG_USER": pg.user,
                "DAGSTER_PG_PASSWORD": pg.password, "DAGSTER_PG_DB": "dagster", "QF_DOCKER_NETWORK": self.network,
                "QF_CODE_HOST": "127.0.0.1", "QF_CODE_PORT": str(self.code_port)}

    def start_code_server(self) -> None:
        env = [arg for k, v in self.env().items() for arg in ("-e", f"{k}={v}")]
        volumes = [arg for v in self.volumes() for arg in ("-v", v)]
        self.check(["docker", "run", "-d", "--name", self.code_container, "--network", self.network,
                    "-p", f"127.0.0.1:{self.code_port}:4000", "-e", f"DAGSTER_CURRENT_IMAGE={IMAGE}", *env,
                    *volumes, IMAGE])
        self.wait_for(lambda: "Started Dagster code server" in self.logs(self.code_container), 180,
                      "the user-code server to start")

    def start_services(self) -> None:
        bin_dir = Path(os.sys.executable).parent
        env = {**os.environ, **self.env(), "DAGSTER_HOME": str(self.home)}
        workspace = str(self.home / "workspace.yaml")
        for name, cmd in {
            "webserver": [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.web_port),
                          "-w", workspace],
            "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
        }.items():
            log = open(self.root / f"{name}.log", "a")  # noqa: SIM115  (closed with the process)
            self.processes[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    cwd=self.root, start_new_session=True)
        self.wait_for(self._webserver_up, 120, "the webserver to answer")

    def stop_services(self) -> None:
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
        for proc in self.processes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        self.processes.clear()

    def stop(self) -> None:
        self.stop_services()
        for container in _sh(["docker", "ps", "-aq", "--filter", f"network={self.network}"]).stdout.split():
            _sh(["docker", "rm", "-f", container])
        _sh(["docker", "rm", "-f", self.code_container])
        _sh(["docker", "network", "rm", self.network])

    # ------------------------------------------------------------------ use
    def client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.web_port, timeout=60)

    def _webserver_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.web_port), timeout=1):
                pass
            self.client()._execute("{ version }")
            return True
        except Exception:
            return False

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
        for name in ("webserver", "daemon"):
            path = self.root / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name} log (tail) ---\n" + "\n".join(path.read_text().splitlines()[-25:]))
        parts.append("--- code server (tail) ---\n" + "\n".join(self.logs(self.code_container).splitlines()[-15:]))
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
