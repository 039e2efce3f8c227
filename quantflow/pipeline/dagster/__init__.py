"""Dagster interface: definitions built from project metadata."""
