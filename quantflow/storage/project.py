"""Storage objects of a project: its lake, artifact store and warehouse path, from the metadata."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.artifacts import ArtifactStore
from quantflow.storage.filesystem import StorageOptions, Store, resolve_root

if TYPE_CHECKING:
    from quantflow.storage.lake import Lake


def storage_options(md: ProjectMetadata) -> StorageOptions:
    s3 = md.local.s3

    def secret(value) -> str | None:
        return value.get_secret_value() or None if value is not None else None

    return StorageOptions(endpoint_url=s3.endpoint_url or None, key=secret(s3.key), secret=secret(s3.secret),
                          region=s3.region or None)


def project_lake(md: ProjectMetadata) -> Lake:
    from quantflow.storage.lake import (
        Lake,  # polars: loaded by what reads or writes the lake, not by naming it
    )

    return Lake(Store(resolve_root(md.project.storage.lake_root, md.project_dir), storage_options(md)),
                md.project.storage.compression)


def project_artifacts(md: ProjectMetadata, folder: str | None = None) -> ArtifactStore:
    """The project's blob store, or one folder of it (``models/<name>``: a model's artifacts)."""
    root = resolve_root(md.project.storage.blob_root, md.project_dir)
    return ArtifactStore(Store(f"{root.rstrip('/')}/{folder}" if folder else root, storage_options(md)))


def warehouse_path(md: ProjectMetadata) -> Path:
    path = Path(md.project.storage.warehouse_path)
    return path if path.is_absolute() else (md.project_dir / path).resolve()
