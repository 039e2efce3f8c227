"""Build QuantFlow's Docker image (``docker/Dockerfile``), online or with no registry at all.

Online: ``docker build`` on ``python:3.11-slim`` with dependencies from PyPI (``qf image build``).
Offline (``qf image build --offline``), for machines that reach no image registry:

1. the base image is a minimal Debian made by ``debootstrap`` (python3, venv, CA certificates), imported
   with ``docker import`` as ``quantflow-base:<suite>``; made once and reused while it exists;
2. the dependencies come from a wheelhouse that ``pip download`` fills on this machine, resolved for the
   base image's Python (the CPU build of PyTorch and every other requirement, kept per ``pyproject.toml``
   content in ``~/.cache/quantflow``);
3. the build's containers reach the wheelhouse over HTTP on the Docker bridge, so no wheel is copied into
   an image layer. Always on the same port (``QF_WHEELHOUSE_PORT``): the URL is part of a build argument,
   and a new one would make Docker rebuild the dependency layer (minutes) for every code change.

Each build removes the project's images it left untagged (the previous build of the tag), so rebuilds do
not pile up gigabytes of dangling images.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_TAG = "quantflow:latest"
BASE_SUITE = "bookworm"  # Debian 12: Python 3.11, as the project requires
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
TORCH = "torch==2.13.0"  # the CPU build this machine's pip finds locally (see the Makefile)
CACHE_DIR = Path(os.environ.get("QF_CACHE_DIR") or Path.home() / ".cache" / "quantflow")
WHEELHOUSE_PORT = int(os.environ.get("QF_WHEELHOUSE_PORT") or 18_733)
IMAGE_LABEL = "org.quantflow.image"  # set on every build, so pruning touches only this project's images


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message names the step and the tool's last output lines."""


def _run(cmd: list[str], step: str, log: Callable[[str], None], **kwargs) -> subprocess.CompletedProcess:
    log(f"{step}: {' '.join(cmd[:4])}{' ...' if len(cmd) > 4 else ''}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ImageBuildError(f"{step} failed (exit {proc.returncode}):\n{tail}")
    return proc


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0


def base_image(suite: str = BASE_SUITE, mirror: str = DEBIAN_MIRROR, log: Callable[[str], None] = print) -> str:
    """``quantflow-base:<suite>``, made with debootstrap and ``docker import`` unless it exists already."""
    tag = f"quantflow-base:{suite}"
    if image_exists(tag):
        log(f"base image {tag}: present, reused")
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("the offline base image needs debootstrap (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="qf-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(rootfs),
              mirror], f"debootstrap {suite}", log, timeout=1800)
        for deb in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["docker", "import", "--change", 'CMD ["python3"]', "-", tag], "docker import", log,
                 stdin=tar.stdout, timeout=900)
        finally:
            tar.stdout.close()
            tar.wait()
    return tag


def image_python(image: str) -> tuple[str, str]:
    """(Python version, glibc version) of an image's ``python3``."""
    probe = "import platform; print(platform.python_version(), platform.libc_ver()[1])"
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python3", "-c", probe],
                         capture_output=True, text=True, check=True)
    python, glibc = out.stdout.split()
    return python, glibc


def wheelhouse(root: Path, python: str, glibc: str, log: Callable[[str], None] = print) -> Path:
    """A folder of wheels for every requirement of ``root/pyproject.toml`` (and pip's build tools), resolved
    for the image's Python and C library (Debian 12's Python is 3.11.2: some current releases need newer),
    made once per content of that file and target."""
    import platform
    import tomllib

    key = (root / "pyproject.toml").read_bytes() + f"{python}/{glibc}".encode()
    house = CACHE_DIR / f"wheelhouse-{hashlib.sha256(key).hexdigest()[:16]}"
    if (house / ".complete").exists():
        log(f"wheelhouse {house}: present, reused")
        return house
    requirements = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    major, minor = (int(x) for x in glibc.split(".")[:2])
    arch = platform.machine()
    platforms = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]
    partial = house.with_name(house.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    py_tag = "".join(python.split(".")[:2])
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), "--only-binary=:all:",
          "--python-version", python, "--implementation", "cp", "--abi", f"cp{py_tag}",
          *(arg for p in platforms for arg in ("--platform", p)),
          TORCH, "pip", "setuptools", "wheel", *requirements], "pip download", log, timeout=3600)
    (partial / ".complete").write_text("")
    shutil.rmtree(house, ignore_errors=True)
    partial.rename(house)
    return house


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge, which build containers reach."""
    return network_gateway("bridge")


def network_gateway(network: str) -> str:
    """The host's address on a Docker network: its gateway, else the subnet's first address (Docker's
    choice when it does not record one, as Debian's dockerd for the default bridge)."""
    import ipaddress

    out = subprocess.run(["docker", "network", "inspect", network], capture_output=True, text=True, check=True)
    config = json.loads(out.stdout)[0]["IPAM"]["Config"][0]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@contextlib.contextmanager
def serve_folder(folder: Path, host: str, port: int = 0, log: Callable[[str], None] = print) -> Iterator[str]:
    """``folder`` over HTTP on ``host``:``port`` (a free port when 0, or when ``port`` is taken) while the
    block runs; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if not port:
            raise
        log(f"wheelhouse: port {port} is taken ({exc.strerror}); serving on another, so Docker rebuilds the "
            f"dependency layer (set QF_WHEELHOUSE_PORT to a free port to keep it cached)")
        server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


def build(root: Path, tag: str = DEFAULT_TAG, offline: bool = False, base: str | None = None,
          log: Callable[[str], None] = print) -> str:
    """Build ``docker/Dockerfile`` from the repository ``root`` as ``tag``; returns the tag."""
    root = Path(root).resolve()
    args = ["docker", "build", "-f", str(root / "docker" / "Dockerfile"), "-t", tag, "--label", f"{IMAGE_LABEL}=1"]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: what Debian's docker.io has
    if offline:
        base = base or base_image(log=log)
    if base:
        args += ["--build-arg", f"BASE_IMAGE={base}"]
    if not offline:
        _run([*args, str(root)], f"docker build {tag}", log, env=env, timeout=3600)
    else:
        house = wheelhouse(root, *image_python(base), log=log)
        host = bridge_gateway()
        with serve_folder(house, host, WHEELHOUSE_PORT, log) as url:
            _run([*args, "--build-arg", f"PIP_OPTIONS=--no-index --find-links {url} --trusted-host {host}",
                  str(root)], f"docker build {tag}", log, env=env, timeout=3600)
    _run(["docker", "image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}"], "docker image prune", log)
    return tag
