"""fsspec access to storage roots: a local folder by default, ``s3://bucket/prefix`` in production.

Credentials for S3 come from the environment (``AWS_ACCESS_KEY_ID`` ...) or ``local.yaml``; an
``endpoint_url`` lets the same code talk to any S3-compatible server.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

LOCKS_DIR = "_locks"  # local lock files, beside the tables (readers never list the root itself)
STAGING_DIR = "_staging"  # local temp files before their rename: outside every table folder
RECORDS_DIR = "_records"  # what stages' last runs read and wrote (``run_records``): not a table
DELETE = object()  # returned by an update's change function: remove the object
CAS_ATTEMPTS = 50
SYNC_THREADS = 8  # fsync calls in flight at once: I/O waits, not CPU


class ConcurrentUpdateError(RuntimeError):
    """Other writers kept changing one object while this one tried to update it."""


def _precondition_failed(exc: Exception) -> bool:
    """S3 answers a failed If-Match / If-None-Match with 412 (409 while another conditional write is in
    flight); s3fs raises FileExistsError or OSError for them."""
    text = str(exc)
    return isinstance(exc, FileExistsError) or "pre-condition" in text or "PreconditionFailed" in text \
        or "ConditionalRequestConflict" in text


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: str | None = None
    key: str | None = field(default=None, repr=False)  # credentials never show in a repr or a log
    secret: str | None = field(default=None, repr=False)
    region: str | None = None

    def for_s3(self) -> dict:
        opts: dict = {}
        if self.key:
            opts["key"] = self.key
        if self.secret:
            opts["secret"] = self.secret
        client_kwargs = {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def resolve_root(root: str, project_dir: Path) -> str:
    """A relative local root is relative to the project directory; remote URLs pass through."""
    if is_remote(root):
        return root.rstrip("/")
    root = root.removeprefix("file://")
    path = Path(root)
    if not path.is_absolute():
        path = Path(project_dir) / path
    return str(path.resolve())


@dataclass
class Store:
    """A storage root plus its filesystem; paths handed out are absolute within that filesystem.

    A local root does its reads, writes and existence checks with ``os`` and creates its fsspec
    filesystem (``fs``) on first use only: a Ray worker running a shard on a local lake never imports
    fsspec (part of the per-worker warm-up). A remote root creates its filesystem at once.
    """

    root: str
    options: StorageOptions = field(default_factory=StorageOptions)
    # staging folders whose files ``sync_staged`` made durable: ``install`` skips their ``fsync``
    _synced: set[Path] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/") or "/"
        if is_remote(self.root):
            self._base = self.root.split("://", 1)[1]
            self.fs  # noqa: B018  (an unknown protocol or missing driver fails here, not on first use)
        else:
            self._base = self.root

    @cached_property
    def fs(self):
        """The fsspec filesystem of the root (``s3fs`` for ``s3://``, the local one otherwise)."""
        import fsspec

        if self.remote:
            protocol = self.root.split("://", 1)[0]
            # no listings cache: other processes write the same prefixes, and a cached listing never sees them
            options = {**self.options.for_s3(), "use_listings_cache": False} if protocol in ("s3", "s3a") else {}
            return fsspec.filesystem(protocol, **options)
        return fsspec.filesystem("file", auto_mkdir=True)

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def path(self, *parts: str) -> str:
        """Path inside the filesystem (no protocol), as fsspec calls expect it."""
        return "/".join([self._base, *[p.strip("/") for p in parts if p]])

    def url(self, path: str) -> str:
        """The user-facing URL of a path returned by :meth:`path`."""
        if self.remote:
            return f"{self.root.split('://', 1)[0]}://{path}"
        return path

    @contextlib.contextmanager
    def _staged(self, path: str, data: bytes) -> Iterator[tuple[Path, Path]]:
        """``data`` in a synced temp file of the root's staging folder (the same file system as ``path``, and
        outside every table folder, so readers never see it); yields (temp, target), removes the temp."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(self._base) / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            yield tmp, target
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def staging_folder(self) -> Iterator[Path]:
        """A new local folder in the staging area (the tables' file system, outside every table folder) for
        files another library writes before :meth:`install` moves them; removed with what is left in it."""
        import shutil

        folder = Path(self._base) / STAGING_DIR / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            self._synced.discard(folder)
            shutil.rmtree(folder, ignore_errors=True)

    def install(self, staged: Path, path: str) -> None:
        """Move a staged local file over ``path`` atomically, synced first (as :meth:`write_bytes_atomic`),
        unless :meth:`sync_staged` synced its folder."""
        if staged.parent.parent not in self._synced:
            fd = os.open(staged, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, path)

    def sync_staged(self, folder: Path) -> None:
        """Make every file staged in ``folder`` (``<folder>/<symbol>/<file>``) durable before any is moved in:
        their ``fsync`` calls side by side, so the file system commits them together (one after another,
        each waited for its own journal commit). Only these files: a ``syncfs`` would also wait for every
        other writer's data."""
        from concurrent.futures import ThreadPoolExecutor

        def sync(staged: Path) -> None:
            fd = os.open(staged, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
            list(pool.map(sync, folder.glob("*/*")))
        self._synced.add(folder)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Local: a staged file renamed over the target. S3: one PUT is atomic."""
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        with self._staged(path, data) as (tmp, target):
            os.replace(tmp, target)

    def create(self, path: str, data: bytes) -> bool:
        """Write ``data`` at ``path`` only if nothing is there (atomically: local ``link`` of a staged file,
        S3 ``If-None-Match: *``); False when the name is taken."""
        if self.remote:
            try:
                self.fs.pipe_file(path, data, IfNoneMatch="*")
                return True
            except FileExistsError:
                return False
        with self._staged(path, data) as (tmp, target):
            try:
                os.link(tmp, target)  # fails when the target exists: never replaces it
                return True
            except FileExistsError:
                return False

    def update(self, path: str, change: Callable[[bytes | None], bytes | object | None]) -> bool:
        """Read-modify-write of one object that loses no concurrent update.

        ``change(current)`` gets the stored bytes (None when there is no object) and returns the new bytes,
        ``DELETE``, or None to leave the object as it is (for a local root also the ``Path`` of a staged
        file, which :meth:`install` moves in); it may be called more than once. Local: the whole
        exchange holds an exclusive lock (``flock`` on a file under ``_locks/``, released if the process
        dies). S3: compare-and-swap, with no lock: the PUT is conditional on the ETag read (``If-Match``), or
        on there being no object (``If-None-Match: *``), and is retried when another writer got there
        first. Returns whether anything was written.
        """
        if not self.remote:
            with self.lock(path):
                current = Path(path).read_bytes() if os.path.exists(path) else None
                new = change(current)
                if new is None:
                    return False
                if new is DELETE:
                    if current is not None:
                        os.unlink(path)
                    return current is not None
                if isinstance(new, Path):
                    self.install(new, path)
                else:
                    self.write_bytes_atomic(path, new)
                return True
        for attempt in range(CAS_ATTEMPTS):
            try:
                etag = self.fs.info(path, refresh=True)["ETag"]
                current = self.fs.cat_file(path)  # may be newer than etag: then the If-Match below fails
            except FileNotFoundError:
                etag, current = None, None
            new = change(current)
            if new is None:
                return False
            try:
                if new is DELETE:
                    if current is None:
                        return False
                    self.fs.rm_file(path)  # S3 has no conditional DELETE on every server: last writer wins
                else:
                    self.fs.pipe_file(path, new, **({"IfMatch": etag} if etag else {"IfNoneMatch": "*"}))
                self.fs.invalidate_cache(path)
                return True
            except (OSError, FileExistsError) as exc:
                if not _precondition_failed(exc):
                    raise
                time.sleep(min(2.0, 0.02 * 2 ** min(attempt, 6)) * random.random())
        raise ConcurrentUpdateError(f"{self.url(path)}: still changed by other writers after {CAS_ATTEMPTS} tries")

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """An exclusive lock on one local path, across processes (a no-op guard for remote roots, which
        use compare-and-swap instead)."""
        if self.remote:
            yield
            return
        import fcntl

        rel = os.path.relpath(path, self._base)
        lock_path = Path(self._base) / LOCKS_DIR / f"{rel}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def signature(self, path: str) -> str:
        """What changes whenever the object is rewritten: size and modification time (local), ETag (S3)."""
        if not self.remote:
            st = os.stat(path)
            return f"{st.st_size}:{st.st_mtime_ns}"
        return str(self.fs.info(path)["ETag"])

    def exists(self, path: str) -> bool:
        if not self.remote:
            return os.path.exists(path)
        return self.fs.exists(path)

    def read_bytes(self, path: str) -> bytes:
        if not self.remote:
            return Path(path).read_bytes()
        return self.fs.cat_file(path)

    def ls(self, path: str) -> list[str]:
        try:
            if not self.remote:  # os, not fsspec: see the class docstring
                return sorted(os.path.join(path, name) for name in os.listdir(path))
            return sorted(self.fs.ls(path, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def modified_times(self, pattern: str) -> dict[str, float]:
        """The files matching ``pattern`` with their modification times (epoch seconds), in one listing."""
        if not self.remote:
            import glob

            times = {}
            for path in glob.glob(pattern):
                with contextlib.suppress(FileNotFoundError):  # replaced or dropped while listing
                    times[path] = os.stat(path).st_mtime
            return times
        found = self.fs.glob(pattern, detail=True)
        return {path: info["LastModified"].timestamp() for path, info in found.items() if "LastModified" in info}

    def glob(self, pattern: str) -> list[str]:
        if not self.remote:
            import glob

            return sorted(glob.glob(pattern))
        return sorted(self.fs.glob(pattern))
