"""Ingest stage: feeds -> raw lake tables."""

NO_BAD_ROWS = "no_bad_rows"  # the asset check every feed's ingest reports
