"""HTTP endpoints: the ingest API, feed reads and operations."""
