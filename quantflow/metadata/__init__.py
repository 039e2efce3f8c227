"""Project metadata: the YAML description of a research project, validated by pydantic."""

from quantflow.metadata.loader import MetadataError, MetadataIssue
from quantflow.metadata.manager import MetadataManager, ProjectMetadata, get_metadata_manager

__all__ = ["MetadataError", "MetadataIssue", "MetadataManager", "ProjectMetadata", "get_metadata_manager"]
