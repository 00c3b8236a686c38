"""Prefect flows: thin wiring of perpwatch.ingest.pipeline functions into tasks."""
