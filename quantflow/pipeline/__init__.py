"""Orchestration: run configuration, Dagster definitions and the batch runner."""

from quantflow.pipeline.runner import BatchPipelineRunner, PipelineRunResult, create_runner

__all__ = ["BatchPipelineRunner", "PipelineRunResult", "create_runner"]
