"""What ``dagster_workspace.yaml`` and ``dagster job execute -m`` load: the project in the working directory.

``QF_PROJECT_DIR`` points elsewhere. When unset, ``DAGSTER_HOME`` is set to ``<project>/.temp`` here, which
reaches instances created after this module loads (the batch runner, ``qf run``). ``dagster dev`` and
``dagster job execute`` create their instance before loading code, so they need ``DAGSTER_HOME`` in the
environment (the Makefile sets it) to keep runs with the project instead of in a throwaway temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

from quantflow.metadata import get_metadata_manager
from quantflow.pipeline.dagster.definitions import build_defs_from_metadata
from quantflow.pipeline.instance import ensure_dagster_home


def project_dir() -> Path:
    return Path(os.environ.get("QF_PROJECT_DIR") or os.getcwd()).resolve()


ensure_dagster_home(project_dir())
defs = build_defs_from_metadata(get_metadata_manager(project_dir()).load_all())
