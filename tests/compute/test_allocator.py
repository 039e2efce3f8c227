"""Polars' allocator keeps freed pages for a run: set when QuantFlow is imported, before polars loads."""

from __future__ import annotations

import os
import subprocess
import sys

from quantflow.compute import allocator
from quantflow.compute.executors import RayExecutor

PROBE = """
import os, quantflow
os.environ["_RJEM_MALLOC_CONF"] += ",stats_print:true"  # jemalloc prints its options at exit
import polars as pl
pl.DataFrame({"a": [1, 2]}).sum()
"""


def _jemalloc_options(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_importing_quantflow_sets_polars_allocator_decay():
    env = {k: v for k, v in os.environ.items() if k != allocator.POLARS_ALLOCATOR_VAR}
    out = _jemalloc_options(env)
    assert "opt.dirty_decay_ms: 5000" in out and "opt.muzzy_decay_ms: 5000" in out
    assert "opt.background_thread: true" in out  # polars' own options stay


def test_a_value_in_the_environment_wins():
    env = {**os.environ, allocator.POLARS_ALLOCATOR_VAR: "dirty_decay_ms:700"}
    assert "opt.dirty_decay_ms: 700" in _jemalloc_options(env)


def test_ray_workers_get_the_setting_in_force():
    assert RayExecutor(2).worker_env()[allocator.POLARS_ALLOCATOR_VAR] == os.environ[allocator.POLARS_ALLOCATOR_VAR]
