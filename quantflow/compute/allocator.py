"""Polars' allocator settings, applied when QuantFlow is imported (``quantflow/__init__.py``).

Polars' allocator (jemalloc) hands freed pages back to the OS after 0.5 s. A stage frees and allocates
hundreds of MB within a second (read, kernels, encode), and every page handed back is faulted in again: on
the sample's state engine that was a third of its CPU time. Five seconds keeps them for the run and returns
them soon after. jemalloc reads the variable when polars loads, so it is set before anything imports polars;
a value already in the environment wins. Ray workers get it with their task (``executors``).
"""

import os

POLARS_ALLOCATOR_VAR = "_RJEM_MALLOC_CONF"
POLARS_ALLOCATOR_DEFAULT = "dirty_decay_ms:5000,muzzy_decay_ms:5000"


def configure() -> None:
    os.environ.setdefault(POLARS_ALLOCATOR_VAR, POLARS_ALLOCATOR_DEFAULT)


def worker_env() -> dict[str, str]:
    """The setting in force here, for a process started elsewhere (a Ray worker)."""
    return {POLARS_ALLOCATOR_VAR: os.environ[POLARS_ALLOCATOR_VAR]} if POLARS_ALLOCATOR_VAR in os.environ else {}
