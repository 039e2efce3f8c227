"""Lake tables, blob artifacts and the DuckDB catalog, on local folders or S3 (fsspec)."""
