"""QuantFlow."""

from quantflow.compute import allocator as _allocator

_allocator.configure()  # before anything imports polars: see quantflow/compute/allocator.py
