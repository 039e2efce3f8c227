"""Ingest stage: feeds -> raw lake tables."""
