"""``get_metadata_manager(project_root).load_all()``: the one way every interface loads a project."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from quantflow.metadata.loader import (
    MetadataError,
    MetadataIssue,
    did_you_mean,
    line_of,
    parse_yaml,
    redact_text,
    redactable,
    unknown_keys,
    validate,
)
from quantflow.metadata.schema import LocalConnections, LocalFile, ProjectConfig, ProjectFile

log = logging.getLogger(__name__)

METADATA_DIR = "project_metadata"
PROJECT_FILE = "project.yaml"
LOCAL_FILE = "local.yaml"


@dataclass(frozen=True)
class ProjectMetadata:
    """The validated project: what to research (``project``) and where things live on this machine."""

    project_dir: Path
    project: ProjectConfig
    local: LocalConnections
    # every value that came from the environment (or is a secret of local.yaml) -> what to show instead
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.project.name

    @property
    def symbols(self) -> list[str]:
        return list(self.project.symbols)

    @property
    def engine(self) -> str:
        return self.project.data_processing.historical_data_engine

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by its ``${VAR}`` reference (or ``***``): for anything that
        is printed, logged or stored."""
        return redact_text(text, dict(self.secrets))


class MetadataManager:
    def __init__(self, project_root: str | Path = ".", strict: bool = False):
        self.project_dir = Path(project_root).resolve()
        self.strict = strict
        self.metadata_dir = self.project_dir / METADATA_DIR

    def validate(self) -> list[MetadataIssue]:
        """Every problem found in the metadata files (empty when valid)."""
        try:
            self.load_all()
        except MetadataError as exc:
            return exc.issues
        return []

    def load_all(self) -> ProjectMetadata:
        project_path = self.metadata_dir / PROJECT_FILE
        if not project_path.exists():
            raise MetadataError([MetadataIssue(str(project_path), None, "", "file not found: a project needs "
                                               f"{METADATA_DIR}/{PROJECT_FILE} (run from the project directory)")])
        parsed_project = parse_yaml(project_path, interpolate_env=True)
        project_file = validate(parsed_project, ProjectFile, self.strict)
        issues = list(parsed_project.issues)
        if project_file is not None:
            for loc, message in project_file.project.consistency_issues():
                issues.append(MetadataIssue(str(project_path), line_of(parsed_project.data, loc),
                                            ".".join(map(str, loc)), message))

        local = LocalConnections()
        secrets = redactable(parsed_project.env_values)
        local_path = self.metadata_dir / LOCAL_FILE
        if local_path.exists():
            parsed_local = parse_yaml(local_path, interpolate_env=True)
            parsed_local.echo_values = False
            # always strict: a mistyped connection key (``pasword:``) must not pass silently
            local_file = validate(parsed_local, LocalFile, strict=True)
            issues.extend(parsed_local.issues)
            secrets.update(redactable(parsed_local.env_values))
            if local_file is not None:
                local = local_file.local
                secrets.update({v: "***" for v in _secret_values(local) if v not in secrets})
        if issues:
            raise MetadataError(issues)
        if not self.strict:
            for loc in unknown_keys(project_file, ()):
                log.warning("%s:%s: unknown key %s ignored%s", project_path, line_of(parsed_project.data, loc),
                            ".".join(map(str, loc)), did_you_mean(project_file, loc))
        return ProjectMetadata(self.project_dir, project_file.project, local, secrets)


def _secret_values(local: LocalConnections) -> list[str]:
    found = [local.postgres.password, local.s3.key, local.s3.secret]
    return [s.get_secret_value() for s in found if isinstance(s, SecretStr) and s.get_secret_value()]


def get_metadata_manager(project_root: str | Path = ".", strict: bool = False) -> MetadataManager:
    return MetadataManager(project_root, strict)
