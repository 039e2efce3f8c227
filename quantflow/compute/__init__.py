"""Compute helpers: executors (local, Ray), sharding and date ranges."""
