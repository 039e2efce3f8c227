"""Orchestration: the stage registry, run configuration, Dagster definitions and the batch runner.

Names are imported on first use (``from quantflow.pipeline import create_runner``), so importing the
Dagster definitions does not also load the batch runner and its console.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"BatchPipelineRunner": "runner", "PipelineRunResult": "runner", "create_runner": "runner"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"quantflow.pipeline.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'quantflow.pipeline' has no attribute {name!r}")
